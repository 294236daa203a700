//! A blocking etcd v3 client over etcd's JSON gateway (grpc-gateway, HTTP/1.1).
//!
//! Contract:
//! * Endpoints are `http://HOST:PORT` (or `HOST:PORT`), given as one
//!   comma-separated list (`--etcd URL[,URL...]`). A call tries the endpoint
//!   that answered last, then the others in order. It moves on to the next
//!   endpoint when it cannot connect (the request was never sent, so this is
//!   safe for every call) and, for reads only, also when the connection fails
//!   after sending or the member answers `Unavailable` (no leader). A write
//!   whose connection fails after the request went out is not re-sent: its
//!   outcome is unknown and the caller is told so ([`EtcdError::OutcomeUnknown`]
//!   with "outcome unknown"); sgswitch's writes are transactions comparing
//!   revisions, so the caller re-reads and decides.
//! * Every call has a deadline: [`Config::connect_timeout`] per endpoint for
//!   the TCP connect, [`Config::request_timeout`] for the whole exchange.
//!   When no endpoint answers, the error is [`EtcdError::Unreachable`], whose
//!   message reads `etcd at URL unreachable: ...` and whose EC2-style code is
//!   `ServiceUnavailable`.
//! * One TCP connection per call (`Connection: close`): no pool whose stale
//!   connections could make a write ambiguous; a loopback or LAN connect costs
//!   tens of microseconds, far below an etcd commit (an fsync).
//! * A [`Watch`] holds one long-lived streaming connection. It yields whole
//!   watch responses ([`WatchBatch`]): etcd never splits one revision (one
//!   transaction) over two responses, so applying batch by batch applies each
//!   transaction atomically. It remembers the next revision it needs; when the
//!   connection is lost it reconnects (to any endpoint, with backoff) and
//!   resumes from that revision, so no event is lost or repeated. If that
//!   revision has been compacted it fails with [`EtcdError::Compacted`] for
//!   good: the caller must re-read everything and start a new watch.
//!   Progress notifications advance the resume point without events. TCP
//!   keepalive (about 11 s) detects a member that vanished without a reset.
//! * No TLS, no authentication: etcd is reached on a trusted underlay.
//!
//! JSON mapping (grpc-gateway with proto field names): keys and values are
//! base64; 64-bit integers are JSON strings (we accept numbers too); fields at
//! their default (0, false, empty, enum value 0 such as `PUT`) are omitted.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

pub use super::http::MAX_BODY;
use super::http::{Endpoint, connect, parse_endpoint, read_unary, send_request};
pub use super::watch::{Event, EventKind, Watch, WatchBatch};
use crate::api::ApiError;
use filter::error::ErrorCode;

/// Default TCP connect timeout per endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Default deadline of one request/response exchange.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the etcd client. Messages name the endpoint and the operation.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("bad etcd endpoint {value:?}: {reason}")]
    BadEndpoint { value: String, reason: &'static str },
    /// No endpoint answered in time (or the answer was cut off).
    #[error("etcd at {url} unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    /// etcd answered with an error.
    #[error("etcd at {url}: {op} failed: {message} (gRPC code {code}, HTTP {http})")]
    Status {
        url: String,
        op: &'static str,
        http: u16,
        code: i64,
        message: String,
    },
    /// The revision asked for is older than the last compaction.
    #[error("etcd revision {requested} has been compacted{}", compacted_at(*compact_revision))]
    Compacted {
        requested: i64,
        /// The compaction revision, 0 when etcd did not say.
        compact_revision: i64,
    },
    /// A write went out but no answer came: it may or may not have been
    /// applied (the caller finds out by reading what it wrote).
    #[error(
        "etcd at {url} unreachable: {op}: {detail} after the request was sent: its outcome is unknown"
    )]
    OutcomeUnknown {
        url: String,
        op: &'static str,
        detail: String,
    },
    #[error("etcd lease {id:x} not found (expired or revoked)")]
    LeaseNotFound { id: i64 },
    /// etcd's answer is not what the gateway documents.
    #[error("etcd at {url}: bad answer to {op}: {detail}")]
    Protocol {
        url: String,
        op: &'static str,
        detail: String,
    },
}

