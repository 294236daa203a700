//! The daemon's real data plane: a [`switch::Switch`], its uplink, and namespace
//! instances ([`crate::instances`]) behind the [`Dataplane`] trait.
//!
//! Contract:
//! * [`start`] starts the switch with `--workers` poll threads, creates the uplink
//!   TAP (moved into `--uplink-netns`, or left in the host namespace with the
//!   first address of the uplink range and the subnet's prefix) and attaches it.
//!   An uplink some process holds (it has carrier, see [`crate::hostnet`]) is
//!   refused naming `--uplink`; a persistent one nobody holds (left by a killed
//!   daemon) is re-attached. (Two daemons started at the same instant on one
//!   uplink can both pass this check; the state-dir lock covers the usual case.)
//!   The returned [`UplinkUndo`] removes an uplink this start created if the
//!   rest of the start fails.
//! * `launch` creates the instance's namespace + TAP and adds its port; if adding
//!   the port fails the namespace is destroyed again (nothing left behind).
//! * `reattach` (restart) opens the persistent TAP in the existing namespace again,
//!   or recreates the namespace if it is gone (a host reboot).
//! * `launch`/`reattach` of an [`Attachment::Iface`] (`attach-instance`) opens
//!   AF_PACKET queues on an interface someone else made (inside its namespace if
//!   one is given) — a QEMU guest's TAP, one end of a veth.
//! * `launch` of an [`Attachment::Qemu`] (`run-instances AMI --qemu`) boots a
//!   guest from the image the core resolved for the AMI ([`crate::qemu`]), its
//!   serial log in `STATE_DIR/qemu/ID.log`.
//! * `launch` of a guest returns once QEMU is spawned; its switch port is
//!   attached by a helper thread (opening AF_PACKET rings waits for an RCU grace
//!   period: tens of ms that the management thread must not spend). `terminate`
//!   before that thread finished cancels it (under the same lock, so the port is
//!   either never added or removed). `check` reports the guest
//!   `pending` until the switch saw its first DHCP lease on its port (a guest
//!   re-attached after a restart was up before: `running`), and `stopped` once
//!   QEMU exited (the reason quotes the last lines of its log). `check` also
//!   reports `stopped` for an instance whose namespace was deleted by hand or
//!   whose port the switch found gone; such an instance's port is removed at
//!   once (its namespace and record stay until `terminate`).
//! * `terminate` removes the port first (so no worker writes to it any more),
//!   kills what still runs in a namespace instance (processes whose network
//!   namespace is the instance's, by inode recorded when it was made: SIGTERM,
//!   then SIGKILL after [`instances::KILL_GRACE`]), then deletes the namespace
//!   (idempotent); an attached interface is only detached; a guest is stopped
//!   and its namespace deleted.
//! * The KVM probe of `--qemu-accel auto` runs on its own thread from `start`
//!   on ([`qemu::start_probe`]).
//! * `shutdown` stops and joins the workers; the uplink TAP (persistent), the
//!   instance namespaces and QEMU guests are kept for the next start, which finds
//!   them unchanged (same MACs and addresses).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use filter::Snapshot;
use filter::model::Instance;
use ipnet::Ipv4Net;
use switch::{PollMode, PortId, PortRole, PortSpec, Switch, SwitchConfig};

use crate::api::error_chain;
use crate::api::{ApiError, PortStats, StatsReport};
use crate::cli::{PollArg, RevokeArg, UpArgs};
use crate::core::{Attachment, CoreConfig, Dataplane, LaunchJob, Liveness, TerminateJob};
use crate::instances;
use crate::qemu::{self, QemuConfig};
use crate::store::InstanceRecord;

/// Errors of starting the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("start the switch")]
    Switch(#[source] switch::SwitchError),
    #[error("create uplink {name}")]
    Uplink {
        name: String,
        #[source]
        source: Box<instances::InstanceError>,
    },
    #[error("attach uplink {name}")]
    AttachUplink {
        name: String,
        #[source]
        source: switch::SwitchError,
    },
    #[error(
        "uplink {name} (namespace {ns}) is in use: the interface exists and has carrier \
         (another process holds its TAP queues, or it is not a TAP); choose another --uplink",
        ns = netns.as_deref().unwrap_or("of the daemon")
    )]
    UplinkInUse { name: String, netns: Option<String> },
    #[error("uplink {name}: list the interfaces of namespace {ns}", ns = netns.as_deref().unwrap_or("of the daemon"))]
    UplinkInspect {
        name: String,
        netns: Option<String>,
        #[source]
        source: std::io::Error,
    },
}

