//! The paths under test: each one a client namespace and a server namespace
//! joined by one way of moving frames, set up and torn down by the harness.
//!
//! Contract:
//! * A path's setup returns a holder owning every guard (namespaces,
//!   processes, the sgswitch lab); dropping it tears everything down (also on
//!   panic). [`Endpoints`] says where the load runs: client namespaces (the
//!   first for TCP; new-flow runs take them in turn), the server namespace, its
//!   address and interface, the forwarding process (for CPU), and the namespace
//!   nmap scans from.
//! * Addresses: every path has its own /16 inside a namespace of its own
//!   (veth 10.201, bare wire 10.203, bridge 10.200, Open vSwitch 10.202,
//!   sgswitch its lab's 172.31); the filtering paths allow everything from the
//!   clients' /17 with their last rule, and scan from an address outside it.
//! * IPv6 rows (issue 15): the bare wire and sgswitch also have an IPv6
//!   variant in the same setup, on ULA prefixes that exist only inside the
//!   test namespaces ([`WIRE_PREFIX6`], [`SG_PREFIX6`]): the wire's two ends get
//!   `::2` and `::3` (no DAD), sgswitch's instances their addresses in the
//!   lab's `--subnet6`; the IPv6 server instance is in a group of N IPv6 rules
//!   (N-1 IPv6 fillers from 2001:db8::/32, then one allowing the lab's /64).
//!   Their [`Endpoints`] carry an IPv6 server address and no scanner.
//! * Nothing is configured in the root namespace: bridges, veth ends, TAPs and
//!   the Open vSwitch daemons all live in namespaces made here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Lab, LabConfig, LabInstance};
use mgmt::api::{Command as ApiCommand, GroupRef};

use super::api::Api;
use super::exec::{HarnessError, Interrupt, Ns, Proc, Result, in_ns, run_ok};
use super::rules;

/// Kinds of path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Sgswitch,
    Wire,
    WirePlain,
    Veth,
    Nft,
    NftSet,
    Ovs,
    OvsTso,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::Veth,
        Family::Wire,
        Family::WirePlain,
        Family::Sgswitch,
        Family::Nft,
        Family::NftSet,
        Family::Ovs,
        Family::OvsTso,
    ];

    /// The name used in `--only` and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sgswitch => "sgswitch",
            Family::Wire => "wire",
            Family::WirePlain => "wire-plain",
            Family::Veth => "veth",
            Family::Nft => "nft",
            Family::NftSet => "nftset",
            Family::Ovs => "ovs",
            Family::OvsTso => "ovs-tso",
        }
    }

    /// One line saying what the path is.
    pub fn describe(self) -> &'static str {
        match self {
            Family::Sgswitch => {
                "sgswitch daemon (release), namespace instances on TAPs, group of N rules, the allowing one last"
            }
            Family::Wire => {
                "bare wire: barewire between two TAPs, vnet_hdr + TSO/csum offloads, one epoll thread"
            }
            Family::WirePlain => "bare wire without vnet_hdr (one MTU frame per syscall)",
            Family::Veth => "veth pair directly (the kernel's upper bound)",
            Family::Nft => {
                "Linux bridge + br_netfilter, inet forward chain: ct established,related first, N-1 fillers, allow last"
            }
            Family::NftSet => "the same bridge, fillers in one nft interval set (one lookup)",
            Family::Ovs => {
                "Open vSwitch userspace (netdev) datapath, TAP ports, ct() flows (100 rules)"
            }
            Family::OvsTso => "the same with other_config:userspace-tso-enable=true",
        }
    }

    /// Whether the path has IPv6 rows (the bare wire with offloads, sgswitch).
    pub fn has_v6(self) -> bool {
        matches!(self, Family::Wire | Family::Sgswitch)
    }

    /// Whether the path filters (nmap then sees `filtered`).
    pub fn filters(self) -> bool {
        matches!(
            self,
            Family::Sgswitch | Family::Nft | Family::NftSet | Family::Ovs | Family::OvsTso
        )
    }
}

