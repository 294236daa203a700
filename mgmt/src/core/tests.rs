//! Tests of the management core: every command in-process, every EC2 error code
//! with the state byte-identical before and after, rollback of failed launches,
//! and reload after a restart.

use filter::model::{Ports, Proto, RuleSpec, Source};

use super::*;
use crate::api::Command;
use crate::store::format_mac;
use crate::testutil::*;

fn spec(proto: &str, ports: &str, cidr: &str) -> RuleSpec {
    RuleSpec {
        proto: Some(proto.into()),
        ports: Some(ports.into()),
        cidrs: vec![cidr.into()],
        ..RuleSpec::default()
    }
}

fn group_spec(group: &str, owner: Option<&str>) -> RuleSpec {
    RuleSpec {
        groups: vec![(group.into(), owner.map(Into::into))],
        ..RuleSpec::default()
    }
}

fn add_group(name: &str) -> Command {
    Command::AddGroup {
        name: name.into(),
        description: format!("{name} servers"),
    }
}

fn run(count: u32, groups: &[&str]) -> Command {
    Command::RunInstances {
        ami: "ami-eca54085".into(),
        count,
        groups: groups.iter().map(|&s| s.into()).collect(),
        min_count: None,
        qemu: Some(false),
        client_token: None,
    }
}

fn launched_ids(r: &Reply) -> Vec<String> {
    match r {
        Ok(Response::Reservations { reservations }) => reservations
            .iter()
            .flat_map(|res| res.instances.iter().map(|i| i.id.clone()))
            .collect(),
        other => panic!("expected reservations, got {other:?}"),
    }
}

#[test]
fn default_group_exists_for_the_default_owner_at_start() {
    let dir = TempDir::new("core-default");
    let mut core = core_in(&dir, config());
    let r = core
        .handle(req(Command::DescribeGroups { groups: vec![] }))
        .unwrap();
    let Response::Groups { groups } = r else {
        panic!("{r:?}")
    };
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "default");
    assert_eq!(groups[0].owner.0, OWNER);
    assert_eq!(
        groups[0].rules[0].source,
        Source::Group {
            owner: Owner(OWNER.into()),
            group: "default".into()
        }
    );
}

#[test]
fn groups_and_rules_round_trip_and_each_edit_publishes_a_new_generation() {
    let dir = TempDir::new("core-rt");
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    let g0 = core.generation();
    let r = core.handle(req(add_group("web"))).unwrap();
    assert!(
        matches!(&r, Response::GroupAdded { name, .. } if name == "web"),
        "{r:?}"
    );
    let r = core
        .handle(req(Command::Authorize {
            egress: false,
            group: "web".into(),
            permissions: vec![spec("tcp", "80", "205.192.8.45/24").into()],
        }))
        .unwrap();
    let Response::Permissions { group, rules, .. } = r else {
        panic!()
    };
    assert_eq!(group, "web");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].ports, Ports::Range(80, 80));
    assert_eq!(
        rules[0].source,
        Source::Cidr("205.192.8.0/24".parse().unwrap()),
        "CIDR normalised"
    );
    assert_eq!(core.generation(), g0 + 2);
    let published = dp.state.lock().unwrap().published.clone();
    assert_eq!(published.last(), Some(&(g0 + 2)));
    assert!(
        published.windows(2).all(|w| w[1] == w[0] + 1),
        "{published:?}"
    );

    // Reads do not publish.
    core.handle(req(Command::DescribeGroups {
        groups: vec!["web".into()],
    }))
    .unwrap();
    assert_eq!(core.generation(), g0 + 2);

    let r = core
        .handle(req(Command::Revoke {
            egress: false,
            group: "web".into(),
            permissions: vec![spec("tcp", "80", "205.192.8.0/24").into()],
        }))
        .unwrap();
    assert!(matches!(&r, Response::Permissions { rules, .. } if rules.len() == 1));
    let r = core
        .handle(req(Command::DeleteGroup {
            group: "web".into(),
        }))
        .unwrap();
    assert_eq!(r, Response::GroupDeleted { name: "web".into() });
    let Response::Stats { stats } = core.handle(req(Command::Stats)).unwrap() else {
        panic!()
    };
    assert_eq!(
        stats.edits, 5,
        "four commands plus the default group made at open"
    );
    assert_eq!(stats.groups, 1);
    assert!(stats.edit_latency_p99_us >= stats.edit_latency_p50_us);
    assert!(stats.edit_latency_p50_us > 0);
}

#[test]
fn instances_launch_describe_terminate() {
    let dir = TempDir::new("core-inst");
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    core.handle(req(add_group("web"))).unwrap();
    let r = core.handle(req(run(3, &["web", "default"])));
    let ids = launched_ids(&r);
    assert_eq!(ids.len(), 3);
    let Ok(Response::Reservations { reservations }) = &r else {
        panic!()
    };
    let res = &reservations[0];
    assert!(filter::model::is_id("r-", &res.id), "{}", res.id);
    assert_eq!(res.groups, ["default", "web"]);
    for (k, i) in res.instances.iter().enumerate() {
        assert!(filter::model::is_id("i-", &i.id), "{}", i.id);
        assert_eq!(i.launch_index, k as u32);
        assert_eq!(i.state, "running");
        assert_eq!(i.place, format!("netns:{}", i.id));
        assert_eq!(
            i.ip,
            std::net::Ipv4Addr::new(172, 31, 0, 2 + k as u8),
            "lowest free addresses, .1 is the gateway"
        );
        assert_eq!(i.mac, crate::store::format_mac(&instance_mac(&i.id)));
    }
    assert_eq!(dp.state.lock().unwrap().attached.len(), 3);

    let r = core.handle(req(Command::DescribeInstances { ids: vec![] }));
    assert_eq!(launched_ids(&r), ids);
    let r = core.handle(req(Command::DescribeInstances {
        ids: vec![ids[1].clone()],
    }));
    assert_eq!(launched_ids(&r), vec![ids[1].clone()]);

    let r = core
        .handle(req(Command::TerminateInstances {
            ids: vec![ids[0].clone(), ids[2].clone()],
            all: false,
        }))
        .unwrap();
    let Response::StateChanges { changes } = r else {
        panic!()
    };
    assert_eq!(changes.len(), 2);
    assert_eq!(
        (changes[0].previous.as_str(), changes[0].current.as_str()),
        ("running", "shutting-down")
    );
    assert_eq!(
        dp.state.lock().unwrap().attached,
        [ids[1].clone()].into_iter().collect()
    );
    assert_eq!(core.model().instances().len(), 1);
    // The freed address is handed out again.
    let r = core.handle(req(run(1, &[])));
    let Ok(Response::Reservations { reservations }) = &r else {
        panic!()
    };
    assert_eq!(
        reservations[0].instances[0].ip,
        std::net::Ipv4Addr::new(172, 31, 0, 2)
    );
    assert_eq!(reservations[0].groups, ["default"]);
}

#[test]
fn uplink_range_is_never_given_to_instances() {
    let dir = TempDir::new("core-uplink");
    let mut cfg = config();
    cfg.subnet = "10.9.0.0/29".parse().unwrap();
    cfg.uplink_range = "10.9.0.4/30".parse().unwrap();
    let mut core = core_in(&dir, cfg);
    // .0 network, .1 gateway, .2 and .3 free, .4-.7 uplink.
    let r = core.handle(req(run(2, &[])));
    assert_eq!(launched_ids(&r).len(), 2);
    let before = core.dump();
    let r = core.handle(req(run(1, &[])));
    assert_eq!(code(&r), "InsufficientInstanceCapacity");
    assert_eq!(core.dump(), before);
}

