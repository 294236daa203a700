//! Instance lifecycle: run, launch, attach, re-attach states, describe, terminate.

use super::*;

impl Core {
    pub(super) fn run_instances(
        &mut self,
        owner: &Owner,
        ami: &str,
        count: u32,
        groups: Vec<String>,
        qemu: bool,
        token: Option<ClientTokenRecord>,
    ) -> Reply {
        validate_ami(ami)?;
        if count == 0 || count > self.cfg.max_launch {
            return Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!(
                    "invalid instance count '{count}': must be 1 to {}",
                    self.cfg.max_launch
                ),
            ));
        }
        let (how, image) = if qemu {
            let image = match self.images.get(ami) {
                Some(rec) => GuestImage::from(rec),
                None => self.cfg.default_image.clone().ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidAmiIdNotFound,
                        format!(
                            "the image id '{}' does not exist (register it with register-image)",
                            ami.escape_default()
                        ),
                    )
                })?,
            };
            (Attachment::Qemu { pid: 0 }, Some(image))
        } else {
            (Attachment::Netns, None)
        };
        let items = (0..count).map(|_| (None, None, how.clone())).collect();
        self.launch(owner, ami, groups, items, image.as_ref(), token)
    }

    pub(super) fn attach_instance(
        &mut self,
        owner: &Owner,
        ifname: &str,
        netns: Option<String>,
        groups: Vec<String>,
        ip: Option<Ipv4Addr>,
        mac: Option<&str>,
    ) -> Reply {
        validate_ifname("interface", ifname, 15)?;
        if let Some(ns) = &netns {
            validate_ifname("namespace", ns, 255)?;
        }
        let mac = match mac {
            None => None,
            Some(m) => Some(store::parse_mac(&m.to_ascii_lowercase()).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!(
                        "invalid MAC address '{}': expected aa:bb:cc:dd:ee:ff",
                        m.escape_default()
                    ),
                )
            })?),
        };
        if let Some(ip) = ip {
            self.validate_instance_ip(ip)?;
        }
        let how = Attachment::Iface {
            ifname: ifname.to_owned(),
            netns,
        };
        if let Some(r) = self.records.values().find(|r| r.attachment == how) {
            let place = how.place("");
            return Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!(
                    "interface '{}' is already attached as instance {}",
                    &place[5..],
                    r.instance.id
                ),
            ));
        }
        self.launch(
            owner,
            ATTACHED_AMI,
            groups,
            vec![(ip, mac, how)],
            None,
            None,
        )
    }

    /// An address the caller chose: inside the subnet, a host address, not the
    /// gateway, not in the uplink range. (Uniqueness is the model's check.)
    pub(super) fn validate_instance_ip(&self, ip: Ipv4Addr) -> Result<(), ApiError> {
        let subnet = self.cfg.subnet;
        let gateway = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
        let why = if !subnet.contains(&ip) {
            Some(format!("not in subnet {subnet}"))
        } else if ip == subnet.network() || ip == subnet.broadcast() {
            Some("not a host address".to_owned())
        } else if ip == gateway {
            Some("the gateway's address".to_owned())
        } else if self.cfg.uplink_range.contains(&ip) {
            Some(format!("in the uplink range {}", self.cfg.uplink_range))
        } else {
            None
        };
        match why {
            Some(why) => Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!("invalid instance address '{ip}': {why}"),
            )),
            None => Ok(()),
        }
    }

    /// Launch one reservation, step 1 (see [`Step`]): every item is
    /// (address or next free, MAC or the id's, attachment). Validates all by
    /// staging them in the model exactly as the commit will, reserves their
    /// ids, addresses, MACs and attachments (a concurrent launch or attach
    /// cannot take them), takes the staging back out of the model (no other
    /// request's commit may carry a half-launch) and leaves the slow part
    /// (making the namespaces, TAPs, queues, guests) as the request's job;
    /// [`Core::finish_launch`] is step 2. In cluster mode both steps run here
    /// (a commit that loses to a concurrent edit is retried whole).
    pub(super) fn launch(
        &mut self,
        owner: &Owner,
        ami: &str,
        groups: Vec<String>,
        items: Vec<(Option<Ipv4Addr>, Option<Mac>, Attachment)>,
        image: Option<&GuestImage>,
        token: Option<ClientTokenRecord>,
    ) -> Reply {
        let count = items.len();
        let reservation = random_id("r-");
        let launched_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut new_records = BTreeMap::new();
        let mut order = Vec::new();
        // What launches in flight hold.
        let taken = self.reserved();
        // Stage the instances in the model: an error return from here on
        // leaves uncommitted changes that `handle` undoes.
        let (subnet, uplink_range) = (self.cfg.subnet, self.cfg.uplink_range);
        let next = &mut self.model;
        for (index, (ip, mac, how)) in items.into_iter().enumerate() {
            let id = loop {
                let id = random_id("i-");
                if !next.instances().contains_key(&id) && !taken.ids.contains(&id) {
                    break id;
                }
            };
            let ip = match ip {
                Some(ip) => ip,
                None => free_ip(next, &taken, subnet, uplink_range).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InsufficientInstanceCapacity,
                        format!("no free address left in subnet {subnet} for {count} instance(s)"),
                    )
                })?,
            };
            let mac = mac.unwrap_or_else(|| instance_mac(&id));
            if let Some(other) = taken.ips.get(&ip) {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!("address '{ip}' is already used by instance {other} (launching)"),
                ));
            }
            if let Some(other) = taken.macs.get(&mac) {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!(
                        "MAC address '{}' is already used by instance {other} (launching)",
                        store::format_mac(&mac)
                    ),
                ));
            }
            if let Some(other) = taken.attachments.iter().find(|(a, _)| *a == how) {
                let place = how.place("");
                return Err(ApiError::new(
                    ErrorCode::InvalidParameterValue,
                    format!(
                        "interface '{}' is already attached as instance {} (launching)",
                        place.get(5..).unwrap_or(&place),
                        other.1
                    ),
                ));
            }
            let inst = Instance {
                id: id.clone(),
                owner: owner.clone(),
                mac,
                ip,
                groups: groups.clone(),
            };
            next.add_instance(inst)?;
            let stored = next.instances()[&id].clone();
            new_records.insert(
                id.clone(),
                InstanceRecord {
                    instance: stored,
                    ami: ami.to_owned(),
                    reservation: reservation.clone(),
                    launch_index: index as u32,
                    attachment: how,
                    launched_at,
                    host: String::new(),
                    identity: 0,
                },
            );
            order.push(id);
        }
        // Validated: a dry run stops here (`handle` undoes the staging)...
        if self.dry_run {
            return Err(super::ec2::dry_run_ok());
        }
        // ...any other run reserves them (the staging is taken back out of
        // the model: step 2 stages them again) and makes them off this thread.
        self.rollback();
        let prefix = self.cfg.subnet.prefix_len();
        let jobs: Vec<LaunchJob> = order
            .iter()
            .filter_map(|id| new_records.get(id))
            .map(|rec| {
                let boots = image.filter(|_| matches!(rec.attachment, Attachment::Qemu { .. }));
                self.dp
                    .launch_job(&rec.instance, prefix, &rec.attachment, boots)
            })
            .collect();
        // One job for the reservation: the instances one after the other,
        // stopping at the first that fails (each cleans up after itself).
        let job: Job = Box::new(move || {
            let mut made: Vec<Result<Made, ApiError>> = Vec::with_capacity(jobs.len());
            for j in jobs {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(j))
                    .unwrap_or_else(|_| Err(ApiError::internal("the launch failed unexpectedly")));
                let failed = r.is_err();
                made.push(r);
                if failed {
                    break;
                }
            }
            Box::new(made) as JobDone
        });
        let launch = PendingLaunch {
            owner: owner.clone(),
            reservation,
            order,
            records: new_records,
            image: image.cloned(),
            token,
            tags: std::mem::take(&mut self.ec2.pending_tags),
        };
        if self.is_clustered() {
            return self.finish_launch(launch, job());
        }
        self.defer(Slow::Launch(Box::new(launch)), job);
        // Not sent: `begin` answers with the job instead.
        Ok(Response::StateChanges {
            changes: Vec::new(),
        })
    }

    /// Park `what` under a new ticket, its `job` for [`Core::begin`].
    fn defer(&mut self, what: Slow, job: Job) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.insert(
            ticket,
            Pending {
                started: Instant::now(),
                edit: None,
                what,
            },
        );
        self.slow_out = Some((ticket, job));
    }

    /// What the launches in flight reserved.
    fn reserved(&self) -> Taken {
        let mut t = Taken::default();
        for p in self.pending.values() {
            if let Slow::Launch(l) = &p.what {
                for r in l.records.values() {
                    let id = &r.instance.id;
                    t.ids.insert(id.clone());
                    t.ips.insert(r.instance.ip, id.clone());
                    t.macs.insert(r.instance.mac, id.clone());
                    if matches!(r.attachment, Attachment::Iface { .. }) {
                        t.attachments.push((r.attachment.clone(), id.clone()));
                    }
                }
            }
        }
        t
    }

    /// The launch in flight of `owner`'s ClientToken `token`, if any.
    pub(super) fn launching_token(
        &self,
        owner: &Owner,
        token: &str,
    ) -> Option<(&ClientTokenRecord, &PendingLaunch)> {
        self.pending.values().find_map(|p| match &p.what {
            Slow::Launch(l) => l
                .token
                .as_ref()
                .filter(|t| t.owner == *owner && t.token == token)
                .map(|t| (t, &**l)),
            Slow::Terminate(_) => None,
        })
    }

    /// Step 2 of a slow request.
    pub(super) fn finish_pending(&mut self, p: Pending, done: JobDone) -> Reply {
        // Nothing of another request is staged here; a dry run never
        // reaches step 2.
        self.rollback();
        self.dry_run = false;
        self.ec2.pending_rules.clear();
        let reply = match p.what {
            Slow::Launch(l) => self.finish_launch(*l, done),
            Slow::Terminate(t) => Ok(self.finish_terminate(t, done)),
        };
        if reply.is_err() {
            self.rollback();
        }
        self.ec2.pending_tags.clear();
        reply
    }

    /// Launch step 2: take in what the job made, stage the instances in the
    /// model again (re-validating: a group deleted meanwhile fails the
    /// launch as a missing group does), commit, answer. Any failure undoes
    /// what was made.
    pub(super) fn finish_launch(&mut self, launch: PendingLaunch, done: JobDone) -> Reply {
        let PendingLaunch {
            owner,
            reservation,
            order,
            records: mut new_records,
            image,
            token,
            tags,
        } = launch;
        let made: Vec<Result<Made, ApiError>> = match done.downcast() {
            Ok(v) => *v,
            Err(_) => vec![Err(ApiError::internal("the launch failed unexpectedly"))],
        };
        let prefix = self.cfg.subnet.prefix_len();
        let mut launched: Vec<(String, Attachment)> = Vec::new();
        let mut failed: Option<ApiError> = None;
        let mut made = made.into_iter();
        for id in &order {
            let rec = new_records
                .get_mut(id)
                .ok_or_else(|| ApiError::internal("launch record lost"))?;
            let Some(m) = made.next() else {
                failed.get_or_insert_with(|| ApiError::internal("the launch stopped early"));
                break;
            };
            let m = match (m, &failed) {
                (Err(e), _) => {
                    failed.get_or_insert(e);
                    continue;
                }
                (Ok(m), Some(_)) => {
                    self.dp.discard_launch(&rec.instance, &rec.attachment, m);
                    continue;
                }
                (Ok(m), None) => m,
            };
            let how = rec.attachment.clone();
            let boots = image
                .as_ref()
                .filter(|_| matches!(how, Attachment::Qemu { .. }));
            match self.dp.finish_launch(&rec.instance, prefix, &how, boots, m) {
                Ok(made) => {
                    rec.attachment = made.clone();
                    launched.push((id.clone(), made));
                }
                Err(e) => {
                    failed = Some(e);
                }
            }
        }
        if let Some(e) = failed {
            self.undo_launch(&launched);
            return Err(e);
        }
        // Staged again, now with nothing in between before the commit.
        for id in &order {
            let Some(rec) = new_records.get(id) else {
                continue;
            };
            if let Err(e) = self.model.add_instance(rec.instance.clone()) {
                self.rollback();
                self.undo_launch(&launched);
                return Err(e.into());
            }
        }
        self.ec2.pending_tags = tags;
        // A ClientToken is recorded in the launch's own transaction: either
        // both are stored or neither.
        let token = token.map(|t| ClientTokenRecord {
            reservation: reservation.clone(),
            // As launched, for a repeat after they are gone.
            instances: order
                .iter()
                .filter_map(|id| new_records.get(id))
                .map(|r| pending_view(r, r.attachment.place(&r.instance.id)))
                .collect(),
            ..t
        });
        let extra = token.iter().cloned().map(Edit::PutClientToken).collect();
        if let Err(e) = self.commit_with(new_records, extra) {
            self.undo_launch(&launched);
            return Err(e);
        }
        if let Some(t) = token {
            self.ec2
                .tokens
                .insert((t.owner.clone(), t.token.clone()), t);
        }
        for (id, made) in launched {
            let state = self.dp.check(&id, &made);
            if let Some(r) = self.records.get(&id) {
                tracing::info!(
                    instance = %id,
                    owner = %r.instance.owner.0,
                    ip = %r.instance.ip,
                    place = %made.place(&id),
                    state = state.name(),
                    "launched instance {id} ({}, {})",
                    r.instance.ip,
                    made.place(&id)
                );
            }
            self.states.insert(id, state);
        }
        let views = order
            .iter()
            .filter_map(|id| self.records.get(id))
            .map(|r| self.view(r))
            .collect();
        let groups = self
            .records
            .get(&order[0])
            .map(|r| r.instance.groups.clone())
            .unwrap_or_default();
        Ok(Response::Reservations {
            reservations: vec![Reservation {
                id: reservation,
                owner: owner.0.clone(),
                groups,
                instances: views,
            }],
        })
    }

    /// Termination step 2: log how each destroy went; the answer (every
    /// instance `shutting-down`, as EC2 says) was settled in step 1.
    fn finish_terminate(&mut self, t: PendingTerminate, done: JobDone) -> Response {
        let results: Vec<Result<(), ApiError>> = match done.downcast() {
            Ok(v) => *v,
            Err(_) => Vec::new(),
        };
        let mut results = results.into_iter();
        for c in &t.changes {
            let id = &c.id;
            match results.next() {
                Some(Ok(())) => tracing::info!(
                    instance = %id,
                    owner = %t.owner.0,
                    previous = %c.previous,
                    "terminated instance {id} (was {})",
                    c.previous
                ),
                Some(Err(e)) => tracing::warn!(instance = %id, "terminating instance {id}: {e}"),
                None => tracing::warn!(
                    instance = %id,
                    "terminating instance {id}: the destroy failed unexpectedly"
                ),
            }
        }
        Response::StateChanges { changes: t.changes }
    }

    pub(super) fn undo_launch(&mut self, launched: &[(String, Attachment)]) {
        for (id, how) in launched {
            if let Err(e) = self.dp.terminate(id, how) {
                tracing::warn!(instance = %id, "cleaning up instance {id} after a failed launch: {e}");
            }
        }
    }

    /// The state of instance `id` (stopped when it is not attached; in
    /// cluster mode an instance of another host is running while that host
    /// is live, else unreachable).
    pub(super) fn state(&self, id: &str) -> Liveness {
        if let Some(r) = self.records.get(id)
            && let Some(host) = self.remote_host(r)
        {
            return if self.host_live(host) {
                Liveness::Running
            } else {
                Liveness::Unreachable(format!("host {host} is lost (its lease expired)"))
            };
        }
        self.states
            .get(id)
            .cloned()
            .unwrap_or_else(|| Liveness::Stopped("not attached".to_owned()))
    }

    pub(super) fn view(&self, r: &InstanceRecord) -> InstanceView {
        let state = self.state(&r.instance.id);
        InstanceView {
            id: r.instance.id.clone(),
            ami: r.ami.clone(),
            ip: r.instance.ip,
            mac: store::format_mac(&r.instance.mac),
            state: state.name().into(),
            launch_index: r.launch_index,
            place: if r.host.is_empty() {
                r.attachment.place(&r.instance.id)
            } else {
                format!("{}@{}", r.attachment.place(&r.instance.id), r.host)
            },
            reason: state.reason().map(str::to_owned),
            ipv6_address: None,
        }
    }

    /// Ask the data plane where instances `ids` stand now (those not stopped
    /// already); log each change.
    pub(super) fn refresh(&mut self, ids: &[String]) {
        for id in ids {
            let Some(cur) = self.states.get(id) else {
                continue;
            };
            if matches!(cur, Liveness::Stopped(_)) {
                continue;
            }
            let Some(rec) = self.records.get(id) else {
                continue;
            };
            let now = self.dp.check(id, &rec.attachment);
            if now != *cur {
                match &now {
                    Liveness::Stopped(why) => {
                        tracing::warn!(instance = %id, "instance {id} stopped: {why}");
                    }
                    other => tracing::info!(instance = %id, "instance {id} is {}", other.name()),
                }
                self.states.insert(id.clone(), now);
            }
        }
    }

    /// Periodic work of the management thread: move QEMU guests on (pending →
    /// running at their first DHCP lease, → stopped when QEMU exits). Cheap: one
    /// non-blocking check per guest; namespace instances are checked when
    /// described or terminated.
    pub fn tick(&mut self) {
        let guests: Vec<String> = self
            .states
            .iter()
            .filter(|(id, l)| {
                matches!(l, Liveness::Pending(_))
                    || (matches!(l, Liveness::Running)
                        && self
                            .records
                            .get(*id)
                            .is_some_and(|r| matches!(r.attachment, Attachment::Qemu { .. })))
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.refresh(&guests);
        // Ports the switch lost since the last tick: say so, and let every
        // live instance's state catch up (each one stopped is logged).
        let gone = self.dp.ports_gone();
        if gone > self.ports_gone_seen {
            let lost = gone - self.ports_gone_seen;
            self.ports_gone_seen = gone;
            tracing::warn!(
                lost,
                total = gone,
                "the switch lost {lost} port(s): their interface disappeared"
            );
            let live: Vec<String> = self
                .states
                .iter()
                .filter(|(_, l)| !matches!(l, Liveness::Stopped(_)))
                .map(|(id, _)| id.clone())
                .collect();
            self.refresh(&live);
        }
    }

    pub(super) fn owned_ids(&self, owner: &Owner, ids: &[String]) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        for id in ids {
            match self.records.get(id) {
                Some(r) if r.instance.owner == *owner => {
                    if !out.contains(id) {
                        out.push(id.clone());
                    }
                }
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidInstanceIdNotFound,
                        format!("the instance ID '{}' does not exist", id.escape_default()),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Every instance of `owner`.
    pub(super) fn all_ids(&self, owner: &Owner) -> Vec<String> {
        self.records
            .values()
            .filter(|r| r.instance.owner == *owner)
            .map(|r| r.instance.id.clone())
            .collect()
    }

    pub(super) fn describe_instances(&mut self, owner: &Owner, ids: &[String]) -> Reply {
        let wanted: Vec<String> = if ids.is_empty() {
            self.all_ids(owner)
        } else {
            self.owned_ids(owner, ids)?
        };
        self.refresh(&wanted);
        let mut by_res: BTreeMap<(i64, String), Vec<&InstanceRecord>> = BTreeMap::new();
        for id in &wanted {
            if let Some(r) = self.records.get(id) {
                by_res
                    .entry((r.launched_at, r.reservation.clone()))
                    .or_default()
                    .push(r);
            }
        }
        let reservations = by_res
            .into_iter()
            .map(|((_, res), mut recs)| {
                recs.sort_by_key(|r| r.launch_index);
                Reservation {
                    id: res,
                    owner: owner.0.clone(),
                    groups: recs[0].instance.groups.clone(),
                    instances: recs
                        .iter()
                        .map(|r| InstanceView {
                            ipv6_address: self.model.ip6_of(r.instance.mac),
                            ..self.view(r)
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::Reservations { reservations })
    }

    /// `ids`, or with `all` every instance of `owner` (ids and `all` together
    /// are refused).
    pub(super) fn terminate_instances(
        &mut self,
        owner: &Owner,
        ids: &[String],
        all: bool,
    ) -> Reply {
        if all && !ids.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidParameterCombination,
                "give instance IDs or --all, not both",
            ));
        }
        if ids.is_empty() && !all {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "no instance ID given (or --all for every instance)",
            ));
        }
        let ids = if all {
            self.all_ids(owner)
        } else {
            self.owned_ids(owner, ids)?
        };
        if ids.is_empty() {
            return Ok(Response::StateChanges {
                changes: Vec::new(),
            });
        }
        self.refresh(&ids);
        let previous: Vec<(String, Attachment)> = ids
            .iter()
            .map(|id| {
                let how = self
                    .records
                    .get(id)
                    .map_or(Attachment::Netns, |r| r.attachment.clone());
                (self.state(id).name().to_owned(), how)
            })
            .collect();
        self.edit(|m| {
            for id in &ids {
                m.remove_instance(id)?;
            }
            Ok(())
        })?;
        let mut changes = Vec::new();
        let mut jobs: Vec<TerminateJob> = Vec::new();
        let clustered = self.is_clustered();
        for (id, (previous, how)) in ids.into_iter().zip(previous) {
            // In cluster mode the owning host tears the instance down when
            // its watch delivers the deletion (this one included). Otherwise
            // the port goes now and the rest (namespace, guest) is the
            // request's job: the answer waits for it, the management thread
            // does not.
            if !clustered {
                jobs.push(self.dp.terminate_job(&id, &how));
                self.states.remove(&id);
            }
            changes.push(StateChange {
                id,
                previous,
                current: "shutting-down".into(),
            });
        }
        if clustered {
            return Ok(Response::StateChanges { changes });
        }
        let job: Job = Box::new(move || {
            let done: Vec<Result<(), ApiError>> = jobs
                .into_iter()
                .map(|j| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(j)).unwrap_or_else(|_| {
                        Err(ApiError::internal("the destroy failed unexpectedly"))
                    })
                })
                .collect();
            Box::new(done) as JobDone
        });
        self.defer(
            Slow::Terminate(PendingTerminate {
                owner: owner.clone(),
                changes,
            }),
            job,
        );
        // Not sent: `begin` answers with the job instead.
        Ok(Response::StateChanges {
            changes: Vec::new(),
        })
    }
}

