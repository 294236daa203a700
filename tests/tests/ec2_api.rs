//! The EC2 Query API driven by real AWS clients against the real daemon
//! (issue 8): awscli v2 (Debian) and v1 (PyPI venv), boto3 and boto 2.49.
//!
//! * `awscli_v2_*`, `awscli_v1_*`: groups created, described, authorized and
//!   revoked in both request shapes (awscli's `--protocol/--port/--cidr` and
//!   `--ip-permissions`), ingress and egress, source groups by name and by id, instances run,
//!   described and terminated, error codes with awscli's exit status (v2: 254,
//!   v1: 255) and `(Code)` on stderr, unknown key and bad secret. v2 also shows
//!   enforcement: a rule added with awscli opens a port to nmap from the
//!   uplink namespace and revoking it filters it again.
//! * `boto3_suite`, `boto2_suite`: `tests/ec2/*_suite.py` (one Python process
//!   each: start-up is slow) — both shapes, filters, ClientToken, every error
//!   code as the client's exception, skewed clock, two owners kept apart; then
//!   the CLI (the other front door) sees the state they left.
//! * `ec2_listen_*`: the daemon's `--ec2-listen` option (no root needed).
//!
//! Clients are pointed at the lab's own port (never 8773), with config and
//! credentials files in the test's temp dir, no proxy variables, no retries.
//! The clients are installed by `scripts/install-ec2-clients.sh` (run by
//! `scripts/test.sh`); a missing one fails the test, naming the script.
//! Needs root for the labs (skips without).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::run::{self, Outcome};
use e2e::{AMI, Lab, LabConfig, OUTSIDE, PortState};
use serde_json::Value;

/// The daemon's default owner (owner A).
const OWNER_A: &str = "111122223333";
const OWNER_B: &str = "444455556666";

/// Exit status of awscli for a service error.
const AWSCLI2_ERROR: i32 = 254;
const AWSCLI1_ERROR: i32 = 255;

fn tool(env: &str, default: &str) -> PathBuf {
    let p = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_owned()));
    assert!(
        p.exists(),
        "{} not found (set {env}); install the EC2 clients with scripts/install-ec2-clients.sh",
        p.display()
    );
    p
}

fn awscli2() -> PathBuf {
    tool("SGSWITCH_AWSCLI2", "/usr/bin/aws")
}

fn awscli1() -> PathBuf {
    tool("SGSWITCH_AWSCLI1", "/opt/sgswitch-awscli1/bin/aws")
}

fn python() -> PathBuf {
    tool("SGSWITCH_EC2_PYTHON", "/usr/bin/python3")
}

/// An access key made with `sgswitch create-access-key`.
#[derive(Clone, Debug)]
struct Key {
    id: String,
    secret: String,
}

fn create_key(lab: &Lab, owner: &str) -> Key {
    let out = lab.cli_ok(&["--owner", owner, "create-access-key"]);
    let f: Vec<&str> = out.trim_end().split('\t').collect();
    assert_eq!(f.len(), 4, "{out}");
    assert_eq!((f[0], f[3]), ("ACCESSKEY", owner), "{out}");
    assert!(f[1].starts_with("AKIA") && f[1].len() == 20, "{out}");
    assert_eq!(f[2].len(), 40, "{out}");
    Key {
        id: f[1].into(),
        secret: f[2].into(),
    }
}

/// Instances of both owners are recorded with the lab (which deletes their
/// namespaces) when this is dropped, whatever the test did.
struct RecordInstances<'a>(&'a Lab);

impl Drop for RecordInstances<'_> {
    fn drop(&mut self) {
        if !self.0.daemon_alive() {
            return;
        }
        for owner in [OWNER_A, OWNER_B] {
            let o = self.0.cli(&["--owner", owner, "describe-instances"]);
            self.0.record_instances(&o.stdout);
        }
    }
}

/// A client environment in the lab's temp dir: config, credentials (profiles
/// `a`, `b`, `badsecret`, `unknown`), nothing inherited.
struct ClientEnv {
    dir: PathBuf,
    endpoint: String,
}

