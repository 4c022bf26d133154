//! Operator commands (`coolchat admin`): bans, sessions, users, rooms, messages, stats, export
//! and erasure, over the same backends the node uses.
//!
//! [`AdminService`] works with or without a running node: it writes through the [`Store`] and
//! tells live nodes through a [`Notifier`]. With the in-process bus (embedded mode) the admin
//! runs in another process than the node, so notifications go into the store's control log,
//! which every embedded node watches ([`crate::worker::run_control_watcher`]) and replays on
//! its bus within `server.control_poll_ms`. With a networked bus they are published directly.
//! Every state-changing command appends to the audit log.

use crate::address::Address;
use crate::bus::{Bus, BusEvent, EndReason};
use crate::error::{Error, Result};
use crate::media::MediaStore;
use crate::model::{self, AuditEntry, Ban, Message, Room, ScheduledMessage, User};
use crate::storage::{ErasureReport, Store, StoreStats};
use serde::Serialize;
use std::sync::Arc;
use time::OffsetDateTime;

/// How admin commands reach live sockets. See the module docs.
#[derive(Clone)]
pub enum Notifier {
    /// Publish on a bus every node subscribes to.
    Bus(Arc<dyn Bus>),
    /// Append to the store's control log (embedded nodes poll it).
    ControlLog(Arc<dyn Store>),
}

impl Notifier {
    pub async fn notify(&self, event: BusEvent) -> Result<()> {
        match self {
            Notifier::Bus(bus) => bus.publish(event),
            Notifier::ControlLog(store) => {
                let json = serde_json::to_string(&event).map_err(Error::internal)?;
                store.push_control(json, model::now_ms()).await.map(|_| ())
            }
        }
    }
}

/// What `admin ban` did, step by step, so a partial failure says exactly what happened.
#[derive(Debug, Clone, Serialize)]
pub struct BanReport {
    pub ban: Ban,
    pub sessions_revoked: usize,
    /// False if live sockets could not be told (they are still refused on their next request).
    pub sockets_notified: bool,
    pub messages_tombstoned: u64,
    pub errors: Vec<String>,
}

/// `admin users show`.
#[derive(Debug, Clone, Serialize)]
pub struct UserReport {
    pub user: User,
    pub ban: Option<Ban>,
    pub banned: bool,
    pub rooms: Vec<RoomSummary>,
    pub sessions: Vec<SessionSummary>,
    pub live_sessions: usize,
    pub messages: u64,
}

/// A room in listings.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    pub members: usize,
    pub last_seq: i64,
    #[serde(with = "model::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&Room> for RoomSummary {
    fn from(r: &Room) -> Self {
        RoomSummary {
            id: r.id.clone(),
            kind: r.kind.as_str().to_string(),
            name: r.name.clone(),
            members: r.members.len(),
            last_seq: r.last_seq,
            created_at: r.created_at,
        }
    }
}

/// A session without its secret.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    /// First 12 hex digits of the token hash: enough to tell sessions apart, useless to an attacker.
    pub id: String,
    #[serde(with = "model::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "model::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "model::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub live: bool,
}

/// `admin export`: everything stored about an address.
#[derive(Debug, Clone, Serialize)]
pub struct UserExport {
    #[serde(with = "model::rfc3339")]
    pub exported_at: OffsetDateTime,
    pub user: Option<User>,
    pub ban: Option<Ban>,
    pub sessions: Vec<SessionSummary>,
    pub rooms: Vec<Room>,
    pub messages: Vec<Message>,
    pub scheduled: Vec<ScheduledMessage>,
    pub audit: Vec<AuditEntry>,
}

/// Progress of a long operation: `(done, total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// The operator's command processor. See the module docs.
pub struct AdminService {
    store: Arc<dyn Store>,
    media: Arc<dyn MediaStore>,
    notifier: Notifier,
    actor: String,
}

const PAGE: usize = 500;

impl AdminService {
    /// `actor` is recorded in the audit log (e.g. `admin:alice@host`).
    pub fn new(store: Arc<dyn Store>, media: Arc<dyn MediaStore>, notifier: Notifier, actor: String) -> Self {
        AdminService {
            store,
            media,
            notifier,
            actor,
        }
    }

    async fn audit(&self, action: &str, target: String, detail: serde_json::Value) -> Result<()> {
        self.store
            .append_audit(AuditEntry {
                id: 0,
                at: model::now_ms(),
                actor: self.actor.clone(),
                action: action.into(),
                target,
                detail,
            })
            .await
            .map(|_| ())
    }

