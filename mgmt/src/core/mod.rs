//! The management core: owns the [`Model`], the [`Store`] and a [`Dataplane`], and
//! turns each [`Request`] into a [`Reply`].
//!
//! Contract:
//! * One thread at a time uses a `Core` (the daemon keeps it behind a lock:
//!   `daemon::MgmtHandle`; tests call it directly). Nothing else touches the
//!   model or the data plane.
//! * Validation is [`filter::Model`]'s: each model method checks its edit
//!   against the current model and only then applies it, recording what it
//!   changed ([`filter::model::Change`]); no copy of the model is made. The
//!   recorded changes become exactly one store transaction ([`store_edits`]:
//!   one [`store::Edit`] per change) and are compiled incrementally
//!   ([`filter::compile::Compiler`]: the edited groups' tables and, when
//!   needed, the instances' membership parts; everything else is shared with
//!   the previous snapshot). The snapshot is published with generation + 1
//!   *before* that transaction commits (so enforcement does not wait for the
//!   fsync), and the client is answered only after the commit: nothing
//!   acknowledged is lost, and an edit lost to a crash before its commit was
//!   never acknowledged. Any error (EC2 validation, store write, data-plane
//!   launch) undoes the recorded changes and leaves model, store and data plane
//!   as they were (a store error publishes the old model again, under
//!   generation + 2).
//! * `run-instances` (and `attach-instance`) runs in two steps ([`Step`]):
//!   [`Core::begin`] validates and stages every instance in the model (groups,
//!   addresses), then takes the staging back out and keeps the instances as a
//!   reservation (ids, addresses, MACs, interfaces no other launch or attach can
//!   take; [`Model::free_ip`] plus the reserved addresses) and returns the slow
//!   part (namespaces, TAPs, queues, guests: [`Dataplane::launch_job`]) as a
//!   job; [`Core::finish`] takes in what it made, stages the instances again
//!   (re-validated), commits and answers. A failure at any step undoes the
//!   staged changes and destroys what was created. `terminate-instances`
//!   commits in `begin` and leaves the destroy as the job
//!   ([`Dataplane::terminate_job`]). [`Core::handle`] is both steps in one
//!   call. Instance ids are
//!   random (`i-` + 8 hex from `getrandom`), MACs derived from the id
//!   ([`filter::model::instance_mac`]), addresses the lowest free ones of the
//!   subnet outside the uplink range ([`Model::free_ip`]).
//! * Every owner has a `default` group: the first request of an unseen owner
//!   creates it (a committed edit of its own).
//! * Edit latency (request received → committed; in the daemon the fsync of
//!   the store's log follows, outside the core: [`Core::defer_sync`]; elsewhere
//!   it is included) and publish latency (validated → snapshot published:
//!   store edits, incremental compile and pointer swap, the edit's
//!   enforcement delay) are kept for the last [`LATENCY_WINDOW`] edits;
//!   [`StatsReport`] shows p50/p99 of both.
//! * Guest images (`register-image`, `describe-images`, `deregister-image`) are
//!   the daemon's, shared by all owners (like public AMIs). Registering checks
//!   the AMI id (`ami-` + 8 lowercase hex digits), that the kernel, initrd and
//!   disk are existing regular files given by absolute path, that the kernel is
//!   a Linux bzImage and the initrd an initramfs ([`crate::qemu::check_kernel`],
//!   [`crate::qemu::check_initrd`]), the memory (32 to
//!   65536 MiB) and the command line; a registered AMI again is
//!   `InvalidAMIID.Duplicate`, an unknown one `InvalidAMIID.NotFound`. Images
//!   are one store transaction each and do not change the rules (no new
//!   generation). Deregistering does not touch guests already booted from it.
//! * `run-instances AMI --qemu` boots the AMI's registered image; an AMI that is
//!   not registered boots the daemon's default image (`up --qemu-kernel ...`)
//!   if it has one, and is `InvalidAMIID.NotFound` otherwise. Namespace
//!   instances (no `--qemu`) only record the AMI.
//! * Instance states ([`Liveness`]): a namespace instance (its address set
//!   directly) and an attached interface are `running` as soon as they are
//!   made. A QEMU guest is `pending` from its launch (which only spawns QEMU:
//!   nothing on this thread waits for the guest) until the switch's DHCP server
//!   acknowledged its first lease on its port, then `running`. An instance
//!   whose guest process ended, whose namespace was deleted by hand, whose port
//!   the switch found gone, or that could not be re-attached after a restart
//!   is `stopped`, with the reason kept and shown by `describe-instances`; it
//!   stays so (its record, address and namespace remain) until it is
//!   terminated. States are refreshed from the data plane
//!   ([`Dataplane::check`]) before `describe-instances` and
//!   `terminate-instances` answer, and for QEMU guests on every [`Core::tick`]
//!   (the daemon's management thread ticks when idle).
//! * `terminate-instances --all` terminates every instance of the caller's
//!   owner (none is not an error); giving ids as well is
//!   `InvalidParameterCombination`.
//! * Both front doors (the socket CLI and the EC2 Query API, [`crate::ec2`])
//!   send the same commands through the same validation and edits. Groups
//!   are named by name or `sg-` id ([`GroupRef`]), resolved in one place
//!   ([`Core::group_name`]) among the caller's own groups (a source group by
//!   id among its owner's), so another owner's group is
//!   `InvalidGroup.NotFound`; the permissions of one request are applied all
//!   or none. `RunInstances` takes EC2's MinCount/MaxCount (the CLI's `-n N`
//!   is both) and, when the request does not say, boots QEMU guests for an
//!   AMI registered with `register-image` and namespace instances otherwise;
//!   its `ClientToken` is stored in the launch's own transaction and a repeat
//!   with the same parameters returns that reservation (other parameters:
//!   `IdempotentParameterMismatch`). Access keys (`create-access-key`:
//!   `AKIA` and 16 characters, a 40-character secret, both from
//!   `getrandom`) are stored and looked up by the EC2 front door only
//!   ([`Core::lookup_access_key`] is no command: the socket cannot ask it).

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use filter::compile::Compiler;
use filter::model::{Change, Instance, Limits, Owner, instance_mac};
use filter::{ErrorCode, Mac, Model, Snapshot};
use ipnet::Ipv4Net;

