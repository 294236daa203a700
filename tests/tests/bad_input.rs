//! Bad input through the real CLI: every EC2 error code comes back as
//! `Code: message` on stderr naming the offending value, with exit status 1, and
//! the state is unchanged afterwards (`describe-group` and `describe-instances`
//! byte-identical). Usage errors exit 2. Needs root (skips without).

use e2e::{Lab, LabConfig};

/// `sgswitch ARGS` must fail with `code`, and the message must name `value`.
#[track_caller]
fn expect_error(lab: &Lab, args: &[&str], code: &str, value: &str) {
    let o = lab.cli(args);
    let shown = format!(
        "sgswitch {}: exit {:?}\nstdout: {}\nstderr: {}",
        args.join(" "),
        o.code,
        o.stdout,
        o.stderr
    );
    assert_eq!(o.code, Some(1), "{shown}");
    let line = o
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("{code}: ")))
        .unwrap_or_else(|| panic!("no `{code}: ...` line\n{shown}"));
    assert!(
        line.contains(value),
        "message does not name {value:?}\n{shown}"
    );
    assert!(o.stdout.is_empty(), "{shown}");
}

#[track_caller]
fn expect_usage(lab: &Lab, args: &[&str]) {
    let o = lab.cli(args);
    assert_eq!(o.code, Some(2), "sgswitch {}: {o:?}", args.join(" "));
    assert!(!o.stderr.is_empty(), "usage error without a message: {o:?}");
}