impl ClientEnv {
    fn new(lab: &Lab, tag: &str, a: &Key, b: &Key) -> ClientEnv {
        let dir = lab.dir.join(format!("client-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config"),
            "[default]\nregion = us-east-1\noutput = json\n\
             [profile a]\nregion = us-east-1\noutput = json\n\
             [profile b]\nregion = us-east-1\noutput = json\n\
             [profile badsecret]\nregion = us-east-1\noutput = json\n\
             [profile unknown]\nregion = us-east-1\noutput = json\n",
        )
        .unwrap();
        let cred = |p: &str, k: &str, s: &str| {
            format!("[{p}]\naws_access_key_id = {k}\naws_secret_access_key = {s}\n")
        };
        std::fs::write(
            dir.join("credentials"),
            [
                cred("a", &a.id, &a.secret),
                cred("b", &b.id, &b.secret),
                cred("badsecret", &a.id, &b.secret),
                cred("unknown", "AKIAUNKNOWNKEY000000", &a.secret),
            ]
            .concat(),
        )
        .unwrap();
        ClientEnv {
            dir,
            endpoint: lab.ec2_endpoint(),
        }
    }

    /// A command with a clean environment pointing at the lab.
    fn command(&self, prog: &Path) -> Command {
        let mut cmd = Command::new(prog);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.dir)
            .env("LANG", "C.UTF-8")
            .env("AWS_CONFIG_FILE", self.dir.join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.dir.join("credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_RETRY_MODE", "standard")
            .env("BOTO_CONFIG", self.dir.join("boto.cfg"))
            .env("SG_EC2_ENDPOINT", &self.endpoint)
            .current_dir(&self.dir);
        cmd
    }

    /// `aws --endpoint-url E --profile P ec2 ARGS...`.
    fn aws(&self, bin: &Path, profile: &str, args: &[&str]) -> Outcome {
        self.aws_service(bin, profile, "ec2", args)
    }