use crate::api::{
    ApiError, Command, GroupRef, InstanceView, KeySecret, Permission, Reply, Request, Reservation,
    Response, StateChange, StatsReport,
};
use crate::qemu::GuestImage;
pub use crate::store::Attachment;
use crate::store::{
    self, AccessKeyRecord, ClientTokenRecord, Edit, ImageRecord, InstanceRecord, Store, StoreError,
};

mod cluster;
mod ec2;
mod hits;
mod images;
mod lifecycle;
mod trace;

pub use cluster::{Directory, DirectoryInstance, Link};

use ec2::Ec2State;

/// Edits whose latency is kept for the percentiles.
pub const LATENCY_WINDOW: usize = 1024;
/// Counter names in the store.
pub const COUNTER_GROUP_SEQ: &str = "next_group_seq";
pub const COUNTER_GENERATION: &str = "generation";

/// Where an instance stands (its EC2 state, and why when that is not obvious).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Liveness {
    /// Being set up: a QEMU guest before its first DHCP lease. Why (e.g. the
    /// accelerator it boots on).
    Pending(String),
    Running,
    /// Not running, and not coming back by itself (until terminated); why.
    Stopped(String),
    /// Cluster mode: on a host whose lease expired (killed, cut off); why.
    Unreachable(String),
}

impl Liveness {
    /// The EC2 state name.
    pub fn name(&self) -> &'static str {
        match self {
            Liveness::Pending(_) => "pending",
            Liveness::Running => "running",
            Liveness::Stopped(_) => "stopped",
            Liveness::Unreachable(_) => "unreachable",
        }
    }

    /// The state reason, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Liveness::Pending(r) | Liveness::Stopped(r) | Liveness::Unreachable(r) => Some(r),
            Liveness::Running => None,
        }
    }
}

/// What a launch job made, for [`Dataplane::finish_launch`] (each data plane
/// downcasts its own type).
pub type Made = Box<dyn std::any::Any + Send>;
/// The slow part of one instance's launch (see [`Dataplane::launch_job`]).
pub type LaunchJob = Box<dyn FnOnce() -> Result<Made, ApiError> + Send>;
/// The slow part of one instance's termination (see
/// [`Dataplane::terminate_job`]).
pub type TerminateJob = Box<dyn FnOnce() -> Result<(), ApiError> + Send>;
/// The slow part of a request ([`Step::Slow`]); what it returns goes to
/// [`Core::finish`].
pub type Job = Box<dyn FnOnce() -> JobDone + Send>;
/// What a [`Job`] returns (opaque to the caller).
pub type JobDone = Box<dyn std::any::Any + Send>;

/// The first step of a request ([`Core::begin`]).
pub enum Step {
    /// Answered.
    Done(Reply),
    /// Validated and reserved; `job` (creating namespaces, TAPs, queues,
    /// QEMU guests, or destroying them) must run, anywhere but may take its
    /// time, and its result go to [`Core::finish`] with `ticket`, which
    /// answers the request. Meanwhile the core takes other requests.
    Slow { ticket: u64, job: Job },
}

