//! Target `rules`: the CLI's `authorize`/`revoke` arguments, the rule spec
//! expansion and the CIDR / port range / ICMP / protocol parsers.
//!
//! Input: a verb, a group name, up to 12 argument tokens (flags and values from
//! a dictionary, or any string the fuzzer makes), then one string for each of
//! the four value parsers.
//!
//! Checked (nothing may panic):
//! * `sgswitch authorize|revoke GROUP ARGS...` (`--egress` among the tokens)
//!   through [`cli::parse`] and [`cli::request_of`]: a parsed command is that
//!   verb on that group, egress only when `--egress` was given; its
//!   `RuleSpec` expands ([`RuleSpec::expand`]) to normalised rules.
//! * Round trips of every accepted rule, ingress or egress: the PERMISSION
//!   line describe prints ([`cli::permission_line`], [`cli::egress_line`])
//!   parses back ([`parse_permission_line`]) to a spec of the same direction
//!   that expands to exactly that rule; so does the argument vector that
//!   states the rule (`-P .. -p/-t .. -s/-o -u .. [--egress]`) given to the
//!   CLI again; and the lines of the authorize reply and of `describe-group`
//!   after authorizing the whole spec in a model (in that direction)
//!   re-authorize, in a fresh model, to the same ingress and egress rules
//!   (no egress line: the default egress rules; `EGRESS NAME NONE`: none).
//! * Value parsers: an accepted port range, CIDR (IPv4 or IPv6), ICMP
//!   type:code or protocol prints (as describe shows it) to text that parses
//!   to the same value; a range has `lo <= hi`; a CIDR has no host bits.
//! * Packets: with the accepted rules authorized as ingress and as egress of
//!   a group holding a dual-stack instance, packets at the edges of each rule
//!   (its CIDR's first and last address, or a member instance; its first and
//!   last port or ICMP type, and one past) of both families, to and from the
//!   instance: the compiled snapshot (`admitting_rule`/`admitting_rule6`,
//!   `egress_allows`/`egress_allows6`) decides as the reference evaluator
//!   does, and an IPv4 rule never admits IPv6 (nor the reverse).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter::model::{
    Instance, Limits, Owner, Ports, Proto, Rule, RuleSpec, Source, parse_cidr,
    parse_icmp_type_code, parse_port_range, parse_source_cidr,
};
use filter::{FlowKey, Frag, IcmpKind, L4, Model, Packet, proto};
use mgmt::api::{Command, GroupRef, Response};
use mgmt::cli;

use crate::input::{Reader, Writer};

pub const OWNER: &str = "111122223333";
pub const GROUPS: &[&str] = &["web", "default", "app db", "-x", "", "web\tx"];
pub const TOKENS: &[&str] = &[
    "-P",
    "-p",
    "-t",
    "-s",
    "-o",
    "-u",
    "--protocol",
    "--port-range",
    "--icmp-type-code",
    "--source-subnet",
    "--source-group",
    "--source-group-user",
    "--",
    "--json",
    "--owner",
    "tcp",
    "udp",
    "icmp",
    "all",
    "-1",
    "6",
    "22",
    "80-81",
    "0-65535",
    "70000",
    "8:0",
    "-1:-1",
    "3:4",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "1.2.3.4",
    "205.192.8.45/24",
    "web",
    "default",
    "111122223333",
    "444455556666",
    "=",
    "-s=1.2.3.4/32",
    // IPv6 forms (appended: earlier inputs keep their meaning).
    "icmpv6",
    "58",
    "::/0",
    "2001:db8::/32",
    "2001:db8::1",
    "fd00::ff:fe00:0/104",
    "fe80::1/10",
    "128:-1",
    "135:0",
    "--egress",
];

/// A PERMISSION line of describe back into the spec that states its rule, and
/// whether it is an egress line (`TO ... egress`).
pub fn parse_permission_line(line: &str) -> Option<(String, RuleSpec, bool)> {
    let f: Vec<&str> = line.split('\t').collect();
    let (group, proto, from, to, src) = match f.as_slice() {
        ["PERMISSION", group, "ALLOWS", proto, from, to, src @ ..] => {
            (*group, *proto, *from, *to, src)
        }
        _ => return None,
    };
    let mut spec = RuleSpec {
        proto: Some(proto.to_owned()),
        ..RuleSpec::default()
    };
    match proto {
        "tcp" | "udp" => spec.ports = Some(format!("{from}-{to}")),
        "icmp" | "icmpv6" => spec.icmp = Some(format!("{from}:{to}")),
        _ => {}
    }
    let (egress, src) = match src {
        ["TO", rest @ .., "egress"] => (true, rest),
        ["FROM", rest @ ..] => (false, rest),
        _ => return None,
    };
    match src {
        ["CIDR", net] => spec.cidrs.push((*net).to_owned()),
        ["USER", owner, "GRPNAME", g] => spec
            .groups
            .push(((*g).to_owned(), Some((*owner).to_owned()))),
        _ => return None,
    }
    Some((group.to_owned(), spec, egress))
}

