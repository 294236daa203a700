//! `trace`: what the switch does with a packet of a given shape, step by step.
//!
//! Contract:
//! * The verdict is the switch's: the core builds real frames (ARP request for
//!   the next hop, then the packet; before it, with `--reply-of`, the request it
//!   answers, with `--established` the packet that opened its flow) and has the
//!   data plane run them through the datapath's own pipeline against the
//!   published snapshot ([`Dataplane::trace`], `switch::trace`), with a
//!   scratch connection table. The core only words what came out.
//! * The core answers on its own thread, so the model it names rules from is the
//!   one the published snapshot was compiled from (the report says which
//!   generation). Rules are named with [`filter::explain::matching_rules`],
//!   which agrees with the snapshot's classifier (property test in filter).
//! * `--from`/`--to` take an instance id of the caller's (`i-...`) or an IPv4
//!   or IPv6 address. An address of an instance is that instance (its port);
//!   any other address sends from the uplink.
//! * Both families, one code path: the family is the addresses' (an IPv6
//!   address, `-P icmpv6` or `ipv6` for two instance ids trace IPv6; mixing
//!   families, `icmp` over IPv6 or `icmpv6` over IPv4 is refused). The frames
//!   are built by family ([`Ep`]); IPv6 resolves the next hop with a neighbor
//!   solicitation (step `nd`) where IPv4 uses ARP (step `arp`): to the
//!   destination on the /64 or from the uplink, else to the switch's
//!   link-local router address, as a SLAAC guest does. The rules are named
//!   from the family's packet facts ([`filter::explain`] is generic). A
//!   refused IPv6 packet that a rule of the consulted groups would admit from
//!   an IPv4 CIDR lists that rule (`ipv4_only`): `0.0.0.0/0` does not open
//!   IPv6. The destination's rules are shown only to
//!   their owner: an address of another owner's instance as destination is
//!   `InvalidParameterValue`.
//! * Bad input (unknown instance, bad address, protocol, port or ICMP
//!   type:code, both `--established` and `--reply-of`) is an error naming the
//!   value; nothing changes either way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter::model::{Owner, Rule, Source};
use filter::reference::{Family, instance_at, rule_matches};
use filter::wire::{self, Endpoint, Endpoint6};
use filter::{DropReason, ErrorCode, Mac, Packet, parse_frame, proto, tcp_flags};
use switch::pipeline::Outcome;
use switch::trace::{Ingress, Traced};

use super::Core;
use crate::api::{ApiError, Response, TraceReport, TraceRule, TraceStep};
use crate::store::format_mac;

/// The MAC a traced frame from outside comes from (locally administered).
const OUTSIDE_MAC: Mac = [0x02, 0x00, 0x5e, 0x00, 0x53, 0x01];
/// The source port of traced TCP/UDP packets (and of the flow a reply answers).
pub const EPHEMERAL_PORT: u16 = 40000;
/// Identifier of traced ICMP queries.
const ICMP_ID: u16 = 0x5347;

/// The arguments of a trace (see [`crate::api::Command::Trace`]).
pub struct TraceArgs {
    pub from: String,
    pub to: String,
    pub proto: String,
    pub port: Option<u16>,
    pub icmp: Option<String>,
    pub established: bool,
    pub reply_of: bool,
    /// Trace IPv6 between two instance ids.
    pub ipv6: bool,
}

/// A frame to trace and where it enters.
type Frame = (Ingress, Vec<u8>);

/// One end of a frame, in the trace's family.
#[derive(Clone, Copy, Debug)]
enum Ep {
    V4(Endpoint),
    V6(Endpoint6),
}

impl Ep {
    fn new(mac: Mac, ip: IpAddr) -> Ep {
        match ip {
            IpAddr::V4(a) => Ep::V4(Endpoint::new(mac, a)),
            IpAddr::V6(a) => Ep::V6(Endpoint6::new(mac, a)),
        }
    }
}

/// The frame builders of both families (`a` and `b` are of one family: the
/// trace's).
mod build {
    use super::*;