/// What the core needs from the data plane. The daemon's implementation drives
/// the real switch and namespaces; tests use an in-memory one.
pub trait Dataplane: Send {
    /// Make `snap` (compiled at `generation`) the rules every worker uses from
    /// its next burst on.
    fn publish(&mut self, snap: Snapshot, generation: u64);
    /// Create the instance's attachment (namespace + TAP, AF_PACKET on an
    /// existing interface, or a QEMU guest) and its switch port; returns the
    /// attachment as made (a guest's PID filled in). On error nothing may be left
    /// behind.
    /// `image` is what an [`Attachment::Qemu`] boots (the core always gives one
    /// for those; `None` for the other attachments).
    fn launch(
        &mut self,
        inst: &Instance,
        prefix_len: u8,
        how: &Attachment,
        image: Option<&GuestImage>,
    ) -> Result<Attachment, ApiError>;
    /// [`Dataplane::launch`] in two steps: this one, on the management
    /// thread, returns the slow part as a job that may run on any thread
    /// (namespace, TAP, queues, port, QEMU); the job must leave nothing
    /// behind when it fails. [`Dataplane::finish_launch`] then takes in what
    /// it made, on the management thread. Default: nothing slow (the job makes
    /// nothing, `finish_launch` calls `launch`).
    fn launch_job(
        &mut self,
        _inst: &Instance,
        _prefix_len: u8,
        _how: &Attachment,
        _image: Option<&GuestImage>,
    ) -> LaunchJob {
        Box::new(|| Ok(Box::new(()) as Made))
    }
    /// Take in what a [`Dataplane::launch_job`] made: from now on the data
    /// plane knows the instance as after [`Dataplane::launch`] (it can be
    /// checked and terminated); returns the attachment as made.
    fn finish_launch(
        &mut self,
        inst: &Instance,
        prefix_len: u8,
        how: &Attachment,
        image: Option<&GuestImage>,
        made: Made,
    ) -> Result<Attachment, ApiError> {
        drop(made);
        self.launch(inst, prefix_len, how, image)
    }
    /// Undo what a launch job made that will not be taken in (an earlier
    /// instance of the same launch failed). Default: nothing was made.
    fn discard_launch(&mut self, _inst: &Instance, _how: &Attachment, _made: Made) {}
    /// [`Dataplane::terminate`] in two steps: take the instance off the
    /// switch now (on the management thread; after this the data plane no
    /// longer knows it) and return the rest (destroying the namespace,
    /// stopping the guest) as a job for any thread. Default: all now.
    fn terminate_job(&mut self, id: &str, how: &Attachment) -> TerminateJob {
        let done = self.terminate(id, how);
        Box::new(move || done)
    }
    /// After a restart: attach the existing instance again (or recreate it).
    fn reattach(&mut self, rec: &InstanceRecord, prefix_len: u8) -> Result<(), ApiError>;
    /// Remove the instance's port and destroy its namespace (an attached
    /// interface is only detached: it belongs to someone else).
    fn terminate(&mut self, id: &str, how: &Attachment) -> Result<(), ApiError>;
    /// Where instance `id` (attached `how`, launched or re-attached by this data
    /// plane) stands now. Must be quick (no waiting): the management thread
    /// calls it. Once it said `Stopped` it is not asked again.
    fn check(&mut self, _id: &str, _how: &Attachment) -> Liveness {
        Liveness::Running
    }
    /// Add data-plane counters to `report`.
    fn stats(&self, report: &mut StatsReport);
    /// Per-rule hits summed over the workers (see `switch::counters`): the
    /// published snapshot's rule-slot layout (the serial of each slot's rule)
    /// and the hits of each slot. Empty without a switch.
    fn rule_hits(&self) -> (Vec<u64>, Vec<crate::api::RuleHits>) {
        (Vec::new(), Vec::new())
    }
    /// Cluster mode: the overlay's view of the lab (live hosts, every
    /// instance with its host and identity), after every applied change.
    fn publish_directory(&mut self, _dir: &Directory) {}
    /// Ports the switch removed so far because their netdev disappeared
    /// (a namespace deleted by hand, a guest gone): the core logs each new
    /// loss and refreshes the instances' states.
    fn ports_gone(&self) -> u64 {
        0
    }
    /// Stop the data plane (daemon shutdown). Instances' namespaces are kept.
    fn shutdown(&mut self) {}
    /// Run `frames` (each with where it enters) through the switch's own
    /// decision code against the published rules, with scratch ports and
    /// connection state (`sgswitch trace`; see `switch::trace`).
    fn trace(
        &self,
        _frames: &[(switch::trace::Ingress, Vec<u8>)],
    ) -> Result<switch::trace::TraceRun, ApiError> {
        Err(ApiError::internal(
            "no switch runs in this daemon: nothing to trace",
        ))
    }
    /// Start capturing at the port named `port` (`None`: every port); see
    /// `switch::capture`.
    fn capture(
        &self,
        _port: Option<&str>,
        _spec: switch::capture::CaptureSpec,
    ) -> Result<switch::capture::Capture, ApiError> {
        Err(ApiError::new(
            ErrorCode::InvalidAction,
            "no switch runs in this daemon: nothing to capture",
        ))
    }
}

/// Settings of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Owner of requests that name none.
    pub default_owner: Owner,
    /// Instances' subnet.
    pub subnet: Ipv4Net,
    /// Addresses never given to instances (the uplink side).
    pub uplink_range: Ipv4Net,
    /// Instances' IPv6 /64 ([`crate::ipv6::resolve`]); `None`: IPv4 only.
    pub subnet6: Option<ipnet::Ipv6Net>,
    pub limits: Limits,
    /// Most instances per `run-instances`.
    pub max_launch: u32,
    /// What `run-instances AMI --qemu` boots for an AMI that is not registered
    /// (`up --qemu-kernel ... --qemu-initrd ...`).
    pub default_image: Option<GuestImage>,
    /// Cluster mode: this host's name (`up --etcd ... --host NAME`). The
    /// core then re-attaches only this host's instances at open and makes
    /// no edit before it joined the lab ([`Core::join_cluster`]).
    pub cluster_host: Option<String>,
}

impl CoreConfig {
    /// Defaults of DESIGN §5: 172.31.0.0/16, uplink range its last /24.
    pub fn new(default_owner: Owner, subnet: Ipv4Net) -> CoreConfig {
        CoreConfig {
            default_owner,
            subnet,
            uplink_range: default_uplink_range(subnet),
            subnet6: None,
            limits: Limits::default(),
            max_launch: 256,
            default_image: None,
            cluster_host: None,
        }
    }
}

/// The last /24 of `subnet` (the subnet itself when it is a /24 or smaller...
/// then its upper half, so that instances keep the lower one).
pub fn default_uplink_range(subnet: Ipv4Net) -> Ipv4Net {
    let p = subnet.prefix_len();
    let len = if p < 24 { 24 } else { (p + 1).min(32) };
    let last = u32::from(subnet.broadcast());
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Net::new(std::net::Ipv4Addr::from(last & mask), len).unwrap_or(subnet)
}

/// Rebuild the model and instance records from the store.
/// What [`load_model`] rebuilds.
type Reloaded = (
    Model,
    BTreeMap<String, InstanceRecord>,
    u64,
    BTreeMap<String, ImageRecord>,
    Ec2State,
    ClusterCache,
);

/// What the SQLite cache of cluster mode holds besides the model: the etcd
/// revision it is at (0: none) and the live hosts as last seen.
type ClusterCache = (i64, Vec<(String, std::net::SocketAddr)>);

