//! The durable store: users, sessions, rooms, memberships, messages, scheduled messages, bans,
//! media metadata.
//!
//! [`Store`] is the seam between the chat service and a database. The embedded implementation
//! is [`sqlite::SqliteStore`]; a MongoDB implementation slots in beside it. What implementations
//! must guarantee (the service relies on it and never re-checks):
//!
//! * **Visibility follows seq.** `append_message` allocates the room's next `seq` and inserts the
//!   message in one serialized step per room, so no reader ever sees `seq = N` before `N - 1`.
//! * **Idempotence lives here.** `(sender, client_msg_id)` is unique; a repeated append returns
//!   the stored message with `created = false` and consumes no `seq`.
//! * **Membership and limits are checked atomically** with the write they guard (a send from a
//!   removed member, or an add past the room limit, is refused inside the same transaction).
//!
//! Architecture invariant: only implementations of this trait talk to a database.

pub mod sqlite;

use crate::address::Address;
use crate::error::Result;
use crate::model::{Appended, AuditEntry, Ban, MediaMeta, Message, NewMessage, Room, ScheduledMessage, Session, User};
use async_trait::async_trait;
use time::OffsetDateTime;

/// A room to create (group rooms; DMs go through [`Store::get_or_create_dm`]).
#[derive(Debug, Clone)]
pub struct NewRoom {
    pub id: String,
    pub name: Option<String>,
    pub created_by: Address,
    /// Includes the creator.
    pub members: Vec<Address>,
    pub created_at: OffsetDateTime,
}

/// Limits the store enforces inside its transactions.
#[derive(Debug, Clone, Copy)]
pub struct MembershipLimits {
    pub max_room_members: usize,
    pub max_rooms_per_user: usize,
}

/// Outcome of adding a member.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    pub room: Room,
    /// False when the address was already a member (nothing changed).
    pub changed: bool,
}

/// One page of a room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// Ascending, `seq > after`.
    After(i64),
    /// Descending, `seq < before`.
    Before(i64),
}

/// Counts for `admin stats` and `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStats {
    pub users: u64,
    pub rooms: u64,
    pub messages: u64,
    pub scheduled: u64,
    pub active_sessions: u64,
    /// Messages created in the last 60 seconds.
    pub messages_last_minute: u64,
    pub bans: u64,
    pub bytes_on_disk: u64,
}

/// What an erasure removed (`admin delete-user`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ErasureReport {
    pub messages_tombstoned: u64,
    pub memberships_removed: u64,
    pub sessions_deleted: u64,
    pub scheduled_deleted: u64,
    /// Rooms the user was removed from (their members must be told).
    pub rooms: Vec<String>,
    /// Media the user uploaded: metadata removed here; the caller deletes the bytes from the
    /// media store.
    pub media_ids: Vec<String>,
}

