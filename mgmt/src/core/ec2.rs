//! What only the EC2 Query API needs: access keys, ClientTokens, reservation
//! views, rule ids and descriptions, tags.
//!
//! Rule ids (`sgr-` + 17 hex digits) and descriptions, and the tags of groups
//! and instances, are kept beside the model (they do not change what the
//! datapath does): every commit derives their store edits from the model's
//! changes ([`Core::meta_edits`]: a new rule gets an id and the description
//! its command staged, a removed rule or group, a terminated instance loses
//! its facts and tags) in the same transaction, and applies them in memory
//! once it committed. The socket's commands get ids for their rules too.

use std::collections::BTreeSet;

use super::*;
use crate::api::{RuleInfo, Tag, TagKey};
use crate::store::{RuleMetaRecord, TagRecord};
use filter::model::Rule;

/// What the EC2 Query API keeps besides the model: access keys by id,
/// `RunInstances` ClientTokens by (owner, token), rule ids and descriptions,
/// tags; and what the current command staged for its commit.
#[derive(Clone, Debug, Default)]
pub(super) struct Ec2State {
    pub(super) keys: BTreeMap<String, AccessKeyRecord>,
    pub(super) tokens: BTreeMap<(Owner, String), ClientTokenRecord>,
    /// (group id, egress, rule) → id and description. Changed only through
    /// [`Ec2State::put_rule`], [`Ec2State::drop_rule`] and
    /// [`Ec2State::drop_group`], which keep [`Ec2State::rule_ids`] in step.
    rules: BTreeMap<RuleKey, RuleMeta>,
    /// The ids of `rules`: a new id is checked against it (an edit costs what
    /// it adds, not a scan or a copy of every rule's facts).
    rule_ids: BTreeSet<String>,
    /// Resource id → key → value.
    pub(super) tags: BTreeMap<String, BTreeMap<String, String>>,
    /// For the rules the current command adds ((egress, normalised rule) →
    /// id to keep, or empty for a new one, and description).
    pub(super) pending_rules: BTreeMap<(bool, Rule), RuleMeta>,
    /// Tags of the groups and instances the current command creates.
    pub(super) pending_tags: Vec<Tag>,
    /// Set by [`Command::Tagged`] for the one `handle` it calls.
    pub(super) arm_tags: Vec<Tag>,
}

/// A rule of a group: (group id, egress, rule).
pub(super) type RuleKey = (String, bool, Rule);

/// A rule's id and description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct RuleMeta {
    pub(super) id: String,
    pub(super) description: String,
}

/// What a commit changes of the EC2 facts, applied once it committed.
#[derive(Debug)]
pub(super) enum MetaChange {
    PutRule(RuleKey, RuleMeta),
    DropRule(RuleKey),
    DropGroup(String),
    PutTags(String, Vec<Tag>),
    DropTags(String),
}

/// Most tags per resource (EC2's limit).
pub const MAX_TAGS: usize = 50;

impl Ec2State {
    /// The state as the store holds it.
    pub(super) fn load(
        keys: Vec<AccessKeyRecord>,
        tokens: Vec<ClientTokenRecord>,
        rule_meta: Vec<RuleMetaRecord>,
        tags: Vec<TagRecord>,
    ) -> Ec2State {
        let mut st = Ec2State {
            keys: keys.into_iter().map(|k| (k.key_id.clone(), k)).collect(),
            tokens: tokens
                .into_iter()
                .map(|t| ((t.owner.clone(), t.token.clone()), t))
                .collect(),
            ..Ec2State::default()
        };
        for m in rule_meta {
            st.put_rule(
                (m.group_id, m.egress, m.rule),
                RuleMeta {
                    id: m.rule_id,
                    description: m.description,
                },
            );
        }
        for t in tags {
            st.tags
                .entry(t.resource_id)
                .or_default()
                .insert(t.key, t.value);
        }
        st
    }

    /// Whether some rule has id `id`.
    pub(super) fn rule_id_taken(&self, id: &str) -> bool {
        self.rule_ids.contains(id)
    }

    /// Keeps `meta` for the rule `key` (replacing what it had).
    pub(super) fn put_rule(&mut self, key: RuleKey, meta: RuleMeta) {
        let id = meta.id.clone();
        if let Some(old) = self.rules.insert(key, meta)
            && old.id != id
        {
            self.rule_ids.remove(&old.id);
        }
        self.rule_ids.insert(id);
    }

