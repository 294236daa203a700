//! The rule sets every filtering path is given: the same N rules, written as
//! sgswitch `authorize` commands, an nftables chain (linear or set-based) and
//! OpenFlow `ct()` flows.
//!
//! Contract: a set of N rules is N-1 *fillers* that never match the benchmark
//! traffic, then one rule allowing everything from the clients' network — the
//! rule allowing the test traffic is always the last one. Fillers come in chunks
//! of [`CHUNK`] sharing a protocol and port (tcp range, udp port, ICMP
//! timestamp-request, in turn), each from its own /24 from 11.0.0.0 up (never a lab
//! network; `salt` picks a disjoint block, so several groups never share a rule), so one
//! `authorize` call adds a whole chunk. Deterministic: the same arguments give
//! the same rules.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use filter::model::RuleSpec;

/// Fillers per `authorize` call (one protocol/port, many source CIDRs).
pub const CHUNK: usize = 25;

/// A filler's protocol and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// TCP destination ports `lo..=hi`.
    Tcp(u16, u16),
    Udp(u16),
    /// ICMP timestamp request (type 13), any code.
    IcmpTimestamp,
}

/// One filler rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filler {
    pub m: Match,
    /// Source network (a /24).
    pub net: Ipv4Addr,
}

/// The `n - 1` fillers of a rule set of `n` rules (`n >= 1`), in chunks of
/// [`CHUNK`].
pub fn fillers(n: usize, salt: usize) -> Vec<Filler> {
    fillers_chunked(n, salt, CHUNK)
}

/// [`fillers`] with `chunk` rules per protocol/port (the padding groups of the
/// edit test use big chunks: fewer requests to set up).
pub fn fillers_chunked(n: usize, salt: usize, chunk: usize) -> Vec<Filler> {
    let chunk = chunk.max(1);
    (0..n.saturating_sub(1))
        .map(|j| {
            let c = j / chunk;
            let port = 10_000 + c as u16;
            let m = match c % 3 {
                0 => Match::Tcp(port, port + 3),
                1 => Match::Udp(port),
                _ => Match::IcmpTimestamp,
            };
            let idx = (salt * 10_000 + j) as u32;
            let net = Ipv4Addr::new(11 + (idx >> 16) as u8, (idx >> 8) as u8, idx as u8, 0);
            Filler { m, net }
        })
        .collect()
}

/// One `authorize` request: protocol, `-p` ports or `-t` ICMP type:code, and
/// the source CIDRs (one rule each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorize {
    pub proto: &'static str,
    pub ports: Option<String>,
    pub icmp: Option<String>,
    pub cidrs: Vec<String>,
}

impl Authorize {
    /// The rule spec of the daemon's `authorize` command (mgmt's own type).
    pub fn spec(&self) -> RuleSpec {
        RuleSpec {
            proto: Some(self.proto.to_owned()),
            ports: self.ports.clone(),
            icmp: self.icmp.clone(),
            cidrs: self.cidrs.clone(),
            groups: Vec::new(),
        }
    }

    /// The same as `sgswitch authorize GROUP ...` arguments.
    pub fn cli_args(&self, group: &str) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "authorize".into(),
            group.into(),
            "-P".into(),
            self.proto.into(),
        ];
        if let Some(p) = &self.ports {
            a.extend(["-p".into(), p.clone()]);
        }
        if let Some(t) = &self.icmp {
            a.extend(["-t".into(), t.clone()]);
        }
        for c in &self.cidrs {
            a.extend(["-s".into(), c.clone()]);
        }
        a
    }
}

/// The `authorize` requests adding `fills` (one per run of fillers sharing a
/// protocol and port), then the allowing rule (`-P all -s ALLOW`).
pub fn sg_authorize(fills: &[Filler], allow: &str) -> Vec<Authorize> {
    let mut out = Vec::new();
    for chunk in fills.chunk_by(|a, b| a.m == b.m) {
        let (proto, ports, icmp) = match chunk[0].m {
            Match::Tcp(lo, hi) => ("tcp", Some(format!("{lo}-{hi}")), None),
            Match::Udp(p) => ("udp", Some(p.to_string()), None),
            Match::IcmpTimestamp => ("icmp", None, Some("13:-1".to_owned())),
        };
        out.push(Authorize {
            proto,
            ports,
            icmp,
            cidrs: chunk.iter().map(|f| format!("{}/24", f.net)).collect(),
        });
    }
    out.push(Authorize {
        proto: "all",
        ports: None,
        icmp: None,
        cidrs: vec![allow.to_owned()],
    });
    out
}

