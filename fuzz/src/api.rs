//! Target `api`: the socket protocol's request decoder and the management core.
//!
//! Input: a request line (u16 length + bytes), then up to [`MAX_REQUESTS`]
//! structured requests ([`read_request`]): commands built from small
//! dictionaries of names, owners, protocols, ports and CIDRs (plus any string
//! the fuzzer makes), run in order against a real [`Core`] on a fresh SQLite
//! store (in `/dev/shm` when there is one) with the recording data plane.
//!
//! Checked:
//! * [`decode_request`] never panics on any bytes; a decoded request re-encodes
//!   to JSON that decodes to the same request, and the decoded request is then
//!   run like the structured ones.
//! * Every reply encodes to one JSON line ([`encode_reply`]) that decodes back
//!   to the same reply; errors carry a code and a message.
//! * An error leaves the state exactly as it was: [`Core::dump`] (model,
//!   instance records, store rows) is byte-identical before and after. (The
//!   request's owner is made known first with a describe: by design a new
//!   owner's `default` group is created on first contact and kept even when
//!   the request then fails, as `mgmt/src/core_tests.rs` states.)
//! * Group edits (ingress and egress: a selector byte with its high bit set
//!   makes an authorize or revoke an egress edit) and describes agree with
//!   `filter::model` applied directly to a copy of the model: same success or
//!   failure, same resulting model, same rules or groups in the response. Every other success leaves a model that
//!   passes [`Model::verify`] with instance addresses unique, in the subnet and
//!   outside the uplink range.
//! * Durability: after the last request the store reopens (`Core::open`) to the
//!   same model.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use filter::Model;
use filter::model::{Owner, RuleSpec};
use mgmt::api::{
    Command, GroupRef, Permission, Reply, Request, Response, WireReply, decode_request,
    encode_reply,
};
use mgmt::core::{Core, CoreConfig};
use mgmt::store::Store;
use mgmt::testutil::RecordingDataplane;

use crate::input::{Reader, Writer};

pub const OWNER: &str = "111122223333";
pub const OTHER: &str = "444455556666";
/// Most structured requests decoded from one input.
pub const MAX_REQUESTS: usize = 24;

pub const NAMES: &[&str] = &["default", "web", "app", "db", "Web", "", "a b", "x\ty"];
pub const OWNERS: &[&str] = &[OWNER, OTHER, "12345678901", "abcdefghijkl", ""];
pub const PROTOS: &[&str] = &[
    "tcp", "udp", "icmp", "all", "-1", "6", "17", "1", "TCP", "gre",
];
pub const PORT_RANGES: &[&str] = &["22", "80-81", "-1", "0-65535", "70000", "9-8", "1-", " 5"];
pub const ICMPS: &[&str] = &["8:0", "-1:-1", "3:-1", "-1:4", "256:0", "8"];
pub const CIDRS: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "172.31.255.10/32",
    "205.192.8.45/24",
    "1.2.3.4",
    "1.2.3.4/33",
    "::/0",
];
pub const AMIS: &[&str] = &["ami-eca54085", "ami-5e1f0001", "ami-XYZ", "aki-00000000"];
pub const PATHS: &[&str] = &["/bin/sh", "/nonexistent", "relative", "/"];

/// A temporary store directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let d = base.join(format!("sgswitch-fuzz-api-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create store dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config() -> CoreConfig {
    let mut cfg = CoreConfig::new(
        Owner(OWNER.into()),
        "172.31.0.0/24".parse().expect("subnet"),
    );
    // Small limits so that inputs reach them.
    cfg.limits.rules_per_group = 4;
    cfg.max_launch = 4;
    cfg
}

fn open(dir: &TempDir) -> Core {
    let store = Store::open_dir(&dir.0).expect("open store");
    Core::open(store, config(), Box::new(RecordingDataplane::default())).expect("open core")
}

fn opt_string(r: &mut Reader<'_>, choices: &[&str]) -> Option<String> {
    r.bool().then(|| r.pick_or_string(choices))
}

fn strings(r: &mut Reader<'_>, choices: &[&str], max: u8) -> Vec<String> {
    (0..r.u8() % (max + 1))
        .map(|_| r.pick_or_string(choices))
        .collect()
}

