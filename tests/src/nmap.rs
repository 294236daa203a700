//! Parser for nmap's grepable output (`-oG -`).
//!
//! For every host nmap prints a `Host: IP (NAME)\tPorts: ...` line listing the
//! ports it did not ignore as `PORT/STATE/PROTO/OWNER/SERVICE/RPC/VERSION/`,
//! comma separated, and then sums up the rest as `\tIgnored State: STATE (N)`.
//! A fully filtered scan lists no port at all: `Ports: \tIgnored State:
//! filtered (100)`. [`Scan::state`] answers for any scanned port, listed or
//! ignored; [`Scan::total`] counts both so a test can check the whole range was
//! scanned.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A port state as nmap names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortState {
    Open,
    Closed,
    Filtered,
    Unfiltered,
    OpenFiltered,
    ClosedFiltered,
}

impl FromStr for PortState {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Ok(match s {
            "open" => PortState::Open,
            "closed" => PortState::Closed,
            "filtered" => PortState::Filtered,
            "unfiltered" => PortState::Unfiltered,
            "open|filtered" => PortState::OpenFiltered,
            "closed|filtered" => PortState::ClosedFiltered,
            other => return Err(ParseError(format!("unknown port state {other:?}"))),
        })
    }
}

impl fmt::Display for PortState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortState::Open => "open",
            PortState::Closed => "closed",
            PortState::Filtered => "filtered",
            PortState::Unfiltered => "unfiltered",
            PortState::OpenFiltered => "open|filtered",
            PortState::ClosedFiltered => "closed|filtered",
        })
    }
}

/// A malformed `-oG` line, with the offending text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("nmap -oG: {0}")]
pub struct ParseError(pub String);

/// The result of scanning one host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Ports nmap listed, with their state.
    pub ports: BTreeMap<u16, PortState>,
    /// `Ignored State: STATE (N)`: the state of every scanned port not listed.
    pub ignored: Option<(PortState, u32)>,
}

impl Scan {
    /// The state of a scanned port: listed, or else the ignored state.
    pub fn state(&self, port: u16) -> Option<PortState> {
        self.ports
            .get(&port)
            .copied()
            .or(self.ignored.map(|(s, _)| s))
    }

    /// Listed ports plus ignored ones: the number of ports scanned.
    pub fn total(&self) -> u32 {
        self.ports.len() as u32 + self.ignored.map_or(0, |(_, n)| n)
    }

    /// Ports (listed) in state `s`.
    pub fn listed(&self, s: PortState) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|&(_, &st)| st == s)
            .map(|(&p, _)| p)
            .collect()
    }

    /// How many scanned ports are in state `s`, listed or ignored.
    pub fn count(&self, s: PortState) -> u32 {
        let listed = self.ports.values().filter(|&&st| st == s).count() as u32;
        listed
            + self
                .ignored
                .filter(|&(st, _)| st == s)
                .map_or(0, |(_, n)| n)
    }
}

/// Parse a whole `-oG -` output: one [`Scan`] per host that has a `Ports:` field.
pub fn parse_grepable(text: &str) -> Result<BTreeMap<Ipv4Addr, Scan>, ParseError> {
    let mut hosts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("Host: ") else {
            continue;
        };
        let mut fields = rest.split('\t');
        let host = fields.next().unwrap_or_default();
        let ip_text = host.split_whitespace().next().unwrap_or_default();
        let ip: Ipv4Addr = ip_text
            .parse()
            .map_err(|_| ParseError(format!("bad host address in {line:?}")))?;
        let mut scan = None::<Scan>;
        for field in fields {
            if let Some(list) = field.strip_prefix("Ports: ") {
                let s = scan.get_or_insert_with(Scan::default);
                for entry in list.split(", ").map(str::trim).filter(|e| !e.is_empty()) {
                    let (port, state) = parse_port_entry(entry)?;
                    s.ports.insert(port, state);
                }
            } else if field == "Ports:" {
                scan.get_or_insert_with(Scan::default);
            } else if let Some(ign) = field.strip_prefix("Ignored State: ") {
                let s = scan.get_or_insert_with(Scan::default);
                s.ignored = Some(parse_ignored(ign)?);
            }
        }
        if let Some(s) = scan {
            hosts.insert(ip, s);
        }
    }
    Ok(hosts)
}

/// `22/open/tcp//ssh///` -> (22, Open).
fn parse_port_entry(entry: &str) -> Result<(u16, PortState), ParseError> {
    let mut parts = entry.split('/');
    let port = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| ParseError(format!("bad port entry {entry:?}")))?;
    let state = parts
        .next()
        .ok_or_else(|| ParseError(format!("no state in port entry {entry:?}")))?
        .parse()?;
    Ok((port, state))
}