/// Every EC2 error code through the API; the state is byte-identical after each.
#[test]
fn every_error_code_leaves_the_state_byte_identical() {
    let dir = TempDir::new("core-errors");
    let dp = RecordingDataplane::default();
    let mut cfg = config();
    cfg.limits.rules_per_group = 3;
    let mut core = core_with(&dir, cfg, dp.clone());
    core.handle(req(add_group("web"))).unwrap();
    core.handle(req(add_group("app"))).unwrap();
    core.handle(req(add_group("db"))).unwrap();
    core.handle(req(Command::Authorize {
        egress: false,
        group: "app".into(),
        permissions: vec![group_spec("web", None).into()],
    }))
    .unwrap();
    core.handle(req(Command::Authorize {
        egress: false,
        group: "web".into(),
        permissions: vec![spec("tcp", "80", "0.0.0.0/0").into()],
    }))
    .unwrap();
    core.handle(req(Command::Authorize {
        egress: false,
        group: "web".into(),
        permissions: vec![spec("tcp", "443", "0.0.0.0/0").into()],
    }))
    .unwrap();
    core.handle(req(Command::Authorize {
        egress: false,
        group: "web".into(),
        permissions: vec![spec("udp", "53", "10.0.0.0/8").into()],
    }))
    .unwrap();
    let ids = launched_ids(&core.handle(req(run(1, &["db"]))));
    // Another owner exists too.
    core.handle(req_as(OTHER, add_group("theirs"))).unwrap();
    let other_ids = launched_ids(&core.handle(req_as(OTHER, run(1, &[]))));

    let cases: Vec<(Request, &str, &str)> = vec![
        (req(add_group("web")), "InvalidGroup.Duplicate", "web"),
        (
            req(add_group("default")),
            "InvalidGroup.Duplicate",
            "default",
        ),
        (
            req(Command::AddGroup {
                name: "".into(),
                description: "x".into(),
            }),
            "InvalidParameterValue",
            "",
        ),
        (
            req(Command::AddGroup {
                name: "bad\u{7}".into(),
                description: "x".into(),
            }),
            "InvalidParameterValue",
            "bad",
        ),
        (
            req(Command::AddGroup {
                name: "x".repeat(256),
                description: "x".into(),
            }),
            "InvalidParameterValue",
            "xxxx",
        ),
        (
            req(Command::DeleteGroup {
                group: "nosuch".into(),
            }),
            "InvalidGroup.NotFound",
            "nosuch",
        ),
        (
            req(Command::DeleteGroup {
                group: "web".into(),
            }),
            "InvalidGroup.InUse",
            "web",
        ),
        (
            req(Command::DeleteGroup { group: "db".into() }),
            "InvalidGroup.InUse",
            "db",
        ),
        (
            req(Command::DeleteGroup {
                group: "default".into(),
            }),
            "InvalidGroup.Reserved",
            "default",
        ),
        (
            req(Command::DeleteGroup {
                group: "theirs".into(),
            }),
            "InvalidGroup.NotFound",
            "theirs",
        ),
        (
            req(Command::DescribeGroups {
                groups: vec!["web".into(), "nosuch".into()],
            }),
            "InvalidGroup.NotFound",
            "nosuch",
        ),
        // TCP/UDP without ports (issue 12 item 7), from the CLI and the EC2
        // front door alike.
        (
            req(Command::Authorize {
                egress: false,
                group: "web".into(),
                permissions: vec![
                    RuleSpec {
                        proto: Some("tcp".into()),
                        cidrs: vec!["0.0.0.0/0".into()],
                        ..RuleSpec::default()
                    }
                    .into(),
                ],
            }),
            "InvalidParameterValue",
            "must specify both from and to ports with TCP/UDP",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: crate::api::GroupRef::Name("web".into()),
                permissions: vec![crate::api::Permission {
                    proto: Some("udp".into()),
                    ports: None,
                    icmp: None,
                    cidrs: vec!["10.0.0.0/8".into()],
                    groups: vec![],
                    description: None,
                }],
            }),
            "InvalidParameterValue",
            "protocol udp",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: "nosuch".into(),
                permissions: vec![spec("tcp", "80", "0.0.0.0/0").into()],
            }),
            "InvalidGroup.NotFound",
            "nosuch",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: "app".into(),
                permissions: vec![group_spec("nosuch", None).into()],
            }),
            "InvalidGroup.NotFound",
            "nosuch",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: "web".into(),
                permissions: vec![spec("tcp", "80", "0.0.0.0/0").into()],
            }),
            "InvalidPermission.Duplicate",
            "80",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: "web".into(),
                permissions: vec![spec("tcp", "8080", "0.0.0.0/0").into()],
            }),
            "RulesPerSecurityGroupLimitExceeded",
            "web",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: "db".into(),
                permissions: vec![spec("tcp", "70000", "0.0.0.0/0").into()],
            }),
            "InvalidParameterValue",
            "70000",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: "db".into(),
                permissions: vec![spec("tcp", "80", "300.1.2.3/8").into()],
            }),
            "InvalidParameterValue",
            "300.1.2.3/8",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: "db".into(),
                permissions: vec![spec("gre", "80", "0.0.0.0/0").into()],
            }),
            "InvalidParameterValue",
            "gre",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: "db".into(),
                permissions: vec![
                    RuleSpec {
                        proto: Some("icmp".into()),
                        icmp: Some("300:0".into()),
                        ..RuleSpec::default()
                    }
                    .into(),
                ],
            }),
            "InvalidParameterValue",
            "300",
        ),
        (
            req(Command::Authorize {
                egress: false,
                group: "app".into(),
                permissions: vec![group_spec("web", Some("12345")).into()],
            }),
            "InvalidParameterValue",
            "12345",
        ),
        (
            req(Command::Revoke {
                egress: false,
                group: "web".into(),
                permissions: vec![spec("tcp", "22", "0.0.0.0/0").into()],
            }),
            "InvalidPermission.NotFound",
            "22",
        ),
        (
            req(Command::Revoke {
                egress: false,
                group: "nosuch".into(),
                permissions: vec![spec("tcp", "22", "0.0.0.0/0").into()],
            }),
            "InvalidGroup.NotFound",
            "nosuch",
        ),
        (req(run(1, &["nosuch"])), "InvalidGroup.NotFound", "nosuch"),
        (
            req(run(2, &["db", "theirs"])),
            "InvalidGroup.NotFound",
            "theirs",
        ),
        (
            req(Command::RunInstances {
                ami: "emi-1".into(),
                count: 1,
                groups: vec![],
                min_count: None,
                qemu: Some(false),
                client_token: None,
            }),
            "InvalidParameterValue",
            "emi-1",
        ),
        (
            req(Command::RunInstances {
                ami: "ami-1".into(),
                count: 0,
                groups: vec![],
                min_count: None,
                qemu: Some(false),
                client_token: None,
            }),
            "InvalidParameterValue",
            "0",
        ),
        (
            req(Command::RunInstances {
                ami: "ami-1".into(),
                count: 100_000,
                groups: vec![],
                min_count: None,
                qemu: Some(false),
                client_token: None,
            }),
            "InvalidParameterValue",
            "100000",
        ),
        (
            req(Command::DescribeInstances {
                ids: vec!["i-00000000".into()],
            }),
            "InvalidInstanceID.NotFound",
            "i-00000000",
        ),
        (
            req(Command::DescribeInstances {
                ids: vec![other_ids[0].clone()],
            }),
            "InvalidInstanceID.NotFound",
            &other_ids[0],
        ),
        (
            req(Command::TerminateInstances {
                ids: vec![ids[0].clone(), "i-00000000".into()],
                all: false,
            }),
            "InvalidInstanceID.NotFound",
            "i-00000000",
        ),
        (
            req(Command::TerminateInstances {
                ids: vec![],
                all: false,
            }),
            "MissingParameter",
            "instance",
        ),
        (
            req(Command::TerminateInstances {
                ids: vec![ids[0].clone()],
                all: true,
            }),
            "InvalidParameterCombination",
            "--all",
        ),
        (
            req_as("12345", Command::DescribeGroups { groups: vec![] }),
            "InvalidParameterValue",
            "12345",
        ),
    ];
    for (i, (request, want, names)) in cases.into_iter().enumerate() {
        let before = core.dump();
        let launches = dp.state.lock().unwrap().launches;
        let generation = core.generation();
        let r = core.handle(request.clone());
        let err = r
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("case {i} {request:?}: expected {want}, got {r:?}"));
        assert_eq!(err.code, want, "case {i} {request:?}: {err}");
        assert!(
            err.message.contains(names),
            "case {i}: message {:?} should name {names:?}",
            err.message
        );
        assert_eq!(
            core.dump(),
            before,
            "case {i} {request:?} changed the state"
        );
        assert_eq!(core.generation(), generation, "case {i} published");
        assert_eq!(
            dp.state.lock().unwrap().launches,
            launches,
            "case {i} launched something"
        );
    }
    // The first instance is still running, the other owner's too.
    assert_eq!(dp.state.lock().unwrap().attached.len(), 2);
}

#[test]
fn failed_launch_rolls_back_everything_created() {
    let dir = TempDir::new("core-rollback");
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    dp.state.lock().unwrap().fail_after = Some(2);
    let before = core.dump();
    let r = core.handle(req(run(4, &[])));
    assert_eq!(code(&r), "InternalError");
    assert_eq!(core.dump(), before);
    let st = dp.state.lock().unwrap();
    assert_eq!(st.launches, 2, "two were created");
    assert!(
        st.attached.is_empty(),
        "and both destroyed again: {:?}",
        st.attached
    );
}

#[test]
fn state_and_instances_come_back_after_a_restart() {
    let dir = TempDir::new("core-restart");
    let (dump, ids, generation, seq) = {
        let mut core = core_in(&dir, config());
        core.handle(req(add_group("web"))).unwrap();
        core.handle(req(add_group("db"))).unwrap();
        core.handle(req(Command::Authorize {
            egress: false,
            group: "web".into(),
            permissions: vec![spec("tcp", "80-90", "10.1.2.3/16").into()],
        }))
        .unwrap();
        core.handle(req(Command::Authorize {
            egress: false,
            group: "db".into(),
            permissions: vec![group_spec("web", Some(OWNER)).into()],
        }))
        .unwrap();
        core.handle(req(Command::Authorize {
            egress: false,
            group: "db".into(),
            permissions: vec![
                RuleSpec {
                    proto: Some("icmp".into()),
                    icmp: Some("8:-1".into()),
                    ..RuleSpec::default()
                }
                .into(),
            ],
        }))
        .unwrap();
        core.handle(req(Command::Revoke {
            egress: false,
            group: "default".into(),
            permissions: vec![group_spec("default", None).into()],
        }))
        .unwrap();
        let ids = launched_ids(&core.handle(req(run(2, &["web", "db"]))));
        core.handle(req_as(OTHER, add_group("theirs"))).unwrap();
        (
            core.dump(),
            ids,
            core.generation(),
            core.model().next_group_seq(),
        )
    };
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    assert_eq!(
        core.dump(),
        dump,
        "model, records and store identical after reload"
    );
    assert_eq!(core.generation(), generation, "generation continues");
    assert_eq!(core.model().next_group_seq(), seq);
    let mut re = dp.state.lock().unwrap().reattached.clone();
    re.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(re, want);
    let r = core.handle(req(Command::DescribeInstances { ids: vec![] }));
    let mut got = launched_ids(&r);
    got.sort();
    assert_eq!(got, want);
    // New ids do not collide with reloaded ones, and edits go on.
    let r = core.handle(req(add_group("app"))).unwrap();
    let Response::GroupAdded { id, .. } = r else {
        panic!()
    };
    assert!(
        core.model()
            .groups()
            .values()
            .filter(|g| g.id == id)
            .count()
            == 1
    );
    assert_eq!(
        core.model().groups()[&(Owner(OWNER.into()), "db".into())]
            .rules
            .len(),
        2
    );
    assert_eq!(
        core.model().groups()[&(Owner(OWNER.into()), "db".into())].rules[1].proto,
        Proto::Icmp
    );
}

#[test]
fn store_edits_are_exactly_the_recorded_changes() {
    let owner = Owner(OWNER.into());
    let mut a = Model::new(Limits::default());
    a.ensure_owner(&owner);
    a.add_group(&owner, "web", "w").unwrap();
    a.authorize(&owner, "web", &spec("tcp", "80", "0.0.0.0/0"))
        .unwrap();
    let before = a.clone();
    a.record_changes();
    a.authorize(&owner, "web", &spec("tcp", "443", "0.0.0.0/0"))
        .unwrap();
    a.revoke(&owner, "web", &spec("tcp", "80", "0.0.0.0/0"))
        .unwrap();
    // A refused edit records nothing.
    assert!(
        a.revoke(&owner, "web", &spec("tcp", "80", "0.0.0.0/0"))
            .is_err()
    );
    let web_id = a.groups()[&(owner.clone(), "web".into())].id.clone();
    let changes = a.take_changes();
    let edits = store_edits(&changes, &BTreeMap::new()).unwrap();
    assert_eq!(edits.len(), 2, "{edits:?}");
    assert!(
        matches!(&edits[0], Edit::AddRules { group_id, rules } if *group_id == web_id && rules[0].ports == Ports::Range(443, 443))
    );
    assert!(
        matches!(&edits[1], Edit::RemoveRules { group_id, rules } if *group_id == web_id && rules[0].ports == Ports::Range(80, 80))
    );
    assert!(a.take_changes().is_empty());
    // Undone, the model is as before.
    a.undo(changes);
    assert_eq!(a, before);
    // A new instance without a launch record is refused.
    a.add_instance(Instance {
        id: "i-0000abcd".into(),
        owner: owner.clone(),
        mac: instance_mac("i-0000abcd"),
        ip: "172.31.0.2".parse().unwrap(),
        groups: vec![],
    })
    .unwrap();
    assert_eq!(
        store_edits(&a.take_changes(), &BTreeMap::new())
            .unwrap_err()
            .code,
        "InternalError"
    );
}