    fn pair<T>(
        a: Ep,
        b: Ep,
        v4: impl FnOnce(Endpoint, Endpoint) -> T,
        v6: impl FnOnce(Endpoint6, Endpoint6) -> T,
    ) -> T {
        match (a, b) {
            (Ep::V4(a), Ep::V4(b)) => v4(a, b),
            (Ep::V6(a), Ep::V6(b)) => v6(a, b),
            // One family per trace: `Core::trace` resolves both ends in it.
            (Ep::V4(a), Ep::V6(_)) | (Ep::V6(_), Ep::V4(a)) => v4(a, a),
        }
    }

    pub fn tcp(a: Ep, b: Ep, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        pair(
            a,
            b,
            |a, b| wire::tcp(a, b, sport, dport, flags, &[]),
            |a, b| wire::tcp6(a, b, sport, dport, flags, &[]),
        )
    }

    pub fn udp(a: Ep, b: Ep, sport: u16, dport: u16) -> Vec<u8> {
        pair(
            a,
            b,
            |a, b| wire::udp(a, b, sport, dport, b"trace"),
            |a, b| wire::udp6(a, b, sport, dport, b"trace"),
        )
    }

    pub fn echo(a: Ep, b: Ep, request: bool) -> Vec<u8> {
        pair(
            a,
            b,
            |a, b| wire::icmp_echo(a, b, request, ICMP_ID, 1, b"trace"),
            |a, b| wire::icmp6_echo(a, b, request, ICMP_ID, 1, b"trace"),
        )
    }

    pub fn error(a: Ep, b: Ep, ty: u8, code: u8, orig: &[u8]) -> Vec<u8> {
        pair(
            a,
            b,
            |a, b| wire::icmp_error(a, b, ty, code, orig),
            |a, b| wire::icmp6_error(a, b, ty, code, orig),
        )
    }

    /// Any other ICMP/ICMPv6 message (body `53 47 00 01`, data "trace").
    pub fn message(a: Ep, b: Ep, ty: u8, code: u8) -> Vec<u8> {
        let rest = [0x53, 0x47, 0, 1];
        pair(
            a,
            b,
            |a, b| {
                let msg = wire::icmp_message(ty, code, rest, b"trace");
                wire::ipv4_frame(a, b, proto::ICMP, &wire::IpOpts::default(), &msg)
            },
            |a, b| wire::icmp6(a, b, ty, code, rest, b"trace"),
        )
    }

    /// The sender's question for the next hop's MAC: an ARP request or a
    /// neighbor solicitation.
    pub fn resolve(from: Ep, next_hop: IpAddr) -> Vec<u8> {
        match (from, next_hop) {
            (Ep::V6(f), IpAddr::V6(t)) => wire::neighbor_solicitation(f, t),
            (Ep::V4(f), IpAddr::V4(t)) => wire::arp_request(f, t),
            (Ep::V4(f), _) => wire::arp_request(f, Ipv4Addr::UNSPECIFIED),
            (Ep::V6(f), _) => wire::neighbor_solicitation(f, Ipv6Addr::UNSPECIFIED),
        }
    }
}

/// One end of the traced packet.
#[derive(Clone, Debug)]
struct End {
    /// Its address in the trace's family.
    ip: IpAddr,
    /// Instance id and its IPv4 address (which names its port) when the
    /// address is an instance's.
    instance: Option<(String, Ipv4Addr)>,
    mac: Mac,
}

impl End {
    fn ingress(&self) -> Ingress {
        match self.instance {
            Some((_, port)) => Ingress::Instance(port),
            None => Ingress::Uplink,
        }
    }
    fn endpoint(&self) -> Ep {
        Ep::new(self.mac, self.ip)
    }
    fn id(&self) -> Option<&str> {
        self.instance.as_ref().map(|(id, _)| id.as_str())
    }
    fn name(&self) -> String {
        match self.id() {
            Some(id) => format!("{id} ({})", self.ip),
            None => self.ip.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Tcp(u16),
    Udp(u16),
    Icmp(u8, u8),
}

fn bad(msg: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameterValue, msg)
}

fn combination(msg: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameterCombination, msg)
}

