//! Target `ec2`: the EC2 Query API's front door, which reads network input
//! before anyone is authenticated: the HTTP/1.1 request reader
//! (`httparse` under sgswitch's limits), the query/form parameter decoder and
//! its EC2 request shapes, the SigV4 `Authorization` parser and verifier, the
//! filter wildcard matcher, and the whole unauthenticated answer path.
//!
//! Input: raw bytes read as a stream of HTTP requests (at most
//! [`MAX_REQUESTS`]); every request read is then taken apart by each parser.
//!
//! Checked:
//! * Nothing panics, whatever the bytes.
//! * A request that is read respects the limits: at most
//!   [`http::MAX_HEADERS`] headers, a body of at most [`http::MAX_BODY`] bytes
//!   and exactly its `Content-Length`, a path starting with `/`.
//! * A rejection carries a 4xx/5xx status.
//! * Parsed parameters: a name given twice keeps its first value; `list`
//!   values come in ascending index order.
//! * A parsed `Authorization` has a 64-hex-digit signature and a scope that
//!   reads back the same; a request signed here with the parsed scope and
//!   secret verifies, and the same signature with one byte of the body changed
//!   does not.
//! * The wildcard matcher: a pattern with every character escaped matches the
//!   text itself, `*` matches anything, and hostile patterns finish quickly.
//! * The unauthenticated answer (no key is known) is an error document with
//!   an auth error code and a 4xx status, never a success.

use std::io::BufReader;
use std::time::{Duration, Instant};

use mgmt::api::{ApiError, Reply, Request};
use mgmt::ec2::http::{self, ReadError};
use mgmt::ec2::params::{self, Params};
use mgmt::ec2::sigv4;

/// Most requests read from one input.
pub const MAX_REQUESTS: usize = 8;
/// Server time of the verification checks.
const NOW: i64 = 1_764_150_000;

fn check_params(query: &str, body: &[u8], ctype: Option<&str>) {
    let Ok(p) = Params::parse(query, body, ctype) else {
        return;
    };
    for prefix in ["GroupName", "GroupId", "InstanceId", "Filter"] {
        let idx = p.indices(prefix);
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "{idx:?}");
        let _ = p.list(prefix);
    }
    let _ = p.filters();
    let _ = p.target_group();
    let _ = params::permissions(&p);
    if let Ok(filters) = p.filters() {
        for (name, values) in filters.iter().take(4) {
            for v in values.iter().take(4) {
                let t0 = Instant::now();
                let _ = params::glob_match(v, name);
                assert!(
                    t0.elapsed() < Duration::from_millis(100),
                    "slow match {v:?}"
                );
            }
        }
    }
}

fn check_auth(req: &http::HttpRequest) {
    let Some(value) = req.header("authorization") else {
        return;
    };
    let Ok(auth) = sigv4::parse_authorization(value) else {
        return;
    };
    assert_eq!(auth.signature.len(), 64);
    assert!(auth.signature.bytes().all(|b| b.is_ascii_hexdigit()));
    let text = format!(
        "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
        auth.key_id,
        auth.scope(),
        auth.signed_headers.join(";"),
        auth.signature
    );
    assert_eq!(
        sigv4::parse_authorization(&text).as_ref(),
        Ok(&auth),
        "{text}"
    );
    let signed = sigv4::SignedRequest {
        method: &req.method,
        path: &req.path,
        query: &req.query,
        headers: &req.headers,
        body: &req.body,
    };
    let _ = sigv4::verify(&signed, &auth, "secret", NOW);
    // Signed here, at the request's own time: it verifies; a changed body does not.
    if let Ok((amz, t)) = sigv4::request_time(&req.headers)
        && amz.starts_with(&auth.date)
        && auth.signed_headers.iter().any(|h| h == "host")
    {
        let mut mine = auth.clone();
        mine.signature = sigv4::signature(&signed, &auth, &amz, "secret");
        assert_eq!(sigv4::verify(&signed, &mine, "secret", t), Ok(()));
        let mut body = req.body.clone();
        body.push(b'x');
        let changed = sigv4::SignedRequest {
            body: &body,
            ..signed
        };
        assert_eq!(
            sigv4::verify(&changed, &mine, "secret", t),
            Err(sigv4::AuthError::Mismatch)
        );
    }
}

