//! Packet capture at ports: the datapath side of `sgswitch capture`.
//!
//! Contract:
//! * At most one capture [`Session`] at a time ([`Datapath::start_capture`];
//!   a second is refused with [`CaptureError::Busy`]). It records the frames
//!   received from a port ([`Direction::In`]) and sent to it
//!   ([`Direction::Out`]), of one port or of all, or with `drops_only` only the
//!   frames received and then dropped, each with its reason ([`Verdict`]).
//!   A frame addressed to the one captured port (by its IPv4 destination)
//!   that the switch dropped on the way (the rules, connection tracking) is
//!   recorded there as [`Direction::Out`] with its reason: "sent to it" but
//!   not delivered, which is what "why can't I reach my instance" asks.
//! * Cost when no capture runs: one relaxed load of the `armed` flag per burst
//!   ([`CaptureSlot::load`]); the pipeline then sees `Env::capture == None` and
//!   takes its usual path. Armed, the session is loaded once per burst
//!   (arc-swap, no lock).
//! * Armed, a matching frame is copied (at most `snaplen` bytes) into a record
//!   taken from worker `w`'s own pool of preallocated records and handed to the
//!   reader over worker `w`'s own bounded lock-free queue: one producer (the
//!   worker), one consumer (the capture reader). No allocation, no lock, no
//!   shared counter per frame. When the pool is empty (the reader is behind)
//!   the copy is skipped and counted in that worker's `lost` counter
//!   ([`Session::lost`]); forwarding never waits for a capture.
//! * A received frame's record is finished after its verdict (so a dropped one
//!   carries its reason) and pushed before the records of the frames it caused
//!   (a forwarded copy, an ARP/DHCP answer), so the reader sees them in order.
//! * What is recorded as sent is what was handed to the port's queue, after the
//!   switch's MAC rewrite and checksum completion; a TSO super-frame segmented
//!   in software is recorded once, as the super-frame (truncated to `snaplen`,
//!   with its original length).
//! * Not covered: frames refused by the overlay's receive checks
//!   (`overlay::receive`) before a destination port is known (they belong to no
//!   port); their counters in `stats` still count them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use filter::DropReason;

use crate::config::PortId;
use crate::counters::bump;
use crate::pipeline::BUF_LEN;
use crate::vxlan::VxlanDrop;

/// Default number of bytes kept of each frame: a whole 1500-byte-MTU frame.
pub const DEFAULT_SNAPLEN: usize = 2048;
/// Largest snaplen: a whole receive buffer.
pub const MAX_SNAPLEN: usize = BUF_LEN;
/// Records per worker (the pool the reader drains).
pub const RING_RECORDS: usize = 1024;

/// Whether a frame was received from the port or sent to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received from the port (sent by what is behind it).
    In,
    /// Sent to the port by the switch.
    Out,
}

/// Why a captured frame was dropped: the reasons `stats` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop(DropReason),
    Vxlan(VxlanDrop),
}

impl Verdict {
    /// The counter name `stats` prints (`no_rule`, `vxlan_unknown_host`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Drop(r) => r.name(),
            Verdict::Vxlan(v) => v.name(),
        }
    }
}

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Record {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub port: PortId,
    pub dir: Direction,
    /// The frame's length on the wire (`data` may be shorter: snaplen).
    pub orig_len: u32,
    /// Set for a frame the switch dropped.
    pub dropped: Option<Verdict>,
    pub data: Vec<u8>,
    /// The worker whose pool the record belongs to.
    worker: usize,
}

/// What to capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    /// One port, or every port (`None`).
    pub port: Option<PortId>,
    /// Only frames received and dropped (with their reason).
    pub drops_only: bool,
    /// Bytes kept of each frame, 1..=[`MAX_SNAPLEN`].
    pub snaplen: usize,
    /// Records per worker, at least 1.
    pub ring: usize,
}

impl Default for CaptureSpec {
    fn default() -> Self {
        CaptureSpec {
            port: None,
            drops_only: false,
            snaplen: DEFAULT_SNAPLEN,
            ring: RING_RECORDS,
        }
    }
}

/// Errors of [`Datapath::start_capture`](crate::Datapath::start_capture).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    #[error("a capture is already running (one at a time): stop it first")]
    Busy,
    #[error("snaplen {0} out of range 1..={MAX_SNAPLEN}")]
    Snaplen(usize),
    #[error("no port {0:?}")]
    NoPort(PortId),
}

