//! Parsing the EC2-tool style output of `sgswitch describe-group` (DESIGN §5).
//!
//! ```text
//! GROUP       OWNER  NAME    DESC
//! PERMISSION  NAME   ALLOWS  PROTO  FROM  TO  FROM  CIDR  CIDR
//! PERMISSION  NAME   ALLOWS  PROTO  FROM  TO  FROM  USER  OWNER  GRPNAME  G
//! ```
//!
//! Fields are tab separated; for protocol `all` the port fields are empty, ICMP
//! rules carry type and code there. The parser anchors on the `ALLOWS` and
//! `FROM` keywords, so an extra owner column after `PERMISSION` (as later EC2
//! tools printed) is tolerated; the group name is the field before `ALLOWS`.

/// One `GROUP` line of `describe-group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLine {
    pub owner: String,
    pub name: String,
    pub description: String,
}

/// Where a permission lets traffic in from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermSource {
    Cidr(String),
    Group { owner: String, group: String },
}

/// One `PERMISSION` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub group: String,
    pub proto: String,
    /// The two port fields (`FROM TO`, or ICMP `TYPE CODE`); both empty for `all`.
    pub ports: (String, String),
    pub source: PermSource,
}

impl Permission {
    /// A CIDR permission as `authorize` prints it.
    pub fn cidr(group: &str, proto: &str, from: &str, to: &str, cidr: &str) -> Permission {
        Permission {
            group: group.into(),
            proto: proto.into(),
            ports: (from.into(), to.into()),
            source: PermSource::Cidr(cidr.into()),
        }
    }

    /// A group-source permission.
    pub fn group(
        group: &str,
        proto: &str,
        from: &str,
        to: &str,
        owner: &str,
        src: &str,
    ) -> Permission {
        Permission {
            group: group.into(),
            proto: proto.into(),
            ports: (from.into(), to.into()),
            source: PermSource::Group {
                owner: owner.into(),
                group: src.into(),
            },
        }
    }
}

/// A malformed line, quoted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed describe-group line {0:?}")]
pub struct BadLine(pub String);

/// Parse a `GROUP` line with owner (describe-group form).
pub fn parse_group_line(line: &str) -> Result<GroupLine, BadLine> {
    let f: Vec<&str> = line.split('\t').collect();
    match f.as_slice() {
        ["GROUP", owner, name, rest @ ..] => Ok(GroupLine {
            owner: owner.to_string(),
            name: name.to_string(),
            description: rest.join("\t"),
        }),
        _ => Err(BadLine(line.into())),
    }
}

/// Parse a `PERMISSION` line.
pub fn parse_permission(line: &str) -> Result<Permission, BadLine> {
    let bad = || BadLine(line.into());
    let f: Vec<&str> = line.split('\t').collect();
    if f.first() != Some(&"PERMISSION") {
        return Err(bad());
    }
    let allows = f.iter().position(|&x| x == "ALLOWS").ok_or_else(bad)?;
    if allows < 2 {
        return Err(bad());
    }
    let group = f[allows - 1].to_string();
    let proto = f.get(allows + 1).ok_or_else(bad)?.to_string();
    let from = allows
        + 2
        + f[allows + 2..]
            .iter()
            .position(|&x| x == "FROM")
            .ok_or_else(bad)?;
    let ports = match &f[allows + 2..from] {
        [a, b] => (a.to_string(), b.to_string()),
        [] => (String::new(), String::new()),
        _ => return Err(bad()),
    };
    let source = match &f[from + 1..] {
        ["CIDR", cidr] => PermSource::Cidr(cidr.to_string()),
        ["USER", owner, "GRPNAME", g] => PermSource::Group {
            owner: owner.to_string(),
            group: g.to_string(),
        },
        _ => return Err(bad()),
    };
    Ok(Permission {
        group,
        proto,
        ports,
        source,
    })
}

