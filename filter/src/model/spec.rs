//! Rule text: parsing of the `-P`/`-p`/`-t`/`-s`/`-o -u` options
//! ([`RuleSpec::expand`]) and of their parts, rule normalisation
//! ([`Rule::normalized`]) and the printed forms of protocols, ports, sources
//! and rules. Every error is `InvalidParameterValue` naming the bad value. The
//! model's invariants (existence, duplicates, limits) are checked by
//! [`super::Model`], not here.
//!
//! IPv6: `-s` takes IPv6 CIDRs (`2001:db8::/32`, `::/0`, a bare address is a
//! /128) and `-P icmpv6` (or `58`) takes `-t TYPE:CODE` like `icmp`. A rule
//! never mixes families: `icmp` with an IPv6 CIDR and `icmpv6` with an IPv4
//! CIDR are refused naming the CIDR (AWS does the same), so a rule's family
//! is its CIDR's, or both for `all`/`tcp`/`udp` from a group.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};

use super::{Ec2Error, Owner, Ports, Proto, Rule, RuleSpec, Source, invalid, validate_group_name};

impl Proto {
    /// Lowercase name as the EC2 tools print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::All => "all",
            Proto::Icmpv6 => "icmpv6",
        }
    }

    /// IP protocol number; `None` for `All`.
    pub fn number(self) -> Option<u8> {
        match self {
            Proto::Tcp => Some(crate::proto::TCP),
            Proto::Udp => Some(crate::proto::UDP),
            Proto::Icmp => Some(crate::proto::ICMP),
            Proto::Icmpv6 => Some(crate::proto::ICMPV6),
            Proto::All => None,
        }
    }

    /// Parse `-P`: `tcp|udp|icmp|icmpv6|all|-1` (any case) or `6|17|1|58`.
    pub fn parse(s: &str) -> Result<Proto, Ec2Error> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "6" => Ok(Proto::Tcp),
            "udp" | "17" => Ok(Proto::Udp),
            "icmp" | "1" => Ok(Proto::Icmp),
            "icmpv6" | "58" => Ok(Proto::Icmpv6),
            "all" | "-1" => Ok(Proto::All),
            _ => Err(invalid(format!(
                "invalid protocol '{s}': expected tcp, udp, icmp, icmpv6 or all"
            ))),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Ports {
    /// `22-22`, `0-65535`, `8:0`, `-1:-1`; empty for `None`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |x: Option<u8>| x.map_or(-1, i16::from);
        match self {
            Ports::None => Ok(()),
            Ports::Range(lo, hi) => write!(f, "{lo}-{hi}"),
            Ports::Icmp { ty, code } => write!(f, "{}:{}", n(*ty), n(*code)),
        }
    }
}

impl fmt::Display for Source {
    /// A CIDR, or `OWNER/GROUP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cidr(net) => write!(f, "{net}"),
            Source::Cidr6(net) => write!(f, "{net}"),
            Source::Group { owner, group } => write!(f, "{owner}/{group}"),
        }
    }
}

impl fmt::Display for Rule {
    /// `tcp 22-22 from 10.0.0.0/8`, `all from group 111122223333/default`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.proto.as_str())?;
        if self.ports != Ports::None {
            write!(f, " {}", self.ports)?;
        }
        match &self.source {
            Source::Cidr(net) => write!(f, " from {net}"),
            Source::Cidr6(net) => write!(f, " from {net}"),
            Source::Group { .. } => write!(f, " from group {}", self.source),
        }
    }
}

impl Rule {
    /// Does this rule apply to IPv4 packets? (Not for an IPv6 CIDR or `icmpv6`.)
    #[inline]
    pub fn applies_v4(&self) -> bool {
        !matches!(self.source, Source::Cidr6(_)) && self.proto != Proto::Icmpv6
    }

    /// Does this rule apply to IPv6 packets? (Not for an IPv4 CIDR or `icmp`.)
    #[inline]
    pub fn applies_v6(&self) -> bool {
        !matches!(self.source, Source::Cidr(_)) && self.proto != Proto::Icmp
    }