#[test]
fn default_uplink_range_is_the_last_slash_24() {
    let r = |s: &str| default_uplink_range(s.parse().unwrap()).to_string();
    assert_eq!(r("172.31.0.0/16"), "172.31.255.0/24");
    assert_eq!(r("10.0.0.0/8"), "10.255.255.0/24");
    assert_eq!(r("192.168.7.0/24"), "192.168.7.128/25");
}

#[test]
fn random_ids_are_prefixed_hex_and_vary() {
    let a = random_id("i-");
    let b = random_id("i-");
    assert!(
        filter::model::is_id("i-", &a) && filter::model::is_id("i-", &b),
        "{a} {b}"
    );
    assert_ne!(a, b);
}

#[test]
fn a_corrupt_store_is_refused_and_the_dataplane_shut_down() {
    let dir = TempDir::new("core-corrupt");
    drop(Store::open_dir(&dir.0).unwrap());
    let conn = rusqlite::Connection::open(dir.0.join(crate::store::DB_FILE)).unwrap();
    conn.execute(
        "INSERT INTO groups (id, owner, name, description) VALUES ('sg-nothex!', '111122223333', 'web', '')",
        [],
    )
    .unwrap();
    drop(conn);
    let dp = RecordingDataplane::default();
    let err = match Core::open(
        Store::open_dir(&dir.0).unwrap(),
        config(),
        Box::new(dp.clone()),
    ) {
        Err(e) => e,
        Ok(_) => panic!("a store with an invalid group id must be refused"),
    };
    assert!(err.to_string().contains("web"), "{err}");
    assert!(
        dp.state.lock().unwrap().shut_down,
        "data plane shut down on failure"
    );
}

fn attach(ifname: &str, ip: Option<&str>, mac: Option<&str>) -> Command {
    Command::AttachInstance {
        ifname: ifname.into(),
        netns: Some("guests".into()),
        groups: vec!["web".into()],
        ip: ip.map(|s| s.parse().unwrap()),
        mac: mac.map(Into::into),
    }
}

#[test]
fn attached_interfaces_are_instances_with_a_port_place() {
    let dir = TempDir::new("core-attach");
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    core.handle(req(add_group("web"))).unwrap();
    let r = core.handle(req(attach(
        "vs0",
        Some("172.31.7.9"),
        Some("52:54:00:AB:CD:EF"),
    )));
    let Ok(Response::Reservations { reservations }) = &r else {
        panic!("{r:?}")
    };
    let i = &reservations[0].instances[0];
    assert_eq!(i.place, "port:vs0@guests");
    assert_eq!(i.ami, ATTACHED_AMI);
    assert_eq!(i.ip.to_string(), "172.31.7.9");
    assert_eq!(i.mac, "52:54:00:ab:cd:ef");
    assert_eq!(i.state, "running");
    assert_eq!(reservations[0].groups, ["web"]);
    let id = i.id.clone();
    // Without --ip / --mac: the next free address and the id's MAC.
    let r = core.handle(req(Command::AttachInstance {
        ifname: "tap-guest2".into(),
        netns: None,
        groups: vec![],
        ip: None,
        mac: None,
    }));
    let Ok(Response::Reservations { reservations }) = &r else {
        panic!("{r:?}")
    };
    let j = &reservations[0].instances[0];
    assert_eq!(
        (j.place.as_str(), j.ip.to_string().as_str()),
        ("port:tap-guest2", "172.31.0.2")
    );
    assert_eq!(j.mac, crate::store::format_mac(&instance_mac(&j.id)));

    let before = core.dump();
    for (cmd, want) in [
        (attach("vs0", None, None), "already attached"),
        (attach("", None, None), "interface name"),
        (
            attach("a-name-longer-than-15", None, None),
            "a-name-longer-than-15",
        ),
        (attach("bad/name", None, None), "bad/name"),
        (attach("vs1", Some("10.0.0.5"), None), "not in subnet"),
        (attach("vs1", Some("172.31.0.1"), None), "gateway"),
        (
            attach("vs1", Some("172.31.0.0"), None),
            "not a host address",
        ),
        (attach("vs1", Some("172.31.255.7"), None), "uplink range"),
        (attach("vs1", Some("172.31.7.9"), None), "172.31.7.9"),
        (
            attach("vs1", None, Some("52:54:00:ab:cd")),
            "52:54:00:ab:cd",
        ),
        (
            attach("vs1", None, Some("01:00:5e:00:00:01")),
            "01:00:5e:00:00:01",
        ),
        (
            attach("vs1", None, Some("52:54:00:ab:cd:ef")),
            "52:54:00:ab:cd:ef",
        ),
    ] {
        let r = core.handle(req(cmd.clone()));
        let e = r
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("{cmd:?} should fail: {r:?}"));
        assert_eq!(e.code, "InvalidParameterValue", "{cmd:?}: {e}");
        assert!(e.message.contains(want), "{cmd:?}: {e}");
        assert_eq!(core.dump(), before, "{cmd:?} changed the state");
    }
    let r = core.handle(req(Command::AttachInstance {
        ifname: "vs9".into(),
        netns: None,
        groups: vec!["nosuch".into()],
        ip: None,
        mac: None,
    }));
    assert_eq!(code(&r), "InvalidGroup.NotFound");
    assert_eq!(core.dump(), before);

    // Terminating detaches (the data plane is told it is an interface).
    core.handle(req(Command::TerminateInstances {
        ids: vec![id.clone()],
        all: false,
    }))
    .unwrap();
    let terminated = dp.state.lock().unwrap().terminated.clone();
    assert_eq!(
        terminated,
        vec![(
            id,
            Attachment::Iface {
                ifname: "vs0".into(),
                netns: Some("guests".into())
            }
        )]
    );
}

#[test]
fn attachment_place_texts() {
    for (how, place) in [
        (Attachment::Netns, "netns:i-0000abcd"),
        (
            Attachment::Iface {
                ifname: "tap0".into(),
                netns: None,
            },
            "port:tap0",
        ),
        (
            Attachment::Iface {
                ifname: "vs0".into(),
                netns: Some("lab-1".into()),
            },
            "port:vs0@lab-1",
        ),
        (Attachment::Qemu { pid: 4242 }, "qemu:4242"),
    ] {
        assert_eq!(how.place("i-0000abcd"), place);
    }
}

/// A state directory written by a binary that stored the PLACE text (schema
/// v3) opens with each instance attached as its place said, and shows the
/// same PLACE texts.
#[test]
fn an_old_state_dir_with_place_texts_reopens_with_the_same_attachments() {
    let dir = TempDir::new("core-v3");
    {
        let c = rusqlite::Connection::open(dir.0.join(crate::store::DB_FILE)).unwrap();
        for m in &crate::store::MIGRATIONS[..3] {
            c.execute_batch(m).unwrap();
        }
        c.pragma_update(None, "user_version", 3).unwrap();
        c.execute(
            "INSERT INTO groups (id, owner, name, description) VALUES ('sg-00000001', ?1, 'default', 'default group')",
            [OWNER],
        )
        .unwrap();
        for (k, (id, place)) in [
            ("i-0000000a", "netns:i-0000000a"),
            ("i-0000000b", "port:vs0@lab-1"),
            ("i-0000000c", "port:tap7"),
            ("i-0000000d", "qemu:4242"),
        ]
        .into_iter()
        .enumerate()
        {
            c.execute(
                "INSERT INTO instances (id, owner, mac, ip, ami, reservation, launch_index, place, launched_at) \
                 VALUES (?1, ?2, ?3, ?4, 'ami-eca54085', 'r-00000001', ?5, ?6, 7)",
                rusqlite::params![
                    id,
                    OWNER,
                    format!("02:00:00:00:00:0{k}"),
                    format!("172.31.0.{}", 10 + k),
                    k as i64,
                    place
                ],
            )
            .unwrap();
            c.execute(
                "INSERT INTO instance_groups (instance_id, group_id) VALUES (?1, 'sg-00000001')",
                [id],
            )
            .unwrap();
        }
    }
    let dp = RecordingDataplane::default();
    let state = dp.state.clone();
    let mut core = core_with(&dir, config(), dp);
    assert_eq!(
        state.lock().unwrap().reattached,
        ["i-0000000a", "i-0000000b", "i-0000000c", "i-0000000d"]
    );
    let how: Vec<Attachment> = core
        .records
        .values()
        .map(|r| r.attachment.clone())
        .collect();
    assert_eq!(
        how,
        [
            Attachment::Netns,
            Attachment::Iface {
                ifname: "vs0".into(),
                netns: Some("lab-1".into()),
            },
            Attachment::Iface {
                ifname: "tap7".into(),
                netns: None,
            },
            Attachment::Qemu { pid: 4242 },
        ]
    );
    let r = core.handle(req(Command::DescribeInstances { ids: vec![] }));
    let Ok(Response::Reservations { reservations }) = &r else {
        panic!("{r:?}")
    };
    let places: Vec<&str> = reservations
        .iter()
        .flat_map(|r| r.instances.iter().map(|i| i.place.as_str()))
        .collect();
    assert_eq!(
        places,
        [
            "netns:i-0000000a",
            "port:vs0@lab-1",
            "port:tap7",
            "qemu:4242"
        ]
    );
}

