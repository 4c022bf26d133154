//! Requests and results of the chat service, with their wire shapes.

use crate::address::Address;
use crate::model::{Message, ScheduledMessage, User, rfc3339};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The authenticated caller of a request or socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub address: Address,
    pub token_hash: String,
    pub expires_at: OffsetDateTime,
}

/// Answer to `GET /auth/nonce`.
#[derive(Debug, Clone, Serialize)]
pub struct NonceGrant {
    pub nonce: String,
    #[serde(with = "rfc3339")]
    pub expires_at: OffsetDateTime,
    pub domain: String,
    pub uri: String,
    pub chain_id: u64,
}

/// Answer to `POST /auth/verify`.
#[derive(Debug, Clone, Serialize)]
pub struct SignedIn {
    pub token: String,
    pub address: Address,
    #[serde(with = "rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A user with live presence.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    #[serde(flatten)]
    pub user: User,
    pub online: bool,
}

/// `message:send` / `POST .../messages`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    #[serde(default)]
    pub room_id: String,
    pub body: String,
    pub client_msg_id: String,
    #[serde(default)]
    pub deliver_at: Option<String>,
}

/// What a send did.
#[derive(Debug, Clone)]
pub enum SendOutcome {
    Sent { message: Message, created: bool },
    Scheduled { scheduled: ScheduledMessage, created: bool },
}

/// A page of history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryResult {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// A page of `sync`.
#[derive(Debug, Clone, Serialize)]
pub struct SyncResult {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// One member's read position in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadMarker {
    pub address: Address,
    pub seq: i64,
}
