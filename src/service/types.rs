//! Requests and results of the chat service, with their wire shapes.

use crate::address::Address;
use crate::media::ByteStream;
use crate::model::MediaMeta;
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

/// `message:send` / `POST .../messages`: the message, and the ids of media the sender uploaded
/// (at most [`MAX_MEDIA_PER_MESSAGE`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    #[serde(default)]
    pub room_id: String,
    pub body: String,
    pub client_msg_id: String,
    #[serde(default)]
    pub deliver_at: Option<String>,
    #[serde(default)]
    pub media: Vec<String>,
}

/// At most this many attachments per message.
pub const MAX_MEDIA_PER_MESSAGE: usize = 10;

/// Longest media type accepted on upload (`type/subtype`), in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 127;

/// Longest file name kept with an upload, in bytes.
pub const MAX_MEDIA_NAME_BYTES: usize = 255;

/// A media object being served: its metadata and its bytes.
pub struct MediaDownload {
    pub meta: MediaMeta,
    pub body: ByteStream,
    /// The stored size (what `Content-Length` says).
    pub size: u64,
}

impl std::fmt::Debug for MediaDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaDownload")
            .field("meta", &self.meta)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
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