/// A rule spec from dictionaries (any field may also be a fuzzer string).
pub fn read_spec(r: &mut Reader<'_>) -> RuleSpec {
    RuleSpec {
        proto: opt_string(r, PROTOS),
        ports: opt_string(r, PORT_RANGES),
        icmp: opt_string(r, ICMPS),
        cidrs: strings(r, CIDRS, 3),
        groups: (0..r.u8() % 3)
            .map(|_| (r.pick_or_string(NAMES), opt_string(r, OWNERS)))
            .collect(),
    }
}

/// A request line as the socket reads it: u16 length, bytes.
fn read_line<'a>(r: &mut Reader<'a>) -> &'a [u8] {
    let n = usize::from(r.u16() % 4096);
    r.take(n)
}

/// Decode a line, checking that a decoded request re-encodes to itself.
fn decode_checked(line: &[u8]) -> Option<Request> {
    let req = decode_request(line).ok()?;
    let json = serde_json::to_vec(&req).expect("a request encodes");
    assert_eq!(
        decode_request(&json).as_ref(),
        Ok(&req),
        "request round-trips"
    );
    Some(req)
}

/// One structured request, or a request line (`None` when it does not decode).
pub fn read_request(r: &mut Reader<'_>) -> Option<Request> {
    let owner = opt_string(r, OWNERS);
    // The selector's high bit makes an authorize or revoke an egress edit.
    let sel = r.u8();
    let egress = sel & 0x80 != 0;
    let command = match sel % 14 {
        13 => return decode_checked(read_line(r)),
        0 => Command::AddGroup {
            name: r.pick_or_string(NAMES),
            description: r.pick_or_string(&["Web Servers", "", "caf\u{e9}"]),
        },
        1 => Command::DeleteGroup {
            group: r.pick_or_string(NAMES).into(),
        },
        2 => Command::DescribeGroups {
            groups: group_refs(strings(r, NAMES, 3)),
        },
        3 | 4 => Command::Authorize {
            egress,
            group: r.pick_or_string(NAMES).into(),
            permissions: vec![read_spec(r).into()],
        },
        5 => Command::Revoke {
            egress,
            group: r.pick_or_string(NAMES).into(),
            permissions: vec![read_spec(r).into()],
        },
        6 => Command::RunInstances {
            ami: r.pick_or_string(AMIS),
            count: u32::from(r.u8() % 8),
            min_count: None,
            groups: group_refs(strings(r, NAMES, 2)),
            qemu: Some(r.u8().is_multiple_of(8)),
            client_token: None,
        },
        7 => Command::DescribeInstances {
            ids: strings(r, &["i-00000000"], 2),
        },
        8 => {
            // Terminate one of the instances that exist (or a made-up id).
            let n = usize::from(r.u8());
            Command::TerminateInstances {
                ids: vec![format!("#{n}")],
                all: r.u8().is_multiple_of(16),
            }
        }
        9 => Command::AttachInstance {
            ifname: r.pick_or_string(&["tap0", "", "a-very-long-interface-name", "eth0"]),
            netns: opt_string(r, &["ns1", "", "../x"]),
            groups: group_refs(strings(r, NAMES, 2)),
            ip: r
                .bool()
                .then(|| std::net::Ipv4Addr::new(172, 31, 0, r.u8())),
            mac: opt_string(
                r,
                &[
                    "52:54:00:12:34:56",
                    "ff:ff:ff:ff:ff:ff",
                    "00:00:00:00:00:00",
                    "zz",
                ],
            ),
        },
        10 => Command::RegisterImage {
            ami: r.pick_or_string(AMIS),
            kernel: r.pick_or_string(PATHS).into(),
            initrd: r.pick_or_string(PATHS).into(),
            disk: opt_string(r, PATHS).map(Into::into),
            memory_mb: r.bool().then(|| u32::from(r.u16()) * 4),
            append: opt_string(r, &["console=ttyS0", ""]),
        },
        11 => Command::DeregisterImage {
            ami: r.pick_or_string(AMIS),
        },
        _ => Command::DescribeImages {
            amis: strings(r, AMIS, 2),
        },
    };
    Some(Request {
        owner,
        command,
        wait: false,
    })
}

