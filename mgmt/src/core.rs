//! The management core: owns the [`Model`], the [`Store`] and a [`Dataplane`], and
//! turns each [`Request`] into a [`Reply`].
//!
//! Contract:
//! * One thread owns a `Core` (the daemon's management thread; tests call it
//!   directly). Nothing else touches the model or the data plane.
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
//! * `run-instances` validates and stages every instance in the model first
//!   (groups, addresses), then creates them in the data plane (namespaces +
//!   ports), then commits; a failure at any step undoes the staged changes and
//!   destroys what was created. Instance ids are
//!   random (`i-` + 8 hex from `/dev/urandom`), MACs derived from the id
//!   ([`filter::model::instance_mac`]), addresses the lowest free ones of the
//!   subnet outside the uplink range ([`Model::free_ip`]).
//! * Every owner has a `default` group: the first request of an unseen owner
//!   creates it (a committed edit of its own).
//! * Edit latency (request received → committed and answered, including the
//!   store's fsync) and publish latency (validated → snapshot published:
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
//!   `/dev/urandom`) are stored and looked up by the EC2 front door only
//!   ([`Core::lookup_access_key`] is no command: the socket cannot ask it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
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
use crate::store::{
    self, AccessKeyRecord, ClientTokenRecord, Edit, ImageRecord, InstanceRecord, Store, StoreError,
};

/// Edits whose latency is kept for the percentiles.
pub const LATENCY_WINDOW: usize = 1024;
/// Counter names in the store.
pub const COUNTER_GROUP_SEQ: &str = "next_group_seq";
pub const COUNTER_GENERATION: &str = "generation";

/// How an instance is attached to the switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A namespace instance: namespace `ID` with a TAP `eth0` the daemon owns.
    Netns,
    /// An interface someone else made (a QEMU guest's TAP, one end of a veth),
    /// attached with AF_PACKET, optionally inside namespace `netns`.
    Iface {
        ifname: String,
        netns: Option<String>,
    },
    /// A QEMU guest the daemon boots (`run-instances --qemu`); `pid` is 0 until
    /// it runs.
    Qemu { pid: u32 },
}

impl Attachment {
    /// The PLACE column: `netns:ID`, `port:IFNAME`, `port:IFNAME@NETNS` or
    /// `qemu:PID`.
    pub fn place(&self, id: &str) -> String {
        match self {
            Attachment::Netns => format!("netns:{id}"),
            Attachment::Iface {
                ifname,
                netns: None,
            } => format!("port:{ifname}"),
            Attachment::Iface {
                ifname,
                netns: Some(ns),
            } => format!("port:{ifname}@{ns}"),
            Attachment::Qemu { pid } => format!("qemu:{pid}"),
        }
    }

    /// Back from a PLACE (anything that is not `port:` or `qemu:PID` is a
    /// namespace instance).
    pub fn from_place(place: &str) -> Attachment {
        if let Some(pid) = place.strip_prefix("qemu:").and_then(|p| p.parse().ok()) {
            return Attachment::Qemu { pid };
        }
        match place.strip_prefix("port:") {
            Some(rest) => match rest.split_once('@') {
                Some((ifname, ns)) => Attachment::Iface {
                    ifname: ifname.into(),
                    netns: Some(ns.into()),
                },
                None => Attachment::Iface {
                    ifname: rest.into(),
                    netns: None,
                },
            },
            None => Attachment::Netns,
        }
    }
}

/// Where an instance stands (its EC2 state, and why when that is not obvious).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Liveness {
    /// Being set up: a QEMU guest before its first DHCP lease. Why (e.g. the
    /// accelerator it boots on).
    Pending(String),
    Running,
    /// Not running, and not coming back by itself (until terminated); why.
    Stopped(String),
}

impl Liveness {
    /// The EC2 state name.
    pub fn name(&self) -> &'static str {
        match self {
            Liveness::Pending(_) => "pending",
            Liveness::Running => "running",
            Liveness::Stopped(_) => "stopped",
        }
    }

    /// The state reason, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Liveness::Pending(r) | Liveness::Stopped(r) => Some(r),
            Liveness::Running => None,
        }
    }
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
    /// Stop the data plane (daemon shutdown). Instances' namespaces are kept.
    fn shutdown(&mut self) {}
}

