//! What only the EC2 Query API needs: access keys, ClientTokens, reservation views.

use super::*;

/// What the EC2 Query API keeps besides the model: access keys by id and
/// `RunInstances` ClientTokens by (owner, token).
#[derive(Clone, Debug, Default)]
pub(super) struct Ec2State {
    pub(super) keys: BTreeMap<String, AccessKeyRecord>,
    pub(super) tokens: BTreeMap<(Owner, String), ClientTokenRecord>,
}

impl Core {
    /// The owner and secret of access key `key_id` (the EC2 front door's
    /// signature check); `AuthFailure` when unknown.
    pub fn lookup_access_key(&self, key_id: &str) -> Result<KeySecret, ApiError> {
        self.ec2
            .keys
            .get(key_id)
            .map(|k| KeySecret {
                owner: k.owner.0.clone(),
                secret: k.secret.clone(),
            })
            .ok_or_else(|| crate::api::unknown_access_key(key_id))
    }

    /// [`Command::RunInstances`]: counts, groups by reference, the kind of
    /// instance and the ClientToken; then [`Core::run_instances`].
    pub(super) fn run_instances_command(
        &mut self,
        owner: &Owner,
        ami: &str,
        (min, max): (Option<u32>, u32),
        groups: &[GroupRef],
        qemu: Option<bool>,
        client_token: Option<String>,
    ) -> Reply {
        let exact = min.is_none();
        let min = min.unwrap_or(max);
        if min == 0 || max < min {
            let shown = if min == max {
                format!("'{max}'")
            } else {
                format!("'{min}' to '{max}' (MinCount to MaxCount)")
            };
            return Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!("invalid instance count {shown}: need 1 <= MinCount <= MaxCount"),
            ));
        }
        if min > self.cfg.max_launch {
            // An exact count (the CLI's -n) above the limit is a bad value; a
            // MinCount above it is capacity the daemon does not have (EC2).
            let (code, what) = match exact {
                true => (ErrorCode::InvalidParameterValue, "instance count"),
                false => (ErrorCode::InsufficientInstanceCapacity, "MinCount"),
            };
            return Err(ApiError::new(
                code,
                format!(
                    "invalid {what} '{min}': at most {} instances per request",
                    self.cfg.max_launch
                ),
            ));
        }
        let count = max.min(self.cfg.max_launch);
        let mut names = self.group_names(owner, groups)?;
        names.sort();
        names.dedup();
        let qemu = qemu.unwrap_or_else(|| self.images.contains_key(ami));
        let token = match client_token {
            None => None,
            Some(t) => {
                if t.is_empty() || t.len() > 64 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameterValue,
                        format!(
                            "invalid ClientToken '{}': 1 to 64 printable ASCII characters",
                            t.escape_default()
                        ),
                    ));
                }
                let fingerprint = format!("{ami}|{min}|{max}|{}", names.join(","));
                if let Some(seen) = self.ec2.tokens.get(&(owner.clone(), t.clone())) {
                    if seen.fingerprint != fingerprint {
                        return Err(ApiError::new(
                            ErrorCode::IdempotentParameterMismatch,
                            format!(
                                "the client token '{}' was used with other parameters",
                                t.escape_default()
                            ),
                        ));
                    }
                    return Ok(self.reservation_view(owner, &seen.reservation));
                }
                Some(ClientTokenRecord {
                    owner: owner.clone(),
                    token: t,
                    reservation: String::new(),
                    fingerprint,
                    created_at: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64),
                })
            }
        };
        self.run_instances(owner, ami, count, names, qemu, token)
    }

    /// A reservation's instances that still exist (a repeated ClientToken).
    pub(super) fn reservation_view(&self, owner: &Owner, reservation: &str) -> Response {
        let mut recs: Vec<&InstanceRecord> = self
            .records
            .values()
            .filter(|r| r.reservation == reservation && r.instance.owner == *owner)
            .collect();
        recs.sort_by_key(|r| r.launch_index);
        Response::Reservations {
            reservations: vec![Reservation {
                id: reservation.to_owned(),
                owner: owner.0.clone(),
                groups: recs
                    .first()
                    .map(|r| r.instance.groups.clone())
                    .unwrap_or_default(),
                instances: recs.iter().map(|r| self.view(r)).collect(),
            }],
        }
    }

    /// A new access key acting as `owner`: `AKIA` + 16 of `[A-Z2-7]`, and a
    /// 40-character secret, both from the kernel's random source
    /// (`getrandom`; no fallback: a guessable secret is worse than an error).
    pub(super) fn create_access_key(&mut self, owner: &Owner) -> Reply {
        const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const SECRET_CHARS: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bytes = [0u8; 56];
        getrandom::fill(&mut bytes).map_err(|e| {
            ApiError::internal(format!("no random bytes for a new key (getrandom): {e}"))
        })?;
        let pick = |set: &[u8], b: &[u8]| -> String {
            b.iter()
                .map(|&x| set[x as usize % set.len()] as char)
                .collect()
        };
        let key_id = format!("AKIA{}", pick(ID_CHARS, &bytes[..16]));
        if self.ec2.keys.contains_key(&key_id) {
            return Err(ApiError::internal("access key id collision; try again"));
        }
        let rec = AccessKeyRecord {
            key_id: key_id.clone(),
            owner: owner.clone(),
            secret: pick(SECRET_CHARS, &bytes[16..]),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        };
        self.store
            .commit(&[Edit::PutAccessKey(rec.clone())])
            .map_err(store_failed)?;
        self.edits += 1;
        self.ec2.keys.insert(key_id, rec.clone());
        Ok(Response::AccessKey {
            key_id: rec.key_id,
            secret: rec.secret,
            owner: owner.0.clone(),
        })
    }
}