fn compacted_at(rev: i64) -> String {
    if rev > 0 {
        format!(" (compacted up to {rev}); re-read everything")
    } else {
        "; re-read everything".to_owned()
    }
}

impl EtcdError {
    /// The EC2-style error code a front door reports for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            EtcdError::Unreachable { .. } | EtcdError::OutcomeUnknown { .. } => {
                ErrorCode::ServiceUnavailable
            }
            EtcdError::Status { code: 14, .. } => ErrorCode::ServiceUnavailable,
            _ => ErrorCode::InternalError,
        }
    }

    /// etcd could not be reached or had no leader: retrying later may work.
    pub fn is_unavailable(&self) -> bool {
        self.code() == ErrorCode::ServiceUnavailable
    }
}

impl From<EtcdError> for ApiError {
    fn from(e: EtcdError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, EtcdError>;

/// Client settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

pub(super) struct Inner {
    pub(super) endpoints: Vec<Endpoint>,
    /// Index of the endpoint that answered last.
    pub(super) preferred: AtomicUsize,
    pub(super) cfg: Config,
}

/// An etcd client; cheap to clone (clones share the endpoint preference).
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

/// A key as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// Writes since creation (1 after the first put); 0 for a deleted key.
    pub version: i64,
    /// Lease id, 0 for none.
    pub lease: i64,
}

/// Which keys: one key, or `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Vec<u8>,
    /// Empty: just `key`.
    pub range_end: Vec<u8>,
}

impl KeyRange {
    pub fn key(key: impl AsRef<[u8]>) -> KeyRange {
        KeyRange {
            key: key.as_ref().to_vec(),
            range_end: Vec::new(),
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl AsRef<[u8]>) -> KeyRange {
        KeyRange {
            key: prefix.as_ref().to_vec(),
            range_end: prefix_end(prefix.as_ref()),
        }
    }

    pub(super) fn to_json(&self, obj: &mut serde_json::Map<String, Value>) {
        obj.insert("key".into(), b64(&self.key));
        if !self.range_end.is_empty() {
            obj.insert("range_end".into(), b64(&self.range_end));
        }
    }
}

/// The end of the range of keys starting with `prefix`: `prefix` with its last
/// byte below 0xff incremented (trailing 0xff bytes dropped); `\0` (every key)
/// when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub keys: KeyRange,
    /// Read at this revision; 0 = latest.
    pub revision: i64,
    /// At most this many keys; 0 = all.
    pub limit: i64,
}

impl Range {
    pub fn key(key: impl AsRef<[u8]>) -> Range {
        Range {
            keys: KeyRange::key(key),
            revision: 0,
            limit: 0,
        }
    }

    pub fn prefix(prefix: impl AsRef<[u8]>) -> Range {
        Range {
            keys: KeyRange::prefix(prefix),
            revision: 0,
            limit: 0,
        }
    }

    /// Read as of `revision`.
    pub fn at(mut self, revision: i64) -> Range {
        self.revision = revision;
        self
    }

    pub fn limit(mut self, limit: i64) -> Range {
        self.limit = limit;
        self
    }

    fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        self.keys.to_json(&mut o);
        if self.revision != 0 {
            o.insert("revision".into(), int(self.revision));
        }
        if self.limit != 0 {
            o.insert("limit".into(), int(self.limit));
        }
        Value::Object(o)
    }
}

/// The answer to a read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The store revision the read saw.
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    /// Keys in the range (beyond `limit` too).
    pub count: i64,
    /// More keys than `limit` returned.
    pub more: bool,
}

/// The comparison of a [`Compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

impl CompareOp {
    fn as_str(self) -> &'static str {
        match self {
            CompareOp::Equal => "EQUAL",
            CompareOp::NotEqual => "NOT_EQUAL",
            CompareOp::Greater => "GREATER",
            CompareOp::Less => "LESS",
        }
    }
}

