//! In-memory ports: a [`PortQueue`] per worker backed by bounded lock-free queues,
//! and a [`MemPeer`] that plays "the other end of the wire" for tests and
//! benchmarks that run without root.
//!
//! Contract:
//! * `mem_port(workers)` returns exactly `workers` queues; queue `w` has its own
//!   receive and transmit rings (crossbeam `ArrayQueue`, lock-free, bounded), so
//!   the worker side never contends with other workers.
//! * [`MemPeer::inject`] puts a frame (with an optional [`VnetHdr`]) on a queue's
//!   receive ring; the switch then `recv`s it. Frames the switch `send`s land on
//!   the transmit ring, where [`MemPeer::take`]/[`MemPeer::recv_timeout`] collect
//!   them — or, in *sink* mode (benchmarks), are only counted.
//! * `offloads: true` emulates a vnet_hdr TAP that accepts TSO super-frames and
//!   partial checksums; with `false`, `send` rejects a non-plain header (the switch
//!   must have completed the work first), which tests rely on.
//! * [`MemPeer::close`] makes every queue report [`PortError::Gone`], like a TAP
//!   whose namespace was deleted.
//! * Allocation: `inject` and non-sink `send` copy the frame into a `Vec` — this is
//!   a test port; `recv` into the caller's buffer does not allocate.
//! * There is no fd to poll: `poll_fd` is `None`, so a worker parks with a short
//!   timeout when it owns such queues.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::port::{PortError, PortQueue, VnetHdr};

/// Options of an in-memory port.
#[derive(Clone, Copy, Debug)]
pub struct MemOptions {
    /// Frames each ring holds before `inject`/`send` report "full".
    pub capacity: usize,
    /// Emulate a vnet_hdr port with TSO and checksum offload.
    pub offloads: bool,
    /// Count transmitted frames instead of keeping them (benchmarks).
    pub sink: bool,
}

impl Default for MemOptions {
    fn default() -> Self {
        MemOptions {
            capacity: 4096,
            offloads: false,
            sink: false,
        }
    }
}

/// A frame the switch transmitted on an in-memory port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemFrame {
    pub data: Vec<u8>,
    pub vnet: VnetHdr,
    /// The queue (= worker) that sent it.
    pub queue: usize,
}

/// Errors of the peer side.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("inject on queue {queue}: the port has {queues} queues")]
    NoSuchQueue { queue: usize, queues: usize },
    #[error("inject on queue {queue}: receive ring full ({capacity} frames)")]
    Full { queue: usize, capacity: usize },
}

struct Ring {
    rx: ArrayQueue<(Vec<u8>, VnetHdr)>,
    tx: ArrayQueue<MemFrame>,
    /// Written only by the queue's worker (load + store), read by the peer.
    sent_frames: AtomicU64,
    sent_bytes: AtomicU64,
}

struct Shared {
    rings: Vec<Ring>,
    opts: MemOptions,
    gone: AtomicBool,
    tx_full: AtomicU64,
}

/// The test/bench side of an in-memory port. Cheap to clone.
#[derive(Clone)]
pub struct MemPeer {
    shared: Arc<Shared>,
}

struct MemQueue {
    shared: Arc<Shared>,
    idx: usize,
}

/// An in-memory port with default options (see [`mem_port_with`]).
pub fn mem_port(workers: usize) -> (Vec<Box<dyn PortQueue>>, MemPeer) {
    mem_port_with(workers, MemOptions::default())
}

/// An in-memory port with `workers` queues.
pub fn mem_port_with(workers: usize, opts: MemOptions) -> (Vec<Box<dyn PortQueue>>, MemPeer) {
    let cap = opts.capacity.max(1);
    let shared = Arc::new(Shared {
        rings: (0..workers)
            .map(|_| Ring {
                rx: ArrayQueue::new(cap),
                tx: ArrayQueue::new(cap),
                sent_frames: AtomicU64::new(0),
                sent_bytes: AtomicU64::new(0),
            })
            .collect(),
        opts,
        gone: AtomicBool::new(false),
        tx_full: AtomicU64::new(0),
    });
    let queues = (0..workers)
        .map(|idx| {
            Box::new(MemQueue {
                shared: shared.clone(),
                idx,
            }) as Box<dyn PortQueue>
        })
        .collect();
    (queues, MemPeer { shared })
}

impl MemPeer {
    /// Put a frame on queue `queue`'s receive ring.
    pub fn inject(&self, queue: usize, frame: &[u8], vnet: VnetHdr) -> Result<(), MemError> {
        let queues = self.shared.rings.len();
        let ring = self
            .shared
            .rings
            .get(queue)
            .ok_or(MemError::NoSuchQueue { queue, queues })?;
        ring.rx
            .push((frame.to_vec(), vnet))
            .map_err(|_| MemError::Full {
                queue,
                capacity: ring.rx.capacity(),
            })
    }

    /// Put a plain frame on queue 0.
    pub fn send(&self, frame: &[u8]) -> Result<(), MemError> {
        self.inject(0, frame, VnetHdr::default())
    }

    /// Everything transmitted so far, in queue order then arrival order.
    pub fn take(&self) -> Vec<MemFrame> {
        let mut v = Vec::new();
        for ring in &self.shared.rings {
            while let Some(f) = ring.tx.pop() {
                v.push(f);
            }
        }
        v
    }