impl Core {
    /// [`Command::DescribeAccessKeys`]: `owner`'s keys by id, no secrets.
    pub(super) fn describe_access_keys(&self, owner: &Owner) -> Response {
        Response::AccessKeys {
            keys: self
                .ec2
                .keys
                .values()
                .filter(|k| k.owner == *owner)
                .map(key_info)
                .collect(),
        }
    }

    /// [`Command::DeleteAccessKey`]: one of `owner`'s keys (another owner's
    /// is not found, as an unknown one).
    pub(super) fn delete_access_key(&mut self, owner: &Owner, key_id: &str) -> Reply {
        let info = match self.ec2.keys.get(key_id) {
            Some(k) if k.owner == *owner => key_info(k),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!(
                        "the access key '{}' does not exist for owner {}",
                        key_id.escape_default(),
                        owner.0
                    ),
                ));
            }
        };
        self.store
            .commit(&[Edit::DeleteAccessKey {
                key_id: key_id.to_owned(),
            }])
            .map_err(store_failed)?;
        self.edits += 1;
        self.ec2.keys.remove(key_id);
        Ok(Response::AccessKeys { keys: vec![info] })
    }
}

fn key_info(k: &AccessKeyRecord) -> crate::api::AccessKeyInfo {
    crate::api::AccessKeyInfo {
        key_id: k.key_id.clone(),
        owner: k.owner.0.clone(),
        created_at: k.created_at,
    }
}

/// The answer of a dry run that would have succeeded (EC2's words).
pub(super) fn dry_run_ok() -> ApiError {
    ApiError::new(
        ErrorCode::DryRunOperation,
        "Request would have succeeded, but DryRun flag is set.",
    )
}

impl Core {
    /// [`Command::DryRun`]: run `command` as `owner` with every commit and
    /// launch stopped after validation and staging (the staged changes are
    /// undone); a command that changes nothing (a describe) runs as is.
    pub(super) fn dry_run(&mut self, owner: &Owner, command: Command) -> Reply {
        match command {
            Command::AddGroup { .. }
            | Command::DeleteGroup { .. }
            | Command::DescribeGroups { .. }
            | Command::Authorize { .. }
            | Command::Revoke { .. }
            | Command::RunInstances { .. }
            | Command::DescribeInstances { .. }
            | Command::TerminateInstances { .. } => {}
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!("a dry run of {other:?} is not supported"),
                ));
            }
        }
        self.arm_dry_run = true;
        let reply = self.handle(Request {
            owner: Some(owner.0.clone()),
            command,
        });
        self.dry_run = false;
        // Whatever was staged is undone (handle did, on the error).
        self.rollback();
        match reply {
            Ok(_) => Err(dry_run_ok()),
            Err(e) if e.code == ErrorCode::DryRunOperation => Err(e),
            Err(e) => Err(ApiError::new(
                ErrorCode::UnauthorizedOperation,
                format!(
                    "You are not authorized to perform this operation: the request would have failed with {}: {}",
                    e.code, e.message
                ),
            )),
        }
    }
}
