//! The `sgswitch` command line: argument parsing (clap), the multi-call names
//! (`ec2-add-group`, ...), and the output format of the EC2 command-line tools.
//!
//! Contract (DESIGN §5):
//! * Every command except `up` and `install-links` is one [`Request`] to the
//!   daemon's socket (`--socket`, env `SGSWITCH_SOCKET`) on behalf of `--owner`
//!   (env `SGSWITCH_OWNER`; none = the daemon's default owner).
//! * Output: tab-separated lines as the EC2 tools printed them ([`format_reply`]),
//!   or with `--json` the documented, versioned shapes of [`crate::json`]
//!   (`docs/json.md`; errors as `{"version":1,"error":{...}}` on stderr).
//! * Exit status: 0 on success; 1 on an API error, printed `Code: message` on
//!   stderr, or when the daemon cannot be reached; 2 on a usage error.
//! * PERMISSION lines always have both port fields: the range for TCP/UDP, type
//!   and code (`-1` = any) for ICMP, both empty for protocol `all`.

use std::path::{Path, PathBuf};

use clap::{
    Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum,
};
use filter::model::{Ports, Rule, Source};

use crate::api::{self, Command, GroupRef, Permission, Reply, Request, Response, SourceGroup};

/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/sgswitch/sgswitch.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sgswitch";
/// Default owner of the daemon (AWS documentation's example account).
pub const DEFAULT_OWNER: &str = "111122223333";

const EXAMPLES: &str = "\
Examples (the EC2 Developer Guide's walkthrough):
  sgswitch up --uplink-netns outside &           # run the switch (as root)
  sgswitch run-instances ami-eca54085            # RESERVATION r-..  INSTANCE i-.. ami-eca54085 172.31.0.2 running ..
  sgswitch describe-group default                # GROUP 111122223333 default default group
  sgswitch authorize default -P tcp -p 22 -s 192.168.1.10/32
  sgswitch add-group web -d 'Web Servers'
  sgswitch authorize web -P tcp -p 80 -s 0.0.0.0/0
  sgswitch add-group app -d 'Application Servers'
  sgswitch authorize app -o web -u 111122223333
  sgswitch run-instances ami-fba54092 -n 7 -g web
  sgswitch revoke default -P tcp -p 22 -s 192.168.1.10/32
  sgswitch terminate-instances i-0123abcd
  sgswitch attach-instance tap-guest1 -g web --mac 52:54:00:12:34:56   # a QEMU guest's TAP
  sgswitch register-image ami-5e1f0001 --kernel guest/build/vmlinuz --initrd guest/build/initrd.img
  sgswitch run-instances ami-5e1f0001 --qemu -g web   # a QEMU guest booted from that image
  sgswitch install-links /usr/local/bin          # then: ec2-describe-group, ec2-authorize, ...
  sgswitch create-access-key                     # ACCESSKEY AKIA.. SECRET OWNER, for awscli/boto:
  aws --endpoint-url http://127.0.0.1:8773 ec2 describe-security-groups

Errors print `Code: message` on stderr (exit 1); usage errors exit 2.";

/// Multi-call names and the subcommand each stands for.
pub const MULTI_CALL: &[(&str, &str)] = &[
    ("ec2-add-group", "add-group"),
    ("ec2-delete-group", "delete-group"),
    ("ec2-describe-group", "describe-group"),
    ("ec2-authorize", "authorize"),
    ("ec2-revoke", "revoke"),
    ("ec2-run-instances", "run-instances"),
    ("ec2-describe-instances", "describe-instances"),
    ("ec2-terminate-instances", "terminate-instances"),
];

// `--socket`, `--owner` and `--json` are not clap fields: `command()` adds
// them to the commands that use them (and, for earlier scripts, before the
// subcommand), and `parse()` fills these fields from them and from the
// environment.
/// sgswitch — a userspace virtual switch with EC2-style security groups.
#[derive(Debug, Parser)]
#[command(name = "sgswitch", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The API socket: `--socket`, else `SGSWITCH_SOCKET` when set and not
    /// empty, else [`DEFAULT_SOCKET`].
    #[arg(skip)]
    pub socket: PathBuf,
    /// `--owner`, else `SGSWITCH_OWNER` when set and not empty.
    #[arg(skip)]
    pub owner: Option<String>,
    /// `--json`: print the documented shapes of [`crate::json`].
    #[arg(skip)]
    pub json: bool,
    /// `--wait`: cluster mode, answer an edit once every live host enforces it.
    #[arg(skip)]
    pub wait: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Ids of the options [`command`] adds.
const SOCKET: &str = "socket";
const OWNER: &str = "owner";
const JSON: &str = "json";
const WAIT: &str = "wait";

/// Commands that run here, without the daemon (no client options).
const LOCAL: &[&str] = &["up", "install-links", "completions", "man"];

fn socket_arg() -> Arg {
    Arg::new(SOCKET)
        .long("socket")
        .value_name("PATH")
        .value_parser(clap::value_parser!(PathBuf))
        .help(format!(
            "API socket of the daemon [env: SGSWITCH_SOCKET] [default: {DEFAULT_SOCKET}]"
        ))
}

fn owner_arg(help: String) -> Arg {
    Arg::new(OWNER)
        .long("owner")
        .value_name("ACCOUNT")
        .help(help)
}

fn client_owner_arg() -> Arg {
    owner_arg(
        "Act as this 12-digit account [env: SGSWITCH_OWNER] [default: the daemon's owner]".into(),
    )
}

fn json_arg() -> Arg {
    Arg::new(JSON)
        .long("json")
        .action(ArgAction::SetTrue)
        .help("Print the response as versioned JSON (see docs/json.md)")
}

fn wait_arg() -> Arg {
    Arg::new(WAIT).long("wait").action(ArgAction::SetTrue).help(
        "Cluster mode: answer only once every live host enforces the edit \
             (a single host always answers after enforcing)",
    )
}