/// What a [`Compare`] looks at, with the operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// Writes since creation; 0 = the key does not exist.
    Version(i64),
    /// Revision of the key's creation; 0 = the key does not exist.
    CreateRevision(i64),
    /// Revision of the key's last write; 0 = the key does not exist.
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// One condition of a [`Txn`]: `key`'s target `op` operand. With a
/// `range_end`, every key of `[key, range_end)` must satisfy it, and an empty
/// range compares as one absent key (version, revisions 0): so
/// [`Compare::prefix_empty`] holds exactly when no key has the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    /// Empty: just `key`.
    pub range_end: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    /// `key` was last written at `rev` (0: `key` does not exist).
    pub fn mod_revision(key: impl AsRef<[u8]>, op: CompareOp, rev: i64) -> Compare {
        Compare {
            key: key.as_ref().to_vec(),
            range_end: Vec::new(),
            op,
            target: CompareTarget::ModRevision(rev),
        }
    }

    pub fn create_revision(key: impl AsRef<[u8]>, op: CompareOp, rev: i64) -> Compare {
        Compare {
            key: key.as_ref().to_vec(),
            range_end: Vec::new(),
            op,
            target: CompareTarget::CreateRevision(rev),
        }
    }

    pub fn version(key: impl AsRef<[u8]>, op: CompareOp, version: i64) -> Compare {
        Compare {
            key: key.as_ref().to_vec(),
            range_end: Vec::new(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    pub fn value(key: impl AsRef<[u8]>, op: CompareOp, value: impl AsRef<[u8]>) -> Compare {
        Compare {
            key: key.as_ref().to_vec(),
            range_end: Vec::new(),
            op,
            target: CompareTarget::Value(value.as_ref().to_vec()),
        }
    }

    /// `key` does not exist.
    pub fn absent(key: impl AsRef<[u8]>) -> Compare {
        Compare::create_revision(key, CompareOp::Equal, 0)
    }

    /// No key starts with `prefix` (e.g. no reference to a group remains).
    pub fn prefix_empty(prefix: impl AsRef<[u8]>) -> Compare {
        Compare {
            key: prefix.as_ref().to_vec(),
            range_end: prefix_end(prefix.as_ref()),
            op: CompareOp::Equal,
            target: CompareTarget::Version(0),
        }
    }

    fn to_json(&self) -> Value {
        let (target, field, operand) = match &self.target {
            CompareTarget::Version(v) => ("VERSION", "version", int(*v)),
            CompareTarget::CreateRevision(v) => ("CREATE", "create_revision", int(*v)),
            CompareTarget::ModRevision(v) => ("MOD", "mod_revision", int(*v)),
            CompareTarget::Value(v) => ("VALUE", "value", b64(v)),
            CompareTarget::Lease(v) => ("LEASE", "lease", int(*v)),
        };
        let mut v = json!({
            "key": b64(&self.key),
            "result": self.op.as_str(),
            "target": target,
            field: operand,
        });
        if !self.range_end.is_empty() {
            v["range_end"] = b64(&self.range_end);
        }
        v
    }
}

/// One operation inside a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        /// 0: no lease.
        lease: i64,
    },
    Delete(KeyRange),
    Range(Range),
}

impl Op {
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Op {
        Op::Put {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
            lease: 0,
        }
    }

    pub fn put_with_lease(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, lease: i64) -> Op {
        Op::Put {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
            lease,
        }
    }

    pub fn delete(key: impl AsRef<[u8]>) -> Op {
        Op::Delete(KeyRange::key(key))
    }

    fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => json!({ "request_put": put_json(key, value, *lease) }),
            Op::Delete(r) => {
                let mut o = serde_json::Map::new();
                r.to_json(&mut o);
                json!({ "request_delete_range": Value::Object(o) })
            }
            Op::Range(r) => json!({ "request_range": r.to_json() }),
        }
    }
}

fn put_json(key: &[u8], value: &[u8], lease: i64) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("key".into(), b64(key));
    o.insert("value".into(), b64(value));
    if lease != 0 {
        o.insert("lease".into(), int(lease));
    }
    Value::Object(o)
}

