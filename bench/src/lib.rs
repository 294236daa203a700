//! Shared helpers of the sgswitch benchmarks: lab-sized model generators and packet
//! makers for the classifier and connection-tracking benchmarks.
//!
//! Contract: everything here is deterministic (a fixed-seed generator), so two runs
//! measure the same model and the same traffic. The models are built directly from
//! the public model types (the benchmarks need more than the default 100 rules per
//! group); they satisfy the model's invariants (unique ids/MACs/IPs, no duplicate
//! rules, sorted group lists).

pub mod harness;

use std::net::Ipv4Addr;

use filter::model::{Instance, Limits, Model, Owner, Ports, Proto, Rule, Source};
use filter::{FlowKey, Frag, L4, Packet, proto, tcp_flags};

/// The owner of every benchmark group and instance.
pub const OWNER: &str = "123456789012";
/// The subnet outside clients come from; the CIDR rule that lets them in is the
/// last rule of every group.
pub const CLIENT_NET: [u8; 3] = [198, 51, 100];
/// TCP port opened to [`CLIENT_NET`] by the last-but-one rule of every group.
pub const WEB_PORT: u16 = 80;
/// TCP port opened to members of the same group by the last rule of every group.
pub const PEER_PORT: u16 = 8080;

/// Shape of a generated lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabSpec {
    pub instances: usize,
    /// Size of the group pool.
    pub groups: usize,
    /// Groups each instance is in (drawn from the pool).
    pub groups_per_instance: usize,
    /// Rules per group, including the two allowing rules at the end.
    pub rules_per_group: usize,
}

impl LabSpec {
    /// The classifier benchmark lab: 1k instances, 5 groups each out of 50.
    pub fn classifier(rules_per_group: usize) -> LabSpec {
        LabSpec {
            instances: 1000,
            groups: 50,
            groups_per_instance: 5,
            rules_per_group,
        }
    }

    /// Total rules in the model.
    pub fn total_rules(&self) -> usize {
        self.groups * self.rules_per_group
    }
}

/// A small deterministic generator (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The private address of instance `i` (172.31.0.0/16, from .1.1 on).
pub fn instance_ip(i: usize) -> Ipv4Addr {
    let n = 0xac1f_0101u32 + i as u32;
    Ipv4Addr::from(n)
}

/// Group `g`'s name.
pub fn group_name(g: usize) -> String {
    format!("g{g:04}")
}

/// The `rules_per_group - 2` rules of group `g` that never match the benchmark
/// traffic (other ports, other sources, other protocols; a quarter of them are
/// group-source rules), followed by the two allowing rules.
pub fn group_rules(spec: &LabSpec, g: usize) -> Vec<Rule> {
    let owner = Owner(OWNER.to_owned());
    let fillers = spec.rules_per_group.saturating_sub(2);
    let mut rules = Vec::with_capacity(spec.rules_per_group);
    for j in 0..fillers {
        // A /24 in 10.0.0.0/8 unique per (group, rule).
        let n = (g * 4096 + j) as u32;
        let net = Ipv4Addr::from(0x0a00_0000u32 | (n & 0xffff) << 8);
        let cidr = Source::Cidr(format!("{net}/24").parse().expect("valid cidr"));
        let port = 10_000 + (j % 50_000) as u16;
        let rule = match j % 4 {
            0 => Rule {
                proto: Proto::Tcp,
                ports: Ports::Range(port, port.saturating_add(3)),
                source: cidr,
            },
            1 => Rule {
                proto: Proto::Udp,
                ports: Ports::Range(port, port),
                source: cidr,
            },
            2 => Rule {
                proto: Proto::Tcp,
                ports: Ports::Range(port, port),
                source: Source::Group {
                    owner: owner.clone(),
                    group: group_name((g + j) % spec.groups),
                },
            },
            _ => Rule {
                proto: Proto::Icmp,
                ports: Ports::Icmp {
                    ty: Some(13),
                    code: None,
                },
                source: cidr,
            },
        };
        rules.push(rule);
    }
    let clients = Ipv4Addr::new(CLIENT_NET[0], CLIENT_NET[1], CLIENT_NET[2], 0);
    rules.push(Rule {
        proto: Proto::Tcp,
        ports: Ports::Range(WEB_PORT, WEB_PORT),
        source: Source::Cidr(format!("{clients}/24").parse().expect("valid cidr")),
    });
    rules.push(Rule {
        proto: Proto::Tcp,
        ports: Ports::Range(PEER_PORT, PEER_PORT),
        source: Source::Group {
            owner,
            group: group_name(g),
        },
    });
    rules
}

