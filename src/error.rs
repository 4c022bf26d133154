//! The one error type of the library, and how it renders to clients.
//!
//! Every failure a client can see has a stable snake_case `code` (listed in `docs/PROTOCOL.md`),
//! an HTTP status, and a human message. REST and Socket.IO render the same [`ErrorBody`]. Backend
//! failures are folded into [`Error::Backend`] (503) or [`Error::Internal`] (500) here, so no
//! database or broker type ever leaks above the storage layer.

use serde::Serialize;
use std::time::Duration;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a Sign-In with Ethereum attempt was refused. One code each, so clients and operators can
/// tell a clock problem from an attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SiweRefusal {
    #[error("the message's domain is not this node's")]
    Domain,
    #[error("the message's URI is not this node's origin")]
    Uri,
    #[error("the message's chain id is not accepted by this node")]
    Chain,
    #[error("the message has expired")]
    Expired,
    #[error("the message is not valid yet")]
    NotYetValid,
    #[error("the message's issued-at time is too far from the server's clock")]
    IssuedAt,
    #[error("the nonce is unknown, expired or already used")]
    Nonce,
    #[error("the signature does not match the message's address")]
    Signature,
}

impl SiweRefusal {
    pub fn code(self) -> &'static str {
        match self {
            SiweRefusal::Domain => "siwe_domain_mismatch",
            SiweRefusal::Uri => "siwe_uri_mismatch",
            SiweRefusal::Chain => "siwe_chain_not_allowed",
            SiweRefusal::Expired => "siwe_expired",
            SiweRefusal::NotYetValid => "siwe_not_yet_valid",
            SiweRefusal::IssuedAt => "siwe_issued_at_skew",
            SiweRefusal::Nonce => "siwe_invalid_nonce",
            SiweRefusal::Signature => "siwe_invalid_signature",
        }
    }
}