/// What a [`RecordingDataplane`] saw; shared with the test that made it.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Generations of the snapshots published, in order.
    pub published: Vec<u64>,
    /// The snapshots published, in the same order.
    pub snapshots: Vec<Snapshot>,
    /// Instances currently attached.
    pub attached: BTreeSet<String>,
    /// Instance ids whose launch must fail (tests of the rollback).
    pub fail_launch: BTreeSet<String>,
    /// Fail every launch once this many have succeeded.
    pub fail_after: Option<usize>,
    /// Successful launches so far.
    pub launches: usize,
    /// Re-attached instances (restart).
    pub reattached: Vec<String>,
    pub shut_down: bool,
    /// Terminated (or rolled back) instances and how they were attached.
    pub terminated: Vec<(String, Attachment)>,
    /// Panic in `launch` (tests that a bug does not take the daemon down).
    pub panic_on_launch: bool,
    /// (instance id, image) of every QEMU launch.
    pub booted: Vec<(String, GuestImage)>,
    /// What `check` says of an instance (default: running, or
    /// `qemu_liveness` for QEMU guests when set).
    pub liveness: BTreeMap<String, Liveness>,
    pub qemu_liveness: Option<Liveness>,
    /// How often `check` was called.
    pub checks: usize,
}

/// A data plane that only records what it was asked: for tests of the core
/// without root or a switch.
#[derive(Clone, Debug, Default)]
pub struct RecordingDataplane {
    pub state: std::sync::Arc<std::sync::Mutex<Recorded>>,
}

