//! Access to the API (issue 7 part 6).
//!
//! * The socket is the trust boundary: it is root's, mode 0600, so an
//!   unprivileged user (a throwaway account made for the test, removed on drop)
//!   gets a clear error naming the socket and a non-zero exit from every
//!   command, and the state is unchanged. As a control, the same user succeeds
//!   once the test opens the socket's mode: the refusal came from the mode.
//! * The database (every owner's rules, and its WAL companions) is mode 0600 and
//!   really unreadable for another user; the state dir is root's and writable
//!   by root only.
//! * Owners are isolated through the socket API: owner B cannot see, edit,
//!   delete or launch into owner A's groups, nor describe or terminate A's
//!   instances — each answered with EC2's NotFound code, A's state byte-identical
//!   afterwards. Naming A's group as a rule *source* stays legal EC2.
//!
//! Needs root (skips without).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use e2e::lab::sgswitch_bin;
use e2e::load::ApiConn;
use e2e::run::{self, Outcome};
use e2e::{AMI, Lab, LabConfig};
use serde_json::{Value, json};

const OWNER_A: &str = "111122223333";
const OWNER_B: &str = "444455556666";

static USER_SEQ: AtomicU32 = AtomicU32::new(0);

/// A throwaway unprivileged account, deleted on drop (also when the test fails).
struct TempUser {
    name: String,
}