    /// The next transmitted frame, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<MemFrame> {
        let deadline = Instant::now() + timeout;
        loop {
            for ring in &self.shared.rings {
                if let Some(f) = ring.tx.pop() {
                    return Some(f);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Frames injected but not yet read by the switch.
    pub fn pending_rx(&self) -> usize {
        self.shared.rings.iter().map(|r| r.rx.len()).sum()
    }

    /// Frames and bytes the switch has transmitted on this port (also in sink mode).
    pub fn sent(&self) -> (u64, u64) {
        let r = &self.shared.rings;
        (
            r.iter()
                .map(|r| r.sent_frames.load(Ordering::Relaxed))
                .sum(),
            r.iter().map(|r| r.sent_bytes.load(Ordering::Relaxed)).sum(),
        )
    }

    /// Sends refused because the transmit ring was full.
    pub fn tx_full(&self) -> u64 {
        self.shared.tx_full.load(Ordering::Relaxed)
    }

    /// Make every queue report [`PortError::Gone`] from now on.
    pub fn close(&self) {
        self.shared.gone.store(true, Ordering::Release);
    }
}

/// Add to a single-writer counter.
#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl MemQueue {
    fn gone(&self) -> PortError {
        PortError::Gone {
            port: format!("mem queue {}", self.idx),
            source: io::Error::from_raw_os_error(libc::EBADFD),
        }
    }
}

impl PortQueue for MemQueue {
    fn recv(&self, buf: &mut [u8]) -> Result<Option<(usize, VnetHdr)>, PortError> {
        if self.shared.gone.load(Ordering::Acquire) {
            return Err(self.gone());
        }
        let Some((data, vnet)) = self.shared.rings[self.idx].rx.pop() else {
            return Ok(None);
        };
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(Some((n, vnet)))
    }

    fn send(&self, frame: &[u8], vnet: &VnetHdr) -> Result<(), PortError> {
        if self.shared.gone.load(Ordering::Acquire) {
            return Err(self.gone());
        }
        if !self.shared.opts.offloads && !vnet.is_plain() {
            return Err(PortError::Io {
                port: format!("mem queue {}", self.idx),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "offload header sent to a port without offloads",
                ),
            });
        }
        let ring = &self.shared.rings[self.idx];
        if !self.shared.opts.sink {
            let f = MemFrame {
                data: frame.to_vec(),
                vnet: *vnet,
                queue: self.idx,
            };
            if ring.tx.push(f).is_err() {
                self.shared.tx_full.fetch_add(1, Ordering::Relaxed);
                return Err(PortError::Io {
                    port: format!("mem queue {}", self.idx),
                    source: io::Error::new(io::ErrorKind::WouldBlock, "transmit ring full"),
                });
            }
        }
        // Single writer (this queue's worker): a plain load + store is enough.
        bump(&ring.sent_frames, 1);
        bump(&ring.sent_bytes, frame.len() as u64);
        Ok(())
    }

    fn offloads(&self) -> bool {
        self.shared.opts.offloads
    }

    fn poll_fd(&self) -> Option<RawFd> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_recv_send_take_round_trip() {
        let (qs, peer) = mem_port(2);
        assert_eq!(qs.len(), 2);
        peer.inject(1, &[1, 2, 3], VnetHdr::default()).unwrap();
        let mut buf = [0u8; 16];
        assert!(qs[0].recv(&mut buf).unwrap().is_none());
        let (n, v) = qs[1].recv(&mut buf).unwrap().unwrap();
        assert_eq!((&buf[..n], v), (&[1u8, 2, 3][..], VnetHdr::default()));
        qs[0].send(&[9, 9], &VnetHdr::default()).unwrap();
        assert_eq!(
            peer.take(),
            vec![MemFrame {
                data: vec![9, 9],
                vnet: VnetHdr::default(),
                queue: 0
            }]
        );
        assert_eq!(peer.sent(), (1, 2));
        assert!(matches!(
            peer.inject(2, &[], VnetHdr::default()),
            Err(MemError::NoSuchQueue { .. })
        ));
    }

    #[test]
    fn non_offload_port_refuses_offload_headers_and_closed_port_is_gone() {
        let (qs, peer) = mem_port(1);
        let tso = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4,
            gso_size: 1448,
            ..Default::default()
        };
        assert!(matches!(
            qs[0].send(&[0; 60], &tso),
            Err(PortError::Io { .. })
        ));
        let (qs2, _p2) = mem_port_with(
            1,
            MemOptions {
                offloads: true,
                ..Default::default()
            },
        );
        assert!(qs2[0].offloads());
        qs2[0].send(&[0; 60], &tso).unwrap();
        peer.close();
        let mut buf = [0u8; 4];
        assert!(matches!(qs[0].recv(&mut buf), Err(PortError::Gone { .. })));
        assert!(matches!(
            qs[0].send(&[0], &VnetHdr::default()),
            Err(PortError::Gone { .. })
        ));
    }

    #[test]
    fn rings_are_bounded_and_sink_only_counts() {
        let (qs, peer) = mem_port_with(
            1,
            MemOptions {
                capacity: 2,
                ..Default::default()
            },
        );
        peer.send(&[1]).unwrap();
        peer.send(&[2]).unwrap();
        assert!(matches!(
            peer.send(&[3]),
            Err(MemError::Full { capacity: 2, .. })
        ));
        qs[0].send(&[1], &VnetHdr::default()).unwrap();
        qs[0].send(&[1], &VnetHdr::default()).unwrap();
        assert!(qs[0].send(&[1], &VnetHdr::default()).is_err());
        assert_eq!(peer.tx_full(), 1);
        let (qs, peer) = mem_port_with(
            1,
            MemOptions {
                capacity: 1,
                sink: true,
                ..Default::default()
            },
        );
        for _ in 0..10 {
            qs[0].send(&[0; 100], &VnetHdr::default()).unwrap();
        }
        assert_eq!(peer.sent(), (10, 1000));
        assert!(peer.take().is_empty());
    }
}