impl RecordingDataplane {
    fn with<T>(&self, f: impl FnOnce(&mut Recorded) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

impl Dataplane for RecordingDataplane {
    fn publish(&mut self, snap: Snapshot, generation: u64) {
        self.with(|r| {
            r.published.push(generation);
            r.snapshots.push(snap);
        });
    }
    fn launch(
        &mut self,
        inst: &Instance,
        _prefix_len: u8,
        how: &Attachment,
        image: Option<&GuestImage>,
    ) -> Result<Attachment, ApiError> {
        if matches!(how, Attachment::Qemu { .. }) != image.is_some() {
            return Err(ApiError::internal(format!(
                "launch of {}: an image for QEMU guests only (test)",
                inst.id
            )));
        }
        let panic = self.with(|r| r.panic_on_launch);
        assert!(!panic, "launch of {} panicked (test)", inst.id);
        self.with(|r| {
            if r.fail_launch.contains(&inst.id) || r.fail_after.is_some_and(|n| r.launches >= n) {
                return Err(ApiError::internal(format!(
                    "launch of {} failed (test)",
                    inst.id
                )));
            }
            r.launches += 1;
            r.attached.insert(inst.id.clone());
            if let Some(img) = image {
                r.booted.push((inst.id.clone(), img.clone()));
            }
            Ok(match how {
                // A made-up PID, as a real launch would report.
                Attachment::Qemu { .. } => Attachment::Qemu {
                    pid: 40_000 + r.launches as u32,
                },
                other => other.clone(),
            })
        })
    }
    fn reattach(&mut self, rec: &InstanceRecord, _prefix_len: u8) -> Result<(), ApiError> {
        self.with(|r| {
            r.attached.insert(rec.instance.id.clone());
            r.reattached.push(rec.instance.id.clone());
        });
        Ok(())
    }
    fn terminate(&mut self, id: &str, how: &Attachment) -> Result<(), ApiError> {
        self.with(|r| {
            r.attached.remove(id);
            r.terminated.push((id.to_owned(), how.clone()));
        });
        Ok(())
    }
    fn stats(&self, _report: &mut StatsReport) {}
    fn shutdown(&mut self) {
        self.with(|r| r.shut_down = true);
    }
    fn check(&mut self, id: &str, how: &Attachment) -> Liveness {
        self.with(|r| {
            r.checks += 1;
            match (r.liveness.get(id), how, &r.qemu_liveness) {
                (Some(l), _, _) => l.clone(),
                (None, Attachment::Qemu { .. }, Some(l)) => l.clone(),
                _ => Liveness::Running,
            }
        })
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
    pub limits: Limits,
    /// Most instances per `run-instances`.
    pub max_launch: u32,
    /// What `run-instances AMI --qemu` boots for an AMI that is not registered
    /// (`up --qemu-kernel ... --qemu-initrd ...`).
    pub default_image: Option<GuestImage>,
}

impl CoreConfig {
    /// Defaults of DESIGN §5: 172.31.0.0/16, uplink range its last /24.
    pub fn new(default_owner: Owner, subnet: Ipv4Net) -> CoreConfig {
        CoreConfig {
            default_owner,
            subnet,
            uplink_range: default_uplink_range(subnet),
            limits: Limits::default(),
            max_launch: 256,
            default_image: None,
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
);

/// What the EC2 Query API keeps besides the model: access keys by id and
/// `RunInstances` ClientTokens by (owner, token).
#[derive(Clone, Debug, Default)]
struct Ec2State {
    keys: BTreeMap<String, AccessKeyRecord>,
    tokens: BTreeMap<(Owner, String), ClientTokenRecord>,
}

fn load_model(store: &Store, cfg: &CoreConfig) -> Result<Reloaded, CoreError> {
    let loaded = store.load()?;
    let mut model = Model::new(cfg.limits);
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
    let ec2 = Ec2State {
        keys: loaded
            .access_keys
            .into_iter()
            .map(|k| (k.key_id.clone(), k))
            .collect(),
        tokens: loaded
            .client_tokens
            .into_iter()
            .map(|t| ((t.owner.clone(), t.token.clone()), t))
            .collect(),
    };
    Ok((model, records, generation, images, ec2))
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
        let (mut model, records, generation, images, ec2) = match load_model(&store, &cfg) {
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
        };
        let owner = core.cfg.default_owner.clone();
        if let Err(e) = core.ensure_owner(&owner) {
            core.dp.shutdown();
            return Err(CoreError::DefaultOwner(e));
        }
        let prefix = core.cfg.subnet.prefix_len();
        for rec in core.records.values() {
            let id = rec.instance.id.clone();
            let state = match core.dp.reattach(rec, prefix) {
                Ok(()) => core.dp.check(&id, &Attachment::from_place(&rec.place)),
                Err(e) => {
                    tracing::warn!(instance = %id, "cannot re-attach instance {id}: {e}");
                    Liveness::Stopped(format!("not re-attached after a daemon restart: {e}"))
                }
            };
            core.states.insert(id, state);
        }
        if core.published != Some(core.generation) {
            core.publish();
        }
        Ok(core)
    }

    /// Answer one request.
    pub fn handle(&mut self, req: Request) -> Reply {
        let t0 = Instant::now();
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
        let is_edit = req.command.is_edit();
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
            Command::Authorize { group, permissions } => {
                let (name, rules) = self.permission_rules(&owner, &group, &permissions)?;
                self.edit(|m| Ok(m.authorize_rules(&owner, &name, &rules)?))?;
                Ok(Response::Permissions { group: name, rules })
            }
            Command::Revoke { group, permissions } => {
                let (name, rules) = self.permission_rules(&owner, &group, &permissions)?;
                self.edit(|m| Ok(m.revoke_rules(&owner, &name, &rules)?))?;
                Ok(Response::Permissions { group: name, rules })
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
                stats: self.stats(),
            }),
            Command::CreateAccessKey => self.create_access_key(&owner),
        };
        if is_edit && reply.is_ok() {
            let us = t0.elapsed().as_micros() as u64;
            push_window(&mut self.latencies, &mut self.latency_totals, us);
        }
        if reply.is_err() {
            // Whatever the request staged and did not commit is undone.
            self.rollback();
        }
        reply
    }

    /// The owner and secret of access key `key_id` (the EC2 front door's
    /// signature check); `AuthFailure` when unknown.
    pub fn lookup_access_key(&self, key_id: &str) -> Result<KeySecret, ApiError> {
        self.ec2
            .keys
            .get(key_id)
            .map(|k| KeySecret {
                owner: k.owner.0.clone(),
                secret: k.secret.clone(),
            })
            .ok_or_else(|| crate::api::unknown_access_key(key_id))
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
        let started = Instant::now();
        let changes = self.model.take_changes();
        let mut edits = match store_edits(&changes, &new_records) {
            Ok(e) => e,
            Err(e) => {
                self.model.undo(changes);
                return Err(e);
            }
        };
        edits.extend(extra);
        edits.push(Edit::SetCounter {
            name: COUNTER_GROUP_SEQ.into(),
            value: self.model.next_group_seq() as i64,
        });
        edits.push(Edit::SetCounter {
            name: COUNTER_GENERATION.into(),
            value: (self.generation + 1) as i64,
        });
        // Enforce first, then make durable, then answer: the new rules reach
        // the datapath without waiting for the fsync, and the client still
        // hears of the edit only once it is committed. An edit that never
        // commits (store error, crash) was never acknowledged; on a store error
        // the old rules are published again under a newer generation.
        self.compiler.apply(&self.model, &changes);
        self.dp.publish(
            self.compiler.snapshot(self.generation + 1),
            self.generation + 1,
        );
        let published = started.elapsed();
        if let Err(e) = self.store.commit(&edits) {
            self.model.undo(changes);
            // Rare: recompile the restored model whole.
            self.compiler = Compiler::new(&self.model);
            self.generation += 2;
            self.publish();
            return Err(store_failed(e));
        }
        for c in &changes {
            if let Change::InstanceRemoved(i) = c {
                self.records.remove(&i.id);
            }
        }
        self.records.extend(new_records);
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

    fn publish(&mut self) {
        let snap = self.compiler.snapshot(self.generation);
        self.dp.publish(snap, self.generation);
        self.published = Some(self.generation);
    }

    fn run_instances(
        &mut self,
        owner: &Owner,
        ami: &str,
        count: u32,
        groups: Vec<String>,
        qemu: bool,
        token: Option<ClientTokenRecord>,
    ) -> Reply {
        validate_ami(ami)?;
        if count == 0 || count > self.cfg.max_launch {
            return Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!(
                    "invalid instance count '{count}': must be 1 to {}",
                    self.cfg.max_launch
                ),
            ));
        }
        let (how, image) = if qemu {
            let image = match self.images.get(ami) {
                Some(rec) => GuestImage::from(rec),
                None => self.cfg.default_image.clone().ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidAmiIdNotFound,
                        format!(
                            "the image id '{}' does not exist (register it with register-image)",
                            ami.escape_default()
                        ),
                    )
                })?,
            };
            (Attachment::Qemu { pid: 0 }, Some(image))
        } else {
            (Attachment::Netns, None)
        };
        let items = (0..count).map(|_| (None, None, how.clone())).collect();
        self.launch(owner, ami, groups, items, image.as_ref(), token)
    }

    fn register_image(&mut self, rec: ImageRecord) -> Reply {
        validate_image(&rec)?;
        if self.images.contains_key(&rec.ami) {
            return Err(ApiError::new(
                ErrorCode::InvalidAmiIdDuplicate,
                format!("the image id '{}' is already registered", rec.ami),
            ));
        }
        self.store
            .commit(&[Edit::PutImage(rec.clone())])
            .map_err(store_failed)?;
        self.edits += 1;
        self.images.insert(rec.ami.clone(), rec.clone());
        Ok(Response::Images { images: vec![rec] })
    }

    fn image(&self, ami: &str) -> Result<&ImageRecord, ApiError> {
        self.images.get(ami).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidAmiIdNotFound,
                format!("the image id '{}' does not exist", ami.escape_default()),
            )
        })
    }

    fn describe_images(&self, amis: &[String]) -> Reply {
        let images = if amis.is_empty() {
            self.images.values().cloned().collect()
        } else {
            let mut out: Vec<ImageRecord> = Vec::new();
            for ami in amis {
                let rec = self.image(ami)?;
                if !out.contains(rec) {
                    out.push(rec.clone());
                }
            }
            out
        };
        Ok(Response::Images { images })
    }

    fn deregister_image(&mut self, ami: &str) -> Reply {
        let rec = self.image(ami)?.clone();
        self.store
            .commit(&[Edit::DeleteImage {
                ami: rec.ami.clone(),
            }])
            .map_err(store_failed)?;
        self.edits += 1;
        self.images.remove(ami);
        Ok(Response::Images { images: vec![rec] })
    }

    fn attach_instance(
        &mut self,
        owner: &Owner,
        ifname: &str,
        netns: Option<String>,
        groups: Vec<String>,
        ip: Option<Ipv4Addr>,
        mac: Option<&str>,
    ) -> Reply {
        validate_ifname("interface", ifname, 15)?;
        if let Some(ns) = &netns {
            validate_ifname("namespace", ns, 255)?;
        }
        let mac = match mac {
            None => None,
            Some(m) => Some(store::parse_mac(&m.to_ascii_lowercase()).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!(
                        "invalid MAC address '{}': expected aa:bb:cc:dd:ee:ff",
                        m.escape_default()
                    ),
                )
            })?),
        };
        if let Some(ip) = ip {
            self.validate_instance_ip(ip)?;
        }
        let how = Attachment::Iface {
            ifname: ifname.to_owned(),
            netns,
        };
        let place = how.place("");
        if let Some(r) = self.records.values().find(|r| r.place == place) {
            return Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!(
                    "interface '{}' is already attached as instance {}",
                    &place[5..],
                    r.instance.id
                ),
            ));
        }
        self.launch(
            owner,
            ATTACHED_AMI,
            groups,
            vec![(ip, mac, how)],
            None,
            None,
        )
    }

    /// An address the caller chose: inside the subnet, a host address, not the
    /// gateway, not in the uplink range. (Uniqueness is the model's check.)
    fn validate_instance_ip(&self, ip: Ipv4Addr) -> Result<(), ApiError> {
        let subnet = self.cfg.subnet;
        let gateway = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
        let why = if !subnet.contains(&ip) {
            Some(format!("not in subnet {subnet}"))
        } else if ip == subnet.network() || ip == subnet.broadcast() {
            Some("not a host address".to_owned())
        } else if ip == gateway {
            Some("the gateway's address".to_owned())
        } else if self.cfg.uplink_range.contains(&ip) {
            Some(format!("in the uplink range {}", self.cfg.uplink_range))
        } else {
            None
        };
        match why {
            Some(why) => Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!("invalid instance address '{ip}': {why}"),
            )),
            None => Ok(()),
        }
    }

    /// Launch one reservation: every item is (address or next free, MAC or the
    /// id's, attachment). Validates all on a clone of the model, creates them in
    /// the data plane, commits; any failure undoes what was created.
    fn launch(
        &mut self,
        owner: &Owner,
        ami: &str,
        groups: Vec<String>,
        items: Vec<(Option<Ipv4Addr>, Option<Mac>, Attachment)>,
        image: Option<&GuestImage>,
        token: Option<ClientTokenRecord>,
    ) -> Reply {
        let count = items.len();
        let reservation = random_id("r-");
        let launched_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut new_records = BTreeMap::new();
        let mut order = Vec::new();
        // Stage the instances in the model: an error return from here on
        // leaves uncommitted changes that `handle` undoes.
        let next = &mut self.model;
        for (index, (ip, mac, how)) in items.into_iter().enumerate() {
            let id = loop {
                let id = random_id("i-");
                if !next.instances().contains_key(&id) {
                    break id;
                }
            };
            let ip = match ip {
                Some(ip) => ip,
                None => next
                    .free_ip(self.cfg.subnet, self.cfg.uplink_range)
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InsufficientInstanceCapacity,
                            format!(
                                "no free address left in subnet {} for {count} instance(s)",
                                self.cfg.subnet
                            ),
                        )
                    })?,
            };
            let inst = Instance {
                id: id.clone(),
                owner: owner.clone(),
                mac: mac.unwrap_or_else(|| instance_mac(&id)),
                ip,
                groups: groups.clone(),
            };
            next.add_instance(inst)?;
            let stored = next.instances()[&id].clone();
            new_records.insert(
                id.clone(),
                InstanceRecord {
                    instance: stored,
                    ami: ami.to_owned(),
                    reservation: reservation.clone(),
                    launch_index: index as u32,
                    place: how.place(&id),
                    launched_at,
                },
            );
            order.push(id);
        }
        // Validated: create them for real.
        let prefix = self.cfg.subnet.prefix_len();
        let mut launched: Vec<(String, Attachment)> = Vec::new();
        for id in &order {
            let rec = new_records
                .get_mut(id)
                .ok_or_else(|| ApiError::internal("launch record lost"))?;
            let how = Attachment::from_place(&rec.place);
            let boots = image.filter(|_| matches!(how, Attachment::Qemu { .. }));
            match self.dp.launch(&rec.instance, prefix, &how, boots) {
                Ok(made) => {
                    rec.place = made.place(id);
                    launched.push((id.clone(), made));
                }
                Err(e) => {
                    self.undo_launch(&launched);
                    return Err(e);
                }
            }
        }
        // A ClientToken is recorded in the launch's own transaction: either
        // both are stored or neither.
        let token = token.map(|t| ClientTokenRecord {
            reservation: reservation.clone(),
            ..t
        });
        let extra = token.iter().cloned().map(Edit::PutClientToken).collect();
        if let Err(e) = self.commit_with(new_records, extra) {
            self.undo_launch(&launched);
            return Err(e);
        }
        if let Some(t) = token {
            self.ec2
                .tokens
                .insert((t.owner.clone(), t.token.clone()), t);
        }
        for (id, made) in launched {
            let state = self.dp.check(&id, &made);
            self.states.insert(id, state);
        }
        let views = order
            .iter()
            .filter_map(|id| self.records.get(id))
            .map(|r| self.view(r))
            .collect();
        let groups = self
            .records
            .get(&order[0])
            .map(|r| r.instance.groups.clone())
            .unwrap_or_default();
        Ok(Response::Reservations {
            reservations: vec![Reservation {
                id: reservation,
                owner: owner.0.clone(),
                groups,
                instances: views,
            }],
        })
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

    /// [`Command::RunInstances`]: counts, groups by reference, the kind of
    /// instance and the ClientToken; then [`Core::run_instances`].
    fn run_instances_command(
        &mut self,
        owner: &Owner,
        ami: &str,
        (min, max): (Option<u32>, u32),
        groups: &[GroupRef],
        qemu: Option<bool>,
        client_token: Option<String>,
    ) -> Reply {
        let exact = min.is_none();
        let min = min.unwrap_or(max);
        if min == 0 || max < min {
            let shown = if min == max {
                format!("'{max}'")
            } else {
                format!("'{min}' to '{max}' (MinCount to MaxCount)")
            };
            return Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!("invalid instance count {shown}: need 1 <= MinCount <= MaxCount"),
            ));
        }
        if min > self.cfg.max_launch {
            // An exact count (the CLI's -n) above the limit is a bad value; a
            // MinCount above it is capacity the daemon does not have (EC2).
            let (code, what) = match exact {
                true => (ErrorCode::InvalidParameterValue, "instance count"),
                false => (ErrorCode::InsufficientInstanceCapacity, "MinCount"),
            };
            return Err(ApiError::new(
                code,
                format!(
                    "invalid {what} '{min}': at most {} instances per request",
                    self.cfg.max_launch
                ),
            ));
        }
        let count = max.min(self.cfg.max_launch);
        let mut names = self.group_names(owner, groups)?;
        names.sort();
        names.dedup();
        let qemu = qemu.unwrap_or_else(|| self.images.contains_key(ami));
        let token = match client_token {
            None => None,
            Some(t) => {
                if t.is_empty() || t.len() > 64 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameterValue,
                        format!(
                            "invalid ClientToken '{}': 1 to 64 printable ASCII characters",
                            t.escape_default()
                        ),
                    ));
                }
                let fingerprint = format!("{ami}|{min}|{max}|{}", names.join(","));
                if let Some(seen) = self.ec2.tokens.get(&(owner.clone(), t.clone())) {
                    if seen.fingerprint != fingerprint {
                        return Err(ApiError::new(
                            ErrorCode::IdempotentParameterMismatch,
                            format!(
                                "the client token '{}' was used with other parameters",
                                t.escape_default()
                            ),
                        ));
                    }
                    return Ok(self.reservation_view(owner, &seen.reservation));
                }
                Some(ClientTokenRecord {
                    owner: owner.clone(),
                    token: t,
                    reservation: String::new(),
                    fingerprint,
                    created_at: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64),
                })
            }
        };
        self.run_instances(owner, ami, count, names, qemu, token)
    }

    /// A reservation's instances that still exist (a repeated ClientToken).
    fn reservation_view(&self, owner: &Owner, reservation: &str) -> Response {
        let mut recs: Vec<&InstanceRecord> = self
            .records
            .values()
            .filter(|r| r.reservation == reservation && r.instance.owner == *owner)
            .collect();
        recs.sort_by_key(|r| r.launch_index);
        Response::Reservations {
            reservations: vec![Reservation {
                id: reservation.to_owned(),
                owner: owner.0.clone(),
                groups: recs
                    .first()
                    .map(|r| r.instance.groups.clone())
                    .unwrap_or_default(),
                instances: recs.iter().map(|r| self.view(r)).collect(),
            }],
        }
    }

    /// A new access key acting as `owner`: `AKIA` + 16 of `[A-Z2-7]`, and a
    /// 40-character secret, both from `/dev/urandom` (no fallback: a guessable
    /// secret is worse than an error).
    fn create_access_key(&mut self, owner: &Owner) -> Reply {
        const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const SECRET_CHARS: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bytes = [0u8; 56];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| ApiError::internal(format!("reading /dev/urandom for a new key: {e}")))?;
        let pick = |set: &[u8], b: &[u8]| -> String {
            b.iter()
                .map(|&x| set[x as usize % set.len()] as char)
                .collect()
        };
        let key_id = format!("AKIA{}", pick(ID_CHARS, &bytes[..16]));
        if self.ec2.keys.contains_key(&key_id) {
            return Err(ApiError::internal("access key id collision; try again"));
        }
        let rec = AccessKeyRecord {
            key_id: key_id.clone(),
            owner: owner.clone(),
            secret: pick(SECRET_CHARS, &bytes[16..]),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        };
        self.store
            .commit(&[Edit::PutAccessKey(rec.clone())])
            .map_err(store_failed)?;
        self.edits += 1;
        self.ec2.keys.insert(key_id, rec.clone());
        Ok(Response::AccessKey {
            key_id: rec.key_id,
            secret: rec.secret,
            owner: owner.0.clone(),
        })
    }

    fn undo_launch(&mut self, launched: &[(String, Attachment)]) {
        for (id, how) in launched {
            if let Err(e) = self.dp.terminate(id, how) {
                tracing::warn!(instance = %id, "cleaning up instance {id} after a failed launch: {e}");
            }
        }
    }

    /// The state of instance `id` (stopped when it is not attached).
    fn state(&self, id: &str) -> Liveness {
        self.states
            .get(id)
            .cloned()
            .unwrap_or_else(|| Liveness::Stopped("not attached".to_owned()))
    }

    fn view(&self, r: &InstanceRecord) -> InstanceView {
        let state = self.state(&r.instance.id);
        InstanceView {
            id: r.instance.id.clone(),
            ami: r.ami.clone(),
            ip: r.instance.ip,
            mac: store::format_mac(&r.instance.mac),
            state: state.name().into(),
            launch_index: r.launch_index,
            place: r.place.clone(),
            reason: state.reason().map(str::to_owned),
        }
    }

    /// Ask the data plane where instances `ids` stand now (those not stopped
    /// already); log each change.
    fn refresh(&mut self, ids: &[String]) {
        for id in ids {
            let Some(cur) = self.states.get(id) else {
                continue;
            };
            if matches!(cur, Liveness::Stopped(_)) {
                continue;
            }
            let Some(rec) = self.records.get(id) else {
                continue;
            };
            let how = Attachment::from_place(&rec.place);
            let now = self.dp.check(id, &how);
            if now != *cur {
                match &now {
                    Liveness::Stopped(why) => {
                        tracing::warn!(instance = %id, "instance {id} stopped: {why}");
                    }
                    other => tracing::info!(instance = %id, "instance {id} is {}", other.name()),
                }
                self.states.insert(id.clone(), now);
            }
        }
    }

    /// Periodic work of the management thread: move QEMU guests on (pending →
    /// running at their first DHCP lease, → stopped when QEMU exits). Cheap: one
    /// non-blocking check per guest; namespace instances are checked when
    /// described or terminated.
    pub fn tick(&mut self) {
        let guests: Vec<String> = self
            .states
            .iter()
            .filter(|(id, l)| {
                matches!(l, Liveness::Pending(_))
                    || (matches!(l, Liveness::Running)
                        && self
                            .records
                            .get(*id)
                            .is_some_and(|r| r.place.starts_with("qemu:")))
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.refresh(&guests);
    }

    fn owned_ids(&self, owner: &Owner, ids: &[String]) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        for id in ids {
            match self.records.get(id) {
                Some(r) if r.instance.owner == *owner => {
                    if !out.contains(id) {
                        out.push(id.clone());
                    }
                }
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidInstanceIdNotFound,
                        format!("the instance ID '{}' does not exist", id.escape_default()),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Every instance of `owner`.
    fn all_ids(&self, owner: &Owner) -> Vec<String> {
        self.records
            .values()
            .filter(|r| r.instance.owner == *owner)
            .map(|r| r.instance.id.clone())
            .collect()
    }

    fn describe_instances(&mut self, owner: &Owner, ids: &[String]) -> Reply {
        let wanted: Vec<String> = if ids.is_empty() {
            self.all_ids(owner)
        } else {
            self.owned_ids(owner, ids)?
        };
        self.refresh(&wanted);
        let mut by_res: BTreeMap<(i64, String), Vec<&InstanceRecord>> = BTreeMap::new();
        for id in &wanted {
            if let Some(r) = self.records.get(id) {
                by_res
                    .entry((r.launched_at, r.reservation.clone()))
                    .or_default()
                    .push(r);
            }
        }
        let reservations = by_res
            .into_iter()
            .map(|((_, res), mut recs)| {
                recs.sort_by_key(|r| r.launch_index);
                Reservation {
                    id: res,
                    owner: owner.0.clone(),
                    groups: recs[0].instance.groups.clone(),
                    instances: recs.iter().map(|r| self.view(r)).collect(),
                }
            })
            .collect();
        Ok(Response::Reservations { reservations })
    }

    /// `ids`, or with `all` every instance of `owner` (ids and `all` together
    /// are refused).
    fn terminate_instances(&mut self, owner: &Owner, ids: &[String], all: bool) -> Reply {
        if all && !ids.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidParameterCombination,
                "give instance IDs or --all, not both",
            ));
        }
        if ids.is_empty() && !all {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "no instance ID given (or --all for every instance)",
            ));
        }
        let ids = if all {
            self.all_ids(owner)
        } else {
            self.owned_ids(owner, ids)?
        };
        if ids.is_empty() {
            return Ok(Response::StateChanges {
                changes: Vec::new(),
            });
        }
        self.refresh(&ids);
        let previous: Vec<(String, Attachment)> = ids
            .iter()
            .map(|id| {
                let place = self.records.get(id).map_or("", |r| r.place.as_str());
                (
                    self.state(id).name().to_owned(),
                    Attachment::from_place(place),
                )
            })
            .collect();
        self.edit(|m| {
            for id in &ids {
                m.remove_instance(id)?;
            }
            Ok(())
        })?;
        let mut changes = Vec::new();
        for (id, (previous, how)) in ids.into_iter().zip(previous) {
            if let Err(e) = self.dp.terminate(&id, &how) {
                tracing::warn!(instance = %id, "terminating instance {id}: {e}");
            }
            self.states.remove(&id);
            changes.push(StateChange {
                id,
                previous,
                current: "shutting-down".into(),
            });
        }
        Ok(Response::StateChanges { changes })
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
                group_id, rules, ..
            } => Edit::AddRules {
                group_id: group_id.clone(),
                rules: rules.clone(),
            },
            Change::RulesRemoved {
                group_id, rules, ..
            } => Edit::RemoveRules {
                group_id: group_id.clone(),
                rules: rules.clone(),
            },
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