fn group_refs(names: Vec<String>) -> Vec<GroupRef> {
    names.into_iter().map(GroupRef::Name).collect()
}

/// A group named by name (the model alone knows no ids).
fn by_name(g: &GroupRef) -> Option<&str> {
    match g {
        GroupRef::Name(n) => Some(n),
        GroupRef::Id(_) => None,
    }
}

/// The rule spec of a single permission whose source groups are all named by
/// name (what the model alone can decide).
fn single_spec(permissions: &[Permission]) -> Option<RuleSpec> {
    let [p] = permissions else { return None };
    p.rule_spec()
}

/// The model's answer to a group command, applied to `m`: `None` for commands
/// the model alone does not decide.
fn model_says(m: &mut Model, owner: &Owner, c: &Command) -> Option<Result<Response, ()>> {
    Some(match c {
        Command::AddGroup { name, description } => m
            .add_group(owner, name, description)
            .map(|g| Response::GroupAdded {
                name: g.name,
                description: g.description,
                id: g.id,
            })
            .map_err(drop),
        Command::DeleteGroup { group } => m
            .delete_group(owner, by_name(group)?)
            .map(|g| Response::GroupDeleted { name: g.name })
            .map_err(drop),
        Command::DescribeGroups { groups } => m
            .describe_groups(
                owner,
                &groups
                    .iter()
                    .map(|g| by_name(g).map(str::to_owned))
                    .collect::<Option<Vec<_>>>()?,
            )
            .map(|gs| Response::Groups {
                groups: gs.into_iter().cloned().collect(),
            })
            .map_err(drop),
        Command::Authorize {
            group,
            permissions,
            egress,
        } => m
            .authorize_dir(owner, by_name(group)?, &single_spec(permissions)?, *egress)
            .map(|rules| Response::Permissions {
                group: group.to_string(),
                rules,
                egress: *egress,
            })
            .map_err(drop),
        Command::Revoke {
            group,
            permissions,
            egress,
        } => m
            .revoke_dir(owner, by_name(group)?, &single_spec(permissions)?, *egress)
            .map(|rules| Response::Permissions {
                group: group.to_string(),
                rules,
                egress: *egress,
            })
            .map_err(drop),
        _ => return None,
    })
}

/// The core under test and what the checks compare with.
struct Harness {
    dir: TempDir,
    core: Option<Core>,
    /// Requests answered with success, with an error.
    oks: usize,
    errors: usize,
}

impl Harness {
    fn core(&mut self) -> &mut Core {
        self.core.as_mut().expect("core open")
    }

    fn apply_all(&mut self, req: Option<Request>) {
        if let Some(req) = req {
            self.apply(req);
        }
    }

    fn apply(&mut self, mut req: Request) {
        // `#N` stands for the N-th instance that exists (ids are random).
        if let Command::TerminateInstances { ids, .. } = &mut req.command {
            let known: Vec<String> = self.core().model().instances().keys().cloned().collect();
            for id in ids.iter_mut() {
                if let Some(n) = id.strip_prefix('#').and_then(|n| n.parse::<usize>().ok()) {
                    *id = known.get(n).cloned().unwrap_or_else(|| "i-0badf00d".into());
                }
            }
        }
        let owner = Owner::parse(req.owner.as_deref().unwrap_or(OWNER));
        if owner.is_ok() {
            // Make the owner known (see the module docs).
            let r = self.core().handle(Request {
                owner: req.owner.clone(),
                command: Command::DescribeGroups { groups: vec![] },
                wait: false,
            });
            assert!(r.is_ok(), "describe as a valid owner failed: {r:?}");
        }
        let before = self.core().dump();
        let mut shadow = self.core().model().clone();
        let reply = self.core().handle(req.clone());
        check_wire(&reply);
        if reply.is_ok() {
            self.oks += 1;
        } else {
            self.errors += 1;
        }
        match &reply {
            Err(e) => {
                assert!(!e.message.is_empty(), "bare error {e:?}");
                assert_eq!(
                    self.core().dump(),
                    before,
                    "{req:?} failed with {e:?} but changed the state"
                );
            }
            Ok(_) => self.check_model(),
        }
        if let Ok(owner) = owner
            && let Some(want) = model_says(&mut shadow, &owner, &req.command)
        {
            match (&reply, want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, &want, "{req:?}: core and model answer differently");
                    assert_eq!(
                        self.core().model(),
                        &shadow,
                        "{req:?}: core and model differ"
                    );
                }
                (Err(_), Err(())) => {}
                (got, want) => panic!("{req:?}: core answered {got:?}, the model {want:?}"),
            }
        }
    }

    fn check_model(&mut self) {
        let cfg = config();
        let m = self.core().model();
        m.verify()
            .expect("model invariants after a successful request");
        let mut ips: Vec<_> = m.instances().values().map(|i| i.ip).collect();
        for ip in &ips {
            assert!(
                cfg.subnet.contains(ip),
                "instance address {ip} outside the subnet"
            );
            assert!(
                !cfg.uplink_range.contains(ip),
                "instance address {ip} in the uplink range"
            );
            assert!(*ip != cfg.subnet.network() && *ip != cfg.subnet.broadcast());
        }
        let n = ips.len();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), n, "two instances share an address");
    }

    /// Reopen the store: every acknowledged edit is there.
    fn reload(&mut self) {
        let core = self.core.take().expect("core open");
        let model = core.model().clone();
        drop(core.into_dataplane());
        let again = open(&self.dir);
        assert_eq!(
            again.model(),
            &model,
            "the store reloads to a different model"
        );
    }
}

