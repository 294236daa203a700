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
//!   `SignatureDoesNotMatch` (403), time off by more than 15 minutes →
//!   `RequestExpired` (400); no Authorization → `MissingAuthenticationToken`
//!   (403): the statuses AWS sends.
//! * `POST /` with a form body, or `GET /?…`; `Action` and `Version` (any
//!   `YYYY-MM-DD`, e.g. botocore's 2016-11-15 and boto 2.49's 2014-10-01; the
//!   answer's namespace carries the version asked for).
//! * Served: CreateSecurityGroup (`TagSpecification`, answers the ARN),
//!   DeleteSecurityGroup, DescribeSecurityGroups (GroupName.N, GroupId.N,
//!   Filter.N for group-name, group-id, description, owner-id,
//!   [egress.]ip-permission.{protocol,from-port,to-port,cidr (both
//!   families),ipv6-cidr,group-name,group-id,user-id}, tag:KEY, tag-key,
//!   tag-value; MaxResults/NextToken),
//!   AuthorizeSecurityGroupIngress, RevokeSecurityGroupIngress (flat and
//!   indexed shapes with descriptions, see [`params`]; revoke also by
//!   SecurityGroupRuleId.N), AuthorizeSecurityGroupEgress,
//!   RevokeSecurityGroupEgress (the same shapes, GroupId or GroupName; the
//!   permissions' sources are destinations; egress rules have `sgr-` ids
//!   and descriptions as ingress rules do: authorize answers the new rules,
//!   revoke also by SecurityGroupRuleId.N, an id of the other direction is
//!   `InvalidSecurityGroupRuleId.NotFound`), DescribeSecurityGroups'
//!   `ipPermissionsEgress` (the group's egress rules; filters
//!   `egress.ip-permission.*`), DescribeSecurityGroupRules (ingress and
//!   egress rules, `isEgress`), ModifySecurityGroupRules (a rule keeps its
//!   id and direction), UpdateSecurityGroupRuleDescriptionsIngress and
//!   …Egress,
//!   CreateTags, DeleteTags, DescribeTags, RunInstances
//!   (`TagSpecification`), DescribeInstances (InstanceId.N, Filter.N for
//!   instance-id, image-id, instance-state-name, private-ip-address,
//!   group-name, group-id, reservation-id, tags; MaxResults/NextToken),
//!   TerminateInstances; STS GetCallerIdentity and IAM GetUser (the key's
//!   account). Any other action is `InvalidAction`.
//! * `DryRun=true` on every action: the command goes to the core as
//!   [`Command::DryRun`] (validated and staged, then undone):
//!   `DryRunOperation` (412) or `UnauthorizedOperation` (403); parameter
//!   errors found here come first.
//! * Errors in AWS's order: an unknown target group before a bad or missing
//!   permission; a `CidrIp` must have a prefix length; TCP/UDP need both
//!   ports; an empty group description is missing.
//! * RunInstances: an `ImageId` registered with `register-image` boots QEMU
//!   guests; any other launches namespace instances (as `run-instances`
//!   without `--qemu`). `MaxCount` instances are launched (at most the
//!   daemon's per-request limit, and never fewer than `MinCount`).
//!   `ClientToken` makes it idempotent (a repeat answers the first launch's
//!   instances, `terminated` once gone). Other parameters (InstanceType,
//!   KeyName, UserData, …) are accepted and ignored.
//! * Errors: `<Response><Errors><Error><Code/><Message/></Error></Errors>
//!   <RequestID/></Response>`, HTTP status from [`ErrorCode::http_status`],
//!   the same EC2 codes as the CLI.

pub mod http;
pub mod params;
pub mod sigv4;
pub mod xml;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use filter::model::{Group, Ports, Proto, Rule, Source};