/// An interface or namespace name: 1 to `max` printable ASCII characters without
/// space, `/`, `@` or `:`.
fn validate_ifname(what: &str, name: &str, max: usize) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'@' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "invalid {what} name '{}': 1 to {max} printable characters, no '/', '@' or ':'",
                name.escape_default()
            ),
        ))
    }
}

/// `ami-` followed by 1 to 17 ASCII letters/digits.
fn validate_ami(ami: &str) -> Result<(), ApiError> {
    let ok = ami.strip_prefix("ami-").is_some_and(|r| {
        !r.is_empty() && r.len() <= 17 && r.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "invalid AMI id '{}': expected ami- and up to 17 letters or digits",
                ami.escape_default()
            ),
        ))
    }
}

/// A registered image: `ami-` + 8 lowercase hex digits, existing regular files
/// by absolute path (a bzImage kernel, an initramfs initrd), 32 to 65536 MiB, a printable command line of at most 1024
/// characters.
fn validate_image(rec: &ImageRecord) -> Result<(), ApiError> {
    let bad = |msg: String| Err(ApiError::new(ErrorCode::InvalidParameterValue, msg));
    let ami_ok = rec.ami.strip_prefix("ami-").is_some_and(|h| {
        h.len() == 8
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !ami_ok {
        return bad(format!(
            "invalid image id '{}': expected ami- and 8 lowercase hex digits",
            rec.ami.escape_default()
        ));
    }
    let files = [
        ("kernel", Some(&rec.kernel)),
        ("initrd", Some(&rec.initrd)),
        ("disk", rec.disk.as_ref()),
    ];
    for (what, path) in files {
        let Some(path) = path else { continue };
        let shown = path.display().to_string().escape_default().to_string();
        if !path.is_absolute() {
            return bad(format!("invalid {what} '{shown}': not an absolute path"));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return bad(format!("invalid {what} '{shown}': not a regular file")),
            Err(e) => return bad(format!("invalid {what} '{shown}': {e}")),
        }
        let content = match what {
            "kernel" => crate::qemu::check_kernel(path),
            "initrd" => crate::qemu::check_initrd(path),
            _ => Ok(()),
        };
        if let Err(why) = content {
            return bad(format!("invalid {what} '{shown}': {why}"));
        }
    }
    if !(32..=65536).contains(&rec.memory_mb) {
        return bad(format!(
            "invalid memory size '{}' MiB: must be 32 to 65536",
            rec.memory_mb
        ));
    }
    if rec.append.len() > 1024 || !rec.append.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return bad(format!(
            "invalid kernel command line '{}': up to 1024 printable ASCII characters",
            rec.append.escape_default()
        ));
    }
    Ok(())
}

/// `prefix` + 8 lowercase hex digits from `/dev/urandom` (time-and-pid mixed as a
/// fallback if it cannot be read).
pub fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 4];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    let v = if ok {
        u32::from_le_bytes(b)
    } else {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let x = t ^ (u64::from(std::process::id()) << 32);
        (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) as u32
    };
    format!("{prefix}{v:08x}")
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