/// Parse a whole `describe-group` output: groups in order, each with its
/// permissions. Any other line is an error.
pub fn parse_describe_group(out: &str) -> Result<Vec<(GroupLine, Vec<Permission>)>, BadLine> {
    let mut groups: Vec<(GroupLine, Vec<Permission>)> = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("GROUP\t") {
            groups.push((parse_group_line(line)?, Vec::new()));
        } else {
            let p = parse_permission(line)?;
            let Some((g, perms)) = groups.last_mut() else {
                return Err(BadLine(line.into()));
            };
            if g.name != p.group {
                return Err(BadLine(line.into()));
            }
            perms.push(p);
        }
    }
    Ok(groups)
}

/// The permissions of an `authorize`/`revoke` output (`GROUP NAME` then
/// `PERMISSION` lines); checks the `GROUP` line names `group`.
pub fn parse_edit_output(out: &str, group: &str) -> Result<Vec<Permission>, BadLine> {
    let mut lines = out.lines().filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let f: Vec<&str> = first.split('\t').collect();
    if f.first() != Some(&"GROUP") || f.last() != Some(&group) {
        return Err(BadLine(first.into()));
    }
    lines.map(parse_permission).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "GROUP\t598916040194\tdefault\tdefault group\n\
PERMISSION\tdefault\tALLOWS\tall\t\t\tFROM\tUSER\t598916040194\tGRPNAME\tdefault\n\
PERMISSION\tdefault\tALLOWS\ttcp\t22\t22\tFROM\tCIDR\t172.31.255.10/32\n\
PERMISSION\tdefault\tALLOWS\ticmp\t8\t-1\tFROM\tCIDR\t0.0.0.0/0\n\
GROUP\t598916040194\tweb\tweb tier\n";

    #[test]
    fn parses_groups_and_permissions() {
        let g = parse_describe_group(OUT).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0.owner, "598916040194");
        assert_eq!(g[0].0.name, "default");
        assert_eq!(g[0].0.description, "default group");
        assert_eq!(
            g[0].1,
            vec![
                Permission::group("default", "all", "", "", "598916040194", "default"),
                Permission::cidr("default", "tcp", "22", "22", "172.31.255.10/32"),
                Permission::cidr("default", "icmp", "8", "-1", "0.0.0.0/0"),
            ]
        );
        assert_eq!(g[1].0.name, "web");
        assert!(g[1].1.is_empty());
    }

    #[test]
    fn tolerates_an_owner_column_after_permission() {
        let p = parse_permission(
            "PERMISSION\t598916040194\tweb\tALLOWS\ttcp\t80\t80\tFROM\tCIDR\t0.0.0.0/0",
        )
        .unwrap();
        assert_eq!(p, Permission::cidr("web", "tcp", "80", "80", "0.0.0.0/0"));
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse_permission("PERMISSION\tweb\ttcp\t80\t80\tFROM\tCIDR\tx").is_err());
        assert!(parse_permission("PERMISSION\tweb\tALLOWS\ttcp\t80\tFROM\tCIDR\tx").is_err());
        assert!(parse_permission("PERMISSION\tweb\tALLOWS\ttcp\t80\t80\tFROM\tUSER\t1").is_err());
        assert!(
            parse_describe_group("PERMISSION\tweb\tALLOWS\tall\t\t\tFROM\tCIDR\t0.0.0.0/0\n")
                .is_err()
        );
        assert!(parse_describe_group("hello\n").is_err());
    }

    #[test]
    fn parses_edit_output() {
        let out = "GROUP\tdefault\nPERMISSION\tdefault\tALLOWS\ttcp\t22\t22\tFROM\tCIDR\t172.31.255.10/32\n";
        let p = parse_edit_output(out, "default").unwrap();
        assert_eq!(
            p,
            vec![Permission::cidr(
                "default",
                "tcp",
                "22",
                "22",
                "172.31.255.10/32"
            )]
        );
        assert!(parse_edit_output(out, "web").is_err());
    }
}