/// A transaction: if every compare holds, `success` runs, else `failure`;
/// atomically, as one revision (when it writes anything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Txn {
        self.compare.extend(compare);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.failure.extend(ops);
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "compare": self.compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": self.success.iter().map(Op::to_json).collect::<Vec<_>>(),
            "failure": self.failure.iter().map(Op::to_json).collect::<Vec<_>>(),
        })
    }
}

/// The answer to one [`Op`] of a transaction, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    Put,
    Delete { deleted: i64 },
    Range(RangeResponse),
}

/// The answer to a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Every compare held (the `success` branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: i64,
    pub responses: Vec<OpResponse>,
}

/// What [`Client::status`] reports about one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The endpoint that answered.
    pub url: String,
    /// etcd's version, e.g. `3.4.23`.
    pub version: String,
    pub member_id: u64,
    /// The member id of the leader this member follows (its own if leader).
    pub leader: u64,
    pub revision: i64,
    pub raft_term: u64,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Seconds.
    pub ttl: i64,
}

impl Client {
    /// A client of the comma-separated endpoint list `endpoints`.
    pub fn new(endpoints: &str, cfg: Config) -> Result<Client> {
        let mut list = Vec::new();
        for raw in endpoints.split(',').map(str::trim) {
            list.push(parse_endpoint(raw)?);
        }
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: list,
                preferred: AtomicUsize::new(0),
                cfg,
            }),
        })
    }

    /// The endpoint URLs, normalised.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.iter().map(|e| e.url.clone()).collect()
    }

    /// Read keys.
    pub fn range(&self, range: &Range) -> Result<RangeResponse> {
        let (url, v) = self
            .call("range", "/v3/kv/range", &range.to_json(), true)
            .map_err(|e| match e {
                EtcdError::Compacted {
                    compact_revision, ..
                } => EtcdError::Compacted {
                    requested: range.revision,
                    compact_revision,
                },
                e => e,
            })?;
        parse_range(&url, "range", &v)
    }

    /// The value of one key (None if absent) and the revision read at.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<(i64, Option<KeyValue>)> {
        let r = self.range(&Range::key(key))?;
        Ok((r.revision, r.kvs.into_iter().next()))
    }

    /// Write one key (`lease` 0: none); the new store revision.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, lease: i64) -> Result<i64> {
        let body = put_json(key.as_ref(), value.as_ref(), lease);
        let (url, v) = self.call("put", "/v3/kv/put", &body, false)?;
        header_revision(&url, "put", &v)
    }

    /// Delete keys; the new store revision and how many were deleted.
    pub fn delete(&self, keys: &KeyRange) -> Result<(i64, i64)> {
        let mut o = serde_json::Map::new();
        keys.to_json(&mut o);
        let (url, v) = self.call("delete", "/v3/kv/deleterange", &Value::Object(o), false)?;
        Ok((header_revision(&url, "delete", &v)?, num(&v["deleted"])))
    }

    /// Run a transaction.
    pub fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        let (url, v) = self.call("txn", "/v3/kv/txn", &txn.to_json(), false)?;
        let revision = header_revision(&url, "txn", &v)?;
        let mut responses = Vec::new();
        if let Some(list) = v["responses"].as_array() {
            for r in list {
                if let Some(p) = r.get("response_range") {
                    responses.push(OpResponse::Range(parse_range(&url, "txn", p)?));
                } else if let Some(d) = r.get("response_delete_range") {
                    responses.push(OpResponse::Delete {
                        deleted: num(&d["deleted"]),
                    });
                } else if r.get("response_put").is_some() {
                    responses.push(OpResponse::Put);
                } else {
                    return Err(protocol(&url, "txn", format!("unknown response {r}")));
                }
            }
        }
        Ok(TxnResponse {
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            revision,
            responses,
        })
    }

    /// Compact the history up to `revision` (watches and reads below it then
    /// fail with [`EtcdError::Compacted`]). `physical`: return only when the
    /// space has been reclaimed.
    pub fn compact(&self, revision: i64, physical: bool) -> Result<()> {
        let body = json!({ "revision": int(revision), "physical": physical });
        self.call("compact", "/v3/kv/compaction", &body, false)?;
        Ok(())
    }

    /// A lease of `ttl` seconds.
    pub fn lease_grant(&self, ttl: i64) -> Result<Lease> {
        let (url, v) = self.call(
            "lease grant",
            "/v3/lease/grant",
            &json!({ "TTL": int(ttl) }),
            false,
        )?;
        if let Some(e) = v["error"].as_str().filter(|e| !e.is_empty()) {
            return Err(protocol(&url, "lease grant", e.to_owned()));
        }
        let id = num(&v["ID"]);
        if id == 0 {
            return Err(protocol(&url, "lease grant", format!("no lease id in {v}")));
        }
        Ok(Lease {
            id,
            ttl: num(&v["TTL"]),
        })
    }

    /// Renew lease `id` once; its TTL in seconds. A lease that has expired or
    /// was revoked is [`EtcdError::LeaseNotFound`].
    pub fn lease_keepalive(&self, id: i64) -> Result<i64> {
        // A bidirectional stream on the gateway: one request in the body, one
        // `{"result": ...}` back, then the stream ends with the request body.
        let (url, v) = self.call(
            "lease keepalive",
            "/v3/lease/keepalive",
            &json!({ "ID": int(id) }),
            true,
        )?;
        let r = match v.get("result") {
            Some(r) => r,
            None => return Err(stream_error(&url, "lease keepalive", &v)),
        };
        let ttl = num(&r["TTL"]);
        if ttl <= 0 {
            return Err(EtcdError::LeaseNotFound { id });
        }
        Ok(ttl)
    }

    /// Seconds lease `id` has left; [`EtcdError::LeaseNotFound`] if none.
    pub fn lease_ttl(&self, id: i64) -> Result<i64> {
        let (_, v) = self.call(
            "lease ttl",
            "/v3/lease/timetolive",
            &json!({ "ID": int(id) }),
            true,
        )?;
        let ttl = num(&v["TTL"]);
        if ttl < 0 {
            return Err(EtcdError::LeaseNotFound { id });
        }
        Ok(ttl)
    }

    /// Revoke lease `id`: every key attached to it is deleted.
    pub fn lease_revoke(&self, id: i64) -> Result<()> {
        match self.call(
            "lease revoke",
            "/v3/lease/revoke",
            &json!({ "ID": int(id) }),
            false,
        ) {
            Ok(_) => Ok(()),
            Err(EtcdError::LeaseNotFound { .. }) => Err(EtcdError::LeaseNotFound { id }),
            Err(e) => Err(e),
        }
    }

    /// The status of the first member that answers (its URL too): version,
    /// ids, the leader it follows, the store revision.
    pub fn status(&self) -> Result<MemberStatus> {
        let (url, v) = self.call("status", "/v3/maintenance/status", &json!({}), true)?;
        Ok(MemberStatus {
            revision: header_revision(&url, "status", &v)?,
            url,
            version: v["version"].as_str().unwrap_or("").to_owned(),
            member_id: unum(&v["header"]["member_id"]),
            leader: unum(&v["leader"]),
            raft_term: unum(&v["raftTerm"]).max(unum(&v["header"]["raft_term"])),
        })
    }

    /// Every key under `prefix` as of one revision, read in pages of `page`
    /// keys (later pages pinned to the first page's revision, so the result
    /// is one consistent state even while others write). `revision` 0 =
    /// latest. The answer's `revision` is the one to watch from, plus one.
    pub fn range_all(
        &self,
        prefix: impl AsRef<[u8]>,
        revision: i64,
        page: i64,
    ) -> Result<RangeResponse> {
        let end = prefix_end(prefix.as_ref());
        let mut from = prefix.as_ref().to_vec();
        let mut at = revision;
        let mut all = RangeResponse::default();
        loop {
            let r = self.range(&Range {
                keys: KeyRange {
                    key: from.clone(),
                    range_end: end.clone(),
                },
                revision: at,
                limit: page.max(1),
            })?;
            if at == 0 {
                at = r.revision;
            }
            let more = r.more;
            if let Some(last) = r.kvs.last() {
                // The next page starts just after the last key.
                from = last.key.clone();
                from.push(0);
            }
            all.kvs.extend(r.kvs);
            if !more {
                break;
            }
        }
        all.revision = at;
        all.count = all.kvs.len() as i64;
        Ok(all)
    }

    /// Watch `keys` from `start_revision` (every change with a revision
    /// `>= start_revision`, in order). Returns once etcd has confirmed the
    /// watch. Fails at once with [`EtcdError::Compacted`] if `start_revision`
    /// is below the last compaction.
    pub fn watch(&self, keys: KeyRange, start_revision: i64) -> Result<Watch> {
        Watch::start(self, keys, start_revision)
    }

    /// POST `body` to `path` on the first endpoint that answers; the endpoint
    /// URL and the JSON answer. `idempotent`: the request may be re-sent to
    /// the next endpoint after it went out.
    fn call(
        &self,
        op: &'static str,
        path: &str,
        body: &Value,
        idempotent: bool,
    ) -> Result<(String, Value)> {
        let body = body.to_string();
        let n = self.inner.endpoints.len();
        let start = self.inner.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let ep = &self.inner.endpoints[idx];
            let mut stream = match connect(ep, &self.inner.cfg) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{}: connect: {e}", ep.url));
                    continue;
                }
            };
            let deadline = Instant::now() + self.inner.cfg.request_timeout;
            let answer = send_request(&mut stream, ep, path, &body, deadline)
                .and_then(|()| read_unary(&mut stream, deadline));
            match answer {
                Ok((200, v)) => {
                    self.inner.preferred.store(idx, Ordering::Relaxed);
                    return Ok((ep.url.clone(), v));
                }
                Ok((status, v)) => {
                    let err = status_error(&ep.url, op, status, &v);
                    if matches!(err, EtcdError::Status { code: 14, .. }) && idempotent {
                        failures.push(format!("{}: {}", ep.url, err));
                        continue;
                    }
                    self.inner.preferred.store(idx, Ordering::Relaxed);
                    return Err(err);
                }
                Err(e) if idempotent => failures.push(format!(
                    "{}: {op}: {}",
                    ep.url,
                    io_text(&e, &self.inner.cfg)
                )),
                Err(e) => {
                    // The next call starts at the next member.
                    self.inner.preferred.store((idx + 1) % n, Ordering::Relaxed);
                    return Err(EtcdError::OutcomeUnknown {
                        url: ep.url.clone(),
                        op,
                        detail: io_text(&e, &self.inner.cfg),
                    });
                }
            }
        }
        Err(unreachable(&self.endpoints(), failures))
    }
}

