//! Turns bus events into Socket.IO emits on this node.
//!
//! One task per node reads the bus in order and emits to local sockets only. A socket whose
//! outgoing buffer is full misses that event (bounded memory); its client sees the `seq` gap
//! and calls `sync`, which is the protocol's delivery promise.

use super::socket::{token_room, user_room};
use crate::bus::BusEvent;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::json;
use socketioxide::SocketIo;

pub async fn run(io: SocketIo, mut events: BoxStream<'static, BusEvent>) {
    while let Some(event) = events.next().await {
        if let Err(e) = dispatch(&io, event).await {
            tracing::debug!(error = %e, "fan-out emit failed for some sockets");
            metrics::counter!("coolchat_fanout_errors_total").increment(1);
        }
    }
}

async fn dispatch(io: &SocketIo, event: BusEvent) -> Result<(), socketioxide::BroadcastError> {
    match event {
        BusEvent::MessageCreated { message } => {
            io.to(message.room_id.clone()).emit("message", &message).await?;
        }
        BusEvent::Typing { room_id, address, active } => {
            io.to(room_id.clone())
                .except(user_room(&address))
                .emit("typing", &json!({"room_id": room_id, "address": address, "active": active}))
                .await?;
        }
        BusEvent::Read { room_id, address, seq } => {
            io.to(room_id.clone()).emit("read", &json!({"room_id": room_id, "address": address, "seq": seq})).await?;
        }
        BusEvent::Presence { address, online, rooms } => {
            // `to([])` would mean everyone: a user in no room has nobody to tell.
            if !rooms.is_empty() {
                io.to(rooms).except(user_room(&address)).emit("presence", &json!({"address": address, "online": online})).await?;
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
            io.to(room.id.clone()).emit("room", &payload).await?;
            if !removed.is_empty() {
                let rooms: Vec<String> = removed.iter().map(user_room).collect();
                io.to(rooms).emit("room", &payload).await?;
            }
        }
        BusEvent::SessionsEnded { token_hashes, reason } => {
            for hash in token_hashes {
                end_sockets(io, token_room(&hash), reason.code()).await;
            }
        }
        BusEvent::AddressEnded { address, reason } => {
            end_sockets(io, user_room(&address), reason.code()).await;
        }
        BusEvent::MessageDeleted { room_id, id, seq } => {
            io.to(room_id.clone()).emit("message:deleted", &json!({"room_id": room_id, "id": id, "seq": seq})).await?;
        }
    }
    Ok(())
}

/// `session:end`, then disconnect, for every local socket in `room`.
async fn end_sockets(io: &SocketIo, room: String, code: &str) {
    let _ = io.to(room.clone()).emit("session:end", &json!({ "code": code })).await;
    if let Err(e) = io.to(room).disconnect().await {
        tracing::debug!(error = %e, "disconnect after session end failed for some sockets");
    }
}