/// One worker's record pool and queue to the reader.
struct Ring {
    free: ArrayQueue<Record>,
    full: ArrayQueue<Record>,
    /// Frames not captured because the pool was empty (written by the worker only).
    lost: AtomicU64,
}

/// A running capture: what it records, and one [`Ring`] per worker.
pub struct Session {
    spec: CaptureSpec,
    rings: Box<[CachePadded<Ring>]>,
}

impl Session {
    fn new(spec: CaptureSpec, workers: usize) -> Session {
        let rings = (0..workers)
            .map(|w| {
                let free = ArrayQueue::new(spec.ring);
                for _ in 0..spec.ring {
                    let _ = free.push(Record {
                        ts_ns: 0,
                        port: PortId(0),
                        dir: Direction::In,
                        orig_len: 0,
                        dropped: None,
                        data: Vec::with_capacity(spec.snaplen),
                        worker: w,
                    });
                }
                CachePadded::new(Ring {
                    free,
                    full: ArrayQueue::new(spec.ring),
                    lost: AtomicU64::new(0),
                })
            })
            .collect();
        Session { spec, rings }
    }

    pub fn spec(&self) -> &CaptureSpec {
        &self.spec
    }

    #[inline]
    pub(crate) fn drops_only(&self) -> bool {
        self.spec.drops_only
    }

    #[inline]
    pub(crate) fn wants(&self, port: PortId) -> bool {
        self.spec.port.is_none_or(|p| p == port)
    }

    /// Worker `w`: a record of `frame` (at most snaplen bytes), or `None` (and
    /// counted) when the pool is empty.
    pub(crate) fn take(
        &self,
        w: usize,
        port: PortId,
        dir: Direction,
        frame: &[u8],
    ) -> Option<Record> {
        let ring = &self.rings[w];
        let Some(mut r) = ring.free.pop() else {
            bump(&ring.lost, 1);
            return None;
        };
        r.ts_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        r.port = port;
        r.dir = dir;
        r.orig_len = frame.len() as u32;
        r.dropped = None;
        r.data.clear();
        // Within the capacity reserved at start: no allocation.
        r.data
            .extend_from_slice(&frame[..frame.len().min(self.spec.snaplen)]);
        Some(r)
    }

    /// Hand a finished record to the reader.
    pub(crate) fn push(&self, r: Record) {
        // The queue holds as many records as the pool: a push cannot fail.
        let _ = self.rings[r.worker].full.push(r);
    }

    /// Move every finished record of every worker into `out` (the reader).
    pub fn drain(&self, out: &mut Vec<Record>) {
        for ring in self.rings.iter() {
            while let Some(r) = ring.full.pop() {
                out.push(r);
            }
        }
    }

    /// Give a drained record back to its worker's pool.
    pub fn recycle(&self, r: Record) {
        let _ = self.rings[r.worker].free.push(r);
    }

    /// Frames that matched but were not captured because a pool was empty.
    pub fn lost(&self) -> u64 {
        self.rings
            .iter()
            .map(|r| r.lost.load(Ordering::Relaxed))
            .sum()
    }
}

/// The datapath's capture slot: the armed flag and the session.
#[derive(Default)]
pub(crate) struct CaptureSlot {
    armed: AtomicBool,
    session: ArcSwapOption<Session>,
}

/// What a worker holds for one burst: nothing (one relaxed load) when no
/// capture runs.
pub(crate) type Loaded = Option<arc_swap::Guard<Option<Arc<Session>>>>;

impl CaptureSlot {
    /// Once per burst: the session if a capture is armed.
    #[inline]
    pub(crate) fn load(&self) -> Loaded {
        if !self.armed.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.session.load())
    }

    /// Install `s` unless one is installed (atomically: of two concurrent
    /// starts, one wins).
    pub(crate) fn install(&self, s: Arc<Session>) -> Result<(), CaptureError> {
        let prev = self
            .session
            .compare_and_swap(&None::<Arc<Session>>, Some(s));
        if prev.is_some() {
            return Err(CaptureError::Busy);
        }
        self.armed.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn clear(&self) {
        self.armed.store(false, Ordering::Release);
        self.session.store(None);
    }
}