impl TempUser {
    fn create() -> TempUser {
        let n = USER_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("sgtu{}x{n}", std::process::id());
        // Another test may hold the lock on /etc/passwd for a moment: retry.
        let mut tries = 0;
        loop {
            let o = run::run(
                Command::new("useradd").args([
                    "--system",
                    "--no-create-home",
                    "--user-group",
                    "--shell",
                    "/usr/sbin/nologin",
                    &name,
                ]),
                Duration::from_secs(20),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            if o.success() {
                break;
            }
            tries += 1;
            assert!(tries < 20, "useradd {name}: {o:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        TempUser { name }
    }

    /// Run `prog args...` as this user (no supplementary groups), bounded.
    fn run(&self, prog: &Path, args: &[&str]) -> Outcome {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={}", self.name),
            &format!("--regid={}", self.name),
            "--clear-groups",
            "--",
        ])
        .arg(prog)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
        run::run(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let exists = |db: &str| {
            run::run(
                Command::new("getent").args([db, &self.name]),
                Duration::from_secs(10),
            )
            .is_ok_and(|o| o.success())
        };
        // Retried like `useradd`: the passwd lock may be busy for a moment.
        for _ in 0..20 {
            let _ = run::run(
                Command::new("userdel").arg(&self.name),
                Duration::from_secs(20),
            );
            if !exists("passwd") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // `userdel` removes the user's own group; make sure of it.
        if exists("group") {
            let _ = run::run(
                Command::new("groupdel").arg(&self.name),
                Duration::from_secs(20),
            );
        }
    }
}

/// A copy of the `sgswitch` binary that any user may run (the build dir may not
/// be reachable for the throwaway user); inside the lab's temp dir.
fn world_runnable_bin(lab: &Lab) -> PathBuf {
    let dir = lab.dir.join("bin");
    fs::create_dir_all(&dir).expect("bin dir");
    fs::set_permissions(&lab.dir, fs::Permissions::from_mode(0o755)).expect("chmod lab dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod bin dir");
    let bin = dir.join("sgswitch");
    fs::copy(sgswitch_bin(), &bin).expect("copy sgswitch");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod sgswitch");
    bin
}

#[test]
fn a_non_root_user_is_kept_out_of_the_socket() {
    let Some(lab) = Lab::start(LabConfig::new("api-user")) else {
        return;
    };
    let wall = Instant::now();
    lab.cli_ok(&["add-group", "priv", "-d", "root only"]);
    lab.cli_ok(&[
        "authorize",
        "priv",
        "-P",
        "tcp",
        "-p",
        "22",
        "-s",
        "10.0.0.0/8",
    ]);
    let groups = lab.cli_ok(&["describe-group"]);
    let instances = lab.cli_ok(&["describe-instances"]);

    let meta = fs::symlink_metadata(&lab.socket).expect("socket metadata");
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        lab.socket.display()
    );
    assert_eq!(meta.mode() & 0o7777, 0o600, "socket mode");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "socket owner");

    let bin = world_runnable_bin(&lab);
    let user = TempUser::create();
    let sock = lab.socket.to_str().expect("utf-8 path");
    let help = user.run(&bin, &["--help"]);
    assert!(help.success(), "the user cannot even run the CLI: {help:?}");
    let attempts: [&[&str]; 5] = [
        &["describe-group"],
        &["add-group", "evil", "-d", "x"],
        &[
            "authorize",
            "priv",
            "-P",
            "tcp",
            "-p",
            "1-65535",
            "-s",
            "0.0.0.0/0",
        ],
        &["delete-group", "priv"],
        &["run-instances", AMI, "-g", "priv"],
    ];
    for a in attempts {
        let mut args = vec!["--socket", sock];
        args.extend_from_slice(a);
        let o = user.run(&bin, &args);
        assert!(!o.success(), "{a:?} as {} succeeded: {o:?}", user.name);
        assert_eq!(o.code, Some(1), "{a:?}: {o:?}");
        assert!(
            o.stderr.contains(sock) && o.stderr.contains("Permission denied"),
            "{a:?}: the error should name the socket and the refusal: {}",
            o.stderr
        );
        assert!(o.stdout.is_empty(), "{a:?} printed {}", o.stdout);
    }
    assert_eq!(lab.cli_ok(&["describe-group"]), groups, "groups changed");
    assert_eq!(
        lab.cli_ok(&["describe-instances"]),
        instances,
        "instances changed"
    );

    // Control: with the mode opened, the same user gets in — so the refusal above
    // was the socket's mode, not a broken setup.
    fs::set_permissions(&lab.socket, fs::Permissions::from_mode(0o666)).expect("chmod socket");
    let o = user.run(&bin, &["--socket", sock, "describe-group"]);
    fs::set_permissions(&lab.socket, fs::Permissions::from_mode(0o600)).expect("chmod socket");
    assert!(o.success(), "control run failed: {o:?}");
    assert_eq!(o.stdout, groups);
    println!(
        "api-user: {} refused 5 commands as expected; test wall time {:.1} s",
        user.name,
        wall.elapsed().as_secs_f64()
    );
}

#[test]
fn the_state_dir_and_database_are_private_to_root() {
    let Some(lab) = Lab::start(LabConfig::new("api-files")) else {
        return;
    };
    lab.cli_ok(&[
        "add-group",
        "secret",
        "-d",
        "every owner's rules live in the db",
    ]);
    let mut bad = Vec::new();
    let dir = fs::metadata(&lab.state_dir).expect("state dir");
    assert_eq!(dir.uid(), 0);
    // Others may look into the dir (0755 is the daemon's choice), never write.
    if dir.mode() & 0o022 != 0 {
        bad.push(format!(
            "{} mode {:o}",
            lab.state_dir.display(),
            dir.mode() & 0o7777
        ));
    }
    let mut files = 0;
    for e in fs::read_dir(&lab.state_dir)
        .expect("read state dir")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("sgswitch.db") {
            continue;
        }
        files += 1;
        let m = e.metadata().expect("metadata");
        assert_eq!(m.uid(), 0, "{name} owner");
        if m.mode() & 0o077 != 0 {
            bad.push(format!("{name} mode {:o}", m.mode() & 0o7777));
        }
    }
    assert!(files >= 1, "no sgswitch.db in {}", lab.state_dir.display());
    // And what that means: an unprivileged user cannot read the rules.
    let user = TempUser::create();
    let db = lab.state_dir.join("sgswitch.db");
    let o = user.run(Path::new("/bin/cat"), &[db.to_str().expect("utf-8 path")]);
    if o.success() {
        bad.push(format!(
            "{} read {} ({} bytes)",
            user.name,
            db.display(),
            o.stdout.len()
        ));
    }
    assert!(bad.is_empty(), "state readable by other users: {bad:?}");
}

/// Owner, then (code) of a failed call.
fn code(api: &mut ApiConn, owner: &str, cmd: Value) -> String {
    let shown = cmd.to_string();
    match api
        .call(Some(owner), cmd)
        .unwrap_or_else(|e| panic!("{e}"))
        .answer
    {
        Ok(v) => panic!("{shown} as {owner} succeeded: {v}"),
        Err((c, _)) => c,
    }
}

fn group_owner(g: &Value) -> String {
    g["owner"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| g["owner"].to_string())
}

