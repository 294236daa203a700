//! The EC2 Query API: a second front door to the management core, for awscli,
//! boto3 and boto 2 (`--endpoint-url http://127.0.0.1:8773`).
//!
//! Contract:
//! * One implementation of the semantics: every action becomes
//!   [`Command`]s sent through the same [`Handler`] as the socket's (the
//!   management thread: validation, store transaction, snapshot publish), on
//!   behalf of the owner of the request's access key. Another owner's groups
//!   and instances are simply not found.
//! * Every request must carry a valid AWS Signature V4 ([`sigv4`]); the key's
//!   secret comes from the core ([`Handler::lookup_access_key`], which is no
//!   command: the socket cannot ask it).
//!   Unknown key → `AuthFailure` (HTTP 401), bad signature →
//!   `SignatureDoesNotMatch`, time off by more than 15 minutes →
//!   `RequestExpired`; no Authorization → `MissingAuthenticationToken` (401).
//! * `POST /` with a form body, or `GET /?…`; `Action` and `Version` (any
//!   `YYYY-MM-DD`, e.g. botocore's 2016-11-15 and boto 2.49's 2014-10-01; the
//!   answer's namespace carries the version asked for).
//! * Served: CreateSecurityGroup, DeleteSecurityGroup, DescribeSecurityGroups
//!   (GroupName.N, GroupId.N, Filter.N for group-name, group-id, description,
//!   owner-id, ip-permission.{protocol,from-port,to-port,cidr,group-name,
//!   group-id,user-id}), AuthorizeSecurityGroupIngress,
//!   RevokeSecurityGroupIngress (flat and indexed shapes, see [`params`]),
//!   RunInstances, DescribeInstances (InstanceId.N, Filter.N for instance-id,
//!   image-id, instance-state-name, private-ip-address, group-name, group-id,
//!   reservation-id), TerminateInstances. Any other action is `InvalidAction`.
//! * RunInstances: an `ImageId` registered with `register-image` boots QEMU
//!   guests; any other launches namespace instances (as `run-instances`
//!   without `--qemu`). `MaxCount` instances are launched (at most the
//!   daemon's per-request limit, and never fewer than `MinCount`).
//!   `ClientToken` makes it idempotent. Other parameters (InstanceType,
//!   KeyName, UserData, …) are accepted and ignored.
//! * Errors: `<Response><Errors><Error><Code/><Message/></Error></Errors>
//!   <RequestID/></Response>`, HTTP 400 (401 for authentication, 500/503 for
//!   the daemon's own failures), the same EC2 codes as the CLI.

pub mod http;
pub mod params;
pub mod sigv4;
pub mod xml;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use filter::model::{Group, Ports, Proto, Rule, Source};

use crate::api::{
    ApiError, Command, ErrorCode, GroupRef, Handler, KeySecret, Reply, Request, Reservation,
    Response,
};
use http::{HttpRequest, HttpResponse};
use params::{Params, glob_match, invalid, missing};
use xml::Xml;

/// A running EC2 API listener; stops (and joins its accept thread) on drop.
pub struct Ec2Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// Errors of starting the listener (the API's own errors are [`ApiError`]s).
#[derive(Debug, thiserror::Error)]
pub enum Ec2StartError {
    #[error("bind the EC2 API on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("start the EC2 API listener")]
    Spawn(#[source] std::io::Error),
}

impl Ec2Server {
    /// Bind `addr` (port 0 picks a free one) and serve with `handler`.
    pub fn start(addr: SocketAddr, handler: Arc<dyn Handler>) -> Result<Ec2Server, Ec2StartError> {
        Ec2Server::serve(bind(addr)?, handler)
    }

