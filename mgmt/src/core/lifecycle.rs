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

    /// Launch one reservation: every item is (address or next free, MAC or the
    /// id's, attachment). Validates all on a clone of the model, creates them in
    /// the data plane, commits; any failure undoes what was created.
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
        // Stage the instances in the model: an error return from here on
        // leaves uncommitted changes that `handle` undoes.
        let next = &mut self.model;
        for (index, (ip, mac, how)) in items.into_iter().enumerate() {
            let id = loop {
                let id = random_id("i-");
                if !next.instances().contains_key(&id) {
                    break id;
                }
            };
            let ip = match ip {
                Some(ip) => ip,
                None => next
                    .free_ip(self.cfg.subnet, self.cfg.uplink_range)
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InsufficientInstanceCapacity,
                            format!(
                                "no free address left in subnet {} for {count} instance(s)",
                                self.cfg.subnet
                            ),
                        )
                    })?,
            };
            let inst = Instance {
                id: id.clone(),
                owner: owner.clone(),
                mac: mac.unwrap_or_else(|| instance_mac(&id)),
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
        // ...any other run creates them for real.
        let prefix = self.cfg.subnet.prefix_len();
        let mut launched: Vec<(String, Attachment)> = Vec::new();
        for id in &order {
            let rec = new_records
                .get_mut(id)
                .ok_or_else(|| ApiError::internal("launch record lost"))?;
            let how = rec.attachment.clone();
            let boots = image.filter(|_| matches!(how, Attachment::Qemu { .. }));
            match self.dp.launch(&rec.instance, prefix, &how, boots) {
                Ok(made) => {
                    rec.attachment = made.clone();
                    launched.push((id.clone(), made));
                }
                Err(e) => {
                    self.undo_launch(&launched);
                    return Err(e);
                }
            }
        }
        // A ClientToken is recorded in the launch's own transaction: either
        // both are stored or neither.
        let token = token.map(|t| ClientTokenRecord {
            reservation: reservation.clone(),
            // As launched, for a repeat after they are gone.
            instances: order
                .iter()
                .filter_map(|id| new_records.get(id))
                .map(|r| InstanceView {
                    id: r.instance.id.clone(),
                    ami: r.ami.clone(),
                    ip: r.instance.ip,
                    mac: store::format_mac(&r.instance.mac),
                    state: "pending".into(),
                    launch_index: r.launch_index,
                    place: r.attachment.place(&r.instance.id),
                    reason: None,
                    ipv6_address: None,
                })
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
        let clustered = self.is_clustered();
        for (id, (previous, how)) in ids.into_iter().zip(previous) {
            // In cluster mode the owning host tears the instance down when
            // its watch delivers the deletion (this one included).
            if !clustered {
                match self.dp.terminate(&id, &how) {
                    Ok(()) => tracing::info!(
                        instance = %id,
                        owner = %owner.0,
                        previous = %previous,
                        "terminated instance {id} (was {previous})"
                    ),
                    Err(e) => tracing::warn!(instance = %id, "terminating instance {id}: {e}"),
                }
                self.states.remove(&id);
            }
            changes.push(StateChange {
                id,
                previous,
                current: "shutting-down".into(),
            });
        }
        Ok(Response::StateChanges { changes })
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