#[test]
fn an_owner_cannot_see_or_touch_another_owners_groups_and_instances() {
    let Some(lab) = Lab::start(LabConfig::new("api-owners")) else {
        return;
    };
    let wall = Instant::now();
    let mut api = ApiConn::connect(&lab.socket).unwrap_or_else(|e| panic!("{e}"));
    let a = Some(OWNER_A);
    api.ok(
        a,
        json!({"op": "add-group", "name": "web", "description": "A's web"}),
    );
    let web80 =
        json!({"proto": "tcp", "ports": "80", "icmp": null, "cidrs": ["0.0.0.0/0"], "groups": []});
    api.ok(a, json!({"op": "authorize", "group": "web", "spec": web80}));
    let out = lab.cli_ok(&["--owner", OWNER_A, "run-instances", AMI, "-g", "web"]);
    let inst = lab.record_instances(&out).remove(0);
    let snapshot = |api: &mut ApiConn| {
        let g = api.ok(a, json!({"op": "describe-groups", "names": []}));
        let i = api.ok(a, json!({"op": "describe-instances", "ids": []}));
        (g.to_string(), i.to_string())
    };
    let before = snapshot(&mut api);
    let cli_before = lab.cli_ok(&["describe-group"]);

    // B sees none of A's groups, by listing or by name.
    let b = OWNER_B;
    let listed = api.ok(Some(b), json!({"op": "describe-groups", "names": []}));
    for g in listed["groups"].as_array().expect("groups array") {
        assert_ne!(group_owner(g), OWNER_A, "B sees A's group {g}");
    }
    let nf = "InvalidGroup.NotFound";
    assert_eq!(
        code(
            &mut api,
            b,
            json!({"op": "describe-groups", "names": ["web"]})
        ),
        nf
    );
    let cli = lab.cli(&["--owner", b, "describe-group", "web"]);
    assert_eq!(cli.code, Some(1), "{cli:?}");
    assert!(cli.stderr.starts_with("InvalidGroup.NotFound: "), "{cli:?}");

    // B cannot edit, delete or launch into A's group.
    let ssh =
        json!({"proto": "tcp", "ports": "22", "icmp": null, "cidrs": ["0.0.0.0/0"], "groups": []});
    assert_eq!(
        code(
            &mut api,
            b,
            json!({"op": "authorize", "group": "web", "spec": ssh})
        ),
        nf
    );
    assert_eq!(
        code(
            &mut api,
            b,
            json!({"op": "revoke", "group": "web", "spec": web80})
        ),
        nf
    );
    assert_eq!(
        code(&mut api, b, json!({"op": "delete-group", "name": "web"})),
        nf
    );
    let run = json!({"op": "run-instances", "ami": AMI, "count": 1, "groups": ["web"]});
    assert_eq!(code(&mut api, b, run), nf);
    // A group source of A's is named with A's account (-o web -u A), so it does
    // not let B edit A's group either.
    let via = json!({"proto": "tcp", "ports": "22", "icmp": null, "cidrs": [], "groups": [["web", OWNER_A]]});
    assert_eq!(
        code(
            &mut api,
            b,
            json!({"op": "authorize", "group": "web", "spec": via.clone()})
        ),
        nf
    );

    // B cannot describe or terminate A's instance.
    let inf = "InvalidInstanceID.NotFound";
    assert_eq!(
        code(
            &mut api,
            b,
            json!({"op": "describe-instances", "ids": [inst.id]})
        ),
        inf
    );
    assert_eq!(
        code(
            &mut api,
            b,
            json!({"op": "terminate-instances", "ids": [inst.id]})
        ),
        inf
    );
    let mine = api.ok(Some(b), json!({"op": "describe-instances", "ids": []}));
    assert!(
        !mine.to_string().contains(&inst.id),
        "B sees A's instance: {mine}"
    );

    // Legal EC2: B's own group `web` is another group; B may name A's `web` as a source.
    api.ok(
        Some(b),
        json!({"op": "add-group", "name": "web", "description": "B's web"}),
    );
    api.ok(
        Some(b),
        json!({"op": "add-group", "name": "bapp", "description": "B's app"}),
    );
    let added = api.ok(
        Some(b),
        json!({"op": "authorize", "group": "bapp", "spec": via}),
    );
    assert_eq!(added["rules"].as_array().map(Vec::len), Some(1), "{added}");
    let shown = lab.cli_ok(&["--owner", b, "describe-group", "bapp"]);
    assert!(
        shown.contains(&format!("FROM\tUSER\t{OWNER_A}\tGRPNAME\tweb")),
        "{shown}"
    );
    api.ok(
        Some(b),
        json!({"op": "authorize", "group": "web", "spec": ssh}),
    );
    let b_web = api.ok(Some(b), json!({"op": "describe-groups", "names": ["web"]}));
    assert_eq!(group_owner(&b_web["groups"][0]), OWNER_B, "{b_web}");
    // B deleting its own `web` leaves A's alone.
    api.ok(Some(b), json!({"op": "delete-group", "name": "web"}));

    // A's state is byte-identical, and A's instance still runs.
    assert_eq!(snapshot(&mut api), before, "A's state changed");
    assert_eq!(lab.cli_ok(&["describe-group"]), cli_before);
    assert!(e2e::lab::netns_present(&inst.netns));
    println!(
        "api-owners: every cross-owner attempt answered NotFound; test wall time {:.1} s",
        wall.elapsed().as_secs_f64()
    );
}