/// The reply survives the wire.
fn check_wire(reply: &Reply) {
    let line = encode_reply(reply.clone());
    assert_eq!(line.last(), Some(&b'\n'), "reply is one line");
    assert!(
        !line[..line.len() - 1].contains(&b'\n'),
        "reply is one line"
    );
    let back: WireReply = serde_json::from_slice(&line).expect("reply decodes");
    assert_eq!(&Reply::from(back), reply, "reply round-trips");
}

/// Run the `api` target on one input.
pub fn run(data: &[u8]) {
    run_counted(data);
}

/// [`run`], returning how many requests succeeded and failed.
pub fn run_counted(data: &[u8]) -> (usize, usize) {
    let mut r = Reader::new(data);
    let first = decode_checked(read_line(&mut r));
    let dir = TempDir::new();
    let core = open(&dir);
    let mut h = Harness {
        dir,
        core: Some(core),
        oks: 0,
        errors: 0,
    };
    h.apply_all(first);
    let mut count = 0;
    while !r.is_empty() && count < MAX_REQUESTS {
        let req = read_request(&mut r);
        h.apply_all(req);
        count += 1;
    }
    h.reload();
    (h.oks, h.errors)
}

/// Write a request line for [`run`] (first) or [`read_request`] (later).
pub fn write_line(w: &mut Writer, first: bool, json: &str) {
    if !first {
        w.u8(0).u8(13);
    }
    w.u16(json.len() as u16).bytes(json.as_bytes());
}