/// Removes the uplink TAP a failed start created, when dropped armed; an uplink
/// that existed before the start (a restart re-attaching it) is never removed.
#[derive(Debug)]
pub struct UplinkUndo {
    name: String,
    netns: Option<String>,
    armed: bool,
}

impl UplinkUndo {
    /// The start went through: keep the uplink.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for UplinkUndo {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = instances::destroy_uplink(&self.name, self.netns.as_deref())
        {
            tracing::warn!(uplink = %self.name, "remove the uplink after a failed start: {}", error_chain(&e));
        }
    }
}

/// Whether uplink `name` exists in `netns` (the caller's namespace for `None`),
/// refusing one that another process holds (it has carrier: see
/// [`crate::hostnet`]). A persistent TAP left behind by a killed daemon has no
/// carrier and is re-attached.
fn check_uplink_free(name: &str, netns: Option<&str>) -> Result<bool, DataplaneError> {
    let inspect = |source| DataplaneError::UplinkInspect {
        name: name.to_owned(),
        netns: netns.map(str::to_owned),
        source,
    };
    let links = match netns {
        None => crate::hostnet::links(),
        // A missing namespace is reported by create_uplink with its own error.
        Some(ns) if !switch::netns::exists(ns) => return Ok(false),
        Some(ns) => switch::netns::in_netns(ns, crate::hostnet::links)
            .map_err(|e| inspect(std::io::Error::other(error_chain(&e))))?,
    }
    .map_err(inspect)?;
    match links.iter().find(|l| l.name == name) {
        None => Ok(false),
        Some(l) if l.carrier == Some(true) => Err(DataplaneError::UplinkInUse {
            name: name.to_owned(),
            netns: netns.map(str::to_owned),
        }),
        Some(_) => Ok(true),
    }
}

/// The switch-backed data plane.
pub struct SwitchDataplane {
    switch: Option<Switch>,
    workers: usize,
    /// Instance id → its port.
    ports: BTreeMap<String, PortId>,
    /// How to run QEMU guests.
    qemu: QemuConfig,
    /// Guests this daemon started (reaped when terminated).
    guests: BTreeMap<String, qemu::Guest>,
    /// Guests known to be up: leased once, or re-attached after a restart.
    booted: BTreeSet<String>,
    /// The network namespace of each namespace instance and guest, as made:
    /// what `terminate` kills processes in, even if its name is gone.
    namespaces: BTreeMap<String, instances::NetnsInode>,
    /// Guests whose port a helper thread is attaching.
    attaching: BTreeMap<String, Arc<Mutex<Attaching>>>,
    /// The instances' IPv6 /64: namespace instances get their address in it
    /// set directly.
    subnet6: Option<ipnet::Ipv6Net>,
}

/// A guest's port being attached by a helper thread.
#[derive(Default)]
struct Attaching {
    /// The port, or why it could not be attached.
    done: Option<Result<PortId, String>>,
    /// Terminated meanwhile: the thread must not add the port.
    cancelled: bool,
}

fn lock(m: &Mutex<Attaching>) -> std::sync::MutexGuard<'_, Attaching> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The host-side address of the uplink: first host of the uplink range, with the
/// subnet's prefix length (e.g. 172.31.255.1/16).
pub fn uplink_host_addr(subnet: Ipv4Net, uplink_range: Ipv4Net) -> Ipv4Net {
    let first = Ipv4Addr::from(u32::from(uplink_range.network()).saturating_add(1));
    Ipv4Net::new(first, subnet.prefix_len()).unwrap_or(subnet)
}

/// How the daemon runs guests: logs in `STATE_DIR/qemu`.
pub fn qemu_config(args: &UpArgs) -> QemuConfig {
    QemuConfig {
        log_dir: args.state_dir.join("qemu"),
        binary: "qemu-system-x86_64".to_owned(),
        accel: args.qemu_accel,
    }
}

/// The default guest image of `up`, when both kernel and initrd are given
/// (made absolute: the daemon may change directory later).
pub fn default_image(args: &UpArgs) -> Option<qemu::GuestImage> {
    let abs = |p: &std::path::PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    Some(qemu::GuestImage {
        kernel: abs(args.qemu_kernel.as_ref()?),
        initrd: abs(args.qemu_initrd.as_ref()?),
        disk: None,
        append: args.qemu_append.clone(),
        mem_mb: args.qemu_mem,
    })
}

/// The flow-log settings of `up` (`--flow-log FILE|-` and its options).
pub fn flow_log_config(args: &UpArgs) -> Option<switch::FlowLogConfig> {
    let path = args.flow_log.as_ref()?;
    let sink = if path.as_os_str() == "-" {
        switch::FlowLogSink::Stdout
    } else {
        switch::FlowLogSink::File(path.clone())
    };
    Some(switch::FlowLogConfig {
        interval_secs: args.flow_log_interval,
        max_bytes: args.flow_log_max_bytes,
        keep: args.flow_log_keep,
        reject_limit: args.flow_log_reject_limit,
        ..switch::FlowLogConfig::new(sink)
    })
}