/// Random command sequences (fixed seeds): after every command the store, reloaded
/// into a fresh core, must give exactly the in-memory state, and a failed command
/// must leave the state byte-identical. This checks `store_edits` + store against the
/// model for edits of every kind, including implicit ones (a new owner's default),
/// and that the snapshot published after each command (compiled incrementally)
/// allows what a full compile of the model allows.
#[test]
fn random_command_sequences_reload_to_the_same_state() {
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[(self.next() as usize) % xs.len()]
        }
    }
    let owners = [OWNER, OTHER];
    let groups = ["default", "web", "app", "db"];
    let protos = ["tcp", "udp", "icmp", "all"];
    let cidrs = ["0.0.0.0/0", "10.0.0.0/8", "192.168.1.7/24", "172.31.0.5/32"];
    for seed in 1..=4u64 {
        let dir = TempDir::new(&format!("core-random-{seed}"));
        let mut cfg = config();
        cfg.limits.rules_per_group = 6;
        let dp = RecordingDataplane::default();
        let mut core = core_with(&dir, cfg.clone(), dp.clone());
        let mut rng = Lcg(seed);
        let (mut ok, mut failed) = (0, 0);
        for step in 0..120 {
            let owner = rng.pick(&owners);
            let group = rng.pick(&groups).to_owned();
            let spec = match rng.next() % 3 {
                0 => RuleSpec {
                    groups: vec![(rng.pick(&groups).into(), Some(rng.pick(&owners).into()))],
                    ..RuleSpec::default()
                },
                1 => RuleSpec {
                    proto: Some("icmp".into()),
                    icmp: Some(format!("{}:-1", rng.next() % 3 + 7)),
                    cidrs: vec![rng.pick(&cidrs).into()],
                    ..RuleSpec::default()
                },
                _ => {
                    let p = rng.pick(&protos);
                    let ports =
                        matches!(p, "tcp" | "udp").then(|| format!("{}", 20 + rng.next() % 4));
                    RuleSpec {
                        proto: Some(p.into()),
                        ports,
                        cidrs: vec![rng.pick(&cidrs).into()],
                        ..RuleSpec::default()
                    }
                }
            };
            let ids: Vec<String> = core.model().instances().keys().cloned().collect();
            let command = match rng.next() % 8 {
                0 => Command::AddGroup {
                    name: group,
                    description: format!("step {step}"),
                },
                1 => Command::DeleteGroup {
                    group: group.into(),
                },
                2 | 3 => Command::Authorize {
                    egress: false,
                    group: group.into(),
                    permissions: vec![spec.into()],
                },
                4 => Command::Revoke {
                    egress: false,
                    group: group.into(),
                    permissions: vec![spec.into()],
                },
                5 => Command::RunInstances {
                    ami: "ami-1".into(),
                    count: 1 + (rng.next() % 2) as u32,
                    groups: vec![group.into()],
                    min_count: None,
                    qemu: Some(false),
                    client_token: None,
                },
                6 if !ids.is_empty() => Command::TerminateInstances {
                    ids: vec![ids[(rng.next() as usize) % ids.len()].clone()],
                    all: false,
                },
                _ => Command::DescribeGroups { groups: vec![] },
            };
            let before = core.dump();
            let existed = core.model().groups().keys().any(|(o, _)| o.0 == owner);
            match core.handle(req_as(owner, command.clone())) {
                Ok(_) => ok += 1,
                Err(e) => {
                    failed += 1;
                    // A new owner's default group is made (and kept) even when the
                    // command then fails; otherwise nothing changes.
                    if existed {
                        assert_eq!(
                            core.dump(),
                            before,
                            "seed {seed} step {step}: {command:?} failed ({e}) but changed the state"
                        );
                    }
                }
            }
            // The published snapshot (compiled incrementally, edit by edit)
            // allows what a full compile of the model allows.
            let published = dp.state.lock().unwrap().snapshots.last().cloned();
            let published = published.expect("a snapshot was published");
            let full = filter::compile(core.model(), core.generation());
            assert_eq!(published.generation(), core.generation());
            assert_eq!(published.instances(), full.instances());
            assert_eq!(published.policy_count(), full.policy_count());
            let addrs: Vec<Ipv4Addr> = core
                .model()
                .instances()
                .values()
                .map(|i| i.ip)
                .chain(["10.1.2.3".parse().unwrap(), "192.168.1.9".parse().unwrap()])
                .collect();
            for &src in &addrs {
                for &dst in &addrs {
                    for (proto, dport) in [(6u8, 80u16), (6, 22), (17, 53), (1, 0), (47, 0)] {
                        let pkt = filter::Packet {
                            key: filter::FlowKey {
                                src,
                                dst,
                                proto,
                                sport: 40000,
                                dport,
                            },
                            l4: match proto {
                                6 => filter::L4::Tcp { flags: 2 },
                                17 => filter::L4::Udp,
                                1 => filter::L4::Icmp {
                                    ty: 8,
                                    code: 0,
                                    kind: filter::IcmpKind::Request,
                                },
                                _ => filter::L4::Other,
                            },
                            frag: filter::Frag::None,
                        };
                        assert_eq!(
                            published.allows(&pkt),
                            full.allows(&pkt),
                            "seed {seed} step {step}: {pkt:?}"
                        );
                    }
                }
            }
            if step % 20 == 19 {
                let reloaded = core_in(&dir, cfg.clone());
                assert_eq!(
                    reloaded.dump(),
                    core.dump(),
                    "seed {seed} step {step}: reload differs"
                );
            }
        }
        assert!(
            ok > 20 && failed > 5,
            "seed {seed}: {ok} ok, {failed} failed: the mix should exercise both"
        );
        let reloaded = core_in(&dir, cfg);
        assert_eq!(
            reloaded.dump(),
            core.dump(),
            "seed {seed}: final reload differs"
        );
    }
}

#[test]
fn qemu_launches_record_the_guest_pid_as_place() {
    let dir = TempDir::new("core-qemu");
    let dp = RecordingDataplane::default();
    let mut cfg = config();
    cfg.default_image = Some(GuestImage {
        kernel: "/boot/default-vmlinuz".into(),
        initrd: "/boot/default-initrd".into(),
        disk: None,
        append: "console=ttyS0".into(),
        mem_mb: 128,
    });
    let mut core = core_with(&dir, cfg, dp.clone());
    let r = core.handle(req(Command::RunInstances {
        ami: "ami-eca54085".into(),
        count: 2,
        groups: vec![],
        min_count: None,
        qemu: Some(true),
        client_token: None,
    }));
    let Ok(Response::Reservations { reservations }) = &r else {
        panic!("{r:?}")
    };
    let places: Vec<&str> = reservations[0]
        .instances
        .iter()
        .map(|i| i.place.as_str())
        .collect();
    assert_eq!(places, ["qemu:40001", "qemu:40002"]);
    // The place is stored: a restart knows which process to re-attach.
    drop(core);
    let core = core_in(&dir, config());
    let r = core.model().instances().len();
    assert_eq!(r, 2);
    // Records are keyed by the (random) instance id: compare in pid order.
    let mut how: Vec<&Attachment> = core.records.values().map(|r| &r.attachment).collect();
    how.sort_by_key(|a| match a {
        Attachment::Qemu { pid } => *pid,
        _ => 0,
    });
    assert_eq!(
        how,
        [
            &Attachment::Qemu { pid: 40001 },
            &Attachment::Qemu { pid: 40002 }
        ]
    );
}

/// Image files that exist, in `dir`.
fn image_files(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let k = dir.0.join("vmlinuz");
    let i = dir.0.join("initrd.img");
    let d = dir.0.join("disk.raw");
    write_fake_kernel(&k);
    write_fake_initrd(&i);
    std::fs::write(&d, b"x").unwrap();
    (k, i, d)
}

fn register(ami: &str, kernel: &std::path::Path, initrd: &std::path::Path) -> Command {
    Command::RegisterImage {
        ami: ami.into(),
        kernel: kernel.into(),
        initrd: initrd.into(),
        disk: None,
        memory_mb: None,
        append: None,
    }
}

fn qemu_run(ami: &str, count: u32) -> Command {
    Command::RunInstances {
        ami: ami.into(),
        count,
        groups: vec![],
        min_count: None,
        qemu: Some(true),
        client_token: None,
    }
}

#[test]
fn registered_images_are_validated_listed_persisted_and_deregistered() {
    let dir = TempDir::new("core-images");
    let files = TempDir::new("core-image-files");
    let (k, i, d) = image_files(&files);
    let mut core = core_in(&dir, config());
    let r = core.handle(req(register("ami-5e1f0001", &k, &i))).unwrap();
    let Response::Images { images } = &r else {
        panic!("{r:?}")
    };
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].memory_mb, crate::api::DEFAULT_IMAGE_MEMORY_MB);
    assert_eq!(images[0].append, crate::api::DEFAULT_IMAGE_APPEND);
    core.handle(req(Command::RegisterImage {
        ami: "ami-0000beef".into(),
        kernel: k.clone(),
        initrd: i.clone(),
        disk: Some(d.clone()),
        memory_mb: Some(512),
        append: Some("console=ttyS0 sg.bigmb=1".into()),
    }))
    .unwrap();

    // Every bad value: its code, the value named, the state unchanged.
    let before = core.dump();
    let missing = files.0.join("nope");
    let bad: Vec<(Command, &str, String)> = vec![
        (
            register("ami-5e1f0001", &k, &i),
            ErrorCode::InvalidAmiIdDuplicate.as_str(),
            "ami-5e1f0001".into(),
        ),
        (
            register("ami-5E1F0002", &k, &i),
            "InvalidParameterValue",
            "ami-5E1F0002".into(),
        ),
        (
            register("ami-123", &k, &i),
            "InvalidParameterValue",
            "ami-123".into(),
        ),
        (
            register("ami-00000002", &missing, &i),
            "InvalidParameterValue",
            missing.display().to_string(),
        ),
        (
            register("ami-00000002", &k, &files.0),
            "InvalidParameterValue",
            "not a regular file".into(),
        ),
        (
            register("ami-00000002", std::path::Path::new("vmlinuz"), &i),
            "InvalidParameterValue",
            "not an absolute path".into(),
        ),
        // Files that exist but are not a kernel / an initramfs.
        (
            register("ami-00000002", std::path::Path::new("/etc/passwd"), &i),
            "InvalidParameterValue",
            "invalid kernel '/etc/passwd': not a Linux kernel image (bzImage)".into(),
        ),
        (
            register("ami-00000002", &k, std::path::Path::new("/etc/passwd")),
            "InvalidParameterValue",
            "invalid initrd '/etc/passwd': not an initramfs".into(),
        ),
        (
            register("ami-00000002", &i, &k),
            "InvalidParameterValue",
            format!("invalid kernel '{}'", i.display()),
        ),
        (
            Command::RegisterImage {
                ami: "ami-00000002".into(),
                kernel: k.clone(),
                initrd: i.clone(),
                disk: Some(missing.clone()),
                memory_mb: None,
                append: None,
            },
            "InvalidParameterValue",
            "invalid disk".into(),
        ),
        (
            Command::RegisterImage {
                ami: "ami-00000002".into(),
                kernel: k.clone(),
                initrd: i.clone(),
                disk: None,
                memory_mb: Some(8),
                append: None,
            },
            "InvalidParameterValue",
            "'8'".into(),
        ),
        (
            Command::RegisterImage {
                ami: "ami-00000002".into(),
                kernel: k.clone(),
                initrd: i.clone(),
                disk: None,
                memory_mb: None,
                append: Some("console=ttyS0\ninit=/x".into()),
            },
            "InvalidParameterValue",
            "command line".into(),
        ),
        (
            Command::DeregisterImage {
                ami: "ami-99999999".into(),
            },
            "InvalidAMIID.NotFound",
            "ami-99999999".into(),
        ),
        (
            Command::DescribeImages {
                amis: vec!["ami-5e1f0001".into(), "ami-99999999".into()],
            },
            "InvalidAMIID.NotFound",
            "ami-99999999".into(),
        ),
        (
            qemu_run("ami-99999999", 1),
            "InvalidAMIID.NotFound",
            "ami-99999999".into(),
        ),
    ];
    for (cmd, want, named) in bad {
        let r = core.handle(req(cmd.clone()));
        assert_eq!(code(&r), want, "{cmd:?}");
        let msg = &r.as_ref().unwrap_err().message;
        assert!(msg.contains(&named), "{cmd:?}: {msg} names {named}");
        assert_eq!(core.dump(), before, "{cmd:?} changed the state");
    }

    // Listed sorted by AMI; one by name; kept across a restart.
    let list = |core: &mut Core, amis: Vec<String>| match core
        .handle(req(Command::DescribeImages { amis }))
        .unwrap()
    {
        Response::Images { images } => images,
        other => panic!("{other:?}"),
    };
    let all = list(&mut core, vec![]);
    let amis: Vec<&str> = all.iter().map(|i| i.ami.as_str()).collect();
    assert_eq!(amis, ["ami-0000beef", "ami-5e1f0001"]);
    assert_eq!(all[0].disk.as_deref(), Some(d.as_path()));
    assert_eq!(all[0].memory_mb, 512);
    drop(core);
    let mut core = core_in(&dir, config());
    assert_eq!(list(&mut core, vec![]), all, "images survive a restart");
    let one = list(&mut core, vec!["ami-0000beef".into()]);
    assert_eq!(one, all[..1]);

    let r = core
        .handle(req(Command::DeregisterImage {
            ami: "ami-0000beef".into(),
        }))
        .unwrap();
    assert_eq!(
        r,
        Response::Images {
            images: all[..1].to_vec()
        }
    );
    assert_eq!(list(&mut core, vec![]), all[1..]);
    drop(core);
    let mut core = core_in(&dir, config());
    assert_eq!(
        list(&mut core, vec![]),
        all[1..],
        "deregistration is durable"
    );
}