/// The PERMISSION line of `rule` in its direction.
fn line_of(group: &str, rule: &Rule, egress: bool) -> String {
    if egress {
        cli::egress_line(group, rule)
    } else {
        cli::permission_line(group, rule)
    }
}

/// The `sgswitch authorize` arguments that state exactly `rule`.
pub fn rule_argv(verb: &str, group: &str, rule: &Rule, egress: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "sgswitch".into(),
        verb.into(),
        "-P".into(),
        rule.proto.as_str().into(),
    ];
    if egress {
        a.push("--egress".into());
    }
    match rule.ports {
        Ports::None => {}
        Ports::Range(lo, hi) => a.extend(["-p".into(), format!("{lo}-{hi}")]),
        p @ Ports::Icmp { .. } => a.extend(["-t".into(), p.to_string()]),
    }
    match &rule.source {
        Source::Cidr(net) => a.extend(["-s".into(), net.to_string()]),
        Source::Cidr6(net) => a.extend(["-s".into(), net.to_string()]),
        Source::Group { owner, group } => {
            a.extend(["-o".into(), group.clone(), "-u".into(), owner.0.clone()])
        }
    }
    a.extend(["--".into(), group.into()]);
    a
}

/// The spec of a parsed `authorize`/`revoke` and whether it edits egress
/// rules, if the CLI accepted `argv`.
fn cli_spec(argv: &[String], verb: &str, group: &str) -> Option<(RuleSpec, bool)> {
    let (parsed, matches) = cli::parse(argv.iter().cloned()).ok()?;
    let req = cli::request_of(&parsed, &matches).ok()??;
    let (g, permissions, egress) = match (verb, req.command) {
        (
            "authorize",
            Command::Authorize {
                group,
                permissions,
                egress,
            },
        ) => (group, permissions, egress),
        (
            "revoke",
            Command::Revoke {
                group,
                permissions,
                egress,
            },
        ) => (group, permissions, egress),
        (_, c) => panic!("{argv:?} parsed as {c:?}"),
    };
    // Egress only when the flag was given (before the `--` that ends the
    // options; a `--` right after an option is that option's value, as in
    // `-p -- --egress`). Not the converse: `--egress` may be another
    // option's value (`-p --egress`).
    let takes_value =
        |t: &str| t.starts_with('-') && t != "--" && t != "--egress" && !t.contains('=');
    let end = (0..argv.len())
        .find(|&i| argv[i] == "--" && !(i > 0 && takes_value(&argv[i - 1])))
        .unwrap_or(argv.len());
    let flags = &argv[..end];
    assert!(
        !egress || flags.iter().any(|a| a == "--egress"),
        "{argv:?}: egress without --egress"
    );
    // With `--` the group is exactly the positional argument.
    if argv.iter().any(|a| a == "--") && argv.last().map(String::as_str) == Some(group) {
        assert_eq!(g, GroupRef::name(group), "{argv:?}");
    }
    // The CLI makes exactly one permission, its source groups by name.
    let [p] = &permissions[..] else {
        panic!("{argv:?} gave {permissions:?}")
    };
    Some((
        p.rule_spec()
            .unwrap_or_else(|| panic!("{argv:?}: the CLI named a group by id")),
        egress,
    ))
}

fn check_rule_round_trips(verb: &str, group: &str, rule: &Rule, caller: &Owner, egress: bool) {
    assert_eq!(
        rule.normalized().as_ref(),
        Ok(rule),
        "expand gives normalised rules"
    );
    let line = line_of(group, rule, egress);
    let (g, spec, e) =
        parse_permission_line(&line).unwrap_or_else(|| panic!("unparsable line {line:?}"));
    assert_eq!((g.as_str(), e), (group, egress), "{line:?}");
    let again = spec
        .expand(caller)
        .unwrap_or_else(|e| panic!("{line:?} does not re-parse: {e}"));
    assert_eq!(again, vec![rule.clone()], "{line:?}");
    let argv = rule_argv(verb, group, rule, egress);
    let (spec, e) = cli_spec(&argv, verb, group).unwrap_or_else(|| panic!("CLI rejects {argv:?}"));
    assert_eq!(e, egress, "{argv:?}");
    assert_eq!(
        spec.expand(caller).as_ref(),
        Ok(&vec![rule.clone()]),
        "{argv:?}"
    );
}