/// Start the switch and attach the uplink. An uplink another process holds is
/// refused before anything is made. The returned [`UplinkUndo`] removes an uplink
/// this call created unless the caller disarms it once the whole start went
/// through; on an error here nothing is left behind.
pub fn start(
    args: &UpArgs,
    cfg: &CoreConfig,
) -> Result<(Box<dyn Dataplane>, UplinkUndo), DataplaneError> {
    let existed = check_uplink_free(&args.uplink, args.uplink_netns.as_deref())?;
    let ct = filter::CtConfig {
        on_revoke: match args.conntrack_on_revoke {
            RevokeArg::Revalidate => filter::RevokeMode::Revalidate,
            RevokeArg::Keep => filter::RevokeMode::Keep,
        },
        ..filter::CtConfig::default()
    };
    let scfg = SwitchConfig {
        workers: args.workers,
        poll: match args.poll {
            PollArg::Busy => PollMode::Busy,
            PollArg::Adaptive => PollMode::Adaptive,
        },
        pin_cores: args.pin_cores,
        worker_nice: args.worker_nice,
        worker_fifo: (args.worker_priority == crate::sched::WorkerPriority::Fifo)
            .then_some(crate::sched::FIFO_PRIORITY),
        ct,
        subnet: cfg.subnet,
        subnet6: cfg.subnet6,
        // Cluster mode: the overlay's UDP sockets on --underlay.
        overlay: match (&args.etcd, args.underlay) {
            (Some(_), Some(ip)) => Some(switch::OverlayConfig {
                tunnel_gso: args.tunnel_gso,
                ..switch::OverlayConfig::new(
                    std::net::SocketAddrV4::new(ip, args.vxlan_port),
                    crate::cluster::node::VNI,
                )
            }),
            _ => None,
        },
        flow_log: flow_log_config(args),
        ..SwitchConfig::default()
    };
    if let Some(f) = &scfg.flow_log {
        tracing::info!(sink = ?f.sink, interval_secs = f.interval_secs, max_bytes = f.max_bytes, keep = f.keep, reject_limit = f.reject_limit, "flow logs on");
    }
    let switch = Switch::start(scfg).map_err(DataplaneError::Switch)?;
    let host_addr = match args.uplink_netns {
        Some(_) => None,
        None => Some(uplink_host_addr(cfg.subnet, cfg.uplink_range)),
    };
    let name = args.uplink.clone();
    let netns = args.uplink_netns.clone();
    let queues = match instances::create_uplink(&name, netns.as_deref(), host_addr, args.workers) {
        Ok(q) => q,
        Err(source) => {
            switch.shutdown();
            return Err(DataplaneError::Uplink {
                name,
                source: Box::new(source),
            });
        }
    };
    if let Err(source) = switch.add_port(PortSpec {
        name: name.clone(),
        role: PortRole::Uplink,
        queues,
    }) {
        switch.shutdown();
        if !existed {
            let _ = instances::destroy_uplink(&name, netns.as_deref());
        }
        return Err(DataplaneError::AttachUplink { name, source });
    }
    let qemu = qemu_config(args);
    qemu::start_probe(&qemu);
    tracing::info!(uplink = %name, netns = netns.as_deref().unwrap_or("-"), reattached = existed, workers = args.workers, "switch started");
    let undo = UplinkUndo {
        name,
        netns,
        armed: !existed,
    };
    let dp = Box::new(SwitchDataplane {
        switch: Some(switch),
        workers: args.workers,
        ports: BTreeMap::new(),
        qemu,
        guests: BTreeMap::new(),
        booted: BTreeSet::new(),
        namespaces: BTreeMap::new(),
        attaching: BTreeMap::new(),
        subnet6: cfg.subnet6,
    });
    Ok((dp, undo))
}

impl SwitchDataplane {
    fn switch(&self) -> Result<&Switch, ApiError> {
        self.switch
            .as_ref()
            .ok_or_else(|| ApiError::internal("the switch has been shut down"))
    }

    /// Undo what `launch` made (the port is already gone or never added).
    fn destroy(&mut self, id: &str, how: &Attachment) -> Result<(), ApiError> {
        self.booted.remove(id);
        let ns = self.namespaces.remove(id);
        destroy_made(id, how, ns, self.guests.remove(id))
    }