#[test]
fn every_error_code_through_the_cli_leaves_the_state_unchanged() {
    let Some(lab) = Lab::start(LabConfig::new("bad-input")) else {
        return;
    };
    // A little state to protect: groups with rules, a group referenced by
    // another, a group in use by an instance, a group one rule short of full.
    lab.cli_ok(&["add-group", "g1", "-d", "first"]);
    lab.cli_ok(&[
        "authorize",
        "g1",
        "-P",
        "tcp",
        "-p",
        "22",
        "-s",
        "10.0.0.0/8",
    ]);
    lab.cli_ok(&["add-group", "g2", "-d", "refers to g1"]);
    lab.cli_ok(&["authorize", "g2", "-o", "g1"]);
    lab.cli_ok(&["add-group", "used", "-d", "has an instance"]);
    let inst = lab.run_instances(1, &["used"]).remove(0);
    lab.cli_ok(&["add-group", "full", "-d", "99 rules"]);
    let cidrs: Vec<String> = (1..=99).map(|i| format!("10.1.{i}.0/24")).collect();
    let mut args = vec!["authorize", "full", "-P", "tcp", "-p", "443"];
    for c in &cidrs {
        args.extend(["-s", c.as_str()]);
    }
    lab.cli_ok(&args);

    let groups_before = lab.cli_ok(&["describe-group"]);
    let instances_before = lab.cli_ok(&["describe-instances"]);
    assert!(groups_before.contains("\tfull\t"), "{groups_before}");
    assert_eq!(
        groups_before
            .lines()
            .filter(|l| l.contains("\tfull\tALLOWS\t"))
            .count(),
        99
    );

    // InvalidGroup.*
    expect_error(
        &lab,
        &["add-group", "g1", "-d", "again"],
        "InvalidGroup.Duplicate",
        "g1",
    );
    expect_error(
        &lab,
        &["add-group", "default", "-d", "again"],
        "InvalidGroup.Duplicate",
        "default",
    );
    expect_error(
        &lab,
        &["delete-group", "nosuch"],
        "InvalidGroup.NotFound",
        "nosuch",
    );
    expect_error(
        &lab,
        &["describe-group", "nosuch"],
        "InvalidGroup.NotFound",
        "nosuch",
    );
    expect_error(
        &lab,
        &["authorize", "nosuch", "-P", "tcp", "-p", "22"],
        "InvalidGroup.NotFound",
        "nosuch",
    );
    expect_error(
        &lab,
        &["revoke", "nosuch", "-P", "tcp", "-p", "22"],
        "InvalidGroup.NotFound",
        "nosuch",
    );
    expect_error(
        &lab,
        &["authorize", "g1", "-o", "nosuch"],
        "InvalidGroup.NotFound",
        "nosuch",
    );
    expect_error(
        &lab,
        &["run-instances", e2e::AMI, "-g", "nosuch"],
        "InvalidGroup.NotFound",
        "nosuch",
    );
    expect_error(&lab, &["delete-group", "g1"], "InvalidGroup.InUse", "g1");
    expect_error(
        &lab,
        &["delete-group", "used"],
        "InvalidGroup.InUse",
        "used",
    );
    expect_error(
        &lab,
        &["delete-group", "default"],
        "InvalidGroup.Reserved",
        "default",
    );

    // Accounts: another owner sees none of these groups.
    expect_error(
        &lab,
        &[
            "--owner",
            "999988887777",
            "authorize",
            "g1",
            "-P",
            "tcp",
            "-p",
            "22",
        ],
        "InvalidGroup.NotFound",
        "g1",
    );
    expect_error(
        &lab,
        &[
            "--owner",
            "999988887777",
            "run-instances",
            e2e::AMI,
            "-g",
            "g1",
        ],
        "InvalidGroup.NotFound",
        "g1",
    );

    // InvalidPermission.*
    expect_error(
        &lab,
        &[
            "authorize",
            "g1",
            "-P",
            "tcp",
            "-p",
            "22",
            "-s",
            "10.0.0.0/8",
        ],
        "InvalidPermission.Duplicate",
        "10.0.0.0/8",
    );
    // host bits set: the same rule once normalised
    expect_error(
        &lab,
        &[
            "authorize",
            "g1",
            "-P",
            "tcp",
            "-p",
            "22",
            "-s",
            "10.9.9.9/8",
        ],
        "InvalidPermission.Duplicate",
        "10.0.0.0/8",
    );
    expect_error(
        &lab,
        &["revoke", "g1", "-P", "tcp", "-p", "23", "-s", "10.0.0.0/8"],
        "InvalidPermission.NotFound",
        "10.0.0.0/8",
    );
    expect_error(
        &lab,
        &["revoke", "g1", "-o", "g2"],
        "InvalidPermission.NotFound",
        "g2",
    );

    // RulesPerSecurityGroupLimitExceeded: 99 + 2 > 100, and neither is added.
    expect_error(
        &lab,
        &[
            "authorize",
            "full",
            "-P",
            "tcp",
            "-p",
            "443",
            "-s",
            "10.2.0.0/24",
            "-s",
            "10.2.1.0/24",
        ],
        "RulesPerSecurityGroupLimitExceeded",
        "full",
    );

    // InvalidParameterValue, naming the value.
    expect_error(
        &lab,
        &[
            "authorize",
            "g1",
            "-P",
            "tcp",
            "-p",
            "22",
            "-s",
            "10.0.0.0/33",
        ],
        "InvalidParameterValue",
        "10.0.0.0/33",
    );
    expect_error(
        &lab,
        &[
            "authorize",
            "g1",
            "-P",
            "tcp",
            "-p",
            "22",
            "-s",
            "300.1.1.1/32",
        ],
        "InvalidParameterValue",
        "300.1.1.1/32",
    );
    expect_error(
        &lab,
        &[
            "authorize",
            "g1",
            "-P",
            "tcp",
            "-p",
            "70000",
            "-s",
            "10.0.0.0/8",
        ],
        "InvalidParameterValue",
        "70000",
    );
    expect_error(
        &lab,
        &[
            "authorize",
            "g1",
            "-P",
            "tcp",
            "-p",
            "30-20",
            "-s",
            "10.0.0.0/8",
        ],
        "InvalidParameterValue",
        "30-20",
    );
    expect_error(
        &lab,
        &[
            "authorize",
            "g1",
            "-P",
            "tcpx",
            "-p",
            "22",
            "-s",
            "10.0.0.0/8",
        ],
        "InvalidParameterValue",
        "tcpx",
    );
    expect_error(
        &lab,
        &[
            "authorize",
            "g1",
            "-P",
            "icmp",
            "-t",
            "300:0",
            "-s",
            "10.0.0.0/8",
        ],
        "InvalidParameterValue",
        "300",
    );
    expect_error(
        &lab,
        &[
            "authorize",
            "g1",
            "-P",
            "icmp",
            "-t",
            "8:x",
            "-s",
            "10.0.0.0/8",
        ],
        "InvalidParameterValue",
        "8:x",
    );
    let long = "x".repeat(256);
    expect_error(
        &lab,
        &["add-group", &long, "-d", "too long"],
        "InvalidParameterValue",
        &long,
    );
    expect_error(
        &lab,
        &["add-group", "tab\there", "-d", "unprintable"],
        "InvalidParameterValue",
        "tab",
    );
    expect_error(
        &lab,
        &["--owner", "12345", "describe-group"],
        "InvalidParameterValue",
        "12345",
    );

    // Instances.
    expect_error(
        &lab,
        &["terminate-instances", "i-00000000"],
        "InvalidInstanceID.NotFound",
        "i-00000000",
    );
    expect_error(
        &lab,
        &["describe-instances", "i-00000000"],
        "InvalidInstanceID.NotFound",
        "i-00000000",
    );

    // Usage errors: exit 2, nothing sent.
    expect_usage(&lab, &["frobnicate"]);
    expect_usage(&lab, &["authorize"]);
    expect_usage(&lab, &["authorize", "g1", "-p"]);
    expect_usage(&lab, &["run-instances", e2e::AMI, "-n", "many"]);
    expect_usage(&lab, &["add-group", "g9", "-d", "x", "--no-such-flag"]);

    // Nothing changed.
    assert_eq!(lab.cli_ok(&["describe-group"]), groups_before);
    assert_eq!(lab.cli_ok(&["describe-instances"]), instances_before);
    assert!(e2e::lab::netns_present(&inst.netns));
}