/// The session of a burst as [`crate::pipeline::Env`] holds it.
#[inline]
pub(crate) fn of(loaded: &Loaded) -> Option<&Session> {
    loaded.as_ref().and_then(|g| g.as_deref())
}

/// A running capture; stops (disarms) when dropped. Built by
/// [`Datapath::start_capture`](crate::Datapath::start_capture).
pub struct Capture {
    pub(crate) dp: Arc<crate::Datapath>,
    pub(crate) session: Arc<Session>,
}

impl Capture {
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The name of port `id` (for the capture file's interface), or `port-N`
    /// once the port is gone.
    pub fn port_name(&self, id: PortId) -> String {
        self.dp
            .ports
            .load()
            .by_id(id)
            .map_or_else(|| format!("port-{}", id.0), |p| p.name.clone())
    }

    /// Whether the switch is shutting down (the capture will see no more frames).
    pub fn switch_stopped(&self) -> bool {
        self.dp.stop.load(Ordering::Acquire)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.dp.capture.clear();
    }
}

impl crate::Datapath {
    /// Start capturing per `spec` (see the module docs). Refused while another
    /// capture runs, for a bad snaplen, or a port that is not attached.
    pub fn start_capture(self: &Arc<Self>, mut spec: CaptureSpec) -> Result<Capture, CaptureError> {
        if spec.snaplen == 0 || spec.snaplen > MAX_SNAPLEN {
            return Err(CaptureError::Snaplen(spec.snaplen));
        }
        spec.ring = spec.ring.max(1);
        if let Some(id) = spec.port
            && self.ports.load().by_id(id).is_none()
        {
            return Err(CaptureError::NoPort(id));
        }
        if self.capture.session.load().is_some() {
            return Err(CaptureError::Busy);
        }
        let session = Arc::new(Session::new(spec, self.workers));
        self.capture.install(session.clone())?;
        Ok(Capture {
            dp: self.clone(),
            session,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use filter::model::{Instance, Limits, Model, Owner, RuleSpec};
    use filter::{Mac, compile};

    use super::*;
    use crate::port::VnetHdr;
    use crate::{MemPeer, PortRole, PortSpec, SwitchConfig, mem_port};

    const OWNER: &str = "111122223333";

    fn mac(n: u8) -> Mac {
        [0x02, 0, 0, 0, 0, n]
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, 0, n)
    }

    /// Instances 10 and 11; UDP 53 allowed from the subnet, nothing else.
    fn setup() -> (Arc<crate::Datapath>, [(PortId, MemPeer); 2]) {
        let owner = Owner(OWNER.into());
        let mut m = Model::new(Limits::default());
        m.add_group(&owner, "g", "test").expect("group");
        let spec = RuleSpec {
            proto: Some("udp".into()),
            ports: Some("53".into()),
            cidrs: vec!["172.31.0.0/16".into()],
            ..RuleSpec::default()
        };
        m.authorize(&owner, "g", &spec).expect("rule");
        let dp = crate::Datapath::new(SwitchConfig {
            workers: 1,
            ct: filter::CtConfig::with_capacity(1 << 12),
            ..SwitchConfig::default()
        })
        .expect("datapath");
        let ports = [10u8, 11].map(|k| {
            m.add_instance(Instance {
                id: format!("i-{k:08x}"),
                owner: owner.clone(),
                mac: mac(k),
                ip: ip(k),
                groups: vec!["g".into()],
            })
            .expect("instance");
            let (queues, peer) = mem_port(1);
            let id = dp
                .add_port(PortSpec {
                    name: format!("mem{k}"),
                    role: PortRole::Instance {
                        id: format!("i-{k:08x}"),
                        mac: mac(k),
                        ip: ip(k),
                    },
                    queues,
                })
                .expect("port");
            (id, peer)
        });
        dp.publish_rules(compile(&m, 1));
        (dp, ports)
    }

    fn udp(src: u8, dst: u8, dport: u16, payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(src), mac(dst))
            .ipv4(ip(src).octets(), ip(dst).octets(), 64)
            .udp(4000, dport)
            .write(&mut v, &vec![7u8; payload])
            .expect("udp");
        v
    }

    fn drained(c: &Capture) -> Vec<Record> {
        let mut v = Vec::new();
        c.session().drain(&mut v);
        v
    }

    #[test]
    fn records_in_and_out_in_order_and_drops_with_their_reason() {
        let (dp, [(a, pa), (b, pb)]) = setup();
        let mut w = dp.worker(0);
        // Nothing armed: nothing recorded, nothing to drain.
        pa.inject(0, &udp(10, 11, 53, 10), VnetHdr::default())
            .unwrap();
        w.poll_once();
        assert_eq!(pb.take().len(), 1);

        let cap = dp
            .start_capture(CaptureSpec {
                port: Some(b),
                snaplen: 60,
                ..CaptureSpec::default()
            })
            .expect("start");
        assert_eq!(
            dp.start_capture(CaptureSpec::default()).err(),
            Some(CaptureError::Busy)
        );
        let allowed = udp(10, 11, 53, 100);
        pa.inject(0, &allowed, VnetHdr::default()).unwrap();
        pa.inject(0, &udp(10, 11, 80, 10), VnetHdr::default())
            .unwrap(); // no rule
        pb.inject(0, &udp(11, 10, 53, 10), VnetHdr::default())
            .unwrap();
        w.poll_once();
        let recs = drained(&cap);
        // At port b: the allowed datagram sent to it, the blocked one on its
        // way to it with the reason it did not arrive, and b's own datagram
        // received from it (its copy sent to a is not b's business).
        let seen: Vec<(Direction, usize, Option<Verdict>)> = recs
            .iter()
            .map(|r| (r.dir, r.orig_len as usize, r.dropped))
            .collect();
        assert_eq!(
            seen,
            [
                (Direction::Out, allowed.len(), None),
                (Direction::Out, 52, Some(Verdict::Drop(DropReason::NoRule))),
                (Direction::In, 52, None)
            ]
        );
        assert!(recs.iter().all(|r| r.port == b));
        assert_eq!(recs[0].data.len(), 60, "snaplen");
        assert_eq!(recs[0].data[..], allowed[..60]);
        for r in recs {
            cap.session().recycle(r);
        }
        drop(cap);
        assert_eq!(dp.capture.load().map(|_| ()), None, "disarmed");

        // Drops only, every port: the blocked datagram with its reason.
        let cap = dp
            .start_capture(CaptureSpec {
                drops_only: true,
                ..CaptureSpec::default()
            })
            .expect("start");
        pa.inject(0, &udp(10, 11, 53, 10), VnetHdr::default())
            .unwrap();
        pa.inject(0, &udp(10, 11, 81, 10), VnetHdr::default())
            .unwrap();
        w.poll_once();
        let recs = drained(&cap);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].port, a);
        assert_eq!(recs[0].dir, Direction::In);
        assert_eq!(recs[0].dropped, Some(Verdict::Drop(DropReason::NoRule)));
        assert_eq!(recs[0].dropped.unwrap().name(), "no_rule");
        assert_eq!(&recs[0].data[36..38], &81u16.to_be_bytes());
    }