fn parse_icmp(s: &str) -> Result<(u8, u8), ApiError> {
    let e = || {
        bad(format!(
            "invalid ICMP type:code '{}': expected TYPE:CODE with numbers 0-255",
            s.escape_default()
        ))
    };
    let (t, c) = s.split_once(':').unwrap_or((s, "0"));
    Ok((t.parse().map_err(|_| e())?, c.parse().map_err(|_| e())?))
}

/// The ICMP numbers of a family: echo request, echo reply, and whether a
/// type is an error quoting a packet.
#[derive(Clone, Copy, Debug)]
struct IcmpNumbers {
    request: u8,
    reply: u8,
    v6: bool,
}

impl IcmpNumbers {
    fn of(v6: bool) -> IcmpNumbers {
        if v6 {
            IcmpNumbers {
                request: 128,
                reply: 129,
                v6,
            }
        } else {
            IcmpNumbers {
                request: 8,
                reply: 0,
                v6,
            }
        }
    }
    fn is_error(self, ty: u8) -> bool {
        if self.v6 {
            filter::parse::ipv6::icmp6_is_error(ty)
        } else {
            matches!(ty, 3 | 4 | 5 | 11 | 12)
        }
    }
}

/// The family facts of the traced packet as the pipeline parsed them.
fn packet_of(t: &Traced) -> Option<(u16, u16)> {
    t.packet
        .map(|p| (p.key.sport, p.key.dport))
        .or(t.packet6.map(|p| (p.key.sport, p.key.dport)))
}

/// The consulted groups, the rules that admit `t`'s packet, and for a refused
/// IPv6 packet the rules of those groups that would admit it from an IPv4
/// CIDR.
type Named<'m> = (
    Option<(&'m Owner, &'m [String])>,
    Vec<TraceRule>,
    Vec<TraceRule>,
);

fn name_rules<'m, A: Family>(model: &'m filter::Model, p: &Packet<A>, admitted: bool) -> Named<'m> {
    let consulted = filter::explain::consulted_groups(model, p);
    let rule = |m: filter::explain::RuleMatch<'_>| TraceRule {
        group: m.group.to_owned(),
        rule: m.rule.clone(),
    };
    let admitting = if admitted {
        filter::explain::matching_rules(model, p)
            .into_iter()
            .map(rule)
            .collect()
    } else {
        Vec::new()
    };
    let mut v4_only = Vec::new();
    if !admitted
        && A::ICMP == proto::ICMPV6
        && let Some((owner, groups)) = consulted
    {
        for name in groups {
            let Some(g) = model.groups().get(&(owner.clone(), name.clone())) else {
                continue;
            };
            for r in g
                .rules
                .iter()
                .filter(|r| matches!(r.source, Source::Cidr(_)))
            {
                let any6 = Rule {
                    source: Source::Cidr6("::/0".parse().expect("a valid prefix")),
                    ..r.clone()
                };
                if rule_matches(model, &any6, p) {
                    v4_only.push(TraceRule {
                        group: g.name.clone(),
                        rule: r.clone(),
                    });
                }
            }
        }
    }
    (consulted, admitting, v4_only)
}