/// Where a path's load runs.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// e.g. `sgswitch-100`, `veth`.
    pub label: String,
    pub family: Family,
    pub rules: Option<usize>,
    /// Client namespaces (the first for TCP and UDP; new-flow runs take them in
    /// turn so no run meets the state of another).
    pub clients: Vec<String>,
    pub server_ns: String,
    /// IPv4, or IPv6 on an IPv6 row.
    pub server_ip: IpAddr,
    pub server_if: String,
    /// The forwarding process, if the path has one.
    pub forwarder: Option<u32>,
    /// Namespace to run nmap from (an address the path does not allow).
    pub scanner: Option<String>,
}

impl Endpoints {
    /// An IPv6 row (the load goes to an IPv6 address).
    pub fn v6(&self) -> bool {
        self.server_ip.is_ipv6()
    }
}

fn label(f: Family, rules: Option<usize>) -> String {
    match rules {
        Some(n) => format!("{}-{n}", f.name()),
        None => f.name().to_owned(),
    }
}

/// The label of the IPv6 row of the path labelled `v4_label`.
pub fn label6(v4_label: &str) -> String {
    format!("{v4_label}{V6_SUFFIX}")
}

/// What an IPv6 row's label ends with (`wire-v6`, `sgswitch-100-v6`).
pub const V6_SUFFIX: &str = "-v6";

/// The bare wire's IPv6 prefix (inside its two namespaces only).
pub const WIRE_PREFIX6: &str = "fd00:5e:b6:3::/64";
/// The sgswitch lab's `--subnet6` in the benchmark.
pub const SG_PREFIX6: &str = "fd00:5e:b6:1::/64";

/// A veth pair between two namespaces.
pub struct VethPath {
    c: Ns,
    s: Ns,
}

impl VethPath {
    pub fn setup() -> Result<VethPath> {
        let c = Ns::new("vc")?;
        let s = Ns::new("vs")?;
        c.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            s.name(),
        ])?;
        c.addr_up("eth0", Ipv4Addr::new(10, 201, 0, 2), 16)?;
        s.addr_up("eth0", Ipv4Addr::new(10, 201, 0, 3), 16)?;
        Ok(VethPath { c, s })
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            label: label(Family::Veth, None),
            family: Family::Veth,
            rules: None,
            clients: vec![self.c.name().to_owned()],
            server_ns: self.s.name().to_owned(),
            server_ip: Ipv4Addr::new(10, 201, 0, 3).into(),
            server_if: "eth0".into(),
            forwarder: None,
            scanner: Some(self.c.name().to_owned()),
        }
    }
}

/// `barewire` between a TAP in each of two namespaces.
pub struct WirePath {
    // Field order = drop order: the wire stops before the namespaces go.
    wire: Proc,
    c: Ns,
    s: Ns,
    family: Family,
}

impl WirePath {
    pub fn setup(barewire: &Path, vnet: bool) -> Result<WirePath> {
        let c = Ns::new("wc")?;
        let s = Ns::new("ws")?;
        let mut cmd = Command::new(barewire);
        cmd.args(["--ns-a", c.name(), "--ns-b", s.name(), "--max-secs", "3600"]);
        if !vnet {
            cmd.arg("--no-vnet");
        }
        let mut wire = Proc::spawn(&mut cmd)?;
        wire.wait_line("barewire: ready", Duration::from_secs(20))?;
        c.addr_up("eth0", Ipv4Addr::new(10, 203, 0, 2), 16)?;
        s.addr_up("eth0", Ipv4Addr::new(10, 203, 0, 3), 16)?;
        if vnet {
            c.addr6("eth0", wire6(2))?;
            s.addr6("eth0", wire6(3))?;
        }
        let family = if vnet {
            Family::Wire
        } else {
            Family::WirePlain
        };
        Ok(WirePath { wire, c, s, family })
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            label: label(self.family, None),
            family: self.family,
            rules: None,
            clients: vec![self.c.name().to_owned()],
            server_ns: self.s.name().to_owned(),
            server_ip: Ipv4Addr::new(10, 203, 0, 3).into(),
            server_if: "eth0".into(),
            forwarder: Some(self.wire.pid()),
            scanner: Some(self.c.name().to_owned()),
        }
    }

    /// The IPv6 row over the same wire (the `wire` family only).
    pub fn endpoints6(&self) -> Option<Endpoints> {
        (self.family == Family::Wire).then(|| Endpoints {
            label: label6(&label(self.family, None)),
            server_ip: wire6(3).into(),
            scanner: None,
            ..self.endpoints()
        })
    }
}