/// Authorize `spec` in a model (ingress or `egress`; an egress spec already
/// there is revoked), check the reply's lines, describe the group, and rebuild
/// its ingress and egress rules from the printed lines alone.
fn check_describe_round_trip(group: &str, spec: &RuleSpec, caller: &Owner, egress: bool) {
    let mut m = Model::new(Limits::default());
    m.ensure_owner(caller);
    for g in ["web", "app db", group] {
        if g != "default" {
            let _ = m.add_group(caller, g, "fuzz");
        }
    }
    // An egress spec that is there already (the default rule) is revoked
    // instead, so that groups without egress rules are described too.
    let added = match m.authorize_dir(caller, group, spec, egress) {
        Ok(added) => added,
        Err(_) if egress => match m.revoke_dir(caller, group, spec, egress) {
            Ok(removed) => removed,
            Err(_) => return,
        },
        Err(_) => return,
    };
    check_packets(&m, caller, group, &added);
    let printed = cli::format_response(&Response::Permissions {
        group: group.to_owned(),
        rules: added.clone(),
        egress,
    });
    let from_lines: Vec<Rule> = printed
        .lines()
        .filter_map(parse_permission_line)
        .inspect(|(_, _, e)| assert_eq!(*e, egress, "reply direction:\n{printed}"))
        .flat_map(|(_, s, _)| s.expand(caller).expect("printed rule re-parses"))
        .collect();
    assert_eq!(from_lines, added, "authorize output re-parses:\n{printed}");
    let g = m.group(caller, group).expect("group").clone();
    let described = cli::format_response(&Response::Groups {
        groups: vec![g.clone()],
    });
    // The same model with the group emptied both ways (the source groups
    // still exist), rebuilt from the lines.
    let mut fresh = m.clone();
    fresh
        .revoke_rules(caller, group, &g.rules)
        .expect("empty the group");
    fresh
        .revoke_rules_dir(caller, group, &g.egress, true)
        .expect("empty the group's egress");
    let mut egress_lines = 0;
    for line in described.lines() {
        if line == format!("EGRESS\t{group}\tNONE") {
            egress_lines += 1;
            continue;
        }
        if !line.starts_with("PERMISSION") {
            continue;
        }
        let (gname, s, e) =
            parse_permission_line(line).unwrap_or_else(|| panic!("bad line {line:?}"));
        assert_eq!(gname, group);
        egress_lines += usize::from(e);
        fresh
            .authorize_dir(caller, group, &s, e)
            .unwrap_or_else(|err| panic!("{line:?}: {err}"));
    }
    if egress_lines == 0 {
        // No egress line: the default egress rule.
        fresh
            .authorize_rules_dir(caller, group, &filter::model::default_egress(), true)
            .expect("the default egress rule");
    }
    let got = fresh.group(caller, group).expect("group");
    assert_eq!(
        (&got.rules, &got.egress),
        (&g.rules, &g.egress),
        "describe re-parses:\n{described}"
    );
}

/// The instance the packet checks put in the rules' group.
const INST_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 9);
const INST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

/// Addresses at the edges of a rule's source: its CIDR's first and last
/// address, or the instance (a member of every group it names here).
fn edge_addrs(m: &Model, rule: &Rule) -> Vec<IpAddr> {
    match &rule.source {
        Source::Cidr(net) => vec![net.network().into(), net.broadcast().into()],
        Source::Cidr6(net) => vec![net.network().into(), net.broadcast().into()],
        Source::Group { .. } => {
            let v6 = m.ip6_of(INST_MAC).expect("dual-stack");
            vec![INST_IP.into(), v6.into()]
        }
    }
}

