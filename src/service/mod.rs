//! The chat service: every rule of CoolChat, over the backend traits.
//!
//! Sign-in, sessions, rooms and membership, sending (idempotence, limits, scheduling), history,
//! `sync`, typing, read receipts, presence and media attachments. The gateway calls these methods and renders the
//! result; the admin CLI and the worker call the same methods. What must not live here: any
//! HTTP, Socket.IO or database type. What must not live anywhere else: a rule.

mod types;

pub use types::*;

use crate::address::Address;
use crate::auth::{siwe, token};
use crate::bus::{Bus, BusEvent, EndReason};
use crate::config::{Config, PublicOrigin};
use crate::ephemeral::{EphemeralState, RateLimit};
use crate::error::{Error, Result, SiweRefusal};
use crate::media::{ByteStream, MediaStore};
use crate::model::{self, MediaMeta, MediaRef, Message, NewMessage, Room, RoomKind, ScheduledMessage, Session};
use crate::queue::{SendJob, SendQueue};
use crate::storage::{HistoryPage, MembershipLimits, NewRoom, Store};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The backends a node runs on, as chosen by the configuration.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub state: Arc<dyn EphemeralState>,
    pub bus: Arc<dyn Bus>,
    pub queue: Arc<dyn SendQueue>,
    pub media: Arc<dyn MediaStore>,
}

/// The chat service. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

struct Inner {
    backends: Backends,
    config: Config,
    origin: PublicOrigin,
}