    /// Drops the facts of the rule `key`.
    pub(super) fn drop_rule(&mut self, key: &RuleKey) {
        if let Some(old) = self.rules.remove(key) {
            self.rule_ids.remove(&old.id);
        }
    }

    /// Drops the facts of every rule of group `group_id`.
    pub(super) fn drop_group(&mut self, group_id: &str) {
        let ids = &mut self.rule_ids;
        self.rules.retain(|(g, _, _), m| {
            let keep = g != group_id;
            if !keep {
                ids.remove(&m.id);
            }
            keep
        });
    }
}

/// A new `sgr-` id: 17 hex digits.
/// Not one `taken` says is in use; the caller records it there.
fn new_rule_id(mut taken: impl FnMut(&str) -> bool) -> String {
    loop {
        let mut b = [0u8; 9];
        getrandom::fill(&mut b).expect("the kernel's random source (getrandom) failed");
        let id = format!("sgr-{}", &crate::ec2::sigv4::hex(&b)[..17]);
        if !taken(&id) {
            return id;
        }
    }
}

/// Check a rule description (EC2: at most 255 characters).
pub(super) fn check_description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() > 255 || d.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "invalid rule description '{}': at most 255 characters, no control characters",
                d.escape_default()
            ),
        ));
    }
    Ok(())
}