/// [`sg_authorize`] in IPv6: each filler's source is a /56 of
/// 2001:db8::/32 (documentation space, never a lab network) derived from its
/// IPv4 /24, ICMP fillers are `icmpv6` of the same type; then the allowing
/// rule `-P all -s ALLOW6` (an IPv6 CIDR).
pub fn sg_authorize6(fills: &[Filler], allow6: &str) -> Vec<Authorize> {
    let mut out = sg_authorize(fills, allow6);
    let fillers = out.len() - 1;
    for a in &mut out[..fillers] {
        if a.proto == "icmp" {
            a.proto = "icmpv6";
        }
        for c in &mut a.cidrs {
            let net: Ipv4Addr = c
                .trim_end_matches("/24")
                .parse()
                .expect("fillers are IPv4 /24s");
            let [x, y, z, _] = net.octets();
            *c = format!(
                "2001:db8:{:x}:{:x}00::/56",
                u16::from(x) << 8 | u16::from(y),
                z
            );
        }
    }
    out
}

/// The nftables ruleset (for `nft -f`) of the bridge path: table `inet sgbench`
/// with a forward chain, policy drop, `ct state established,related accept`
/// first, then the fillers (linear rules, or with `set` one lookup in an
/// interval set of concatenations), then `ip saddr ALLOW accept`.
pub fn nft_ruleset(fills: &[Filler], allow: &str, set: bool) -> String {
    let mut s = String::from("table inet sgbench {\n");
    if set {
        s.push_str(
            "  set fill {\n    type ipv4_addr . inet_proto . inet_service\n    flags interval\n",
        );
        if !fills.is_empty() {
            s.push_str("    elements = {\n");
            for (i, f) in fills.iter().enumerate() {
                let sep = if i + 1 == fills.len() { "" } else { "," };
                let el = match f.m {
                    Match::Tcp(lo, hi) => format!("{}/24 . tcp . {lo}-{hi}", f.net),
                    Match::Udp(p) => format!("{}/24 . udp . {p}", f.net),
                    // ICMP has no ports: the element covers any "port" bytes.
                    Match::IcmpTimestamp => format!("{}/24 . icmp . 0-65535", f.net),
                };
                let _ = writeln!(s, "      {el}{sep}");
            }
            s.push_str("    }\n");
        }
        s.push_str("  }\n");
    }
    s.push_str("  chain fwdchain {\n    type filter hook forward priority 0; policy drop;\n");
    s.push_str("    ct state established,related accept\n");
    if set {
        s.push_str("    ip saddr . meta l4proto . th dport @fill accept\n");
    } else {
        for f in fills {
            let _ = match f.m {
                Match::Tcp(lo, hi) => {
                    writeln!(s, "    ip saddr {}/24 tcp dport {lo}-{hi} accept", f.net)
                }
                Match::Udp(p) => writeln!(s, "    ip saddr {}/24 udp dport {p} accept", f.net),
                Match::IcmpTimestamp => writeln!(
                    s,
                    "    ip saddr {}/24 icmp type timestamp-request accept",
                    f.net
                ),
            };
        }
    }
    let _ = writeln!(s, "    ip saddr {allow} accept");
    s.push_str("  }\n}\n");
    s
}