impl ChatService {
    /// `origin` is the public origin SIWE messages must name (resolved after binding).
    pub fn new(backends: Backends, config: Config, origin: PublicOrigin) -> Self {
        ChatService {
            inner: Arc::new(Inner {
                backends,
                config,
                origin,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    pub fn origin(&self) -> &PublicOrigin {
        &self.inner.origin
    }

    fn store(&self) -> &dyn Store {
        self.inner.backends.store.as_ref()
    }

    fn state(&self) -> &dyn EphemeralState {
        self.inner.backends.state.as_ref()
    }

    fn bus(&self) -> &dyn Bus {
        self.inner.backends.bus.as_ref()
    }

    fn limits(&self) -> MembershipLimits {
        let l = &self.inner.config.limits;
        MembershipLimits {
            max_room_members: l.max_room_members,
            max_rooms_per_user: l.max_rooms_per_user,
        }
    }

    // --- sign-in and sessions ------------------------------------------------------------

    /// Issues a single-use SIWE nonce. `client_key` (the peer IP) is rate-limited.
    pub async fn issue_nonce(&self, client_key: &str) -> Result<NonceGrant> {
        let auth = &self.inner.config.auth;
        let limit = RateLimit {
            per_second: f64::from(auth.nonce_requests_per_minute) / 60.0,
            burst: auth.nonce_requests_per_minute,
        };
        if let Some(wait) = self.state().rate_limit(&format!("nonce:{client_key}"), limit).await? {
            return Err(Error::RateLimited { retry_after: wait });
        }
        let nonce = token::new_nonce();
        let ttl = Duration::from_secs(auth.nonce_ttl_secs);
        self.state().put_nonce(&nonce, ttl).await?;
        Ok(NonceGrant {
            nonce,
            expires_at: model::now_ms() + ttl,
            domain: self.inner.origin.domain.clone(),
            uri: self.inner.origin.origin.clone(),
            chain_id: auth.allowed_chain_ids.first().copied().unwrap_or(1),
        })
    }

    /// Verifies a signed SIWE message and opens a session.
    pub async fn sign_in(&self, message: &str, signature: &str) -> Result<SignedIn> {
        let auth = &self.inner.config.auth;
        let now = model::now_ms();
        let expect = siwe::SiweExpectations {
            domain: &self.inner.origin.domain,
            uri_origin: &self.inner.origin.origin,
            allowed_chain_ids: &auth.allowed_chain_ids,
            issued_at_skew: Some(Duration::from_secs(auth.issued_at_skew_secs)),
            max_message_bytes: auth.max_message_bytes,
        };
        // Everything that can be checked offline is checked before the nonce is spent, so a
        // bad attempt does not burn a good client's nonce.
        let verified = siwe::verify(message, signature, &expect, now)?;
        self.check_not_banned(verified.address, now).await?;
        if !self.state().take_nonce(&verified.nonce).await? {
            return Err(Error::Siwe(SiweRefusal::Nonce));
        }
        self.store().touch_user(verified.address, now).await?;
        let token = token::new_token();
        let expires_at = now + Duration::from_secs(auth.session_ttl_secs);
        self.store()
            .create_session(Session {
                token_hash: token::hash_token(&token),
                address: verified.address,
                created_at: now,
                expires_at,
                revoked_at: None,
            })
            .await?;
        metrics::counter!("coolchat_sign_ins_total").increment(1);
        tracing::info!(address = %verified.address, "signed in");
        Ok(SignedIn {
            token,
            address: verified.address,
            expires_at,
        })
    }

    /// Resolves a bearer token to the caller, refusing unknown, revoked, expired and banned.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Identity> {
        let bearer = bearer
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::MissingToken)?;
        if !token::looks_like_token(bearer) {
            return Err(Error::InvalidToken);
        }
        self.session_identity(token::hash_token(bearer)).await
    }

    /// Re-validates an identity resolved earlier (e.g. at socket connect).
    pub async fn recheck(&self, who: &Identity) -> Result<()> {
        self.session_identity(who.token_hash.clone()).await.map(|_| ())
    }

    /// The live session behind a token hash, refusing unknown, revoked, expired and banned.
    async fn session_identity(&self, token_hash: String) -> Result<Identity> {
        let session = self
            .store()
            .get_session(&token_hash)
            .await?
            .ok_or(Error::InvalidToken)?;
        let now = model::now_ms();
        if session.revoked_at.is_some() {
            return Err(Error::TokenRevoked);
        }
        if session.expires_at <= now {
            return Err(Error::TokenExpired);
        }
        self.check_not_banned(session.address, now).await?;
        Ok(Identity {
            address: session.address,
            token_hash,
            expires_at: session.expires_at,
        })
    }

    async fn check_not_banned(&self, address: Address, now: OffsetDateTime) -> Result<()> {
        match self.store().get_ban(address).await? {
            Some(ban) if ban.active_at(now) => Err(Error::Banned {
                until: ban.until.map(model::fmt_time),
            }),
            _ => Ok(()),
        }
    }

    /// Revokes the caller's token and ends its live sockets on every node.
    pub async fn logout(&self, who: &Identity) -> Result<()> {
        self.store().revoke_session(&who.token_hash, model::now_ms()).await?;
        self.bus().publish(BusEvent::SessionsEnded {
            token_hashes: vec![who.token_hash.clone()],
            reason: EndReason::LoggedOut,
        })?;
        Ok(())
    }

    // --- users ---------------------------------------------------------------------------

    pub async fn user(&self, address: Address) -> Result<UserView> {
        let user = self.store().get_user(address).await?.ok_or(Error::UserNotFound)?;
        let online = self.state().is_online(address).await?;
        Ok(UserView { user, online })
    }

    pub async fn set_display_name(&self, who: &Identity, name: Option<String>) -> Result<UserView> {
        let max = self.inner.config.limits.max_display_name_chars;
        let name = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        if let Some(n) = &name {
            if n.chars().count() > max {
                return Err(Error::InvalidRequest(format!(
                    "display_name is longer than {max} characters"
                )));
            }
            if n.chars().any(char::is_control) {
                return Err(Error::InvalidRequest(
                    "display_name must not contain control characters".into(),
                ));
            }
        }
        let user = self.store().set_display_name(who.address, name).await?;
        let online = self.state().is_online(who.address).await?;
        Ok(UserView { user, online })
    }

    // --- rooms ---------------------------------------------------------------------------

    pub async fn create_room(&self, who: &Identity, name: &str, members: &[Address]) -> Result<Room> {
        let name = name.trim();
        let max = self.inner.config.limits.max_room_name_chars;
        if name.is_empty() || name.chars().count() > max || name.chars().any(char::is_control) {
            return Err(Error::InvalidRequest(format!(
                "name must be 1 to {max} printable characters"
            )));
        }
        let mut all: BTreeSet<Address> = members.iter().copied().collect();
        all.insert(who.address);
        let room = self
            .store()
            .create_room(
                NewRoom {
                    id: model::new_id(),
                    name: Some(name.to_string()),
                    created_by: who.address,
                    members: all.into_iter().collect(),
                    created_at: model::now_ms(),
                },
                self.limits(),
            )
            .await?;
        self.bus().publish(BusEvent::RoomChanged {
            room: room.clone(),
            added: room.members.clone(),
            removed: vec![],
        })?;
        Ok(room)
    }

    /// The DM room between the caller and `other`; `(room, created)`.
    pub async fn open_dm(&self, who: &Identity, other: Address) -> Result<(Room, bool)> {
        if other == who.address {
            return Err(Error::InvalidRequest("a direct message needs another address".into()));
        }
        let (room, created) = self
            .store()
            .get_or_create_dm(model::new_id(), who.address, other, model::now_ms(), self.limits())
            .await?;
        if created {
            self.bus().publish(BusEvent::RoomChanged {
                room: room.clone(),
                added: room.members.clone(),
                removed: vec![],
            })?;
        }
        Ok((room, created))
    }

    pub async fn rooms(&self, who: &Identity) -> Result<Vec<Room>> {
        self.store().rooms_of(who.address).await
    }

    /// A room the caller belongs to.
    pub async fn room(&self, who: &Identity, room_id: &str) -> Result<Room> {
        let room = self.store().get_room(room_id).await?.ok_or(Error::RoomNotFound)?;
        if !room.members.contains(&who.address) {
            return Err(Error::NotMember);
        }
        Ok(room)
    }

    /// Any member may add members to a group room.
    pub async fn add_member(&self, who: &Identity, room_id: &str, address: Address) -> Result<Room> {
        let room = self.room(who, room_id).await?;
        if room.kind == RoomKind::Dm {
            return Err(Error::Forbidden(
                "members of a direct-message room cannot change".into(),
            ));
        }
        let change = self.store().add_member(room_id, address, self.limits()).await?;
        if change.changed {
            self.bus().publish(BusEvent::RoomChanged {
                room: change.room.clone(),
                added: vec![address],
                removed: vec![],
            })?;
        }
        Ok(change.room)
    }

    /// A member may remove themselves; the creator may remove anyone.
    pub async fn remove_member(&self, who: &Identity, room_id: &str, address: Address) -> Result<Room> {
        let room = self.room(who, room_id).await?;
        if room.kind == RoomKind::Dm {
            return Err(Error::Forbidden(
                "members of a direct-message room cannot change".into(),
            ));
        }
        if address != who.address && room.created_by != who.address {
            return Err(Error::Forbidden(
                "only the room's creator may remove other members".into(),
            ));
        }
        let (room, was_member) = self.store().remove_member(room_id, address).await?;
        if !was_member {
            return Err(Error::InvalidRequest(format!("{address} is not a member of this room")));
        }
        self.bus().publish(BusEvent::RoomChanged {
            room: room.clone(),
            added: vec![],
            removed: vec![address],
        })?;
        Ok(room)
    }

    /// Room ids of an address (for subscribing a new socket).
    pub async fn room_ids(&self, address: Address) -> Result<Vec<String>> {
        Ok(self
            .store()
            .room_cursors_of(address)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    // --- messages ------------------------------------------------------------------------

    /// One page of history. `limit` is clamped to the configured maximum.
    pub async fn history(
        &self,
        who: &Identity,
        room_id: &str,
        page: HistoryPage,
        limit: Option<usize>,
    ) -> Result<HistoryResult> {
        self.room(who, room_id).await?;
        let max = self.inner.config.limits.max_history_page;
        let limit = limit.unwrap_or(50).clamp(1, max);
        let mut messages = self.store().history(room_id, page, limit + 1).await?;
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        Ok(HistoryResult { messages, has_more })
    }

    /// Sends (or schedules) a message. Idempotent on `(sender, client_msg_id)`: a retry must
    /// carry the same room, body and media ids (in the same order).
    ///
    /// `media` holds ids of objects the sender uploaded ([`Self::upload_media`]); a message with
    /// media may have an empty body. Media cannot be scheduled (`deliver_at`).
    pub async fn send(&self, who: &Identity, req: SendRequest) -> Result<SendOutcome> {
        let limits = &self.inner.config.limits;
        if req.client_msg_id.is_empty() || req.client_msg_id.len() > limits.max_client_msg_id_bytes {
            return Err(Error::InvalidRequest(format!(
                "client_msg_id must be 1 to {} bytes",
                limits.max_client_msg_id_bytes
            )));
        }
        if req.body.len() > limits.max_body_bytes {
            return Err(Error::PayloadTooLarge {
                what: "message body",
                limit: limits.max_body_bytes,
            });
        }
        if req.media.len() > MAX_MEDIA_PER_MESSAGE {
            return Err(Error::InvalidRequest(format!(
                "a message carries at most {MAX_MEDIA_PER_MESSAGE} media"
            )));
        }
        if req.media.iter().collect::<BTreeSet<_>>().len() != req.media.len() {
            return Err(Error::InvalidRequest("media lists the same id twice".into()));
        }
        if req.body.trim().is_empty() && req.media.is_empty() {
            return Err(Error::InvalidRequest("body must not be empty".into()));
        }
        // A retry is answered from the store before any limit applies: retrying must never be
        // what gets a client rate-limited, and never creates a second message.
        if let Some(existing) = self
            .store()
            .find_by_client_msg_id(who.address, &req.client_msg_id)
            .await?
        {
            // A tombstone answers its retries as itself (its body is gone, so no comparison).
            if !existing.deleted
                && (existing.room_id != req.room_id
                    || existing.body != req.body
                    || !existing.media.iter().map(|m| &m.id).eq(req.media.iter()))
            {
                return Err(Error::IdempotencyConflict);
            }
            return Ok(SendOutcome::Sent {
                message: existing,
                created: false,
            });
        }
        let now = model::now_ms();
        let deliver_at = match &req.deliver_at {
            None => None,
            Some(text) => {
                let at = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| Error::InvalidRequest("deliver_at must be an RFC 3339 time".into()))?;
                if at > now + Duration::from_secs(limits.max_schedule_ahead_secs) {
                    return Err(Error::InvalidRequest(format!(
                        "deliver_at is more than {} seconds ahead",
                        limits.max_schedule_ahead_secs
                    )));
                }
                // A time already past is simply sent now.
                (at > now).then_some(at)
            }
        };
        if deliver_at.is_some() && !req.media.is_empty() {
            return Err(Error::InvalidRequest("a message with media cannot be scheduled".into()));
        }
        if let Some(existing) = self.store().find_scheduled(who.address, &req.client_msg_id).await? {
            if existing.room_id != req.room_id || existing.body != req.body || !req.media.is_empty() {
                return Err(Error::IdempotencyConflict);
            }
            return Ok(SendOutcome::Scheduled {
                scheduled: existing,
                created: false,
            });
        }
        let media = self.attachable_media(who, &req.media).await?;
        let limit = RateLimit {
            per_second: limits.messages_per_second,
            burst: limits.message_burst,
        };
        if let Some(wait) = self
            .state()
            .rate_limit(&format!("send:{}", who.address.to_lower_hex()), limit)
            .await?
        {
            metrics::counter!("coolchat_rate_limited_total", "what" => "send").increment(1);
            return Err(Error::RateLimited { retry_after: wait });
        }
        if let Some(at) = deliver_at {
            let scheduled = ScheduledMessage {
                id: model::new_id(),
                room_id: req.room_id,
                sender: who.address,
                body: req.body,
                client_msg_id: req.client_msg_id,
                deliver_at: model::from_unix_ms(model::to_unix_ms(at)),
                created_at: now,
            };
            let (scheduled, created) = self
                .store()
                .schedule_message(scheduled, limits.max_scheduled_per_user)
                .await?;
            return Ok(SendOutcome::Scheduled { scheduled, created });
        }
        let job = SendJob::Append(NewMessage {
            id: model::new_id(),
            room_id: req.room_id,
            sender: who.address,
            body: req.body,
            client_msg_id: req.client_msg_id,
            created_at: now,
            media,
        });
        let appended = self
            .inner
            .backends
            .queue
            .submit(job)
            .await?
            .ok_or_else(|| Error::internal("append returned nothing"))?;
        Ok(SendOutcome::Sent {
            message: appended.message,
            created: appended.created,
        })
    }

    /// The references of media ids a sender may attach: each must exist and have been uploaded
    /// by the sender (anything else is `invalid_request`, whether it exists or not).
    async fn attachable_media(&self, who: &Identity, ids: &[String]) -> Result<Vec<MediaRef>> {
        let mut refs = Vec::with_capacity(ids.len());
        for id in ids {
            match self.store().get_media_meta(id).await? {
                Some(meta) if meta.uploader == who.address => refs.push(meta.to_ref()),
                _ => {
                    return Err(Error::InvalidRequest(format!(
                        "media {id} does not exist or was not uploaded by the sender"
                    )));
                }
            }
        }
        Ok(refs)
    }

    // --- media ---------------------------------------------------------------------------

    /// Stores an upload: `body` is streamed into the media store (never held whole), refused
    /// past `media.max_upload_bytes` (up front when `declared_len` says so, otherwise while
    /// streaming; nothing is stored either way), then its metadata is recorded.
    ///
    /// `content_type` must be a bare `type/subtype` media type (token characters, at most
    /// [`MAX_CONTENT_TYPE_BYTES`]); it is stored lower-cased. `name` is an optional file name
    /// (at most [`MAX_MEDIA_NAME_BYTES`], no control characters).
    pub async fn upload_media(
        &self,
        who: &Identity,
        content_type: &str,
        name: Option<String>,
        body: ByteStream,
        declared_len: Option<u64>,
    ) -> Result<MediaRef> {
        let content_type = normalize_media_type(content_type)?;
        let name = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        if let Some(n) = &name
            && (n.len() > MAX_MEDIA_NAME_BYTES || n.chars().any(char::is_control))
        {
            return Err(Error::InvalidRequest(format!(
                "name must be at most {MAX_MEDIA_NAME_BYTES} bytes without control characters"
            )));
        }
        let max = self.inner.config.media.max_upload_bytes;
        let too_large = Error::PayloadTooLarge {
            what: "upload",
            limit: usize::try_from(max).unwrap_or(usize::MAX),
        };
        if declared_len.is_some_and(|n| n > max) {
            return Err(too_large);
        }
        let per_minute = self.inner.config.media.uploads_per_minute;
        let limit = RateLimit {
            per_second: f64::from(per_minute) / 60.0,
            burst: per_minute,
        };
        if let Some(wait) = self
            .state()
            .rate_limit(&format!("upload:{}", who.address.to_lower_hex()), limit)
            .await?
        {
            metrics::counter!("coolchat_rate_limited_total", "what" => "upload").increment(1);
            return Err(Error::RateLimited { retry_after: wait });
        }
        let id = model::new_id();
        let media = &self.inner.backends.media;
        let size = media.put(&id, body, max).await?;
        let meta = MediaMeta {
            id: id.clone(),
            uploader: who.address,
            content_type,
            size,
            name,
            created_at: model::now_ms(),
        };
        if let Err(e) = self.store().put_media_meta(meta.clone()).await {
            // Bytes without metadata are unreachable; do not leave them behind.
            if let Err(del) = media.delete(&id).await {
                tracing::warn!(media_id = %id, error = %del, "could not remove the bytes of a failed upload");
            }
            return Err(e);
        }
        metrics::counter!("coolchat_media_uploads_total").increment(1);
        metrics::counter!("coolchat_media_upload_bytes_total").increment(size);
        Ok(meta.to_ref())
    }

    /// A media object's metadata and bytes, for its uploader or a member of a room holding a
    /// (non-deleted) message that carries it. Anything else, unknown ids included, is
    /// `not_found`, so existence never leaks.
    pub async fn download_media(&self, who: &Identity, id: &str) -> Result<MediaDownload> {
        let meta = self.store().get_media_meta(id).await?.ok_or(Error::NotFound)?;
        if meta.uploader != who.address && !self.store().media_visible_to(id, who.address).await? {
            return Err(Error::NotFound);
        }
        let Some((body, size)) = self.inner.backends.media.get(id).await? else {
            tracing::warn!(media_id = %id, "media metadata without bytes");
            return Err(Error::NotFound);
        };
        Ok(MediaDownload { meta, body, size })
    }

    /// Everything after the caller's cursors, across all their rooms, paged.
    pub async fn sync(&self, who: &Identity, cursors: &HashMap<String, i64>) -> Result<SyncResult> {
        let page = self.inner.config.limits.max_sync_page;
        let rooms = self.store().room_cursors_of(who.address).await?;
        let mut messages: Vec<Message> = Vec::new();
        let mut has_more = false;
        for (room_id, last_seq) in rooms {
            let after = cursors.get(&room_id).copied().unwrap_or(0).max(0);
            if last_seq <= after {
                continue;
            }
            let room_left = page - messages.len();
            if room_left == 0 {
                has_more = true;
                break;
            }
            let batch = self
                .store()
                .history(&room_id, HistoryPage::After(after), room_left)
                .await?;
            let last_in_batch = batch.last().map_or(after, |m| m.seq);
            messages.extend(batch);
            if last_in_batch < last_seq {
                has_more = true;
                break;
            }
        }
        Ok(SyncResult { messages, has_more })
    }

    // --- signals -------------------------------------------------------------------------

    async fn check_signal_rate(&self, who: &Identity) -> Result<()> {
        let l = &self.inner.config.limits;
        let limit = RateLimit {
            per_second: l.signals_per_second,
            burst: (l.signals_per_second * 2.0).ceil() as u32,
        };
        match self
            .state()
            .rate_limit(&format!("signal:{}", who.address.to_lower_hex()), limit)
            .await?
        {
            Some(wait) => Err(Error::RateLimited { retry_after: wait }),
            None => Ok(()),
        }
    }

    pub async fn typing(&self, who: &Identity, room_id: &str, active: bool) -> Result<()> {
        self.check_signal_rate(who).await?;
        if !self.store().is_member(room_id, who.address).await? {
            // Distinguish unknown rooms for a clear error; membership is the common case.
            return Err(match self.store().get_room(room_id).await? {
                None => Error::RoomNotFound,
                Some(_) => Error::NotMember,
            });
        }
        self.bus().publish(BusEvent::Typing {
            room_id: room_id.to_string(),
            address: who.address,
            active,
        })
    }

    /// Records a read receipt; returns the stored marker (never decreases).
    pub async fn read(&self, who: &Identity, room_id: &str, seq: i64) -> Result<i64> {
        self.check_signal_rate(who).await?;
        let room = self.room(who, room_id).await?;
        if seq < 0 || seq > room.last_seq {
            return Err(Error::InvalidRequest(format!(
                "seq must be between 0 and the room's last_seq ({})",
                room.last_seq
            )));
        }
        let stored = self.store().set_read_marker(room_id, who.address, seq).await?;
        if stored == seq {
            self.bus().publish(BusEvent::Read {
                room_id: room_id.to_string(),
                address: who.address,
                seq,
            })?;
        }
        Ok(stored)
    }

    /// Every member's read marker in a room the caller belongs to: what `read` events carried,
    /// for a client that was offline when they were sent.
    pub async fn read_markers(&self, who: &Identity, room_id: &str) -> Result<Vec<ReadMarker>> {
        self.room(who, room_id).await?;
        Ok(self
            .store()
            .read_markers(room_id)
            .await?
            .into_iter()
            .map(|(address, seq)| ReadMarker { address, seq })
            .collect())
    }

    // --- presence ------------------------------------------------------------------------

    /// A socket of `who` connected. Refuses past the per-user socket limit.
    pub async fn connected(&self, who: &Identity, connection_id: &str) -> Result<()> {
        let max = self.inner.config.limits.max_sockets_per_user;
        if self.state().presence_connect(who.address, connection_id, max).await? {
            let rooms = self.room_ids(who.address).await?;
            self.bus().publish(BusEvent::Presence {
                address: who.address,
                online: true,
                rooms,
            })?;
        }
        Ok(())
    }

    /// Room-mates of the caller who are online now (at most `limits.presence_snapshot_max`
    /// room-mates are considered), so a new socket starts with a correct presence picture; live
    /// `presence` events keep it current from then on.
    pub async fn online_roommates(&self, who: &Identity) -> Result<Vec<Address>> {
        let max = self.inner.config.limits.presence_snapshot_max;
        let mut mates = BTreeSet::new();
        'rooms: for room in self.store().rooms_of(who.address).await? {
            for m in room.members {
                if m != who.address {
                    mates.insert(m);
                    if mates.len() >= max {
                        break 'rooms;
                    }
                }
            }
        }
        let mates: Vec<Address> = mates.into_iter().collect();
        self.state().online_among(&mates).await
    }

    pub async fn disconnected(&self, who: &Identity, connection_id: &str) -> Result<()> {
        if self.state().presence_disconnect(who.address, connection_id).await? {
            let rooms = self.room_ids(who.address).await?;
            self.bus().publish(BusEvent::Presence {
                address: who.address,
                online: false,
                rooms,
            })?;
        }
        Ok(())
    }

    // --- operations ----------------------------------------------------------------------

    /// Live figures for `/metrics` (online users, sends in flight).
    pub async fn live_gauges(&self) -> Result<(u64, u64)> {
        Ok((self.state().online_count().await?, self.inner.backends.queue.depth()))
    }

    /// Pings every backend; the first failure names the backend.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<()>)> {
        let b = &self.inner.backends;
        vec![
            ("storage", b.store.ping().await),
            ("cache", b.state.ping().await),
            ("queue", b.queue.ping().await),
            ("media", b.media.ping().await),
        ]
    }
}

/// A bare `type/subtype` media type (RFC 6838 restricted names), lower-cased.
fn normalize_media_type(raw: &str) -> Result<String> {
    let raw = raw.trim();
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match raw.split_once('/') {
        Some((ty, sub)) if raw.len() <= MAX_CONTENT_TYPE_BYTES && token(ty) && token(sub) => {
            Ok(raw.to_ascii_lowercase())
        }
        _ => Err(Error::InvalidRequest(format!(
            "Content-Type must be a media type `type/subtype` of at most {MAX_CONTENT_TYPE_BYTES} bytes, without parameters"
        ))),
    }
}