use crate::api::{
    ApiError, Command, ErrorCode, GroupRef, Handler, InstanceView, KeySecret, Reply, Request,
    Reservation, Response, RuleInfo, TagKey,
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

/// A request id in UUID form, from the kernel's random source
/// (`getrandom`); should that ever fail, the time (ids only correlate logs).
pub fn request_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        b = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .to_le_bytes();
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

/// Authenticate; returns the key's owner and id.
fn authenticate(
    req: &HttpRequest,
    h: &dyn Handler,
    now: i64,
) -> Result<(String, String, String), ApiError> {
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
    Ok((owner, auth.key_id, auth.region))
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
    let (owner, key_id, region) = authenticate(req, h, now)?;
    *who = Some(owner.clone());
    let p = Params::parse(&req.query, &req.body, req.header("content-type"))?;
    let action = p.required("Action")?.to_owned();
    // "Who am I", asked on the same endpoint (signed for sts, or iam).
    match action.as_str() {
        "GetCallerIdentity" => return Ok(caller_identity(&owner, &key_id, rid)),
        "GetUser" => return get_user(&p, &owner, rid),
        _ => {}
    }
    let dry_run = match p.get("DryRun") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(invalid(format!(
                "invalid value '{}' for DryRun: true or false",
                v.escape_default()
            )));
        }
    };
    let ctx = Ctx {
        h,
        owner,
        ns: xml::namespace(p.get("Version")),
        rid: rid.to_owned(),
        dry_run,
        region,
    };
    match action.as_str() {
        "CreateSecurityGroup" => ctx.create_security_group(&p),
        "DeleteSecurityGroup" => ctx.delete_security_group(&p),
        "DescribeSecurityGroups" => ctx.describe_security_groups(&p),
        "AuthorizeSecurityGroupIngress" => ctx.edit_permissions(&p, &action, true, false),
        "RevokeSecurityGroupIngress" => ctx.edit_permissions(&p, &action, false, false),
        "AuthorizeSecurityGroupEgress" => ctx.edit_permissions(&p, &action, true, true),
        "RevokeSecurityGroupEgress" => ctx.edit_permissions(&p, &action, false, true),
        "RunInstances" => ctx.run_instances(&p),
        "DescribeInstances" => ctx.describe_instances(&p),
        "TerminateInstances" => ctx.terminate_instances(&p),
        "CreateTags" => ctx.create_tags(&p),
        "DeleteTags" => ctx.delete_tags(&p),
        "DescribeTags" => ctx.describe_tags(&p),
        "DescribeSecurityGroupRules" => ctx.describe_security_group_rules(&p),
        "ModifySecurityGroupRules" => ctx.modify_security_group_rules(&p),
        "UpdateSecurityGroupRuleDescriptionsIngress"
        | "UpdateSecurityGroupRuleDescriptionsEgress" => ctx.update_rule_descriptions(&p, &action),
        other => Err(ApiError::new(
            ErrorCode::InvalidAction,
            format!(
                "the action {} is not valid for this web service (sgswitch serves security groups and instances)",
                other.escape_default()
            ),
        )),
    }
}

/// The ARN a key acts as: its owner's account (sgswitch keys are an
/// account's own keys, as AWS's root keys are).
fn caller_arn(owner: &str) -> String {
    format!("arn:aws:iam::{owner}:root")
}

/// STS `GetCallerIdentity` (version 2011-06-15): the key's account, ARN and
/// user id (an account's own keys: the account id, as AWS answers for root).
fn caller_identity(owner: &str, key_id: &str, rid: &str) -> String {
    let tag = "GetCallerIdentityResponse";
    let mut x = Xml::new();
    x.open_ns(tag, "https://sts.amazonaws.com/doc/2011-06-15/")
        .open("GetCallerIdentityResult")
        .elem("Arn", &caller_arn(owner))
        .elem("UserId", owner)
        .elem("Account", owner)
        .close("GetCallerIdentityResult")
        .open("ResponseMetadata")
        .elem("RequestId", rid)
        .close("ResponseMetadata")
        .close(tag);
    tracing::debug!(key = %key_id, owner, "GetCallerIdentity");
    x.finish()
}

/// IAM `GetUser` without `UserName` (the older "who am I"): the key's
/// account as its root user.
fn get_user(p: &Params, owner: &str, rid: &str) -> Result<String, ApiError> {
    if let Some(name) = p.get("UserName") {
        return Err(invalid(format!(
            "GetUser of user '{}': sgswitch has no IAM users (its keys act as their account); ask without UserName",
            name.escape_default()
        )));
    }
    let tag = "GetUserResponse";
    let mut x = Xml::new();
    x.open_ns(tag, "https://iam.amazonaws.com/doc/2010-05-08/")
        .open("GetUserResult")
        .open("User")
        .elem("Path", "/")
        .elem("UserId", owner)
        .elem("Arn", &caller_arn(owner))
        .close("User")
        .close("GetUserResult")
        .open("ResponseMetadata")
        .elem("RequestId", rid)
        .close("ResponseMetadata")
        .close(tag);
    Ok(x.finish())
}

/// One authenticated request's context.
struct Ctx<'a> {
    h: &'a dyn Handler,
    owner: String,
    ns: String,
    rid: String,
    /// `DryRun=true`: the action's command goes to the core as
    /// [`Command::DryRun`] (parameter errors found here come first, as EC2
    /// checks them before the dry run).
    dry_run: bool,
    /// The region of the request's signing scope (for ARNs).
    region: String,
}

/// What describe answers show besides the model: tags by resource id, rule
/// ids and descriptions by (group id, rule), the region of ARNs.
#[derive(Default)]
struct Extra {
    tags: BTreeMap<String, Vec<(String, String)>>,
    /// (group id, egress, rule) → (rule id, description).
    rules: BTreeMap<(String, bool, Rule), (String, String)>,
    region: String,
}

impl Extra {
    fn tags_of(&self, id: &str) -> &[(String, String)] {
        self.tags.get(id).map_or(&[], Vec::as_slice)
    }