    #[test]
    fn a_full_pool_skips_and_counts_the_copy_but_forwards() {
        let (dp, [(_, pa), (b, pb)]) = setup();
        let mut w = dp.worker(0);
        let cap = dp
            .start_capture(CaptureSpec {
                port: Some(b),
                ring: 4,
                ..CaptureSpec::default()
            })
            .expect("start");
        for _ in 0..10 {
            pa.inject(0, &udp(10, 11, 53, 10), VnetHdr::default())
                .unwrap();
        }
        w.poll_once();
        assert_eq!(pb.take().len(), 10, "forwarding does not wait");
        assert_eq!(drained(&cap).len(), 4);
        assert_eq!(cap.session().lost(), 6);
    }

    #[test]
    fn bad_specs_are_refused() {
        let (dp, _) = setup();
        let e = |s| dp.start_capture(s).err();
        assert_eq!(
            e(CaptureSpec {
                snaplen: 0,
                ..CaptureSpec::default()
            }),
            Some(CaptureError::Snaplen(0))
        );
        assert_eq!(
            e(CaptureSpec {
                port: Some(PortId(77)),
                ..CaptureSpec::default()
            }),
            Some(CaptureError::NoPort(PortId(77)))
        );
        // Nothing was left armed by the refusals.
        assert!(dp.start_capture(CaptureSpec::default()).is_ok());
    }
}