    /// Take instance `id`'s port off the switch (it stopped).
    fn detach(&mut self, id: &str) {
        if let Some(slot) = self.attaching.remove(id) {
            let mut a = lock(&slot);
            a.cancelled = true;
            if let Some(Ok(port)) = a.done.take() {
                self.ports.insert(id.to_owned(), port);
            }
        }
        if let Some(port) = self.ports.remove(id)
            && let Ok(s) = self.switch()
            && let Err(e) = s.remove_port(port)
        {
            tracing::warn!(instance = id, "remove port of {id}: {}", error_chain(&e));
        }
    }

    /// Remember the namespace instance `id` lives in (for `terminate`).
    fn note_namespace(&mut self, id: &str) {
        if let Some(ns) = instances::netns_inode(id) {
            self.namespaces.insert(id.to_owned(), ns);
        }
    }

    fn attach(
        &mut self,
        inst: &Instance,
        queues: Vec<Box<dyn switch::port::PortQueue>>,
    ) -> Result<(), ApiError> {
        let spec = port_spec(inst, queues);
        let port = self.switch()?.add_port(spec).map_err(|e| {
            ApiError::internal(format!("attach instance {}: {}", inst.id, error_chain(&e)))
        })?;
        self.ports.insert(inst.id.clone(), port);
        Ok(())
    }
}

/// Undo what a launch made of instance `id` (its port is already gone or
/// never added): end what runs in its namespace (`ns` as made, else as found
/// by name) and delete it, or stop its guest. Any thread.
fn destroy_made(
    id: &str,
    how: &Attachment,
    ns: Option<instances::NetnsInode>,
    guest: Option<qemu::Guest>,
) -> Result<(), ApiError> {
    let ns = ns.or_else(|| instances::netns_inode(id));
    match how {
        Attachment::Netns => {
            if let Some(ns) = ns {
                let killed = instances::kill_netns_processes(ns, instances::KILL_GRACE);
                if !killed.is_empty() {
                    tracing::info!(
                        instance = id,
                        "ended {} process(es) left in instance {id}: {killed:?}",
                        killed.len()
                    );
                }
            }
            instances::destroy_netns_instance(id).map_err(|e| {
                ApiError::internal(format!("destroy instance {id}: {}", error_chain(&e)))
            })
        }
        // Someone else's interface: only detached.
        Attachment::Iface { .. } => Ok(()),
        Attachment::Qemu { pid } => qemu::stop(id, *pid, guest)
            .map_err(|e| ApiError::internal(format!("stop guest {id}: {}", error_chain(&e)))),
    }
}

/// AF_PACKET queues on `ifname` (inside `netns` if given), one per worker.
fn open_iface(
    workers: usize,
    id: &str,
    ifname: &str,
    netns: Option<&str>,
) -> Result<Vec<Box<dyn switch::port::PortQueue>>, ApiError> {
    let open = move || switch::afpacket::open_afpacket(ifname, workers);
    let opened = match netns {
        None => open(),
        Some(ns) => switch::netns::in_netns(ns, open).map_err(|e| match e {
            switch::netns::NetnsError::NotFound { .. }
            | switch::netns::NetnsError::InvalidName { .. } => ApiError::new(
                filter::ErrorCode::InvalidParameterValue,
                format!("cannot attach '{ifname}': {e}"),
            ),
            e => ApiError::internal(format!(
                "attach {ifname} in namespace {ns} as {id}: {}",
                error_chain(&e)
            )),
        })?,
    };
    let queues = opened.map_err(|e| match e {
        switch::afpacket::AfPacketError::NoSuchInterface { .. } => ApiError::new(
            filter::ErrorCode::InvalidParameterValue,
            format!(
                "interface '{ifname}' does not exist{}",
                netns
                    .map(|ns| format!(" in namespace {ns}"))
                    .unwrap_or_default()
            ),
        ),
        e => ApiError::internal(format!("attach {ifname} as {id}: {}", error_chain(&e))),
    })?;
    Ok(queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn switch::port::PortQueue>)
        .collect())
}

/// Attach guest `inst`'s port on a helper thread (see the module docs).
fn attach_later(
    dp: Arc<switch::Datapath>,
    inst: &Instance,
    workers: usize,
) -> Result<Arc<Mutex<Attaching>>, ApiError> {
    let slot = Arc::new(Mutex::new(Attaching::default()));
    let theirs = slot.clone();
    let inst2 = inst.clone();
    std::thread::Builder::new()
        .name("sgswitch-attach".into())
        .spawn(move || {
            let queues = qemu::open_queues(&inst2.id, workers);
            let mut a = lock(&theirs);
            if a.cancelled {
                return; // the queues close here
            }
            a.done = Some(match queues {
                Ok(queues) => dp
                    .add_port(port_spec(&inst2, queues))
                    .map_err(|e| error_chain(&e)),
                Err(e) => Err(error_chain(&e)),
            });
        })
        .map_err(|e| ApiError::internal(format!("launch guest {}: attach thread: {e}", inst.id)))?;
    Ok(slot)
}

