//! The one list of error codes of sgswitch: EC2's own (what the model, the
//! `sgswitch` CLI and the EC2 Query API answer, spelled as EC2 spells them)
//! and the few of the management protocol (a malformed or oversized request
//! line, a busy or failed daemon).
//!
//! Every front door uses these: the model returns them in
//! [`crate::Ec2Error`], the management API carries them in its errors, the CLI
//! prints them as `Code: message`, the EC2 Query API puts them in its
//! `<Code>` element and derives the HTTP status from them. No code is spelled
//! as a string anywhere else.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An error code, serialised as its EC2 spelling (e.g. `InvalidGroup.NotFound`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    RulesPerSecurityGroupLimitExceeded,
    #[serde(rename = "InvalidPermission.Duplicate")]
    InvalidPermissionDuplicate,
    #[serde(rename = "InvalidPermission.NotFound")]
    InvalidPermissionNotFound,
    #[serde(rename = "InvalidGroup.NotFound")]
    InvalidGroupNotFound,
    #[serde(rename = "InvalidGroup.Duplicate")]
    InvalidGroupDuplicate,
    #[serde(rename = "InvalidGroup.InUse")]
    InvalidGroupInUse,
    #[serde(rename = "InvalidGroup.Reserved")]
    InvalidGroupReserved,
    InvalidParameterValue,
    MissingParameter,
    InvalidParameterCombination,
    #[serde(rename = "InvalidInstanceID.NotFound")]
    InvalidInstanceIdNotFound,
    #[serde(rename = "InvalidAMIID.NotFound")]
    InvalidAmiIdNotFound,
    /// `register-image` of an AMI that is already registered.
    #[serde(rename = "InvalidAMIID.Duplicate")]
    InvalidAmiIdDuplicate,
    InsufficientInstanceCapacity,
    /// A `ClientToken` reused with other parameters.
    IdempotentParameterMismatch,
    /// An EC2 Query API action sgswitch does not serve.
    InvalidAction,
    /// Unknown access key.
    AuthFailure,
    /// No `Authorization` header.
    MissingAuthenticationToken,
    /// A malformed `Authorization` header or request date.
    IncompleteSignature,
    /// The request's time is more than 15 minutes off.
    RequestExpired,
    SignatureDoesNotMatch,
    /// A `DryRun` request that would have succeeded (HTTP 412).
    DryRunOperation,
    /// A `DryRun` request that would not have succeeded (HTTP 403).
    UnauthorizedOperation,
    /// A security group rule id (`sgr-`) the group does not have.
    #[serde(rename = "InvalidSecurityGroupRuleId.NotFound")]
    InvalidSecurityGroupRuleIdNotFound,
    /// A resource id of no known kind or resource (tags).
    #[serde(rename = "InvalidID")]
    InvalidId,
    /// A `NextToken` this daemon did not hand out.
    InvalidPaginationToken,
    /// Management protocol: the request line is not a valid request.
    MalformedRequest,
    /// Management protocol: the request line is too long.
    RequestTooLarge,
    /// Too many connections, or the daemon is shutting down.
    ServiceUnavailable,
    /// The daemon failed (store write, data plane); nothing was changed.
    InternalError,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::RulesPerSecurityGroupLimitExceeded,
        ErrorCode::InvalidPermissionDuplicate,
        ErrorCode::InvalidPermissionNotFound,
        ErrorCode::InvalidGroupNotFound,
        ErrorCode::InvalidGroupDuplicate,
        ErrorCode::InvalidGroupInUse,
        ErrorCode::InvalidGroupReserved,
        ErrorCode::InvalidParameterValue,
        ErrorCode::MissingParameter,
        ErrorCode::InvalidParameterCombination,
        ErrorCode::InvalidInstanceIdNotFound,
        ErrorCode::InvalidAmiIdNotFound,
        ErrorCode::InvalidAmiIdDuplicate,
        ErrorCode::InsufficientInstanceCapacity,
        ErrorCode::IdempotentParameterMismatch,
        ErrorCode::InvalidAction,
        ErrorCode::AuthFailure,
        ErrorCode::MissingAuthenticationToken,
        ErrorCode::IncompleteSignature,
        ErrorCode::RequestExpired,
        ErrorCode::SignatureDoesNotMatch,
        ErrorCode::DryRunOperation,
        ErrorCode::UnauthorizedOperation,
        ErrorCode::InvalidSecurityGroupRuleIdNotFound,
        ErrorCode::InvalidId,
        ErrorCode::InvalidPaginationToken,
        ErrorCode::MalformedRequest,
        ErrorCode::RequestTooLarge,
        ErrorCode::ServiceUnavailable,
        ErrorCode::InternalError,
    ];

    /// The code as EC2 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RulesPerSecurityGroupLimitExceeded => "RulesPerSecurityGroupLimitExceeded",
            ErrorCode::InvalidPermissionDuplicate => "InvalidPermission.Duplicate",
            ErrorCode::InvalidPermissionNotFound => "InvalidPermission.NotFound",
            ErrorCode::InvalidGroupNotFound => "InvalidGroup.NotFound",
            ErrorCode::InvalidGroupDuplicate => "InvalidGroup.Duplicate",
            ErrorCode::InvalidGroupInUse => "InvalidGroup.InUse",
            ErrorCode::InvalidGroupReserved => "InvalidGroup.Reserved",
            ErrorCode::InvalidParameterValue => "InvalidParameterValue",
            ErrorCode::MissingParameter => "MissingParameter",
            ErrorCode::InvalidParameterCombination => "InvalidParameterCombination",
            ErrorCode::InvalidInstanceIdNotFound => "InvalidInstanceID.NotFound",
            ErrorCode::InvalidAmiIdNotFound => "InvalidAMIID.NotFound",
            ErrorCode::InvalidAmiIdDuplicate => "InvalidAMIID.Duplicate",
            ErrorCode::InsufficientInstanceCapacity => "InsufficientInstanceCapacity",
            ErrorCode::IdempotentParameterMismatch => "IdempotentParameterMismatch",
            ErrorCode::InvalidAction => "InvalidAction",
            ErrorCode::AuthFailure => "AuthFailure",
            ErrorCode::MissingAuthenticationToken => "MissingAuthenticationToken",
            ErrorCode::IncompleteSignature => "IncompleteSignature",
            ErrorCode::RequestExpired => "RequestExpired",
            ErrorCode::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            ErrorCode::DryRunOperation => "DryRunOperation",
            ErrorCode::UnauthorizedOperation => "UnauthorizedOperation",
            ErrorCode::InvalidSecurityGroupRuleIdNotFound => "InvalidSecurityGroupRuleId.NotFound",
            ErrorCode::InvalidId => "InvalidID",
            ErrorCode::InvalidPaginationToken => "InvalidPaginationToken",
            ErrorCode::MalformedRequest => "MalformedRequest",
            ErrorCode::RequestTooLarge => "RequestTooLarge",
            ErrorCode::ServiceUnavailable => "ServiceUnavailable",
            ErrorCode::InternalError => "InternalError",
        }
    }

    /// The HTTP status of the EC2 Query API for this code, as AWS sends it:
    /// 401 for an unknown key (EC2's `AuthFailure`), 403 for a signature that
    /// does not match, a missing signature (AWS's common errors) and an
    /// unauthorized dry run, 412 for a dry run that would have succeeded, 500
    /// for the daemon's own failures, 503 when busy, else 400 (a malformed
    /// signature, an expired request and every parameter error among them).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::AuthFailure => 401,
            ErrorCode::SignatureDoesNotMatch
            | ErrorCode::MissingAuthenticationToken
            | ErrorCode::UnauthorizedOperation => 403,
            ErrorCode::DryRunOperation => 412,
            ErrorCode::InternalError => 500,
            ErrorCode::ServiceUnavailable => 503,
            _ => 400,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lets tests and callers compare with the spelling: `err.code == "MissingParameter"`.
impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_as_str_agree_for_every_code() {
        for c in ErrorCode::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), c);
        }
    }
}