/// Host `n` of [`WIRE_PREFIX6`].
fn wire6(n: u16) -> Ipv6Addr {
    let p: ipnet::Ipv6Net = WIRE_PREFIX6.parse().expect("WIRE_PREFIX6");
    let mut seg = p.network().segments();
    seg[7] = n;
    Ipv6Addr::from(seg)
}

/// The clients' network of the bridge path, allowed by the last rule.
pub const BRIDGE_ALLOW: &str = "10.200.0.0/17";
/// The bridge path's scanner address (outside [`BRIDGE_ALLOW`]).
pub const BRIDGE_SCANNER: Ipv4Addr = Ipv4Addr::new(10, 200, 200, 10);

/// A Linux bridge in its own namespace with br_netfilter and an nftables
/// forward chain; client, server and scanner namespaces on veths into it.
pub struct BridgePath {
    c: Ns,
    s: Ns,
    scan: Ns,
    br: Ns,
    family: Family,
    rules: usize,
}

impl BridgePath {
    pub fn setup(rules: usize, set: bool, scratch: &Path) -> Result<BridgePath> {
        let br = Ns::new("br")?;
        br.ip(&["link", "add", "br0", "type", "bridge"])?;
        br.ip(&["link", "set", "br0", "up"])?;
        // bridged IPv4 through the inet hooks (conntrack works there; the bridge
        // family has no ct on this kernel, DESIGN §7).
        run_ok(
            &mut in_ns(
                br.name(),
                "sysctl",
                &["-qw", "net.bridge.bridge-nf-call-iptables=1"],
            ),
            Duration::from_secs(10),
        )?;
        let c = Ns::new("bc")?;
        let s = Ns::new("bs")?;
        let scan = Ns::new("bn")?;
        for (ns, port, ip) in [
            (&c, "pc", Ipv4Addr::new(10, 200, 0, 2)),
            (&s, "ps", Ipv4Addr::new(10, 200, 0, 3)),
            (&scan, "pn", BRIDGE_SCANNER),
        ] {
            ns.ip(&[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                br.name(),
            ])?;
            br.ip(&["link", "set", port, "master", "br0"])?;
            br.ip(&["link", "set", port, "up"])?;
            ns.addr_up("eth0", ip, 16)?;
        }
        let text = rules::nft_ruleset(&rules::fillers(rules, 0), BRIDGE_ALLOW, set);
        let file = scratch.join(format!("nft-{rules}-{set}.nft"));
        std::fs::write(&file, text).map_err(|source| HarnessError::Io {
            what: format!("write {}", file.display()),
            source,
        })?;
        let f = file.to_string_lossy().into_owned();
        run_ok(
            &mut in_ns(br.name(), "nft", &["-f", &f]),
            Duration::from_secs(60),
        )?;
        let family = if set { Family::NftSet } else { Family::Nft };
        Ok(BridgePath {
            c,
            s,
            scan,
            br,
            family,
            rules,
        })
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            label: label(self.family, Some(self.rules)),
            family: self.family,
            rules: Some(self.rules),
            clients: vec![self.c.name().to_owned()],
            server_ns: self.s.name().to_owned(),
            server_ip: Ipv4Addr::new(10, 200, 0, 3).into(),
            server_if: "eth0".into(),
            forwarder: None,
            scanner: Some(self.scan.name().to_owned()),
        }
    }

    /// The bridge's namespace (for `nft` edits).
    pub fn bridge_ns(&self) -> &str {
        self.br.name()
    }
}

/// The clients' network of the Open vSwitch path.
pub const OVS_ALLOW: &str = "10.202.0.0/17";
/// Rules in the Open vSwitch path's table 1.
pub const OVS_RULES: usize = 100;