#[test]
fn run_instances_qemu_boots_the_amis_image_else_the_default_else_fails() {
    let dir = TempDir::new("core-boot");
    let files = TempDir::new("core-boot-files");
    let (k, i, d) = image_files(&files);
    let dp = RecordingDataplane::default();
    let mut cfg = config();
    let default = GuestImage {
        kernel: "/boot/default-vmlinuz".into(),
        initrd: "/boot/default-initrd".into(),
        disk: None,
        append: "console=ttyS0".into(),
        mem_mb: 128,
    };
    cfg.default_image = Some(default.clone());
    let mut core = core_with(&dir, cfg, dp.clone());
    core.handle(req(Command::RegisterImage {
        ami: "ami-5e1f0001".into(),
        kernel: k.clone(),
        initrd: i.clone(),
        disk: Some(d.clone()),
        memory_mb: Some(384),
        append: Some("console=ttyS0 sg.bigmb=2".into()),
    }))
    .unwrap();
    let a = launched_ids(&core.handle(req(qemu_run("ami-5e1f0001", 1))));
    let b = launched_ids(&core.handle(req(qemu_run("ami-0000aaaa", 1))));
    // A namespace instance boots nothing, whatever its AMI.
    let c = launched_ids(&core.handle(req(run(1, &[]))));
    let booted = dp.state.lock().unwrap().booted.clone();
    assert_eq!(
        booted,
        vec![
            (
                a[0].clone(),
                GuestImage {
                    kernel: k,
                    initrd: i,
                    disk: Some(d),
                    append: "console=ttyS0 sg.bigmb=2".into(),
                    mem_mb: 384,
                }
            ),
            (b[0].clone(), default),
        ]
    );
    assert_eq!(c.len(), 1);
    // Without a default image an unregistered AMI is not found.
    drop(core);
    let mut core = core_in(&dir, config());
    let r = core.handle(req(qemu_run("ami-0000aaaa", 1)));
    assert_eq!(code(&r), "InvalidAMIID.NotFound");
}

#[test]
fn an_edit_is_enforced_before_its_commit_and_withdrawn_if_the_commit_fails() {
    let dir = TempDir::new("core-commit-fails");
    let dp = RecordingDataplane::default();
    let state = dp.state.clone();
    let mut core = core_with(&dir, config(), dp);
    core.handle(req(add_group("web"))).unwrap();
    let ids = launched_ids(&core.handle(req(run(1, &["web"]))));
    let ip = core.model.instances()[&ids[0]].ip;
    let syn = filter::Packet {
        key: filter::FlowKey {
            src: "203.0.113.7".parse().unwrap(),
            dst: ip,
            proto: filter::proto::TCP,
            sport: 40000,
            dport: 80,
        },
        l4: filter::L4::Tcp {
            flags: filter::tcp_flags::SYN,
        },
        frag: filter::Frag::None,
    };
    let allowed_now = |state: &std::sync::Arc<std::sync::Mutex<crate::testutil::Recorded>>| {
        state.lock().unwrap().snapshots.last().unwrap().allows(&syn)
    };
    assert!(!allowed_now(&state));
    let before = core.dump();
    let g = core.generation();

    // Another connection holds the database's write lock: the commit fails
    // once the store's busy timeout runs out.
    let lock = rusqlite::Connection::open(dir.0.join(crate::store::DB_FILE)).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let r = core.handle(req(Command::Authorize {
        egress: false,
        group: "web".into(),
        permissions: vec![spec("tcp", "80", "0.0.0.0/0").into()],
    }));
    assert_eq!(
        code(&r),
        crate::api::ErrorCode::InternalError.as_str(),
        "{r:?}"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    assert_eq!(core.dump(), before, "a failed commit changed the state");
    {
        let st = state.lock().unwrap();
        let n = st.snapshots.len();
        assert_eq!(&st.published[n - 2..], &[g + 1, g + 2]);
        assert!(
            st.snapshots[n - 2].allows(&syn),
            "enforced before the commit"
        );
        assert!(
            !st.snapshots[n - 1].allows(&syn),
            "withdrawn after it failed"
        );
    }
    assert_eq!(core.generation(), g + 2);

    // With the lock gone the same edit commits, and the rules it publishes stay.
    core.handle(req(Command::Authorize {
        egress: false,
        group: "web".into(),
        permissions: vec![spec("tcp", "80", "0.0.0.0/0").into()],
    }))
    .unwrap();
    assert!(allowed_now(&state));
    assert_eq!(core.generation(), g + 3);
}

/// A QEMU launch as the daemon's data plane reports it: `pending` (with why)
/// until the guest is up, then `running`; a guest that died is `stopped` with
/// the reason, for good. Namespace instances are `running` at once.
#[test]
fn guests_are_pending_until_up_and_stopped_with_a_reason() {
    let dir = TempDir::new("core-liveness");
    let dp = RecordingDataplane::default();
    let mut cfg = config();
    cfg.default_image = Some(GuestImage {
        kernel: "/boot/k".into(),
        initrd: "/boot/i".into(),
        disk: None,
        append: "console=ttyS0".into(),
        mem_mb: 128,
    });
    let mut core = core_with(&dir, cfg, dp.clone());
    dp.state.lock().unwrap().qemu_liveness = Some(Liveness::Pending(
        "booting on accel tcg: test; waiting for its first DHCP lease".into(),
    ));
    let views = |core: &mut Core| -> Vec<(String, String, Option<String>)> {
        match core.handle(req(Command::DescribeInstances { ids: vec![] })) {
            Ok(Response::Reservations { reservations }) => reservations
                .iter()
                .flat_map(|r| r.instances.iter())
                .map(|i| (i.id.clone(), i.state.clone(), i.reason.clone()))
                .collect(),
            other => panic!("{other:?}"),
        }
    };
    let r = core.handle(req(qemu_run("ami-0000aaaa", 2)));
    let Ok(Response::Reservations { reservations }) = &r else {
        panic!("{r:?}")
    };
    let guests: Vec<String> = reservations[0]
        .instances
        .iter()
        .map(|i| {
            assert_eq!(i.state, "pending", "{i:?}");
            assert!(i.reason.as_deref().unwrap().contains("DHCP lease"), "{i:?}");
            i.id.clone()
        })
        .collect();
    let ns = launched_ids(&core.handle(run_one()));
    let find = |v: &[(String, String, Option<String>)], id: &str| {
        v.iter().find(|x| x.0 == id).cloned().unwrap()
    };
    let v = views(&mut core);
    assert_eq!(find(&v, &ns[0]), (ns[0].clone(), "running".into(), None));
    assert_eq!(find(&v, &guests[0]).1, "pending");
    // The first guest gets its lease (seen on a tick), the second dies.
    {
        let mut st = dp.state.lock().unwrap();
        st.liveness.insert(guests[0].clone(), Liveness::Running);
        st.liveness.insert(
            guests[1].clone(),
            Liveness::Stopped("qemu-system-x86_64 exited with status 1: qemu: bad".into()),
        );
    }
    core.tick();
    let v = views(&mut core);
    assert_eq!(
        find(&v, &guests[0]),
        (guests[0].clone(), "running".into(), None)
    );
    assert_eq!(
        find(&v, &guests[1]),
        (
            guests[1].clone(),
            "stopped".into(),
            Some("qemu-system-x86_64 exited with status 1: qemu: bad".into())
        )
    );
    // Stopped is for good: the data plane is not asked again.
    dp.state
        .lock()
        .unwrap()
        .liveness
        .insert(guests[1].clone(), Liveness::Running);
    let checks = dp.state.lock().unwrap().checks;
    core.tick();
    assert_eq!(find(&views(&mut core), &guests[1]).1, "stopped");
    assert_eq!(
        dp.state.lock().unwrap().checks,
        checks + 1 + 2,
        "a tick checks the running guest, a describe the two running instances"
    );
    // A namespace deleted by hand: stopped, and terminate reports it so.
    dp.state.lock().unwrap().liveness.insert(
        ns[0].clone(),
        Liveness::Stopped(format!(
            "its network namespace {} was deleted outside sgswitch",
            ns[0]
        )),
    );
    let v = views(&mut core);
    assert_eq!(find(&v, &ns[0]).1, "stopped");
    let r = core.handle(req(Command::TerminateInstances {
        ids: vec![ns[0].clone(), guests[1].clone()],
        all: false,
    }));
    let Ok(Response::StateChanges { changes }) = r else {
        panic!("{r:?}")
    };
    assert!(
        changes.iter().all(|c| c.previous == "stopped"),
        "{changes:?}"
    );
}

/// `terminate-instances --all` ends every instance of the caller's owner, and
/// only those; with none left it answers an empty list.
#[test]
fn terminate_all_ends_the_owners_instances_only() {
    let dir = TempDir::new("core-term-all");
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    let run = |core: &mut Core, owner: Option<&str>, n: u32| {
        let mut r = req(Command::RunInstances {
            ami: "ami-1".into(),
            count: n,
            groups: vec![],
            min_count: None,
            qemu: Some(false),
            client_token: None,
        });
        r.owner = owner.map(Into::into);
        launched_ids(&core.handle(r))
    };
    let mine = run(&mut core, None, 3);
    let theirs = run(&mut core, Some("222233334444"), 2);
    let all = Command::TerminateInstances {
        ids: vec![],
        all: true,
    };
    let r = core.handle(req(all.clone()));
    let Ok(Response::StateChanges { changes }) = r else {
        panic!("{r:?}")
    };
    let mut ended: Vec<String> = changes.iter().map(|c| c.id.clone()).collect();
    ended.sort();
    let mut want = mine.clone();
    want.sort();
    assert_eq!(ended, want);
    assert!(
        changes
            .iter()
            .all(|c| c.previous == "running" && c.current == "shutting-down")
    );
    let attached = dp.state.lock().unwrap().attached.clone();
    assert_eq!(attached, theirs.iter().cloned().collect());
    assert_eq!(core.model().instances().len(), 2);
    let r = core.handle(req(all));
    assert!(
        matches!(&r, Ok(Response::StateChanges { changes }) if changes.is_empty()),
        "{r:?}"
    );
}

fn trace_cmd(from: &str, to: &str, proto: &str, port: Option<u16>) -> Command {
    Command::Trace {
        from: from.into(),
        to: to.into(),
        proto: proto.into(),
        port,
        icmp: None,
        established: false,
        reply_of: false,
        ipv6: false,
    }
}

fn traced(r: Reply) -> crate::api::TraceReport {
    match r {
        Ok(Response::Trace { trace }) => *trace,
        other => panic!("expected a trace, got {other:?}"),
    }
}

fn step<'a>(t: &'a crate::api::TraceReport, name: &str) -> &'a crate::api::TraceStep {
    t.steps
        .iter()
        .find(|s| s.step == name)
        .unwrap_or_else(|| panic!("no step {name} in {t:?}"))
}

