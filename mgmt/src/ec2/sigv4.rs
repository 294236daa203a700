//! AWS Signature Version 4 verification (`Authorization: AWS4-HMAC-SHA256 ...`).
//!
//! Contract:
//! * [`parse_authorization`] splits the header into key id, credential scope
//!   (date, region, service, `aws4_request`), signed headers and signature;
//!   anything else is an [`AuthError`], never a panic.
//! * [`verify`] recomputes the signature the way the client did — canonical
//!   request (method, canonical URI, canonical query, the signed headers with
//!   trimmed values, the SHA-256 of the body **computed here**), string to sign,
//!   signing key derived from the secret and the scope **the client declared**
//!   (boto 2.49 pointed at `127.0.0.1` signs with region `0` and service `127`)
//!   — and compares in constant time.
//! * The request time is `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`, or a `Date` header
//!   in RFC 1123 form if absent); it must be within [`MAX_SKEW_SECS`] of the
//!   server's clock and its date must be the scope's date.
//! * `host` must be among the signed headers (as AWS requires).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::api::ErrorCode;

/// Largest accepted difference between the request's time and ours.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

type HmacSha256 = Hmac<Sha256>;

/// Why a request is not authentic. Maps to EC2 error codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request has no Authorization header (sign it with AWS Signature Version 4)")]
    Missing,
    #[error("unsupported or malformed Authorization header '{0}'")]
    Malformed(String),
    #[error("the request has no valid X-Amz-Date (or Date) header: '{0}'")]
    BadDate(String),
    #[error(
        "request time {request} is more than {MAX_SKEW_SECS} s away from the server's time {server}"
    )]
    Skewed { request: String, server: String },
    #[error("the credential scope date {scope} is not the date of X-Amz-Date {amz_date}")]
    ScopeDate { scope: String, amz_date: String },
    #[error("the signed headers '{0}' do not include host")]
    HostNotSigned(String),
    #[error(
        "the request signature we calculated does not match the signature you provided; check your secret access key and signing method"
    )]
    Mismatch,
}

impl AuthError {
    /// The EC2 error code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::MissingAuthenticationToken,
            AuthError::Malformed(_) | AuthError::HostNotSigned(_) => ErrorCode::IncompleteSignature,
            AuthError::BadDate(_) | AuthError::ScopeDate { .. } => ErrorCode::IncompleteSignature,
            AuthError::Skewed { .. } => ErrorCode::RequestExpired,
            AuthError::Mismatch => ErrorCode::SignatureDoesNotMatch,
        }
    }
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub key_id: String,
    /// `YYYYMMDD`.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case header names, as listed (`;`-separated).
    pub signed_headers: Vec<String>,
    /// Lower-case hex.
    pub signature: String,
}

impl Authorization {
    /// `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// Parse the Authorization header value.
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let bad = || AuthError::Malformed(value.chars().take(200).collect());
    let rest = value
        .trim()
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(bad)?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').ok_or_else(bad)?;
        let slot = match k.trim() {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => return Err(bad()),
        };
        if slot.replace(v.trim()).is_some() {
            return Err(bad());
        }
    }
    let (cred, signed, sig) = (
        cred.ok_or_else(bad)?,
        signed.ok_or_else(bad)?,
        sig.ok_or_else(bad)?,
    );
    // The key id contains no '/', so the last four parts are the scope.
    let parts: Vec<&str> = cred.rsplitn(5, '/').collect();
    let [term, service, region, date, key_id] = parts[..] else {
        return Err(bad());
    };
    let date_ok = date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit());
    if term != "aws4_request" || key_id.is_empty() || !date_ok {
        return Err(bad());
    }
    if sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_ascii_lowercase).collect();
    if signed_headers.iter().any(String::is_empty) {
        return Err(bad());
    }
    Ok(Authorization {
        key_id: key_id.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: sig.to_ascii_lowercase(),
    })
}

/// What the signature covers: the request as received.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The raw path (before `?`).
    pub path: &'a str,
    /// The raw query string (after `?`, possibly empty).
    pub query: &'a str,
    /// Every header as received (any case), in order.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length: new_from_slice cannot fail.
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The signing key of `secret` for a scope.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// URI-encode as SigV4 does: unreserved characters kept, everything else
/// `%XX` (upper-case); `/` kept when `keep_slash`.
pub fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Decode `%XX` escapes (invalid escapes are kept literally). `plus_is_space`:
/// form encoding.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hexval = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hexval(b[i + 1]), hexval(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The canonical query string: every `name=value` decoded, re-encoded, sorted.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k, false), false),
                uri_encode(&percent_decode(v, false), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical URI: the path as sent, each byte outside the unreserved set
/// and `/` encoded (so an already encoded path is encoded again, as AWS does
/// for every service but S3). Empty means `/`.
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    uri_encode(path.as_bytes(), true)
}