    /// Check a rule built elsewhere (an API body, the store) and return it in
    /// normal form: CIDR host bits cleared, ports consistent with the protocol.
    pub fn normalized(&self) -> Result<Rule, Ec2Error> {
        let ports = match (self.proto, self.ports) {
            (Proto::All, Ports::None) => Ports::None,
            (Proto::Tcp | Proto::Udp, Ports::Range(lo, hi)) if lo <= hi => Ports::Range(lo, hi),
            (Proto::Icmp | Proto::Icmpv6, Ports::Icmp { ty: None, .. }) => Ports::Icmp {
                ty: None,
                code: None,
            },
            (Proto::Icmp | Proto::Icmpv6, p @ Ports::Icmp { .. }) => p,
            (proto, ports) => {
                return Err(invalid(format!(
                    "invalid port specification '{ports}' for protocol {proto}"
                )));
            }
        };
        match (self.proto, &self.source) {
            (Proto::Icmp, Source::Cidr6(net)) => {
                return Err(invalid(format!(
                    "invalid permission: protocol icmp with the IPv6 CIDR '{net}' \
                     (ICMP rules are IPv4; use icmpv6)"
                )));
            }
            (Proto::Icmpv6, Source::Cidr(net)) => {
                return Err(invalid(format!(
                    "invalid permission: protocol icmpv6 with the IPv4 CIDR '{net}' \
                     (ICMPv6 rules are IPv6; use icmp)"
                )));
            }
            _ => {}
        }
        let source = match &self.source {
            Source::Cidr(net) => Source::Cidr(net.trunc()),
            Source::Cidr6(net) => Source::Cidr6(net.trunc()),
            Source::Group { owner, group } => {
                owner.validate()?;
                validate_group_name(group)?;
                self.source.clone()
            }
        };
        Ok(Rule {
            proto: self.proto,
            ports,
            source,
        })
    }
}

/// Parse a port `0..=65535`.
fn parse_port(s: &str, whole: &str) -> Result<u16, Ec2Error> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!(
            "invalid port range '{whole}': expected N, N-M or -1 with 0 <= N <= M <= 65535"
        )));
    }
    s.parse::<u16>().map_err(|_| {
        invalid(format!(
            "invalid port range '{whole}': port out of range 0-65535"
        ))
    })
}