/// OpenFlow 1.3 flows of the Open vSwitch path: untracked IP goes through
/// `ct(table=1)`; in table 1 established/related pass, new flows matching a
/// filler or the allowing rule are committed and pass, the rest is dropped. ARP
/// is switched normally.
pub fn ovs_flows(fills: &[Filler], allow: &str) -> String {
    let mut s = String::from(
        "table=0,priority=10,arp,actions=NORMAL\n\
         table=0,priority=100,ip,actions=ct(table=1)\n\
         table=1,priority=200,ct_state=+trk+est,ip,actions=NORMAL\n\
         table=1,priority=200,ct_state=+trk+rel,ip,actions=NORMAL\n",
    );
    for f in fills {
        let m = match f.m {
            Match::Tcp(lo, _) => format!("tcp,nw_src={}/24,tp_dst={lo}", f.net),
            Match::Udp(p) => format!("udp,nw_src={}/24,tp_dst={p}", f.net),
            Match::IcmpTimestamp => format!("icmp,nw_src={}/24,icmp_type=13", f.net),
        };
        let _ = writeln!(
            s,
            "table=1,priority=60,ct_state=+trk+new,{m},actions=ct(commit),NORMAL"
        );
    }
    let _ = writeln!(
        s,
        "table=1,priority=50,ct_state=+trk+new,ip,nw_src={allow},actions=ct(commit),NORMAL"
    );
    s.push_str("table=1,priority=1,actions=drop\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_rules_are_n_minus_one_distinct_fillers_then_the_allow() {
        let f = fillers(1000, 0);
        assert_eq!(f.len(), 999);
        let mut nets: Vec<_> = f.iter().map(|x| x.net).collect();
        nets.sort();
        nets.dedup();
        assert_eq!(nets.len(), 999);
        // Disjoint between salts.
        let g = fillers(1000, 1);
        assert!(g.iter().all(|x| !f.iter().any(|y| y.net == x.net)));
        assert_eq!(fillers(1, 0).len(), 0);
        // Never the lab's client networks.
        assert!(
            f.iter()
                .chain(&g)
                .all(|x| x.net.octets()[0] >= 11 && x.net.octets()[0] <= 13)
        );
    }

    #[test]
    fn authorize_calls_add_every_rule_once_allow_last() {
        let f = fillers(100, 0);
        let calls: Vec<Vec<String>> = sg_authorize(&f, "10.0.0.0/17")
            .iter()
            .map(|a| a.cli_args("g100"))
            .collect();
        let sources: usize = calls
            .iter()
            .map(|c| c.iter().filter(|a| *a == "-s").count())
            .sum();
        assert_eq!(sources, 100);
        let last = calls.last().unwrap();
        assert_eq!(last[2..], ["-P", "all", "-s", "10.0.0.0/17"]);
        assert_eq!(calls[0][2..6], ["-P", "tcp", "-p", "10000-10003"]);
        assert_eq!(calls[1][2..6], ["-P", "udp", "-p", "10001"]);
        assert_eq!(calls[2][2..6], ["-P", "icmp", "-t", "13:-1"]);
        let j = sg_authorize(&f, "10.0.0.0/17")[1].spec();
        assert_eq!(j.proto.as_deref(), Some("udp"));
        assert_eq!(j.ports.as_deref(), Some("10001"));
        assert!(j.icmp.is_none());
        assert_eq!(j.cidrs.len(), CHUNK);
        // Big chunks: one request per 250 rules.
        let big = sg_authorize(&fillers_chunked(1001, 3, 250), "10.0.0.0/17");
        assert_eq!(big.len(), 4 + 1);
        assert_eq!(big.iter().map(|a| a.cidrs.len()).sum::<usize>(), 1001);
    }

    #[test]
    fn ipv6_rules_are_valid_distinct_ipv6_fillers_then_the_allow() {
        let me = filter::model::Owner("111122223333".into());
        let reqs = sg_authorize6(&fillers(100, 50), "fd00:5e:b6:1::/64");
        let mut rules = Vec::new();
        for r in &reqs {
            rules.extend(
                r.spec()
                    .expand(&me)
                    .unwrap_or_else(|e| panic!("{r:?}: {e}")),
            );
        }
        assert_eq!(rules.len(), 100);
        let doc: ipnet::Ipv6Net = "2001:db8::/32".parse().unwrap();
        let mut nets = std::collections::BTreeSet::new();
        for r in &rules[..99] {
            let filter::model::Source::Cidr6(n) = r.source else {
                panic!("filler not IPv6: {r:?}");
            };
            assert!(doc.contains(&n) && n.prefix_len() == 56, "{n}");
            assert!(nets.insert(n), "{n} twice");
            assert_ne!(r.proto, filter::model::Proto::Icmp, "{r:?}");
        }
        assert!(
            rules
                .iter()
                .any(|r| r.proto == filter::model::Proto::Icmpv6)
        );
        assert_eq!(
            rules[99].source,
            filter::model::Source::Cidr6("fd00:5e:b6:1::/64".parse().unwrap())
        );
        assert_eq!(rules[99].proto, filter::model::Proto::All);
    }

    #[test]
    fn nft_chain_is_stateful_and_allows_last() {
        let f = fillers(10, 0);
        let lin = nft_ruleset(&f, "10.200.0.0/17", false);
        let lines: Vec<&str> = lin.lines().map(str::trim).collect();
        let ct = lines
            .iter()
            .position(|l| *l == "ct state established,related accept")
            .unwrap();
        let accepts = lines.iter().filter(|l| l.ends_with("accept")).count();
        assert_eq!(accepts, 1 + 10, "{lin}");
        assert_eq!(
            lines.iter().rposition(|l| l.ends_with("accept")).unwrap(),
            lines
                .iter()
                .position(|l| *l == "ip saddr 10.200.0.0/17 accept")
                .unwrap()
        );
        assert!(ct < lines.len());
        let set = nft_ruleset(&f, "10.200.0.0/17", true);
        assert_eq!(
            set.matches(" . tcp . ").count() + set.matches(" . udp . ").count(),
            9
        );
        assert!(set.contains("@fill accept"));
    }

    #[test]
    fn ovs_flows_commit_new_and_pass_established() {
        let s = ovs_flows(&fillers(5, 0), "10.202.0.0/17");
        assert_eq!(s.matches("ct(commit)").count(), 5);
        assert!(s.contains("ct_state=+trk+est"));
        assert!(s.lines().last().unwrap().ends_with("actions=drop"));
    }
}