    /// Serve a listener from [`bind`] with `handler`.
    pub fn serve(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
    ) -> Result<Ec2Server, Ec2StartError> {
        let local = listener.local_addr().map_err(Ec2StartError::Spawn)?;
        let stop = Arc::new(AtomicBool::new(false));
        let serve_fn: Arc<dyn Fn(HttpRequest) -> HttpResponse + Send + Sync> =
            Arc::new(move |req: HttpRequest| {
                let now = unix_now();
                std::panic::catch_unwind(AssertUnwindSafe(|| handle(&req, &*handler, now)))
                    .unwrap_or_else(|_| {
                        error_response(
                            &ApiError::internal("the request failed unexpectedly"),
                            &request_id(),
                        )
                    })
            });
        let stop2 = stop.clone();
        let accept = std::thread::Builder::new()
            .name("sgswitch-ec2-accept".into())
            .spawn(move || http::serve(listener, serve_fn, stop2))
            .map_err(Ec2StartError::Spawn)?;
        Ok(Ec2Server {
            addr: local,
            stop,
            accept: Some(accept),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting (open connections finish their current request).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(j) = self.accept.take() {
            let _ = j.join();
        }
    }
}

/// Bind the API's address (the daemon does so before it touches the data
/// plane, so a busy address fails the start early).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Ec2StartError> {
    TcpListener::bind(addr).map_err(|source| Ec2StartError::Bind { addr, source })
}

impl Drop for Ec2Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A request id in UUID form, from `/dev/urandom` (time-based if unreadable:
/// ids only correlate logs).
pub fn request_id() -> String {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = t.to_le_bytes();
    }
    let h = sigv4::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn error_response(e: &ApiError, rid: &str) -> HttpResponse {
    HttpResponse {
        status: e.code.http_status(),
        content_type: "text/xml;charset=UTF-8",
        body: xml::error(e.code, &e.message, rid).into_bytes(),
    }
}

/// Answer one HTTP request at server time `now` (Unix seconds).
///
/// Every request is logged once (request id, action, owner, result code): at
/// info, authentication failures (with the access key id they named) at warn.
pub fn handle(req: &HttpRequest, h: &dyn Handler, now: i64) -> HttpResponse {
    let rid = request_id();
    let mut owner = None;
    let r = answer(req, h, now, &rid, &mut owner);
    let action = Params::parse(&req.query, &req.body, req.header("content-type"))
        .ok()
        .and_then(|p| p.get("Action").map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned());
    let owner = owner.unwrap_or_else(|| "-".to_owned());
    match &r {
        Ok(_) => tracing::info!(
            request_id = %rid,
            action = %action,
            owner = %owner,
            result = "ok",
            "ec2 {action} by {owner}: ok (request {rid})"
        ),
        Err(e) if is_auth_failure(e.code) => {
            let key_id = req
                .header("authorization")
                .and_then(|v| sigv4::parse_authorization(v).ok())
                .map_or_else(|| "-".to_owned(), |a| a.key_id);
            tracing::warn!(
                request_id = %rid,
                action = %action,
                key_id = %key_id,
                result = e.code.as_str(),
                "ec2 auth failure: {action} with key {key_id}: {} (request {rid})",
                e.code
            );
        }
        Err(e) => tracing::info!(
            request_id = %rid,
            action = %action,
            owner = %owner,
            result = e.code.as_str(),
            "ec2 {action} by {owner}: {} (request {rid})",
            e.code
        ),
    }
    match r {
        Ok(body) => HttpResponse {
            status: 200,
            content_type: "text/xml;charset=UTF-8",
            body: body.into_bytes(),
        },
        Err(e) => error_response(&e, &rid),
    }
}

/// The error codes of a request that did not prove who sent it.
fn is_auth_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::AuthFailure
            | ErrorCode::MissingAuthenticationToken
            | ErrorCode::IncompleteSignature
            | ErrorCode::RequestExpired
            | ErrorCode::SignatureDoesNotMatch
    )
}

/// Authenticate; returns the key's owner.
fn authenticate(req: &HttpRequest, h: &dyn Handler, now: i64) -> Result<String, ApiError> {
    let auth_err = |e: sigv4::AuthError| ApiError::new(e.code(), e.to_string());
    let value = req
        .header("authorization")
        .ok_or_else(|| auth_err(sigv4::AuthError::Missing))?;
    let auth = sigv4::parse_authorization(value).map_err(auth_err)?;
    let KeySecret { owner, secret } = h.lookup_access_key(&auth.key_id)?;
    let signed = sigv4::SignedRequest {
        method: &req.method,
        path: &req.path,
        query: &req.query,
        headers: &req.headers,
        body: &req.body,
    };
    sigv4::verify(&signed, &auth, &secret, now).map_err(auth_err)?;
    Ok(owner)
}

fn answer(
    req: &HttpRequest,
    h: &dyn Handler,
    now: i64,
    rid: &str,
    who: &mut Option<String>,
) -> Result<String, ApiError> {
    if req.method != "POST" && req.method != "GET" {
        return Err(invalid(format!(
            "unsupported HTTP method '{}': use POST (or GET)",
            req.method
        )));
    }
    let owner = authenticate(req, h, now)?;
    *who = Some(owner.clone());
    let p = Params::parse(&req.query, &req.body, req.header("content-type"))?;
    let action = p.required("Action")?.to_owned();
    let ctx = Ctx {
        h,
        owner,
        ns: xml::namespace(p.get("Version")),
        rid: rid.to_owned(),
    };
    match action.as_str() {
        "CreateSecurityGroup" => ctx.create_security_group(&p),
        "DeleteSecurityGroup" => ctx.delete_security_group(&p),
        "DescribeSecurityGroups" => ctx.describe_security_groups(&p),
        "AuthorizeSecurityGroupIngress" => ctx.edit_permissions(&p, &action, true),
        "RevokeSecurityGroupIngress" => ctx.edit_permissions(&p, &action, false),
        "RunInstances" => ctx.run_instances(&p),
        "DescribeInstances" => ctx.describe_instances(&p),
        "TerminateInstances" => ctx.terminate_instances(&p),
        other => Err(ApiError::new(
            ErrorCode::InvalidAction,
            format!(
                "the action {} is not valid for this web service (sgswitch serves security groups and instances)",
                other.escape_default()
            ),
        )),
    }
}

/// One authenticated request's context.
struct Ctx<'a> {
    h: &'a dyn Handler,
    owner: String,
    ns: String,
    rid: String,
}