/// What a launch job made of one instance (off the management thread), for
/// [`SwitchDataplane`]'s `finish_launch`.
struct Made {
    how: Attachment,
    /// Its switch port (a guest's is attached later: `attaching`).
    port: Option<PortId>,
    ns: Option<instances::NetnsInode>,
    guest: Option<qemu::Guest>,
    attaching: Option<Arc<Mutex<Attaching>>>,
}

/// What a launch job needs of the data plane (all of it `Send`).
struct Maker {
    dp: Arc<switch::Datapath>,
    qemu: QemuConfig,
    workers: usize,
    subnet6: Option<ipnet::Ipv6Net>,
}

impl Maker {
    /// Launch instance `inst` attached `how`: namespace + TAP, AF_PACKET
    /// queues or a QEMU guest, and its switch port. The slow part of a
    /// launch, on any thread; on error nothing is left behind.
    fn make(
        &self,
        inst: &Instance,
        prefix_len: u8,
        how: &Attachment,
        image: Option<&qemu::GuestImage>,
    ) -> Result<Made, ApiError> {
        let workers = self.workers;
        // Before anything is made: what a crash meanwhile may leave behind
        // (nothing records a launch in flight) can be found in the log.
        tracing::info!(instance = %inst.id, ip = %inst.ip, "making instance {}", inst.id);
        let queues = match how {
            Attachment::Netns => instances::create_netns_instance(
                &inst.id,
                inst.mac,
                inst.ip,
                prefix_len,
                self.subnet6,
                workers,
            )
            .map_err(|e| {
                ApiError::internal(format!("launch instance {}: {}", inst.id, error_chain(&e)))
            })?,
            Attachment::Iface { ifname, netns } => {
                open_iface(workers, &inst.id, ifname, netns.as_deref())?
            }
            Attachment::Qemu { .. } => {
                let image = image.ok_or_else(|| {
                    ApiError::internal(format!("launch guest {}: no image to boot", inst.id))
                })?;
                let guest = qemu::start(&self.qemu, image, &inst.id, inst.mac).map_err(|e| {
                    ApiError::internal(format!("launch guest {}: {}", inst.id, error_chain(&e)))
                })?;
                let made = Attachment::Qemu { pid: guest.pid };
                let ns = instances::netns_inode(&inst.id);
                return match attach_later(self.dp.clone(), inst, workers) {
                    Ok(slot) => Ok(Made {
                        how: made,
                        port: None,
                        ns,
                        guest: Some(guest),
                        attaching: Some(slot),
                    }),
                    Err(e) => {
                        let _ = destroy_made(&inst.id, &made, ns, Some(guest));
                        Err(e)
                    }
                };
            }
        };
        let ns = match how {
            Attachment::Netns => instances::netns_inode(&inst.id),
            _ => None,
        };
        match self.dp.add_port(port_spec(inst, queues)) {
            Ok(port) => {
                tracing::info!(instance = %inst.id, ip = %inst.ip, "instance launched");
                Ok(Made {
                    how: how.clone(),
                    port: Some(port),
                    ns,
                    guest: None,
                    attaching: None,
                })
            }
            Err(e) => {
                let _ = destroy_made(&inst.id, how, ns, None);
                Err(ApiError::internal(format!(
                    "attach instance {}: {}",
                    inst.id,
                    error_chain(&e)
                )))
            }
        }
    }
}

/// The switch port of instance `inst`.
fn port_spec(inst: &Instance, queues: Vec<Box<dyn switch::port::PortQueue>>) -> PortSpec {
    PortSpec {
        name: inst.id.clone(),
        role: PortRole::Instance {
            id: inst.id.clone(),
            mac: inst.mac,
            ip: inst.ip,
        },
        queues,
    }
}