fn load_model(store: &Store, cfg: &CoreConfig) -> Result<Reloaded, CoreError> {
    let loaded = store.load()?;
    let mut model = Model::new(cfg.limits);
    model
        .set_subnet6(cfg.subnet6)
        .map_err(|source| CoreError::Reload {
            what: "the IPv6 prefix".into(),
            source,
        })?;
    for g in loaded.groups {
        let what = format!("group {}/{}", g.owner, g.name);
        model
            .insert_group_raw(g)
            .map_err(|source| CoreError::Reload { what, source })?;
    }
    let mut records = BTreeMap::new();
    for r in loaded.instances {
        let what = format!("instance {}", r.instance.id);
        model
            .add_instance(r.instance.clone())
            .map_err(|source| CoreError::Reload { what, source })?;
        records.insert(r.instance.id.clone(), r);
    }
    // insert_group_raw already moved the counter past every reloaded id; the stored
    // counter may be further on (ids of deleted groups are never handed out again).
    let group_seq = loaded
        .counters
        .get(COUNTER_GROUP_SEQ)
        .map_or(model.next_group_seq(), |&v| {
            model.next_group_seq().max(v as u64)
        });
    model.advance_group_seq(group_seq);
    let generation = loaded
        .counters
        .get(COUNTER_GENERATION)
        .map_or(0, |&v| v as u64);
    let images = loaded
        .images
        .into_iter()
        .map(|i| (i.ami.clone(), i))
        .collect();
    let cluster = (
        loaded
            .counters
            .get(cluster::COUNTER_ETCD_REVISION)
            .copied()
            .unwrap_or(0),
        loaded.cluster_hosts,
    );
    let ec2 = Ec2State::load(
        loaded.access_keys,
        loaded.client_tokens,
        loaded.rule_meta,
        loaded.tags,
    );
    Ok((model, records, generation, images, ec2, cluster))
}

/// Errors of opening the core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("creating the default owner's default group")]
    DefaultOwner(#[source] ApiError),
    #[error("reloading {what} from the state database")]
    Reload {
        what: String,
        #[source]
        source: filter::Ec2Error,
    },
}

/// The management core.
pub struct Core {
    cfg: CoreConfig,
    model: Model,
    records: BTreeMap<String, InstanceRecord>,
    /// Registered guest images by AMI.
    images: BTreeMap<String, ImageRecord>,
    /// The state of every instance with a record (absent: not attached, e.g.
    /// never re-attached after a restart; shown as stopped).
    states: BTreeMap<String, Liveness>,
    store: Store,
    dp: Box<dyn Dataplane>,
    /// The compiled state of `model` (updated per edit).
    compiler: Compiler,
    generation: u64,
    /// Generation of the last snapshot handed to the data plane.
    published: Option<u64>,
    edits: u64,
    latencies: VecDeque<u64>,
    /// Validated → snapshot published (compile + swap), per edit (microseconds).
    publish_latencies: VecDeque<u64>,
    /// (sum µs, count) of every edit latency and publish latency since start.
    latency_totals: (u64, u64),
    publish_latency_totals: (u64, u64),
    /// Access keys and ClientTokens of the EC2 Query API.
    ec2: Ec2State,
    /// Cluster mode ([`Core::join_cluster`]).
    cluster: Option<Link>,
    /// The etcd revision the SQLite cache holds (0: none).
    cache_revision: i64,
    /// Cluster mode: the live hosts as last cached.
    cached_hosts: Vec<(String, std::net::SocketAddr)>,
    /// Inside [`Command::DryRun`]: validate and stage, never commit or launch.
    /// Set for one [`Core::handle`] call only (from `arm_dry_run`, which
    /// that call takes), so a panic inside cannot leave it set.
    dry_run: bool,
    arm_dry_run: bool,
    /// [`Dataplane::ports_gone`] when last looked at.
    ports_gone_seen: u64,
    /// Requests between [`Core::begin`] and [`Core::finish`] (launches hold
    /// their reservations here), by ticket.
    pending: BTreeMap<u64, lifecycle::Pending>,
    next_ticket: u64,
    /// The slow part the current request left for [`Core::begin`] to return.
    slow_out: Option<(u64, Job)>,
}

impl Core {
    /// Load the state from `store`, make sure the default owner exists, re-attach
    /// the instances and publish the first snapshot.
    ///
    /// On error the data plane is shut down (nothing is left running).
    pub fn open(
        store: Store,
        cfg: CoreConfig,
        mut dp: Box<dyn Dataplane>,
    ) -> Result<Core, CoreError> {
        let loaded = load_model(&store, &cfg);
        let (mut model, records, generation, images, ec2, (cache_revision, cached_hosts)) =
            match loaded {
                Ok(v) => v,
                Err(e) => {
                    dp.shutdown();
                    return Err(e);
                }
            };
        model.take_changes();
        model.record_changes();
        let compiler = Compiler::new(&model);
        let mut core = Core {
            cfg,
            model,
            records,
            images,
            states: BTreeMap::new(),
            store,
            dp,
            compiler,
            generation,
            published: None,
            edits: 0,
            latencies: VecDeque::new(),
            publish_latencies: VecDeque::new(),
            latency_totals: (0, 0),
            publish_latency_totals: (0, 0),
            ec2,
            cluster: None,
            cache_revision,
            cached_hosts,
            dry_run: false,
            arm_dry_run: false,
            ports_gone_seen: 0,
            pending: BTreeMap::new(),
            next_ticket: 1,
            slow_out: None,
        };
        let owner = core.cfg.default_owner.clone();
        if core.cfg.cluster_host.is_none()
            && let Err(e) = core.ensure_owner(&owner)
        {
            core.dp.shutdown();
            return Err(CoreError::DefaultOwner(e));
        }
        let prefix = core.cfg.subnet.prefix_len();
        let host = core.cfg.cluster_host.clone();
        let total = core
            .records
            .values()
            .filter(|r| host.as_ref().is_none_or(|h| *h == r.host))
            .count();
        // Progress: about every tenth, and the last.
        let every = (total / 10).max(1);
        let mut done = 0;
        let started = Instant::now();
        for rec in core.records.values() {
            if host.as_ref().is_some_and(|h| *h != rec.host) {
                continue;
            }
            let id = rec.instance.id.clone();
            let state = match core.dp.reattach(rec, prefix) {
                Ok(()) => core.dp.check(&id, &rec.attachment),
                Err(e) => {
                    tracing::warn!(instance = %id, "cannot re-attach instance {id}: {e}");
                    Liveness::Stopped(format!("not re-attached after a daemon restart: {e}"))
                }
            };
            core.states.insert(id, state);
            done += 1;
            if done % every == 0 || done == total {
                tracing::info!(
                    done,
                    total,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "re-attached {done}/{total}"
                );
            }
        }
        if core.published != Some(core.generation) {
            core.publish();
        }
        Ok(core)
    }