impl Core {
    /// One end in the trace's family (`v6`).
    fn trace_end(&self, owner: &Owner, what: &str, arg: &str, v6: bool) -> Result<End, ApiError> {
        if arg.starts_with("i-") {
            let i = match self.model.instances().get(arg) {
                Some(i) if i.owner == *owner => i,
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidInstanceIdNotFound,
                        format!("the instance ID '{}' does not exist", arg.escape_default()),
                    ));
                }
            };
            let ip = if v6 {
                IpAddr::V6(self.model.ip6_of(i.mac).ok_or_else(|| {
                    bad(format!(
                        "instance {} has no IPv6 address (the switch has no IPv6 subnet)",
                        i.id
                    ))
                })?)
            } else {
                IpAddr::V4(i.ip)
            };
            return Ok(End {
                ip,
                instance: Some((i.id.clone(), i.ip)),
                mac: i.mac,
            });
        }
        let ip: IpAddr = arg.parse().map_err(|_| {
            bad(format!(
                "invalid {what} '{}': expected an instance id (i-...) or an IP address",
                arg.escape_default()
            ))
        })?;
        let inst = match ip {
            IpAddr::V4(a) => instance_at(&self.model, a),
            IpAddr::V6(a) => instance_at(&self.model, a),
        };
        Ok(match inst {
            Some(i) => End {
                ip,
                instance: Some((i.id.clone(), i.ip)),
                mac: i.mac,
            },
            None => End {
                ip,
                instance: None,
                mac: OUTSIDE_MAC,
            },
        })
    }

    /// The trace's family: the addresses', else `-6` or `icmpv6`.
    fn trace_family(a: &TraceArgs) -> Result<bool, ApiError> {
        fn lit(s: &str) -> Option<(&str, bool)> {
            s.parse::<IpAddr>().ok().map(|ip| (s, ip.is_ipv6()))
        }
        let ends: Vec<(&str, bool)> = [lit(&a.from), lit(&a.to)].into_iter().flatten().collect();
        let v6 = match ends[..] {
            [(x, fx), (y, fy)] if fx != fy => {
                return Err(combination(format!(
                    "source {x} and destination {y} are of different address families"
                )));
            }
            [(_, f), ..] => f,
            [] => a.ipv6 || a.proto == "icmpv6",
        };
        let v4_addr = ends.first().filter(|(_, f)| !f).map(|(x, _)| *x);
        match (v6, a.proto.as_str(), v4_addr) {
            (true, "icmp", _) => Err(combination(
                "protocol 'icmp' with IPv6: ICMP over IPv6 is 'icmpv6'".to_string(),
            )),
            (false, "icmpv6", Some(x)) => Err(combination(format!(
                "protocol 'icmpv6' with the IPv4 address {x}"
            ))),
            (false, _, Some(x)) if a.ipv6 => Err(combination(format!(
                "an IPv6 trace (-6) with the IPv4 address {x}"
            ))),
            _ => Ok(v6),
        }
    }

    /// Answer `trace` (see the module docs).
    pub(super) fn trace(&mut self, owner: &Owner, a: TraceArgs) -> Result<Response, ApiError> {
        let shape = match a.proto.as_str() {
            "tcp" | "udp" => {
                if a.icmp.is_some() {
                    return Err(combination(format!(
                        "an ICMP type:code with protocol '{}'",
                        a.proto
                    )));
                }
                let p = a.port.ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::MissingParameter,
                        format!("a {} trace needs a port (-p N)", a.proto),
                    )
                })?;
                if a.proto == "tcp" {
                    Shape::Tcp(p)
                } else {
                    Shape::Udp(p)
                }
            }
            "icmp" | "icmpv6" => {
                if a.port.is_some() {
                    return Err(combination(format!(
                        "a port with protocol '{}' (use -t TYPE:CODE)",
                        a.proto
                    )));
                }
                let default = if a.proto == "icmp" { "8:0" } else { "128:0" };
                let (t, c) = parse_icmp(a.icmp.as_deref().unwrap_or(default))?;
                Shape::Icmp(t, c)
            }
            other => {
                return Err(bad(format!(
                    "invalid protocol '{}' for trace: expected tcp, udp, icmp or icmpv6",
                    other.escape_default()
                )));
            }
        };
        if a.established && a.reply_of {
            return Err(combination(
                "--established and --reply-of together".to_string(),
            ));
        }
        let v6 = Self::trace_family(&a)?;
        let icmp = IcmpNumbers::of(v6);
        let src = self.trace_end(owner, "source", &a.from, v6)?;
        let dst = self.trace_end(owner, "destination", &a.to, v6)?;
        if let Some(id) = dst.id()
            && self.model.instances()[id].owner != *owner
        {
            return Err(bad(format!(
                "destination {} is an instance of another account",
                dst.ip
            )));
        }
        if src.ip == dst.ip {
            return Err(bad(format!("source and destination are both {}", src.ip)));
        }

        // The frames: ARP or neighbor solicitation for the next hop, the
        // opening frame, the packet.
        let next_hop = match dst.ip {
            IpAddr::V4(d) => {
                let subnet = self.cfg.subnet;
                if subnet.contains(&d) || src.instance.is_none() {
                    dst.ip
                } else {
                    IpAddr::V4(Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1)))
                }
            }
            IpAddr::V6(d) => {
                let on_link = self.model.subnet6().is_some_and(|p| p.contains(&d));
                if on_link || dst.instance.is_some() || src.instance.is_none() {
                    dst.ip
                } else {
                    IpAddr::V6(switch::nd::router_ll())
                }
            }
        };
        let mut frames = vec![(src.ingress(), build::resolve(src.endpoint(), next_hop))];
        // The destination MAC a real sender would use: the instance's MAC or
        // the gateway's (the router's, for IPv6).
        let dst_mac = match &dst.instance {
            Some(_) => dst.mac,
            None => switch::arp::GATEWAY_MAC,
        };
        let (s_ep, d_ep) = (src.endpoint(), Ep::new(dst_mac, dst.ip));
        let back = (
            dst.endpoint(),
            Ep::new(
                if src.instance.is_some() {
                    src.mac
                } else {
                    switch::arp::GATEWAY_MAC
                },
                src.ip,
            ),
        );
        let (opener, packet, what): (Option<Frame>, Vec<u8>, String) = match shape {
            Shape::Tcp(p) => {
                use tcp_flags::{ACK, SYN};
                if a.reply_of {
                    let open = build::tcp(back.0, back.1, EPHEMERAL_PORT, p, SYN);
                    let pkt = build::tcp(s_ep, d_ep, p, EPHEMERAL_PORT, SYN | ACK);
                    (Some((dst.ingress(), open)), pkt, "SYN+ACK".into())
                } else if a.established {
                    let open = build::tcp(s_ep, d_ep, EPHEMERAL_PORT, p, SYN);
                    let pkt = build::tcp(s_ep, d_ep, EPHEMERAL_PORT, p, ACK);
                    (Some((src.ingress(), open)), pkt, "ACK".into())
                } else {
                    let pkt = build::tcp(s_ep, d_ep, EPHEMERAL_PORT, p, SYN);
                    (None, pkt, "SYN".into())
                }
            }
            Shape::Udp(p) => {
                if a.reply_of {
                    let open = build::udp(back.0, back.1, EPHEMERAL_PORT, p);
                    let pkt = build::udp(s_ep, d_ep, p, EPHEMERAL_PORT);
                    (Some((dst.ingress(), open)), pkt, "datagram".into())
                } else if a.established {
                    let open = build::udp(s_ep, d_ep, EPHEMERAL_PORT, p);
                    let pkt = build::udp(s_ep, d_ep, EPHEMERAL_PORT, p);
                    (Some((src.ingress(), open)), pkt, "datagram".into())
                } else {
                    let pkt = build::udp(s_ep, d_ep, EPHEMERAL_PORT, p);
                    (None, pkt, "datagram".into())
                }
            }
            Shape::Icmp(t, c) => {
                let what = format!("type {t} code {c}");
                if icmp.is_error(t) {
                    // The datagram the error quotes: one `dst` sent to `src`.
                    let orig = build::udp(back.0, back.1, EPHEMERAL_PORT, 33434);
                    let pkt = build::error(s_ep, d_ep, t, c, &orig);
                    let open = (a.reply_of || a.established).then(|| (dst.ingress(), orig));
                    (open, pkt, what)
                } else if t == icmp.reply && c == 0 && a.reply_of {
                    let open = build::echo(back.0, back.1, true);
                    let pkt = build::echo(s_ep, d_ep, false);
                    (Some((dst.ingress(), open)), pkt, what)
                } else {
                    // Echo requests and replies: identifier 0x5347, sequence 1.
                    let pkt = build::message(s_ep, d_ep, t, c);
                    let open = if a.established && t == icmp.request {
                        Some((src.ingress(), pkt.clone()))
                    } else if a.reply_of || a.established {
                        let errors = if v6 { "1, 2, 3, 4" } else { "3, 4, 5, 11, 12" };
                        return Err(combination(format!(
                            "--reply-of/--established with ICMP type {t}:{c}: only echo replies ({}:0) answer, only echo requests ({}:0) repeat, errors ({errors}) refer to a flow",
                            icmp.reply, icmp.request
                        )));
                    } else {
                        None
                    };
                    (open, pkt, what)
                }
            }
        };
        let has_opener = opener.is_some();
        frames.extend(opener);
        frames.push((src.ingress(), packet));

        let run = self.dp.trace(&frames)?;
        let resolve = &run.frames[0];
        let last = run.frames.last().expect("the packet was traced");
        let mut steps = Vec::new();
        let mut step = |s: &str, r: &str, d: String| {
            steps.push(TraceStep {
                step: s.into(),
                result: r.into(),
                detail: d,
            })
        };
        let inst_of = |ip: Ipv4Addr| {
            self.model
                .instances()
                .values()
                .find(|i| i.ip == ip)
                .map(|i| i.id.clone())
        };
        // Cluster mode: the host a remote destination runs on.
        let dst_host = dst
            .id()
            .and_then(|id| self.records.get(id))
            .and_then(|r| self.remote_host(r))
            .map(str::to_owned);
        // A delivered frame is named by the destination's address in the
        // trace's family; one sent into the overlay by the host it goes to.
        let fate = |t: &Traced| match t.outcome {
            Outcome::Forwarded if let Some((addr, identity)) = t.overlay => format!(
                "sent to host {} ({}) in VXLAN-GBP with identity {identity}",
                dst_host.as_deref().unwrap_or("?"),
                addr.ip()
            ),
            Outcome::Forwarded => match &t.delivered {
                Some((_, _, Some(ip))) => {
                    let addr = match &dst.instance {
                        Some((_, p)) if p == ip => dst.ip,
                        _ => match &src.instance {
                            Some((_, p)) if p == ip => src.ip,
                            _ => IpAddr::V4(*ip),
                        },
                    };
                    format!(
                        "delivered to {}",
                        inst_of(*ip).map_or(addr.to_string(), |id| format!("{id} ({addr})"))
                    )
                }
                _ => "sent to the uplink".to_string(),
            },
            Outcome::Answered => "answered by the switch".to_string(),
            Outcome::Consumed => "consumed by the switch".to_string(),
            Outcome::Dropped(r) => format!("dropped: {}", r.name()),
            Outcome::VxlanDropped(v) => format!("dropped by the overlay: {}", v.name()),
        };
        if has_opener {
            let o = &run.frames[run.frames.len() - 2];
            let ok = o.outcome == Outcome::Forwarded;
            let desc = if a.reply_of {
                format!(
                    "the flow this packet answers: {} -> {} ({}), {}",
                    dst.name(),
                    src.name(),
                    opener_what(shape, icmp),
                    fate(o)
                )
            } else {
                format!(
                    "the packet that opened this flow ({}), {}",
                    opener_what(shape, icmp),
                    fate(o)
                )
            };
            step("request", if ok { "ok" } else { "drop" }, desc);
        }
        // Source check.
        let reason = match last.outcome {
            Outcome::Dropped(r) => Some(r),
            _ => None,
        };
        let source_drop = reason.filter(|r| {
            matches!(
                r,
                DropReason::SpoofedMac
                    | DropReason::SpoofedIp
                    | DropReason::SpoofedArp
                    | DropReason::SpoofedNd
                    | DropReason::RogueRouterAdvert
                    | DropReason::UplinkSpoof
                    | DropReason::RogueDhcp
                    | DropReason::VlanTagged
                    | DropReason::BadOffload
            )
        });
        let gateway = if v6 { "router's" } else { "gateway's" };
        match (src.id(), source_drop) {
            (_, Some(r)) => step("source", "drop", format!("refused: {}", r.name())),
            (Some(id), None) => step(
                "source",
                "ok",
                format!(
                    "from the port of {id}: source MAC {} and address {} are {id}'s",
                    format_mac(&src.mac),
                    src.ip
                ),
            ),
            (None, None) => step(
                "source",
                "ok",
                format!(
                    "from the uplink: {} is neither an instance's address nor the {gateway}",
                    src.ip
                ),
            ),
        }
        // ARP or neighbor discovery.
        let answered_mac = |ans: &[u8]| match parse_frame(ans) {
            Ok(filter::Parsed::Arp { arp, .. }) => format_mac(&arp.sha),
            // A neighbor advertisement ends with its target link-layer
            // address option (`switch::nd::write_na`).
            Ok(filter::Parsed::Ipv6 { .. }) if ans.len() == switch::nd::NA_LEN => {
                let mut m = [0u8; 6];
                m.copy_from_slice(&ans[ans.len() - 6..]);
                format_mac(&m)
            }
            _ => "?".into(),
        };
        let resolve_text = match (resolve.outcome, &resolve.answer) {
            (Outcome::Answered, Some(ans)) => (
                "answered",
                format!(
                    "who-has {next_hop}: the switch answers {}",
                    answered_mac(ans)
                ),
            ),
            (Outcome::Forwarded, _) => (
                "ok",
                format!("who-has {next_hop}: not an instance, passed to the uplink"),
            ),
            (Outcome::Dropped(r), _) => ("drop", format!("who-has {next_hop}: {}", r.name())),
            (o, _) => ("ok", format!("who-has {next_hop}: {o:?}")),
        };
        step(
            if v6 { "nd" } else { "arp" },
            resolve_text.0,
            resolve_text.1,
        );
        // Destination.
        let dest_drop =
            reason.filter(|r| matches!(r, DropReason::Broadcast | DropReason::UnknownDestination));
        if source_drop.is_none() {
            match dest_drop {
                Some(r) => step("destination", "drop", format!("{}: {}", dst.ip, r.name())),
                None if last.remote => step(
                    "destination",
                    "ok",
                    format!(
                        "{} is an instance of another host: the overlay carries it, its host's rules decide",
                        dst.ip
                    ),
                ),
                None => match dst.id() {
                    Some(id) => step("destination", "ok", format!("{} is {id}: its port", dst.ip)),
                    None => step(
                        "destination",
                        "ok",
                        format!("{} is no instance: the uplink", dst.ip),
                    ),
                },
            }
        }
        // Connection state and rules.
        let policy_drop = reason.filter(|r| {
            matches!(
                r,
                DropReason::NoRule
                    | DropReason::NoEgressRule
                    | DropReason::Revoked
                    | DropReason::UnrelatedIcmpError
                    | DropReason::UnmatchedFragment
                    | DropReason::ConntrackFull
                    | DropReason::ConntrackQuota
            )
        });
        let admitted = policy_drop.is_none() && !last.tracked_before;
        let (consulted, admitting, v4_only) = match (&last.packet, &last.packet6) {
            (Some(p), _) => name_rules(&self.model, p, admitted),
            (_, Some(p)) => name_rules(&self.model, p, admitted),
            _ => (None, Vec::new(), Vec::new()),
        };
        let groups_text = |g: &[String]| g.join(", ");
        let mut rules = Vec::new();
        let mut ipv4_only = Vec::new();
        if source_drop.is_none() && dest_drop.is_none() {
            if last.tracked_before {
                let r = if policy_drop.is_some() {
                    "drop"
                } else {
                    "tracked"
                };
                let d = match policy_drop {
                    Some(x) => format!("tracked flow, refused: {}", x.name()),
                    None if a.reply_of => "the reply of a tracked flow: passes".to_string(),
                    None => "part of a tracked flow: passes".to_string(),
                };
                step("connection", r, d);
            } else if let Some((_, groups)) = consulted.filter(|_| !last.remote) {
                let d = match policy_drop {
                    Some(x @ DropReason::NoEgressRule) => format!(
                        "no tracked flow; no egress rule of the source's groups allows it: {}",
                        x.name()
                    ),
                    Some(x) if !v4_only.is_empty() => format!(
                        "no tracked flow; no rule of {} admits it: {} (a rule from an IPv4 CIDR does not open IPv6)",
                        groups_text(groups),
                        x.name()
                    ),
                    Some(x) => format!(
                        "no tracked flow; no rule of {} admits it: {}",
                        groups_text(groups),
                        x.name()
                    ),
                    None => format!(
                        "no tracked flow; a rule of {} admits it{}",
                        groups_text(groups),
                        if last.tracked_after {
                            ", flow tracked from now on"
                        } else {
                            ""
                        }
                    ),
                };
                step(
                    "connection",
                    if policy_drop.is_some() { "drop" } else { "new" },
                    d,
                );
                if policy_drop.is_none() {
                    rules = admitting;
                } else if policy_drop == Some(DropReason::NoRule) {
                    ipv4_only = v4_only;
                }
            } else {
                let d = match policy_drop {
                    Some(x @ DropReason::NoEgressRule) => format!(
                        "no tracked flow; no egress rule of the source's groups allows it: {}",
                        x.name()
                    ),
                    Some(x) => format!("refused: {}", x.name()),
                    None if last.remote => format!(
                        "no tracked flow; the source's egress rules allow it{}; {}'s host judges it by its ingress rules",
                        if last.tracked_after {
                            ", flow tracked from now on for its reply"
                        } else {
                            ""
                        },
                        dst.ip
                    ),
                    None => format!(
                        "no tracked flow; to no instance of this host: the source's egress rules allow it{}",
                        if last.tracked_after {
                            ", flow tracked from now on for its reply"
                        } else {
                            ""
                        }
                    ),
                };
                step(
                    "connection",
                    if policy_drop.is_some() { "drop" } else { "new" },
                    d,
                );
            }
            if policy_drop.is_none() {
                match reason {
                    Some(r) => step("transmit", "drop", r.name().to_string()),
                    None => step("transmit", "ok", fate(last)),
                }
            }
        }
        let (verdict, reason_text) = match last.outcome {
            Outcome::Forwarded | Outcome::Answered | Outcome::Consumed => ("allowed", None),
            Outcome::Dropped(r) => ("dropped", Some(r.name().to_string())),
            Outcome::VxlanDropped(v) => ("dropped", Some(v.name().to_string())),
        };
        let (sport, dport) = packet_of(last).unwrap_or((0, 0));
        let with_port = |ip: IpAddr, port: u16| match ip {
            IpAddr::V4(x) => format!("{x}:{port}"),
            IpAddr::V6(x) => format!("[{x}]:{port}"),
        };
        let (src_text, dst_text) = match shape {
            Shape::Icmp(..) => (src.ip.to_string(), dst.ip.to_string()),
            _ => (with_port(src.ip, sport), with_port(dst.ip, dport)),
        };
        let (owner_out, groups_out) = match consulted {
            Some((o, g)) if !last.remote => (Some(o.0.clone()), g.to_vec()),
            _ => (None, Vec::new()),
        };
        Ok(Response::Trace {
            trace: Box::new(TraceReport {
                generation: run.generation,
                proto: a.proto.clone(),
                src: src_text,
                dst: dst_text,
                what,
                steps,
                verdict: verdict.into(),
                reason: reason_text,
                rules,
                ipv4_only,
                owner: owner_out,
                groups: groups_out,
            }),
        })
    }
}

fn opener_what(shape: Shape, icmp: IcmpNumbers) -> &'static str {
    match shape {
        Shape::Tcp(_) => "SYN",
        Shape::Udp(_) => "datagram",
        Shape::Icmp(t, 0) if t == icmp.request || t == icmp.reply => "echo request",
        Shape::Icmp(..) => "the datagram it refers to",
    }
}