/// EC2 instance state codes.
fn state_code(name: &str) -> u8 {
    match name {
        "pending" => 0,
        "running" => 16,
        "shutting-down" => 32,
        "terminated" => 48,
        "stopping" => 64,
        "stopped" => 80,
        _ => 0,
    }
}

/// The protocol as EC2 writes it (`-1` for all).
fn proto_text(p: Proto) -> &'static str {
    match p {
        Proto::All => "-1",
        other => other.as_str(),
    }
}

/// (fromPort, toPort) of a rule; `None` for protocol all.
fn port_texts(ports: Ports) -> Option<(String, String)> {
    match ports {
        Ports::None => None,
        Ports::Range(lo, hi) => Some((lo.to_string(), hi.to_string())),
        Ports::Icmp { ty, code } => {
            let s = |v: Option<u8>| v.map_or("-1".to_owned(), |v| v.to_string());
            Some((s(ty), s(code)))
        }
    }
}

impl Ctx<'_> {
    fn call_as(&self, owner: &str, command: Command) -> Reply {
        self.h.handle(Request {
            owner: Some(owner.to_owned()),
            command,
            wait: false,
        })
    }

    fn call(&self, command: Command) -> Reply {
        self.call_as(&self.owner, command)
    }

    fn doc(&self, action: &str, body: impl FnOnce(&mut Xml)) -> String {
        let tag = format!("{action}Response");
        let mut x = Xml::new();
        x.open_ns(&tag, &self.ns).elem("requestId", &self.rid);
        body(&mut x);
        x.close(&tag);
        x.finish()
    }

    fn groups(&self, refs: Vec<GroupRef>) -> Result<Vec<Group>, ApiError> {
        match self.call(Command::DescribeGroups { groups: refs })? {
            Response::Groups { groups } => Ok(groups),
            other => Err(unexpected(&other)),
        }
    }

    fn create_security_group(&self, p: &Params) -> Result<String, ApiError> {
        let name = p.required("GroupName")?.to_owned();
        let description = p.required("GroupDescription")?.to_owned();
        match self.call(Command::AddGroup { name, description })? {
            Response::GroupAdded { id, .. } => Ok(self.doc("CreateSecurityGroup", |x| {
                x.elem("return", "true").elem("groupId", &id);
            })),
            other => Err(unexpected(&other)),
        }
    }

    fn delete_security_group(&self, p: &Params) -> Result<String, ApiError> {
        let group = p.target_group()?;
        self.call(Command::DeleteGroup { group })?;
        Ok(self.doc("DeleteSecurityGroup", |x| {
            x.elem("return", "true");
        }))
    }

    fn edit_permissions(&self, p: &Params, action: &str, add: bool) -> Result<String, ApiError> {
        let group = p.target_group()?;
        let permissions = params::permissions(p)?;
        if permissions.is_empty() {
            return Err(missing("IpPermissions"));
        }
        let cmd = if add {
            Command::Authorize { group, permissions }
        } else {
            Command::Revoke { group, permissions }
        };
        self.call(cmd)?;
        Ok(self.doc(action, |x| {
            x.elem("return", "true");
        }))
    }

    /// Ids of every group the rules of `groups` name as source, by
    /// (owner, name): the caller's from `groups` itself, other owners' asked
    /// for as those owners.
    fn source_ids(&self, groups: &[Group]) -> BTreeMap<(String, String), String> {
        let mut ids: BTreeMap<(String, String), String> = groups
            .iter()
            .map(|g| ((g.owner.0.clone(), g.name.clone()), g.id.clone()))
            .collect();
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in groups.iter().flat_map(|g| &g.rules) {
            if let Source::Group { owner, group } = &r.source
                && !ids.contains_key(&(owner.0.clone(), group.clone()))
            {
                wanted
                    .entry(owner.0.clone())
                    .or_default()
                    .push(group.clone());
            }
        }
        for (owner, mut names) in wanted {
            names.sort();
            names.dedup();
            let refs = names.into_iter().map(GroupRef::Name).collect();
            if let Ok(Response::Groups { groups }) =
                self.call_as(&owner, Command::DescribeGroups { groups: refs })
            {
                for g in groups {
                    ids.insert((g.owner.0.clone(), g.name.clone()), g.id.clone());
                }
            }
        }
        ids
    }

    fn describe_security_groups(&self, p: &Params) -> Result<String, ApiError> {
        let mut refs: Vec<GroupRef> = p
            .list("GroupName")
            .into_iter()
            .map(GroupRef::Name)
            .collect();
        refs.extend(p.list("GroupId").into_iter().map(GroupRef::Id));
        let filters = p.filters()?;
        for (name, _) in &filters {
            if !GROUP_FILTERS.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "the filter '{}' is invalid for DescribeSecurityGroups (supported: {})",
                    name.escape_default(),
                    GROUP_FILTERS.join(", ")
                )));
            }
        }
        let all = self.groups(refs)?;
        let ids = self.source_ids(&all);
        let groups: Vec<&Group> = all
            .iter()
            .filter(|g| {
                filters
                    .iter()
                    .all(|(name, values)| group_matches(g, name, values, &ids))
            })
            .collect();
        Ok(self.doc("DescribeSecurityGroups", |x| {
            x.open("securityGroupInfo");
            for g in groups {
                write_group(x, g, &ids);
            }
            x.close("securityGroupInfo");
        }))
    }

    /// Name → id of the caller's groups.
    fn group_ids(&self) -> BTreeMap<String, String> {
        match self.call(Command::DescribeGroups { groups: vec![] }) {
            Ok(Response::Groups { groups }) => groups.into_iter().map(|g| (g.name, g.id)).collect(),
            _ => BTreeMap::new(),
        }
    }

    fn run_instances(&self, p: &Params) -> Result<String, ApiError> {
        let ami = p.required("ImageId")?.to_owned();
        let count = |name: &str| -> Result<u32, ApiError> {
            let v = p.required(name)?;
            let n = params::int(name, v)?;
            u32::try_from(n)
                .map_err(|_| invalid(format!("invalid value '{n}' for {name}: must be 1 or more")))
        };
        let min_count = count("MinCount")?;
        let max_count = count("MaxCount")?;
        let mut groups: Vec<GroupRef> = p
            .list("SecurityGroup")
            .into_iter()
            .map(GroupRef::Name)
            .collect();
        groups.extend(p.list("SecurityGroupId").into_iter().map(GroupRef::Id));
        let cmd = Command::RunInstances {
            ami,
            count: max_count,
            min_count: Some(min_count),
            groups,
            // EC2 does not say: QEMU guests for a registered image, else
            // namespace instances.
            qemu: None,
            client_token: p.get("ClientToken").map(str::to_owned),
        };
        let reservations = match self.call(cmd)? {
            Response::Reservations { reservations } => reservations,
            other => return Err(unexpected(&other)),
        };
        let ids = self.group_ids();
        let res = reservations
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal("RunInstances returned no reservation"))?;
        Ok(self.doc("RunInstances", |x| {
            write_reservation_fields(x, &res, &ids);
        }))
    }

    fn describe_instances(&self, p: &Params) -> Result<String, ApiError> {
        let filters = p.filters()?;
        for (name, _) in &filters {
            if !INSTANCE_FILTERS.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "the filter '{}' is invalid for DescribeInstances (supported: {})",
                    name.escape_default(),
                    INSTANCE_FILTERS.join(", ")
                )));
            }
        }
        let ids = p.list("InstanceId");
        let reservations = match self.call(Command::DescribeInstances { ids })? {
            Response::Reservations { reservations } => reservations,
            other => return Err(unexpected(&other)),
        };
        let gids = self.group_ids();
        let mut kept = Vec::new();
        for mut r in reservations {
            r.instances.retain(|i| {
                filters.iter().all(|(name, values)| {
                    let fields: Vec<String> = match name.as_str() {
                        "instance-id" => vec![i.id.clone()],
                        "image-id" => vec![i.ami.clone()],
                        "instance-state-name" => vec![i.state.clone()],
                        "private-ip-address" => vec![i.ip.to_string()],
                        "reservation-id" => vec![r.id.clone()],
                        "group-name" | "instance.group-name" => r.groups.clone(),
                        "group-id" | "instance.group-id" => r
                            .groups
                            .iter()
                            .filter_map(|g| gids.get(g).cloned())
                            .collect(),
                        _ => vec![],
                    };
                    values
                        .iter()
                        .any(|v| fields.iter().any(|f| glob_match(v, f)))
                })
            });
            if !r.instances.is_empty() {
                kept.push(r);
            }
        }
        Ok(self.doc("DescribeInstances", |x| {
            x.open("reservationSet");
            for r in &kept {
                x.open("item");
                write_reservation_fields(x, r, &gids);
                x.close("item");
            }
            x.close("reservationSet");
        }))
    }

    fn terminate_instances(&self, p: &Params) -> Result<String, ApiError> {
        let ids = p.list("InstanceId");
        if ids.is_empty() {
            return Err(missing("InstanceId.1"));
        }
        let changes = match self.call(Command::TerminateInstances { ids, all: false })? {
            Response::StateChanges { changes } => changes,
            other => return Err(unexpected(&other)),
        };
        Ok(self.doc("TerminateInstances", |x| {
            x.open("instancesSet");
            for c in &changes {
                x.open("item").elem("instanceId", &c.id);
                for (tag, state) in [("currentState", &c.current), ("previousState", &c.previous)] {
                    x.open(tag)
                        .elem("code", &state_code(state).to_string())
                        .elem("name", state)
                        .close(tag);
                }
                x.close("item");
            }
            x.close("instancesSet");
        }))
    }
}