/// Check tags (EC2's limits: key 1 to 128 characters not starting with
/// `aws:`, value at most 256).
pub(super) fn check_tags(tags: &[Tag]) -> Result<(), ApiError> {
    for t in tags {
        let bad = |why: &str| {
            Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!("invalid tag key '{}': {why}", t.key.escape_default()),
            ))
        };
        let n = t.key.chars().count();
        if n == 0 || n > 128 {
            return bad("1 to 128 characters");
        }
        if t.key.to_ascii_lowercase().starts_with("aws:") {
            return bad("keys starting with 'aws:' are reserved");
        }
        if t.value.chars().count() > 256 {
            return Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!(
                    "invalid value of tag '{}': at most 256 characters",
                    t.key.escape_default()
                ),
            ));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::new(
            ErrorCode::InvalidParameterValue,
            format!("{} tags: at most {MAX_TAGS} per resource", tags.len()),
        ));
    }
    Ok(())
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
                // A repeat while the first is still being launched: that
                // reservation, its instances `pending` (never a second launch).
                if let Some((seen, launch)) = self.launching_token(owner, &t) {
                    if seen.fingerprint != fingerprint {
                        return Err(token_mismatch(&t));
                    }
                    return Ok(launch.view());
                }
                if let Some(seen) = self.ec2.tokens.get(&(owner.clone(), t.clone())) {
                    if seen.fingerprint != fingerprint {
                        return Err(token_mismatch(&t));
                    }
                    return Ok(self.reservation_view(owner, &seen.clone()));
                }
                Some(ClientTokenRecord {
                    owner: owner.clone(),
                    token: t,
                    reservation: String::new(),
                    fingerprint,
                    instances: Vec::new(),
                    created_at: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64),
                })
            }
        };
        self.run_instances(owner, ami, count, names, qemu, token)
    }

    /// The reservation a ClientToken launched (a repeat): its instances as
    /// they are now, those gone as `terminated` (as EC2 answers).
    pub(super) fn reservation_view(&self, owner: &Owner, token: &ClientTokenRecord) -> Response {
        let live = |id: &str| {
            self.records
                .get(id)
                .filter(|r| r.reservation == token.reservation && r.instance.owner == *owner)
        };
        let mut instances: Vec<InstanceView> = token
            .instances
            .iter()
            .map(|i| match live(&i.id) {
                Some(r) => self.view(r),
                None => InstanceView {
                    state: "terminated".into(),
                    reason: None,
                    ..i.clone()
                },
            })
            .collect();
        // Tokens stored before their instances were: the live ones.
        if token.instances.is_empty() {
            let mut recs: Vec<&InstanceRecord> = self
                .records
                .values()
                .filter(|r| r.reservation == token.reservation && r.instance.owner == *owner)
                .collect();
            recs.sort_by_key(|r| r.launch_index);
            instances = recs.iter().map(|r| self.view(r)).collect();
        }
        // A live instance's groups, else those of the request's fingerprint
        // (AMI|min|max|groups; none given: `default`).
        let groups = instances
            .iter()
            .find_map(|i| live(&i.id))
            .map(|r| r.instance.groups.clone())
            .unwrap_or_else(|| {
                token
                    .fingerprint
                    .splitn(4, '|')
                    .nth(3)
                    .filter(|g| !g.is_empty())
                    .map_or_else(
                        || vec!["default".to_owned()],
                        |g| g.split(',').map(str::to_owned).collect(),
                    )
            });
        Response::Reservations {
            reservations: vec![Reservation {
                id: token.reservation.clone(),
                owner: owner.0.clone(),
                groups,
                instances,
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
        self.commit_records(vec![Edit::PutAccessKey(rec.clone())])?;
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
            | Command::TerminateInstances { .. }
            | Command::DescribeRules { .. }
            | Command::UpdateRuleDescriptions { .. }
            | Command::RevokeRuleIds { .. }
            | Command::ModifyRules { .. }
            | Command::CreateTags { .. }
            | Command::DeleteTags { .. }
            | Command::DescribeTags
            | Command::Tagged { .. } => {}
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!("a dry run of {other:?} is not supported"),
                ));
            }
        }
        self.arm_dry_run = true;
        let reply = self.handle_once(Request {
            owner: Some(owner.0.clone()),
            command,
            wait: false,
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

impl Core {
    /// The store edits and in-memory changes of the EC2 facts that model
    /// `changes` imply (new rules get ids and their staged descriptions, new
    /// groups and instances the staged tags; removed ones lose theirs).
    /// Consumes what the command staged.
    pub(super) fn meta_edits(&mut self, changes: &[Change]) -> (Vec<Edit>, Vec<MetaChange>) {
        let mut pending = std::mem::take(&mut self.ec2.pending_rules);
        let tags = std::mem::take(&mut self.ec2.pending_tags);
        let mut edits = Vec::new();
        let mut after = Vec::new();
        // Ids given in this commit (not yet in `self.ec2`).
        let mut given: BTreeSet<String> = BTreeSet::new();
        let ec2 = &self.ec2;
        let mut new_rules = |group_id: &str,
                             egress: bool,
                             rules: &[Rule],
                             edits: &mut Vec<Edit>,
                             after: &mut Vec<MetaChange>| {
            for r in rules {
                let mut meta = pending.remove(&(egress, r.clone())).unwrap_or_default();
                if meta.id.is_empty() {
                    meta.id = new_rule_id(|id| ec2.rule_id_taken(id) || given.contains(id));
                }
                given.insert(meta.id.clone());
                let key = (group_id.to_owned(), egress, r.clone());
                edits.push(Edit::PutRuleMeta(RuleMetaRecord {
                    group_id: group_id.to_owned(),
                    egress,
                    rule: r.clone(),
                    rule_id: meta.id.clone(),
                    description: meta.description.clone(),
                }));
                after.push(MetaChange::PutRule(key, meta));
            }
        };
        let put_tags = |id: &str, edits: &mut Vec<Edit>, after: &mut Vec<MetaChange>| {
            if tags.is_empty() {
                return;
            }
            for t in &tags {
                edits.push(Edit::PutTag(TagRecord {
                    resource_id: id.to_owned(),
                    key: t.key.clone(),
                    value: t.value.clone(),
                }));
            }
            after.push(MetaChange::PutTags(id.to_owned(), tags.clone()));
        };
        for c in changes {
            match c {
                Change::GroupAdded { group, .. } => {
                    new_rules(&group.id, false, &group.rules, &mut edits, &mut after);
                    new_rules(&group.id, true, &group.egress, &mut edits, &mut after);
                    put_tags(&group.id, &mut edits, &mut after);
                }
                Change::GroupDeleted(g) => {
                    edits.push(Edit::DeleteTags {
                        resource_id: g.id.clone(),
                    });
                    after.push(MetaChange::DropGroup(g.id.clone()));
                    after.push(MetaChange::DropTags(g.id.clone()));
                }
                Change::RulesAdded {
                    group_id,
                    rules,
                    egress,
                    ..
                } => new_rules(group_id, *egress, rules, &mut edits, &mut after),
                Change::RulesRemoved {
                    group_id,
                    rules,
                    egress,
                    ..
                } => {
                    for r in rules {
                        after.push(MetaChange::DropRule((group_id.clone(), *egress, r.clone())));
                    }
                }
                Change::InstanceAdded(i) => put_tags(&i.id, &mut edits, &mut after),
                Change::InstanceRemoved(i) => {
                    edits.push(Edit::DeleteTags {
                        resource_id: i.id.clone(),
                    });
                    after.push(MetaChange::DropTags(i.id.clone()));
                }
            }
        }
        (edits, after)
    }

    /// Apply what [`Core::meta_edits`] returned, once the store committed.
    pub(super) fn apply_meta(&mut self, after: Vec<MetaChange>) {
        for m in after {
            match m {
                MetaChange::PutRule(key, meta) => self.ec2.put_rule(key, meta),
                MetaChange::DropRule(key) => self.ec2.drop_rule(&key),
                MetaChange::DropGroup(g) => self.ec2.drop_group(&g),
                MetaChange::PutTags(id, tags) => {
                    let t = self.ec2.tags.entry(id).or_default();
                    for tag in tags {
                        t.insert(tag.key, tag.value);
                    }
                }
                MetaChange::DropTags(id) => {
                    self.ec2.tags.remove(&id);
                }
            }
        }
    }

    /// Stage the descriptions of `permissions` for the (ingress or `egress`)
    /// rules an authorize adds (checked first).
    pub(super) fn stage_descriptions(
        &mut self,
        owner: &Owner,
        group: &GroupRef,
        permissions: &[Permission],
        egress: bool,
    ) -> Result<(), ApiError> {
        for p in permissions {
            let Some(d) = &p.description else { continue };
            check_description(d)?;
            let (_, rules) = self.permission_rules(owner, group, std::slice::from_ref(p))?;
            for r in rules {
                self.ec2.pending_rules.insert(
                    (egress, r.normalized()?),
                    RuleMeta {
                        id: String::new(),
                        description: d.clone(),
                    },
                );
            }
        }
        Ok(())
    }

    /// The group `g` of `owner` (by name or id).
    fn owned_group(&self, owner: &Owner, g: &GroupRef) -> Result<&filter::model::Group, ApiError> {
        let name = self.group_name(owner, g)?;
        Ok(self.model.group(owner, &name)?)
    }

    fn rule_info(&self, g: &filter::model::Group, egress: bool, r: &Rule) -> RuleInfo {
        let meta = self
            .ec2
            .rules
            .get(&(g.id.clone(), egress, r.clone()))
            .cloned()
            .unwrap_or_default();
        RuleInfo {
            rule_id: meta.id,
            group_id: g.id.clone(),
            group_name: g.name.clone(),
            owner: g.owner.0.clone(),
            egress,
            rule: r.clone(),
            description: meta.description,
        }
    }

    /// [`Command::DescribeRules`].
    pub(super) fn describe_rules(
        &self,
        owner: &Owner,
        groups: &[GroupRef],
        rule_ids: &[String],
    ) -> Reply {
        let gs: Vec<&filter::model::Group> = if groups.is_empty() {
            self.model.groups_of(owner).collect()
        } else {
            groups
                .iter()
                .map(|g| self.owned_group(owner, g))
                .collect::<Result<_, _>>()?
        };
        let mut rules: Vec<RuleInfo> = gs
            .iter()
            .flat_map(|g| {
                let ingress = g.rules.iter().map(|r| self.rule_info(g, false, r));
                ingress.chain(g.egress.iter().map(|r| self.rule_info(g, true, r)))
            })
            .collect();
        if !rule_ids.is_empty() {
            for id in rule_ids {
                if !rules.iter().any(|r| r.rule_id == *id) {
                    return Err(rule_not_found(id));
                }
            }
            rules.retain(|r| rule_ids.contains(&r.rule_id));
        }
        Ok(Response::Rules { rules })
    }

    /// The rules of group `g` with ids `ids` (each must be the group's), as
    /// (egress, rule); only the `egress` ones (or only ingress) when given.
    fn rules_by_id(
        &self,
        g: &filter::model::Group,
        ids: &[String],
        egress: Option<bool>,
    ) -> Result<Vec<(bool, Rule)>, ApiError> {
        let dirs: &[bool] = match egress {
            Some(false) => &[false],
            Some(true) => &[true],
            None => &[false, true],
        };
        ids.iter()
            .map(|id| {
                dirs.iter()
                    .find_map(|&e| {
                        g.rules_of(e)
                            .iter()
                            .find(|r| {
                                self.ec2
                                    .rules
                                    .get(&(g.id.clone(), e, (*r).clone()))
                                    .is_some_and(|m| m.id == *id)
                            })
                            .map(|r| (e, r.clone()))
                    })
                    .ok_or_else(|| rule_not_found(id))
            })
            .collect()
    }

    /// [`Command::UpdateRuleDescriptions`]: one store transaction, no new
    /// generation (the rules do not change).
    pub(super) fn update_rule_descriptions(
        &mut self,
        owner: &Owner,
        group: &GroupRef,
        permissions: &[Permission],
        egress: bool,
    ) -> Reply {
        let g = self.owned_group(owner, group)?.clone();
        if permissions.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "the request must contain the parameter IpPermissions",
            ));
        }
        let mut metas = Vec::new();
        for p in permissions {
            let d = p.description.clone().unwrap_or_default();
            check_description(&d)?;
            let (_, rules) = self.permission_rules(owner, group, std::slice::from_ref(p))?;
            for r in rules {
                let r = r.normalized()?;
                let meta = self
                    .ec2
                    .rules
                    .get(&(g.id.clone(), egress, r.clone()))
                    .filter(|_| g.rules_of(egress).contains(&r))
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InvalidPermissionNotFound,
                            format!(
                                "the specified {} rule '{r}' does not exist in security group '{}'",
                                if egress { "egress" } else { "ingress" },
                                g.name
                            ),
                        )
                    })?;
                metas.push(RuleMetaRecord {
                    group_id: g.id.clone(),
                    egress,
                    rule: r,
                    rule_id: meta.id.clone(),
                    description: d.clone(),
                });
            }
        }
        self.commit_meta(metas)
    }

    /// Store rule facts (ids unchanged) and keep them.
    fn commit_meta(&mut self, metas: Vec<RuleMetaRecord>) -> Reply {
        if self.dry_run {
            return Err(dry_run_ok());
        }
        let edits: Vec<Edit> = metas.iter().cloned().map(Edit::PutRuleMeta).collect();
        self.store.commit(&edits).map_err(store_failed)?;
        self.edits += 1;
        for m in metas {
            self.ec2.put_rule(
                (m.group_id, m.egress, m.rule),
                RuleMeta {
                    id: m.rule_id,
                    description: m.description,
                },
            );
        }
        Ok(Response::Done)
    }

    /// [`Command::RevokeRuleIds`]: ingress rules, or `egress` ones (an id
    /// of the other direction is not found, as in EC2).
    pub(super) fn revoke_rule_ids(
        &mut self,
        owner: &Owner,
        group: &GroupRef,
        ids: &[String],
        egress: bool,
    ) -> Reply {
        let g = self.owned_group(owner, group)?.clone();
        if ids.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "the request must contain the parameter SecurityGroupRuleId",
            ));
        }
        let rules: Vec<Rule> = self
            .rules_by_id(&g, ids, Some(egress))?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        self.edit(|m| Ok(m.revoke_rules_dir(owner, &g.name, &rules, egress)?))?;
        Ok(Response::Permissions {
            group: g.name,
            rules,
            egress,
        })
    }

    /// [`Command::ModifyRules`]: the old rules revoked and the new ones
    /// authorized in one edit, each new rule keeping the old one's id and
    /// direction (ingress or egress).
    pub(super) fn modify_rules(
        &mut self,
        owner: &Owner,
        group: &GroupRef,
        changes: &[(String, Permission)],
    ) -> Reply {
        let g = self.owned_group(owner, group)?.clone();
        if changes.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "the request must contain the parameter SecurityGroupRule",
            ));
        }
        let ids: Vec<String> = changes.iter().map(|(id, _)| id.clone()).collect();
        let old = self.rules_by_id(&g, &ids, None)?;
        let mut new = Vec::new();
        for ((id, p), (egress, _)) in changes.iter().zip(&old) {
            let d = p.description.clone().unwrap_or_default();
            check_description(&d)?;
            let (_, rules) = self.permission_rules(owner, group, std::slice::from_ref(p))?;
            let [r] = &rules[..] else {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!(
                        "the new rule of {id} must be one rule (one CIDR or one group), not {}",
                        rules.len()
                    ),
                ));
            };
            let r = r.normalized()?;
            self.ec2.pending_rules.insert(
                (*egress, r.clone()),
                RuleMeta {
                    id: id.clone(),
                    description: d,
                },
            );
            new.push((*egress, r));
        }
        let of = |list: &[(bool, Rule)], e: bool| -> Vec<Rule> {
            list.iter()
                .filter(|(x, _)| *x == e)
                .map(|(_, r)| r.clone())
                .collect()
        };
        self.edit(|m| {
            for e in [false, true] {
                let old = of(&old, e);
                if !old.is_empty() {
                    m.revoke_rules_dir(owner, &g.name, &old, e)?;
                }
            }
            for e in [false, true] {
                let new = of(&new, e);
                if !new.is_empty() {
                    m.authorize_rules_dir(owner, &g.name, &new, e)?;
                }
            }
            Ok(())
        })?;
        let g = self.model.group(owner, &g.name)?;
        Ok(Response::Rules {
            rules: new.iter().map(|(e, r)| self.rule_info(g, *e, r)).collect(),
        })
    }

    /// Resource `id` of `owner`: a group (`sg-`) or an instance (`i-`).
    fn check_resource(&self, owner: &Owner, id: &str) -> Result<(), ApiError> {
        if id.starts_with("sg-") {
            return self
                .group_name(owner, &GroupRef::Id(id.to_owned()))
                .map(|_| ());
        }
        if id.starts_with("i-") {
            return self.owned_ids(owner, &[id.to_owned()]).map(|_| ());
        }
        Err(ApiError::new(
            ErrorCode::InvalidId,
            format!(
                "the ID '{}' is not valid: sgswitch tags security groups (sg-) and instances (i-)",
                id.escape_default()
            ),
        ))
    }

    /// [`Command::CreateTags`]: one store transaction.
    pub(super) fn create_tags(
        &mut self,
        owner: &Owner,
        resources: &[String],
        tags: &[Tag],
    ) -> Reply {
        if resources.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "the request must contain the parameter ResourceId",
            ));
        }
        if tags.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "the request must contain the parameter Tag",
            ));
        }
        check_tags(tags)?;
        let mut edits = Vec::new();
        for r in resources {
            self.check_resource(owner, r)?;
            let mut keys: BTreeSet<&str> = self
                .ec2
                .tags
                .get(r)
                .map(|t| t.keys().map(String::as_str).collect())
                .unwrap_or_default();
            keys.extend(tags.iter().map(|t| t.key.as_str()));
            if keys.len() > MAX_TAGS {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!("{r} would have {} tags: at most {MAX_TAGS}", keys.len()),
                ));
            }
            for t in tags {
                edits.push(Edit::PutTag(TagRecord {
                    resource_id: r.clone(),
                    key: t.key.clone(),
                    value: t.value.clone(),
                }));
            }
        }
        if self.dry_run {
            return Err(dry_run_ok());
        }
        self.store.commit(&edits).map_err(store_failed)?;
        self.edits += 1;
        for r in resources {
            let m = self.ec2.tags.entry(r.clone()).or_default();
            for t in tags {
                m.insert(t.key.clone(), t.value.clone());
            }
        }
        Ok(Response::Done)
    }

    /// [`Command::DeleteTags`]: one store transaction; keys a resource does
    /// not have are no error (as EC2).
    pub(super) fn delete_tags(
        &mut self,
        owner: &Owner,
        resources: &[String],
        keys: &[TagKey],
    ) -> Reply {
        if resources.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "the request must contain the parameter ResourceId",
            ));
        }
        let mut edits = Vec::new();
        let mut gone: Vec<(String, String)> = Vec::new();
        for r in resources {
            self.check_resource(owner, r)?;
            let Some(have) = self.ec2.tags.get(r) else {
                continue;
            };
            for (k, v) in have {
                let hit = keys.is_empty()
                    || keys
                        .iter()
                        .any(|t| t.key == *k && t.value.as_ref().is_none_or(|want| want == v));
                if hit {
                    edits.push(Edit::DeleteTag {
                        resource_id: r.clone(),
                        key: k.clone(),
                    });
                    gone.push((r.clone(), k.clone()));
                }
            }
        }
        if self.dry_run {
            return Err(dry_run_ok());
        }
        if !edits.is_empty() {
            self.store.commit(&edits).map_err(store_failed)?;
            self.edits += 1;
        }
        for (r, k) in gone {
            if let Some(m) = self.ec2.tags.get_mut(&r) {
                m.remove(&k);
                if m.is_empty() {
                    self.ec2.tags.remove(&r);
                }
            }
        }
        Ok(Response::Done)
    }

    /// [`Command::DescribeTags`]: the tags of `owner`'s groups and instances.
    pub(super) fn describe_tags(&self, owner: &Owner) -> Response {
        let mut tags = Vec::new();
        for (r, m) in &self.ec2.tags {
            if self.check_resource(owner, r).is_err() {
                continue;
            }
            for (k, v) in m {
                tags.push(TagRecord {
                    resource_id: r.clone(),
                    key: k.clone(),
                    value: v.clone(),
                });
            }
        }
        Response::Tags { tags }
    }

    /// [`Command::Tagged`]: `command` with `tags` staged for what it creates.
    pub(super) fn tagged(&mut self, owner: &Owner, command: Command, tags: Vec<Tag>) -> Reply {
        check_tags(&tags)?;
        if !matches!(
            command,
            Command::AddGroup { .. } | Command::RunInstances { .. }
        ) {
            return Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                "tags on creation are for new groups and instances",
            ));
        }
        self.ec2.arm_tags = tags;
        let arm_dry_run = self.dry_run;
        self.arm_dry_run = arm_dry_run;
        self.handle_once(Request {
            owner: Some(owner.0.clone()),
            command,
            wait: false,
        })
    }
}

