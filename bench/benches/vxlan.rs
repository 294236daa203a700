//! Overlay micro-benchmarks (criterion; elements = frames, so criterion prints
//! frames/s): the per-frame cost of the userspace VXLAN-GBP path of issue 14.
//!
//! Cases, for inner frames of 64 B (a minimum TCP segment), 1450 B (a full
//! frame on a 1500-byte underlay) and 64 KiB - OVERHEAD (a TSO super-frame that
//! stays whole, DESIGN §9 / docs/overlay.md):
//! * `encap_in_place/N` — write outer Ethernet/IPv4/UDP/VXLAN-GBP in front of a
//!   frame already in headroom (the datapath's way: no copy).
//! * `encap_copy/N` — the same with a copy of the inner frame into the buffer.
//! * `decap_check/N` — `decap` (every length, the IPv4 header checksum, port,
//!   flags, VNI) plus `check_sender` against a directory of 100 hosts and 10k
//!   instances (hash lookups).
//! * `decap_check_udpcsum/N` — the same with a non-zero outer UDP checksum to
//!   verify (a sender with `udpcsum`): the only per-byte work on receive.
//! * `decap_check6/N` — `decap_check` of an inner IPv6/TCP frame (the
//!   instance found by its IPv6 address; the housekeeping check); 74 bytes
//!   for N = 64.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switch::vxlan::{
    self, DecapConfig, DirectoryTable, GbpHeader, HostId, InstanceInfo, OVERHEAD, Underlay,
    VXLAN_PORT,
};

const SIZES: [usize; 3] = [64, 1450, 65535 - 20 - 8 - 8];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

fn under() -> Underlay {
    Underlay {
        src_mac: [0x02, 0xaa, 0, 0, 0, 1],
        dst_mac: [0x02, 0xaa, 0, 0, 0, 2],
        src_ip: Ipv4Addr::new(198, 18, 0, 1),
        dst_ip: Ipv4Addr::new(198, 18, 0, 2),
        dst_port: VXLAN_PORT,
        ttl: 64,
    }
}

const HDR: GbpHeader = GbpHeader {
    vni: 42,
    policy_id: 0x1234,
    dont_learn: false,
    policy_applied: false,
};

/// An Ethernet/IPv4/TCP frame of `len` bytes from 10.0.0.10.
fn inner(len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    etherparse::PacketBuilder::ethernet2(SRC_MAC, [0x02, 0, 0, 0, 0, 0x0b])
        .ipv4([10, 0, 0, 10], [10, 0, 1, 11], 64)
        .tcp(40000, 80, 1, 65535)
        .write(&mut f, &vec![0x5a; len - 54])
        .unwrap();
    assert_eq!(f.len(), len);
    f
}

/// The IPv6 address of the instance with IPv4 address `ip` (one per instance).
fn ip6_of(ip: Ipv4Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xfd00,
        0,
        0,
        0,
        0,
        0,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    )
}

/// An Ethernet/IPv6/TCP frame of `len` bytes from 10.0.0.10's IPv6 address.
fn inner6(len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    let src = ip6_of(Ipv4Addr::new(10, 0, 0, 10));
    let dst = ip6_of(Ipv4Addr::new(10, 0, 1, 11));
    etherparse::PacketBuilder::ethernet2(SRC_MAC, [0x02, 0, 0, 0, 0, 0x0b])
        .ipv6(src.octets(), dst.octets(), 64)
        .tcp(40000, 80, 1, 65535)
        .write(&mut f, &vec![0x5a; len - 74])
        .unwrap();
    assert_eq!(f.len(), len);
    f
}

fn directory() -> DirectoryTable {
    // This host is none of the 100 senders.
    let mut t = DirectoryTable::new(HostId(u32::MAX));
    for h in 0..100u32 {
        let addr = Ipv4Addr::new(198, 18, 0, 1 + h as u8);
        t.add_host(HostId(h), SocketAddrV4::new(addr, VXLAN_PORT));
        for i in 0..100u32 {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + h * 100 + i + 10);
            let info = InstanceInfo {
                host: HostId(h),
                mac: if h == 0 && i == 0 {
                    SRC_MAC
                } else {
                    [0x02, 1, 0, 0, h as u8, i as u8]
                },
                identity: if h == 0 && i == 0 { 0x1234 } else { i as u16 },
            };
            t.add_instance(ip, info);
            t.add_instance6(ip6_of(ip), ip);
        }
    }
    t
}

fn overlay(c: &mut Criterion) {
    let u = under();
    let cfg = DecapConfig {
        vni: 42,
        port: VXLAN_PORT,
        local: Some(u.dst_ip),
    };
    let dir = directory();
    let mut g = c.benchmark_group("vxlan");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let f = inner(n);
        let mut buf = vec![0u8; n + OVERHEAD];
        buf[OVERHEAD..].copy_from_slice(&f);
        g.bench_with_input(BenchmarkId::new("encap_in_place", n), &n, |b, &n| {
            b.iter(|| vxlan::encap_in_place(&u, &HDR, black_box(&mut buf), n).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("encap_copy", n), &f, |b, f| {
            b.iter(|| vxlan::encap(&u, &HDR, black_box(f), &mut buf).unwrap())
        });
        let len = vxlan::encap(&u, &HDR, &f, &mut buf).unwrap();
        let frame = buf[..len].to_vec();
        g.bench_with_input(BenchmarkId::new("decap_check", n), &frame, |b, fr| {
            b.iter(|| {
                let d = vxlan::decap(black_box(fr), &cfg).unwrap();
                vxlan::check_sender(&dir, &d).unwrap()
            })
        });
        // (An IPv6/TCP frame has at least 74 bytes.)
        let f6 = inner6(n.max(74));
        let mut buf6 = vec![0u8; f6.len() + OVERHEAD];
        let len6 = vxlan::encap(&u, &HDR, &f6, &mut buf6).unwrap();
        let frame6 = buf6[..len6].to_vec();
        g.bench_with_input(BenchmarkId::new("decap_check6", n), &frame6, |b, fr| {
            b.iter(|| {
                let d = vxlan::decap(black_box(fr), &cfg).unwrap();
                vxlan::check_sender(&dir, &d).unwrap()
            })
        });
        let mut with_csum = frame.clone();
        let csum = udp_checksum(&with_csum[14..34], &with_csum[34..]);
        with_csum[40..42].copy_from_slice(&csum.to_be_bytes());
        g.bench_with_input(
            BenchmarkId::new("decap_check_udpcsum", n),
            &with_csum,
            |b, fr| {
                b.iter(|| {
                    let d = vxlan::decap(black_box(fr), &cfg).unwrap();
                    vxlan::check_sender(&dir, &d).unwrap()
                })
            },
        );
    }
    g.finish();
}

/// The UDP checksum of `seg` (checksum field zero) under IPv4 header `ip`.
fn udp_checksum(ip: &[u8], seg: &[u8]) -> u16 {
    use switch::offload::{fold, sum};
    let pseudo = sum(&ip[12..20], 17 + seg.len() as u64);
    match !fold(sum(seg, pseudo)) {
        0 => 0xffff,
        c => c,
    }
}

criterion_group!(benches, overlay);
criterion_main!(benches);