/// DescribeSecurityGroups filters served.
pub const GROUP_FILTERS: &[&str] = &[
    "group-name",
    "group-id",
    "description",
    "owner-id",
    "ip-permission.protocol",
    "ip-permission.from-port",
    "ip-permission.to-port",
    "ip-permission.cidr",
    "ip-permission.group-name",
    "ip-permission.group-id",
    "ip-permission.user-id",
];

/// DescribeInstances filters served.
pub const INSTANCE_FILTERS: &[&str] = &[
    "instance-id",
    "image-id",
    "instance-state-name",
    "private-ip-address",
    "reservation-id",
    "group-name",
    "group-id",
    "instance.group-name",
    "instance.group-id",
];

fn unexpected(r: &Response) -> ApiError {
    ApiError::internal(format!("unexpected answer from the core: {r:?}"))
}

/// The values of one rule for an `ip-permission.*` filter.
fn rule_fields(r: &Rule, field: &str, ids: &BTreeMap<(String, String), String>) -> Vec<String> {
    let ports = port_texts(r.ports);
    match (field, &r.source) {
        ("protocol", _) => vec![proto_text(r.proto).to_owned()],
        ("from-port", _) => ports.map(|p| p.0).into_iter().collect(),
        ("to-port", _) => ports.map(|p| p.1).into_iter().collect(),
        ("cidr", Source::Cidr(net)) => vec![net.to_string()],
        ("group-name", Source::Group { group, .. }) => vec![group.clone()],
        ("user-id", Source::Group { owner, .. }) => vec![owner.0.clone()],
        ("group-id", Source::Group { owner, group }) => ids
            .get(&(owner.0.clone(), group.clone()))
            .cloned()
            .into_iter()
            .collect(),
        _ => vec![],
    }
}

