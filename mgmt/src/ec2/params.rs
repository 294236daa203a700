//! Query-API parameters: form/query decoding and the request shapes of EC2.
//!
//! Contract:
//! * [`Params::parse`] merges the query string and (for
//!   `application/x-www-form-urlencoded` or untyped bodies) the body; `+` is a
//!   space in both, `%XX` escapes are decoded; names and values must be UTF-8.
//!   A name given twice keeps its first value.
//! * Lists are `Name.N` (and `Name.N.Field`): indices are taken in numeric
//!   order, gaps allowed, as EC2 does.
//! * [`permissions`] reads both shapes of Authorize/Revoke: the flat one
//!   (`IpProtocol`, `FromPort`, `ToPort`, `CidrIp`, `CidrIpv6` (an sgswitch
//!   extension: AWS's flat shape has no IPv6 field), `SourceSecurityGroupName`,
//!   `SourceSecurityGroupOwnerId`; boto3 with keyword arguments) and the indexed
//!   one (`IpPermissions.N.IpProtocol/FromPort/ToPort`,
//!   `IpPermissions.N.IpRanges.M.CidrIp`, `IpPermissions.N.Ipv6Ranges.M.CidrIpv6`,
//!   `IpPermissions.N.Groups.M.GroupName|GroupId|UserId`; awscli, boto 2).
//!   `IpProtocol=-1` means all protocols (ports ignored when absent or -1); for
//!   ICMP and ICMPv6 (`icmpv6` or `58`), FromPort/ToPort are type/code with -1 wildcards. Values are checked
//!   by the model's own validation ([`filter::model::RuleSpec::expand`]), so
//!   the messages are the CLI's.
//! * Errors are [`ApiError`]s with EC2 codes: `MissingParameter` naming the
//!   parameter, `InvalidParameterValue` naming the value.

use std::collections::BTreeMap;

use super::sigv4::percent_decode;
use crate::api::{ApiError, ErrorCode, GroupRef, Permission, SourceGroup, Tag};

/// Most parameters in one request.
pub const MAX_PARAMS: usize = 4096;

/// The decoded parameters of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

pub fn missing(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::MissingParameter,
        format!("the request must contain the parameter {name}"),
    )
}

pub fn invalid(msg: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameterValue, msg)
}

fn decode(s: &str) -> Result<String, ApiError> {
    String::from_utf8(percent_decode(s, true)).map_err(|_| {
        invalid(format!(
            "parameter '{}' is not UTF-8 once decoded",
            s.chars().take(64).collect::<String>()
        ))
    })
}