    fn description(&self, group_id: &str, egress: bool, r: &Rule) -> &str {
        self.rules
            .get(&(group_id.to_owned(), egress, r.clone()))
            .map_or("", |(_, d)| d.as_str())
    }
}

fn write_tag_set(x: &mut Xml, tags: &[(String, String)]) {
    if tags.is_empty() {
        return;
    }
    x.open("tagSet");
    for (k, v) in tags {
        x.open("item").elem("key", k).elem("value", v).close("item");
    }
    x.close("tagSet");
}

/// The values of tag filter `name` (`tag-key`, `tag-value`, `tag:KEY`)
/// among `tags`; `None` for any other filter.
fn tag_filter_fields(name: &str, tags: &[(String, String)]) -> Option<Vec<String>> {
    match name {
        "tag-key" => Some(tags.iter().map(|(k, _)| k.clone()).collect()),
        "tag-value" => Some(tags.iter().map(|(_, v)| v.clone()).collect()),
        other => other.strip_prefix("tag:").map(|key| {
            tags.iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .collect()
        }),
    }
}

/// Whether `name` is a tag filter.
fn is_tag_filter(name: &str) -> bool {
    name == "tag-key" || name == "tag-value" || name.starts_with("tag:")
}

/// `MaxResults` and the start of `NextToken` of a paginated describe
/// (`None`: no pagination). EC2: 5 to 1000; not with explicit ids/names.
fn page_params(
    p: &Params,
    explicit: bool,
    explicit_name: &str,
) -> Result<Option<(usize, Option<String>)>, ApiError> {
    let token = p
        .get("NextToken")
        .map(|t| {
            std::str::from_utf8(&hex_decode(t).ok_or_else(|| bad_token(t))?)
                .map(str::to_owned)
                .map_err(|_| bad_token(t))
        })
        .transpose()?;
    let Some(max) = p.get("MaxResults") else {
        return Ok(token.map(|t| (1000, Some(t))));
    };
    if explicit {
        return Err(ApiError::new(
            ErrorCode::InvalidParameterCombination,
            format!("the parameter {explicit_name} cannot be used with the parameter MaxResults"),
        ));
    }
    let n = params::int("MaxResults", max)?;
    if !(5..=1000).contains(&n) {
        return Err(invalid(format!(
            "invalid value '{n}' for MaxResults: 5 to 1000"
        )));
    }
    Ok(Some((n as usize, token)))
}