/// Albert's walkthrough: SSH from outside is dropped (`no_rule`, `default`
/// consulted) until a rule admits it; then trace names that rule, and only
/// for the address it admits.
#[test]
fn trace_names_the_drop_reason_and_the_admitting_rule() {
    let dir = TempDir::new("core-trace");
    let mut core = core_in(&dir, config());
    let id = launched_ids(&core.handle(req(run(1, &[]))))[0].clone();
    let t = traced(core.handle(req(trace_cmd("172.31.255.10", &id, "tcp", Some(22)))));
    assert_eq!(t.verdict, "dropped");
    assert_eq!(t.reason.as_deref(), Some("no_rule"));
    assert_eq!(t.groups, vec!["default".to_string()]);
    assert_eq!(t.owner.as_deref(), Some(OWNER));
    assert!(t.rules.is_empty());
    assert_eq!(step(&t, "source").result, "ok");
    assert_eq!(step(&t, "arp").result, "answered");
    assert_eq!(step(&t, "destination").result, "ok");
    assert_eq!(step(&t, "connection").result, "drop");
    assert_eq!(t.src, "172.31.255.10:40000");
    assert_eq!(t.dst, "172.31.0.2:22");
    let text = crate::cli::format_response(&Response::Trace {
        trace: Box::new(t.clone()),
    });
    assert!(text.contains("VERDICT\tdropped\tno_rule\n"), "{text}");
    assert!(
        text.contains(&format!("CONSULTED\t{OWNER}\tdefault\n")),
        "{text}"
    );

    core.handle(req(Command::Authorize {
        egress: false,
        group: "default".into(),
        permissions: vec![spec("tcp", "22", "172.31.255.10/32").into()],
    }))
    .unwrap();
    let t = traced(core.handle(req(trace_cmd("172.31.255.10", &id, "tcp", Some(22)))));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    assert_eq!(t.generation, core.generation());
    assert_eq!(t.rules.len(), 1);
    assert_eq!(t.rules[0].group, "default");
    assert_eq!(
        crate::cli::permission_line(&t.rules[0].group, &t.rules[0].rule),
        "PERMISSION\tdefault\tALLOWS\ttcp\t22\t22\tFROM\tCIDR\t172.31.255.10/32"
    );
    assert_eq!(step(&t, "connection").result, "new");
    assert_eq!(step(&t, "transmit").result, "ok");
    let text = crate::cli::format_response(&Response::Trace { trace: Box::new(t) });
    assert!(text.contains("VERDICT\tallowed\nPERMISSION\tdefault\tALLOWS\ttcp\t22\t22\tFROM\tCIDR\t172.31.255.10/32\n"), "{text}");
    // Another address: still dropped; port 80: still dropped.
    let t = traced(core.handle(req(trace_cmd("172.31.255.11", &id, "tcp", Some(22)))));
    assert_eq!(t.reason.as_deref(), Some("no_rule"));
    let t = traced(core.handle(req(trace_cmd("172.31.255.10", &id, "tcp", Some(80)))));
    assert_eq!(t.reason.as_deref(), Some("no_rule"));
}

/// Mary's tiers: the app tier admits the web tier by group (the rule is
/// named), not the outside; the reply of an app server's connection to the
/// outside passes as a tracked flow; egress to the outside is not filtered;
/// two matching rules are both named.
#[test]
fn trace_of_group_rules_replies_and_egress() {
    let dir = TempDir::new("core-trace-tiers");
    let mut core = core_in(&dir, config());
    for g in ["web", "app"] {
        core.handle(req(add_group(g))).unwrap();
    }
    core.handle(req(Command::Authorize {
        egress: false,
        group: "app".into(),
        permissions: vec![group_spec("web", None).into()],
    }))
    .unwrap();
    core.handle(req(Command::Authorize {
        egress: false,
        group: "app".into(),
        permissions: vec![spec("tcp", "8000-8100", "172.31.0.0/24").into()],
    }))
    .unwrap();
    let web = launched_ids(&core.handle(req(run(1, &["web"]))))[0].clone();
    let app = launched_ids(&core.handle(req(run(1, &["app"]))))[0].clone();
    let t = traced(core.handle(req(trace_cmd(&web, &app, "tcp", Some(8080)))));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    assert_eq!(t.rules.len(), 2, "{t:?}");
    assert!(t.rules.iter().all(|r| r.group == "app"));
    let t = traced(core.handle(req(trace_cmd("172.31.255.10", &app, "tcp", Some(8080)))));
    assert_eq!(t.reason.as_deref(), Some("no_rule"));
    assert_eq!(t.groups, vec!["app".to_string()]);
    // Egress: app -> outside passes by app's default egress rule (no
    // ingress rule applies), and the trace says so.
    let t = traced(core.handle(req(trace_cmd(&app, "172.31.255.10", "tcp", Some(443)))));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    assert!(t.rules.is_empty());
    let conn = step(&t, "connection").detail.clone();
    assert!(
        conn.contains("the source's egress rules allow it, flow tracked"),
        "{conn}"
    );
    assert_eq!(
        step(&t, "destination").detail,
        "172.31.255.10 is no instance: the uplink"
    );
    // The outside's answer to app's connection: a tracked flow.
    let mut c = trace_cmd("172.31.255.10", &app, "tcp", Some(443));
    if let Command::Trace { reply_of, .. } = &mut c {
        *reply_of = true;
    }
    let t = traced(core.handle(req(c)));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    assert_eq!(step(&t, "request").result, "ok");
    assert_eq!(step(&t, "connection").result, "tracked");
    assert_eq!(t.src, "172.31.255.10:443");
    assert!(t.rules.is_empty());
    // The same packet without the flow: dropped.
    let t = traced(core.handle(req(trace_cmd("172.31.255.10", &app, "tcp", Some(40000)))));
    assert_eq!(t.reason.as_deref(), Some("no_rule"));
    // An established flow web -> app: its ACK passes as part of the flow.
    let mut c = trace_cmd(&web, &app, "tcp", Some(8080));
    if let Command::Trace { established, .. } = &mut c {
        *established = true;
    }
    let t = traced(core.handle(req(c)));
    assert_eq!(t.what, "ACK");
    assert_eq!(step(&t, "connection").result, "tracked", "{t:?}");
    assert_eq!(t.verdict, "allowed");
    // An ICMP port unreachable from outside about a datagram app sent there:
    // related to the flow with --reply-of, unrelated (dropped) without.
    let icmp = |reply: bool| Command::Trace {
        from: "172.31.255.10".into(),
        to: app.clone(),
        proto: "icmp".into(),
        port: None,
        icmp: Some("3:3".into()),
        established: false,
        reply_of: reply,
        ipv6: false,
    };
    let t = traced(core.handle(req(icmp(true))));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    let t = traced(core.handle(req(icmp(false))));
    assert_eq!(t.reason.as_deref(), Some("unrelated_icmp_error"), "{t:?}");
    // ICMP echo from web to app: admitted by the `all` group rule only.
    let t = traced(core.handle(req(trace_cmd(&web, &app, "icmp", None))));
    assert_eq!(t.verdict, "allowed");
    assert_eq!(t.rules.len(), 1);
}