/// The whole command line: the derived commands, the client options on the
/// commands that talk to the daemon (and `--socket`/`--owner` on `up`).
pub fn command() -> clap::Command {
    let mut cmd = Cli::command()
        .arg(socket_arg())
        .arg(client_owner_arg())
        .arg(json_arg());
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(&name, |sub| match name.as_str() {
            "up" => sub.arg(socket_arg()).arg(owner_arg(format!(
                "The daemon's default owner, a 12-digit account [env: SGSWITCH_OWNER] [default: {DEFAULT_OWNER}]"
            ))),
            n if LOCAL.contains(&n) => sub,
            _ => sub
                .arg(socket_arg())
                .arg(client_owner_arg())
                .arg(json_arg())
                .arg(wait_arg()),
        });
    }
    cmd
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the switch and its management daemon in the foreground.
    Up(Box<UpArgs>),
    /// Create a security group.  Prints: GROUP NAME DESC
    AddGroup {
        /// The new group's name (printable ASCII, up to 255 characters).
        name: String,
        /// Description (printable ASCII, up to 255 characters).
        #[arg(short = 'd', long = "description")]
        description: String,
    },
    /// Delete a security group.  Prints: GROUP NAME
    DeleteGroup {
        /// The group to delete (no instance may use it, no rule name it).
        name: String,
    },
    /// Show groups and their rules.  Prints GROUP and PERMISSION lines.
    #[command(alias = "describe-groups")]
    DescribeGroup {
        /// Groups to show, in this order (default: all of the owner's).
        names: Vec<String>,
        /// Also what each rule admitted on this host (PACKETS, BYTES, FLOWS
        /// after each PERMISSION) and a NORULE line per group: packets to
        /// its members that no rule matched.
        #[arg(long)]
        stats: bool,
    },
    /// Add ingress rules to a group.  Prints GROUP NAME, then one PERMISSION per rule.
    Authorize(RuleArgs),
    /// Remove ingress rules from a group (same options as authorize).
    Revoke(RuleArgs),
    /// Launch namespace instances (or QEMU guests with --qemu).  Prints
    /// RESERVATION and INSTANCE lines.
    RunInstances {
        /// Image id (`ami-...`). With --qemu: the registered image to boot (an
        /// unregistered one boots `up --qemu-kernel`'s default image, if any);
        /// without: recorded and shown.
        ami: String,
        /// How many instances.
        #[arg(short = 'n', long = "instance-count", default_value_t = 1)]
        count: u32,
        /// Security group (repeatable); none = default.
        #[arg(short = 'g', long = "group")]
        groups: Vec<String>,
        /// Boot QEMU guests from the AMI's image instead of namespaces
        /// (PLACE qemu:PID; the serial log is STATE_DIR/qemu/ID.log).
        #[arg(long)]
        qemu: bool,
    },
    /// Attach an interface someone else made (a QEMU guest's TAP, a veth end) as
    /// an instance.  Prints RESERVATION and INSTANCE lines (PLACE port:IFNAME).
    AttachInstance {
        /// The interface (its kernel side: the switch reads and writes it with AF_PACKET).
        ifname: String,
        /// Security group (repeatable); none = default.
        #[arg(short = 'g', long = "group")]
        groups: Vec<String>,
        /// The instance's address (default: the next free one).
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// The guest's MAC (default: derived from the instance id; configure the guest with it).
        #[arg(long)]
        mac: Option<String>,
        /// The network namespace the interface is in (default: the daemon's).
        #[arg(long)]
        netns: Option<String>,
    },
    /// Show instances.  Prints RESERVATION and INSTANCE lines, each INSTANCE
    /// line followed by IPV6ADDRESS ID ADDRESS.
    DescribeInstances {
        /// Instance ids (`i-...`; default: all of the owner's).
        ids: Vec<String>,
    },
    /// Terminate instances.  Prints: INSTANCE ID running shutting-down
    TerminateInstances {
        /// Instance ids (`i-...`).
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Terminate every instance of the owner (a whole lab): guests are
        /// stopped, processes left in namespace instances killed.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Per-port and per-drop-reason counters of the switch.  With an
    /// instance id: INSTANCE ID IP STATE PLACE, its PORT line, then DROP
    /// REASON N for frames it sent that were dropped and DENIED REASON N for
    /// frames to it that the rules or connection tracking refused.  With
    /// --watch: a live view of rates per port (packets/s and bit/s in and
    /// out, drops/s by reason), refreshed until interrupted.
    Stats {
        /// An instance of yours (i-...): only its counters.
        instance: Option<String>,
        /// Refresh every SECS seconds (default 1, from 0.1 to 3600) and show
        /// rates: RX_PPS RX_BPS TX_PPS TX_BPS DROP/S DENIED/S and the reasons.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// With --watch: stop after N refreshes.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// Why a packet passes or is dropped: runs a frame of this shape through
    /// the switch's own decision code against the live rules (scratch
    /// connection state, nothing is sent).  Prints: TRACE PROTO SRC DST WHAT
    /// GENERATION, then one STEP NAME RESULT DETAIL per stage (request,
    /// source, arp or nd (IPv6), destination, connection, transmit), then
    /// VERDICT allowed or VERDICT dropped REASON, then the admitting rules as
    /// describe-group prints them (PERMISSION ...), or for a drop by the
    /// rules the groups consulted (CONSULTED OWNER GROUP) and, for IPv6, the
    /// rules that would admit it but for their IPv4 CIDR (IPV4ONLY
    /// PERMISSION ...).
    Trace {
        /// Source: an instance id (i-...) or an IPv4 or IPv6 address (an
        /// instance's address is that instance; any other comes from the
        /// uplink).
        #[arg(long)]
        from: String,
        /// Destination: an instance id or an IPv4 or IPv6 address.
        #[arg(long)]
        to: String,
        /// tcp, udp, icmp or icmpv6.
        #[arg(short = 'P', long = "protocol")]
        proto: String,
        /// TCP/UDP destination port (with --reply-of: the service port of the
        /// flow the packet answers, i.e. its source port).
        #[arg(short = 'p', long = "port")]
        port: Option<u16>,
        /// ICMP TYPE:CODE (default 8:0, echo request; icmpv6: 128:0).
        #[arg(short = 't', long = "icmp-type-code")]
        icmp: Option<String>,
        /// Trace IPv6 between two instance ids (their IPv6 addresses; an
        /// IPv6 address or -P icmpv6 implies it).
        #[arg(short = '6', long = "ipv6")]
        ipv6: bool,
        /// The packet belongs to a flow it opened earlier (traced first).
        #[arg(long, conflicts_with = "reply_of")]
        established: bool,
        /// The packet answers a flow the destination opened to the source
        /// (that request is traced first).
        #[arg(long)]
        reply_of: bool,
    },
    /// Record frames at a port into a pcapng file (or `-w -`: a pipe into
    /// `tcpdump -r -` or Wireshark): received from and sent to it (direction
    /// in each packet's flags), or with --drops only the frames it sent that
    /// the switch dropped, each with `drop: REASON` (the reason `stats`
    /// counts) as the packet's comment.  Stops at the first limit reached, or
    /// at Ctrl-C, leaving a whole file; then prints on stderr: `sgswitch:
    /// captured N frames (B bytes) at TARGET, stopped by count|max-bytes|
    /// duration|client`, the drops by reason, and frames not captured
    /// because the switch's capture ring was full.  One capture at a time.
    /// `-r FILE` prints a capture file, one frame per line: TIME PORT in|out
    /// LEN WHAT, and the drop comment.
    Capture {
        /// An instance of yours (i-...), a port name as `stats` prints it, or
        /// `all`.
        #[arg(required_unless_present = "read")]
        target: Option<String>,
        /// Only the frames received at the port and dropped, with their reason.
        #[arg(long)]
        drops: bool,
        /// Stop after N frames [default: 10000].
        #[arg(short = 'c', long = "count", value_name = "N")]
        count: Option<u64>,
        /// Stop before the file passes N bytes [default: 64 MiB].
        #[arg(long, value_name = "N")]
        max_bytes: Option<u64>,
        /// Stop after SECS seconds [default: 60].
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// Keep at most N bytes of each frame [default: 2048].
        #[arg(short = 's', long = "snaplen", value_name = "N")]
        snaplen: Option<u32>,
        /// Write the pcapng file here (`-`: standard output).
        #[arg(
            short = 'w',
            value_name = "FILE",
            required_unless_present = "read",
            conflicts_with = "read"
        )]
        write: Option<PathBuf>,
        /// Print the frames of a capture file (no daemon needed).
        #[arg(short = 'r', value_name = "FILE")]
        read: Option<PathBuf>,
    },
    /// Cluster mode: the lab's hosts.  Prints: HOST NAME UNDERLAY STATE
    /// REVISION INSTANCES (STATE live or lost; REVISION the newest model
    /// revision the host acknowledged enforcing).
    Hosts,
    /// Register a guest image for `run-instances AMI --qemu`.  Prints:
    /// IMAGE AMI KERNEL INITRD MEMORY_MB DISK APPEND (DISK empty when none).
    /// A registered AMI again fails with InvalidAMIID.Duplicate.
    RegisterImage {
        /// The image id: ami- and 8 lowercase hex digits.
        ami: String,
        /// The guest kernel (bzImage).
        #[arg(long)]
        kernel: PathBuf,
        /// The guest initramfs.
        #[arg(long)]
        initrd: PathBuf,
        /// A disk image, attached as a virtio disk in snapshot mode (writes are
        /// discarded).
        #[arg(long)]
        disk: Option<PathBuf>,
        /// Memory per guest, MiB (32 to 65536).
        #[arg(long, default_value_t = api::DEFAULT_IMAGE_MEMORY_MB)]
        memory: u32,
        /// Kernel command line.
        #[arg(long, allow_hyphen_values = true, default_value = api::DEFAULT_IMAGE_APPEND)]
        append: String,
    },
    /// Show registered images (all when no AMI is given).  Prints: IMAGE AMI
    /// KERNEL INITRD MEMORY_MB DISK APPEND.
    #[command(alias = "describe-image")]
    DescribeImages {
        /// Image ids (`ami-...`; default: all registered images).
        amis: Vec<String>,
    },
    /// Deregister an image (guests already booted from it keep running).
    /// Prints the IMAGE line of the removed image.
    DeregisterImage {
        /// The image id (`ami-...`).
        ami: String,
    },
    /// Make the ec2-* multi-call symlinks to this binary in DIR.
    InstallLinks {
        /// Where to make the links (e.g. /usr/local/bin).
        dir: PathBuf,
    },
    /// Make an access key for the EC2 Query API acting as --owner (default: the
    /// daemon's owner).  Prints once: ACCESSKEY KEY-ID SECRET OWNER.
    CreateAccessKey,
    /// List --owner's access keys: KEY KEY-ID OWNER CREATED (UTC), never
    /// the secret.
    DescribeAccessKeys,
    /// Delete one of --owner's access keys: requests signed with it are
    /// refused (AuthFailure) from then on.  Prints the KEY line of the
    /// deleted key.
    DeleteAccessKey {
        /// The key id (`AKIA...`).
        key_id: String,
    },
    /// Print a shell completion script (e.g. `sgswitch completions bash >
    /// /etc/bash_completion.d/sgswitch`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages: sgswitch.1 and one sgswitch-COMMAND.1 per command into
    /// DIR, or sgswitch.1 to stdout without DIR.
    Man {
        /// Directory for the pages (created if missing).
        dir: Option<PathBuf>,
    },
}

/// Where `up` serves the EC2 Query API (`--ec2-listen ADDR|off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ec2Listen {
    Off,
    On(std::net::SocketAddr),
}

/// Default address of the EC2 Query API.
pub const DEFAULT_EC2_LISTEN: &str = "127.0.0.1:8773";

/// Parse `--ec2-listen`: `off`, or an address with port (`127.0.0.1:0` picks a
/// free port).
pub fn parse_ec2_listen(s: &str) -> Result<Ec2Listen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Ec2Listen::Off);
    }
    s.parse()
        .map(Ec2Listen::On)
        .map_err(|e| format!("invalid --ec2-listen '{s}': {e} (expected ADDR:PORT or off)"))
}

/// Options of `authorize` and `revoke`.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// The group to edit.
    pub group: String,
    /// Protocol: tcp, udp, icmp, icmpv6, all (or 6, 17, 1, 58, -1).
    #[arg(short = 'P', long = "protocol")]
    pub proto: Option<String>,
    /// Port or range: N, N-M, -1 (all); required with tcp and udp.
    #[arg(
        short = 'p',
        long = "port-range",
        allow_hyphen_values = true,
        conflicts_with = "icmp"
    )]
    pub ports: Option<String>,
    /// ICMP or ICMPv6 TYPE:CODE (-1 = any).
    #[arg(short = 't', long = "icmp-type-code", allow_hyphen_values = true)]
    pub icmp: Option<String>,
    /// Source CIDR, IPv4 or IPv6 (repeatable); default 0.0.0.0/0 (::/0 for
    /// icmpv6) when no source is given.
    #[arg(short = 's', long = "source-subnet")]
    pub cidrs: Vec<String>,
    /// Source group (repeatable), members of which may connect.
    #[arg(short = 'o', long = "source-group")]
    pub src_groups: Vec<String>,
    /// Owner of the preceding -o group (default: the caller).
    #[arg(short = 'u', long = "source-group-user")]
    pub src_users: Vec<String>,
    /// Edit the group's egress rules: -s and -o/-u are then destinations.
    #[arg(long)]
    pub egress: bool,
}