/// Parse `-p`: `N`, `N-M` (N <= M) or `-1` (all ports).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), Ec2Error> {
    let t = s.trim();
    if t == "-1" {
        return Ok((0, u16::MAX));
    }
    let (lo, hi) = match t.split_once('-') {
        Some((a, b)) => (parse_port(a, s)?, parse_port(b, s)?),
        None => {
            let p = parse_port(t, s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(invalid(format!(
            "invalid port range '{s}': the first port is above the last"
        )));
    }
    Ok((lo, hi))
}

/// Parse `-t TYPE:CODE`, each `0..=255` or `-1`. Type `-1` makes the code `-1`.
pub fn parse_icmp_type_code(s: &str) -> Result<Ports, Ec2Error> {
    let bad = || {
        invalid(format!(
            "invalid ICMP type:code '{s}': expected TYPE:CODE, each 0-255 or -1"
        ))
    };
    let one = |x: &str| -> Result<Option<u8>, Ec2Error> {
        match x.trim() {
            "-1" => Ok(None),
            d if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => {
                d.parse::<u8>().map(Some).map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    };
    let (ty, code) = s.split_once(':').ok_or_else(bad)?;
    let ty = one(ty)?;
    let code = one(code)?;
    Ok(Ports::Icmp {
        ty,
        code: if ty.is_none() { None } else { code },
    })
}

/// Parse a `-s` CIDR of either family: IPv4 as [`parse_cidr`], or IPv6
/// `x:y::/n` (host bits cleared) or a bare IPv6 address (/128).
pub fn parse_source_cidr(s: &str) -> Result<Source, Ec2Error> {
    if !s.contains(':') {
        return parse_cidr(s).map(Source::Cidr);
    }
    let t = s.trim();
    let bad = || {
        invalid(format!(
            "invalid CIDR '{s}': expected an IPv6 prefix x:y::/n with n <= 128"
        ))
    };
    let net = if t.contains('/') {
        Ipv6Net::from_str(t).map(|n| n.trunc()).map_err(|_| bad())?
    } else {
        Ipv6Addr::from_str(t)
            .map(Ipv6Net::from)
            .map_err(|_| bad())?
    };
    Ok(Source::Cidr6(net))
}

/// Parse an IPv4 `-s` CIDR: `a.b.c.d/n` (host bits are cleared) or a bare
/// address (/32).
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, Ec2Error> {
    let t = s.trim();
    let bad = || {
        invalid(format!(
            "invalid CIDR '{s}': expected a.b.c.d/n with n <= 32"
        ))
    };
    if t.contains('/') {
        // Only decimal prefix lengths: ipnet would accept nothing else anyway, but
        // say so with the value.
        Ipv4Net::from_str(t).map(|n| n.trunc()).map_err(|_| bad())
    } else {
        Ipv4Addr::from_str(t).map(Ipv4Net::from).map_err(|_| bad())
    }
}

impl RuleSpec {
    /// Validate the options and expand them into rules, one per source (each `-s`
    /// CIDR, then each `-o/-u` group, in the order given; no source means
    /// `0.0.0.0/0`). See the module docs for the protocol defaults. Group
    /// existence is checked by [`Model::authorize`], not here.
    pub fn expand(&self, caller: &Owner) -> Result<Vec<Rule>, Ec2Error> {
        if self.ports.is_some() && self.icmp.is_some() {
            return Err(invalid(format!(
                "invalid permission: port range '{}' and ICMP type:code '{}' cannot both be given",
                self.ports.as_deref().unwrap_or_default(),
                self.icmp.as_deref().unwrap_or_default()
            )));
        }
        let proto = match (&self.proto, &self.ports, &self.icmp) {
            (Some(p), _, _) => Proto::parse(p)?,
            (None, Some(_), None) => Proto::Tcp,
            (None, None, Some(_)) => Proto::Icmp,
            _ => Proto::All,
        };
        let ports = match proto {
            Proto::Tcp | Proto::Udp => {
                if let Some(t) = &self.icmp {
                    return Err(invalid(format!(
                        "invalid ICMP type:code '{t}' for protocol {proto}"
                    )));
                }
                // AWS refuses TCP/UDP without ports rather than opening all
                // 65,536 of them; `-p -1` (FromPort=ToPort=-1) says "all".
                let Some(p) = &self.ports else {
                    return Err(invalid(format!(
                        "invalid permission for protocol {proto}: must specify both from and to \
                         ports with TCP/UDP (a port N, a range N-M, or -1 for all ports)"
                    )));
                };
                let (lo, hi) = parse_port_range(p)?;
                Ports::Range(lo, hi)
            }
            Proto::Icmp | Proto::Icmpv6 => {
                if let Some(p) = &self.ports {
                    return Err(invalid(format!(
                        "invalid port range '{p}' for protocol {proto}: use -t TYPE:CODE"
                    )));
                }
                match &self.icmp {
                    Some(t) => parse_icmp_type_code(t)?,
                    None => Ports::Icmp {
                        ty: None,
                        code: None,
                    },
                }
            }
            Proto::All => {
                if let Some(p) = &self.ports {
                    return Err(invalid(format!(
                        "invalid port range '{p}' for protocol all"
                    )));
                }
                if let Some(t) = &self.icmp {
                    return Err(invalid(format!(
                        "invalid ICMP type:code '{t}' for protocol all"
                    )));
                }
                Ports::None
            }
        };
        let mut sources = Vec::with_capacity(self.cidrs.len() + self.groups.len());
        for c in &self.cidrs {
            sources.push(parse_source_cidr(c)?);
        }
        for (group, owner) in &self.groups {
            validate_group_name(group)?;
            let owner = match owner {
                Some(o) => Owner::parse(o)?,
                None => caller.clone(),
            };
            sources.push(Source::Group {
                owner,
                group: group.clone(),
            });
        }
        if sources.is_empty() {
            // `icmpv6` alone means from anywhere in IPv6.
            sources.push(if proto == Proto::Icmpv6 {
                Source::Cidr6(Ipv6Net::default())
            } else {
                Source::Cidr(Ipv4Net::default())
            });
        }
        // Checked as every stored rule is (families never mixed: icmp with
        // an IPv6 CIDR, icmpv6 with an IPv4 one are refused here too).
        sources
            .into_iter()
            .map(|source| {
                Rule {
                    proto,
                    ports,
                    source,
                }
                .normalized()
            })
            .collect()
    }
}