    /// Start the capture of a [`Command::Capture`] request (the caller
    /// streams it): the target is one of the owner's instances, a port name,
    /// or `all`.
    pub fn start_capture(&mut self, req: Request) -> Result<crate::capture::Started, ApiError> {
        let Command::Capture {
            target,
            drops,
            count,
            max_bytes,
            duration_secs,
            snaplen,
        } = req.command
        else {
            return Err(ApiError::internal("not a capture request"));
        };
        let owner_text = req
            .owner
            .as_deref()
            .unwrap_or(&self.cfg.default_owner.0)
            .to_owned();
        let owner = Owner::parse(&owner_text)?;
        let limits = crate::capture::Limits::of(drops, count, max_bytes, duration_secs, snaplen)?;
        if target.starts_with("i-") {
            self.owned_ids(&owner, std::slice::from_ref(&target))?;
        }
        let port = (target != "all").then_some(target.as_str());
        let spec = switch::capture::CaptureSpec {
            port: None,
            drops_only: limits.drops_only,
            snaplen: limits.snaplen as usize,
            ring: switch::capture::RING_RECORDS,
        };
        let capture = self.dp.capture(port, spec)?;
        tracing::info!(
            owner = %owner_text,
            target = %target,
            drops_only = limits.drops_only,
            "capture at {target} started by {owner_text}"
        );
        Ok(crate::capture::Started {
            capture,
            limits,
            target,
        })
    }

    /// Answer one request: [`Core::begin`], and for a slow one its job run
    /// here and [`Core::finish`].
    pub fn handle(&mut self, req: Request) -> Reply {
        match self.begin(req) {
            Step::Done(reply) => reply,
            Step::Slow { ticket, job } => {
                let done = job();
                self.finish(ticket, done)
            }
        }
    }

    /// The first step of a request: answered at once, or (a launch, a
    /// termination outside cluster mode) validated and reserved with its slow
    /// part returned as a job (see [`Step`]).
    ///
    /// Every edit (whatever its outcome) is logged at info when answered:
    /// owner, command, result (`ok` or the error code) and the generation
    /// after it.
    pub fn begin(&mut self, req: Request) -> Step {
        let t0 = Instant::now();
        let edit = req.command.is_edit().then(|| {
            let owner = req
                .owner
                .clone()
                .unwrap_or_else(|| self.cfg.default_owner.0.clone());
            (req.command.verb(), owner)
        });
        self.slow_out = None;
        let reply = if self.cluster.is_some() {
            self.handle_clustered(req)
        } else {
            self.handle_once(req)
        };
        if let Some((ticket, job)) = self.slow_out.take() {
            if let Some(p) = self.pending.get_mut(&ticket) {
                p.started = t0;
                p.edit = edit;
            }
            return Step::Slow { ticket, job };
        }
        self.log_edit(edit, &reply);
        Step::Done(reply)
    }

    /// The second step of a slow request: take in what its job did (the
    /// result of the [`Step::Slow`] job of `ticket`), commit or undo, and
    /// answer.
    pub fn finish(&mut self, ticket: u64, done: JobDone) -> Reply {
        let Some(p) = self.pending.remove(&ticket) else {
            return Err(ApiError::internal(format!("no request {ticket} in flight")));
        };
        let (started, edit) = (p.started, p.edit.clone());
        let reply = self.finish_pending(p, done);
        if reply.is_ok() && edit.is_some() {
            let us = started.elapsed().as_micros() as u64;
            push_window(&mut self.latencies, &mut self.latency_totals, us);
        }
        self.log_edit(edit, &reply);
        reply
    }

    /// Leave the fsync of each commit to the caller (the daemon, after it
    /// released the core): see [`Store::defer_sync`].
    pub fn defer_sync(&mut self) -> crate::store::Syncer {
        self.store.defer_sync()
    }