    /// Bans an address: ban recorded, sessions revoked, live sockets ended, optionally every
    /// message tombstoned. The ban itself is written first, so from that moment sign-in,
    /// REST and sends are refused even if a later step fails; the report lists such failures.
    pub async fn ban(
        &self,
        address: Address,
        reason: Option<String>,
        until: Option<OffsetDateTime>,
        purge: bool,
        progress: Progress<'_>,
    ) -> Result<BanReport> {
        let now = model::now_ms();
        if until.is_some_and(|u| u <= now) {
            return Err(Error::InvalidRequest("the ban would already be over".into()));
        }
        let ban = Ban {
            address,
            reason: reason.clone(),
            banned_by: self.actor.clone(),
            created_at: now,
            until,
        };
        self.store.put_ban(ban.clone()).await?;
        let mut errors = Vec::new();
        let revoked = match self.store.revoke_sessions_of(address, now).await {
            Ok(r) => r.len(),
            Err(e) => {
                errors.push(format!("revoking sessions failed: {e}"));
                0
            }
        };
        let sockets_notified = match self
            .notifier
            .notify(BusEvent::AddressEnded {
                address,
                reason: EndReason::Banned,
            })
            .await
        {
            Ok(()) => true,
            Err(e) => {
                errors.push(format!("telling live nodes failed: {e}"));
                false
            }
        };
        let mut tombstoned = 0;
        if purge {
            match self.purge_messages(address, progress).await {
                Ok(n) => tombstoned = n,
                Err(e) => errors.push(format!("purging messages failed: {e}")),
            }
        }
        let detail = serde_json::json!({
            "reason": reason, "until": until.map(model::fmt_time), "purge": purge,
            "sessions_revoked": revoked, "messages_tombstoned": tombstoned, "errors": errors,
        });
        if let Err(e) = self.audit("ban", address.to_checksum(), detail).await {
            errors.push(format!("writing the audit log failed: {e}"));
        }
        Ok(BanReport {
            ban,
            sessions_revoked: revoked,
            sockets_notified,
            messages_tombstoned: tombstoned,
            errors,
        })
    }

    /// Tombstones every message of an address in batches, telling live clients per message.
    async fn purge_messages(&self, address: Address, progress: Progress<'_>) -> Result<u64> {
        let total = self.store.count_messages_of(address).await?;
        let mut done = 0;
        progress(0, total);
        loop {
            let batch = self.store.tombstone_messages_of(address, PAGE).await?;
            if batch.is_empty() {
                return Ok(done);
            }
            for m in &batch {
                self.notifier
                    .notify(BusEvent::MessageDeleted {
                        room_id: m.room_id.clone(),
                        id: m.id.clone(),
                        seq: m.seq,
                    })
                    .await?;
            }
            done += batch.len() as u64;
            progress(done, total.max(done));
        }
    }

    /// Lifts a ban. False if there was none.
    pub async fn unban(&self, address: Address) -> Result<bool> {
        let existed = self.store.delete_ban(address).await?;
        self.audit(
            "unban",
            address.to_checksum(),
            serde_json::json!({ "existed": existed }),
        )
        .await?;
        Ok(existed)
    }

    pub async fn audit_log(&self, target: Option<String>, limit: usize) -> Result<Vec<AuditEntry>> {
        self.store.list_audit(target, limit).await
    }

    pub async fn bans(&self) -> Result<Vec<Ban>> {
        self.store.list_bans().await
    }

    pub async fn users(&self, after: Option<Address>, limit: usize) -> Result<Vec<User>> {
        self.store.list_users(after, limit).await
    }

    pub async fn user(&self, address: Address) -> Result<UserReport> {
        let user = self.store.get_user(address).await?.ok_or(Error::UserNotFound)?;
        let now = model::now_ms();
        let ban = self.store.get_ban(address).await?;
        let rooms = self.store.rooms_of(address).await?;
        let sessions = self.sessions(address, now).await?;
        Ok(UserReport {
            banned: ban.as_ref().is_some_and(|b| b.active_at(now)),
            ban,
            rooms: rooms.iter().map(RoomSummary::from).collect(),
            live_sessions: sessions.iter().filter(|s| s.live).count(),
            sessions,
            messages: self.store.count_messages_of(address).await?,
            user,
        })
    }

    async fn sessions(&self, address: Address, now: OffsetDateTime) -> Result<Vec<SessionSummary>> {
        Ok(self
            .store
            .sessions_of(address)
            .await?
            .into_iter()
            .map(|s| SessionSummary {
                id: s.token_hash.chars().take(12).collect(),
                live: s.revoked_at.is_none() && s.expires_at > now,
                created_at: s.created_at,
                expires_at: s.expires_at,
                revoked_at: s.revoked_at,
            })
            .collect())
    }

    pub async fn rooms(&self, after: Option<String>, limit: usize) -> Result<Vec<Room>> {
        self.store.list_rooms(after, limit).await
    }

    pub async fn room(&self, room_id: &str) -> Result<Room> {
        self.store.get_room(room_id).await?.ok_or(Error::RoomNotFound)
    }

    /// Removes a member from a group room, telling live clients. DM rooms are refused
    /// (`forbidden`): a DM is defined by its pair; to cut a user off, ban them.
    pub async fn remove_member(&self, room_id: &str, address: Address) -> Result<Room> {
        let (room, was_member) = self.store.remove_member(room_id, address).await?;
        if !was_member {
            return Err(Error::InvalidRequest(format!(
                "{address} is not a member of room {room_id}"
            )));
        }
        self.notifier
            .notify(BusEvent::RoomChanged {
                room: room.clone(),
                added: vec![],
                removed: vec![address],
            })
            .await?;
        self.audit(
            "remove_member",
            room_id.to_string(),
            serde_json::json!({ "address": address }),
        )
        .await?;
        Ok(room)
    }