/// How workers wait for frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PollArg {
    /// Spin on the ports without sleeping (lowest latency, a full core each).
    Busy,
    /// Spin while frames come, sleep in poll(2) when idle.
    Adaptive,
}

/// What a revoke does to live tracked flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RevokeArg {
    /// Cut flows whose permission is gone on their next packet (default).
    Revalidate,
    /// Keep tracked flows until they time out (modern AWS).
    Keep,
}

/// Options of `sgswitch up`.
#[derive(Clone, Debug, Args)]
pub struct UpArgs {
    /// State directory (SQLite database).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Instances' subnet.
    #[arg(long, default_value = "172.31.0.0/16")]
    pub subnet: ipnet::Ipv4Net,
    /// Instances' IPv6 prefix, a /64 (each instance's address is the prefix +
    /// the EUI-64 of its MAC, what SLAAC gives it). Default: the prefix kept in
    /// the state, else a ULA /64 chosen at random once (RFC 4193) and kept.
    #[arg(long)]
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// Name of the uplink TAP.
    #[arg(long, default_value = "sgsw-uplink")]
    pub uplink: String,
    /// Move the uplink into this existing namespace (addresses left to its owner).
    #[arg(long)]
    pub uplink_netns: Option<String>,
    /// Addresses of the outside world, never given to instances
    /// (default: the subnet's last /24).
    #[arg(long)]
    pub uplink_range: Option<ipnet::Ipv4Net>,
    /// Poll threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// How workers wait for frames.
    #[arg(long, value_enum, default_value_t = PollArg::Adaptive)]
    pub poll: PollArg,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9184).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What a revoke does to tracked flows it no longer allows.
    #[arg(long, value_enum, default_value_t = RevokeArg::Revalidate)]
    pub conntrack_on_revoke: RevokeArg,
    /// Rule limit per group.
    #[arg(long, default_value_t = 100)]
    pub rules_per_group: usize,
    /// Pin workers to cores.
    #[arg(long)]
    pub pin_cores: bool,
    /// Nice value of the worker threads (-20..=19; 0: as any thread). Lower
    /// lets frames (and a new rule's first packets) wait less for a worker
    /// on cores shared with busy processes, at their expense.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub worker_nice: i32,
    /// Scheduling of the worker threads: normal = as any thread, at
    /// --worker-nice; fifo = SCHED_FIFO at the lowest real-time priority,
    /// ahead of every normal thread, one below a fifo edit path (falls back
    /// to normal with a warning when refused; not with --poll busy). See
    /// `mgmt::sched`.
    #[arg(long, value_enum, default_value_t = crate::sched::WorkerPriority::Normal)]
    pub worker_priority: crate::sched::WorkerPriority,
    /// Scheduling of the edit path (the API connection threads and the
    /// management thread): fifo = SCHED_FIFO at the lowest real-time priority,
    /// one above fifo workers (falls back to nice with a warning when
    /// refused), nice = nice -10, normal = as any thread. See `mgmt::sched`.
    #[arg(long, value_enum, default_value_t = crate::sched::EditPriority::Fifo)]
    pub edit_priority: crate::sched::EditPriority,
    /// Kernel of the QEMU guest image (`run-instances --qemu`).
    #[arg(long, env = "SG_GUEST_KERNEL")]
    pub qemu_kernel: Option<PathBuf>,
    /// Initramfs of the QEMU guest image.
    #[arg(long, env = "SG_GUEST_INITRD")]
    pub qemu_initrd: Option<PathBuf>,
    /// Kernel command line of the guests.
    #[arg(
        long,
        env = "SG_GUEST_APPEND",
        default_value = "console=ttyS0 quiet panic=-1"
    )]
    pub qemu_append: String,
    /// Memory per guest, MiB.
    #[arg(long, default_value_t = 256)]
    pub qemu_mem: u32,
    /// Guests' accelerator: tcg (QEMU's emulator, works everywhere), kvm
    /// (-cpu host), or auto = KVM if a probe guest runs on it, else TCG.
    #[arg(long, value_enum, default_value_t = crate::qemu::Accel::Tcg)]
    pub qemu_accel: crate::qemu::Accel,
    /// Write flow logs in the AWS VPC Flow Logs default format (version 2) to
    /// FILE (appended to, rotated at --flow-log-max-bytes), or `-` for stdout.
    #[arg(long, value_name = "FILE|-", conflicts_with = "no_switch")]
    pub flow_log: Option<PathBuf>,
    /// Flow-log aggregation interval, seconds (AWS offers 60 and 600; shorter
    /// is for labs).
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "flow_log",
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub flow_log_interval: u32,
    /// Rotate the flow-log file before it grows beyond this many bytes
    /// (FILE -> FILE.1 -> ... FILE.N).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, requires = "flow_log",
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub flow_log_max_bytes: u64,
    /// Rotated flow-log files kept (0: truncate in place).
    #[arg(long, value_name = "N", default_value_t = 4, requires = "flow_log")]
    pub flow_log_keep: u32,
    /// REJECT records per interface per interval; further rejected flows are
    /// counted into the interface's SKIPDATA record.
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "flow_log")]
    pub flow_log_reject_limit: u32,
    /// Serve the API without a switch (groups and rules only; no instances).
    #[arg(long, hide = true)]
    pub no_switch: bool,
    /// Serve the EC2 Query API (SigV4-signed, for awscli/boto) on ADDR:PORT, or
    /// `off`. The bound address is printed as `sgswitch: ec2 api on http://ADDR`.
    #[arg(long, default_value = DEFAULT_EC2_LISTEN, value_parser = parse_ec2_listen)]
    pub ec2_listen: Ec2Listen,
    /// Cluster mode: join the lab whose state is in this etcd (v3 API,
    /// comma-separated URLs, e.g. http://192.0.2.1:2379). Without it the
    /// daemon is one host on its own SQLite state.
    #[arg(long, env = "SGSWITCH_ETCD", value_name = "URL[,URL...]")]
    pub etcd: Option<String>,
    /// Cluster mode: this host's name in the lab (default: the hostname).
    #[arg(long, requires = "etcd")]
    pub host: Option<String>,
    /// Cluster mode: this host's address on the underlay, where the other
    /// hosts send its instances' traffic (VXLAN-GBP over UDP).
    #[arg(long, requires = "etcd")]
    pub underlay: Option<std::net::Ipv4Addr>,
    /// Cluster mode: UDP port of the overlay.
    #[arg(long, default_value_t = 4789, requires = "etcd")]
    pub vxlan_port: u16,
    /// Cluster mode: hand TCP super-frames to this host's kernel whole, with
    /// UDP-tunnel GSO through a TAP (Linux 6.16 and later, docs/overlay.md)
    /// instead of cutting them in user space. The TAP's interface forwards:
    /// a FORWARD firewall policy must let the underlay traffic through.
    #[arg(long, requires = "etcd")]
    pub tunnel_gso: bool,
    /// Level of the daemon's event log on stderr: error, warn, info, debug or
    /// trace (`RUST_LOG`, if set, takes precedence).
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,
    /// Format of the event log: text (one line per event) or json (one JSON
    /// object per line: timestamp, level, message and the event's fields).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::logfmt::LogFormat,
}

/// Parse `args` (argv, program name first), honouring multi-call names.
/// Returns the parsed CLI, or clap's error (usage: exit 2, help/version: exit 0).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<(Cli, ArgMatches), clap::Error> {
    parse_with_env(args, |name| std::env::var_os(name))
}

/// [`parse`] with the environment given (tests).
pub fn parse_with_env<I: IntoIterator<Item = String>>(
    args: I,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<(Cli, ArgMatches), clap::Error> {
    let args: Vec<String> = args.into_iter().collect();
    let mut cmd = command();
    // A multi-call name shows itself in usage and help (`ec2-authorize ...`).
    if let Some((name, sub)) = multi_call_name(&args)
        && let Some(sc) = cmd.find_subcommand(sub)
    {
        let usage = sc.clone().bin_name(name).render_usage().to_string();
        let usage = usage.strip_prefix("Usage: ").unwrap_or(&usage).to_owned();
        cmd = cmd.mut_subcommand(sub, |s| s.bin_name(name).override_usage(usage));
    }
    let args = multi_call_args(args);
    let matches = cmd.try_get_matches_from_mut(&args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let sub = matches.subcommand().map(|(_, m)| m);
    let local = matches
        .subcommand_name()
        .is_some_and(|n| LOCAL.contains(&n));
    // The subcommand's option wins over the same option before it.
    let get = |id: &str| -> Option<String> {
        let on = |m: &ArgMatches| {
            m.try_get_one::<String>(id)
                .ok()
                .flatten()
                .cloned()
                .or_else(|| {
                    m.try_get_one::<PathBuf>(id)
                        .ok()
                        .flatten()
                        .map(|p| p.display().to_string())
                })
        };
        sub.and_then(on).or_else(|| on(&matches))
    };
    let from_env = |name: &str| {
        env(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.to_string_lossy().into_owned())
    };
    cli.socket = get(SOCKET)
        .or_else(|| from_env("SGSWITCH_SOCKET"))
        .unwrap_or_else(|| DEFAULT_SOCKET.to_owned())
        .into();
    cli.owner = get(OWNER).or_else(|| from_env("SGSWITCH_OWNER"));
    let flag = |m: &ArgMatches| m.try_get_one::<bool>(JSON).ok().flatten() == Some(&true);
    cli.json = flag(&matches) || sub.is_some_and(flag);
    cli.wait = sub.is_some_and(|m| m.try_get_one::<bool>(WAIT).ok().flatten() == Some(&true));
    if cli.json && local {
        return Err(cmd.error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "--json is for commands that talk to the daemon, not for '{}'",
                matches.subcommand_name().unwrap_or_default()
            ),
        ));
    }
    Ok((cli, matches))
}