impl Params {
    /// Decode the query string and a form body.
    pub fn parse(query: &str, body: &[u8], content_type: Option<&str>) -> Result<Params, ApiError> {
        let mut p = Params::default();
        p.add_form(query)?;
        let form = content_type.is_none_or(|t| {
            t.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
        if !body.is_empty() {
            if !form {
                return Err(invalid(format!(
                    "unsupported Content-Type '{}': send application/x-www-form-urlencoded",
                    content_type.unwrap_or_default().escape_default()
                )));
            }
            let text = std::str::from_utf8(body)
                .map_err(|_| invalid("the request body is not UTF-8".into()))?;
            p.add_form(text)?;
        }
        Ok(p)
    }

    fn add_form(&mut self, text: &str) -> Result<(), ApiError> {
        for pair in text.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (decode(k)?, decode(v)?);
            if self.map.len() >= MAX_PARAMS {
                return Err(invalid(format!("more than {MAX_PARAMS} parameters")));
            }
            self.map.entry(k).or_insert(v);
        }
        Ok(())
    }

    /// From `(name, value)` pairs (tests, and callers that built them).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::default();
        for (k, v) in pairs {
            p.map
                .entry((*k).to_owned())
                .or_insert_with(|| (*v).to_owned());
        }
        p
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| missing(name))
    }

    /// Whether any parameter starts with `prefix`.
    pub fn any_with_prefix(&self, prefix: &str) -> bool {
        self.map
            .range(prefix.to_owned()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    /// The indices N of `prefix.N` and `prefix.N.…`, ascending.
    pub fn indices(&self, prefix: &str) -> Vec<u64> {
        let dotted = format!("{prefix}.");
        let mut out: Vec<u64> = self
            .map
            .range(dotted.clone()..)
            .take_while(|(k, _)| k.starts_with(&dotted))
            .filter_map(|(k, _)| {
                let rest = &k[dotted.len()..];
                let n = rest.split('.').next().unwrap_or("");
                n.parse().ok()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The values of `prefix.1`, `prefix.2`, … in index order.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.indices(prefix)
            .into_iter()
            .filter_map(|n| self.get(&format!("{prefix}.{n}")).map(str::to_owned))
            .collect()
    }

    /// `Filter.N.Name` with its `Filter.N.Value.M` values.
    pub fn filters(&self) -> Result<Vec<(String, Vec<String>)>, ApiError> {
        let mut out = Vec::new();
        for n in self.indices("Filter") {
            let name = self.required(&format!("Filter.{n}.Name"))?.to_owned();
            out.push((name, self.list(&format!("Filter.{n}.Value"))));
        }
        Ok(out)
    }

    /// The target group: `GroupId` if given, else `GroupName`.
    pub fn target_group(&self) -> Result<GroupRef, ApiError> {
        match (self.get("GroupId"), self.get("GroupName")) {
            (Some(id), _) => Ok(GroupRef::Id(id.to_owned())),
            (None, Some(name)) => Ok(GroupRef::Name(name.to_owned())),
            (None, None) => Err(missing("GroupName or GroupId")),
        }
    }
}

/// `TagSpecification.N` of resource type `kind`: its tags (other resource
/// types, e.g. RunInstances' `volume`, are sgswitch's to ignore).
pub fn tag_specs(p: &Params, kind: &str) -> Result<Vec<Tag>, ApiError> {
    let mut out = Vec::new();
    for n in p.indices("TagSpecification") {
        let base = format!("TagSpecification.{n}");
        let ty = p.required(&format!("{base}.ResourceType"))?;
        if ty != kind {
            continue;
        }
        out.extend(tags(p, &format!("{base}.Tag"))?);
    }
    Ok(out)
}

/// `PREFIX.N.Key` / `PREFIX.N.Value` pairs (a missing value is empty).
pub fn tags(p: &Params, prefix: &str) -> Result<Vec<Tag>, ApiError> {
    p.indices(prefix)
        .into_iter()
        .map(|m| {
            Ok(Tag {
                key: p.required(&format!("{prefix}.{m}.Key"))?.to_owned(),
                value: p
                    .get(&format!("{prefix}.{m}.Value"))
                    .unwrap_or_default()
                    .to_owned(),
            })
        })
        .collect()
}

/// An integer parameter.
pub fn int(name: &str, v: &str) -> Result<i64, ApiError> {
    v.trim().parse().map_err(|_| {
        invalid(format!(
            "invalid value '{}' for {name}: not an integer",
            v.escape_default()
        ))
    })
}

/// Protocol and port fields of one permission in the CLI's terms.
fn ports_of(
    what: &str,
    proto: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let from = from
        .map(|v| int(&format!("{what}FromPort"), v))
        .transpose()?;
    let to = to.map(|v| int(&format!("{what}ToPort"), v)).transpose()?;
    match proto.to_ascii_lowercase().as_str() {
        "-1" | "all" => match (from, to) {
            (None | Some(-1), None | Some(-1)) => Ok((None, None)),
            _ => Err(invalid(format!(
                "invalid ports {}..{} for protocol -1 (all): it has no ports",
                from.unwrap_or(-1),
                to.unwrap_or(-1)
            ))),
        },
        "icmp" | "1" | "icmpv6" | "58" => {
            let v = |x: Option<i64>| x.unwrap_or(-1).to_string();
            Ok((None, Some(format!("{}:{}", v(from), v(to)))))
        }
        p => match (from, to) {
            (Some(-1), Some(-1)) => Ok((Some("-1".into()), None)),
            (Some(f), Some(t)) if f >= 0 && t >= 0 => Ok((Some(format!("{f}-{t}")), None)),
            (Some(f), Some(t)) => Err(invalid(format!(
                "invalid port range {f}..{t}: ports are 0 to 65535"
            ))),
            // EC2's answer, word for word, for TCP/UDP without both ports.
            _ if matches!(p, "tcp" | "udp" | "6" | "17") => Err(invalid(format!(
                "Invalid value for portRange. Must specify both from and to ports with TCP/UDP. ({what}FromPort and {what}ToPort)"
            ))),
            (None, None) => Ok((None, None)),
            (Some(_), None) => Err(missing(&format!("{what}ToPort"))),
            (None, Some(_)) => Err(missing(&format!("{what}FromPort"))),
        },
    }
}

/// A `CidrIp` (`v6`: `CidrIpv6`) must carry its prefix length: EC2 refuses
/// `1.2.3.4` (the CLI's `-s 1.2.3.4` is a /32, but not here), and must be of
/// its parameter's family (`CidrIp=::/0` is refused, as AWS does).
fn cidr_of(name: &str, v: &str, v6: bool) -> Result<String, ApiError> {
    if !v.contains('/') {
        let len = if v6 { "/128" } else { "/32" };
        return Err(invalid(format!(
            "CIDR block {} is malformed ({name}: a prefix length such as {len} is required)",
            v.escape_default()
        )));
    }
    if v.contains(':') != v6 {
        let family = if v6 { "IPv6" } else { "IPv4" };
        return Err(invalid(format!(
            "CIDR block {} is malformed ({name}: an {family} CIDR is required)",
            v.escape_default()
        )));
    }
    Ok(v.to_owned())
}

/// The permissions of an Authorize/Revoke request, in either shape (indexed
/// first when both are present). Empty when none is given.
pub fn permissions(p: &Params) -> Result<Vec<Permission>, ApiError> {
    let mut out = Vec::new();
    for n in p.indices("IpPermissions") {
        let base = format!("IpPermissions.{n}.");
        let proto_key = format!("{base}IpProtocol");
        let proto = p.required(&proto_key)?;
        if p.any_with_prefix(&format!("{base}PrefixListIds.")) {
            return Err(invalid(format!(
                "{base}PrefixListIds is not supported: sgswitch rules are CIDRs and groups"
            )));
        }
        let (ports, icmp) = ports_of(
            &base,
            proto,
            p.get(&format!("{base}FromPort")),
            p.get(&format!("{base}ToPort")),
        )?;
        // Each source with its description: one permission per described
        // source (the core stores a description per rule).
        let mut described: Vec<(Option<String>, SourceGroup, String)> = Vec::new();
        let mut cidrs = Vec::new();
        let ranges = p
            .indices(&format!("{base}IpRanges"))
            .into_iter()
            .map(|m| (format!("{base}IpRanges.{m}."), "CidrIp"));
        let ranges6 = p
            .indices(&format!("{base}Ipv6Ranges"))
            .into_iter()
            .map(|m| (format!("{base}Ipv6Ranges.{m}."), "CidrIpv6"));
        for (item, field) in ranges.chain(ranges6) {
            let name = format!("{item}{field}");
            let c = cidr_of(&name, p.required(&name)?, field == "CidrIpv6")?;
            match p.get(&format!("{item}Description")) {
                Some(d) => described.push((
                    Some(c),
                    SourceGroup {
                        group: GroupRef::Name(String::new()),
                        owner: None,
                    },
                    d.to_owned(),
                )),
                None => cidrs.push(c),
            }
        }
        let mut groups = Vec::new();
        for m in p.indices(&format!("{base}Groups")) {
            let g = format!("{base}Groups.{m}.");
            let group = match (
                p.get(&format!("{g}GroupId")),
                p.get(&format!("{g}GroupName")),
            ) {
                (Some(id), _) => GroupRef::Id(id.to_owned()),
                (None, Some(name)) => GroupRef::Name(name.to_owned()),
                (None, None) => return Err(missing(&format!("{g}GroupName or {g}GroupId"))),
            };
            let sg = SourceGroup {
                group,
                owner: p.get(&format!("{g}UserId")).map(str::to_owned),
            };
            match p.get(&format!("{g}Description")) {
                Some(d) => described.push((None, sg, d.to_owned())),
                None => groups.push(sg),
            }
        }
        let plain = !cidrs.is_empty() || !groups.is_empty() || described.is_empty();
        if plain {
            out.push(Permission {
                proto: Some(proto.to_owned()),
                ports: ports.clone(),
                icmp: icmp.clone(),
                cidrs,
                groups,
                description: None,
            });
        }
        for (c, sg, d) in described {
            out.push(Permission {
                proto: Some(proto.to_owned()),
                ports: ports.clone(),
                icmp: icmp.clone(),
                cidrs: c.into_iter().collect(),
                groups: if matches!(&sg.group, GroupRef::Name(n) if n.is_empty()) {
                    Vec::new()
                } else {
                    vec![sg]
                },
                description: Some(d),
            });
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let flat = [
        "IpProtocol",
        "FromPort",
        "ToPort",
        "CidrIp",
        "CidrIpv6",
        "SourceSecurityGroupName",
        "SourceSecurityGroupOwnerId",
    ];
    if !flat.iter().any(|k| p.get(k).is_some()) {
        return Ok(out);
    }
    let proto = p.get("IpProtocol").unwrap_or("-1");
    let (ports, icmp) = ports_of("", proto, p.get("FromPort"), p.get("ToPort"))?;
    let groups = match (
        p.get("SourceSecurityGroupName"),
        p.get("SourceSecurityGroupOwnerId"),
    ) {
        (Some(name), owner) => vec![SourceGroup {
            group: if name.starts_with("sg-") && p.get("SourceSecurityGroupOwnerId").is_none() {
                GroupRef::Id(name.to_owned())
            } else {
                GroupRef::Name(name.to_owned())
            },
            owner: owner.map(str::to_owned),
        }],
        (None, Some(_)) => return Err(missing("SourceSecurityGroupName")),
        (None, None) => Vec::new(),
    };
    out.push(Permission {
        proto: Some(proto.to_owned()),
        ports,
        icmp,
        cidrs: [("CidrIp", false), ("CidrIpv6", true)]
            .into_iter()
            .filter_map(|(name, v6)| p.get(name).map(|v| cidr_of(name, v, v6)))
            .collect::<Result<_, _>>()?,
        groups,
        description: None,
    });
    Ok(out)
}

/// Longest filter value matched with wildcards (longer ones literally).
pub const MAX_PATTERN: usize = 1024;

/// One token of a filter pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

/// `*` and `?` wildcards of EC2 filter values (`\` escapes one character).
///
/// Linear in practice and never worse than `pattern × text` steps: the
/// greedy two-pointer match that only ever backtracks to the *last* `*` (a
/// later `*` makes every earlier choice final), so no input is exponential
/// (the recursive matcher it replaced took seconds on `*a*a*a*a*a*a*a*ab`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    // Bounded: a pattern longer than any EC2 value is compared literally.
    if pattern.len() > MAX_PATTERN {
        return pattern == text;
    }
    let mut p: Vec<Tok> = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        p.push(match c {
            '*' => Tok::Star,
            '?' => Tok::Any,
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            c => Tok::Lit(c),
        });
    }
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // (pattern index after the last star, text index it is matched up to).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(Tok::Star) => {
                pi += 1;
                star = Some((pi, ti));
            }
            Some(Tok::Any) => {
                pi += 1;
                ti += 1;
            }
            Some(Tok::Lit(c)) if *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last star take one more character, retry after it.
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|t| *t == Tok::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(proto: &str) -> Permission {
        Permission {
            proto: Some(proto.into()),
            ..Permission::default()
        }
    }

    #[test]
    fn form_and_query_are_decoded_and_merged() {
        let p = Params::parse(
            "Action=DescribeSecurityGroups&GroupName.2=b",
            b"Version=2016-11-15&GroupName.1=a+b%2Fc&GroupName.10=z&Action=Ignored",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
        )
        .unwrap();
        assert_eq!(
            p.get("Action"),
            Some("DescribeSecurityGroups"),
            "first wins"
        );
        assert_eq!(p.list("GroupName"), ["a b/c", "b", "z"], "numeric order");
        assert_eq!(p.required("Nope").unwrap_err().code, "MissingParameter");
        assert!(Params::parse("", b"{\"json\":1}", Some("application/json")).is_err());
        assert!(Params::parse("", b"a=%ff", None).is_err(), "not UTF-8");
    }

    #[test]
    fn indexed_shape_of_awscli_and_boto2() {
        let p = Params::from_pairs(&[
            ("GroupName", "web"),
            ("IpPermissions.1.IpProtocol", "tcp"),
            ("IpPermissions.1.FromPort", "22"),
            ("IpPermissions.1.ToPort", "22"),
            ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/8"),
            ("IpPermissions.1.IpRanges.2.CidrIp", "192.168.1.7/32"),
            ("IpPermissions.2.IpProtocol", "icmp"),
            ("IpPermissions.2.FromPort", "8"),
            ("IpPermissions.2.ToPort", "-1"),
            ("IpPermissions.2.Groups.1.GroupName", "app"),
            ("IpPermissions.2.Groups.1.UserId", "444455556666"),
            ("IpPermissions.2.Groups.2.GroupId", "sg-0000abcd"),
            ("IpPermissions.3.IpProtocol", "-1"),
        ]);
        let got = permissions(&p).unwrap();
        assert_eq!(
            got,
            vec![
                Permission {
                    ports: Some("22-22".into()),
                    cidrs: vec!["10.0.0.0/8".into(), "192.168.1.7/32".into()],
                    ..perm("tcp")
                },
                Permission {
                    icmp: Some("8:-1".into()),
                    groups: vec![
                        SourceGroup {
                            group: GroupRef::Name("app".into()),
                            owner: Some("444455556666".into())
                        },
                        SourceGroup {
                            group: GroupRef::Id("sg-0000abcd".into()),
                            owner: None
                        },
                    ],
                    ..perm("icmp")
                },
                perm("-1"),
            ]
        );
        assert_eq!(p.target_group().unwrap(), GroupRef::Name("web".into()));
    }

    #[test]
    fn ipv6_ranges_in_both_shapes_and_icmpv6_type_code() {
        let p = Params::from_pairs(&[
            ("IpPermissions.1.IpProtocol", "-1"),
            ("IpPermissions.1.IpRanges.1.CidrIp", "0.0.0.0/0"),
            ("IpPermissions.1.Ipv6Ranges.1.CidrIpv6", "::/0"),
            ("IpPermissions.1.Ipv6Ranges.2.CidrIpv6", "2001:db8::/32"),
            ("IpPermissions.1.Ipv6Ranges.2.Description", "lab"),
            ("IpPermissions.2.IpProtocol", "58"),
            ("IpPermissions.2.FromPort", "128"),
            ("IpPermissions.2.ToPort", "-1"),
            ("IpPermissions.2.Ipv6Ranges.1.CidrIpv6", "fd00::/8"),
        ]);
        assert_eq!(
            permissions(&p).unwrap(),
            vec![
                Permission {
                    cidrs: vec!["0.0.0.0/0".into(), "::/0".into()],
                    ..perm("-1")
                },
                Permission {
                    cidrs: vec!["2001:db8::/32".into()],
                    description: Some("lab".into()),
                    ..perm("-1")
                },
                Permission {
                    icmp: Some("128:-1".into()),
                    cidrs: vec!["fd00::/8".into()],
                    ..perm("58")
                },
            ]
        );
        let p = Params::from_pairs(&[
            ("IpProtocol", "icmpv6"),
            ("FromPort", "1"),
            ("ToPort", "4"),
            ("CidrIpv6", "2001:db8::/48"),
        ]);
        assert_eq!(
            permissions(&p).unwrap(),
            vec![Permission {
                icmp: Some("1:4".into()),
                cidrs: vec!["2001:db8::/48".into()],
                ..perm("icmpv6")
            }]
        );
    }

    #[test]
    fn flat_shape_of_boto3_keyword_arguments() {
        let p = Params::from_pairs(&[
            ("GroupId", "sg-12345678"),
            ("IpProtocol", "udp"),
            ("FromPort", "53"),
            ("ToPort", "54"),
            ("CidrIp", "0.0.0.0/0"),
        ]);
        assert_eq!(
            permissions(&p).unwrap(),
            vec![Permission {
                ports: Some("53-54".into()),
                cidrs: vec!["0.0.0.0/0".into()],
                ..perm("udp")
            }]
        );
        assert_eq!(
            p.target_group().unwrap(),
            GroupRef::Id("sg-12345678".into())
        );
        // A source group alone: all protocols.
        let p = Params::from_pairs(&[
            ("GroupName", "db"),
            ("SourceSecurityGroupName", "app"),
            ("SourceSecurityGroupOwnerId", "111122223333"),
        ]);
        assert_eq!(
            permissions(&p).unwrap(),
            vec![Permission {
                groups: vec![SourceGroup {
                    group: GroupRef::Name("app".into()),
                    owner: Some("111122223333".into())
                }],
                ..perm("-1")
            }]
        );
        // Nothing at all: no permissions (the core answers MissingParameter).
        assert!(
            permissions(&Params::from_pairs(&[("GroupName", "x")]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn shape_errors_name_the_parameter_or_value() {
        let e = |pairs: &[(&str, &str)]| permissions(&Params::from_pairs(pairs)).unwrap_err();
        let err = e(&[("IpPermissions.1.FromPort", "1")]);
        assert_eq!(err.code, "MissingParameter");
        assert!(
            err.message.contains("IpPermissions.1.IpProtocol"),
            "{}",
            err.message
        );
        let err = e(&[("IpProtocol", "tcp"), ("FromPort", "x")]);
        assert_eq!(err.code, "InvalidParameterValue");
        assert!(err.message.contains("'x'"), "{}", err.message);
        for ports in [&[("FromPort", "1")][..], &[("ToPort", "1")], &[]] {
            let mut pairs = vec![("IpProtocol", "tcp"), ("CidrIp", "1.2.3.4/32")];
            pairs.extend_from_slice(ports);
            let err = e(&pairs);
            assert_eq!(err.code, "InvalidParameterValue", "{ports:?}");
            assert!(
                err.message.starts_with(
                    "Invalid value for portRange. Must specify both from and to ports with TCP/UDP."
                ),
                "{}",
                err.message
            );
        }
        let err = e(&[("IpProtocol", "-1"), ("CidrIp", "123.123.123.123")]);
        assert_eq!(err.code, "InvalidParameterValue");
        assert!(
            err.message
                .starts_with("CIDR block 123.123.123.123 is malformed"),
            "{}",
            err.message
        );
        assert_eq!(
            e(&[
                ("IpPermissions.1.IpProtocol", "-1"),
                ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.1")
            ])
            .code,
            "InvalidParameterValue"
        );
        assert_eq!(
            e(&[("IpProtocol", "-1"), ("FromPort", "1"), ("ToPort", "2")]).code,
            "InvalidParameterValue"
        );
        assert_eq!(
            e(&[("IpProtocol", "tcp"), ("FromPort", "-5"), ("ToPort", "2")]).code,
            "InvalidParameterValue"
        );
        // Each range parameter takes its own family only, named in the error.
        for (k, v) in [
            ("IpPermissions.1.Ipv6Ranges.1.CidrIpv6", "10.0.0.0/8"),
            ("IpPermissions.1.IpRanges.1.CidrIp", "::/0"),
            ("IpPermissions.1.Ipv6Ranges.1.CidrIpv6", "2001:db8::1"),
            ("CidrIpv6", "10.0.0.0/8"),
            ("CidrIp", "2001:db8::/32"),
        ] {
            let proto = if k.starts_with("Ip") {
                "IpPermissions.1.IpProtocol"
            } else {
                "IpProtocol"
            };
            let err = e(&[(proto, "-1"), (k, v)]);
            assert_eq!(err.code, "InvalidParameterValue", "{k}={v}");
            assert!(
                err.message.contains(v) && err.message.contains(k.rsplit('.').next().unwrap()),
                "{}",
                err.message
            );
        }
        assert_eq!(
            e(&[
                ("IpPermissions.1.IpProtocol", "-1"),
                ("IpPermissions.1.PrefixListIds.1.PrefixListId", "pl-1")
            ])
            .code,
            "InvalidParameterValue"
        );
        assert_eq!(
            e(&[
                ("IpPermissions.1.IpProtocol", "-1"),
                ("IpPermissions.1.IpRanges.1.Description", "d")
            ])
            .code,
            "MissingParameter"
        );
        assert_eq!(
            Params::default().target_group().unwrap_err().code,
            "MissingParameter"
        );
    }

    #[test]
    fn filters_and_wildcards() {
        let p = Params::from_pairs(&[
            ("Filter.1.Name", "group-name"),
            ("Filter.1.Value.1", "web*"),
            ("Filter.1.Value.2", "d?"),
            ("Filter.2.Name", "owner-id"),
        ]);
        assert_eq!(
            p.filters().unwrap(),
            vec![
                (
                    "group-name".to_owned(),
                    vec!["web*".to_owned(), "d?".to_owned()]
                ),
                ("owner-id".to_owned(), vec![])
            ]
        );
        assert!(
            glob_match("web*", "web-tier") && glob_match("d?", "db") && !glob_match("d?", "dbx")
        );
        assert!(glob_match("a\\*", "a*") && !glob_match("a\\*", "ab"));
        assert!(glob_match("*", "") && glob_match("**a**", "xxa"));
        assert!(glob_match("a*b*c", "aXbYbZc") && !glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("*x?z", "xyzxaz") && !glob_match("*x?z", "xyzxz"));
        assert!(glob_match("\\?", "?") && !glob_match("\\?", "a") && glob_match("é*ü", "éaü"));
    }

    /// The recursive matcher took ~12 s on this (exponential backtracking);
    /// every pattern × text is now at most their product in steps.
    #[test]
    fn wildcard_match_time_is_bounded_on_hostile_patterns() {
        let description = "a".repeat(60);
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert!(!glob_match("*a*a*a*a*a*a*a*ab", &description));
            assert!(glob_match("*a*a*a*a*a*a*a*a", &description));
        }
        let long = "*a".repeat(MAX_PATTERN / 2) + "b";
        assert!(!glob_match(&long, &"a".repeat(1024)));
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    }
}