/// A request between its two steps ([`Core::begin`], [`Core::finish`]).
pub(super) struct Pending {
    /// When the request arrived (its edit latency runs until the answer).
    pub(super) started: Instant,
    /// (verb, owner) of the edit, for the log line at the answer.
    pub(super) edit: Option<(&'static str, String)>,
    pub(super) what: Slow,
}

pub(super) enum Slow {
    Launch(Box<PendingLaunch>),
    Terminate(PendingTerminate),
}

/// A launch between its steps: what it reserved and will commit.
pub(super) struct PendingLaunch {
    pub(super) owner: Owner,
    pub(super) reservation: String,
    /// Instance ids in launch order.
    pub(super) order: Vec<String>,
    /// The records to commit (their instances as validated).
    pub(super) records: BTreeMap<String, InstanceRecord>,
    pub(super) image: Option<GuestImage>,
    pub(super) token: Option<ClientTokenRecord>,
    /// Tags on creation (`Tagged`), committed with the instances.
    pub(super) tags: Vec<crate::api::Tag>,
}

impl PendingLaunch {
    /// The reservation as it stands: every instance `pending` (a repeat of
    /// its ClientToken while it is in flight).
    pub(super) fn view(&self) -> Response {
        let instances: Vec<InstanceView> = self
            .order
            .iter()
            .filter_map(|id| self.records.get(id))
            .map(|r| pending_view(r, r.attachment.place(&r.instance.id)))
            .collect();
        let groups = self
            .order
            .first()
            .and_then(|id| self.records.get(id))
            .map(|r| r.instance.groups.clone())
            .unwrap_or_default();
        Response::Reservations {
            reservations: vec![Reservation {
                id: self.reservation.clone(),
                owner: self.owner.0.clone(),
                groups,
                instances,
            }],
        }
    }
}

/// A termination between its steps: its answer.
pub(super) struct PendingTerminate {
    owner: Owner,
    changes: Vec<StateChange>,
}

/// What the launches in flight hold.
#[derive(Default)]
struct Taken {
    ids: std::collections::BTreeSet<String>,
    /// Address or MAC → the instance holding it.
    ips: BTreeMap<Ipv4Addr, String>,
    macs: BTreeMap<Mac, String>,
    /// Interfaces being attached, by instance.
    attachments: Vec<(Attachment, String)>,
}

/// The lowest address of `subnet` outside `uplink_range` that neither an
/// instance of `model` nor a launch in flight holds.
fn free_ip(
    model: &Model,
    taken: &Taken,
    subnet: ipnet::Ipv4Net,
    uplink_range: ipnet::Ipv4Net,
) -> Option<Ipv4Addr> {
    if taken.ips.is_empty() {
        return model.free_ip(subnet, uplink_range);
    }
    let used: std::collections::BTreeSet<Ipv4Addr> =
        model.instances().values().map(|i| i.ip).collect();
    let first = u32::from(subnet.network()).checked_add(2)?;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|a| !uplink_range.contains(a) && !used.contains(a) && !taken.ips.contains_key(a))
}

/// Instance `r` as `pending` at `place`.
fn pending_view(r: &InstanceRecord, place: String) -> InstanceView {
    InstanceView {
        id: r.instance.id.clone(),
        ami: r.ami.clone(),
        ip: r.instance.ip,
        mac: store::format_mac(&r.instance.mac),
        state: "pending".into(),
        launch_index: r.launch_index,
        place,
        reason: None,
        ipv6_address: None,
    }
}

/// An interface or namespace name: 1 to `max` printable ASCII characters without
/// space, `/`, `@` or `:`.
pub(super) fn validate_ifname(what: &str, name: &str, max: usize) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'@' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "invalid {what} name '{}': 1 to {max} printable characters, no '/', '@' or ':'",
                name.escape_default()
            ),
        ))
    }
}

/// `ami-` followed by 1 to 17 ASCII letters/digits.
pub(super) fn validate_ami(ami: &str) -> Result<(), ApiError> {
    let ok = ami.strip_prefix("ami-").is_some_and(|r| {
        !r.is_empty() && r.len() <= 17 && r.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "invalid AMI id '{}': expected ami- and up to 17 letters or digits",
                ami.escape_default()
            ),
        ))
    }
}