/// Every error the library returns. Variants are grouped by what the client should do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad JSON, wrong types, missing fields, invalid values.
    #[error("{0}")]
    InvalidRequest(String),
    /// An Ethereum address that does not parse.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// A SIWE message that does not parse as EIP-4361.
    #[error("malformed SIWE message: {0}")]
    SiweMalformed(String),
    /// A signature that is not `0x` + 130 hex digits. Reported with the same code as a wrong
    /// signature (`siwe_invalid_signature`, 401) but a message that says what is malformed.
    #[error("{0}")]
    SiweSignatureShape(&'static str),
    /// A well-formed SIWE message that this node refuses.
    #[error("{0}")]
    Siwe(SiweRefusal),
    /// No bearer token was presented.
    #[error("authentication required")]
    MissingToken,
    /// The token is unknown (never issued, or erased).
    #[error("invalid token")]
    InvalidToken,
    /// The token was revoked by logout or an operator.
    #[error("the session was revoked")]
    TokenRevoked,
    /// The token's lifetime is over.
    #[error("the session has expired")]
    TokenExpired,
    /// The address is banned (until the given time, if any).
    #[error("this address is banned{}", until.as_ref().map(|u| format!(" until {u}")).unwrap_or_default())]
    Banned { until: Option<String> },
    /// The caller is not a member of the room.
    #[error("not a member of this room")]
    NotMember,
    /// The caller may not do this (e.g. add members to a DM).
    #[error("{0}")]
    Forbidden(String),
    #[error("room not found")]
    RoomNotFound,
    #[error("user not found")]
    UserNotFound,
    #[error("not found")]
    NotFound,
    /// The same `client_msg_id` was reused for a different message.
    #[error("client_msg_id was already used for a different message")]
    IdempotencyConflict,
    /// The room has reached its configured member limit.
    #[error("the room is full ({0} members at most)")]
    RoomFull(usize),
    /// The user already holds the configured number of live sockets.
    #[error("too many live connections (at most {0})")]
    TooManyConnections(usize),
    /// A size limit was exceeded (what, limit in bytes or items).
    #[error("{what} is too large (limit {limit})")]
    PayloadTooLarge { what: &'static str, limit: usize },
    /// A rate limit was hit; retry after the given delay.
    #[error("rate limited, retry in {}s", retry_after.as_secs_f64().ceil().max(1.0))]
    RateLimited { retry_after: Duration },
    /// The node is shedding load (a bounded queue is full).
    #[error("the server is overloaded, retry later")]
    Overloaded,
    /// A backend (database, queue, cache) failed or is unreachable.
    #[error("backend unavailable: {0}")]
    Backend(String),
    /// The node is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A bug or an impossible state. Logged with details; the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::InvalidAddress(_) => "invalid_address",
            Error::SiweMalformed(_) => "siwe_malformed",
            Error::Siwe(r) => r.code(),
            Error::SiweSignatureShape(_) => SiweRefusal::Signature.code(),
            Error::MissingToken => "missing_token",
            Error::InvalidToken => "invalid_token",
            Error::TokenRevoked => "token_revoked",
            Error::TokenExpired => "token_expired",
            Error::Banned { .. } => "banned",
            Error::NotMember => "not_member",
            Error::Forbidden(_) => "forbidden",
            Error::RoomNotFound => "room_not_found",
            Error::UserNotFound => "user_not_found",
            Error::NotFound => "not_found",
            Error::IdempotencyConflict => "idempotency_conflict",
            Error::RoomFull(_) => "room_full",
            Error::TooManyConnections(_) => "too_many_connections",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::RateLimited { .. } => "rate_limited",
            Error::Overloaded => "overloaded",
            Error::Backend(_) => "backend_unavailable",
            Error::ShuttingDown => "shutting_down",
            Error::Internal(_) => "internal",
        }
    }

    /// The HTTP status REST answers with.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidRequest(_) | Error::InvalidAddress(_) | Error::SiweMalformed(_) => 400,
            Error::Siwe(_)
            | Error::SiweSignatureShape(_)
            | Error::MissingToken
            | Error::InvalidToken
            | Error::TokenRevoked
            | Error::TokenExpired => 401,
            Error::Banned { .. } | Error::NotMember | Error::Forbidden(_) => 403,
            Error::RoomNotFound | Error::UserNotFound | Error::NotFound => 404,
            Error::IdempotencyConflict | Error::RoomFull(_) => 409,
            Error::PayloadTooLarge { .. } => 413,
            Error::RateLimited { .. } | Error::TooManyConnections(_) => 429,
            Error::Internal(_) => 500,
            Error::Overloaded | Error::Backend(_) | Error::ShuttingDown => 503,
        }
    }

    /// Seconds for a `Retry-After` header, where one applies.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after } => Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            Error::Overloaded | Error::ShuttingDown => Some(1),
            _ => None,
        }
    }

    /// What the client sees. Internal details stay in the logs.
    pub fn body(&self) -> ErrorBody {
        let message = match self {
            Error::Internal(_) => "internal error".to_string(),
            Error::Backend(_) => "a backend is unavailable, retry later".to_string(),
            other => other.to_string(),
        };
        ErrorBody {
            error: ErrorObject {
                code: self.code().to_string(),
                message,
            },
        }
    }

    /// Shorthand for a storage/broker failure.
    pub fn backend(e: impl std::fmt::Display) -> Self {
        Error::Backend(e.to_string())
    }

    /// Shorthand for a bug.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}

/// `{"error": {"code", "message"}}`, the v1 error envelope.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// The inner object of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorObject {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_and_statuses_fit() {
        let all = [
            Error::InvalidRequest("x".into()),
            Error::Siwe(SiweRefusal::Nonce),
            Error::Banned { until: None },
            Error::RateLimited {
                retry_after: Duration::from_millis(1500),
            },
            Error::Backend("db down".into()),
            Error::Internal("secret detail".into()),
        ];
        for e in &all {
            assert!(
                e.code().chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                e.code()
            );
        }
        assert_eq!(all[1].status(), 401);
        assert_eq!(all[2].status(), 403);
        assert_eq!(all[3].retry_after_secs(), Some(2));
        assert_eq!(all[5].body().error.message, "internal error");
        assert!(!all[4].body().error.message.contains("db down"));
    }
}
