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
//!   address. An address of an instance is that instance (its port); any other
//!   address sends from the uplink. The destination's rules are shown only to
//!   their owner: an address of another owner's instance as destination is
//!   `InvalidParameterValue`.
//! * Bad input (unknown instance, bad address, protocol, port or ICMP
//!   type:code, both `--established` and `--reply-of`) is an error naming the
//!   value; nothing changes either way.

use std::net::Ipv4Addr;

use filter::model::Owner;
use filter::wire::{self, Endpoint};
use filter::{DropReason, ErrorCode, Mac, parse_frame, proto, tcp_flags};
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
}

/// A frame to trace and where it enters.
type Frame = (Ingress, Vec<u8>);

/// One end of the traced packet.
#[derive(Clone, Debug)]
struct End {
    ip: Ipv4Addr,
    /// Instance id when the address is an instance's.
    instance: Option<String>,
    mac: Mac,
}

impl End {
    fn ingress(&self) -> Ingress {
        match self.instance {
            Some(_) => Ingress::Instance(self.ip),
            None => Ingress::Uplink,
        }
    }
    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.mac, self.ip)
    }
    fn name(&self) -> String {
        match &self.instance {
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

fn is_icmp_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

impl Core {
    fn trace_end(&self, owner: &Owner, what: &str, arg: &str) -> Result<End, ApiError> {
        if arg.starts_with("i-") {
            return match self.model.instances().get(arg) {
                Some(i) if i.owner == *owner => Ok(End {
                    ip: i.ip,
                    instance: Some(i.id.clone()),
                    mac: i.mac,
                }),
                _ => Err(ApiError::new(
                    ErrorCode::InvalidInstanceIdNotFound,
                    format!("the instance ID '{}' does not exist", arg.escape_default()),
                )),
            };
        }
        let ip: Ipv4Addr = arg.parse().map_err(|_| {
            bad(format!(
                "invalid {what} '{}': expected an instance id (i-...) or an IPv4 address",
                arg.escape_default()
            ))
        })?;
        match self.model.instances().values().find(|i| i.ip == ip) {
            Some(i) => Ok(End {
                ip,
                instance: Some(i.id.clone()),
                mac: i.mac,
            }),
            None => Ok(End {
                ip,
                instance: None,
                mac: OUTSIDE_MAC,
            }),
        }
    }

    /// Answer `trace` (see the module docs).
    pub(super) fn trace(&mut self, owner: &Owner, a: TraceArgs) -> Result<Response, ApiError> {
        let shape = match a.proto.as_str() {
            "tcp" | "udp" => {
                if a.icmp.is_some() {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameterCombination,
                        format!("an ICMP type:code with protocol '{}'", a.proto),
                    ));
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
            "icmp" => {
                if a.port.is_some() {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameterCombination,
                        "a port with protocol 'icmp' (use -t TYPE:CODE)".to_string(),
                    ));
                }
                let (t, c) = parse_icmp(a.icmp.as_deref().unwrap_or("8:0"))?;
                Shape::Icmp(t, c)
            }
            other => {
                return Err(bad(format!(
                    "invalid protocol '{}' for trace: expected tcp, udp or icmp",
                    other.escape_default()
                )));
            }
        };
        if a.established && a.reply_of {
            return Err(ApiError::new(
                ErrorCode::InvalidParameterCombination,
                "--established and --reply-of together".to_string(),
            ));
        }
        let src = self.trace_end(owner, "source", &a.from)?;
        let dst = self.trace_end(owner, "destination", &a.to)?;
        if let Some(id) = &dst.instance
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

        // The frames: ARP for the next hop, the opening frame, the packet.
        let subnet = self.cfg.subnet;
        let gateway = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
        let next_hop = if subnet.contains(&dst.ip) || src.instance.is_none() {
            dst.ip
        } else {
            gateway
        };
        let mut frames = vec![(src.ingress(), wire::arp_request(src.endpoint(), next_hop))];
        // The destination MAC a real sender would use: the ARP answer is read
        // back below; until then the instance's MAC or the gateway's.
        let dst_mac = match &dst.instance {
            Some(_) => dst.mac,
            None => switch::arp::GATEWAY_MAC,
        };
        let (s_ep, d_ep) = (src.endpoint(), Endpoint::new(dst_mac, dst.ip));
        let back = (
            Endpoint::new(dst.mac, dst.ip),
            Endpoint::new(
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
                if a.reply_of {
                    let open = wire::tcp(back.0, back.1, EPHEMERAL_PORT, p, tcp_flags::SYN, &[]);
                    let pkt = wire::tcp(
                        s_ep,
                        d_ep,
                        p,
                        EPHEMERAL_PORT,
                        tcp_flags::SYN | tcp_flags::ACK,
                        &[],
                    );
                    (Some((dst.ingress(), open)), pkt, "SYN+ACK".into())
                } else if a.established {
                    let open = wire::tcp(s_ep, d_ep, EPHEMERAL_PORT, p, tcp_flags::SYN, &[]);
                    let pkt = wire::tcp(s_ep, d_ep, EPHEMERAL_PORT, p, tcp_flags::ACK, &[]);
                    (Some((src.ingress(), open)), pkt, "ACK".into())
                } else {
                    let pkt = wire::tcp(s_ep, d_ep, EPHEMERAL_PORT, p, tcp_flags::SYN, &[]);
                    (None, pkt, "SYN".into())
                }
            }
            Shape::Udp(p) => {
                if a.reply_of {
                    let open = wire::udp(back.0, back.1, EPHEMERAL_PORT, p, b"trace");
                    let pkt = wire::udp(s_ep, d_ep, p, EPHEMERAL_PORT, b"trace");
                    (Some((dst.ingress(), open)), pkt, "datagram".into())
                } else if a.established {
                    let open = wire::udp(s_ep, d_ep, EPHEMERAL_PORT, p, b"trace");
                    let pkt = wire::udp(s_ep, d_ep, EPHEMERAL_PORT, p, b"trace");
                    (Some((src.ingress(), open)), pkt, "datagram".into())
                } else {
                    let pkt = wire::udp(s_ep, d_ep, EPHEMERAL_PORT, p, b"trace");
                    (None, pkt, "datagram".into())
                }
            }
            Shape::Icmp(t, c) => {
                let what = format!("type {t} code {c}");
                if is_icmp_error(t) {
                    // The datagram the error quotes: one `dst` sent to `src`.
                    let orig = wire::udp(back.0, back.1, EPHEMERAL_PORT, 33434, b"trace");
                    let pkt = wire::icmp_error(s_ep, d_ep, t, c, &orig);
                    let open = (a.reply_of || a.established).then(|| (dst.ingress(), orig));
                    (open, pkt, what)
                } else if t == 0 && c == 0 && a.reply_of {
                    let open = wire::icmp_echo(back.0, back.1, true, ICMP_ID, 1, b"trace");
                    let pkt = wire::icmp_echo(s_ep, d_ep, false, ICMP_ID, 1, b"trace");
                    (Some((dst.ingress(), open)), pkt, what)
                } else {
                    let msg = wire::icmp_message(t, c, [0x53, 0x47, 0, 1], b"trace");
                    let pkt =
                        wire::ipv4_frame(s_ep, d_ep, proto::ICMP, &wire::IpOpts::default(), &msg);
                    let open = if a.established && t == 8 {
                        Some((src.ingress(), pkt.clone()))
                    } else if a.reply_of || a.established {
                        return Err(ApiError::new(
                            ErrorCode::InvalidParameterCombination,
                            format!(
                                "--reply-of/--established with ICMP type {t}:{c}: only echo replies (0:0) answer, only echo requests (8:0) repeat, errors (3, 4, 5, 11, 12) refer to a flow"
                            ),
                        ));
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
        let arp = &run.frames[0];
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
        let fate = |t: &Traced| match t.outcome {
            Outcome::Forwarded => match &t.delivered {
                Some((_, _, Some(ip))) => format!(
                    "delivered to {}",
                    inst_of(*ip).map_or(ip.to_string(), |id| format!("{id} ({ip})"))
                ),
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
                    opener_what(shape),
                    fate(o)
                )
            } else {
                format!(
                    "the packet that opened this flow ({}), {}",
                    opener_what(shape),
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
                    | DropReason::UplinkSpoof
                    | DropReason::RogueDhcp
                    | DropReason::VlanTagged
                    | DropReason::BadOffload
            )
        });
        match (&src.instance, source_drop) {
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
                    "from the uplink: {} is neither an instance's address nor the gateway's",
                    src.ip
                ),
            ),
        }
        // ARP.
        let arp_text = match (arp.outcome, &arp.answer) {
            (Outcome::Answered, Some(ans)) => {
                let mac = match parse_frame(ans) {
                    Ok(filter::Parsed::Arp { arp, .. }) => format_mac(&arp.sha),
                    _ => "?".into(),
                };
                (
                    "answered",
                    format!("who-has {next_hop}: the switch answers {mac}"),
                )
            }
            (Outcome::Forwarded, _) => (
                "ok",
                format!("who-has {next_hop}: not an instance, passed to the uplink"),
            ),
            (Outcome::Dropped(r), _) => ("drop", format!("who-has {next_hop}: {}", r.name())),
            (o, _) => ("ok", format!("who-has {next_hop}: {o:?}")),
        };
        step("arp", arp_text.0, arp_text.1);
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
                None => match &dst.instance {
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
        let consulted = last
            .packet
            .as_ref()
            .and_then(|p| filter::explain::consulted_groups(&self.model, p));
        let groups_text = |g: &[String]| g.join(", ");
        let mut rules = Vec::new();
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
                if policy_drop.is_none()
                    && let Some(p) = &last.packet
                {
                    rules = filter::explain::matching_rules(&self.model, p)
                        .into_iter()
                        .map(|m| TraceRule {
                            group: m.group.to_owned(),
                            rule: m.rule.clone(),
                        })
                        .collect();
                }
            } else {
                let d = match policy_drop {
                    Some(x) => format!("refused: {}", x.name()),
                    None => "to no instance of this host: egress is not filtered".to_string(),
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
        let (sport, dport) = match last.packet {
            Some(p) => (p.key.sport, p.key.dport),
            None => (0, 0),
        };
        let (src_text, dst_text) = match shape {
            Shape::Icmp(..) => (src.ip.to_string(), dst.ip.to_string()),
            _ => (format!("{}:{sport}", src.ip), format!("{}:{dport}", dst.ip)),
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
                owner: owner_out,
                groups: groups_out,
            }),
        })
    }
}

fn opener_what(shape: Shape) -> &'static str {
    match shape {
        Shape::Tcp(_) => "SYN",
        Shape::Udp(_) => "datagram",
        Shape::Icmp(0, 0) => "echo request",
        Shape::Icmp(8, 0) => "echo request",
        Shape::Icmp(..) => "the datagram it refers to",
    }
}