/// IPv6 through `trace`: `-6` between instance ids, their IPv6 addresses
/// and neighbor discovery in place of ARP; an IPv4-only rule does not open
/// IPv6 (the drop names it as IPV4ONLY), an IPv6 rule does (named as
/// describe-group prints it); from outside, egress via the router and the
/// reply of a tracked flow; the family's errors.
#[test]
fn trace_of_ipv6() {
    let dir = TempDir::new("core-trace6");
    let mut cfg = config();
    let p: ipnet::Ipv6Net = "fd00:aa:bb:cc::/64".parse().unwrap();
    cfg.subnet6 = Some(p);
    let dp = RecordingDataplane::default();
    dp.state.lock().unwrap().subnet6 = Some(p);
    let mut core = core_with(&dir, cfg, dp);
    core.handle(req(add_group("dual"))).unwrap();
    core.handle(req(Command::Authorize {
        egress: false,
        group: "dual".into(),
        permissions: vec![spec("tcp", "7", "0.0.0.0/0").into()],
    }))
    .unwrap();
    let ids = launched_ids(&core.handle(req(run(2, &["dual"]))));
    let (a, b) = (&ids[0], &ids[1]);
    let (a6, b6) = (
        filter::model::eui64_address(p, instance_mac(a)),
        filter::model::eui64_address(p, instance_mac(b)),
    );
    let six = |mut c: Command| {
        if let Command::Trace { ipv6, .. } = &mut c {
            *ipv6 = true;
        }
        c
    };
    // IPv4 between the ids: the 0.0.0.0/0 rule admits it.
    let t = traced(core.handle(req(trace_cmd(a, b, "tcp", Some(7)))));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    // IPv6: not opened by it.
    let t = traced(core.handle(req(six(trace_cmd(a, b, "tcp", Some(7))))));
    assert_eq!(t.reason.as_deref(), Some("no_rule"), "{t:?}");
    assert_eq!(
        (t.src.as_str(), t.dst.as_str()),
        (&*format!("[{a6}]:40000"), &*format!("[{b6}]:7"))
    );
    assert_eq!(step(&t, "nd").result, "answered");
    assert_eq!(
        step(&t, "nd").detail,
        format!(
            "who-has {b6}: the switch answers {}",
            format_mac(&instance_mac(b))
        )
    );
    assert!(
        step(&t, "source")
            .detail
            .contains(&format!("address {a6} are {a}'s")),
        "{t:?}"
    );
    assert!(
        step(&t, "connection")
            .detail
            .contains("IPv4 CIDR does not open IPv6"),
        "{t:?}"
    );
    assert_eq!(t.ipv4_only.len(), 1);
    let text = crate::cli::format_response(&Response::Trace {
        trace: Box::new(t.clone()),
    });
    assert!(
        text.contains("VERDICT\tdropped\tno_rule\nCONSULTED\t111122223333\tdual\nIPV4ONLY\tPERMISSION\tdual\tALLOWS\ttcp\t7\t7\tFROM\tCIDR\t0.0.0.0/0\n"),
        "{text}"
    );
    // The same by address; an IPv6 address implies -6.
    let t = traced(core.handle(req(trace_cmd(&a6.to_string(), b, "tcp", Some(7)))));
    assert_eq!(t.reason.as_deref(), Some("no_rule"), "{t:?}");

    core.handle(req(Command::Authorize {
        egress: false,
        group: "dual".into(),
        permissions: vec![spec("tcp", "7", "::/0").into()],
    }))
    .unwrap();
    let t = traced(core.handle(req(six(trace_cmd(a, b, "tcp", Some(7))))));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    assert!(t.ipv4_only.is_empty());
    assert_eq!(t.rules.len(), 1);
    assert_eq!(
        crate::cli::permission_line(&t.rules[0].group, &t.rules[0].rule),
        "PERMISSION\tdual\tALLOWS\ttcp\t7\t7\tFROM\tCIDR\t::/0"
    );
    assert_eq!(
        step(&t, "transmit").detail,
        format!("delivered to {b} ({b6})")
    );
    // From outside: the rule admits it; the uplink's solicitation is answered.
    let t = traced(core.handle(req(trace_cmd("2001:db8::10", b, "tcp", Some(7)))));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    assert!(
        step(&t, "source").detail.ends_with("nor the router's"),
        "{t:?}"
    );
    // To the outside: the next hop is the switch's link-local router address.
    let t = traced(core.handle(req(trace_cmd(a, "2001:db8::10", "tcp", Some(443)))));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    assert_eq!(
        step(&t, "nd").detail,
        format!(
            "who-has {}: the switch answers {}",
            switch::nd::router_ll(),
            format_mac(&switch::arp::GATEWAY_MAC)
        )
    );
    assert_eq!(step(&t, "transmit").detail, "sent to the uplink");
    // ... whose answer is the reply of a tracked flow; without it, dropped.
    let mut c = trace_cmd("2001:db8::10", a, "tcp", Some(443));
    if let Command::Trace { reply_of, .. } = &mut c {
        *reply_of = true;
    }
    let t = traced(core.handle(req(c)));
    assert_eq!(step(&t, "connection").result, "tracked", "{t:?}");
    assert_eq!(t.verdict, "allowed");
    let t = traced(core.handle(req(trace_cmd("2001:db8::10", a, "tcp", Some(40000)))));
    assert_eq!(t.reason.as_deref(), Some("no_rule"));
    // ICMPv6 echo: no rule admits it.
    let t = traced(core.handle(req(trace_cmd(a, b, "icmpv6", None))));
    assert_eq!(
        (t.proto.as_str(), t.what.as_str()),
        ("icmpv6", "type 128 code 0")
    );
    assert_eq!(t.reason.as_deref(), Some("no_rule"), "{t:?}");
    // An established flow a -> b: its ACK passes as part of the flow.
    let mut c = six(trace_cmd(a, b, "tcp", Some(7)));
    if let Command::Trace { established, .. } = &mut c {
        *established = true;
    }
    let t = traced(core.handle(req(c)));
    assert_eq!(t.what, "ACK");
    assert_eq!(step(&t, "connection").result, "tracked", "{t:?}");
    // The outside's echo reply and Packet Too Big about what a sent there:
    // the reply of a tracked flow, a related error; without the flow, dropped.
    let icmp6 = |tc: &str, reply: bool| Command::Trace {
        from: "2001:db8::10".into(),
        to: a.clone(),
        proto: "icmpv6".into(),
        port: None,
        icmp: Some(tc.into()),
        established: false,
        reply_of: reply,
        ipv6: false,
    };
    let t = traced(core.handle(req(icmp6("129:0", true))));
    assert_eq!(step(&t, "connection").result, "tracked", "{t:?}");
    assert_eq!(t.verdict, "allowed");
    let t = traced(core.handle(req(icmp6("2:0", true))));
    assert_eq!(t.verdict, "allowed", "{t:?}");
    let t = traced(core.handle(req(icmp6("2:0", false))));
    assert_eq!(t.reason.as_deref(), Some("unrelated_icmp_error"), "{t:?}");
    // Families: icmp over IPv6, icmpv6 over IPv4, mixed addresses, -6 with
    // an IPv4 address.
    for (c, want) in [
        (trace_cmd("2001:db8::10", b, "icmp", None), "'icmp'"),
        (
            trace_cmd("172.31.255.10", b, "icmpv6", None),
            "172.31.255.10",
        ),
        (
            trace_cmd("2001:db8::10", "172.31.0.2", "tcp", Some(7)),
            "different address families",
        ),
        (
            six(trace_cmd("172.31.255.10", b, "tcp", Some(7))),
            "172.31.255.10",
        ),
    ] {
        let e = core.handle(req(c)).unwrap_err();
        assert_eq!(e.code.as_str(), "InvalidParameterCombination", "{e}");
        assert!(e.message.contains(want), "{e}");
    }
}

/// Without an IPv6 subnet an instance has no IPv6 address to trace.
#[test]
fn trace_ipv6_needs_the_subnet() {
    let dir = TempDir::new("core-trace6-none");
    let mut core = core_in(&dir, config());
    let ids = launched_ids(&core.handle(req(run(2, &[]))));
    let mut c = trace_cmd(&ids[0], &ids[1], "tcp", Some(22));
    if let Command::Trace { ipv6, .. } = &mut c {
        *ipv6 = true;
    }
    let e = core.handle(req(c)).unwrap_err();
    assert!(e.message.contains("no IPv6 address"), "{e}");
}

/// Bad input is an error naming the value.
#[test]
fn trace_bad_input() {
    let dir = TempDir::new("core-trace-bad");
    let mut core = core_in(&dir, config());
    let id = launched_ids(&core.handle(req(run(1, &[]))))[0].clone();
    let e = core
        .handle(req(trace_cmd("i-00000000", &id, "tcp", Some(22))))
        .unwrap_err();
    assert_eq!(e.code.as_str(), "InvalidInstanceID.NotFound");
    assert!(e.message.contains("i-00000000"));
    let e = core
        .handle(req(trace_cmd("1.2.3", &id, "tcp", Some(22))))
        .unwrap_err();
    assert!(e.message.contains("'1.2.3'"), "{e}");
    let e = core
        .handle(req(trace_cmd("1.2.3.4", &id, "gre", Some(22))))
        .unwrap_err();
    assert!(e.message.contains("'gre'"), "{e}");
    let e = core
        .handle(req(trace_cmd("1.2.3.4", &id, "tcp", None)))
        .unwrap_err();
    assert_eq!(e.code.as_str(), "MissingParameter");
    // Another owner's instance is not found for them.
    let e = core
        .handle(req_as(OTHER, trace_cmd("1.2.3.4", &id, "tcp", Some(22))))
        .unwrap_err();
    assert_eq!(e.code.as_str(), "InvalidInstanceID.NotFound");
    let e = core
        .handle(req_as(
            OTHER,
            trace_cmd("1.2.3.4", "172.31.0.2", "tcp", Some(22)),
        ))
        .unwrap_err();
    assert!(e.message.contains("another account"), "{e}");
}

/// A `tracing` writer into a shared buffer (the event-log tests).
#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Launches, terminations, re-attach progress at start and ports the switch
/// lost are in the event log.
#[test]
fn lifecycle_events_are_logged() {
    let buf = LogBuf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let dir = TempDir::new("core-evlog");
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    let ids = launched_ids(&core.handle(req(run(12, &[]))));
    let log = buf.text();
    assert!(
        log.contains(&format!(
            "launched instance {} (172.31.0.2, netns:{})",
            ids[0], ids[0]
        )),
        "{log}"
    );
    assert!(
        log.contains("edit run-instances by 111122223333: ok"),
        "{log}"
    );
    core.handle(req(Command::TerminateInstances {
        ids: vec![ids[11].clone()],
        all: false,
    }))
    .unwrap();
    assert!(
        buf.text()
            .contains(&format!("terminated instance {} (was running)", ids[11]))
    );
    drop(core);
    let mut core = core_with(&dir, config(), dp.clone());
    let log = buf.text();
    assert!(log.contains("re-attached 1/11"), "{log}");
    assert!(log.contains("re-attached 11/11"), "{log}");
    assert!(!log.contains("re-attached 12/"), "{log}");
    // The switch loses a port: logged, and the instance's new state too.
    dp.state.lock().unwrap().ports_gone = 1;
    dp.state
        .lock()
        .unwrap()
        .liveness
        .insert(ids[3].clone(), Liveness::Stopped("its port is gone".into()));
    core.tick();
    let log = buf.text();
    assert!(log.contains("the switch lost 1 port(s)"), "{log}");
    assert!(
        log.contains(&format!("instance {} stopped: its port is gone", ids[3])),
        "{log}"
    );
    core.tick();
    assert_eq!(
        buf.text().matches("the switch lost").count(),
        1,
        "logged once"
    );
}

/// The verb logged for a command is its name on the wire.
#[test]
fn command_verbs_are_the_wire_names() {
    for c in [
        add_group("x"),
        run(1, &[]),
        Command::Stats,
        Command::CreateAccessKey,
        trace_cmd("a", "b", "tcp", Some(1)),
        Command::DescribeGroups { groups: vec![] },
        Command::TerminateInstances {
            ids: vec![],
            all: true,
        },
    ] {
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["op"], c.verb(), "{c:?}");
    }
}

/// `stats i-...`: the caller's instance only, with its state (no port with
/// the recording data plane).
#[test]
fn instance_stats_of_own_instances_only() {
    let dir = TempDir::new("core-istats");
    let mut core = core_in(&dir, config());
    let id = launched_ids(&core.handle(req(run(1, &[]))))[0].clone();
    let r = core
        .handle(req(Command::InstanceStats { id: id.clone() }))
        .unwrap();
    let Response::InstanceStats { stats } = r else {
        panic!("{r:?}")
    };
    assert_eq!(stats.instance.id, id);
    assert_eq!(stats.instance.state, "running");
    assert_eq!(stats.port, None);
    let e = core
        .handle(req_as(OTHER, Command::InstanceStats { id: id.clone() }))
        .unwrap_err();
    assert_eq!(e.code.as_str(), "InvalidInstanceID.NotFound");
    let e = core
        .handle(req(Command::InstanceStats {
            id: "i-nosuch".into(),
        }))
        .unwrap_err();
    assert!(e.message.contains("i-nosuch"), "{e}");
}