/// The multi-call name `args[0]` stands for, and its subcommand.
fn multi_call_name(args: &[String]) -> Option<(&'static str, &'static str)> {
    let base = Path::new(args.first()?).file_name()?.to_str()?;
    MULTI_CALL.iter().find(|(name, _)| *name == base).copied()
}

/// Rewrite `ec2-add-group ARGS` into `sgswitch add-group ARGS`.
pub fn multi_call_args(mut args: Vec<String>) -> Vec<String> {
    let Some(argv0) = args.first() else {
        return vec!["sgswitch".into()];
    };
    let base = Path::new(argv0)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_owned();
    if let Some((_, sub)) = MULTI_CALL.iter().find(|(name, _)| *name == base) {
        args[0] = "sgswitch".into();
        args.insert(1, (*sub).into());
    }
    args
}

/// Build the permission of `authorize`/`revoke`, pairing each `-u` with the
/// `-o` before it (by position on the command line).
pub fn permission(args: &RuleArgs, sub: &ArgMatches) -> Result<Permission, String> {
    let o_idx: Vec<usize> = sub
        .indices_of("src_groups")
        .map(|i| i.collect())
        .unwrap_or_default();
    let u_idx: Vec<usize> = sub
        .indices_of("src_users")
        .map(|i| i.collect())
        .unwrap_or_default();
    let mut groups: Vec<(String, Option<String>)> =
        args.src_groups.iter().map(|g| (g.clone(), None)).collect();
    for (ui, &u_pos) in u_idx.iter().enumerate() {
        // The last -o before this -u.
        let Some(oi) = o_idx.iter().rposition(|&o| o < u_pos) else {
            return Err(format!(
                "-u {} must follow the -o GROUP it belongs to",
                args.src_users[ui]
            ));
        };
        if groups[oi].1.is_some() {
            return Err(format!("-o {} has more than one -u", groups[oi].0));
        }
        groups[oi].1 = Some(args.src_users[ui].clone());
    }
    Ok(Permission {
        proto: args.proto.clone(),
        ports: args.ports.clone(),
        icmp: args.icmp.clone(),
        cidrs: args.cidrs.clone(),
        groups: groups
            .into_iter()
            .map(|(name, owner)| SourceGroup {
                group: GroupRef::Name(name),
                owner,
            })
            .collect(),
        description: None,
    })
}

/// Groups named on the command line (always by name).
fn group_refs(names: &[String]) -> Vec<GroupRef> {
    names.iter().map(GroupRef::name).collect()
}

/// The request a client command sends, or `None` for local commands.
pub fn request_of(cli: &Cli, matches: &ArgMatches) -> Result<Option<Request>, String> {
    let command = match &cli.cmd {
        Cmd::Up(_) | Cmd::InstallLinks { .. } | Cmd::Completions { .. } | Cmd::Man { .. } => {
            return Ok(None);
        }
        Cmd::AddGroup { name, description } => Command::AddGroup {
            name: name.clone(),
            description: description.clone(),
        },
        Cmd::DeleteGroup { name } => Command::DeleteGroup {
            group: GroupRef::name(name),
        },
        Cmd::DescribeGroup {
            names,
            stats: false,
        } => Command::DescribeGroups {
            groups: group_refs(names),
        },
        Cmd::DescribeGroup { names, stats: true } => Command::DescribeGroupStats {
            groups: group_refs(names),
        },
        Cmd::Authorize(a) => {
            let sub = matches
                .subcommand_matches("authorize")
                .ok_or("authorize: no arguments")?;
            Command::Authorize {
                egress: a.egress,
                group: GroupRef::name(&a.group),
                permissions: vec![permission(a, sub)?],
            }
        }
        Cmd::Revoke(a) => {
            let sub = matches
                .subcommand_matches("revoke")
                .ok_or("revoke: no arguments")?;
            Command::Revoke {
                egress: a.egress,
                group: GroupRef::name(&a.group),
                permissions: vec![permission(a, sub)?],
            }
        }
        Cmd::RunInstances {
            ami,
            count,
            groups,
            qemu,
        } => Command::RunInstances {
            ami: ami.clone(),
            count: *count,
            min_count: None,
            groups: group_refs(groups),
            qemu: Some(*qemu),
            client_token: None,
        },
        Cmd::AttachInstance {
            ifname,
            groups,
            ip,
            mac,
            netns,
        } => Command::AttachInstance {
            ifname: ifname.clone(),
            netns: netns.clone(),
            groups: group_refs(groups),
            ip: *ip,
            mac: mac.clone(),
        },
        Cmd::DescribeInstances { ids } => Command::DescribeInstances { ids: ids.clone() },
        Cmd::TerminateInstances { ids, all } => Command::TerminateInstances {
            ids: ids.clone(),
            all: *all,
        },
        Cmd::Stats { instance: None, .. } => Command::Stats,
        Cmd::Stats {
            instance: Some(id), ..
        } => Command::InstanceStats { id: id.clone() },
        Cmd::Hosts => Command::Hosts,
        Cmd::Capture {
            target,
            drops,
            count,
            max_bytes,
            duration,
            snaplen,
            ..
        } => Command::Capture {
            target: target.clone().unwrap_or_default(),
            drops: *drops,
            count: *count,
            max_bytes: *max_bytes,
            duration_secs: *duration,
            snaplen: *snaplen,
        },
        Cmd::Trace {
            from,
            to,
            proto,
            port,
            icmp,
            established,
            reply_of,
            ipv6,
        } => Command::Trace {
            from: from.clone(),
            to: to.clone(),
            proto: proto.clone(),
            port: *port,
            icmp: icmp.clone(),
            established: *established,
            reply_of: *reply_of,
            ipv6: *ipv6,
        },
        Cmd::RegisterImage {
            ami,
            kernel,
            initrd,
            disk,
            memory,
            append,
        } => {
            // The daemon runs elsewhere: paths are sent absolute, resolved here.
            let abs = |what: &str, p: &Path| {
                std::path::absolute(p).map_err(|e| format!("{what} {}: {e}", p.display()))
            };
            Command::RegisterImage {
                ami: ami.clone(),
                kernel: abs("kernel", kernel)?,
                initrd: abs("initrd", initrd)?,
                disk: disk.as_deref().map(|d| abs("disk", d)).transpose()?,
                memory_mb: Some(*memory),
                append: Some(append.clone()),
            }
        }
        Cmd::DescribeImages { amis } => Command::DescribeImages { amis: amis.clone() },
        Cmd::DeregisterImage { ami } => Command::DeregisterImage { ami: ami.clone() },
        Cmd::CreateAccessKey => Command::CreateAccessKey,
        Cmd::DescribeAccessKeys => Command::DescribeAccessKeys,
        Cmd::DeleteAccessKey { key_id } => Command::DeleteAccessKey {
            key_id: key_id.clone(),
        },
    };
    Ok(Some(Request {
        owner: cli.owner.clone(),
        command,
        wait: cli.wait,
    }))
}

/// One PERMISSION line of `group`'s egress `rule`: as an ingress line with
/// `TO` in place of `FROM` and a last field `egress`, e.g.
/// `PERMISSION\tweb\tALLOWS\ttcp\t443\t443\tTO\tCIDR\t10.0.0.0/8\tegress`.
pub fn egress_line(group: &str, rule: &Rule) -> String {
    let l = permission_line(group, rule);
    format!("{}\tegress", l.replacen("\tFROM\t", "\tTO\t", 1))
}

/// One PERMISSION line of `group`'s `rule`.
pub fn permission_line(group: &str, rule: &Rule) -> String {
    let (from, to) = match rule.ports {
        Ports::None => (String::new(), String::new()),
        Ports::Range(lo, hi) => (lo.to_string(), hi.to_string()),
        Ports::Icmp { ty, code } => {
            let s = |v: Option<u8>| v.map_or("-1".to_owned(), |v| v.to_string());
            (s(ty), s(code))
        }
    };
    let source = match &rule.source {
        Source::Cidr(net) => format!("FROM\tCIDR\t{net}"),
        Source::Cidr6(net) => format!("FROM\tCIDR\t{net}"),
        Source::Group { owner, group } => format!("FROM\tUSER\t{}\tGRPNAME\t{group}", owner.0),
    };
    format!(
        "PERMISSION\t{group}\tALLOWS\t{}\t{from}\t{to}\t{source}",
        rule.proto.as_str()
    )
}