impl Dataplane for SwitchDataplane {
    fn publish_directory(&mut self, dir: &crate::core::Directory) {
        use switch::vxlan::{DirectoryTable, HostId, InstanceInfo};
        let Some(sw) = self.switch.as_ref() else {
            return;
        };
        // Host ids: positions among every host name the lab mentions.
        let mut names: Vec<&str> = dir.hosts.iter().map(|(n, _)| n.as_str()).collect();
        names.extend(dir.instances.iter().map(|i| i.host.as_str()));
        names.push(dir.local.as_str());
        names.sort_unstable();
        names.dedup();
        let id = |n: &str| HostId(names.binary_search(&n).unwrap_or(0) as u32);
        let mut table = DirectoryTable::new(id(&dir.local));
        // Every live host, this one too (its own address is never accepted
        // as a sender).
        for (name, addr) in &dir.hosts {
            if let std::net::SocketAddr::V4(a) = addr {
                table.add_host(id(name), *a);
            }
        }
        for i in &dir.instances {
            table.add_instance(
                i.ip,
                InstanceInfo {
                    host: id(&i.host),
                    mac: i.mac,
                    identity: i.identity,
                },
            );
            if let Some(ip6) = i.ip6 {
                table.add_instance6(ip6, i.ip);
            }
        }
        sw.publish_directory(Arc::new(table));
    }

    fn publish(&mut self, snap: Snapshot, _generation: u64) {
        if let Some(s) = &self.switch {
            s.publish_rules(snap);
        }
    }

    fn launch(
        &mut self,
        inst: &Instance,
        prefix_len: u8,
        how: &Attachment,
        image: Option<&qemu::GuestImage>,
    ) -> Result<Attachment, ApiError> {
        let made = self.launch_job(inst, prefix_len, how, image)()?;
        self.finish_launch(inst, prefix_len, how, image, made)
    }

    /// The whole launch but taking it in: [`Maker::make`] on the launcher.
    fn launch_job(
        &mut self,
        inst: &Instance,
        prefix_len: u8,
        how: &Attachment,
        image: Option<&qemu::GuestImage>,
    ) -> LaunchJob {
        let maker = match self.switch() {
            Ok(s) => Maker {
                dp: s.datapath().clone(),
                qemu: self.qemu.clone(),
                workers: self.workers,
                subnet6: self.subnet6,
            },
            Err(e) => return Box::new(move || Err(e)),
        };
        let (inst, how, image) = (inst.clone(), how.clone(), image.cloned());
        Box::new(move || {
            let made = maker.make(&inst, prefix_len, &how, image.as_ref())?;
            Ok(Box::new(made) as crate::core::Made)
        })
    }

    fn finish_launch(
        &mut self,
        inst: &Instance,
        _prefix_len: u8,
        _how: &Attachment,
        _image: Option<&qemu::GuestImage>,
        made: crate::core::Made,
    ) -> Result<Attachment, ApiError> {
        let made = made.downcast::<Made>().map_err(|_| {
            ApiError::internal(format!(
                "launch instance {}: not made by this data plane",
                inst.id
            ))
        })?;
        let Made {
            how,
            port,
            ns,
            guest,
            attaching,
        } = *made;
        let id = &inst.id;
        if let Some(port) = port {
            self.ports.insert(id.clone(), port);
        }
        if let Some(ns) = ns {
            self.namespaces.insert(id.clone(), ns);
        }
        if let Some(g) = guest {
            self.guests.insert(id.clone(), g);
        }
        if let Some(slot) = attaching {
            self.attaching.insert(id.clone(), slot);
        }
        Ok(how)
    }

    fn discard_launch(&mut self, inst: &Instance, how: &Attachment, made: crate::core::Made) {
        if let Ok(made) = self.finish_launch(inst, 0, how, None, made)
            && let Err(e) = self.terminate(&inst.id, &made)
        {
            tracing::warn!(
                instance = %inst.id,
                "cleaning up instance {} after a failed launch: {e}",
                inst.id
            );
        }
    }

    /// The port now; the namespace or guest on the launcher.
    fn terminate_job(&mut self, id: &str, how: &Attachment) -> TerminateJob {
        self.detach(id);
        self.booted.remove(id);
        let ns = self.namespaces.remove(id);
        let guest = self.guests.remove(id);
        let (id, how) = (id.to_owned(), how.clone());
        Box::new(move || {
            destroy_made(&id, &how, ns, guest)?;
            tracing::info!(instance = %id, "instance terminated");
            Ok(())
        })
    }