/// `(proto, dport or ICMP type, ICMP code)` at the edges of a rule's ports.
fn edge_ports(rule: &Rule) -> Vec<(u8, u16, u8)> {
    match (rule.proto, rule.ports) {
        (Proto::Tcp | Proto::Udp, Ports::Range(lo, hi)) => {
            let p = rule.proto.number().expect("tcp/udp");
            vec![(p, lo, 0), (p, hi, 0), (p, hi.wrapping_add(1), 0)]
        }
        (Proto::Icmp | Proto::Icmpv6, Ports::Icmp { ty, code }) => {
            let p = rule.proto.number().expect("icmp");
            let t = ty.map_or(8, u16::from);
            let c = code.unwrap_or(0);
            vec![
                (p, t, c),
                (p, t, c.wrapping_add(1)),
                (p, t.wrapping_add(1) & 0xff, c),
            ]
        }
        _ => vec![(proto::TCP, 22, 0), (proto::UDP, 53, 0), (47, 0, 0)],
    }
}

/// A packet of either family with these facts (`icmp` numbers follow the
/// destination's family: an ICMP rule's packet sent as IPv6 is ICMPv6-typed,
/// so the families are really crossed).
fn check_packet(
    m: &Model,
    snap: &filter::compile::Snapshot,
    src: IpAddr,
    dst: IpAddr,
    (p, port, code): (u8, u16, u8),
) {
    let icmp = p == proto::ICMP || p == proto::ICMPV6;
    fn l4<A>(p: u8, icmp: bool, port: u16, code: u8) -> L4<A> {
        match p {
            proto::TCP => L4::Tcp {
                flags: filter::tcp_flags::SYN,
            },
            proto::UDP => L4::Udp,
            _ if icmp => L4::Icmp {
                ty: port as u8,
                code,
                kind: IcmpKind::Request,
            },
            _ => L4::Other,
        }
    }
    let (sport, dport) = if icmp { (1, 1) } else { (40000, port) };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let p = if icmp { proto::ICMP } else { p };
            let mk = |src, dst| Packet {
                key: FlowKey {
                    src,
                    dst,
                    proto: p,
                    sport,
                    dport,
                },
                l4: l4(p, icmp, port, code),
                frag: Frag::None,
            };
            let (inn, out) = (mk(s, d), mk(d, s));
            assert_eq!(
                snap.allows(&inn),
                filter::reference::allows(m, &inn),
                "{inn:?}"
            );
            assert_eq!(
                snap.admitting_rule(&inn).is_some(),
                snap.allows(&inn),
                "{inn:?}"
            );
            assert_eq!(
                snap.egress_allows(&out),
                filter::reference::egress_allows(m, &out),
                "{out:?}"
            );
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let p = if icmp { proto::ICMPV6 } else { p };
            let mk = |src: Ipv6Addr, dst: Ipv6Addr| filter::Packet6 {
                key: filter::FlowKey6 {
                    src,
                    dst,
                    proto: p,
                    sport,
                    dport,
                },
                l4: l4(p, icmp, port, code),
                frag: Frag::None,
            };
            let (inn, out) = (mk(s, d), mk(d, s));
            assert_eq!(
                snap.admitting_rule6(&inn).is_some(),
                filter::reference::allows(m, &inn),
                "{inn:?}"
            );
            assert_eq!(
                snap.egress_allows6(&out),
                filter::reference::egress_allows(m, &out),
                "{out:?}"
            );
        }
        _ => {}
    }
}

/// Authorize `rules` as ingress and egress of `group` (with a dual-stack
/// instance in it) and judge packets at their edges in both families.
fn check_packets(m: &Model, caller: &Owner, group: &str, rules: &[Rule]) {
    let mut m = m.clone();
    m.set_subnet6(Some("fd00::/64".parse().expect("prefix")))
        .expect("a /64");
    let _ = m.revoke_rules_dir(caller, group, &filter::model::default_egress(), true);
    if m.authorize_rules_dir(caller, group, rules, true).is_err() {
        return;
    }
    // The instance is in the rules' group and in every group they name (its
    // owner's), so group rules match it.
    let mut groups = vec![group.to_owned()];
    for r in rules {
        if let Source::Group { owner, group: g } = &r.source
            && owner == caller
            && m.group(caller, g).is_ok()
        {
            groups.push(g.clone());
        }
    }
    let inst = Instance {
        id: "i-0000f022".into(),
        owner: caller.clone(),
        mac: INST_MAC,
        ip: INST_IP,
        groups,
    };
    if m.add_instance(inst).is_err() {
        return;
    }
    let snap = filter::compile::compile(&m, 1);
    let me: [IpAddr; 2] = [
        INST_IP.into(),
        m.ip6_of(INST_MAC).expect("dual-stack").into(),
    ];
    for rule in rules {
        for facts in edge_ports(rule) {
            for a in edge_addrs(&m, rule) {
                for inst in me {
                    // Both families from each edge: an IPv4 address mapped
                    // into IPv6 and back is a crossed-family packet.
                    let other: IpAddr = match a {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().into(),
                        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
                    };
                    check_packet(&m, &snap, a, inst, facts);
                    check_packet(&m, &snap, other, inst, facts);
                }
            }
        }
    }
}