/// Launch errors: a full subnet is `InsufficientInstanceCapacity` and launches
/// nothing (not even part of the request); bad counts and AMI ids are
/// `InvalidParameterValue`. A /28 with a /30 uplink range leaves 10 addresses.
#[test]
fn launch_errors_launch_nothing() {
    let cfg = LabConfig::new("capacity")
        .subnet("172.31.0.0/28")
        .arg("--uplink-range")
        .arg("172.31.0.12/30");
    let Some(lab) = Lab::start(cfg) else {
        return;
    };
    expect_error(
        &lab,
        &["run-instances", e2e::AMI, "-n", "11"],
        "InsufficientInstanceCapacity",
        "172.31.0.0/28",
    );
    assert_eq!(
        lab.cli_ok(&["describe-instances"]),
        "",
        "a failed launch left instances"
    );
    expect_error(
        &lab,
        &["run-instances", e2e::AMI, "-n", "0"],
        "InvalidParameterValue",
        "0",
    );
    expect_error(
        &lab,
        &["run-instances", "bogus"],
        "InvalidParameterValue",
        "bogus",
    );
    let got = lab.run_instances(10, &[]);
    assert!(got.iter().all(|i| e2e::lab::netns_present(&i.netns)));
    let before = lab.cli_ok(&["describe-instances"]);
    expect_error(
        &lab,
        &["run-instances", e2e::AMI],
        "InsufficientInstanceCapacity",
        "172.31.0.0/28",
    );
    assert_eq!(lab.cli_ok(&["describe-instances"]), before);
    // Terminating one frees its address for the next launch.
    lab.terminate(&[&got[0].id]);
    let again = lab.run_instances(1, &[]);
    assert_eq!(again[0].ip, got[0].ip);
}