    /// Tombstones one message (keeps its seq), telling live clients.
    pub async fn delete_message(&self, id: &str) -> Result<Message> {
        let tomb = self.store.tombstone_message(id).await?.ok_or(Error::NotFound)?;
        self.notifier
            .notify(BusEvent::MessageDeleted {
                room_id: tomb.room_id.clone(),
                id: tomb.id.clone(),
                seq: tomb.seq,
            })
            .await?;
        self.audit(
            "delete_message",
            id.to_string(),
            serde_json::json!({ "room_id": tomb.room_id, "seq": tomb.seq, "sender": tomb.sender }),
        )
        .await?;
        Ok(tomb)
    }

    /// Revokes every session of an address and ends its live sockets. Returns how many.
    pub async fn revoke_sessions(&self, address: Address) -> Result<usize> {
        let revoked = self.store.revoke_sessions_of(address, model::now_ms()).await?;
        self.notifier
            .notify(BusEvent::AddressEnded {
                address,
                reason: EndReason::Revoked,
            })
            .await?;
        self.audit(
            "revoke_sessions",
            address.to_checksum(),
            serde_json::json!({ "revoked": revoked.len() }),
        )
        .await?;
        Ok(revoked.len())
    }

    pub async fn stats(&self) -> Result<StoreStats> {
        self.store.stats().await
    }

    /// Everything stored about an address, messages paged with progress.
    pub async fn export(&self, address: Address, progress: Progress<'_>) -> Result<UserExport> {
        let now = model::now_ms();
        let total = self.store.count_messages_of(address).await?;
        let mut messages = Vec::new();
        let mut after = None;
        progress(0, total);
        loop {
            let page = self.store.messages_of(address, after.clone(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.room_id.clone(), last.seq));
            messages.extend(page);
            progress(messages.len() as u64, total.max(messages.len() as u64));
        }
        let export = UserExport {
            exported_at: now,
            user: self.store.get_user(address).await?,
            ban: self.store.get_ban(address).await?,
            sessions: self.sessions(address, now).await?,
            rooms: self.store.rooms_of(address).await?,
            messages,
            scheduled: self.store.scheduled_of(address).await?,
            audit: self.store.list_audit(Some(address.to_checksum()), 10_000).await?,
        };
        // Nothing at all stored about the address. An erased user still has their ban and audit
        // entries (the operator's record): those are exported.
        let nothing = export.user.is_none()
            && export.messages.is_empty()
            && export.rooms.is_empty()
            && export.ban.is_none()
            && export.audit.is_empty()
            && export.scheduled.is_empty();
        if nothing {
            return Err(Error::UserNotFound);
        }
        self.audit(
            "export",
            address.to_checksum(),
            serde_json::json!({ "messages": export.messages.len() }),
        )
        .await?;
        Ok(export)
    }

    /// Erases a user: sockets ended, messages tombstoned, memberships/sessions/scheduled/user
    /// row removed, rooms' members told. Bans and the audit log stay.
    pub async fn delete_user(&self, address: Address) -> Result<ErasureReport> {
        if self.store.get_user(address).await?.is_none() && self.store.rooms_of(address).await?.is_empty() {
            return Err(Error::UserNotFound);
        }
        // Messages are tombstoned by erase_user in one transaction; collect their positions
        // first so live clients can be told which ones.
        let mut deleted = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.messages_of(address, after.clone(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.room_id.clone(), last.seq));
            deleted.extend(page.into_iter().map(|m| (m.room_id, m.id, m.seq)));
        }
        let mut report = self.store.erase_user(address).await?;
        // Metadata is gone with the erasure; now the bytes. A failure here leaves an orphan file
        // that nothing references (no download can reach it) and is reported.
        let mut media_errors = Vec::new();
        for id in &report.media_ids {
            if let Err(e) = self.media.delete(id).await {
                media_errors.push(format!("{id}: {e}"));
            }
        }
        self.notifier
            .notify(BusEvent::AddressEnded {
                address,
                reason: EndReason::Revoked,
            })
            .await?;
        for (room_id, id, seq) in deleted {
            self.notifier
                .notify(BusEvent::MessageDeleted { room_id, id, seq })
                .await?;
        }
        for room_id in &report.rooms {
            if let Some(room) = self.store.get_room(room_id).await? {
                self.notifier
                    .notify(BusEvent::RoomChanged {
                        room,
                        added: vec![],
                        removed: vec![address],
                    })
                    .await?;
            }
        }
        let mut detail = serde_json::to_value(&report).map_err(Error::internal)?;
        detail["media_delete_errors"] = serde_json::json!(media_errors);
        self.audit("delete_user", address.to_checksum(), detail).await?;
        if !media_errors.is_empty() {
            return Err(Error::Backend(format!(
                "user erased, but some media files could not be deleted: {}",
                media_errors.join(", ")
            )));
        }
        report.media_ids.sort();
        Ok(report)
    }
}