/// Build the model of a lab.
pub fn lab_model(spec: &LabSpec) -> Model {
    let owner = Owner(OWNER.to_owned());
    let mut model = Model::new(Limits {
        rules_per_group: spec.rules_per_group.max(100),
    });
    for g in 0..spec.groups {
        let name = group_name(g);
        model
            .add_group(&owner, &name, "bench")
            .expect("fresh group");
    }
    // Rules after all groups exist (group-source rules name other groups).
    for g in 0..spec.groups {
        let rules = group_rules(spec, g);
        model
            .authorize_rules(&owner, &group_name(g), &rules)
            .expect("valid bench rules");
    }
    let mut rng = Rng::new(42);
    for i in 0..spec.instances {
        let mut groups: Vec<String> = Vec::with_capacity(spec.groups_per_instance);
        while groups.len() < spec.groups_per_instance.min(spec.groups) {
            let name = group_name(rng.below(spec.groups));
            if !groups.contains(&name) {
                groups.push(name);
            }
        }
        groups.sort();
        let id = format!("i-{i:08x}");
        model
            .add_instance(Instance {
                id,
                owner: owner.clone(),
                mac: [0x02, 0x00, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                ip: instance_ip(i),
                groups,
            })
            .expect("valid bench instance");
    }
    model
}

/// A TCP packet.
pub fn tcp_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Packet {
    Packet {
        key: FlowKey {
            src,
            dst,
            proto: proto::TCP,
            sport,
            dport,
        },
        l4: L4::Tcp { flags },
        frag: Frag::None,
    }
}

/// First packets (SYNs) of `n` distinct allowed flows: alternately an outside
/// client to [`WEB_PORT`] of a random instance (allowed by the CIDR rule) and an
/// instance to [`PEER_PORT`] of a random instance sharing a group with it (allowed
/// by the group-source rule). Both allowing rules are the last of their group.
pub fn first_packets(model: &Model, n: usize, seed: u64) -> Vec<Packet> {
    let insts: Vec<&Instance> = model.instances().values().collect();
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    let mut k = 0usize;
    while out.len() < n {
        let dst = insts[rng.below(insts.len())];
        let sport = 1024 + (k % 60_000) as u16;
        if k.is_multiple_of(2) {
            let client = Ipv4Addr::new(
                CLIENT_NET[0],
                CLIENT_NET[1],
                CLIENT_NET[2],
                (k / 60_000 % 254 + 1) as u8,
            );
            out.push(tcp_packet(client, sport, dst.ip, WEB_PORT, tcp_flags::SYN));
        } else {
            // A peer sharing a group (probe a few random instances, else itself).
            let mut src = dst;
            for _ in 0..64 {
                let c = insts[rng.below(insts.len())];
                if c.ip != dst.ip && c.groups.iter().any(|g| dst.groups.contains(g)) {
                    src = c;
                    break;
                }
            }
            out.push(tcp_packet(src.ip, sport, dst.ip, PEER_PORT, tcp_flags::SYN));
        }
        k += 1;
    }
    out
}

/// The packets of established flows for `first`: alternately a data packet in the
/// original direction and the reply.
pub fn established_packets(first: &[Packet]) -> Vec<Packet> {
    let mut out = Vec::with_capacity(first.len() * 2);
    for p in first {
        let mut fwd = *p;
        fwd.l4 = L4::Tcp {
            flags: tcp_flags::ACK | tcp_flags::PSH,
        };
        let mut back = fwd;
        back.key = fwd.key.reversed();
        out.push(fwd);
        out.push(back);
    }
    out
}

/// `n` distinct UDP flow keys from outside clients to instances (for raw
/// conntrack insert/lookup), deterministic in `i`.
pub fn udp_flow(i: usize) -> Packet {
    let client = Ipv4Addr::from(0xc633_6400u32 + (i >> 16) as u32 % 256);
    Packet {
        key: FlowKey {
            src: instance_ip(i % 1000),
            dst: client,
            proto: proto::UDP,
            sport: (i & 0xffff) as u16,
            dport: 53,
        },
        l4: L4::Udp,
        frag: Frag::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter::compile::compile;
    use filter::conntrack::{Conntrack, CtConfig};

    #[test]
    fn generated_traffic_is_allowed_only_by_the_last_rules() {
        let spec = LabSpec {
            instances: 50,
            groups: 10,
            groups_per_instance: 3,
            rules_per_group: 20,
        };
        let model = lab_model(&spec);
        model.verify().expect("valid model");
        let snap = compile(&model, 1);
        let first = first_packets(&model, 200, 7);
        for p in &first {
            assert!(snap.allows(p), "{p:?}");
            assert!(filter::reference::allows(&model, p), "{p:?}");
        }
        // Without the last two rules nothing of it is allowed.
        let mut stripped = model.clone();
        let groups: Vec<_> = stripped.groups().values().cloned().collect();
        for g in groups.iter().filter(|g| g.name != "default") {
            let last_two = &g.rules[g.rules.len() - 2..];
            stripped
                .revoke_rules(&g.owner, &g.name, last_two)
                .expect("present rules");
        }
        let snap = compile(&stripped, 2);
        for p in &first {
            assert!(!snap.allows(p), "{p:?}");
        }
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        for p in &first {
            let _ = ct.judge(&snap, p, 0);
        }
        assert_eq!(ct.len(), 0);
    }

    #[test]
    fn udp_flows_are_distinct() {
        let mut keys: Vec<_> = (0..200_000).map(|i| udp_flow(i).key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 200_000);
    }
}