/// An I/O error as a reader wants it: a timeout says how long we waited.
pub(super) fn io_text(e: &io::Error, cfg: &Config) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer within {:?}", cfg.request_timeout)
        }
        _ => e.to_string(),
    }
}

pub(super) fn unreachable(urls: &[String], failures: Vec<String>) -> EtcdError {
    EtcdError::Unreachable {
        url: urls.join(","),
        detail: failures.join("; "),
    }
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(B64.encode(bytes))
}

fn unb64(v: &Value) -> std::result::Result<Vec<u8>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => B64.decode(s).map_err(|e| format!("bad base64 {s:?}: {e}")),
        other => Err(format!("expected base64, got {other}")),
    }
}

/// int64 as grpc-gateway writes it: a JSON string.
pub(super) fn int(n: i64) -> Value {
    Value::String(n.to_string())
}

/// An int64 field: a string, a number, or absent (0).
pub(super) fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// A uint64 field (member ids use the full range).
fn unum(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

pub(super) fn protocol(url: &str, op: &'static str, detail: String) -> EtcdError {
    EtcdError::Protocol {
        url: url.to_owned(),
        op,
        detail,
    }
}

fn header_revision(url: &str, op: &'static str, v: &Value) -> Result<i64> {
    let rev = num(&v["header"]["revision"]);
    if rev <= 0 {
        return Err(protocol(url, op, format!("no header.revision in {v}")));
    }
    Ok(rev)
}

pub(super) fn parse_kv(url: &str, op: &'static str, v: &Value) -> Result<KeyValue> {
    Ok(KeyValue {
        key: unb64(&v["key"]).map_err(|e| protocol(url, op, e))?,
        value: unb64(&v["value"]).map_err(|e| protocol(url, op, e))?,
        create_revision: num(&v["create_revision"]),
        mod_revision: num(&v["mod_revision"]),
        version: num(&v["version"]),
        lease: num(&v["lease"]),
    })
}

fn parse_range(url: &str, op: &'static str, v: &Value) -> Result<RangeResponse> {
    let mut kvs = Vec::new();
    if let Some(list) = v["kvs"].as_array() {
        for kv in list {
            kvs.push(parse_kv(url, op, kv)?);
        }
    }
    Ok(RangeResponse {
        revision: header_revision(url, op, v)?,
        kvs,
        count: num(&v["count"]),
        more: v["more"].as_bool().unwrap_or(false),
    })
}

/// The gRPC code and message of a gateway error body: unary errors are
/// `{"error": "...", "code": N, "message": "..."}`, stream errors
/// `{"error": {"grpc_code": N, "message": "..."}}`.
fn grpc_error(v: &Value) -> (i64, String) {
    let e = if v["error"].is_object() {
        &v["error"]
    } else {
        v
    };
    let code = if e.get("grpc_code").is_some() {
        num(&e["grpc_code"])
    } else {
        num(&e["code"])
    };
    let message = e["message"]
        .as_str()
        .or_else(|| e["error"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string());
    (code, message)
}

pub(super) fn status_error(url: &str, op: &'static str, http: u16, v: &Value) -> EtcdError {
    let (code, message) = grpc_error(v);
    if message.contains("required revision has been compacted") {
        return EtcdError::Compacted {
            requested: 0,
            compact_revision: 0,
        };
    }
    if message.contains("requested lease not found") {
        return EtcdError::LeaseNotFound { id: 0 };
    }
    EtcdError::Status {
        url: url.to_owned(),
        op,
        http,
        code,
        message,
    }
}

pub(super) fn stream_error(url: &str, op: &'static str, v: &Value) -> EtcdError {
    let (code, message) = grpc_error(v);
    EtcdError::Status {
        url: url.to_owned(),
        op,
        http: 200,
        code,
        message,
    }
}

/// A lease kept alive by a background thread (a host's registration):
/// renewed every third of its TTL; revoked when dropped, so a clean shutdown
/// removes the host's keys at once while a crash lets them expire.
pub struct LeaseKeeper {
    lease: Lease,
    stop: Arc<std::sync::atomic::AtomicBool>,
    lost: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    client: Client,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("lease", &self.lease)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LeaseKeeper {
    /// Grant a lease of `ttl` seconds and keep it alive.
    pub fn start(client: &Client, ttl: i64) -> Result<LeaseKeeper> {
        use std::sync::atomic::AtomicBool;
        let lease = client.lease_grant(ttl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let period = Duration::from_millis((lease.ttl.max(1) as u64 * 1000) / 3);
        let thread = {
            let (thread_client, stop, lost) = (client.clone(), stop.clone(), lost.clone());
            std::thread::Builder::new()
                .name("etcd-lease".into())
                .spawn(move || {
                    let mut next = Instant::now() + period;
                    while !stop.load(Ordering::Relaxed) {
                        if Instant::now() < next {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        match thread_client.lease_keepalive(lease.id) {
                            Ok(_) => next = Instant::now() + period,
                            Err(EtcdError::LeaseNotFound { .. }) => {
                                lost.store(true, Ordering::Relaxed);
                                return;
                            }
                            // Unreachable: try again soon; etcd expires the
                            // lease if this lasts longer than the TTL.
                            Err(_) => next = Instant::now() + Duration::from_millis(500),
                        }
                    }
                })
                .map_err(|e| EtcdError::Unreachable {
                    url: client.endpoints().join(","),
                    detail: format!("cannot start the lease thread: {e}"),
                })?
        };
        Ok(LeaseKeeper {
            lease,
            stop,
            lost,
            thread: Some(thread),
            client: client.clone(),
        })
    }

    pub fn id(&self) -> i64 {
        self.lease.id
    }

    /// The lease expired (etcd unreachable for longer than its TTL, or
    /// revoked by someone else): its keys are gone; register again.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.is_lost() {
            let _ = self.client.lease_revoke(self.lease.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn endpoints_parse_and_reject_with_the_bad_value() {
        let c = Client::new("http://127.0.0.1:2379, 10.0.0.1:2379/", Config::default()).unwrap();
        assert_eq!(
            c.endpoints(),
            vec!["http://127.0.0.1:2379", "http://10.0.0.1:2379"]
        );
        for bad in ["", "https://h:1", "http://h", "h:0", "http://h:1/v3", "h:x"] {
            let e = Client::new(bad, Config::default()).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn compare_and_ops_map_to_gateway_json() {
        let t = Txn::new()
            .when([
                Compare::mod_revision("k", CompareOp::Equal, 7),
                Compare::absent("n"),
            ])
            .and_then([Op::put_with_lease("k", "v", 9), Op::delete("d")])
            .or_else([Op::Range(Range::prefix("p/"))]);
        let j = t.to_json();
        assert_eq!(
            j["compare"][0],
            json!({"key": "aw==", "result": "EQUAL", "target": "MOD", "mod_revision": "7"})
        );
        assert_eq!(j["compare"][1]["target"], "CREATE");
        assert_eq!(j["compare"][1]["create_revision"], "0");
        assert_eq!(
            j["success"][0],
            json!({"request_put": {"key": "aw==", "value": "dg==", "lease": "9"}})
        );
        assert_eq!(
            j["success"][1],
            json!({"request_delete_range": {"key": "ZA=="}})
        );
        assert_eq!(
            j["failure"][0],
            json!({"request_range": {"key": "cC8=", "range_end": "cDA="}})
        );
    }

    #[test]
    fn range_answers_parse_with_omitted_defaults() {
        let v = json!({"header": {"revision": "12"}, "kvs": [
            {"key": "Zm9v", "create_revision": "2", "mod_revision": "12", "version": "3", "value": "YmFy"},
            {"key": "ZQ==", "create_revision": 5, "mod_revision": 6, "version": 1}
        ], "count": "2"});
        let r = parse_range("u", "range", &v).unwrap();
        assert_eq!(r.revision, 12);
        assert_eq!(r.count, 2);
        assert!(!r.more);
        assert_eq!(r.kvs[0].key, b"foo");
        assert_eq!(r.kvs[0].value, b"bar");
        assert_eq!(
            (r.kvs[0].mod_revision, r.kvs[0].version, r.kvs[0].lease),
            (12, 3, 0)
        );
        assert_eq!(r.kvs[1].value, b"");
        let e = parse_range("u", "range", &json!({"header": {}})).unwrap_err();
        assert!(e.to_string().contains("no header.revision"), "{e}");
    }

    #[test]
    fn gateway_errors_map_to_compacted_and_status() {
        let v = json!({"error": "etcdserver: mvcc: required revision has been compacted", "code": 11,
            "message": "etcdserver: mvcc: required revision has been compacted"});
        assert!(matches!(
            status_error("u", "range", 400, &v),
            EtcdError::Compacted { .. }
        ));
        let v = json!({"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader"}});
        let e = status_error("u", "txn", 503, &v);
        assert!(matches!(e, EtcdError::Status { code: 14, .. }), "{e:?}");
        assert_eq!(e.code(), "ServiceUnavailable");
        assert!(e.to_string().contains("no leader"), "{e}");
    }
}