    /// Requests between [`Core::begin`] and [`Core::finish`].
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn log_edit(&self, edit: Option<(&'static str, String)>, reply: &Reply) {
        if let Some((verb, owner)) = edit {
            let result = match reply {
                Ok(_) => "ok",
                Err(e) => e.code.as_str(),
            };
            tracing::info!(
                owner = %owner,
                command = verb,
                result,
                generation = self.generation,
                "edit {verb} by {owner}: {result} (generation {})",
                self.generation
            );
        }
    }

    fn handle_once(&mut self, req: Request) -> Reply {
        let t0 = Instant::now();
        self.dry_run = std::mem::take(&mut self.arm_dry_run);
        self.ec2.pending_tags = std::mem::take(&mut self.ec2.arm_tags);
        self.ec2.pending_rules.clear();
        // A request that panicked (the daemon catches it) may have left staged,
        // uncommitted model changes: undo them before anything else.
        self.rollback();
        let owner_text = req
            .owner
            .as_deref()
            .unwrap_or(&self.cfg.default_owner.0)
            .to_owned();
        let owner = Owner::parse(&owner_text)?;
        self.ensure_owner(&owner)?;
        // A wrapped command's edit is counted by the inner `handle`.
        let is_edit = req.command.is_edit() && !matches!(req.command, Command::Tagged { .. });
        let reply = match req.command {
            Command::AddGroup { name, description } => {
                let g = self.edit(|m| Ok(m.add_group(&owner, &name, &description)?))?;
                Ok(Response::GroupAdded {
                    name: g.name,
                    description: g.description,
                    id: g.id,
                })
            }
            Command::DeleteGroup { group } => {
                let name = self.group_name(&owner, &group)?;
                let g = self.edit(|m| Ok(m.delete_group(&owner, &name)?))?;
                Ok(Response::GroupDeleted { name: g.name })
            }
            Command::DescribeGroups { groups } => {
                let names = self.group_names(&owner, &groups)?;
                let groups = self
                    .model
                    .describe_groups(&owner, &names)?
                    .into_iter()
                    .cloned()
                    .collect();
                Ok(Response::Groups { groups })
            }
            Command::Authorize {
                group,
                permissions,
                egress,
            } => {
                self.stage_descriptions(&owner, &group, &permissions, egress)?;
                let (name, rules) = self.permission_rules(&owner, &group, &permissions)?;
                self.edit(|m| Ok(m.authorize_rules_dir(&owner, &name, &rules, egress)?))?;
                Ok(Response::Permissions {
                    group: name,
                    rules,
                    egress,
                })
            }
            Command::Revoke {
                group,
                permissions,
                egress,
            } => {
                let (name, rules) = self.permission_rules(&owner, &group, &permissions)?;
                self.edit(|m| Ok(m.revoke_rules_dir(&owner, &name, &rules, egress)?))?;
                Ok(Response::Permissions {
                    group: name,
                    rules,
                    egress,
                })
            }
            Command::AttachInstance {
                ifname,
                netns,
                groups,
                ip,
                mac,
            } => {
                let groups = self.group_names(&owner, &groups)?;
                self.attach_instance(&owner, &ifname, netns, groups, ip, mac.as_deref())
            }
            Command::RunInstances {
                ami,
                count,
                min_count,
                groups,
                qemu,
                client_token,
            } => self.run_instances_command(
                &owner,
                &ami,
                (min_count, count),
                &groups,
                qemu,
                client_token,
            ),
            Command::DescribeInstances { ids } => self.describe_instances(&owner, &ids),
            Command::TerminateInstances { ids, all } => self.terminate_instances(&owner, &ids, all),
            Command::RegisterImage {
                ami,
                kernel,
                initrd,
                disk,
                memory_mb,
                append,
            } => self.register_image(ImageRecord {
                ami,
                kernel,
                initrd,
                disk,
                memory_mb: memory_mb.unwrap_or(crate::api::DEFAULT_IMAGE_MEMORY_MB),
                append: append.unwrap_or_else(|| crate::api::DEFAULT_IMAGE_APPEND.to_owned()),
                registered_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
            }),
            Command::DescribeImages { amis } => self.describe_images(&amis),
            Command::DeregisterImage { ami } => self.deregister_image(&ami),
            Command::Stats => Ok(Response::Stats {
                stats: Box::new(self.stats()),
            }),
            Command::CreateAccessKey => self.create_access_key(&owner),
            Command::Hosts => self.hosts(),
            Command::DescribeAccessKeys => Ok(self.describe_access_keys(&owner)),
            Command::DeleteAccessKey { key_id } => self.delete_access_key(&owner, &key_id),
            Command::DescribeRules { groups, rule_ids } => {
                self.describe_rules(&owner, &groups, &rule_ids)
            }
            Command::UpdateRuleDescriptions {
                group,
                permissions,
                egress,
            } => self.update_rule_descriptions(&owner, &group, &permissions, egress),
            Command::RevokeRuleIds {
                group,
                rule_ids,
                egress,
            } => self.revoke_rule_ids(&owner, &group, &rule_ids, egress),
            Command::ModifyRules { group, rules } => self.modify_rules(&owner, &group, &rules),
            Command::CreateTags { resources, tags } => self.create_tags(&owner, &resources, &tags),
            Command::DeleteTags { resources, tags } => self.delete_tags(&owner, &resources, &tags),
            Command::DescribeTags => Ok(self.describe_tags(&owner)),
            Command::Tagged { command, tags } => self.tagged(&owner, *command, tags),
            Command::DryRun { command } => self.dry_run(&owner, *command),
            Command::Capture { .. } => Err(ApiError::new(
                ErrorCode::InvalidAction,
                "capture streams frames on its own connection of the API socket (sgswitch capture)",
            )),
            Command::DescribeGroupStats { groups } => {
                let names = self.group_names(&owner, &groups)?;
                self.group_stats(&owner, &names)
            }
            Command::InstanceStats { id } => {
                let ids = self.owned_ids(&owner, std::slice::from_ref(&id))?;
                self.refresh(&ids);
                let instance = self
                    .records
                    .get(&id)
                    .map(|r| self.view(r))
                    .ok_or_else(|| ApiError::internal(format!("no record of {id}")))?;
                let mut report = StatsReport::default();
                self.dp.stats(&mut report);
                let port = report.ports.into_iter().find(|p| p.name == id);
                Ok(Response::InstanceStats {
                    stats: Box::new(crate::api::InstanceStats { instance, port }),
                })
            }
            Command::Trace {
                from,
                to,
                proto,
                port,
                icmp,
                established,
                reply_of,
                ipv6,
            } => self.trace(
                &owner,
                trace::TraceArgs {
                    from,
                    to,
                    proto,
                    port,
                    icmp,
                    established,
                    reply_of,
                    ipv6,
                },
            ),
        };
        if is_edit && reply.is_ok() && self.slow_out.is_none() {
            let us = t0.elapsed().as_micros() as u64;
            push_window(&mut self.latencies, &mut self.latency_totals, us);
        }
        if reply.is_err() {
            // Whatever the request staged and did not commit is undone.
            self.rollback();
        }
        reply
    }

    /// The current model (read-only).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The current generation (of the last published snapshot).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A canonical dump of the whole state (model, instance records, store rows):
    /// byte-identical before and after any failed request.
    pub fn dump(&self) -> String {
        let model =
            serde_json::to_string_pretty(&self.model).unwrap_or_else(|e| format!("<model: {e}>"));
        let records = serde_json::to_string_pretty(&self.records)
            .unwrap_or_else(|e| format!("<records: {e}>"));
        let store = self
            .store
            .dump()
            .unwrap_or_else(|e| format!("<store: {e}>"));
        format!("{model}\n{records}\n{store}")
    }

    /// Take the data plane back (shutdown).
    pub fn into_dataplane(self) -> Box<dyn Dataplane> {
        self.dp
    }

    /// The data plane (tests).
    pub fn dataplane(&self) -> &dyn Dataplane {
        &*self.dp
    }

    fn ensure_owner(&mut self, owner: &Owner) -> Result<(), ApiError> {
        if self
            .model
            .groups()
            .contains_key(&(owner.clone(), "default".to_owned()))
        {
            return Ok(());
        }
        self.edit(|m| {
            m.ensure_owner(owner);
            Ok(())
        })
    }

    /// Apply `f` to the model (its methods validate before they change
    /// anything), then commit exactly the changes it made; on any error they
    /// are undone.
    fn edit<T>(
        &mut self,
        f: impl FnOnce(&mut Model) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match f(&mut self.model) {
            Ok(out) => {
                self.commit(BTreeMap::new())?;
                Ok(out)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Undo the model changes not committed yet.
    fn rollback(&mut self) {
        let changes = self.model.take_changes();
        self.model.undo(changes);
    }

    /// Commit the model's recorded changes (with the records of its new
    /// instances): compile what they touch, publish, store.
    fn commit(&mut self, new_records: BTreeMap<String, InstanceRecord>) -> Result<(), ApiError> {
        self.commit_with(new_records, Vec::new())
    }

    /// [`Core::commit`] with `extra` store edits in the same transaction.
    fn commit_with(
        &mut self,
        new_records: BTreeMap<String, InstanceRecord>,
        extra: Vec<Edit>,
    ) -> Result<(), ApiError> {
        if self.dry_run {
            // Validated and staged: a dry run stops here, changing nothing.
            self.rollback();
            return Err(ec2::dry_run_ok());
        }
        let started = Instant::now();
        let changes = self.model.take_changes();
        if self.cluster.is_some() {
            return self.commit_cluster(changes, new_records, extra);
        }
        // Enforce first, then make durable, then answer: the new rules reach
        // the datapath without waiting for the store, and the client still
        // hears of the edit only once it is committed. The store's records of
        // the edit are made after the publish too (they cost as much as the
        // compile on a loaded host, and nothing enforced depends on them). An
        // edit that never commits (store error, crash) was never acknowledged;
        // on a store error the old rules are published again under a newer
        // generation.
        self.compiler.apply(&self.model, &changes);
        self.dp.publish(
            self.compiler.snapshot(self.generation + 1),
            self.generation + 1,
        );
        let published = started.elapsed();
        let mut edits = match store_edits(&changes, &new_records) {
            Ok(e) => e,
            Err(e) => {
                self.republish_without(changes);
                return Err(e);
            }
        };
        edits.extend(extra);
        let (meta, meta_after) = self.meta_edits(&changes);
        edits.extend(meta);
        edits.extend(self.counter_edits(self.generation + 1));
        let ordinary = crate::sched::ordinary();
        let committed = self.store.commit(&edits);
        drop(ordinary);
        if let Err(e) = committed {
            self.republish_without(changes);
            return Err(store_failed(e));
        }
        for c in &changes {
            if let Change::InstanceRemoved(i) = c {
                self.records.remove(&i.id);
            }
        }
        self.records.extend(new_records);
        self.apply_meta(meta_after);
        self.generation += 1;
        self.published = Some(self.generation);
        self.edits += 1;
        push_window(
            &mut self.publish_latencies,
            &mut self.publish_latency_totals,
            published.as_micros() as u64,
        );
        Ok(())
    }

    /// Commit store edits that do not touch the model (images, access
    /// keys): one SQLite transaction, or in cluster mode one etcd one.
    fn commit_records(&mut self, edits: Vec<Edit>) -> Result<(), ApiError> {
        if self.cluster.is_some() {
            return self.commit_cluster(Vec::new(), BTreeMap::new(), edits);
        }
        self.store.commit(&edits).map_err(store_failed)?;
        self.edits += 1;
        Ok(())
    }

    /// The counters every committed change stores: the group id sequence
    /// and `generation`.
    fn counter_edits(&self, generation: u64) -> [Edit; 2] {
        [
            Edit::SetCounter {
                name: COUNTER_GROUP_SEQ.into(),
                value: self.model.next_group_seq() as i64,
            },
            Edit::SetCounter {
                name: COUNTER_GENERATION.into(),
                value: generation as i64,
            },
        ]
    }

    /// Undo `changes` (published, never committed) and publish the restored
    /// model, compiled whole (rare: a store error), under a newer generation.
    fn republish_without(&mut self, changes: Vec<Change>) {
        self.model.undo(changes);
        self.compiler = Compiler::new(&self.model);
        self.generation += 2;
        self.publish();
    }

    fn publish(&mut self) {
        let snap = self.compiler.snapshot(self.generation);
        self.dp.publish(snap, self.generation);
        self.published = Some(self.generation);
    }

    /// The name of `owner`'s group `g` (by name: as given, existence checked by
    /// the model; by id: that owner's group with the id, else NotFound). The
    /// one place where group references are resolved.
    fn group_name(&self, owner: &Owner, g: &GroupRef) -> Result<String, ApiError> {
        match g {
            GroupRef::Name(n) => Ok(n.clone()),
            GroupRef::Id(id) => self
                .model
                .groups_of(owner)
                .find(|grp| grp.id == *id)
                .map(|grp| grp.name.clone())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidGroupNotFound,
                        format!(
                            "the security group ID '{}' does not exist",
                            id.escape_default()
                        ),
                    )
                }),
        }
    }

    /// The names of `owner`'s groups `refs`, in order.
    fn group_names(&self, owner: &Owner, refs: &[GroupRef]) -> Result<Vec<String>, ApiError> {
        refs.iter().map(|g| self.group_name(owner, g)).collect()
    }

    /// The target group's name and the rules of `permissions` (source groups by
    /// id resolved against their owner: the caller unless one is given).
    fn permission_rules(
        &self,
        owner: &Owner,
        group: &GroupRef,
        permissions: &[Permission],
    ) -> Result<(String, Vec<filter::model::Rule>), ApiError> {
        let name = self.group_name(owner, group)?;
        if permissions.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "the request must contain the parameter IpPermissions",
            ));
        }
        let mut rules = Vec::new();
        for p in permissions {
            let mut groups = Vec::with_capacity(p.groups.len());
            for sg in &p.groups {
                let src_owner = match &sg.owner {
                    Some(o) => Owner::parse(o)?,
                    None => owner.clone(),
                };
                let src_name = self.group_name(&src_owner, &sg.group)?;
                groups.push((src_name, Some(src_owner.0)));
            }
            let spec = filter::model::RuleSpec {
                proto: p.proto.clone(),
                ports: p.ports.clone(),
                icmp: p.icmp.clone(),
                cidrs: p.cidrs.clone(),
                groups,
            };
            rules.extend(spec.expand(owner)?);
        }
        Ok((name, rules))
    }

    fn stats(&self) -> StatsReport {
        let (p50, p99) = percentiles(&self.latencies);
        let (pub50, pub99) = percentiles(&self.publish_latencies);
        let mut report = StatsReport {
            generation: self.generation,
            groups: self.model.groups().len() as u64,
            rules: self
                .model
                .groups()
                .values()
                .map(|g| g.rules.len() as u64)
                .sum(),
            instances: self.model.instances().len() as u64,
            edits: self.edits,
            edit_latency_p50_us: p50,
            edit_latency_p99_us: p99,
            publish_latency_p50_us: pub50,
            publish_latency_p99_us: pub99,
            edit_latency_sum_us: self.latency_totals.0,
            edit_latency_count: self.latency_totals.1,
            publish_latency_sum_us: self.publish_latency_totals.0,
            publish_latency_count: self.publish_latency_totals.1,
            ..StatsReport::default()
        };
        self.dp.stats(&mut report);
        self.add_rule_series(&mut report);
        report
    }
}