/// Open vSwitch's userspace datapath: ovsdb-server and ovs-vswitchd started
/// by hand in a namespace of their own, with a private run directory; TAP ports
/// moved into the client and server namespaces as `eth0`.
pub struct OvsPath {
    // Drop order: the daemons stop before their namespaces and directory go.
    vswitchd: Proc,
    _ovsdb: Proc,
    c: Ns,
    s: Ns,
    scan: Ns,
    _o: Ns,
    dir: PathBuf,
    family: Family,
}

impl OvsPath {
    pub fn setup(tso: bool, scratch: &Path) -> Result<OvsPath> {
        let dir = scratch.join(if tso { "ovs-tso" } else { "ovs" });
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| HarnessError::Io {
            what: format!("mkdir {}", dir.display()),
            source,
        })?;
        let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let env = |c: &mut Command| {
            for k in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
                c.env(k, &dir);
            }
        };
        let schema = "/usr/share/openvswitch/vswitch.ovsschema";
        run_ok(
            Command::new("ovsdb-tool").args(["create", &d("conf.db"), schema]),
            Duration::from_secs(20),
        )?;
        let o = Ns::new("ovs")?;
        let mut db = in_ns(
            o.name(),
            "ovsdb-server",
            &[
                &d("conf.db"),
                &format!("--remote=punix:{}", d("db.sock")),
                &format!("--unixctl={}", d("ovsdb.ctl")),
                &format!("--log-file={}", d("ovsdb.log")),
            ],
        );
        env(&mut db);
        let ovsdb = Proc::spawn(&mut db)?;
        wait_for(&dir.join("db.sock"), Duration::from_secs(20))?;
        let dbarg = format!("--db=unix:{}", d("db.sock"));
        let vsctl = |args: &[&str]| -> Result<()> {
            let mut c = Command::new("ovs-vsctl");
            c.args([&dbarg, "--timeout=30"]).args(args);
            env(&mut c);
            run_ok(&mut c, Duration::from_secs(40)).map(drop)
        };
        vsctl(&["--no-wait", "init"])?;
        if tso {
            vsctl(&[
                "--no-wait",
                "set",
                "Open_vSwitch",
                ".",
                "other_config:userspace-tso-enable=true",
            ])?;
        }
        let mut vs = in_ns(
            o.name(),
            "ovs-vswitchd",
            &[
                &format!("unix:{}", d("db.sock")),
                &format!("--unixctl={}", d("vswitchd.ctl")),
                &format!("--log-file={}", d("vswitchd.log")),
            ],
        );
        env(&mut vs);
        let vswitchd = Proc::spawn(&mut vs)?;
        vsctl(&[
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
            "protocols=OpenFlow13",
        ])?;
        let c = Ns::new("oc")?;
        let s = Ns::new("os")?;
        let scan = Ns::new("on")?;
        for (ns, tap, ip) in [
            (&c, "tapc", Ipv4Addr::new(10, 202, 0, 2)),
            (&s, "taps", Ipv4Addr::new(10, 202, 0, 3)),
            (&scan, "tapn", Ipv4Addr::new(10, 202, 200, 10)),
        ] {
            vsctl(&[
                "add-port",
                "br0",
                tap,
                "--",
                "set",
                "Interface",
                tap,
                "type=tap",
            ])?;
            // The fd stays with ovs-vswitchd; the netdev becomes the host's eth0.
            o.ip(&["link", "set", tap, "netns", ns.name(), "name", "eth0"])?;
            ns.addr_up("eth0", ip, 16)?;
        }
        let flows = dir.join("flows.txt");
        let text = rules::ovs_flows(&rules::fillers(OVS_RULES, 0), OVS_ALLOW);
        std::fs::write(&flows, text).map_err(|source| HarnessError::Io {
            what: format!("write {}", flows.display()),
            source,
        })?;
        let mut of = Command::new("ovs-ofctl");
        of.args([
            "-O",
            "OpenFlow13",
            "replace-flows",
            &format!("unix:{}", d("br0.mgmt")),
            &flows.to_string_lossy(),
        ]);
        env(&mut of);
        run_ok(&mut of, Duration::from_secs(30))?;
        let family = if tso { Family::OvsTso } else { Family::Ovs };
        Ok(OvsPath {
            vswitchd,
            _ovsdb: ovsdb,
            c,
            s,
            scan,
            _o: o,
            dir,
            family,
        })
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            label: self.family.name().to_owned(),
            family: self.family,
            rules: Some(OVS_RULES),
            clients: vec![self.c.name().to_owned()],
            server_ns: self.s.name().to_owned(),
            server_ip: Ipv4Addr::new(10, 202, 0, 3).into(),
            server_if: "eth0".into(),
            forwarder: Some(self.vswitchd.pid()),
            scanner: Some(self.scan.name().to_owned()),
        }
    }

    /// The tail of ovs-vswitchd's log (for the report when something fails).
    pub fn log_tail(&self, n: usize) -> String {
        let t = std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

fn wait_for(p: &Path, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    while !p.exists() {
        Interrupt::check()?;
        if Instant::now() > end {
            return Err(HarnessError::Setup(format!(
                "{} did not appear within {timeout:?}",
                p.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The clients' network of the sgswitch path (instances get 172.31.0.x; the
/// uplink's outside addresses 172.31.255.x are outside it).
pub const SG_ALLOW: &str = "172.31.0.0/17";
/// Groups padding the model to the edit test's rule total.
pub const PAD_GROUPS: usize = 10;
/// Rules of each padding group.
pub const PAD_RULES: usize = 1000;
/// The group whose rule the edit test adds and removes.
pub const EDIT_GROUP: &str = "gedit";

/// How to start the sgswitch lab.
#[derive(Clone, Debug)]
pub struct SgOptions {
    pub rules: Vec<usize>,
    /// New-flow runs per rule count: each gets a client instance of its own
    /// (plus one shared client for TCP and UDP), so no run meets another's
    /// connection state or conntrack quota.
    pub flow_runs: usize,
    pub workers: usize,
    /// More `sgswitch up` arguments.
    pub extra: Vec<String>,
    /// Also make the padding groups and the edit target.
    pub edit_setup: bool,
    /// Rules in the padding groups (in groups of [`PAD_RULES`]); 0 means the
    /// default [`PAD_GROUPS`] × [`PAD_RULES`] (10k).
    pub pad_rules: usize,
    /// Rule counts of the IPv6 rows: a server instance in a group `g{n}v6`
    /// of `n` IPv6 rules each, with `flow_runs` new-flow clients of its own.
    pub rules6: Vec<usize>,
}

impl SgOptions {
    /// The padding groups' sizes: `PAD_RULES` each, the last one smaller.
    pub fn pad_groups(&self) -> Vec<usize> {
        let total = if self.pad_rules == 0 {
            PAD_GROUPS * PAD_RULES
        } else {
            self.pad_rules
        };
        (0..total.div_ceil(PAD_RULES))
            .map(|p| PAD_RULES.min(total - p * PAD_RULES))
            .collect()
    }
}

/// The real daemon with its uplink namespace, client instances, one server
/// instance per rule count and (optionally) the edit target.
pub struct SgPath {
    pub lab: Lab,
    pub clients: Vec<LabInstance>,
    pub flow_runs: usize,
    pub servers: Vec<(usize, LabInstance)>,
    /// The IPv6 rows' servers: (rules, instance, its IPv6 address), and their
    /// new-flow clients (`flow_runs` each, in the same order).
    pub servers6: Vec<(usize, LabInstance, Ipv6Addr)>,
    pub clients6: Vec<LabInstance>,
    /// The edit test's target: in every padding group and [`EDIT_GROUP`].
    pub edit_target: Option<LabInstance>,
    /// Rules in the padding groups.
    pub pad_rules: usize,
}

impl SgPath {
    pub fn setup(o: &SgOptions) -> Result<SgPath> {
        let max_rules = o.rules.iter().copied().max().unwrap_or(100).max(PAD_RULES);
        let mut cfg = LabConfig::new("bench")
            .arg("--rules-per-group")
            .arg(&max_rules.to_string())
            .arg("--subnet6")
            .arg(SG_PREFIX6);
        cfg.workers = o.workers;
        for a in &o.extra {
            cfg = cfg.arg(a);
        }
        // The lab panics on failure (after cleaning up): turn that into an error.
        let lab = std::panic::catch_unwind(|| Lab::start(cfg))
            .map_err(|p| HarnessError::Setup(format!("sgswitch lab: {}", panic_text(&p))))?
            .ok_or_else(|| HarnessError::Setup("not root".into()))?;
        // Groups and rules straight over the socket (thousands of rules: no
        // process per call).
        let mut api = Api::connect(&lab.socket)?;
        let mut group = |name: &str, desc: &str, reqs: &[rules::Authorize]| -> Result<()> {
            api.command(ApiCommand::AddGroup {
                name: name.to_owned(),
                description: desc.to_owned(),
            })?;
            for r in reqs {
                Interrupt::check()?;
                api.command(ApiCommand::Authorize {
                    egress: false,
                    group: GroupRef::Name(name.to_owned()),
                    permissions: vec![r.spec().into()],
                })?;
            }
            Ok(())
        };
        group("bclient", "bench clients", &[])?;
        for (salt, &n) in o.rules.iter().enumerate() {
            let reqs = rules::sg_authorize(&rules::fillers(n, salt), SG_ALLOW);
            group(&format!("g{n}"), &format!("{n} rules"), &reqs)?;
        }
        for (salt, &n) in o.rules6.iter().enumerate() {
            let reqs = rules::sg_authorize6(&rules::fillers(n, 50 + salt), SG_PREFIX6);
            group(&format!("g{n}v6"), &format!("{n} IPv6 rules"), &reqs)?;
        }
        if o.edit_setup {
            for (p, &n) in o.pad_groups().iter().enumerate() {
                // n fillers, no allowing rule: they only add weight.
                let fills = rules::fillers_chunked(n + 1, 100 + p, 250);
                let mut reqs = rules::sg_authorize(&fills, SG_ALLOW);
                reqs.pop();
                group(&format!("gpad{p}"), "padding", &reqs)?;
            }
            group(EDIT_GROUP, "edit target", &[])?;
        }
        let clients = lab.run_instances(1 + o.flow_runs * o.rules.len(), &["bclient"]);
        let mut servers = Vec::new();
        for &n in &o.rules {
            let g = format!("g{n}");
            let mut i = lab.run_instances(1, &[&g]);
            servers.push((n, i.remove(0)));
        }
        let mut servers6 = Vec::new();
        for &n in &o.rules6 {
            let i = lab.run_instances(1, &[&format!("g{n}v6")]).remove(0);
            let ip6 = ipv6_of(&lab, &i.id)?;
            servers6.push((n, i, ip6));
        }
        let clients6 = if o.rules6.is_empty() {
            Vec::new()
        } else {
            lab.run_instances(o.flow_runs * o.rules6.len(), &["bclient"])
        };
        let edit_target = if o.edit_setup {
            let names: Vec<String> = (0..o.pad_groups().len())
                .map(|p| format!("gpad{p}"))
                .chain([EDIT_GROUP.to_owned()])
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            Some(lab.run_instances(1, &refs).remove(0))
        } else {
            None
        };
        Ok(SgPath {
            lab,
            clients,
            flow_runs: o.flow_runs,
            servers,
            servers6,
            clients6,
            edit_target,
            pad_rules: o.pad_groups().iter().sum(),
        })
    }

    /// The endpoints of the variant with `n` rules per group.
    pub fn endpoints(&self, n: usize) -> Option<Endpoints> {
        let k = self.servers.iter().position(|(r, _)| *r == n)?;
        let srv = &self.servers[k].1;
        // The shared client, then this variant's own new-flow clients.
        let own = 1 + k * self.flow_runs..1 + (k + 1) * self.flow_runs;
        let clients = std::iter::once(&self.clients[0])
            .chain(self.clients.get(own).unwrap_or_default())
            .map(|c| c.netns.clone())
            .collect();
        Some(Endpoints {
            label: label(Family::Sgswitch, Some(n)),
            family: Family::Sgswitch,
            rules: Some(n),
            clients,
            server_ns: srv.netns.clone(),
            server_ip: srv.ip.into(),
            server_if: "eth0".into(),
            forwarder: self.lab.daemon_pid(),
            scanner: Some(self.lab.uplink_ns.clone()),
        })
    }

    /// The endpoints of the IPv6 row with `n` IPv6 rules: the shared client
    /// for TCP (over IPv6), then the row's own new-flow clients.
    pub fn endpoints6(&self, n: usize) -> Option<Endpoints> {
        let k = self.servers6.iter().position(|(r, _, _)| *r == n)?;
        let (_, srv, ip6) = &self.servers6[k];
        let own = k * self.flow_runs..(k + 1) * self.flow_runs;
        let clients = std::iter::once(&self.clients[0])
            .chain(self.clients6.get(own).unwrap_or_default())
            .map(|c| c.netns.clone())
            .collect();
        Some(Endpoints {
            label: label6(&label(Family::Sgswitch, Some(n))),
            family: Family::Sgswitch,
            rules: Some(n),
            clients,
            server_ns: srv.netns.clone(),
            server_ip: (*ip6).into(),
            server_if: "eth0".into(),
            forwarder: self.lab.daemon_pid(),
            scanner: None,
        })
    }

    /// Total rules in the model (`stats`' MODEL line).
    pub fn total_rules(&self) -> Option<usize> {
        let out = self.lab.cli(&["stats"]);
        out.stdout.lines().find_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.first() == Some(&"MODEL")).then(|| f.get(4)?.parse().ok())?
        })
    }
}

/// Instance `id`'s IPv6 address (`describe-instances`' IPV6ADDRESS line).
fn ipv6_of(lab: &Lab, id: &str) -> Result<Ipv6Addr> {
    let out = lab.cli(&["describe-instances", id]);
    out.stdout
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.first() == Some(&"IPV6ADDRESS") && f.get(1) == Some(&id))
                .then(|| f.get(2)?.parse().ok())?
        })
        .ok_or_else(|| {
            HarnessError::Setup(format!(
                "instance {id} has no IPv6 address (describe-instances: {})",
                out.stdout.trim()
            ))
        })
}

/// The message of a caught panic.
pub fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::exec::have;
    use crate::harness::load;

    fn lab_ok(name: &str) -> bool {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP {name}: not root");
            return false;
        }
        if !have("busybox") || !have("nft") {
            eprintln!("SKIP {name}: needs busybox and nft (scripts/test.sh installs them)");
            return false;
        }
        true
    }

    /// Root only: the bridge path passes the client's traffic (its /17 is
    /// allowed last) and drops the scanner's (outside it), linear and set.
    #[test]
    fn bridge_path_allows_the_clients_and_drops_the_scanner() {
        if !lab_ok("bridge_path_allows_the_clients_and_drops_the_scanner") {
            return;
        }
        /// Removes the scratch directory also when the test fails.
        struct Scratch(std::path::PathBuf);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let scratch =
            Scratch(std::env::temp_dir().join(format!("sgbench-test-{}", std::process::id())));
        let dir = scratch.0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        for set in [false, true] {
            let b = BridgePath::setup(100, set, &dir).unwrap();
            let ep = b.endpoints();
            assert_eq!(ep.label, if set { "nftset-100" } else { "nft-100" });
            load::ping(&ep.clients[0], ep.server_ip).expect("client -> server allowed");
            let scanner = ep.scanner.as_deref().unwrap();
            assert!(
                load::ping(scanner, ep.server_ip).is_err(),
                "scanner -> server must be dropped (set {set})"
            );
        }
    }

    /// Root only: the veth path connects and its namespaces go with the guard.
    #[test]
    fn veth_path_connects_and_is_torn_down() {
        if !lab_ok("veth_path_connects_and_is_torn_down") {
            return;
        }
        let v = VethPath::setup().unwrap();
        let ep = v.endpoints();
        load::ping(&ep.clients[0], ep.server_ip).unwrap();
        let names = [ep.clients[0].clone(), ep.server_ns.clone()];
        drop(v);
        for n in names {
            assert!(!switch::netns::exists(&n), "{n} left behind");
        }
    }
}