    fn reattach(&mut self, rec: &InstanceRecord, prefix_len: u8) -> Result<(), ApiError> {
        let inst = &rec.instance;
        let queues = match &rec.attachment {
            Attachment::Netns => if instances::netns_exists(&inst.id) {
                instances::reattach_netns_instance(&inst.id, self.workers)
            } else {
                instances::create_netns_instance(
                    &inst.id,
                    inst.mac,
                    inst.ip,
                    prefix_len,
                    self.subnet6,
                    self.workers,
                )
            }
            .map_err(|e| {
                ApiError::internal(format!(
                    "re-attach instance {}: {}",
                    inst.id,
                    error_chain(&e)
                ))
            })?,
            Attachment::Iface { ifname, netns } => {
                open_iface(self.workers, &inst.id, ifname, netns.as_deref())?
            }
            // A guest keeps running while the daemon restarts; if it is gone the
            // instance shows as stopped (its namespace stays until terminated).
            Attachment::Qemu { pid } => {
                let q = qemu::reattach(&inst.id, *pid, self.workers).map_err(|e| {
                    ApiError::internal(format!("re-attach guest {}: {}", inst.id, error_chain(&e)))
                })?;
                // It ran before the restart: its lease is not news.
                self.booted.insert(inst.id.clone());
                q
            }
        };
        if !matches!(rec.attachment, Attachment::Iface { .. }) {
            self.note_namespace(&inst.id);
        }
        self.attach(inst, queues)?;
        tracing::info!(instance = %inst.id, ip = %inst.ip, "instance re-attached");
        Ok(())
    }

    fn terminate(&mut self, id: &str, how: &Attachment) -> Result<(), ApiError> {
        self.detach(id);
        self.destroy(id, how)?;
        tracing::info!(instance = %id, "instance terminated");
        Ok(())
    }

    fn check(&mut self, id: &str, how: &Attachment) -> Liveness {
        let stopped = |me: &mut Self, why: String| {
            me.detach(id);
            me.booted.remove(id);
            Liveness::Stopped(why)
        };
        if let Attachment::Qemu { pid } = how {
            let exited = match self.guests.get_mut(id) {
                Some(g) => g.exit().map(str::to_owned),
                None if !qemu::is_guest(*pid, id) => Some(qemu::exit_reason(
                    &self.qemu.binary,
                    &format!("(PID {pid}) is not running any more"),
                    &qemu::log_path(&self.qemu, id),
                )),
                None => None,
            };
            if let Some(why) = exited {
                return stopped(self, why);
            }
        }
        let attached = self.attaching.get(id).map(|slot| lock(slot).done.take());
        match attached {
            None => {}
            Some(None) => {
                let accel = self
                    .guests
                    .get(id)
                    .map(|g| format!(" on {}", g.accel))
                    .unwrap_or_default();
                return Liveness::Pending(format!("booting{accel}; attaching it to the switch"));
            }
            Some(Some(Ok(port))) => {
                self.attaching.remove(id);
                self.ports.insert(id.to_owned(), port);
            }
            Some(Some(Err(e))) => {
                self.attaching.remove(id);
                if let Attachment::Qemu { pid } = how {
                    let _ = qemu::stop(id, *pid, self.guests.remove(id));
                }
                return stopped(self, format!("could not attach it to the switch: {e}"));
            }
        }
        if !matches!(how, Attachment::Iface { .. }) && !instances::netns_exists(id) {
            return stopped(
                self,
                format!("its network namespace {id} was deleted outside sgswitch"),
            );
        }
        let status = match (self.ports.get(id), self.switch.as_ref()) {
            (Some(port), Some(s)) => s.port_status(*port),
            _ => switch::PortStatus::Unknown,
        };
        match status {
            switch::PortStatus::Gone => {
                let what = match how {
                    Attachment::Iface { ifname, .. } => format!("interface {ifname}"),
                    _ => "its interface".to_owned(),
                };
                stopped(
                    self,
                    format!("{what} disappeared (the switch found its port gone)"),
                )
            }
            switch::PortStatus::Unknown => stopped(self, "not attached to the switch".to_owned()),
            switch::PortStatus::Attached { leased } => match how {
                Attachment::Qemu { .. } if !leased && !self.booted.contains(id) => {
                    let accel = self
                        .guests
                        .get(id)
                        .map(|g| format!(" on {}", g.accel))
                        .unwrap_or_default();
                    Liveness::Pending(format!("booting{accel}; waiting for its first DHCP lease"))
                }
                Attachment::Qemu { .. } => {
                    self.booted.insert(id.to_owned());
                    Liveness::Running
                }
                _ => Liveness::Running,
            },
        }
    }