/// The `InternalError` of a failed store transaction (nothing was changed).
fn store_failed(e: StoreError) -> ApiError {
    ApiError::internal(format!(
        "state not changed: {}",
        crate::api::error_chain(&e)
    ))
}

fn push_window(w: &mut VecDeque<u64>, totals: &mut (u64, u64), v: u64) {
    totals.0 = totals.0.saturating_add(v);
    totals.1 += 1;
    if w.len() == LATENCY_WINDOW {
        w.pop_front();
    }
    w.push_back(v);
}

/// (p50, p99) of a window; zeros when empty.
fn percentiles(w: &VecDeque<u64>) -> (u64, u64) {
    let mut sorted: Vec<u64> = w.iter().copied().collect();
    sorted.sort_unstable();
    let pct = |p: usize| {
        if sorted.is_empty() {
            0
        } else {
            sorted[(sorted.len() - 1) * p / 100]
        }
    };
    (pct(50), pct(99))
}

/// The store edits of recorded model `changes`, one for one and in order (no
/// comparison of whole models). New instances take their launch facts from
/// `records`.
pub fn store_edits(
    changes: &[Change],
    records: &BTreeMap<String, InstanceRecord>,
) -> Result<Vec<Edit>, ApiError> {
    let mut edits = Vec::with_capacity(changes.len());
    for c in changes {
        edits.push(match c {
            Change::GroupAdded { group, .. } => Edit::PutGroup(group.clone()),
            Change::GroupDeleted(g) => Edit::DeleteGroup { id: g.id.clone() },
            Change::RulesAdded {
                group_id,
                rules,
                egress,
                ..
            } => {
                let (group_id, rules) = (group_id.clone(), rules.clone());
                if *egress {
                    Edit::AddEgressRules { group_id, rules }
                } else {
                    Edit::AddRules { group_id, rules }
                }
            }
            Change::RulesRemoved {
                group_id,
                rules,
                egress,
                ..
            } => {
                let (group_id, rules) = (group_id.clone(), rules.clone());
                if *egress {
                    Edit::RemoveEgressRules { group_id, rules }
                } else {
                    Edit::RemoveRules { group_id, rules }
                }
            }
            Change::InstanceAdded(inst) => {
                let rec = records.get(&inst.id).ok_or_else(|| {
                    ApiError::internal(format!("no launch record for new instance {}", inst.id))
                })?;
                Edit::AddInstance(InstanceRecord {
                    instance: inst.clone(),
                    ..rec.clone()
                })
            }
            Change::InstanceRemoved(inst) => Edit::RemoveInstance {
                id: inst.id.clone(),
            },
        });
    }
    Ok(edits)
}

/// The AMI column of attached interfaces (no image involved).
pub const ATTACHED_AMI: &str = "-";

/// `prefix` + 8 lowercase hex digits from the kernel's random source
/// (`getrandom`, which does not fail on any kernel sgswitch runs on).
pub fn random_id(prefix: &str) -> String {
    let v = getrandom::u32().expect("the kernel's random source (getrandom) failed");
    format!("{prefix}{v:08x}")
}

#[cfg(test)]
mod tests;