/// Whether `g` passes filter `name` (any of `values`, with wildcards).
fn group_matches(
    g: &Group,
    name: &str,
    values: &[String],
    ids: &BTreeMap<(String, String), String>,
) -> bool {
    let fields: Vec<String> = match name {
        "group-name" => vec![g.name.clone()],
        "group-id" => vec![g.id.clone()],
        "description" => vec![g.description.clone()],
        "owner-id" => vec![g.owner.0.clone()],
        other => match other.strip_prefix("ip-permission.") {
            Some(field) => g
                .rules
                .iter()
                .flat_map(|r| rule_fields(r, field, ids))
                .collect(),
            None => vec![],
        },
    };
    values
        .iter()
        .any(|v| fields.iter().any(|f| glob_match(v, f)))
}

/// One `securityGroupInfo/item`. Rules with the same protocol and ports are
/// one `ipPermissions/item` with all their sources, in first-seen order.
fn write_group(x: &mut Xml, g: &Group, ids: &BTreeMap<(String, String), String>) {
    x.open("item")
        .elem("ownerId", &g.owner.0)
        .elem("groupId", &g.id)
        .elem("groupName", &g.name)
        .elem("groupDescription", &g.description);
    let mut perms: Vec<((Proto, Ports), Vec<&Source>)> = Vec::new();
    for r in &g.rules {
        match perms.iter_mut().find(|(k, _)| *k == (r.proto, r.ports)) {
            Some((_, sources)) => sources.push(&r.source),
            None => perms.push(((r.proto, r.ports), vec![&r.source])),
        }
    }
    x.open("ipPermissions");
    for ((proto, ports), sources) in &perms {
        x.open("item").elem("ipProtocol", proto_text(*proto));
        if let Some((from, to)) = port_texts(*ports) {
            x.elem("fromPort", &from).elem("toPort", &to);
        }
        x.open("groups");
        for s in sources {
            if let Source::Group { owner, group } = s {
                x.open("item").elem("userId", &owner.0);
                if let Some(id) = ids.get(&(owner.0.clone(), group.clone())) {
                    x.elem("groupId", id);
                }
                x.elem("groupName", group).close("item");
            }
        }
        x.close("groups").open("ipRanges");
        for s in sources {
            if let Source::Cidr(net) = s {
                x.open("item")
                    .elem("cidrIp", &net.to_string())
                    .close("item");
            }
        }
        x.close("ipRanges")
            .empty("ipv6Ranges")
            .empty("prefixListIds")
            .close("item");
    }
    x.close("ipPermissions");
    // Egress is always allowed (DESIGN §2): shown as EC2's default egress rule.
    x.open("ipPermissionsEgress")
        .open("item")
        .elem("ipProtocol", "-1")
        .empty("groups")
        .open("ipRanges")
        .open("item")
        .elem("cidrIp", "0.0.0.0/0")
        .close("item")
        .close("ipRanges")
        .empty("ipv6Ranges")
        .empty("prefixListIds")
        .close("item")
        .close("ipPermissionsEgress");
    x.close("item");
}