    /// `aws --endpoint-url E --profile P SERVICE ARGS...`.
    fn aws_service(&self, bin: &Path, profile: &str, service: &str, args: &[&str]) -> Outcome {
        let mut cmd = self.command(bin);
        cmd.args([
            "--endpoint-url",
            &self.endpoint,
            "--profile",
            profile,
            service,
        ])
        .args(args);
        run::run(&mut cmd, Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ClientEnv::aws_service`] that must succeed; its JSON output.
    fn aws_service_ok(&self, bin: &Path, profile: &str, service: &str, args: &[&str]) -> Value {
        let o = self.aws_service(bin, profile, service, args);
        assert!(
            o.success(),
            "aws {service} {} failed ({:?}):\n{}{}",
            args.join(" "),
            o.code,
            o.stdout,
            o.stderr
        );
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "aws {service} {}: not JSON ({e}):\n{}",
                args.join(" "),
                o.stdout
            )
        })
    }

    /// [`ClientEnv::aws`] that must succeed; its JSON output.
    fn aws_ok(&self, bin: &Path, profile: &str, args: &[&str]) -> Value {
        let o = self.aws(bin, profile, args);
        assert!(
            o.success(),
            "aws ec2 {} failed ({:?}):\n{}{}",
            args.join(" "),
            o.code,
            o.stdout,
            o.stderr
        );
        if o.stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
                panic!("aws ec2 {}: not JSON ({e}):\n{}", args.join(" "), o.stdout)
            })
        }
    }
}

/// Run every `(profile, args)` with `bin` concurrently; each must succeed;
/// their JSON outputs in order (python start-up dominates each call).
fn aws_par(env: &ClientEnv, bin: &Path, calls: &[(&str, Vec<&str>)]) -> Vec<Value> {
    std::thread::scope(|s| {
        let handles: Vec<_> = calls
            .iter()
            .map(|(profile, args)| s.spawn(move || env.aws_ok(bin, profile, args)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Run every `(args, code)` with `bin` concurrently (independent failing
/// calls: python start-up dominates); each must exit `status` naming `code`.
fn expect_errors(env: &ClientEnv, bin: &Path, status: i32, cases: &[(&str, &[&str], &str)]) {
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(profile, args, code)| s.spawn(move || (args, code, env.aws(bin, profile, args))))
            .collect();
        for h in handles {
            let (args, code, o) = h.join().unwrap();
            assert_eq!(
                o.code,
                Some(status),
                "aws ec2 {}: expected exit {status} with {code}:\n{}{}",
                args.join(" "),
                o.stdout,
                o.stderr
            );
            assert!(
                o.stderr.contains(&format!("An error occurred ({code})")),
                "aws ec2 {}: expected {code}:\n{}",
                args.join(" "),
                o.stderr
            );
        }
    });
}

/// Port states of `ports` on `ip` from the uplink namespace.
fn scan(lab: &Lab, ip: Ipv4Addr, ports: &[u16]) -> Vec<PortState> {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let s = lab.nmap_outside(ip, &list.join(","));
    ports
        .iter()
        .map(|p| {
            s.state(*p)
                .unwrap_or_else(|| panic!("no state for port {p}"))
        })
        .collect()
}

/// The awscli suite, for v1 or v2 (`status` = its exit code on a service
/// error); `enforce` also checks the rules on real traffic with nmap.
fn awscli_suite(name: &str, bin: &Path, status: i32, enforce: bool) {
    let Some(lab) = Lab::start(LabConfig::new(name).ec2()) else {
        return;
    };
    let _record = RecordInstances(&lab);
    let started = Instant::now();
    let (a, b) = (create_key(&lab, OWNER_A), create_key(&lab, OWNER_B));
    let env = ClientEnv::new(&lab, name, &a, &b);
    let aws = |args: &[&str]| env.aws_ok(bin, "a", args);

    // "Who am I" on the same endpoint (issue 16 item 1): each key's account.
    std::thread::scope(|s| {
        let who = |profile: &'static str, owner: &'static str| {
            let env = &env;
            s.spawn(move || {
                let w = env.aws_service_ok(bin, profile, "sts", &["get-caller-identity"]);
                assert_eq!(w["Account"], owner, "{w}");
                assert_eq!(w["UserId"], owner, "{w}");
                assert_eq!(w["Arn"], format!("arn:aws:iam::{owner}:root"), "{w}");
            })
        };
        let unknown = s.spawn(|| {
            let o = env.aws_service(bin, "unknown", "sts", &["get-caller-identity"]);
            assert_eq!(o.code, Some(status), "{}{}", o.stdout, o.stderr);
            assert!(o.stderr.contains("(AuthFailure)"), "{}", o.stderr);
        });
        // The older "who am I": IAM GetUser without a user name.
        let iam = s.spawn(|| {
            let u = env.aws_service_ok(bin, "a", "iam", &["get-user"]);
            assert_eq!(
                u["User"]["Arn"],
                format!("arn:aws:iam::{OWNER_A}:root"),
                "{u}"
            );
        });
        for t in [who("a", OWNER_A), who("b", OWNER_B), unknown, iam] {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
    });

    let made = aws_par(
        &env,
        bin,
        &[
            (
                "a",
                vec![
                    "create-security-group",
                    "--group-name",
                    "web",
                    "--description",
                    "Web Servers",
                ],
            ),
            (
                "a",
                vec![
                    "create-security-group",
                    "--group-name",
                    "app",
                    "--description",
                    "App",
                ],
            ),
        ],
    );
    let web_id = made[0]["GroupId"].as_str().unwrap().to_owned();
    let app_id = made[1]["GroupId"].as_str().unwrap().to_owned();

    // Tags (issue 16 item 3), as awscli sends them.
    aws(&[
        "create-tags",
        "--resources",
        &web_id,
        "--tags",
        "Key=env,Value=prod",
        "Key=team,Value=a",
    ]);
    let resource = format!("Name=resource-id,Values={web_id}");
    let tagged = aws_par(
        &env,
        bin,
        &[
            ("a", vec!["describe-tags", "--filters", &resource]),
            (
                "a",
                vec![
                    "describe-security-groups",
                    "--filters",
                    "Name=tag:env,Values=prod",
                ],
            ),
            (
                "a",
                vec!["delete-tags", "--resources", &web_id, "--tags", "Key=team"],
            ),
        ],
    );
    let keys: Vec<(&str, &str)> = tagged[0]["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap(),
                t["ResourceType"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(keys.contains(&("env", "security-group")), "{}", tagged[0]);
    let g = &tagged[1]["SecurityGroups"];
    assert_eq!(g.as_array().unwrap().len(), 1, "{g}");
    assert_eq!(g[0]["GroupName"], "web", "{g}");
    assert!(
        g[0]["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Key"] == "env" && t["Value"] == "prod"),
        "{g}"
    );
    let left = aws(&["describe-tags", "--filters", &resource]);
    let left: Vec<&str> = left["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["Key"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["env"], "delete-tags removed team");
    // awscli's simplified options with a source group by name, and the
    // indexed shape with a source group by id and two CIDRs.
    let perms = format!(
        "IpProtocol=udp,FromPort=53,ToPort=53,IpRanges=[{{CidrIp=10.0.0.0/8}},{{CidrIp=192.168.7.0/24}}] \
         IpProtocol=-1,UserIdGroupPairs=[{{GroupId={app_id}}}]"
    );
    let mut indexed = vec![
        "authorize-security-group-ingress",
        "--group-id",
        &web_id,
        "--ip-permissions",
    ];
    indexed.extend(perms.split(' '));
    let simple = vec![
        "authorize-security-group-ingress",
        "--group-name",
        "app",
        "--protocol",
        "tcp",
        "--port",
        "8080-8081",
        "--source-group",
        "web",
    ];
    // Egress (issue 15): app's default egress permission (both ranges)
    // revoked in the indexed shape, a specific one added the same way.
    let revoke_default_egress = vec![
        "revoke-security-group-egress",
        "--group-id",
        &app_id,
        "--ip-permissions",
        "IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}],Ipv6Ranges=[{CidrIpv6=::/0}]",
    ];
    let egress_443 = vec![
        "authorize-security-group-egress",
        "--group-id",
        &app_id,
        "--ip-permissions",
        "IpProtocol=tcp,FromPort=443,ToPort=443,IpRanges=[{CidrIp=10.0.0.0/8}]",
    ];
    aws_par(
        &env,
        bin,
        &[
            ("a", simple),
            ("a", indexed),
            ("a", revoke_default_egress),
            ("a", egress_443),
        ],
    );
    // The CLI front door sees what awscli made.
    let desc = lab.cli_ok(&["describe-group", "web"]);
    assert!(
        desc.contains("PERMISSION\tweb\tALLOWS\tudp\t53\t53\tFROM\tCIDR\t192.168.7.0/24"),
        "{desc}"
    );
    assert!(
        desc.contains(&format!(
            "PERMISSION\tweb\tALLOWS\tall\t\t\tFROM\tUSER\t{OWNER_A}\tGRPNAME\tapp"
        )),
        "{desc}"
    );

    let filter = "Name=ip-permission.group-name,Values=web";
    let described = aws_par(
        &env,
        bin,
        &[
            (
                "a",
                vec!["describe-security-groups", "--group-ids", &web_id],
            ),
            ("a", vec!["describe-security-groups", "--filters", filter]),
            ("b", vec!["describe-security-groups"]),
        ],
    );
    let d = &described[0];
    let g = &d["SecurityGroups"][0];
    assert_eq!(
        (g["GroupName"].as_str(), g["OwnerId"].as_str()),
        (Some("web"), Some(OWNER_A)),
        "{d}"
    );
    let perms = g["IpPermissions"].as_array().unwrap();
    assert_eq!(perms.len(), 2, "{d}");
    assert_eq!(perms[0]["IpRanges"].as_array().unwrap().len(), 2, "{d}");
    assert_eq!(perms[1]["IpProtocol"], "-1", "{d}");
    assert!(perms[1].get("FromPort").is_none(), "no ports on -1: {d}");
    assert_eq!(perms[1]["UserIdGroupPairs"][0]["GroupName"], "app", "{d}");
    let d = &described[1];
    let names: Vec<&str> = d["SecurityGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["GroupName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app"], "{d}");
    let egress = &d["SecurityGroups"][0]["IpPermissionsEgress"];
    assert_eq!(egress.as_array().map(Vec::len), Some(1), "{d}");
    assert_eq!(
        (&egress[0]["IpProtocol"], &egress[0]["FromPort"]),
        (&Value::from("tcp"), &Value::from(443)),
        "{d}"
    );
    assert_eq!(egress[0]["IpRanges"][0]["CidrIp"], "10.0.0.0/8", "{d}");
    let web_egress = &described[0]["SecurityGroups"][0]["IpPermissionsEgress"];
    assert_eq!(web_egress[0]["IpProtocol"], "-1", "web keeps the default");
    assert_eq!(web_egress[0]["IpRanges"][0]["CidrIp"], "0.0.0.0/0");
    assert_eq!(web_egress[0]["Ipv6Ranges"][0]["CidrIpv6"], "::/0");
    let desc = lab.cli_ok(&["describe-group", "app"]);
    assert!(
        desc.contains("PERMISSION\tapp\tALLOWS\ttcp\t443\t443\tTO\tCIDR\t10.0.0.0/8\tegress"),
        "{desc}"
    );

    // Instances: run in web (by id), describe, and (v2) enforcement with nmap.
    let r = aws(&[
        "run-instances",
        "--image-id",
        AMI,
        "--count",
        "1",
        "--security-group-ids",
        &web_id,
    ]);
    let inst = &r["Instances"][0];
    let iid = inst["InstanceId"].as_str().unwrap().to_owned();
    assert_eq!(inst["State"]["Name"], "running", "{r}");
    let ip: Ipv4Addr = inst["PrivateIpAddress"].as_str().unwrap().parse().unwrap();
    let recorded = lab.record_instances(&lab.cli_ok(&["describe-instances", &iid]));
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].ip, ip, "CLI and awscli agree on the address");
    // Error codes with awscli's exit status, and authentication failures:
    // independent failing calls, run while the enforcement check goes on.
    let term_b = ["terminate-instances", "--instance-ids", iid.as_str()];
    let perm_dup = [
        "authorize-security-group-ingress",
        "--group-name",
        "app",
        "--protocol",
        "tcp",
        "--port",
        "8080-8081",
        "--source-group",
        "web",
    ];
    let revoke_missing = [
        "revoke-security-group-ingress",
        "--group-name",
        "web",
        "--protocol",
        "tcp",
        "--port",
        "1",
        "--cidr",
        "1.1.1.1/32",
    ];
    let egress_dup = [
        "authorize-security-group-egress",
        "--group-id",
        &app_id,
        "--protocol",
        "tcp",
        "--port",
        "443",
        "--cidr",
        "10.0.0.0/8",
    ];
    let egress_missing = [
        "revoke-security-group-egress",
        "--group-id",
        &app_id,
        "--protocol",
        "all",
        "--cidr",
        "0.0.0.0/0",
    ];
    let bad_port = [
        "authorize-security-group-ingress",
        "--group-name",
        "web",
        "--protocol",
        "tcp",
        "--port",
        "70000",
        "--cidr",
        "1.1.1.1/32",
    ];
    let dup_group = [
        "create-security-group",
        "--group-name",
        "web",
        "--description",
        "x",
    ];
    let cases: Vec<(&str, &[&str], &str)> = vec![
        ("a", &dup_group, "InvalidGroup.Duplicate"),
        (
            "a",
            &["delete-security-group", "--group-name", "nope"],
            "InvalidGroup.NotFound",
        ),
        (
            "a",
            &["delete-security-group", "--group-name", "default"],
            "InvalidGroup.Reserved",
        ),
        (
            "a",
            &["delete-security-group", "--group-name", "web"],
            "InvalidGroup.InUse",
        ),
        ("a", &perm_dup, "InvalidPermission.Duplicate"),
        ("a", &egress_dup, "InvalidPermission.Duplicate"),
        ("a", &egress_missing, "InvalidPermission.NotFound"),
        ("a", &revoke_missing, "InvalidPermission.NotFound"),
        ("a", &bad_port, "InvalidParameterValue"),
        (
            "a",
            &["authorize-security-group-ingress", "--group-name", "web"],
            "MissingParameter",
        ),
        (
            "a",
            &["terminate-instances", "--instance-ids", "i-00000000"],
            "InvalidInstanceID.NotFound",
        ),
        (
            "a",
            &["create-vpc", "--cidr-block", "10.0.0.0/16"],
            "InvalidAction",
        ),
        (
            "b",
            &["describe-security-groups", "--group-names", "web"],
            "InvalidGroup.NotFound",
        ),
        ("b", &term_b, "InvalidInstanceID.NotFound"),
        ("unknown", &["describe-security-groups"], "AuthFailure"),
        (
            "badsecret",
            &["describe-security-groups"],
            "SignatureDoesNotMatch",
        ),
    ];
    std::thread::scope(|s| {
        let errors = s.spawn(|| expect_errors(&env, bin, status, &cases));
        let described = s.spawn(|| {
            let d = aws(&["describe-instances", "--instance-ids", &iid]);
            let res = &d["Reservations"][0];
            assert_eq!(res["Instances"][0]["InstanceId"], iid.as_str(), "{d}");
            assert_eq!(res["Groups"][0]["GroupId"], web_id.as_str(), "{d}");
        });
        if enforce {
            lab.listen(&recorded[0].netns, &[22, 80]);
            let closed = [PortState::Filtered, PortState::Filtered];
            assert_eq!(scan(&lab, ip, &[22, 80]), closed);
            let cidr = format!("{OUTSIDE}/32");
            let rule = ["--protocol", "tcp", "--port", "80", "--cidr", &cidr];
            let mut args = vec!["authorize-security-group-ingress", "--group-name", "web"];
            args.extend(rule);
            aws(&args);
            let opened = [PortState::Filtered, PortState::Open];
            assert_eq!(scan(&lab, ip, &[22, 80]), opened, "awscli opened port 80");
            let mut args = vec!["revoke-security-group-ingress", "--group-id", &web_id];
            args.extend(rule);
            aws(&args);
            assert_eq!(scan(&lab, ip, &[22, 80]), closed, "awscli closed port 80");
        } else {
            aws(&[
                "revoke-security-group-ingress",
                "--group-id",
                &web_id,
                "--protocol",
                "udp",
                "--port",
                "53",
                "--cidr",
                "192.168.7.0/24",
            ]);
            let desc = lab.cli_ok(&["describe-group", "web"]);
            assert!(!desc.contains("192.168.7.0/24"), "{desc}");
        }
        for t in [errors, described] {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
    });

    // Owner B sees only its own default group.
    let d = &described[2];
    let owners: Vec<(&str, &str)> = d["SecurityGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["GroupName"].as_str().unwrap(),
                g["OwnerId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(owners, [("default", OWNER_B)], "{d}");

    // Terminate; revoke in the indexed shape; then delete by id (app's own
    // rule naming web goes with it) and by name.
    let revoke = vec![
        "revoke-security-group-ingress",
        "--group-name",
        "web",
        "--ip-permissions",
        "IpProtocol=-1,UserIdGroupPairs=[{GroupName=app}]",
    ];
    let done = aws_par(
        &env,
        bin,
        &[
            ("a", vec!["terminate-instances", "--instance-ids", &iid]),
            ("a", revoke),
        ],
    );
    let t = &done[0];
    assert_eq!(
        t["TerminatingInstances"][0]["CurrentState"]["Name"], "shutting-down",
        "{t}"
    );
    aws(&["delete-security-group", "--group-id", &app_id]);
    aws(&["delete-security-group", "--group-name", "web"]);
    let groups = lab.cli_ok(&["describe-group"]);
    assert_eq!(
        groups.lines().filter(|l| l.starts_with("GROUP\t")).count(),
        1,
        "{groups}"
    );
    eprintln!("{name}: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn awscli_v2_groups_instances_errors_and_enforcement() {
    if !e2e::is_root() {
        return eprintln!("SKIP: not root");
    }
    awscli_suite("ec2-awscli2", &awscli2(), AWSCLI2_ERROR, true);
}

#[test]
fn awscli_v1_groups_instances_and_errors() {
    if !e2e::is_root() {
        return eprintln!("SKIP: not root");
    }
    awscli_suite("ec2-awscli1", &awscli1(), AWSCLI1_ERROR, false);
}

/// Run `tests/ec2/SUITE` with both owners' keys; it must print `PASS`.
fn python_suite(name: &str, suite: &str, cfg: LabConfig) {
    let py = python();
    let Some(lab) = Lab::start(cfg.ec2()) else {
        return;
    };
    let _record = RecordInstances(&lab);
    let started = Instant::now();
    let (a, b) = (create_key(&lab, OWNER_A), create_key(&lab, OWNER_B));
    let env = ClientEnv::new(&lab, name, &a, &b);
    std::fs::write(env.dir.join("boto.cfg"), "").unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("ec2");
    let mut cmd = env.command(&py);
    cmd.arg(scripts.join(suite))
        .env("PYTHONPATH", &scripts)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SG_KEY_A", &a.id)
        .env("SG_SECRET_A", &a.secret)
        .env("SG_OWNER_A", OWNER_A)
        .env("SG_KEY_B", &b.id)
        .env("SG_SECRET_B", &b.secret)
        .env("SG_OWNER_B", OWNER_B)
        .env("SG_AMI", AMI);
    let o = run::run(&mut cmd, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}{}", o.stdout, o.stderr);
    assert!(o.success(), "{suite} failed ({:?})", o.code);
    let last = o.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("PASS "), "{suite} did not finish: {last}");
    // It printed each error it provoked; the suites clean up after themselves,
    // which the socket front door sees.
    assert!(o.stdout.contains(" AuthFailure HTTP 401"), "{}", o.stdout);
    assert!(
        o.stdout.contains(" SignatureDoesNotMatch HTTP 403"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(" RequestExpired HTTP 400"),
        "{}",
        o.stdout
    );
    let groups = lab.cli_ok(&["describe-group"]);
    assert_eq!(
        groups.lines().filter(|l| l.starts_with("GROUP\t")).count(),
        1,
        "{groups}"
    );
    for owner in [OWNER_A, OWNER_B] {
        let inst = lab.cli_ok(&["--owner", owner, "describe-instances"]);
        assert!(
            inst.trim().is_empty(),
            "{owner} still has instances: {inst}"
        );
    }
    eprintln!("{name}: {last} in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn boto3_suite() {
    if !e2e::is_root() {
        return eprintln!("SKIP: not root");
    }
    // A small rule limit, to see RulesPerSecurityGroupLimitExceeded.
    let cfg = LabConfig::new("ec2-boto3")
        .arg("--rules-per-group")
        .arg("5");
    python_suite("ec2-boto3", "boto3_suite.py", cfg);
}

#[test]
fn boto2_suite() {
    if !e2e::is_root() {
        return eprintln!("SKIP: not root");
    }
    python_suite("ec2-boto2", "boto2_suite.py", LabConfig::new("ec2-boto2"));
}

/// `up --ec2-listen` on a busy address fails at start, naming the address;
/// `off` serves no EC2 API; the state file is private. No root needed
/// (`--no-switch`).
#[test]
fn ec2_listen_busy_address_is_a_clear_start_error_and_off_serves_nothing() {
    let bin = e2e::lab::sgswitch_bin();
    let dir = std::env::temp_dir().join(format!("sgswitch-ec2-listen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut cmd = Command::new(&bin);
    cmd.args(["--socket"])
        .arg(dir.join("sock"))
        .args(["up", "--no-switch", "--state-dir"])
        .arg(dir.join("state"))
        .args(["--ec2-listen", &addr]);
    let o = run::run(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains(&format!("bind the EC2 API on {addr}")),
        "{}",
        o.stderr
    );
    let mut cmd = Command::new(&bin);
    cmd.args(["--socket"])
        .arg(dir.join("sock"))
        .args(["up", "--no-switch", "--state-dir"])
        .arg(dir.join("state"))
        .args(["--ec2-listen", "127.0.0.1"]);
    let o = run::run(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.code, Some(2), "usage error: {o:?}");
    assert!(
        o.stderr.contains("invalid --ec2-listen '127.0.0.1'"),
        "{}",
        o.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