/// The EC2-tool lines of a successful response (each ends with `\n`).
pub fn format_response(resp: &Response) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    match resp {
        Response::GroupAdded {
            name, description, ..
        } => line(format!("GROUP\t{name}\t{description}")),
        Response::GroupDeleted { name } => line(format!("GROUP\t{name}")),
        Response::Groups { groups } => {
            for g in groups {
                line(format!(
                    "GROUP\t{}\t{}\t{}",
                    g.owner.0, g.name, g.description
                ));
                for r in &g.rules {
                    line(permission_line(&g.name, r));
                }
                // Egress rules only when they are not the default (all to
                // 0.0.0.0/0 and ::/0) that every group starts with, so the
                // usual listing stays as it was; none at all prints one line.
                if !filter::model::is_default_egress(&g.egress) {
                    if g.egress.is_empty() {
                        line(format!("EGRESS	{}	NONE", g.name));
                    }
                    for r in &g.egress {
                        line(egress_line(&g.name, r));
                    }
                }
            }
        }
        Response::GroupStats { groups } => {
            for s in groups {
                let g = &s.group;
                line(format!(
                    "GROUP\t{}\t{}\t{}",
                    g.owner.0, g.name, g.description
                ));
                for (r, h) in g.rules.iter().zip(&s.hits) {
                    line(format!(
                        "{}\tPACKETS\t{}\tBYTES\t{}\tFLOWS\t{}",
                        permission_line(&g.name, r),
                        h.packets,
                        h.bytes,
                        h.flows
                    ));
                }
                line(format!("NORULE\t{}\tPACKETS\t{}", g.name, s.no_rule));
            }
        }
        Response::Permissions {
            group,
            rules,
            egress,
        } => {
            line(format!("GROUP\t{group}"));
            for r in rules {
                line(if *egress {
                    egress_line(group, r)
                } else {
                    permission_line(group, r)
                });
            }
        }
        Response::Reservations { reservations } => {
            for res in reservations {
                line(format!(
                    "RESERVATION\t{}\t{}\t{}",
                    res.id,
                    res.owner,
                    res.groups.join(",")
                ));
                for i in &res.instances {
                    // A pending or stopped instance's reason is an 8th field.
                    let reason = i.reason.as_ref().map(|r| format!("\t{r}"));
                    line(format!(
                        "INSTANCE\t{}\t{}\t{}\t{}\t{}\t{}{}",
                        i.id,
                        i.ami,
                        i.ip,
                        i.state,
                        i.launch_index,
                        i.place,
                        reason.unwrap_or_default()
                    ));
                    // describe-instances: the IPv6 address on a line of its own.
                    if let Some(a) = i.ipv6_address {
                        line(format!("IPV6ADDRESS\t{}\t{a}", i.id));
                    }
                }
            }
        }
        Response::InstanceStats { stats } => {
            let i = &stats.instance;
            line(format!(
                "INSTANCE\t{}\t{}\t{}\t{}",
                i.id, i.ip, i.state, i.place
            ));
            match &stats.port {
                Some(p) => {
                    line(port_line(p));
                    for (reason, n) in &p.drop_reasons {
                        line(format!("DROP\t{reason}\t{n}"));
                    }
                    for (reason, n) in &p.denied {
                        line(format!("DENIED\t{reason}\t{n}"));
                    }
                }
                None => line(format!("PORT\t{}\tnone", i.id)),
            }
        }
        Response::Trace { trace: t } => {
            line(format!(
                "TRACE\t{}\t{}\t{}\t{}\tgeneration {}",
                t.proto, t.src, t.dst, t.what, t.generation
            ));
            for st in &t.steps {
                line(format!("STEP\t{}\t{}\t{}", st.step, st.result, st.detail));
            }
            match &t.reason {
                Some(r) => line(format!("VERDICT\t{}\t{r}", t.verdict)),
                None => line(format!("VERDICT\t{}", t.verdict)),
            }
            for r in &t.rules {
                line(permission_line(&r.group, &r.rule));
            }
            if t.reason.as_deref() == Some("no_rule")
                && let Some(o) = &t.owner
            {
                for g in &t.groups {
                    line(format!("CONSULTED\t{o}\t{g}"));
                }
            }
            for r in &t.ipv4_only {
                line(format!("IPV4ONLY\t{}", permission_line(&r.group, &r.rule)));
            }
        }
        Response::Hosts { hosts } => {
            for h in hosts {
                line(format!(
                    "HOST\t{}\t{}\t{}\t{}\t{}",
                    h.name, h.underlay, h.state, h.revision, h.instances
                ));
            }
        }
        Response::StateChanges { changes } => {
            for c in changes {
                line(format!("INSTANCE\t{}\t{}\t{}", c.id, c.previous, c.current));
            }
        }
        Response::Stats { stats } => {
            line(format!("GENERATION\t{}", stats.generation));
            line(format!(
                "MODEL\tgroups\t{}\trules\t{}\tinstances\t{}",
                stats.groups, stats.rules, stats.instances
            ));
            line(format!(
                "EDITS\t{}\tp50_us\t{}\tp99_us\t{}",
                stats.edits, stats.edit_latency_p50_us, stats.edit_latency_p99_us
            ));
            line(format!(
                "PUBLISH\tp50_us\t{}\tp99_us\t{}",
                stats.publish_latency_p50_us, stats.publish_latency_p99_us
            ));
            for p in &stats.ports {
                line(port_line(p));
            }
            for (reason, n) in &stats.drops {
                line(format!("DROP\t{reason}\t{n}"));
            }
            line(format!("CONNTRACK\tentries\t{}", stats.conntrack_entries));
            for (event, n) in &stats.events {
                line(format!("EVENT\t{event}\t{n}"));
            }
            line(format!("PORTS-GONE\t{}", stats.ports_gone));
        }
        Response::Images { images } => {
            for i in images {
                line(image_line(i));
            }
        }
        Response::AccessKey {
            key_id,
            secret,
            owner,
        } => line(format!("ACCESSKEY\t{key_id}\t{secret}\t{owner}")),
        Response::Rules { rules } => {
            for r in rules {
                // An egress rule's permission as describe-group prints it
                // (`TO ... egress`).
                let perm = match r.egress {
                    true => egress_line(&r.group_name, &r.rule),
                    false => permission_line(&r.group_name, &r.rule),
                };
                line(format!(
                    "RULE\t{}\t{}\t{perm}\t{}",
                    r.rule_id, r.group_id, r.description
                ));
            }
        }
        Response::Tags { tags } => {
            for t in tags {
                line(format!("TAG\t{}\t{}\t{}", t.resource_id, t.key, t.value));
            }
        }
        Response::Done => {}
        Response::CaptureStarted { target, limits } => line(format!(
            "CAPTURE\t{target}\t{}\t{}\t{}\t{}",
            limits.count, limits.max_bytes, limits.duration_secs, limits.snaplen
        )),
        Response::AccessKeys { keys } => {
            for k in keys {
                line(format!(
                    "KEY\t{}\t{}\t{}",
                    k.key_id,
                    k.owner,
                    crate::ec2::sigv4::format_iso8601(k.created_at)
                ));
            }
        }
    }
    out
}

/// The PORT line of `stats`: `PORT NAME rx_packets N rx_bytes N tx_packets
/// N tx_bytes N drops N`.
pub fn port_line(p: &api::PortStats) -> String {
    format!(
        "PORT\t{}\trx_packets\t{}\trx_bytes\t{}\ttx_packets\t{}\ttx_bytes\t{}\tdrops\t{}",
        p.name, p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes, p.drops
    )
}

/// The IMAGE line of a registered image:
/// `IMAGE AMI KERNEL INITRD MEMORY_MB DISK APPEND` (DISK empty when none).
pub fn image_line(i: &api::ImageRecord) -> String {
    format!(
        "IMAGE\t{}\t{}\t{}\t{}\t{}\t{}",
        i.ami,
        i.kernel.display(),
        i.initrd.display(),
        i.memory_mb,
        i.disk
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        i.append
    )
}

/// What to print for a reply: (stdout, stderr, exit code).
pub fn format_reply(reply: &Reply, json: bool) -> (String, String, i32) {
    match reply {
        Ok(resp) if json => (
            crate::json::to_text(&crate::json::response(resp)),
            String::new(),
            0,
        ),
        Ok(resp) => (format_response(resp), String::new(), 0),
        Err(e) if json => (
            String::new(),
            crate::json::to_text(&crate::json::error(e)),
            1,
        ),
        Err(e) => (String::new(), format!("{}: {}\n", e.code, e.message), 1),
    }
}

/// Write the completion script of `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut command(), "sgswitch", out);
}

/// Man pages from the clap definitions: `sgswitch.1` and one
/// `sgswitch-COMMAND.1` per command into `dir` (made if missing; returns the
/// files written), or `sgswitch.1` to `out` without a directory.
pub fn man_pages(
    dir: Option<&Path>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = command();
    cmd.build();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd).render(out)?;
        return Ok(Vec::new());
    };
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut page = |c: clap::Command, name: String| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).title(name).render(&mut buf)?;
        std::fs::write(&path, buf)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
    {
        page(sub.clone(), format!("sgswitch-{}", sub.get_name()))?;
    }
    page(cmd, "sgswitch".into())?;
    Ok(written)
}

/// Make the multi-call symlinks in `dir` pointing at `target`; replaces links of
/// the same names. Returns the links made.
pub fn install_links(dir: &Path, target: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut made = Vec::new();
    for (name, _) in MULTI_CALL {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(target, &link)?;
        made.push(link);
    }
    Ok(made)
}

/// Run a client command against the daemon: returns (stdout, stderr, exit code).
pub fn run_client(socket: &Path, req: &Request, json: bool) -> (String, String, i32) {
    match api::call(socket, req) {
        Ok(reply) => format_reply(&reply, json),
        Err(e) => (
            String::new(),
            format!("sgswitch: {}\n", api::error_chain(&e)),
            1,
        ),
    }
}

/// One sample of `stats --watch`: per port, (rx packets, rx bytes, tx
/// packets, tx bytes, drops by reason, denied by reason).
type Sample = std::collections::BTreeMap<String, api::PortStats>;

