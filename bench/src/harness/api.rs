//! The harness's client of the daemon's management socket.
//!
//! Contract: requests are [`mgmt::api::Request`]s and replies
//! [`mgmt::api::WireReply`]s, serialised by mgmt's own serde definitions (the
//! JSON-lines protocol of mgmt/README.md: one request line, one reply line), so
//! the harness cannot drift from the daemon's wire format. One connection is
//! kept open; a request line can be encoded ahead of time ([`request_line`]) so
//! that a timed call pays only for the write and the reply. A reply that is not
//! `ok` is an error naming the request and the daemon's answer.
//!
//! Below both the lab setup ([`super::paths`]) and the edit test
//! ([`super::edit`]): neither imports the other for it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mgmt::api::{Command, Request, Response, WireReply};

use super::exec::{HarnessError, Result};

/// A connection to the daemon's socket.
pub struct Api {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

/// The request line (without `\n`) of `command` as the daemon's default owner.
pub fn request_line(command: Command) -> String {
    let req = Request {
        owner: None,
        command,
        wait: false,
    };
    // Serialising mgmt's own request type cannot fail (string keys, no maps
    // with non-string keys).
    serde_json::to_string(&req).expect("a Request serialises")
}

impl Api {
    pub fn connect(path: &std::path::Path) -> Result<Api> {
        let w = UnixStream::connect(path).map_err(|source| HarnessError::Io {
            what: format!("connect {}", path.display()),
            source,
        })?;
        w.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|source| HarnessError::Io {
                what: "socket timeout".into(),
                source,
            })?;
        let r = BufReader::new(w.try_clone().map_err(|source| HarnessError::Io {
            what: "dup socket".into(),
            source,
        })?);
        Ok(Api { w, r })
    }

    /// Runs `command` as the daemon's default owner; returns the response.
    pub fn command(&mut self, command: Command) -> Result<Response> {
        self.call(&request_line(command))
    }

    /// Sends one request line; returns the response (an error unless `ok`).
    pub fn call(&mut self, req: &str) -> Result<Response> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| HarnessError::Io { what, source }
        };
        // One write for the whole line: written in two, the daemon's
        // connection thread wakes on the first part and the second waits for
        // this thread's next turn on a core (measured: up to 1.5 ms under the
        // edit test's load), which a real client does not add.
        let mut line = Vec::with_capacity(req.len() + 1);
        line.extend_from_slice(req.as_bytes());
        line.push(b'\n');
        self.w.write_all(&line).map_err(io("write request"))?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(io("read reply"))?;
        match serde_json::from_str::<WireReply>(&line) {
            Ok(WireReply::Ok(resp)) => Ok(resp),
            Ok(WireReply::Error(e)) => Err(HarnessError::Setup(format!(
                "daemon refused {req}: {}: {}",
                e.code, e.message
            ))),
            Err(e) => Err(HarnessError::Setup(format!(
                "daemon answered {req} with an unreadable reply ({e}): {}",
                line.trim()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter::model::RuleSpec;

    #[test]
    fn request_lines_decode_as_the_daemon_decodes_them() {
        let cmd = Command::Authorize {
            egress: false,
            group: mgmt::api::GroupRef::Name("gedit".into()),
            permissions: vec![
                RuleSpec {
                    proto: Some("udp".into()),
                    ports: Some("9999".into()),
                    cidrs: vec!["172.31.255.10/32".into()],
                    ..RuleSpec::default()
                }
                .into(),
            ],
        };
        let line = request_line(cmd.clone());
        let req = mgmt::api::decode_request(line.as_bytes()).unwrap();
        assert_eq!(req.command, cmd);
        assert_eq!(req.owner, None);
    }
}