fn rule_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidSecurityGroupRuleIdNotFound,
        format!(
            "the security group rule ID '{}' does not exist",
            id.escape_default()
        ),
    )
}

/// A client token repeated with other parameters (in flight or done).
fn token_mismatch(token: &str) -> ApiError {
    ApiError::new(
        ErrorCode::IdempotentParameterMismatch,
        format!(
            "the client token '{}' was used with other parameters",
            token.escape_default()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(port: u16) -> Rule {
        Rule {
            proto: filter::model::Proto::Tcp,
            ports: filter::model::Ports::Range(port, port),
            source: filter::model::Source::Cidr("10.0.0.0/8".parse().unwrap()),
        }
    }

    fn meta(id: &str) -> RuleMeta {
        RuleMeta {
            id: id.into(),
            description: String::new(),
        }
    }

    /// The id index follows every way rule facts change: loaded, put,
    /// replaced with another id, dropped one by one and by group; the same
    /// rule as ingress and as egress are two facts with two ids.
    #[test]
    fn rule_id_index_follows_the_rule_facts() {
        let rec = |g: &str, egress: bool, p: u16, id: &str| RuleMetaRecord {
            group_id: g.into(),
            egress,
            rule: rule(p),
            rule_id: id.into(),
            description: String::new(),
        };
        let mut st = Ec2State::load(
            Vec::new(),
            Vec::new(),
            vec![
                rec("sg-1", false, 1, "sgr-a"),
                rec("sg-1", false, 2, "sgr-b"),
                rec("sg-1", true, 1, "sgr-e"),
            ],
            Vec::new(),
        );
        assert!(st.rule_id_taken("sgr-a") && st.rule_id_taken("sgr-b"));
        assert!(st.rule_id_taken("sgr-e"));
        assert!(!st.rule_id_taken("sgr-c"));
        let key = |g: &str, egress: bool, p: u16| (g.to_owned(), egress, rule(p));
        st.put_rule(key("sg-2", false, 1), meta("sgr-c"));
        assert!(st.rule_id_taken("sgr-c"));
        // The same rule again under another id: the old id is free again.
        st.put_rule(key("sg-2", false, 1), meta("sgr-d"));
        assert!(!st.rule_id_taken("sgr-c") && st.rule_id_taken("sgr-d"));
        st.drop_rule(&key("sg-1", false, 1));
        assert!(!st.rule_id_taken("sgr-a") && st.rule_id_taken("sgr-b"));
        assert!(st.rule_id_taken("sgr-e"), "the egress twin stays");
        st.drop_group("sg-1");
        assert!(!st.rule_id_taken("sgr-b") && !st.rule_id_taken("sgr-e"));
        assert!(st.rule_id_taken("sgr-d"), "another group's rule stays");
        assert_eq!(st.rules.len(), 1);
        assert_eq!(st.rule_ids.len(), 1);
    }

    /// A new id is never one already in use.
    #[test]
    fn new_rule_ids_avoid_taken_ones() {
        let mut seen = 0;
        let id = new_rule_id(|_| {
            seen += 1;
            seen < 3
        });
        assert_eq!(seen, 3, "drew again while the id was taken");
        assert!(id.starts_with("sgr-") && id.len() == 21, "{id}");
    }
}