fn write_group_set(x: &mut Xml, names: &[String], ids: &BTreeMap<String, String>) {
    x.open("groupSet");
    for n in names {
        x.open("item");
        if let Some(id) = ids.get(n) {
            x.elem("groupId", id);
        }
        x.elem("groupName", n).close("item");
    }
    x.close("groupSet");
}

/// The fields of a reservation (RunInstancesResponse's own, or a
/// `reservationSet/item`'s).
fn write_reservation_fields(x: &mut Xml, r: &Reservation, ids: &BTreeMap<String, String>) {
    x.elem("reservationId", &r.id).elem("ownerId", &r.owner);
    write_group_set(x, &r.groups, ids);
    x.open("instancesSet");
    for i in &r.instances {
        x.open("item")
            .elem("instanceId", &i.id)
            .elem("imageId", &i.ami)
            .open("instanceState")
            .elem("code", &state_code(&i.state).to_string())
            .elem("name", &i.state)
            .close("instanceState")
            .elem("privateDnsName", "")
            .elem("dnsName", "")
            .elem("amiLaunchIndex", &i.launch_index.to_string())
            .elem("privateIpAddress", &i.ip.to_string());
        if let Some(reason) = &i.reason {
            let code = if i.state == "pending" {
                "Server.Pending"
            } else {
                "Server.InternalError"
            };
            x.open("stateReason")
                .elem("code", code)
                .elem("message", reason)
                .close("stateReason");
        }
        write_group_set(x, &r.groups, ids);
        x.open("networkInterfaceSet")
            .open("item")
            .elem("macAddress", &i.mac)
            .elem("privateIpAddress", &i.ip.to_string())
            .close("item")
            .close("networkInterfaceSet")
            .close("item");
    }
    x.close("instancesSet");
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
