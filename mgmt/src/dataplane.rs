//! The daemon's real data plane: a [`switch::Switch`], its uplink, and namespace
//! instances ([`crate::instances`]) behind the [`Dataplane`] trait.
//!
//! Contract:
//! * [`start`] starts the switch with `--workers` poll threads, creates the uplink
//!   TAP (moved into `--uplink-netns`, or left in the host namespace with the
//!   first address of the uplink range and the subnet's prefix) and attaches it.
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
//! * `terminate` removes the port first (so no worker writes to it any more), then
//!   deletes the namespace (idempotent); an attached interface is only detached;
//!   a guest is stopped and its namespace deleted.
//! * `shutdown` stops and joins the workers; the uplink TAP (persistent), the
//!   instance namespaces and QEMU guests are kept for the next start, which finds
//!   them unchanged (same MACs and addresses).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use filter::Snapshot;
use filter::model::Instance;
use ipnet::Ipv4Net;
use switch::{PollMode, PortId, PortRole, PortSpec, Switch, SwitchConfig};

use crate::api::error_chain;
use crate::api::{ApiError, PortStats, StatsReport};
use crate::cli::{PollArg, RevokeArg, UpArgs};
use crate::core::{Attachment, CoreConfig, Dataplane};
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

/// Start the switch and attach the uplink.
pub fn start(args: &UpArgs, cfg: &CoreConfig) -> Result<Box<dyn Dataplane>, DataplaneError> {
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
        ct,
        subnet: cfg.subnet,
        ..SwitchConfig::default()
    };
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
        let _ = instances::destroy_uplink(&name, netns.as_deref());
        return Err(DataplaneError::AttachUplink { name, source });
    }
    Ok(Box::new(SwitchDataplane {
        switch: Some(switch),
        workers: args.workers,
        ports: BTreeMap::new(),
        qemu: qemu_config(args),
        guests: BTreeMap::new(),
    }))
}

impl SwitchDataplane {
    fn switch(&self) -> Result<&Switch, ApiError> {
        self.switch
            .as_ref()
            .ok_or_else(|| ApiError::internal("the switch has been shut down"))
    }

    /// Undo what `launch` made (the port is already gone or never added).
    fn destroy(&mut self, id: &str, how: &Attachment) -> Result<(), ApiError> {
        match how {
            Attachment::Netns => instances::destroy_netns_instance(id).map_err(|e| {
                ApiError::internal(format!("destroy instance {id}: {}", error_chain(&e)))
            }),
            // Someone else's interface: only detached.
            Attachment::Iface { .. } => Ok(()),
            Attachment::Qemu { pid } => qemu::stop(id, *pid, self.guests.remove(id))
                .map_err(|e| ApiError::internal(format!("stop guest {id}: {}", error_chain(&e)))),
        }
    }

    /// AF_PACKET queues on `ifname` (inside `netns` if given).
    fn open_iface(
        &self,
        id: &str,
        ifname: &str,
        netns: Option<&str>,
    ) -> Result<Vec<Box<dyn switch::port::PortQueue>>, ApiError> {
        let workers = self.workers;
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

    fn attach(
        &mut self,
        inst: &Instance,
        queues: Vec<Box<dyn switch::port::PortQueue>>,
    ) -> Result<(), ApiError> {
        let spec = PortSpec {
            name: inst.id.clone(),
            role: PortRole::Instance {
                id: inst.id.clone(),
                mac: inst.mac,
                ip: inst.ip,
            },
            queues,
        };
        let port = self.switch()?.add_port(spec).map_err(|e| {
            ApiError::internal(format!("attach instance {}: {}", inst.id, error_chain(&e)))
        })?;
        self.ports.insert(inst.id.clone(), port);
        Ok(())
    }
}

impl Dataplane for SwitchDataplane {
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
        let mut made = how.clone();
        let queues = match how {
            Attachment::Netns => instances::create_netns_instance(
                &inst.id,
                inst.mac,
                inst.ip,
                prefix_len,
                self.workers,
            )
            .map_err(|e| {
                ApiError::internal(format!("launch instance {}: {}", inst.id, error_chain(&e)))
            })?,
            Attachment::Iface { ifname, netns } => {
                self.open_iface(&inst.id, ifname, netns.as_deref())?
            }
            Attachment::Qemu { .. } => {
                let image = image.ok_or_else(|| {
                    ApiError::internal(format!("launch guest {}: no image to boot", inst.id))
                })?;
                let (guest, queues) = qemu::start(
                    &self.qemu,
                    image,
                    &inst.id,
                    inst.mac,
                    self.workers,
                )
                .map_err(|e| {
                    ApiError::internal(format!("launch guest {}: {}", inst.id, error_chain(&e)))
                })?;
                made = Attachment::Qemu { pid: guest.pid };
                self.guests.insert(inst.id.clone(), guest);
                queues
            }
        };
        if let Err(e) = self.attach(inst, queues) {
            let _ = self.destroy(&inst.id, &made);
            return Err(e);
        }
        Ok(made)
    }

    fn reattach(&mut self, rec: &InstanceRecord, prefix_len: u8) -> Result<(), ApiError> {
        let inst = &rec.instance;
        let queues = match Attachment::from_place(&rec.place) {
            Attachment::Netns => if instances::netns_exists(&inst.id) {
                instances::reattach_netns_instance(&inst.id, self.workers)
            } else {
                instances::create_netns_instance(
                    &inst.id,
                    inst.mac,
                    inst.ip,
                    prefix_len,
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
                self.open_iface(&inst.id, &ifname, netns.as_deref())?
            }
            // A guest keeps running while the daemon restarts; if it is gone the
            // instance shows as stopped (its namespace stays until terminated).
            Attachment::Qemu { pid } => {
                qemu::reattach(&inst.id, pid, self.workers).map_err(|e| {
                    ApiError::internal(format!("re-attach guest {}: {}", inst.id, error_chain(&e)))
                })?
            }
        };
        self.attach(inst, queues)
    }

    fn terminate(&mut self, id: &str, how: &Attachment) -> Result<(), ApiError> {
        if let Some(port) = self.ports.remove(id)
            && let Ok(s) = self.switch()
            && let Err(e) = s.remove_port(port)
        {
            eprintln!("sgswitch: remove port of {id}: {}", error_chain(&e));
        }
        self.destroy(id, how)
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
            })
            .collect();
        report.drops = filter::DropReason::ALL
            .iter()
            .map(|r| (r.name().to_owned(), st.drops[r.index()]))
            .collect();
        report.conntrack_entries = st.conntrack_entries as u64;
        report.events = vec![
            ("arp_replies".to_owned(), st.arp_replies),
            ("dhcp_replies".to_owned(), st.dhcp_replies),
            ("dhcp_silent".to_owned(), st.dhcp_silent),
            ("tso_segmented".to_owned(), st.tso_segmented),
            ("csum_completed".to_owned(), st.csum_completed),
            ("parks".to_owned(), st.parks),
        ];
        report.ports_gone = st.ports_gone;
    }

    fn shutdown(&mut self) {
        // The uplink TAP is persistent and kept, like the instances' TAPs: a
        // restarted daemon finds it with the same MAC and addresses, so neither
        // the outside nor the instances' ARP caches notice the restart.
        if let Some(s) = self.switch.take() {
            s.shutdown();
        }
    }
}