#[test]
fn describe_instances_shows_each_instances_ipv6_address() {
    let dir = TempDir::new("core-ip6");
    let mut cfg = config();
    let p: ipnet::Ipv6Net = "fd00:aa:bb:cc::/64".parse().unwrap();
    cfg.subnet6 = Some(p);
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, cfg, dp.clone());
    assert_eq!(core.model().subnet6(), Some(p));
    let ids = launched_ids(&core.handle(req(run(2, &[]))));
    let r = core.handle(req(Command::DescribeInstances { ids: vec![] }));
    let Ok(Response::Reservations { reservations }) = &r else {
        panic!("{r:?}")
    };
    let views = &reservations[0].instances;
    assert_eq!(views.len(), 2);
    for (v, id) in views.iter().zip(&ids) {
        let want = filter::model::eui64_address(p, instance_mac(id));
        assert_eq!(v.ipv6_address, Some(want), "{id}");
        assert!(p.contains(&want));
    }
    // The published snapshot knows them by IPv6 address.
    let st = dp.state.lock().unwrap();
    let snap = st.snapshots.last().expect("published");
    let a = views[0].ipv6_address.unwrap();
    assert!(snap.instance_by_ip6(a).is_some());
}

#[test]
fn another_subnet6_is_refused_while_instances_exist() {
    let dir = TempDir::new("core-ip6-change");
    let kept: ipnet::Ipv6Net = "fd00:aa:bb:cc::/64".parse().unwrap();
    {
        let mut store = Store::open_dir(&dir.0).unwrap();
        assert_eq!(
            crate::ipv6::resolve(&mut store, Some(kept), None).unwrap(),
            kept
        );
    }
    let mut cfg = config();
    cfg.subnet6 = Some(kept);
    let mut core = core_in(&dir, cfg);
    launched_ids(&core.handle(req(run(1, &[]))));
    drop(core);
    let mut store = Store::open_dir(&dir.0).unwrap();
    let other: ipnet::Ipv6Net = "fd00:aa:bb:dd::/64".parse().unwrap();
    let e = crate::ipv6::resolve(&mut store, Some(other), None).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("fd00:aa:bb:dd::/64") && m.contains("fd00:aa:bb:cc::/64"),
        "{m}"
    );
    // Unchanged, and the kept prefix (given or not) is accepted.
    assert_eq!(
        store.setting(crate::ipv6::SETTING).unwrap(),
        Some(kept.to_string())
    );
    assert_eq!(crate::ipv6::resolve(&mut store, None, None).unwrap(), kept);
    assert_eq!(
        crate::ipv6::resolve(&mut store, Some(kept), None).unwrap(),
        kept
    );
}

// ---------------------------------------------------------------------------
// Launches in two steps (issue 13): the management thread is free meanwhile
// ---------------------------------------------------------------------------

/// [`Core::begin`] of a slow request: its ticket and job.
fn begin_slow(core: &mut Core, command: Command) -> (u64, Job) {
    match core.begin(req(command)) {
        Step::Slow { ticket, job } => (ticket, job),
        Step::Done(r) => panic!("expected a slow request, answered {r:?}"),
    }
}

fn reservation(r: &Reply) -> &Reservation {
    match r {
        Ok(Response::Reservations { reservations }) if reservations.len() == 1 => &reservations[0],
        other => panic!("expected one reservation, got {other:?}"),
    }
}

fn with_token(count: u32, token: &str) -> Command {
    Command::RunInstances {
        ami: "ami-eca54085".into(),
        count,
        groups: vec![],
        min_count: None,
        qemu: Some(false),
        client_token: Some(token.into()),
    }
}

#[test]
fn an_edit_is_answered_and_published_while_a_launch_is_in_flight() {
    let dir = TempDir::new("core-inflight");
    let (dp, gate) = RecordingDataplane::gated();
    let mut core = core_with(&dir, config(), dp.clone());
    core.handle(req(add_group("web"))).unwrap();
    let (ticket, job) = begin_slow(&mut core, run(1, &["web"]));
    let launcher = std::thread::spawn(job);
    dp.wait_at_gate(1);
    // The launch is in flight: an edit goes through, published and
    // committed, and the model carries nothing of the launch.
    let published = dp.state.lock().unwrap().published.len();
    core.handle(req(Command::Authorize {
        egress: false,
        group: "web".into(),
        permissions: vec![spec("tcp", "80", "10.0.0.0/8").into()],
    }))
    .unwrap();
    assert_eq!(
        dp.state.lock().unwrap().published.len(),
        published + 1,
        "the authorize was published while the launch waits"
    );
    assert_eq!(dp.at_gate(), 1, "the launch is still in flight");
    assert!(
        core.model().instances().is_empty(),
        "nothing staged meanwhile"
    );
    let r = core
        .handle(req(Command::DescribeInstances { ids: vec![] }))
        .unwrap();
    assert_eq!(
        r,
        Response::Reservations {
            reservations: vec![]
        }
    );
    gate.open();
    let done = launcher.join().unwrap();
    let r = core.finish(ticket, done);
    let res = reservation(&r);
    assert_eq!(res.instances.len(), 1);
    assert_eq!(res.instances[0].state, "running");
    assert_eq!(core.model().instances().len(), 1);
    assert_eq!(core.in_flight(), 0);
    // Both are in the store.
    let dump = core.dump();
    drop(core);
    let core = core_in(&dir, config());
    assert_eq!(core.model().instances().len(), 1);
    assert_eq!(
        core.model().groups()[&(Owner(OWNER.into()), "web".into())]
            .rules
            .len(),
        1
    );
    assert_eq!(core.dump(), dump, "reloaded as committed");
}

#[test]
fn concurrent_launches_get_distinct_ids_addresses_and_macs() {
    let dir = TempDir::new("core-concurrent-launch");
    let mut core = core_in(&dir, config());
    core.handle(req(add_group("web"))).unwrap();
    let (t1, j1) = begin_slow(&mut core, run(2, &[]));
    let (t2, j2) = begin_slow(&mut core, run(3, &[]));
    // An attach naming an address a launch in flight holds is refused.
    let taken = core
        .pending
        .values()
        .find_map(|p| match &p.what {
            lifecycle::Slow::Launch(l) => l.records.values().next().map(|r| r.instance.ip),
            _ => None,
        })
        .unwrap();
    let r = core.handle(req(attach("tap0", Some(&taken.to_string()), None)));
    assert_eq!(code(&r), "InvalidParameterValue");
    assert!(format!("{r:?}").contains("launching"), "{r:?}");
    // Finished in the other order.
    let (d1, d2) = (j1(), j2());
    let r2 = core.finish(t2, d2);
    let r1 = core.finish(t1, d1);
    let mut ips = std::collections::BTreeSet::new();
    let mut macs = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeSet::new();
    for r in [&r1, &r2] {
        for i in &reservation(r).instances {
            ips.insert(i.ip);
            macs.insert(i.mac.clone());
            ids.insert(i.id.clone());
        }
    }
    assert_eq!((ips.len(), macs.len(), ids.len()), (5, 5, 5), "{ips:?}");
    assert_eq!(core.model().instances().len(), 5);
    // The lowest free addresses, none skipped.
    let first = u32::from("172.31.0.2".parse::<Ipv4Addr>().unwrap());
    let want: std::collections::BTreeSet<Ipv4Addr> =
        (first..first + 5).map(Ipv4Addr::from).collect();
    assert_eq!(ips, want);
}

#[test]
fn a_group_deleted_while_its_launch_is_in_flight_fails_the_launch_cleanly() {
    let dir = TempDir::new("core-deleted-meanwhile");
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    core.handle(req(add_group("web"))).unwrap();
    let (ticket, job) = begin_slow(&mut core, run(2, &["web"]));
    // No instance is in it yet: the delete goes through.
    core.handle(req(Command::DeleteGroup {
        group: "web".into(),
    }))
    .unwrap();
    let before = core.dump();
    let r = core.finish(ticket, job());
    // The same error as a launch naming a missing group.
    let direct = core.handle(req(run(1, &["web"])));
    assert_eq!(code(&r), "InvalidGroup.NotFound");
    assert_eq!(
        format!("{:?}", r.unwrap_err()),
        format!("{:?}", direct.unwrap_err())
    );
    assert_eq!(core.dump(), before, "nothing changed");
    let st = dp.state.lock().unwrap();
    assert!(
        st.attached.is_empty(),
        "what was made is undone: {:?}",
        st.attached
    );
    assert_eq!(st.terminated.len(), 2, "both instances destroyed again");
}

#[test]
fn a_client_token_repeated_while_its_launch_is_in_flight_launches_once() {
    let dir = TempDir::new("core-token-inflight");
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    let (ticket, job) = begin_slow(&mut core, with_token(2, "tok-1"));
    // The repeat answers the reservation in flight, its instances pending.
    let again = match core.begin(req(with_token(2, "tok-1"))) {
        Step::Done(r) => r,
        Step::Slow { .. } => panic!("a repeat must not launch again"),
    };
    let pending = reservation(&again).clone();
    assert_eq!(pending.instances.len(), 2);
    assert!(pending.instances.iter().all(|i| i.state == "pending"));
    // Other parameters: a mismatch, as for a token already stored.
    let other = core.handle(req(with_token(3, "tok-1")));
    assert_eq!(code(&other), "IdempotentParameterMismatch");
    let r = core.finish(ticket, job());
    let done = reservation(&r);
    assert_eq!(done.id, pending.id);
    let ids = |res: &Reservation| {
        res.instances
            .iter()
            .map(|i| i.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(done), ids(&pending));
    assert_eq!(dp.state.lock().unwrap().launches, 2, "launched once");
    let after = core.handle(req(with_token(2, "tok-1")));
    assert_eq!(ids(reservation(&after)), ids(&pending));
}

#[test]
fn a_termination_commits_at_once_and_answers_after_the_destroy() {
    let dir = TempDir::new("core-terminate-2step");
    let dp = RecordingDataplane::default();
    let mut core = core_with(&dir, config(), dp.clone());
    let ids = launched_ids(&core.handle(req(run(2, &[]))));
    let (ticket, job) = begin_slow(
        &mut core,
        Command::TerminateInstances {
            ids: ids.clone(),
            all: false,
        },
    );
    // Gone from the model and the store before the destroy ran; its
    // addresses are free again.
    assert!(core.model().instances().is_empty());
    let dump = core.dump();
    assert!(!dump.contains(&ids[0]), "committed at once");
    let r = core.finish(ticket, job()).unwrap();
    let Response::StateChanges { changes } = r else {
        panic!("{r:?}")
    };
    assert_eq!(changes.len(), 2);
    assert!(
        changes
            .iter()
            .all(|c| c.current == "shutting-down" && c.previous == "running")
    );
    assert_eq!(dp.state.lock().unwrap().terminated.len(), 2);
}