fn check_glob(req: &http::HttpRequest) {
    let text: String = String::from_utf8_lossy(&req.body)
        .chars()
        .take(256)
        .collect();
    let escaped: String = text.chars().flat_map(|c| ['\\', c]).collect();
    assert!(params::glob_match(&escaped, &text), "{escaped:?}");
    assert!(params::glob_match("*", &text));
    let t0 = Instant::now();
    let _ = params::glob_match(&req.query, &text);
    assert!(t0.elapsed() < Duration::from_millis(100));
}

fn check_answer(req: &http::HttpRequest) {
    // A handler that knows no access key: nothing gets past authentication.
    let h = |_: Request| -> Reply { Err(ApiError::internal("reached the core")) };
    let resp = mgmt::ec2::handle(req, &h, NOW);
    assert!((400..500).contains(&resp.status), "status {}", resp.status);
    let body = String::from_utf8(resp.body).expect("UTF-8 answer");
    assert!(body.contains("<Errors><Error><Code>"), "{body}");
    assert!(!body.contains("reached the core"), "{body}");
}

/// Run one input.
pub fn run(data: &[u8]) {
    let mut r = BufReader::with_capacity(512, data);
    let mut w = Vec::new();
    for _ in 0..MAX_REQUESTS {
        match http::read_request(&mut r, &mut w) {
            Ok(req) => {
                assert!(req.headers.len() <= http::MAX_HEADERS);
                assert!(req.body.len() <= http::MAX_BODY);
                assert!(req.path.starts_with('/'), "{:?}", req.path);
                let len = req
                    .header("content-length")
                    .map_or(0, |v| v.parse().unwrap());
                assert_eq!(req.body.len(), len);
                check_params(&req.query, &req.body, req.header("content-type"));
                check_auth(&req);
                check_glob(&req);
                check_answer(&req);
                if req.close {
                    return;
                }
            }
            Err(ReadError::Reject(status, _)) => {
                assert!((400..600).contains(&status), "status {status}");
                return;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => return,
        }
    }
}

/// Seeds: what awscli and boto send, and the hostile shapes of the unit tests.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let body = "Action=DescribeSecurityGroups&Version=2016-11-15&Filter.1.Name=description&Filter.1.Value.1=%2Aa%2Aa%2Aa%2Aab&GroupName.2=b&GroupName.1=a";
    let signed = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:8773\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\r\nX-Amz-Date: 20251126T094000Z\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE0000000000/20251126/us-east-1/ec2/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={}\r\nContent-Length: {}\r\n\r\n{body}",
        "0".repeat(64),
        body.len()
    );
    let perms = "Action=AuthorizeSecurityGroupIngress&GroupId=sg-1&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=22&IpPermissions.1.ToPort=22&IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8&IpPermissions.1.Groups.1.GroupName=app";
    let get = format!(
        "GET /?{perms} HTTP/1.1\r\nHost: h\r\nDate: Wed, 26 Nov 2025 09:40:00 GMT\r\nAuthorization: AWS4-HMAC-SHA256 Credential=K/20251126/0/127/aws4_request,SignedHeaders=host,Signature={}\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        "a".repeat(64)
    );
    vec![
        ("signed_post".into(), signed.into_bytes()),
        ("get_keepalive".into(), get.into_bytes()),
        (
            "expect_continue".into(),
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        (
            "chunked".into(),
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_clean() {
        for (name, bytes) in seeds() {
            let r = std::panic::catch_unwind(|| run(&bytes));
            assert!(r.is_ok(), "seed {name}");
        }
    }
}