    fn stats(&self, report: &mut StatsReport) {
        let Some(s) = &self.switch else { return };
        let st = s.stats();
        report.ports = st
            .ports
            .iter()
            .map(|p| PortStats {
                name: p.name.clone(),
                rx_packets: p.counters.rx_packets,
                rx_bytes: p.counters.rx_bytes,
                tx_packets: p.counters.tx_packets,
                tx_bytes: p.counters.tx_bytes,
                drops: p.counters.rx_dropped + p.counters.tx_dropped,
                drop_reasons: filter::DropReason::ALL
                    .iter()
                    .filter(|r| p.counters.drops[r.index()] > 0)
                    .map(|r| (r.name().to_owned(), p.counters.drops[r.index()]))
                    .collect(),
                denied: filter::DropReason::ALL
                    .iter()
                    .filter(|r| p.counters.denied[r.index()] > 0)
                    .map(|r| (r.name().to_owned(), p.counters.denied[r.index()]))
                    .collect(),
            })
            .collect();
        report.drops = filter::DropReason::ALL
            .iter()
            .map(|r| (r.name().to_owned(), st.drops[r.index()]))
            .collect();
        // Cluster mode: the overlay's refusals (`vxlan_*`) in the same list, so
        // `sgswitch stats` prints them and /metrics exports them by reason.
        let overlay = s.datapath().overlay().is_some();
        if overlay {
            report.drops.extend(
                switch::vxlan::VxlanDrop::ALL
                    .iter()
                    .map(|r| (r.name().to_owned(), st.vxlan_drop_count(*r))),
            );
        }
        report.conntrack_entries = st.conntrack_entries as u64;
        report.events = vec![
            ("arp_replies".to_owned(), st.arp_replies),
            ("dhcp_replies".to_owned(), st.dhcp_replies),
            ("dhcp_silent".to_owned(), st.dhcp_silent),
            ("nd_replies".to_owned(), st.nd_replies),
            ("router_adverts".to_owned(), st.router_adverts),
            ("nd_absorbed".to_owned(), st.nd_absorbed),
            ("tso_segmented".to_owned(), st.tso_segmented),
            ("csum_completed".to_owned(), st.csum_completed),
            ("parks".to_owned(), st.parks),
        ];
        if overlay {
            let u = st.underlay;
            report.events.extend([
                ("underlay_tx_packets".to_owned(), u.tx_packets),
                ("underlay_tx_bytes".to_owned(), u.tx_bytes),
                ("underlay_gso_batches".to_owned(), u.gso_batches),
                ("underlay_rx_packets".to_owned(), u.rx_packets),
                ("underlay_rx_bytes".to_owned(), u.rx_bytes),
                ("underlay_gro_frames".to_owned(), u.gro_frames),
                ("underlay_fragmented".to_owned(), u.fragmented),
                ("underlay_tunnel_tx".to_owned(), u.tunnel_tx),
                ("underlay_whole_rx".to_owned(), u.whole_rx),
            ]);
        }
        report.ports_gone = st.ports_gone;
    }

    fn rule_hits(&self) -> (Vec<u64>, Vec<crate::api::RuleHits>) {
        let Some(s) = &self.switch else {
            return (Vec::new(), Vec::new());
        };
        let (layout, totals) = s.datapath().rule_hits();
        let hits = totals
            .iter()
            .map(|t| crate::api::RuleHits {
                packets: t.packets,
                bytes: t.bytes,
                flows: t.flows,
            })
            .collect();
        (layout.to_vec(), hits)
    }

    fn shutdown(&mut self) {
        // The uplink TAP is persistent and kept, like the instances' TAPs: a
        // restarted daemon finds it with the same MAC and addresses, so neither
        // the outside nor the instances' ARP caches notice the restart.
        if let Some(s) = self.switch.take() {
            s.shutdown();
        }
    }
    fn ports_gone(&self) -> u64 {
        self.switch
            .as_ref()
            .map_or(0, |s| s.datapath().ports_gone())
    }
    fn trace(
        &self,
        frames: &[(switch::trace::Ingress, Vec<u8>)],
    ) -> Result<switch::trace::TraceRun, ApiError> {
        self.switch()?
            .datapath()
            .trace(frames)
            .map_err(|e| ApiError::new(filter::ErrorCode::InvalidParameterValue, e.to_string()))
    }
    fn capture(
        &self,
        port: Option<&str>,
        mut spec: switch::capture::CaptureSpec,
    ) -> Result<switch::capture::Capture, ApiError> {
        let sw = self.switch()?;
        if let Some(name) = port {
            let st = sw.stats();
            let Some(p) = st.ports.iter().find(|p| p.name == name) else {
                let names: Vec<&str> = st.ports.iter().map(|p| p.name.as_str()).collect();
                return Err(ApiError::new(
                    filter::ErrorCode::InvalidParameterValue,
                    format!(
                        "no port '{}' on the switch (ports: {}, or all)",
                        name.escape_default(),
                        names.join(", ")
                    ),
                ));
            };
            spec.port = Some(p.id);
        }
        sw.datapath().start_capture(spec).map_err(|e| {
            let code = match e {
                switch::capture::CaptureError::Busy => filter::ErrorCode::ServiceUnavailable,
                _ => filter::ErrorCode::InvalidParameterValue,
            };
            ApiError::new(code, e.to_string())
        })
    }
}
