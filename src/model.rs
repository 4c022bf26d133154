//! The data the whole system talks about: users, rooms, messages, sessions, bans.
//!
//! These are plain values with their wire (JSON) shape; they carry no behaviour and know no
//! backend. Storage implementations map them to rows/documents; the gateway serialises them as
//! the v1 protocol says.

use crate::address::Address;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// RFC 3339 UTC timestamps on the wire.
pub mod rfc3339 {
    pub use time::serde::rfc3339::*;
}

/// Renders a time as the protocol's RFC 3339 UTC string.
pub fn fmt_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Current time truncated to milliseconds, so that what is stored round-trips exactly.
pub fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    from_unix_ms(to_unix_ms(now))
}

pub fn to_unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A new opaque id: time-ordered (UUIDv7) so ids sort roughly by creation, hex without dashes.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A user as others see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub address: Address,
    pub display_name: Option<String>,
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "rfc3339::option", default)]
    pub last_seen_at: Option<OffsetDateTime>,
}

/// Group room or direct-message room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Group,
    Dm,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Group => "group",
            RoomKind::Dm => "dm",
        }
    }
}

/// A room with its members and the seq of its latest message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub id: String,
    pub kind: RoomKind,
    pub name: Option<String>,
    pub members: Vec<Address>,
    pub last_seq: i64,
    pub created_by: Address,
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Reference to a stored media object attached to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    pub id: String,
    pub content_type: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
}

/// What the durable store keeps about an uploaded media object (the bytes live in the
/// [`MediaStore`](crate::media::MediaStore)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaMeta {
    pub id: String,
    pub uploader: Address,
    pub content_type: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
}

impl MediaMeta {
    /// The reference a message carries.
    pub fn to_ref(&self) -> MediaRef {
        MediaRef {
            id: self.id.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            name: self.name.clone(),
        }
    }
}

/// A persisted message. `seq` is gap-free per room; `id` is globally unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub room_id: String,
    pub seq: i64,
    pub sender: Address,
    pub body: String,
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    pub client_msg_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub media: Vec<MediaRef>,
    /// A tombstone: the message was deleted by an operator (or its sender erased). It keeps its
    /// `seq` so the room's sequence stays gap-free; `body` is empty and `media` gone.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub deleted: bool,
}

/// What the send pipeline asks the store to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub id: String,
    pub room_id: String,
    pub sender: Address,
    pub body: String,
    pub client_msg_id: String,
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default)]
    pub media: Vec<MediaRef>,
}

/// The result of an idempotent append: the message, and whether this call created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub message: Message,
    pub created: bool,
}

/// A message accepted for later delivery (`deliver_at`). It gets its `seq` when delivered, so
/// that visibility still follows seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledMessage {
    pub id: String,
    pub room_id: String,
    pub sender: Address,
    pub body: String,
    pub client_msg_id: String,
    #[serde(with = "rfc3339")]
    pub deliver_at: OffsetDateTime,
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A sign-in session. Only the SHA-256 of the token is ever stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token_hash: String,
    pub address: Address,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// An operator ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub address: Address,
    pub reason: Option<String>,
    pub banned_by: String,
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "rfc3339::option", default)]
    pub until: Option<OffsetDateTime>,
}

impl Ban {
    pub fn active_at(&self, now: OffsetDateTime) -> bool {
        self.until.is_none_or(|u| u > now)
    }
}

/// One line of the operator audit log: who did what to whom, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store (0 when appending).
    pub id: i64,
    #[serde(with = "rfc3339")]
    pub at: OffsetDateTime,
    /// Who acted, e.g. `admin:root@host`.
    pub actor: String,
    /// e.g. `ban`, `unban`, `delete_message`, `revoke_sessions`, `remove_member`, `delete_user`.
    pub action: String,
    /// The address, room or message acted on.
    pub target: String,
    /// Free-form details (reason, until, counts).
    pub detail: serde_json::Value,
}
