//! Running a program with a deadline and collecting what it printed.
//!
//! Every external program an end-to-end test runs goes through [`run`]: it is
//! killed (by its PID) when the deadline passes, so a hung tool can fail a test
//! but never hang the suite.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// What a finished program printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Errors of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} still running after {after:?}: killed; printed so far: {stdout}{stderr}")]
    Timeout {
        cmd: String,
        after: Duration,
        stdout: String,
        stderr: String,
    },
}

/// A printable form of a command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` to completion (stdin closed), at most `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Outcome, RunError> {
    let name = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn {
            cmd: name.clone(),
            source,
        })?;
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => thread::sleep(Duration::from_millis(2)),
            Err(_) => break None,
        }
    };
    let Some(status) = status else {
        kill_wait(&mut child, Duration::ZERO);
        return Err(RunError::Timeout {
            cmd: name,
            after: timeout,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        });
    };
    Ok(Outcome {
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        code: status.code(),
    })
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

/// Stop a child by its PID: `SIGTERM`, up to `grace` to exit, then `SIGKILL`;
/// always reaped. A child that already exited is just reaped.
pub fn kill_wait(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = Pid::from_raw(child.id() as i32);
    if !grace.is_zero() {
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_and_exit_code() {
        let o = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.stderr, "err\n");
        assert_eq!(o.code, Some(3));
        assert!(!o.success());
    }

    #[test]
    fn kills_a_program_past_its_deadline() {
        let t = Instant::now();
        let e = run(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        match e {
            RunError::Timeout { stdout, .. } => assert_eq!(stdout, "started\n"),
            other => panic!("expected a timeout, got {other}"),
        }
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let e = run(
            &mut Command::new("/nonexistent/sgswitch-e2e-tool"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/sgswitch-e2e-tool"),
            "{e}"
        );
    }
}