/// The canonical request of `req` for the headers `auth` lists.
pub fn canonical_request(req: &SignedRequest<'_>, signed_headers: &[String]) -> String {
    let mut out = String::new();
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_uri(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(&sha256_hex(req.body));
    out
}

/// The string to sign.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

/// The hex signature of `req` with `secret` under `auth`'s scope at `amz_date`.
pub fn signature(
    req: &SignedRequest<'_>,
    auth: &Authorization,
    amz_date: &str,
    secret: &str,
) -> String {
    let canonical = canonical_request(req, &auth.signed_headers);
    let sts = string_to_sign(amz_date, &auth.scope(), &canonical);
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    hex(&hmac(&key, sts.as_bytes()))
}

/// Equal in constant time (`subtle`; lengths are public).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// The request time: `X-Amz-Date`, else `Date` (RFC 1123), as
/// (`YYYYMMDDTHHMMSSZ`, Unix seconds).
pub fn request_time(headers: &[(String, String)]) -> Result<(String, i64), AuthError> {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.trim())
    };
    if let Some(v) = get("x-amz-date") {
        let secs =
            parse_amz_date(v).ok_or_else(|| AuthError::BadDate(v.chars().take(64).collect()))?;
        return Ok((v.to_owned(), secs));
    }
    if let Some(v) = get("date") {
        let secs =
            parse_http_date(v).ok_or_else(|| AuthError::BadDate(v.chars().take(64).collect()))?;
        return Ok((format_amz_date(secs), secs));
    }
    Err(AuthError::BadDate(String::new()))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn checked_time(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    let ok = (0..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && h < 24
        && mi < 60
        && s < 61;
    ok.then(|| days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// `YYYYMMDDTHHMMSSZ` → Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    checked_time(
        num(&s[0..4])?,
        num(&s[4..6])?,
        num(&s[6..8])?,
        num(&s[9..11])?,
        num(&s[11..13])?,
        num(&s[13..15])?,
    )
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → Unix seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let p: Vec<&str> = s.split_whitespace().collect();
    let [_, d, mon, y, t, "GMT"] = p[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mo = MONTHS.iter().position(|m| *m == mon)? as i64 + 1;
    let tp: Vec<&str> = t.split(':').collect();
    let [h, mi, sec] = tp[..] else { return None };
    checked_time(num(y)?, mo, num(d)?, num(h)?, num(mi)?, num(sec)?)
}

/// Unix seconds → `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        r / 3600,
        r / 60 % 60,
        r % 60
    )
}

/// Unix seconds → `YYYY-MM-DDTHH:MM:SSZ` (ISO 8601, UTC).
pub fn format_iso8601(secs: i64) -> String {
    let a = format_amz_date(secs);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &a[0..4],
        &a[4..6],
        &a[6..8],
        &a[9..11],
        &a[11..13],
        &a[13..15]
    )
}

