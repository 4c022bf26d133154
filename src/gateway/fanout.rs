//! Turns bus events into Socket.IO emits on this node.
//!
//! One task per node reads the bus in order and emits to local sockets only (the bus is what
//! crosses nodes). Each event is serialised once and handed to every target socket; a socket
//! whose outgoing buffer (`limits.socket_buffer_packets`) is full is too slow to keep up and is
//! disconnected rather than allowed to grow memory. Its client reconnects and calls `sync`.

use super::reorder::Resequencer;
use super::socket::{end_session, force_disconnect, token_room, user_room};
use crate::bus::BusEvent;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::{SocketError, SocketIo};
use std::time::{Duration, Instant};

/// How long a message may wait for an earlier `seq` of its room (see [`Resequencer`]).
const MAX_HOLD: Duration = Duration::from_millis(50);
/// Most messages held per room.
const MAX_HELD: usize = 1024;

pub async fn run(io: SocketIo, mut events: BoxStream<'static, BusEvent>) {
    let mut order = Resequencer::new(MAX_HOLD, MAX_HELD);
    let mut flush = tokio::time::interval(MAX_HOLD / 2);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(BusEvent::MessageCreated { message }) => {
                    for m in order.push(message, Instant::now()) {
                        deliver(io.to(m.room_id.clone()), "message", &m);
                    }
                }
                Some(event) => dispatch(&io, event).await,
                None => return,
            },
            _ = flush.tick() => {
                for m in order.flush_due(Instant::now()) {
                    deliver(io.to(m.room_id.clone()), "message", &m);
                }
            }
        }
    }
}

/// Emits `event` with `payload` to every socket `target` selects, disconnecting slow ones.
fn deliver<T: Serialize>(target: BroadcastOperators, event: &str, payload: &T) {
    let raw: Box<RawValue> = match serde_json::value::to_raw_value(payload) {
        Ok(raw) => raw,
        Err(e) => {
            tracing::error!(error = %e, event, "cannot serialise an event");
            return;
        }
    };
    for socket in target.sockets() {
        emit_or_drop(socket, event, &raw);
    }
}

fn emit_or_drop(socket: SocketRef, event: &str, raw: &RawValue) {
    match socket.emit(event, raw) {
        Ok(()) => {}
        Err(socketioxide::SendError::Socket(SocketError::InternalChannelFull)) => {
            metrics::counter!("coolchat_slow_sockets_dropped_total").increment(1);
            tracing::info!(sid = %socket.id, "socket too slow (outgoing buffer full): disconnecting");
            force_disconnect(socket);
        }
        Err(_) => {} // closed meanwhile
    }
}

async fn dispatch(io: &SocketIo, event: BusEvent) {
    match event {
        BusEvent::MessageCreated { message } => {
            deliver(io.to(message.room_id.clone()), "message", &message);
        }
        BusEvent::Typing {
            room_id,
            address,
            active,
        } => {
            let payload = json!({"room_id": room_id, "address": address, "active": active});
            deliver(io.to(room_id).except(user_room(&address)), "typing", &payload);
        }
        BusEvent::Read { room_id, address, seq } => {
            let payload = json!({"room_id": room_id, "address": address, "seq": seq});
            deliver(io.to(room_id), "read", &payload);
        }
        BusEvent::Presence { address, online, rooms } => {
            // `to([])` would mean everyone: a user in no room has nobody to tell.
            if !rooms.is_empty() {
                let payload = json!({"address": address, "online": online});
                deliver(io.to(rooms).except(user_room(&address)), "presence", &payload);
            }
        }
        BusEvent::RoomChanged { room, added, removed } => {
            for address in &added {
                if let Err(e) = io.to(user_room(address)).join(room.id.clone()).await {
                    tracing::warn!(error = %e, "could not subscribe sockets to a room");
                }
            }
            for address in &removed {
                if let Err(e) = io.to(user_room(address)).leave(room.id.clone()).await {
                    tracing::warn!(error = %e, "could not unsubscribe sockets from a room");
                }
            }
            let payload = json!({ "room": room });
            let mut targets: Vec<String> = removed.iter().map(user_room).collect();
            targets.push(room.id.clone());
            deliver(io.to(targets), "room", &payload);
        }
        BusEvent::SessionsEnded { token_hashes, reason } => {
            for hash in token_hashes {
                for socket in io.to(token_room(&hash)).sockets() {
                    end_session(&socket, reason.code());
                }
            }
        }
        BusEvent::AddressEnded { address, reason } => {
            for socket in io.to(user_room(&address)).sockets() {
                end_session(&socket, reason.code());
            }
        }
        BusEvent::MessageDeleted { room_id, id, seq } => {
            let payload = json!({"room_id": room_id, "id": id, "seq": seq});
            deliver(io.to(room_id), "message:deleted", &payload);
        }
    }
}