/// Seeds: the README's walkthroughs as request lines, and a few odd lines.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let walkthrough = [
        r#"{"owner":null,"command":{"op":"add-group","name":"web","description":"Web Servers"}}"#,
        r#"{"command":{"op":"authorize","group":"web","permissions":[{"proto":"tcp","ports":"80","cidrs":["0.0.0.0/0"],"groups":[]}]}}"#,
        r#"{"command":{"op":"add-group","name":"app","description":"Application Servers"}}"#,
        r#"{"command":{"op":"authorize","group":"app","permissions":[{"cidrs":[],"groups":[["web","111122223333"]]}]}}"#,
        r#"{"command":{"op":"authorize","group":"default","permissions":[{"proto":"tcp","ports":"22","cidrs":["172.31.255.10/32","10.0.0.0/8"],"groups":[]}]}}"#,
        r#"{"command":{"op":"run-instances","ami":"ami-fba54092","count":2,"groups":["web"]}}"#,
        r#"{"command":{"op":"describe-groups","names":["web","app"]}}"#,
        r#"{"command":{"op":"delete-group","name":"web"}}"#,
        r#"{"command":{"op":"authorize","group":"web","permissions":[{"proto":"tcp","ports":"80","cidrs":["0.0.0.0/0"],"groups":[]}]}}"#,
        r#"{"command":{"op":"revoke","group":"default","permissions":[{"proto":"tcp","ports":"22","cidrs":["10.0.0.0/8"],"groups":[]}]}}"#,
        r#"{"command":{"op":"authorize","group":"web","permissions":[{"proto":"icmp","icmp":"8:-1","cidrs":[],"groups":[]}]}}"#,
        r#"{"command":{"op":"describe-instances"}}"#,
        r#"{"owner":"444455556666","command":{"op":"authorize","group":"web","permissions":[{"cidrs":[],"groups":[]}]}}"#,
        r#"{"command":{"op":"register-image","ami":"ami-5e1f0001","kernel":"/bin/sh","initrd":"/bin/sh","memory_mb":64}}"#,
        r#"{"command":{"op":"run-instances","ami":"ami-5e1f0001","qemu":true}}"#,
        r#"{"command":{"op":"attach-instance","ifname":"tap0","groups":["app"],"mac":"52:54:00:12:34:56"}}"#,
        r#"{"command":{"op":"stats"}}"#,
    ];
    let mut v = Vec::new();
    let mut w = Writer::default();
    for (i, l) in walkthrough.iter().enumerate() {
        write_line(&mut w, i == 0, l);
    }
    v.push(("walkthrough".to_owned(), w.bytes));
    // Egress edits (issue 15): rules beside the default one, the default
    // revoked (twice: NotFound), the egress limit (4 here) reached.
    let egress = [
        r#"{"command":{"op":"add-group","name":"db","description":"Databases"}}"#,
        r#"{"command":{"op":"authorize","group":"db","egress":true,"permissions":[{"proto":"tcp","ports":"5432","cidrs":["10.0.0.0/8"],"groups":[["default","111122223333"]]}]}}"#,
        r#"{"command":{"op":"revoke","group":"db","egress":true,"permissions":[{"proto":"all","cidrs":["0.0.0.0/0"],"groups":[]}]}}"#,
        r#"{"command":{"op":"revoke","group":"db","egress":true,"permissions":[{"proto":"all","cidrs":["0.0.0.0/0"],"groups":[]}]}}"#,
        r#"{"command":{"op":"authorize","group":"db","egress":true,"permissions":[{"proto":"udp","ports":"53","cidrs":["10.0.0.0/8","172.31.255.10/32","205.192.8.0/24"],"groups":[]}]}}"#,
        r#"{"command":{"op":"describe-groups","names":["db"]}}"#,
    ];
    let mut w = Writer::default();
    for (i, l) in egress.iter().enumerate() {
        write_line(&mut w, i == 0, l);
    }
    v.push(("egress".to_owned(), w.bytes));
    for (name, l) in [
        (
            "line_bad_json",
            &br#"{"command":{"op":"add-group","name":"#[..],
        ),
        (
            "line_not_utf8",
            &b"{\"command\":{\"op\":\"stats\"}}\xff"[..],
        ),
        ("line_unknown_op", &br#"{"command":{"op":"reboot"}}"#[..]),
    ] {
        let mut w = Writer::default();
        w.u16(l.len() as u16).bytes(l);
        v.push((name.to_owned(), w.bytes));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walkthrough_seed_succeeds_and_fails_where_ec2_would() {
        let (_, bytes) = seeds()
            .into_iter()
            .find(|(n, _)| n == "walkthrough")
            .expect("seed");
        let (oks, errors) = run_counted(&bytes);
        // delete-group web (in use) and the duplicate authorize fail; the
        // other owner's authorize of a group it does not have fails;
        // register-image refuses /bin/sh (not a bzImage), so the QEMU launch
        // of that AMI is InvalidAMIID.NotFound.
        assert_eq!(errors, 5, "oks {oks}");
        assert!(oks >= 12, "oks {oks}");
    }

    #[test]
    fn egress_seed_edits_egress_rules_and_fails_where_ec2_would() {
        let (_, bytes) = seeds()
            .into_iter()
            .find(|(n, _)| n == "egress")
            .expect("seed");
        // The second revoke of the default rule (not found) and the
        // authorize past the limit fail; the model agrees on each.
        assert_eq!(run_counted(&bytes), (4, 2));
    }
}