/// Check time, scope date and signature of `req` signed as `auth` with
/// `secret`, at server time `now` (Unix seconds).
pub fn verify(
    req: &SignedRequest<'_>,
    auth: &Authorization,
    secret: &str,
    now: i64,
) -> Result<(), AuthError> {
    let (amz_date, t) = request_time(req.headers)?;
    if (t - now).abs() > MAX_SKEW_SECS {
        return Err(AuthError::Skewed {
            request: amz_date,
            server: format_amz_date(now),
        });
    }
    if !amz_date.starts_with(&auth.date) {
        return Err(AuthError::ScopeDate {
            scope: auth.date.clone(),
            amz_date,
        });
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(AuthError::HostNotSigned(auth.signed_headers.join(";")));
    }
    let expected = signature(req, auth, &amz_date, secret);
    if ct_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// Found by the `ec2` fuzz target: a huge year overflowed the seconds.
    #[test]
    fn a_huge_year_is_no_date() {
        assert_eq!(checked_time(i64::MAX / 1000, 1, 1, 0, 0, 0), None);
        assert_eq!(checked_time(1970, 1, 1, 0, 0, 1), Some(1));
    }
    /// The Authorization header of AWS's `get-vanilla` example.
    const GET_VANILLA_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    /// 2015-08-30T12:36:00Z, the suite's signing time.
    const T: i64 = 1_440_938_160;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// AWS's Signature Version 4 test suite, `get-vanilla`.
    #[test]
    fn aws_suite_get_vanilla() {
        let h = headers(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ]);
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let auth = parse_authorization(GET_VANILLA_AUTH).unwrap();
        assert_eq!(auth.key_id, "AKIDEXAMPLE");
        assert_eq!(auth.scope(), "20150830/us-east-1/service/aws4_request");
        assert_eq!(
            canonical_request(&req, &auth.signed_headers),
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            string_to_sign(
                "20150830T123600Z",
                &auth.scope(),
                &canonical_request(&req, &auth.signed_headers)
            ),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        assert_eq!(verify(&req, &auth, SECRET, T), Ok(()));
        assert_eq!(verify(&req, &auth, "wrong", T), Err(AuthError::Mismatch));
    }

    /// AWS's Signature Version 4 test suite, `post-x-www-form-urlencoded`: the
    /// body's hash is part of the signature.
    #[test]
    fn aws_suite_post_x_www_form_urlencoded() {
        let h = headers(&[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ]);
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        )
        .unwrap();
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body: b"Param1=value1",
        };
        assert_eq!(
            sha256_hex(b"Param1=value1"),
            "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"
        );
        assert_eq!(verify(&req, &auth, SECRET, T), Ok(()));
        // The same signature over another body does not verify.
        let tampered = SignedRequest {
            body: b"Param1=value2",
            ..req
        };
        assert_eq!(
            verify(&tampered, &auth, SECRET, T),
            Err(AuthError::Mismatch)
        );
    }

    #[test]
    fn clock_skew_beyond_15_minutes_and_scope_date_are_refused() {
        let h = headers(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ]);
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let auth = parse_authorization(GET_VANILLA_AUTH).unwrap();
        assert!(verify(&req, &auth, SECRET, T + 900).is_ok());
        assert!(verify(&req, &auth, SECRET, T - 900).is_ok());
        let e = verify(&req, &auth, SECRET, T + 901).unwrap_err();
        assert_eq!(e.code(), "RequestExpired");
        assert!(matches!(
            verify(&req, &auth, SECRET, T - 901),
            Err(AuthError::Skewed { .. })
        ));
        let mut other_day = auth.clone();
        other_day.date = "20150831".into();
        assert!(matches!(
            verify(&req, &other_day, SECRET, T),
            Err(AuthError::ScopeDate { .. })
        ));
        let mut no_host = auth.clone();
        no_host.signed_headers = vec!["x-amz-date".into()];
        assert!(matches!(
            verify(&req, &no_host, SECRET, T),
            Err(AuthError::HostNotSigned(_))
        ));
    }

    #[test]
    fn boto2_scope_region_0_service_127_is_verified_as_declared() {
        let h = headers(&[
            ("Host", "127.0.0.1:8773"),
            ("X-Amz-Date", "20150830T123600Z"),
        ]);
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body: b"Action=DescribeSecurityGroups&Version=2014-10-01",
        };
        let mut auth = Authorization {
            key_id: "AKIAEXAMPLE".into(),
            date: "20150830".into(),
            region: "0".into(),
            service: "127".into(),
            signed_headers: vec!["host".into(), "x-amz-date".into()],
            signature: String::new(),
        };
        auth.signature = signature(&req, &auth, "20150830T123600Z", SECRET);
        let text = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20150830/0/127/aws4_request,SignedHeaders=host;x-amz-date,Signature={}",
            auth.signature
        );
        let parsed = parse_authorization(&text).unwrap();
        assert_eq!(parsed, auth);
        assert!(verify(&req, &parsed, SECRET, T).is_ok());
        let mut wrong_scope = parsed.clone();
        wrong_scope.region = "us-east-1".into();
        assert_eq!(
            verify(&req, &wrong_scope, SECRET, T),
            Err(AuthError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        for v in [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=a/b",
            "AWS AKID:sig",
            "AWS4-HMAC-SHA256 Credential=K/20150830/r/s/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=K/2015083/r/s/aws4_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "AWS4-HMAC-SHA256 Credential=K/20150830/r/s/aws4_request, SignedHeaders=host;;x, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "AWS4-HMAC-SHA256 Credential=K/20150830/r/s/aws4_request, Credential=K/20150830/r/s/aws4_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "AWS4-HMAC-SHA256 Credential=/20150830/r/s/aws4_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "AWS4-HMAC-SHA256 Credential=K/20150830/r/s/aws5_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ] {
            assert!(parse_authorization(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn dates_parse_and_format() {
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(T));
        assert_eq!(format_amz_date(T), "20150830T123600Z");
        assert_eq!(parse_http_date("Sun, 30 Aug 2015 12:36:00 GMT"), Some(T));
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
        assert_eq!(parse_amz_date("2015083OT123600Z"), None);
        assert_eq!(parse_amz_date("20150830T1236ééZ"), None);
        assert_eq!(format_amz_date(0), "19700101T000000Z");
        assert_eq!(format_amz_date(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn query_and_uri_canonical_forms() {
        // Sorted by name, re-encoded; a name without '=' has an empty value.
        assert_eq!(canonical_query("b=2&a=1&c"), "a=1&b=2&c=");
        assert_eq!(canonical_query("Param=a%20b&x=~y"), "Param=a%20b&x=~y");
        assert_eq!(canonical_query("k=a/b"), "k=a%2Fb");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/a b/"), "/a%20b/");
        assert_eq!(percent_decode("a+b%2Fc%zz%", true), b"a b/c%zz%");
        assert_eq!(percent_decode("a+b", false), b"a+b");
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }
}