/// `filtered (98)` -> (Filtered, 98).
fn parse_ignored(text: &str) -> Result<(PortState, u32), ParseError> {
    let bad = || ParseError(format!("bad Ignored State {text:?}"));
    let (state, count) = text.trim().split_once(" (").ok_or_else(bad)?;
    let n = count
        .strip_suffix(')')
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    Ok((state.parse()?, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Literal nmap 7.93 output captured on this machine (two namespaces joined by
    // a veth, an nftables input chain in the target).
    const MIXED: &str = "# Nmap 7.93 scan initiated Thu Nov 26 08:00:10 2026 as: nmap -Pn -n -T4 --max-retries 0 --min-rate 1000 -oG - -p1-100 10.99.0.2
Host: 10.99.0.2 ()\tStatus: Up
Host: 10.99.0.2 ()\tPorts: 22/open/tcp//ssh///, 23/closed/tcp//telnet///\tIgnored State: filtered (98)
# Nmap done at Thu Nov 26 08:00:11 2026 -- 1 IP address (1 host up) scanned in 0.31 seconds
";
    const ALL_FILTERED: &str = "# Nmap 7.93 scan initiated Thu Nov 26 08:00:11 2026 as: nmap -Pn -n -T4 --max-retries 0 --min-rate 1000 -oG - -p1-100 10.99.0.2
Host: 10.99.0.2 ()\tStatus: Up
Host: 10.99.0.2 ()\tPorts: \tIgnored State: filtered (100)
# Nmap done at Thu Nov 26 08:00:11 2026 -- 1 IP address (1 host up) scanned in 0.31 seconds
";
    const IGNORED_CLOSED: &str = "Host: 10.99.0.2 ()\tStatus: Up
Host: 10.99.0.2 ()\tPorts: 22/open/tcp//ssh///\tIgnored State: closed (99)
";
    const NONE_IGNORED: &str = "Host: 10.99.0.2 ()\tStatus: Up
Host: 10.99.0.2 ()\tPorts: 20/closed/tcp//ftp-data///, 21/closed/tcp//ftp///, 22/open/tcp//ssh///, 23/closed/tcp//telnet///, 24/closed/tcp//priv-mail///
# Nmap done at Thu Nov 26 08:00:11 2026 -- 1 IP address (1 host up) scanned in 0.09 seconds
";

    fn one(text: &str) -> Scan {
        let hosts = parse_grepable(text).unwrap();
        assert_eq!(hosts.len(), 1, "{hosts:?}");
        hosts[&Ipv4Addr::new(10, 99, 0, 2)].clone()
    }

    #[test]
    fn mixed_open_closed_and_ignored_filtered() {
        let s = one(MIXED);
        assert_eq!(s.state(22), Some(PortState::Open));
        assert_eq!(s.state(23), Some(PortState::Closed));
        assert_eq!(s.state(80), Some(PortState::Filtered));
        assert_eq!(s.ignored, Some((PortState::Filtered, 98)));
        assert_eq!(s.total(), 100);
        assert_eq!(s.listed(PortState::Open), vec![22]);
        assert_eq!(s.count(PortState::Filtered), 98);
    }

    #[test]
    fn all_filtered_lists_no_port() {
        let s = one(ALL_FILTERED);
        assert!(s.ports.is_empty());
        assert_eq!(s.ignored, Some((PortState::Filtered, 100)));
        assert_eq!(s.count(PortState::Filtered), 100);
        assert_eq!(s.state(22), Some(PortState::Filtered));
    }

    #[test]
    fn ignored_state_can_be_closed() {
        let s = one(IGNORED_CLOSED);
        assert_eq!(s.state(22), Some(PortState::Open));
        assert_eq!(s.state(1), Some(PortState::Closed));
        assert_eq!(s.count(PortState::Closed), 99);
        assert_eq!(s.total(), 100);
    }

    #[test]
    fn without_ignored_state_only_listed_ports_are_known() {
        let s = one(NONE_IGNORED);
        assert_eq!(s.ignored, None);
        assert_eq!(s.total(), 5);
        assert_eq!(s.listed(PortState::Closed), vec![20, 21, 23, 24]);
        assert_eq!(s.state(25), None);
    }

    #[test]
    fn status_only_hosts_and_comments_are_skipped() {
        let text = "# Nmap\nHost: 10.0.0.9 ()\tStatus: Down\n# Nmap done\n";
        assert!(parse_grepable(text).unwrap().is_empty());
    }

    #[test]
    fn malformed_entries_are_errors_naming_the_text() {
        let e = parse_grepable("Host: 10.0.0.1 ()\tPorts: x/open/tcp//ssh///\n").unwrap_err();
        assert!(e.0.contains("x/open"), "{e}");
        let e = parse_grepable("Host: 10.0.0.1 ()\tPorts: 22/weird/tcp//ssh///\n").unwrap_err();
        assert!(e.0.contains("weird"), "{e}");
        let e = parse_grepable("Host: 10.0.0.1 ()\tPorts: \tIgnored State: filtered 100\n")
            .unwrap_err();
        assert!(e.0.contains("filtered 100"), "{e}");
        let e = parse_grepable("Host: nope ()\tPorts: \n").unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
    }
}