fn check_value_parsers(port: &str, icmp: &str, cidr: &str, proto: &str) {
    if let Ok((lo, hi)) = parse_port_range(port) {
        assert!(lo <= hi, "{port:?} gave {lo}-{hi}");
        assert_eq!(parse_port_range(&format!("{lo}-{hi}")), Ok((lo, hi)));
        if lo == hi {
            assert_eq!(parse_port_range(&lo.to_string()), Ok((lo, hi)));
        }
    }
    if let Ok(p) = parse_icmp_type_code(icmp) {
        assert!(matches!(p, Ports::Icmp { .. }));
        if let Ports::Icmp { ty: None, code } = p {
            assert_eq!(code, None, "any type means any code");
        }
        assert_eq!(parse_icmp_type_code(&p.to_string()), Ok(p), "{icmp:?}");
    }
    if let Ok(net) = parse_cidr(cidr) {
        assert_eq!(net, net.trunc(), "{cidr:?}: host bits");
        assert_eq!(parse_cidr(&net.to_string()), Ok(net), "{cidr:?}");
    }
    if let Ok(src) = parse_source_cidr(cidr) {
        match &src {
            Source::Cidr(net) => assert_eq!(Ok(*net), parse_cidr(cidr), "{cidr:?}"),
            Source::Cidr6(net) => assert_eq!(*net, net.trunc(), "{cidr:?}: host bits"),
            Source::Group { .. } => panic!("{cidr:?} parsed as a group"),
        }
        assert_eq!(parse_source_cidr(&src.to_string()), Ok(src), "{cidr:?}");
    }
    if let Ok(p) = Proto::parse(proto) {
        assert_eq!(Proto::parse(p.as_str()), Ok(p));
        if let Some(n) = p.number() {
            assert_eq!(Proto::parse(&n.to_string()), Ok(p));
        }
    }
}

/// Run the `rules` target on one input.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let verb = if r.bool() { "revoke" } else { "authorize" };
    let group = r.pick_or_string(GROUPS);
    let n = r.u8() % 13;
    let mut argv: Vec<String> = vec!["sgswitch".into(), verb.into(), group.clone()];
    for _ in 0..n {
        argv.push(r.pick_or_string(TOKENS));
    }
    let caller = Owner(OWNER.into());
    if let Some((spec, egress)) = cli_spec(&argv, verb, &group)
        && let Ok(rules) = spec.expand(&caller)
    {
        assert!(!rules.is_empty(), "a spec expands to at least one rule");
        // Lines are printed for existing groups only, whose names are valid
        // (printable ASCII: no tab to break the line's fields).
        if filter::model::validate_group_name(&group).is_ok() {
            for rule in &rules {
                check_rule_round_trips(verb, &group, rule, &caller, egress);
            }
            check_describe_round_trip(&group, &spec, &caller, egress);
        }
    }
    let (port, icmp, cidr, proto) = (r.string(), r.string(), r.string(), r.string());
    check_value_parsers(&port, &icmp, &cidr, &proto);
}

/// Encode an input for [`run`].
pub fn encode(revoke: bool, group: &str, args: &[&str], values: [&str; 4]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(u8::from(revoke))
        .pick_or_string(GROUPS, group)
        .u8(args.len() as u8);
    for a in args {
        w.pick_or_string(TOKENS, a);
    }
    for v in values {
        w.string(v);
    }
    w.bytes
}