/// What `stats --watch` samples: every port, or one instance's.
fn sample(socket: &Path, req: &Request) -> Result<Sample, String> {
    let reply = api::call(socket, req).map_err(|e| api::error_chain(&e))?;
    let ports = match reply.map_err(|e| e.to_string())? {
        Response::Stats { stats } => stats.ports,
        Response::InstanceStats { stats } => stats.port.into_iter().collect(),
        other => return Err(format!("unexpected answer: {other:?}")),
    };
    Ok(ports.into_iter().map(|p| (p.name.clone(), p)).collect())
}

/// A rate with a k/M/G suffix (`950`, `12.5k`, `1.20G`).
pub fn human_rate(v: f64) -> String {
    let (d, s) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        return format!("{v:.0}");
    };
    let x = v / d;
    if x >= 100.0 {
        format!("{x:.0}{s}")
    } else if x >= 10.0 {
        format!("{x:.1}{s}")
    } else {
        format!("{x:.2}{s}")
    }
}

/// One frame of `stats --watch`: rates between two samples `secs` apart.
/// Header `PORT RX_PPS RX_BPS TX_PPS TX_BPS DROP/S DENIED/S REASONS`, one
/// line per port (sorted by name; a port new since the last sample shows
/// `-`), REASONS as `reason:rate` of drops (frames it sent) and
/// `to:reason:rate` of denials (frames to it).
pub fn watch_frame(prev: &Sample, cur: &Sample, secs: f64) -> String {
    let mut out = format!(
        "{:<12} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}  REASONS\n",
        "PORT", "RX_PPS", "RX_BPS", "TX_PPS", "TX_BPS", "DROP/S", "DENIED/S"
    );
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let reasons = |a: &[(String, u64)], b: &[(String, u64)], tag: &str| -> Vec<String> {
        b.iter()
            .filter_map(|(r, n)| {
                let was = a.iter().find(|(x, _)| x == r).map_or(0, |(_, m)| *m);
                (*n > was).then(|| format!("{tag}{r}:{}", human_rate(rate(was, *n))))
            })
            .collect()
    };
    for (name, c) in cur {
        let Some(p) = prev.get(name) else {
            out.push_str(&format!(
                "{name:<12} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}  (new)\n",
                "-", "-", "-", "-", "-", "-"
            ));
            continue;
        };
        let sum = |v: &[(String, u64)]| v.iter().map(|(_, n)| n).sum::<u64>();
        let mut why = reasons(&p.drop_reasons, &c.drop_reasons, "");
        why.extend(reasons(&p.denied, &c.denied, "to:"));
        let row = format!(
            "{name:<12} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}  {}",
            human_rate(rate(p.rx_packets, c.rx_packets)),
            human_rate(rate(p.rx_bytes, c.rx_bytes) * 8.0),
            human_rate(rate(p.tx_packets, c.tx_packets)),
            human_rate(rate(p.tx_bytes, c.tx_bytes) * 8.0),
            human_rate(rate(p.drops, c.drops)),
            human_rate(rate(sum(&p.denied), sum(&c.denied))),
            why.join(" ")
        );
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

/// `stats [i-...] --watch [SECS] [--count N]`: sample, wait, print the rates,
/// until interrupted or `count` frames. On a terminal each frame replaces the
/// last; otherwise frames follow each other, a blank line apart.
pub fn watch_stats(
    socket: &Path,
    req: &Request,
    secs: f64,
    count: Option<u64>,
    out: &mut dyn std::io::Write,
    tty: bool,
) -> Result<(), String> {
    if !(0.1..=3600.0).contains(&secs) || !secs.is_finite() {
        return Err(format!(
            "invalid --watch interval '{secs}': seconds from 0.1 to 3600"
        ));
    }
    let mut prev = sample(socket, req)?;
    let mut t0 = std::time::Instant::now();
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
        let cur = sample(socket, req)?;
        let dt = t0.elapsed().as_secs_f64().max(1e-3);
        t0 = std::time::Instant::now();
        let body = watch_frame(&prev, &cur, dt);
        let head = format!(
            "sgswitch stats --watch: every {secs} s ({} port{})\n",
            cur.len(),
            if cur.len() == 1 { "" } else { "s" }
        );
        let frame = if tty {
            format!("\x1b[H\x1b[2J{head}{body}")
        } else if n == 0 {
            format!("{head}{body}")
        } else {
            format!("\n{head}{body}")
        };
        out.write_all(frame.as_bytes()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        prev = cur;
        n += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use filter::model::{Group, Owner, Proto};

    use super::*;
    use crate::api::{ApiError, InstanceView, Reservation, StateChange};

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn group_rule(owner: &str, group: &str) -> Rule {
        Rule {
            proto: Proto::All,
            ports: Ports::None,
            source: Source::Group {
                owner: Owner(owner.into()),
                group: group.into(),
            },
        }
    }

    fn cidr_rule(proto: Proto, ports: Ports, cidr: &str) -> Rule {
        Rule {
            proto,
            ports,
            source: filter::model::parse_source_cidr(cidr).unwrap(),
        }
    }

    #[test]
    fn ipv6_rules_print_and_parse_and_half_a_default_egress_is_printed() {
        let (cli, m) = parse(argv(&[
            "sgswitch",
            "authorize",
            "web",
            "-P",
            "icmpv6",
            "-t",
            "128:-1",
            "-s",
            "2001:db8::/32",
        ]))
        .unwrap();
        let req = request_of(&cli, &m).unwrap().unwrap();
        let Command::Authorize { permissions, .. } = req.command else {
            panic!("{:?}", req.command)
        };
        let spec = permissions[0].rule_spec().unwrap();
        let rules = spec.expand(&Owner("111122223333".into())).unwrap();
        assert_eq!(rules[0].to_string(), "icmpv6 128:-1 from 2001:db8::/32");
        let mut g = Group {
            owner: Owner("111122223333".into()),
            name: "web".into(),
            id: "sg-1a2b3c4d".into(),
            description: "Web".into(),
            rules: vec![
                cidr_rule(Proto::Tcp, Ports::Range(22, 22), "2001:db8::/32"),
                rules[0].clone(),
            ],
            // The default in the other order is still the default.
            egress: filter::model::default_egress().into_iter().rev().collect(),
        };
        assert_eq!(
            format_response(&Response::Groups {
                groups: vec![g.clone()]
            }),
            "GROUP\t111122223333\tweb\tWeb\n\
             PERMISSION\tweb\tALLOWS\ttcp\t22\t22\tFROM\tCIDR\t2001:db8::/32\n\
             PERMISSION\tweb\tALLOWS\ticmpv6\t128\t-1\tFROM\tCIDR\t2001:db8::/32\n"
        );
        // Only the IPv4 half left: printed, so the missing ::/0 shows.
        g.rules.clear();
        g.egress = vec![filter::model::default_egress_rule()];
        assert_eq!(
            format_response(&Response::Groups { groups: vec![g] }),
            "GROUP\t111122223333\tweb\tWeb\n\
             PERMISSION\tweb\tALLOWS\tall\t\t\tTO\tCIDR\t0.0.0.0/0\tegress\n"
        );
    }

    #[test]
    fn describe_group_stats_appends_hits_to_each_permission_and_a_norule_line() {
        let (cli, m) = parse(argv(&["sgswitch", "describe-group", "--stats", "web"])).unwrap();
        assert_eq!(
            request_of(&cli, &m).unwrap().unwrap().command,
            Command::DescribeGroupStats {
                groups: vec!["web".into()]
            }
        );
        let g = Group {
            owner: Owner("111122223333".into()),
            name: "web".into(),
            id: "sg-1a2b3c4d".into(),
            description: "Web Servers".into(),
            egress: filter::model::default_egress(),
            rules: vec![
                cidr_rule(Proto::Tcp, Ports::Range(80, 80), "0.0.0.0/0"),
                group_rule("111122223333", "web"),
            ],
        };
        let hits = vec![
            crate::api::RuleHits {
                packets: 3,
                bytes: 180,
                flows: 2,
            },
            crate::api::RuleHits::default(),
        ];
        let resp = Response::GroupStats {
            groups: vec![crate::api::GroupStats {
                group: g,
                hits,
                no_rule: 7,
            }],
        };
        assert_eq!(
            format_response(&resp),
            "GROUP\t111122223333\tweb\tWeb Servers\n\
             PERMISSION\tweb\tALLOWS\ttcp\t80\t80\tFROM\tCIDR\t0.0.0.0/0\tPACKETS\t3\tBYTES\t180\tFLOWS\t2\n\
             PERMISSION\tweb\tALLOWS\tall\t\t\tFROM\tUSER\t111122223333\tGRPNAME\tweb\tPACKETS\t0\tBYTES\t0\tFLOWS\t0\n\
             NORULE\tweb\tPACKETS\t7\n"
        );
        let v = serde_json::to_value(crate::json::response(&resp)).unwrap();
        let g = &v["groups"][0];
        assert_eq!(g["no_rule_packets"], 7);
        assert_eq!(g["permissions"][0]["hits"]["flows"], 2);
        assert_eq!(g["permissions"][0]["hits"]["bytes"], 180);
        assert_eq!(g["permissions"][1]["hits"]["packets"], 0);
        // Plain describe-group has neither field.
        let plain = Response::Groups {
            groups: vec![match &resp {
                Response::GroupStats { groups } => groups[0].group.clone(),
                _ => unreachable!(),
            }],
        };
        let v = serde_json::to_value(crate::json::response(&plain)).unwrap();
        assert!(v["groups"][0].get("no_rule_packets").is_none());
        assert!(v["groups"][0]["permissions"][0].get("hits").is_none());
    }

    #[test]
    fn egress_flag_and_egress_lines() {
        for (verb, want) in [("authorize", true), ("revoke", true)] {
            let (cli, m) = parse(argv(&[
                "sgswitch", verb, "web", "--egress", "-P", "tcp", "-p", "443",
            ]))
            .unwrap();
            let req = request_of(&cli, &m).unwrap().unwrap();
            let egress = match req.command {
                Command::Authorize { egress, .. } | Command::Revoke { egress, .. } => egress,
                c => panic!("{c:?}"),
            };
            assert_eq!(egress, want, "{verb}");
        }
        let (cli, m) = parse(argv(&["sgswitch", "authorize", "web", "-p", "22"])).unwrap();
        let req = request_of(&cli, &m).unwrap().unwrap();
        assert!(matches!(
            req.command,
            Command::Authorize { egress: false, .. }
        ));
        let mut g = Group {
            owner: Owner("111122223333".into()),
            name: "web".into(),
            id: "sg-1a2b3c4d".into(),
            description: "Web".into(),
            rules: vec![],
            egress: filter::model::default_egress(),
        };
        // The default egress rule alone: no egress line.
        assert_eq!(
            format_response(&Response::Groups {
                groups: vec![g.clone()]
            }),
            "GROUP\t111122223333\tweb\tWeb\n"
        );
        g.egress = vec![
            cidr_rule(Proto::Tcp, Ports::Range(443, 443), "10.0.0.0/8"),
            group_rule("111122223333", "db"),
        ];
        assert_eq!(
            format_response(&Response::Groups {
                groups: vec![g.clone()]
            }),
            "GROUP\t111122223333\tweb\tWeb\n\
             PERMISSION\tweb\tALLOWS\ttcp\t443\t443\tTO\tCIDR\t10.0.0.0/8\tegress\n\
             PERMISSION\tweb\tALLOWS\tall\t\t\tTO\tUSER\t111122223333\tGRPNAME\tdb\tegress\n"
        );
        g.egress.clear();
        assert_eq!(
            format_response(&Response::Groups { groups: vec![g] }),
            "GROUP\t111122223333\tweb\tWeb\nEGRESS\tweb\tNONE\n"
        );
    }

    #[test]
    fn describe_group_prints_group_and_permission_lines_like_the_ec2_tools() {
        let g = Group {
            owner: Owner("598916040194".into()),
            name: "default".into(),
            id: "sg-1a2b3c4d".into(),
            description: "default group".into(),
            egress: filter::model::default_egress(),
            rules: vec![
                group_rule("598916040194", "default"),
                cidr_rule(Proto::Tcp, Ports::Range(22, 22), "192.168.1.10/32"),
                cidr_rule(Proto::Udp, Ports::Range(0, 65535), "10.0.0.0/8"),
                cidr_rule(
                    Proto::Icmp,
                    Ports::Icmp {
                        ty: Some(8),
                        code: None,
                    },
                    "0.0.0.0/0",
                ),
                cidr_rule(
                    Proto::Icmp,
                    Ports::Icmp {
                        ty: None,
                        code: None,
                    },
                    "0.0.0.0/0",
                ),
                Rule {
                    proto: Proto::Tcp,
                    ports: Ports::Range(8080, 8090),
                    source: Source::Group {
                        owner: Owner("444455556666".into()),
                        group: "web".into(),
                    },
                },
            ],
        };
        let out = format_response(&Response::Groups { groups: vec![g] });
        assert_eq!(
            out,
            "GROUP\t598916040194\tdefault\tdefault group\n\
             PERMISSION\tdefault\tALLOWS\tall\t\t\tFROM\tUSER\t598916040194\tGRPNAME\tdefault\n\
             PERMISSION\tdefault\tALLOWS\ttcp\t22\t22\tFROM\tCIDR\t192.168.1.10/32\n\
             PERMISSION\tdefault\tALLOWS\tudp\t0\t65535\tFROM\tCIDR\t10.0.0.0/8\n\
             PERMISSION\tdefault\tALLOWS\ticmp\t8\t-1\tFROM\tCIDR\t0.0.0.0/0\n\
             PERMISSION\tdefault\tALLOWS\ticmp\t-1\t-1\tFROM\tCIDR\t0.0.0.0/0\n\
             PERMISSION\tdefault\tALLOWS\ttcp\t8080\t8090\tFROM\tUSER\t444455556666\tGRPNAME\tweb\n"
        );
    }

    #[test]
    fn group_edit_lines() {
        let added = Response::GroupAdded {
            name: "web".into(),
            description: "Web Servers".into(),
            id: "sg-1".into(),
        };
        assert_eq!(format_response(&added), "GROUP\tweb\tWeb Servers\n");
        assert_eq!(
            format_response(&Response::GroupDeleted { name: "web".into() }),
            "GROUP\tweb\n"
        );
        let mut auth = Response::Permissions {
            group: "default".into(),
            rules: vec![cidr_rule(
                Proto::Tcp,
                Ports::Range(22, 22),
                "192.168.1.10/32",
            )],
            egress: false,
        };
        assert_eq!(
            format_response(&auth),
            "GROUP\tdefault\nPERMISSION\tdefault\tALLOWS\ttcp\t22\t22\tFROM\tCIDR\t192.168.1.10/32\n"
        );
        // Egress rules added or removed print as describe-group's egress
        // lines (TO, last field egress).
        if let Response::Permissions { egress, .. } = &mut auth {
            *egress = true;
        }
        assert_eq!(
            format_response(&auth),
            "GROUP\tdefault\nPERMISSION\tdefault\tALLOWS\ttcp\t22\t22\tTO\tCIDR\t192.168.1.10/32\tegress\n"
        );
    }

    #[test]
    fn reservation_instance_and_terminate_lines() {
        let inst = |id: &str, ip: &str, k: u32| InstanceView {
            id: id.into(),
            ami: "ami-fba54092".into(),
            ip: ip.parse().unwrap(),
            mac: "02:00:01:23:ab:cd".into(),
            state: "running".into(),
            launch_index: k,
            place: format!("netns:{id}"),
            reason: None,
            ipv6_address: (k == 1).then(|| "fd00:1:2:3:0:1ff:fe23:abcd".parse().unwrap()),
        };
        let r = Response::Reservations {
            reservations: vec![Reservation {
                id: "r-0192776a".into(),
                owner: "598916040194".into(),
                groups: vec!["default".into(), "web".into()],
                instances: vec![
                    inst("i-0123abcd", "172.31.0.2", 0),
                    inst("i-4567ef01", "172.31.0.3", 1),
                ],
            }],
        };
        assert_eq!(
            format_response(&r),
            "RESERVATION\tr-0192776a\t598916040194\tdefault,web\n\
             INSTANCE\ti-0123abcd\tami-fba54092\t172.31.0.2\trunning\t0\tnetns:i-0123abcd\n\
             INSTANCE\ti-4567ef01\tami-fba54092\t172.31.0.3\trunning\t1\tnetns:i-4567ef01\n\
             IPV6ADDRESS\ti-4567ef01\tfd00:1:2:3:0:1ff:fe23:abcd\n"
        );
        let t = Response::StateChanges {
            changes: vec![StateChange {
                id: "i-0123abcd".into(),
                previous: "running".into(),
                current: "shutting-down".into(),
            }],
        };
        assert_eq!(
            format_response(&t),
            "INSTANCE\ti-0123abcd\trunning\tshutting-down\n"
        );
    }

    #[test]
    fn errors_print_code_colon_message_and_exit_1() {
        let e: Reply = Err(ApiError::new(
            api::ErrorCode::InvalidGroupNotFound,
            "the security group 'x' does not exist",
        ));
        let (out, err, code) = format_reply(&e, false);
        assert_eq!(
            (out.as_str(), err.as_str(), code),
            (
                "",
                "InvalidGroup.NotFound: the security group 'x' does not exist\n",
                1
            )
        );
        let (out, _, code) = format_reply(&Ok(Response::GroupDeleted { name: "web".into() }), true);
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["group"]["name"], "web");
    }

    #[test]
    fn authorize_pairs_each_u_with_the_o_before_it() {
        let (cli, m) = parse(argv(&[
            "sgswitch",
            "authorize",
            "web",
            "-P",
            "tcp",
            "-p",
            "-1",
            "-o",
            "a",
            "-u",
            "444455556666",
            "-o",
            "b",
            "-s",
            "1.2.3.4/32",
        ]))
        .unwrap();
        let req = request_of(&cli, &m).unwrap().unwrap();
        let Command::Authorize {
            group, permissions, ..
        } = req.command
        else {
            panic!("{req:?}")
        };
        assert_eq!(group, GroupRef::name("web"));
        let [spec] = &permissions[..] else {
            panic!("{permissions:?}")
        };
        assert_eq!(spec.proto.as_deref(), Some("tcp"));
        assert_eq!(spec.ports.as_deref(), Some("-1"));
        assert_eq!(spec.cidrs, ["1.2.3.4/32"]);
        assert_eq!(
            spec.groups,
            vec![
                SourceGroup {
                    group: "a".into(),
                    owner: Some("444455556666".into())
                },
                SourceGroup {
                    group: "b".into(),
                    owner: None
                }
            ]
        );

        let (cli, m) = parse(argv(&[
            "sgswitch",
            "revoke",
            "web",
            "-u",
            "444455556666",
            "-o",
            "a",
        ]))
        .unwrap();
        assert!(
            request_of(&cli, &m)
                .unwrap_err()
                .contains("-u 444455556666")
        );
        let (cli, m) = parse(argv(&[
            "sgswitch", "revoke", "web", "-o", "a", "-u", "1", "-u", "2",
        ]))
        .unwrap();
        assert!(
            request_of(&cli, &m)
                .unwrap_err()
                .contains("more than one -u")
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &["sgswitch", "authorize", "web", "-p", "22", "-t", "8:0"][..],
            &["sgswitch", "add-group", "web"],
            &["sgswitch", "terminate-instances"],
            &["sgswitch", "no-such-command"],
            &["sgswitch", "run-instances", "ami-1", "-n", "many"],
            &["sgswitch", "up", "--subnet", "not-a-cidr"],
        ] {
            let e = parse(argv(args)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn global_options_and_multi_call_names() {
        let (cli, m) = parse(argv(&[
            "/usr/local/bin/ec2-describe-group",
            "default",
            "web",
            "--socket",
            "/tmp/s.sock",
            "--owner",
            "444455556666",
            "--json",
        ]))
        .unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/s.sock"));
        assert!(cli.json);
        let req = request_of(&cli, &m).unwrap().unwrap();
        assert_eq!(req.owner.as_deref(), Some("444455556666"));
        assert_eq!(
            req.command,
            Command::DescribeGroups {
                groups: vec!["default".into(), "web".into()]
            }
        );
        for (name, sub) in MULTI_CALL {
            assert_eq!(multi_call_args(argv(&[name, "x"]))[1], *sub);
        }
        assert_eq!(
            multi_call_args(argv(&["sgswitch", "stats"])),
            argv(&["sgswitch", "stats"])
        );
        let (cli, m) = parse(argv(&[
            "ec2-run-instances",
            "ami-eca54085",
            "-n",
            "3",
            "-g",
            "web",
            "-g",
            "db",
        ]))
        .unwrap();
        assert_eq!(
            request_of(&cli, &m).unwrap().unwrap().command,
            Command::RunInstances {
                ami: "ami-eca54085".into(),
                count: 3,
                min_count: None,
                groups: vec!["web".into(), "db".into()],
                qemu: Some(false),
                client_token: None,
            }
        );
    }

    #[test]
    fn ec2_listen_takes_an_address_or_off_and_defaults_to_8773() {
        assert_eq!(parse_ec2_listen("off"), Ok(Ec2Listen::Off));
        assert_eq!(parse_ec2_listen("OFF"), Ok(Ec2Listen::Off));
        assert_eq!(
            parse_ec2_listen("127.0.0.1:0"),
            Ok(Ec2Listen::On("127.0.0.1:0".parse().unwrap()))
        );
        let e = parse_ec2_listen("127.0.0.1").unwrap_err();
        assert!(e.contains("'127.0.0.1'"), "{e}");
        let (cli, _) = parse(argv(&["sgswitch", "up"])).unwrap();
        let Cmd::Up(a) = &cli.cmd else { panic!() };
        assert_eq!(
            a.ec2_listen,
            Ec2Listen::On(DEFAULT_EC2_LISTEN.parse().unwrap())
        );
        let (cli, m) = parse(argv(&[
            "sgswitch",
            "--owner",
            "444455556666",
            "create-access-key",
        ]))
        .unwrap();
        let req = request_of(&cli, &m).unwrap().unwrap();
        assert_eq!(req.command, Command::CreateAccessKey);
        assert_eq!(req.owner.as_deref(), Some("444455556666"));
        let shown = format_response(&Response::AccessKey {
            key_id: "AKIAAAAAAAAAAAAAAAAA".into(),
            secret: "s".repeat(40),
            owner: "444455556666".into(),
        });
        assert_eq!(
            shown,
            format!(
                "ACCESSKEY\tAKIAAAAAAAAAAAAAAAAA\t{}\t444455556666\n",
                "s".repeat(40)
            )
        );
    }

    #[test]
    fn up_options_parse() {
        let (cli, _) = parse(argv(&[
            "sgswitch",
            "up",
            "--state-dir",
            "/tmp/st",
            "--socket",
            "/tmp/s",
            "--subnet",
            "10.9.0.0/16",
            "--uplink",
            "up0",
            "--uplink-netns",
            "outside",
            "--uplink-range",
            "10.9.255.0/24",
            "--workers",
            "2",
            "--poll",
            "busy",
            "--metrics-listen",
            "127.0.0.1:9184",
            "--owner",
            "444455556666",
            "--conntrack-on-revoke",
            "keep",
        ]))
        .unwrap();
        let Cmd::Up(a) = &cli.cmd else { panic!() };
        assert_eq!(a.state_dir, PathBuf::from("/tmp/st"));
        assert_eq!(a.uplink_netns.as_deref(), Some("outside"));
        assert_eq!(a.workers, 2);
        assert_eq!(a.poll, PollArg::Busy);
        assert_eq!(a.conntrack_on_revoke, RevokeArg::Keep);
        assert_eq!(a.uplink_range.unwrap().to_string(), "10.9.255.0/24");
        assert_eq!(cli.owner.as_deref(), Some("444455556666"));
    }

    #[test]
    fn flow_log_options_parse_and_bad_values_are_named() {
        let (cli, _) = parse(argv(&[
            "sgswitch",
            "up",
            "--flow-log",
            "/var/log/sgswitch/flow.log",
            "--flow-log-interval",
            "60",
            "--flow-log-max-bytes",
            "1048576",
            "--flow-log-keep",
            "2",
            "--flow-log-reject-limit",
            "50",
        ]))
        .unwrap();
        let Cmd::Up(a) = &cli.cmd else { panic!() };
        let f = crate::dataplane::flow_log_config(a).expect("flow logs on");
        assert_eq!(
            f.sink,
            switch::FlowLogSink::File("/var/log/sgswitch/flow.log".into())
        );
        assert_eq!(
            (f.interval_secs, f.max_bytes, f.keep, f.reject_limit),
            (60, 1 << 20, 2, 50)
        );
        let (cli, _) = parse(argv(&["sgswitch", "up", "--flow-log", "-"])).unwrap();
        let Cmd::Up(a) = &cli.cmd else { panic!() };
        let f = crate::dataplane::flow_log_config(a).expect("flow logs on");
        assert_eq!(f.sink, switch::FlowLogSink::Stdout);
        assert_eq!(f.interval_secs, 600, "the AWS default");
        let (cli, _) = parse(argv(&["sgswitch", "up"])).unwrap();
        let Cmd::Up(a) = &cli.cmd else { panic!() };
        assert!(crate::dataplane::flow_log_config(a).is_none());
        for (args, named) in [
            (&["--flow-log", "f", "--flow-log-interval", "0"][..], "'0'"),
            (
                &["--flow-log", "f", "--flow-log-interval", "3601"],
                "'3601'",
            ),
            (&["--flow-log", "f", "--flow-log-max-bytes", "100"], "'100'"),
            (&["--flow-log-interval", "60"], "--flow-log"),
        ] {
            let mut v = vec!["sgswitch", "up"];
            v.extend_from_slice(args);
            let e = parse(argv(&v)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(named), "{args:?}: {e}");
        }
    }

    #[test]
    fn install_links_makes_every_multi_call_link() {
        let dir = crate::testutil::TempDir::new("links");
        let target = Path::new("/usr/bin/true");
        let links = install_links(&dir.0, target).unwrap();
        assert_eq!(links.len(), MULTI_CALL.len());
        // Twice is fine (links replaced).
        install_links(&dir.0, target).unwrap();
        for (name, _) in MULTI_CALL {
            assert_eq!(std::fs::read_link(dir.0.join(name)).unwrap(), target);
        }
    }

    #[test]
    fn watch_frames_show_rates_and_reasons() {
        assert_eq!(human_rate(950.0), "950");
        assert_eq!(human_rate(12_500.0), "12.5k");
        assert_eq!(human_rate(1_200_000_000.0), "1.20G");
        let port = |name: &str, rx: u64, drops: Vec<(&str, u64)>, denied: Vec<(&str, u64)>| {
            let v = |l: Vec<(&str, u64)>| {
                l.into_iter()
                    .map(|(r, n)| (r.to_string(), n))
                    .collect::<Vec<_>>()
            };
            let drops = v(drops);
            let denied = v(denied);
            api::PortStats {
                name: name.into(),
                rx_packets: rx,
                rx_bytes: rx * 100,
                tx_packets: 0,
                tx_bytes: 0,
                drops: drops.iter().map(|(_, n)| n).sum(),
                drop_reasons: drops,
                denied,
            }
        };
        let prev: Sample = [(
            "i-00000001",
            port("i-00000001", 100, vec![], vec![("no_rule", 4)]),
        )]
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
        let cur: Sample = [
            (
                "i-00000001",
                port(
                    "i-00000001",
                    300,
                    vec![("spoofed_ip", 10)],
                    vec![("no_rule", 24)],
                ),
            ),
            ("i-00000002", port("i-00000002", 5, vec![], vec![])),
        ]
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
        let f = watch_frame(&prev, &cur, 2.0);
        let lines: Vec<&str> = f.lines().collect();
        assert!(lines[0].starts_with("PORT"), "{f}");
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        // 200 packets and 20000 bytes in 2 s: 100 pps, 80 kbit/s.
        assert_eq!(
            cols[..7],
            ["i-00000001", "100", "80.0k", "0", "0", "5", "10"],
            "{f}"
        );
        assert!(lines[1].ends_with("spoofed_ip:5 to:no_rule:10"), "{f}");
        assert!(
            lines[2].starts_with("i-00000002") && lines[2].ends_with("(new)"),
            "{f}"
        );
    }
}