fn bad_token(t: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidPaginationToken,
        format!(
            "invalid NextToken '{}': not one this endpoint handed out",
            t.chars().take(64).collect::<String>().escape_default()
        ),
    )
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 512 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The page of `items` (sorted by `key`) from the token's key on, at most
/// `max`, and the next page's token.
fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    pg: Option<(usize, Option<String>)>,
) -> (Vec<T>, Option<String>) {
    let Some((max, from)) = pg else {
        return (items, None);
    };
    let mut rest: Vec<T> = match &from {
        Some(f) => items.into_iter().filter(|i| key(i) >= f.as_str()).collect(),
        None => items,
    };
    if rest.len() <= max {
        return (rest, None);
    }
    let next = sigv4::hex(key(&rest[max]).as_bytes());
    rest.truncate(max);
    (rest, Some(next))
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

/// The protocol as EC2 writes it (`-1` for all, `58` for ICMPv6).
fn proto_text(p: Proto) -> &'static str {
    match p {
        Proto::All => "-1",
        Proto::Icmpv6 => "58",
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

    /// The action's command, as a dry run when asked for.
    fn call(&self, command: Command) -> Reply {
        if self.dry_run {
            let command = Box::new(command);
            return self.call_as(&self.owner, Command::DryRun { command });
        }
        self.call_as(&self.owner, command)
    }

    /// The request's permissions for an edit of `group`. EC2 reports an
    /// unknown group before anything wrong with the permissions (the core
    /// checks the group, then that there are any): when they do not parse,
    /// the group is looked up first.
    fn permissions_of(
        &self,
        p: &Params,
        group: &GroupRef,
    ) -> Result<Vec<crate::api::Permission>, ApiError> {
        params::permissions(p).or_else(|e| {
            self.lookup(Command::DescribeGroups {
                groups: vec![group.clone()],
            })?;
            Err(e)
        })
    }

    /// A lookup besides the action's command (never a dry run).
    fn lookup(&self, command: Command) -> Reply {
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
        // An empty value is a missing one (as EC2 answers).
        let nonempty = |n: &str| match p.get(n) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(missing(n)),
        };
        let name = nonempty("GroupName")?;
        let description = nonempty("GroupDescription")?;
        let tags = params::tag_specs(p, "security-group")?;
        let mut cmd = Command::AddGroup { name, description };
        if !tags.is_empty() {
            cmd = Command::Tagged {
                command: Box::new(cmd),
                tags: tags.clone(),
            };
        }
        match self.call(cmd)? {
            Response::GroupAdded { id, .. } => Ok(self.doc("CreateSecurityGroup", |x| {
                x.elem("return", "true")
                    .elem("groupId", &id)
                    .elem("securityGroupArn", &self.group_arn(&id));
                let pairs: Vec<(String, String)> =
                    tags.into_iter().map(|t| (t.key, t.value)).collect();
                write_tag_set(x, &pairs);
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

    /// Authorize (`add`) or revoke the ingress or `egress` rules of the
    /// request's permissions (both shapes); a revoke also by rule id.
    fn edit_permissions(
        &self,
        p: &Params,
        action: &str,
        add: bool,
        egress: bool,
    ) -> Result<String, ApiError> {
        let group = p.target_group()?;
        let rule_ids = p.list("SecurityGroupRuleId");
        if !add && !rule_ids.is_empty() {
            self.call(Command::RevokeRuleIds {
                group,
                rule_ids,
                egress,
            })?;
            return Ok(self.doc(action, |x| {
                x.elem("return", "true");
            }));
        }
        let permissions = self.permissions_of(p, &group)?;
        let cmd = if add {
            Command::Authorize {
                group,
                permissions,
                egress,
            }
        } else {
            Command::Revoke {
                group,
                permissions,
                egress,
            }
        };
        let added = match self.call(cmd)? {
            Response::Permissions { group, rules, .. } if add => Some((group, rules)),
            _ => None,
        };
        // Authorize answers the new rules with their ids (as EC2 does).
        let rules = match added {
            Some((name, rules)) => match self.lookup(Command::DescribeRules {
                groups: vec![GroupRef::Name(name)],
                rule_ids: vec![],
            }) {
                Ok(Response::Rules { rules: all }) => all
                    .into_iter()
                    .filter(|r| {
                        r.egress == egress
                            && rules.iter().any(|n| n.normalized().as_ref() == Ok(&r.rule))
                    })
                    .collect(),
                _ => vec![],
            },
            None => vec![],
        };
        Ok(self.doc(action, |x| {
            x.elem("return", "true");
            if add {
                x.open("securityGroupRuleSet");
                for r in &rules {
                    write_rule_item(x, r, &self.region);
                }
                x.close("securityGroupRuleSet");
            }
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
        for r in groups.iter().flat_map(|g| g.rules.iter().chain(&g.egress)) {
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
            if !GROUP_FILTERS.contains(&name.as_str()) && !is_tag_filter(name) {
                return Err(invalid(format!(
                    "the filter '{}' is invalid for DescribeSecurityGroups (supported: {}, tag-key, tag-value, tag:KEY)",
                    name.escape_default(),
                    GROUP_FILTERS.join(", ")
                )));
            }
        }
        let explicit = if p.any_with_prefix("GroupName.") {
            "GroupName"
        } else {
            "GroupId"
        };
        let pg = page_params(p, !refs.is_empty(), explicit)?;
        let all = self.groups(refs)?;
        let ids = self.source_ids(&all);
        let extra = self.extra();
        let groups: Vec<&Group> = all
            .iter()
            .filter(|g| {
                filters
                    .iter()
                    .all(|(name, values)| group_matches(g, name, values, &ids, &extra))
            })
            .collect();
        let (groups, next) = page(groups, |g| g.name.as_str(), pg);
        Ok(self.doc("DescribeSecurityGroups", |x| {
            x.open("securityGroupInfo");
            for g in groups {
                write_group(x, g, &ids, &extra);
            }
            x.close("securityGroupInfo");
            if let Some(t) = &next {
                x.elem("nextToken", t);
            }
        }))
    }

    /// Tags and rule facts of the caller's resources (describe answers).
    fn extra(&self) -> Extra {
        let mut e = Extra {
            region: self.region.clone(),
            ..Extra::default()
        };
        if let Ok(Response::Tags { tags }) = self.lookup(Command::DescribeTags) {
            for t in tags {
                e.tags
                    .entry(t.resource_id)
                    .or_default()
                    .push((t.key, t.value));
            }
        }
        if let Ok(Response::Rules { rules }) = self.lookup(Command::DescribeRules {
            groups: vec![],
            rule_ids: vec![],
        }) {
            for r in rules {
                e.rules
                    .insert((r.group_id, r.egress, r.rule), (r.rule_id, r.description));
            }
        }
        e
    }

    /// The group's ARN.
    fn group_arn(&self, id: &str) -> String {
        group_arn(&self.region, &self.owner, id)
    }

    /// Name → id of the caller's groups.
    fn group_ids(&self) -> BTreeMap<String, String> {
        match self.lookup(Command::DescribeGroups { groups: vec![] }) {
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
        let tags = params::tag_specs(p, "instance")?;
        let mut cmd = Command::RunInstances {
            ami,
            count: max_count,
            min_count: Some(min_count),
            groups,
            // EC2 does not say: QEMU guests for a registered image, else
            // namespace instances.
            qemu: None,
            client_token: p.get("ClientToken").map(str::to_owned),
        };
        if !tags.is_empty() {
            cmd = Command::Tagged {
                command: Box::new(cmd),
                tags,
            };
        }
        let reservations = match self.call(cmd)? {
            Response::Reservations { reservations } => reservations,
            other => return Err(unexpected(&other)),
        };
        let ids = self.group_ids();
        let extra = self.extra();
        let res = reservations
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal("RunInstances returned no reservation"))?;
        Ok(self.doc("RunInstances", |x| {
            write_reservation_fields(x, &res, &ids, &extra);
        }))
    }

    fn describe_instances(&self, p: &Params) -> Result<String, ApiError> {
        let filters = p.filters()?;
        for (name, _) in &filters {
            if !INSTANCE_FILTERS.contains(&name.as_str()) && !is_tag_filter(name) {
                return Err(invalid(format!(
                    "the filter '{}' is invalid for DescribeInstances (supported: {}, tag-key, tag-value, tag:KEY)",
                    name.escape_default(),
                    INSTANCE_FILTERS.join(", ")
                )));
            }
        }
        let ids = p.list("InstanceId");
        let pg = page_params(p, !ids.is_empty(), "InstanceId")?;
        let reservations = match self.call(Command::DescribeInstances { ids })? {
            Response::Reservations { reservations } => reservations,
            other => return Err(unexpected(&other)),
        };
        let gids = self.group_ids();
        let extra = self.extra();
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
                        other => tag_filter_fields(other, extra.tags_of(&i.id)).unwrap_or_default(),
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
        // Pages of instances by id; each page's instances in their reservations.
        let mut all: Vec<(usize, InstanceView)> = kept
            .iter_mut()
            .enumerate()
            .flat_map(|(n, r)| {
                std::mem::take(&mut r.instances)
                    .into_iter()
                    .map(move |i| (n, i))
            })
            .collect();
        all.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        let (shown, next) = page(all, |(_, i)| i.id.as_str(), pg);
        for (n, i) in shown {
            kept[n].instances.push(i);
        }
        for r in &mut kept {
            r.instances.sort_by_key(|i| i.launch_index);
        }
        kept.retain(|r| !r.instances.is_empty());
        Ok(self.doc("DescribeInstances", |x| {
            x.open("reservationSet");
            for r in &kept {
                x.open("item");
                write_reservation_fields(x, r, &gids, &extra);
                x.close("item");
            }
            x.close("reservationSet");
            if let Some(t) = &next {
                x.elem("nextToken", t);
            }
        }))
    }

    fn create_tags(&self, p: &Params) -> Result<String, ApiError> {
        let resources = p.list("ResourceId");
        let tags = params::tags(p, "Tag")?;
        self.call(Command::CreateTags { resources, tags })?;
        Ok(self.doc("CreateTags", |x| {
            x.elem("return", "true");
        }))
    }

    fn delete_tags(&self, p: &Params) -> Result<String, ApiError> {
        let resources = p.list("ResourceId");
        let tags = p
            .indices("Tag")
            .into_iter()
            .map(|m| {
                Ok(TagKey {
                    key: p.required(&format!("Tag.{m}.Key"))?.to_owned(),
                    value: p.get(&format!("Tag.{m}.Value")).map(str::to_owned),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.call(Command::DeleteTags { resources, tags })?;
        Ok(self.doc("DeleteTags", |x| {
            x.elem("return", "true");
        }))
    }

    fn describe_tags(&self, p: &Params) -> Result<String, ApiError> {
        let filters = p.filters()?;
        for (name, _) in &filters {
            if !["resource-id", "resource-type", "key", "value"].contains(&name.as_str()) {
                return Err(invalid(format!(
                    "the filter '{}' is invalid for DescribeTags (supported: resource-id, resource-type, key, value)",
                    name.escape_default()
                )));
            }
        }
        let tags = match self.call(Command::DescribeTags)? {
            Response::Tags { tags } => tags,
            other => return Err(unexpected(&other)),
        };
        let kind = |id: &str| {
            if id.starts_with("sg-") {
                "security-group"
            } else {
                "instance"
            }
        };
        let tags: Vec<_> = tags
            .into_iter()
            .filter(|t| {
                filters.iter().all(|(name, values)| {
                    let field = match name.as_str() {
                        "resource-id" => t.resource_id.as_str(),
                        "resource-type" => kind(&t.resource_id),
                        "key" => t.key.as_str(),
                        _ => t.value.as_str(),
                    };
                    values.iter().any(|v| glob_match(v, field))
                })
            })
            .collect();
        Ok(self.doc("DescribeTags", |x| {
            x.open("tagSet");
            for t in &tags {
                x.open("item")
                    .elem("resourceId", &t.resource_id)
                    .elem("resourceType", kind(&t.resource_id))
                    .elem("key", &t.key)
                    .elem("value", &t.value)
                    .close("item");
            }
            x.close("tagSet");
        }))
    }

    fn describe_security_group_rules(&self, p: &Params) -> Result<String, ApiError> {
        let mut rule_ids = p.list("SecurityGroupRuleId");
        let mut group_ids = Vec::new();
        for (name, values) in p.filters()? {
            match name.as_str() {
                "group-id" => group_ids.extend(values),
                "security-group-rule-id" => rule_ids.extend(values),
                other => {
                    return Err(invalid(format!(
                        "the filter '{}' is invalid for DescribeSecurityGroupRules (supported: group-id, security-group-rule-id)",
                        other.escape_default()
                    )));
                }
            }
        }
        let pg = page_params(p, !rule_ids.is_empty(), "SecurityGroupRuleId")?;
        let rules = match self.call(Command::DescribeRules {
            groups: group_ids.into_iter().map(GroupRef::Id).collect(),
            rule_ids,
        })? {
            Response::Rules { rules } => rules,
            other => return Err(unexpected(&other)),
        };
        let mut rules = rules;
        rules.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
        let (rules, next) = page(rules, |r| r.rule_id.as_str(), pg);
        Ok(self.doc("DescribeSecurityGroupRules", |x| {
            x.open("securityGroupRuleSet");
            for r in &rules {
                write_rule_item(x, r, &self.region);
            }
            x.close("securityGroupRuleSet");
            if let Some(t) = &next {
                x.elem("nextToken", t);
            }
        }))
    }

    fn modify_security_group_rules(&self, p: &Params) -> Result<String, ApiError> {
        let group = GroupRef::Id(p.required("GroupId")?.to_owned());
        // An unknown group first, as EC2 reports it.
        let rules = match self.modify_rule_params(p) {
            Ok(rules) => rules,
            Err(e) => {
                self.lookup(Command::DescribeGroups {
                    groups: vec![group],
                })?;
                return Err(e);
            }
        };
        self.call(Command::ModifyRules { group, rules })?;
        Ok(self.doc("ModifySecurityGroupRules", |x| {
            x.elem("return", "true");
        }))
    }

    /// `SecurityGroupRule.N` of ModifySecurityGroupRules: (rule id, the
    /// new rule as a permission with its description).
    fn modify_rule_params(
        &self,
        p: &Params,
    ) -> Result<Vec<(String, crate::api::Permission)>, ApiError> {
        let mut rules = Vec::new();
        for n in p.indices("SecurityGroupRule") {
            let base = format!("SecurityGroupRule.{n}");
            let id = p
                .required(&format!("{base}.SecurityGroupRuleId"))?
                .to_owned();
            let r = format!("{base}.SecurityGroupRule.");
            let get = |f: &str| p.get(&format!("{r}{f}"));
            let proto = get("IpProtocol").ok_or_else(|| missing(&format!("{r}IpProtocol")))?;
            let mut flat = vec![("IpProtocol", proto)];
            for (k, f) in [
                ("FromPort", "FromPort"),
                ("ToPort", "ToPort"),
                ("CidrIp", "CidrIpv4"),
                ("CidrIpv6", "CidrIpv6"),
            ] {
                if let Some(v) = get(f) {
                    flat.push((k, v));
                }
            }
            if let Some(g) = get("ReferencedGroupId") {
                flat.push(("SourceSecurityGroupName", g));
            }
            if get("PrefixListId").is_some() {
                return Err(invalid(format!(
                    "{r}PrefixListId is not supported: sgswitch rules are CIDRs and groups"
                )));
            }
            let mut perms = params::permissions(&Params::from_pairs(&flat))?;
            let Some(mut perm) = perms.pop() else {
                return Err(missing(&format!("{r}IpProtocol")));
            };
            perm.description = Some(get("Description").unwrap_or_default().to_owned());
            rules.push((id, perm));
        }
        Ok(rules)
    }

    fn update_rule_descriptions(&self, p: &Params, action: &str) -> Result<String, ApiError> {
        let group = p.target_group()?;
        let egress = action.ends_with("Egress");
        let by_id: Vec<(String, String)> = p
            .indices("SecurityGroupRuleDescription")
            .into_iter()
            .map(|n| {
                let b = format!("SecurityGroupRuleDescription.{n}");
                Ok((
                    p.required(&format!("{b}.SecurityGroupRuleId"))?.to_owned(),
                    p.get(&format!("{b}.Description"))
                        .unwrap_or_default()
                        .to_owned(),
                ))
            })
            .collect::<Result<_, ApiError>>()?;
        let permissions =
            if by_id.is_empty() {
                let perms = self.permissions_of(p, &group)?;
                // A source without a description gets an empty one.
                perms
                    .into_iter()
                    .map(|mut perm| {
                        perm.description.get_or_insert_with(String::new);
                        perm
                    })
                    .collect()
            } else {
                // By rule id: the rule itself, with its new description.
                let ids: Vec<String> = by_id.iter().map(|(id, _)| id.clone()).collect();
                let rules = match self.lookup(Command::DescribeRules {
                    groups: vec![group.clone()],
                    rule_ids: ids,
                })? {
                    Response::Rules { rules } => rules,
                    other => return Err(unexpected(&other)),
                };
                by_id
                .iter()
                .map(|(id, d)| {
                    // An id of the other direction is not found (as EC2).
                    match rules.iter().find(|r| r.rule_id == *id && r.egress == egress) {
                        Some(r) => Ok(rule_permission(&r.rule, d)),
                        None => Err(ApiError::new(
                            ErrorCode::InvalidSecurityGroupRuleIdNotFound,
                            format!(
                                "the security group rule ID '{}' is not an {} rule of this group",
                                id.escape_default(),
                                if egress { "egress" } else { "ingress" }
                            ),
                        )),
                    }
                })
                .collect::<Result<_, _>>()?
            };
        self.call(Command::UpdateRuleDescriptions {
            group,
            permissions,
            egress,
        })?;
        Ok(self.doc(action, |x| {
            x.elem("return", "true");
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
    "ip-permission.ipv6-cidr",
    "ip-permission.group-name",
    "ip-permission.group-id",
    "ip-permission.user-id",
    "egress.ip-permission.protocol",
    "egress.ip-permission.from-port",
    "egress.ip-permission.to-port",
    "egress.ip-permission.cidr",
    "egress.ip-permission.ipv6-cidr",
    "egress.ip-permission.group-name",
    "egress.ip-permission.group-id",
    "egress.ip-permission.user-id",
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
        // `cidr` matches both families (AWS's is IPv4 only), `ipv6-cidr` IPv6.
        ("cidr", Source::Cidr(net)) => vec![net.to_string()],
        ("cidr" | "ipv6-cidr", Source::Cidr6(net)) => vec![net.to_string()],
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
    extra: &Extra,
) -> bool {
    let fields: Vec<String> = match name {
        "group-name" => vec![g.name.clone()],
        "group-id" => vec![g.id.clone()],
        "description" => vec![g.description.clone()],
        "owner-id" => vec![g.owner.0.clone()],
        other => match (
            other.strip_prefix("ip-permission."),
            other.strip_prefix("egress.ip-permission."),
        ) {
            (Some(field), _) => g
                .rules
                .iter()
                .flat_map(|r| rule_fields(r, field, ids))
                .collect(),
            (_, Some(field)) => g
                .egress
                .iter()
                .flat_map(|r| rule_fields(r, field, ids))
                .collect(),
            _ => tag_filter_fields(other, extra.tags_of(&g.id)).unwrap_or_default(),
        },
    };
    values
        .iter()
        .any(|v| fields.iter().any(|f| glob_match(v, f)))
}

/// One `securityGroupInfo/item`. Rules with the same protocol and ports are
/// one `ipPermissions/item` with all their sources, in first-seen order.
fn write_group(x: &mut Xml, g: &Group, ids: &BTreeMap<(String, String), String>, extra: &Extra) {
    x.open("item")
        .elem("ownerId", &g.owner.0)
        .elem("groupId", &g.id)
        .elem("groupName", &g.name)
        .elem("groupDescription", &g.description);
    write_permissions(x, "ipPermissions", &g.rules, ids, |r| {
        extra.description(&g.id, false, r)
    });
    write_permissions(x, "ipPermissionsEgress", &g.egress, ids, |r| {
        extra.description(&g.id, true, r)
    });
    write_tag_set(x, extra.tags_of(&g.id));
    x.elem(
        "securityGroupArn",
        &group_arn(&extra.region, &g.owner.0, &g.id),
    );
    x.close("item");
}

/// `ipPermissions` or `ipPermissionsEgress` (`tag`) of `rules`: rules with
/// the same protocol and ports are one `item` with all their sources (for
/// egress: destinations), in first-seen order; `describe` gives a rule's
/// description (empty: none).
fn write_permissions<'d>(
    x: &mut Xml,
    tag: &str,
    rules: &[Rule],
    ids: &BTreeMap<(String, String), String>,
    describe: impl Fn(&Rule) -> &'d str,
) {
    let mut perms: Vec<((Proto, Ports), Vec<&Rule>)> = Vec::new();
    for r in rules {
        match perms.iter_mut().find(|(k, _)| *k == (r.proto, r.ports)) {
            Some((_, rules)) => rules.push(r),
            None => perms.push(((r.proto, r.ports), vec![r])),
        }
    }
    let description = |x: &mut Xml, r: &Rule| {
        let d = describe(r);
        if !d.is_empty() {
            x.elem("description", d);
        }
    };
    x.open(tag);
    for ((proto, ports), sources) in &perms {
        x.open("item").elem("ipProtocol", proto_text(*proto));
        if let Some((from, to)) = port_texts(*ports) {
            x.elem("fromPort", &from).elem("toPort", &to);
        }
        x.open("groups");
        for r in sources {
            if let Source::Group { owner, group } = &r.source {
                x.open("item").elem("userId", &owner.0);
                if let Some(id) = ids.get(&(owner.0.clone(), group.clone())) {
                    x.elem("groupId", id);
                }
                x.elem("groupName", group);
                description(x, r);
                x.close("item");
            }
        }
        x.close("groups").open("ipRanges");
        for r in sources {
            if let Source::Cidr(net) = &r.source {
                x.open("item").elem("cidrIp", &net.to_string());
                description(x, r);
                x.close("item");
            }
        }
        x.close("ipRanges");
        if sources.iter().any(|r| matches!(r.source, Source::Cidr6(_))) {
            x.open("ipv6Ranges");
            for r in sources {
                if let Source::Cidr6(net) = &r.source {
                    x.open("item").elem("cidrIpv6", &net.to_string());
                    description(x, r);
                    x.close("item");
                }
            }
            x.close("ipv6Ranges");
        } else {
            x.empty("ipv6Ranges");
        }
        x.empty("prefixListIds").close("item");
    }
    x.close(tag);
}

/// The permission of exactly rule `r` with description `d`.
fn rule_permission(r: &Rule, d: &str) -> crate::api::Permission {
    let (ports, icmp) = match r.ports {
        Ports::None => (None, None),
        Ports::Range(lo, hi) => (Some(format!("{lo}-{hi}")), None),
        Ports::Icmp { ty, code } => {
            let s = |v: Option<u8>| v.map_or("-1".to_owned(), |v| v.to_string());
            (None, Some(format!("{}:{}", s(ty), s(code))))
        }
    };
    let (cidrs, groups) = match &r.source {
        Source::Cidr(net) => (vec![net.to_string()], vec![]),
        Source::Cidr6(net) => (vec![net.to_string()], vec![]),
        Source::Group { owner, group } => (
            vec![],
            vec![crate::api::SourceGroup {
                group: GroupRef::Name(group.clone()),
                owner: Some(owner.0.clone()),
            }],
        ),
    };
    crate::api::Permission {
        proto: Some(proto_text(r.proto).to_owned()),
        ports,
        icmp,
        cidrs,
        groups,
        description: Some(d.to_owned()),
    }
}

/// A security group's ARN.
fn group_arn(region: &str, owner: &str, id: &str) -> String {
    format!("arn:aws:ec2:{region}:{owner}:security-group/{id}")
}

/// One `securityGroupRuleSet/item` (DescribeSecurityGroupRules, and the
/// rules an authorize added).
fn write_rule_item(x: &mut Xml, r: &RuleInfo, region: &str) {
    x.open("item")
        .elem("securityGroupRuleId", &r.rule_id)
        .elem("groupId", &r.group_id)
        .elem("groupOwnerId", &r.owner)
        .elem("isEgress", if r.egress { "true" } else { "false" })
        .elem("ipProtocol", proto_text(r.rule.proto));
    let (from, to) = port_texts(r.rule.ports).unwrap_or(("-1".into(), "-1".into()));
    x.elem("fromPort", &from).elem("toPort", &to);
    match &r.rule.source {
        Source::Cidr(net) => {
            x.elem("cidrIpv4", &net.to_string());
        }
        Source::Cidr6(net) => {
            x.elem("cidrIpv6", &net.to_string());
        }
        Source::Group { owner, group } => {
            x.open("referencedGroupInfo")
                .elem("userId", &owner.0)
                .elem("groupName", group)
                .close("referencedGroupInfo");
        }
    }
    if !r.description.is_empty() {
        x.elem("description", &r.description);
    }
    x.elem(
        "securityGroupRuleArn",
        &format!(
            "arn:aws:ec2:{region}:{}:security-group-rule/{}",
            r.owner, r.rule_id
        ),
    )
    .close("item");
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
fn write_reservation_fields(
    x: &mut Xml,
    r: &Reservation,
    ids: &BTreeMap<String, String>,
    extra: &Extra,
) {
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
        if let Some(a) = i.ipv6_address {
            x.elem("ipv6Address", &a.to_string());
        }
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
        write_tag_set(x, extra.tags_of(&i.id));
        x.open("networkInterfaceSet")
            .open("item")
            .elem("macAddress", &i.mac)
            .elem("privateIpAddress", &i.ip.to_string());
        if let Some(a) = i.ipv6_address {
            x.open("ipv6AddressesSet")
                .open("item")
                .elem("ipv6Address", &a.to_string())
                .close("item")
                .close("ipv6AddressesSet");
        }
        x.close("item").close("networkInterfaceSet").close("item");
    }
    x.close("instancesSet");
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
