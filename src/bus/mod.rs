//! The fan-out bus: events every node must see (messages, typing, reads, presence, membership,
//! revoked sessions).
//!
//! At-most-once by nature: a subscriber that falls behind loses events, and `sync` is what makes
//! delivery whole. Nothing that must not be lost travels only on the bus. The embedded
//! implementation is [`local::LocalBus`] (an in-process broadcast); a Redis pub/sub bus joins
//! nodes.

pub mod local;

use crate::address::Address;
use crate::error::Result;
use crate::model::{Message, Room};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// Why a session ended; the `code` of the `session:end` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    LoggedOut,
    Banned,
    TokenExpired,
    Revoked,
    Shutdown,
}

impl EndReason {
    pub fn code(self) -> &'static str {
        match self {
            EndReason::LoggedOut => "logged_out",
            EndReason::Banned => "banned",
            EndReason::TokenExpired => "token_expired",
            EndReason::Revoked => "revoked",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// Everything that crosses the bus. Serializable so a networked bus can carry it unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BusEvent {
    /// A message was persisted (sent once, after commit).
    MessageCreated { message: Message },
    Typing {
        room_id: String,
        address: Address,
        active: bool,
    },
    Read {
        room_id: String,
        address: Address,
        seq: i64,
    },
    /// An address came online or went offline; `rooms` are the rooms to tell.
    Presence {
        address: Address,
        online: bool,
        rooms: Vec<String>,
    },
    /// A room changed: members added or removed, or renamed. `room` is the state after.
    RoomChanged {
        room: Room,
        added: Vec<Address>,
        removed: Vec<Address>,
    },
    /// These sessions are over; every node closes their sockets.
    SessionsEnded {
        token_hashes: Vec<String>,
        reason: EndReason,
    },
    /// Every session of this address is over (ban); every node closes its sockets.
    AddressEnded { address: Address, reason: EndReason },
    /// A message became a tombstone (operator deletion, ban purge, erasure).
    MessageDeleted { room_id: String, id: String, seq: i64 },
}

/// The bus. See the module docs.
pub trait Bus: Send + Sync + 'static {
    fn describe(&self) -> String;
    /// Publishes to every subscriber on every node. Never blocks on slow subscribers.
    fn publish(&self, event: BusEvent) -> Result<()>;
    /// A stream of every event published after this call. A subscriber that lags loses events
    /// (logged and counted), it never blocks publishers.
    fn subscribe(&self) -> BoxStream<'static, BusEvent>;
}