/// Seeds: the README's authorize commands and edge values.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let v = [
        (
            "ssh_from_host",
            false,
            "default",
            &["-P", "tcp", "-p", "22", "-s", "172.31.255.10/32"][..],
            ["22", "8:0", "172.31.255.10/32", "tcp"],
        ),
        (
            "group_source",
            false,
            "app",
            &["-o", "web", "-u", "111122223333"][..],
            ["80-81", "-1:-1", "10.0.0.0/8", "all"],
        ),
        (
            "icmp",
            false,
            "web",
            &[
                "-P",
                "icmp",
                "-t",
                "8:-1",
                "-s",
                "0.0.0.0/0",
                "-s",
                "10.1.2.3/8",
            ][..],
            ["-1", "3:4", "205.192.8.45/24", "1"],
        ),
        (
            "revoke_udp_range",
            true,
            "db",
            &[
                "-P",
                "udp",
                "-p",
                "5000-5100",
                "-o",
                "db",
                "-o",
                "web",
                "-u",
                "444455556666",
            ][..],
            ["0-65535", "-1:4", "1.2.3.4", "UDP"],
        ),
        (
            "ipv6",
            false,
            "web",
            &[
                "-P",
                "icmpv6",
                "-t",
                "128:-1",
                "-s",
                "2001:db8::/32",
                "-s",
                "::/0",
            ][..],
            ["22", "135:0", "2001:db8::1/64", "icmpv6"],
        ),
        (
            "ipv6_tcp_and_group",
            false,
            "web",
            &[
                "-P",
                "tcp",
                "-p",
                "22",
                "-s",
                "fd00::ff:fe00:0/104",
                "-o",
                "web",
            ][..],
            ["22", "128:-1", "::/0", "58"],
        ),
        (
            "bad_values",
            false,
            "web",
            &["-P", "tcp", "-p", "70000"][..],
            ["70000", "256:0", "1.2.3.4/33", "gre"],
        ),
        (
            "egress_cidr",
            false,
            "web",
            &["--egress", "-P", "tcp", "-p", "22", "-s", "10.0.0.0/8"][..],
            ["22", "8:0", "10.0.0.0/8", "tcp"],
        ),
        (
            "egress_default_revoked",
            true,
            "default",
            &["-P", "all", "--egress", "-s", "0.0.0.0/0"][..],
            ["-1", "-1:-1", "0.0.0.0/0", "all"],
        ),
        (
            "long_flags",
            false,
            "web",
            &[
                "--protocol",
                "all",
                "--source-group",
                "default",
                "--source-group-user",
                "444455556666",
            ][..],
            ["9-8", "8", "::/0", "-1"],
        ),
    ];
    v.iter()
        .map(|(n, rev, g, a, vals)| ((*n).to_owned(), encode(*rev, g, a, *vals)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_lines_and_argv_state_the_rule() {
        let caller = Owner(OWNER.into());
        let spec = RuleSpec {
            proto: Some("icmp".into()),
            icmp: Some("8:-1".into()),
            cidrs: vec!["10.1.2.3/8".into()],
            groups: vec![("app db".into(), Some("444455556666".into()))],
            ..RuleSpec::default()
        };
        let rules = spec.expand(&caller).expect("valid");
        assert_eq!(rules.len(), 2);
        for rule in &rules {
            check_rule_round_trips("authorize", "web", rule, &caller, false);
            check_rule_round_trips("revoke", "web", rule, &caller, true);
        }
        let line = cli::permission_line("web", &rules[0]);
        assert_eq!(
            line,
            "PERMISSION\tweb\tALLOWS\ticmp\t8\t-1\tFROM\tCIDR\t10.0.0.0/8"
        );
        let (g, s, e) = parse_permission_line(&line).expect("parses");
        assert_eq!(
            (g.as_str(), s.icmp.as_deref(), e),
            ("web", Some("8:-1"), false)
        );
        let line = cli::egress_line("web", &rules[1]);
        assert_eq!(
            line,
            "PERMISSION\tweb\tALLOWS\ticmp\t8\t-1\tTO\tUSER\t444455556666\tGRPNAME\tapp db\tegress"
        );
        let (_, s, e) = parse_permission_line(&line).expect("parses");
        assert_eq!((s.groups.len(), e), (1, true));
        check_describe_round_trip("web", &spec, &caller, false);
        check_describe_round_trip("web", &spec, &caller, true);
        // The default egress rule itself: revoked, then described as NONE.
        let m = {
            let mut m = Model::new(Limits::default());
            m.ensure_owner(&caller);
            m.add_group(&caller, "web", "w").expect("web");
            m.revoke_rules_dir(&caller, "web", &filter::model::default_egress(), true)
                .expect("revoke default");
            m
        };
        let out = cli::format_response(&Response::Groups {
            groups: vec![m.group(&caller, "web").expect("web").clone()],
        });
        assert!(out.contains("EGRESS\tweb\tNONE"), "{out}");
        let all_out = RuleSpec {
            proto: Some("all".into()),
            cidrs: vec!["0.0.0.0/0".into()],
            ..RuleSpec::default()
        };
        check_describe_round_trip("web", &all_out, &caller, true);
        assert!(parse_permission_line("GROUP\tweb").is_none());
    }
}