/// The durable store. See the module docs for the guarantees every implementation gives.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs and `serve`'s banner, e.g. `sqlite (./coolchat-data/coolchat.db)`.
    fn describe(&self) -> String;

    /// Creates or upgrades schema, indexes and the like. Idempotent.
    async fn migrate(&self) -> Result<()>;

    /// Succeeds when the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Waits until every acknowledged write is durable and stops accepting writes.
    async fn close(&self) -> Result<()>;

    // --- users ---------------------------------------------------------------------------
    /// Creates the user on first sign-in; updates `last_seen_at` otherwise.
    async fn touch_user(&self, address: Address, now: OffsetDateTime) -> Result<User>;
    async fn get_user(&self, address: Address) -> Result<Option<User>>;
    async fn set_display_name(&self, address: Address, name: Option<String>) -> Result<User>;

    // --- sessions ------------------------------------------------------------------------
    async fn create_session(&self, session: Session) -> Result<()>;
    async fn get_session(&self, token_hash: &str) -> Result<Option<Session>>;
    /// Marks one session revoked. Returns false when it was unknown or already revoked.
    async fn revoke_session(&self, token_hash: &str, now: OffsetDateTime) -> Result<bool>;
    /// Revokes every live session of an address; returns the revoked token hashes.
    async fn revoke_sessions_of(&self, address: Address, now: OffsetDateTime) -> Result<Vec<String>>;

    // --- rooms ---------------------------------------------------------------------------
    async fn create_room(&self, room: NewRoom, limits: MembershipLimits) -> Result<Room>;
    /// The one DM room of a pair (created on first use). Returns `(room, created)`.
    async fn get_or_create_dm(
        &self,
        id_if_new: String,
        a: Address,
        b: Address,
        now: OffsetDateTime,
        limits: MembershipLimits,
    ) -> Result<(Room, bool)>;
    async fn get_room(&self, room_id: &str) -> Result<Option<Room>>;
    /// The rooms an address belongs to, sorted by id.
    async fn rooms_of(&self, address: Address) -> Result<Vec<Room>>;
    /// `(room id, last_seq)` of each room an address belongs to, sorted by id.
    async fn room_cursors_of(&self, address: Address) -> Result<Vec<(String, i64)>>;
    async fn is_member(&self, room_id: &str, address: Address) -> Result<bool>;
    async fn add_member(&self, room_id: &str, address: Address, limits: MembershipLimits) -> Result<MembershipChange>;
    /// Returns the room after the change and whether the address was a member.
    async fn remove_member(&self, room_id: &str, address: Address) -> Result<(Room, bool)>;

    // --- messages ------------------------------------------------------------------------
    /// Idempotent append; see the module docs. Fails with `not_member` if the sender is not a
    /// member of the room at commit time and `room_not_found` for an unknown room.
    async fn append_message(&self, message: NewMessage) -> Result<Appended>;
    async fn history(&self, room_id: &str, page: HistoryPage, limit: usize) -> Result<Vec<Message>>;
    async fn find_by_client_msg_id(&self, sender: Address, client_msg_id: &str) -> Result<Option<Message>>;
    /// Stores the highest `seq` an address has read in a room (never moves backwards).
    async fn set_read_marker(&self, room_id: &str, address: Address, seq: i64) -> Result<i64>;
    /// Every member's read marker in a room (0 for members who read nothing), by address.
    async fn read_markers(&self, room_id: &str) -> Result<Vec<(Address, i64)>>;

    // --- scheduled messages --------------------------------------------------------------
    /// Idempotent on `(sender, client_msg_id)`, like `append_message`. Returns `(scheduled,
    /// created)`; fails with `Forbidden` past `max_per_user` pending.
    async fn schedule_message(
        &self,
        message: ScheduledMessage,
        max_per_user: usize,
    ) -> Result<(ScheduledMessage, bool)>;
    async fn find_scheduled(&self, sender: Address, client_msg_id: &str) -> Result<Option<ScheduledMessage>>;
    /// Scheduled messages due at `now`, oldest first.
    async fn due_scheduled(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<ScheduledMessage>>;
    /// Appends a scheduled message (allocating its `seq` now) and removes it from the schedule,
    /// atomically. `None` if it was already delivered. A sender no longer in the room gets the
    /// entry dropped and `Err(NotMember)`.
    async fn deliver_scheduled(&self, id: &str, now: OffsetDateTime) -> Result<Option<Appended>>;

    // --- media metadata ------------------------------------------------------------------
    /// Records an uploaded media object (after its bytes are stored). Fails with
    /// `invalid_request` if the id is already taken.
    async fn put_media_meta(&self, meta: MediaMeta) -> Result<()>;
    async fn get_media_meta(&self, id: &str) -> Result<Option<MediaMeta>>;
    /// True when `address` is a member of a room holding a (non-deleted) message that carries
    /// the media id. (The uploader's own access is the service's rule, not checked here.)
    /// `append_message` records the media ids a message carries so this is an indexed lookup.
    async fn media_visible_to(&self, id: &str, address: Address) -> Result<bool>;

    // --- bans ----------------------------------------------------------------------------
    async fn get_ban(&self, address: Address) -> Result<Option<Ban>>;

    // --- operations ----------------------------------------------------------------------
    async fn stats(&self) -> Result<StoreStats>;

    // --- operator (admin) ----------------------------------------------------------------
    /// Creates or replaces the ban of `ban.address`.
    async fn put_ban(&self, ban: Ban) -> Result<()>;
    /// Removes a ban; false if there was none.
    async fn delete_ban(&self, address: Address) -> Result<bool>;
    /// Every ban (active or expired), newest first.
    async fn list_bans(&self) -> Result<Vec<Ban>>;
    /// Appends to the audit log; returns the entry's id.
    async fn append_audit(&self, entry: AuditEntry) -> Result<i64>;
    /// The newest `limit` audit entries, newest first; only those about `target` if given.
    async fn list_audit(&self, target: Option<String>, limit: usize) -> Result<Vec<AuditEntry>>;
    /// Users ordered by address, strictly after `after`.
    async fn list_users(&self, after: Option<Address>, limit: usize) -> Result<Vec<User>>;
    /// Every session of an address (live, revoked, expired), newest first.
    async fn sessions_of(&self, address: Address) -> Result<Vec<Session>>;
    /// Rooms ordered by id, strictly after `after`.
    async fn list_rooms(&self, after: Option<String>, limit: usize) -> Result<Vec<Room>>;
    async fn get_message(&self, id: &str) -> Result<Option<Message>>;
    /// Messages sent by an address (tombstones excluded), ordered by (room_id, seq), strictly
    /// after the `(room_id, seq)` position given.
    async fn messages_of(&self, address: Address, after: Option<(String, i64)>, limit: usize) -> Result<Vec<Message>>;
    /// Number of non-deleted messages sent by an address.
    async fn count_messages_of(&self, address: Address) -> Result<u64>;
    /// Pending scheduled messages of an address.
    async fn scheduled_of(&self, address: Address) -> Result<Vec<ScheduledMessage>>;
    /// Turns a message into a tombstone (empty body, no media, `deleted = true`, same seq).
    /// Returns the tombstone, or `None` for an unknown id. Idempotent.
    async fn tombstone_message(&self, id: &str) -> Result<Option<Message>>;
    /// Tombstones up to `limit` of an address's messages in one transaction; returns them.
    /// Call until it returns an empty list.
    async fn tombstone_messages_of(&self, address: Address, limit: usize) -> Result<Vec<Message>>;
    /// Erasure: tombstones every message of the address, removes its memberships, sessions,
    /// scheduled messages, read markers, media metadata and user row. Bans and audit entries stay (they are the
    /// operator's record). One transaction.
    async fn erase_user(&self, address: Address) -> Result<ErasureReport>;

    // --- control channel -----------------------------------------------------------------
    /// Appends an event (serialised `BusEvent` JSON) to the control log, for nodes in other
    /// processes that share this store (`coolchat admin` against an embedded node). Returns
    /// its id.
    async fn push_control(&self, event_json: String, now: OffsetDateTime) -> Result<i64>;
    /// Control events with id > `after`, oldest first.
    async fn control_since(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>>;
    /// The newest control id (0 when empty): where a starting node begins watching.
    async fn last_control_id(&self) -> Result<i64>;
}
