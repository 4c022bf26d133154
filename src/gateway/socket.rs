//! Socket.IO handlers: authentication at connect, the client events, and per-socket lifetime.
//!
//! Each socket joins three kinds of Socket.IO rooms: one per chat room it belongs to (for
//! messages, typing, reads, presence), `u:<address>` (everything aimed at the user, e.g.
//! membership changes) and `t:<token hash>` (so a revoked token's sockets can be found on any
//! node). Emits here are local to this node; the bus carries events between nodes.

use crate::error::{Error, ErrorBody};
use crate::service::{ChatService, Identity, SendOutcome, SendRequest};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use std::collections::HashMap;
use std::fmt;
use tokio_util::sync::CancellationToken;

/// The Socket.IO room of everything aimed at one user.
pub fn user_room(address: &crate::address::Address) -> String {
    format!("u:{}", address.to_lower_hex())
}

/// The Socket.IO room of one session token's sockets.
pub fn token_room(token_hash: &str) -> String {
    format!("t:{token_hash}")
}

/// A refused connection, rendered the way socket.io JS servers do (`message` plus `data`), so
/// that clients get `err.data = {"error": {...}}`. See `vendor/README.md`.
struct ConnectRefusal(ErrorBody);

impl fmt::Display for ConnectRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = json!({ "message": self.0.error.message, "data": self.0 });
        f.write_str(&v.to_string())
    }
}

#[derive(Deserialize)]
struct ConnectAuth {
    token: Option<serde_json::Value>,
}

/// Fires `session:end` when the token's lifetime is over, unless the socket goes first.
#[derive(Clone)]
struct ExpiryGuard(CancellationToken);

/// Set on a socket whose session ended: its events are refused while it is being closed.
#[derive(Clone)]
pub struct SessionEnded;

pub fn register(io: &SocketIo, svc: ChatService) {
    let svc_connect = svc.clone();
    let middleware = move |s: SocketRef, TryData(auth): TryData<ConnectAuth>| {
        let svc = svc.clone();
        async move {
            prepare(s, svc, auth.ok().and_then(|a| a.token))
                .await
                .map_err(|e| ConnectRefusal(e.body()))
        }
    };
    let on_connect = move |s: SocketRef| {
        let svc = svc_connect.clone();
        async move {
            metrics::gauge!("coolchat_sockets_connected").increment(1.0);
            tracing::debug!(sid = %s.id, "socket connected");
            // The presence snapshot: who among the user's room-mates is online right now. Sent
            // after the connection is confirmed (emits to an unconfirmed socket are refused);
            // live `presence` events, already subscribed, keep it current.
            let Some(who) = s.extensions.get::<Identity>() else {
                return;
            };
            match svc.online_roommates(&who).await {
                Ok(online) => {
                    for address in online {
                        let _ = s.emit("presence", &json!({ "address": address, "online": true }));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not send the presence snapshot"),
            }
        }
    };
    io.ns("/", socketioxide::handler::ConnectHandler::with(on_connect, middleware));
}

/// Everything a socket needs happens here, *before* socketioxide confirms the connection:
/// authentication, room subscriptions, event handlers and presence. Done later (in the connect
/// handler, which runs as its own task after the confirmation), an event the client emits the
/// moment it sees `connect` could arrive before its handler exists and be dropped.
async fn prepare(s: SocketRef, svc: ChatService, token: Option<serde_json::Value>) -> Result<(), Error> {
    let token = match token {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(t)) => Some(t),
        Some(_) => return Err(Error::InvalidToken),
    };
    let who = svc.authenticate(token.as_deref()).await?;
    s.extensions.insert(who.clone());
    // The user's own room first: a membership change from now on reaches this socket, so a
    // room created between this query and the join below is not missed.
    s.join([user_room(&who.address), token_room(&who.token_hash)]);
    s.join(svc.room_ids(who.address).await?);
    register_events(&s, &svc);
    // Presence last: it is the only step with an effect outside this socket, and from here on
    // the disconnect handler undoes it.
    svc.connected(&who, &s.id.to_string()).await?;

    let expiry = CancellationToken::new();
    s.extensions.insert(ExpiryGuard(expiry.clone()));
    let svc_dc = svc.clone();
    s.on_disconnect(move |s: SocketRef| {
        let svc = svc_dc.clone();
        async move {
            metrics::gauge!("coolchat_sockets_connected").decrement(1.0);
            if let Some(ExpiryGuard(t)) = s.extensions.get::<ExpiryGuard>() {
                t.cancel();
            }
            if let Some(who) = s.extensions.get::<Identity>()
                && let Err(e) = svc.disconnected(&who, &s.id.to_string()).await
            {
                tracing::warn!(error = %e, "presence update failed on disconnect");
            }
        }
    });
    let socket = s.clone();
    let left = (who.expires_at - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    let left = std::time::Duration::try_from(left).unwrap_or_default();
    tokio::spawn(async move {
        tokio::select! {
            _ = expiry.cancelled() => {}
            _ = tokio::time::sleep(left) => end_session(&socket, "token_expired"),
        }
    });
    Ok(())
}

/// Tells a socket its session is over and closes it. If its outgoing buffer is full (a slow
/// client), it is unsubscribed at once and the close is retried until it goes through, so a
/// revoked session never keeps receiving.
pub fn end_session(s: &SocketRef, code: &str) {
    s.extensions.insert(SessionEnded);
    let _ = s.emit("session:end", &json!({ "code": code }));
    force_disconnect(s.clone());
}

/// Disconnects a socket even when its outgoing buffer is full.
pub fn force_disconnect(s: SocketRef) {
    s.leave_all();
    if s.clone().disconnect().is_ok() {
        return;
    }
    tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if !s.connected() || s.clone().disconnect().is_ok() {
                return;
            }
        }
        tracing::warn!(sid = %s.id, "could not close a socket whose buffer stays full");
    });
}

/// The caller of an event, re-checked against the store: the bus may drop a revocation, the
/// store never does, so a revoked, expired or banned session can do nothing on a socket that is
/// still open.
async fn caller(s: &SocketRef, svc: &ChatService) -> Result<Identity, Error> {
    if s.extensions.get::<SessionEnded>().is_some() {
        return Err(Error::TokenRevoked);
    }
    let who = s.extensions.get::<Identity>().ok_or(Error::InvalidToken)?;
    svc.recheck(&who).await?;
    Ok(who)
}

/// `{"ok": false, "error": {...}}`
fn nack(e: &Error) -> Value {
    if matches!(e, Error::Internal(_) | Error::Backend(_)) {
        tracing::error!(error = %e, "socket event failed");
    }
    json!({ "ok": false, "error": e.body().error })
}

fn parse<T: serde::de::DeserializeOwned>(data: Result<Value, impl fmt::Display>) -> Result<T, Error> {
    let value = data.map_err(|e| Error::InvalidRequest(format!("unreadable event payload: {e}")))?;
    if !value.is_object() {
        return Err(Error::InvalidRequest("the event payload must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| Error::InvalidRequest(e.to_string()))
}

fn reply(ack: AckSender, v: Value) {
    // A client that sent no ack callback gets nothing; that is its choice.
    let _ = ack.send(&v);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingEvent {
    room_id: String,
    active: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadEvent {
    room_id: String,
    seq: i64,
}

/// Unknown fields are ignored here (unlike `message:send`): a newer client may send more
/// sync hints, and ignoring them loses nothing.
#[derive(Deserialize)]
struct SyncEvent {
    #[serde(default)]
    cursors: HashMap<String, i64>,
}

/// Every client event: parse, call the service, ack.
fn register_events(s: &SocketRef, svc: &ChatService) {
    let svc1 = svc.clone();
    s.on(
        "message:send",
        move |s: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
            let svc = svc1.clone();
            async move {
                let result = async {
                    let who = caller(&s, &svc).await?;
                    let req: SendRequest = parse(data)?;
                    if req.room_id.is_empty() {
                        return Err(Error::InvalidRequest("room_id is required".into()));
                    }
                    svc.send(&who, req).await
                }
                .await;
                reply(
                    ack,
                    match result {
                        Ok(SendOutcome::Sent { message, .. }) => json!({"ok": true, "message": message}),
                        Ok(SendOutcome::Scheduled { scheduled, .. }) => json!({"ok": true, "scheduled": scheduled}),
                        Err(e) => nack(&e),
                    },
                );
            }
        },
    );

    let svc2 = svc.clone();
    s.on(
        "sync",
        move |s: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
            let svc = svc2.clone();
            async move {
                let result = async {
                    let who = caller(&s, &svc).await?;
                    let req: SyncEvent = parse(data)?;
                    svc.sync(&who, &req.cursors).await
                }
                .await;
                reply(
                    ack,
                    match result {
                        Ok(r) => json!({"ok": true, "messages": r.messages, "has_more": r.has_more}),
                        Err(e) => nack(&e),
                    },
                );
            }
        },
    );

    let svc3 = svc.clone();
    s.on(
        "typing",
        move |s: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
            let svc = svc3.clone();
            async move {
                let result = async {
                    let who = caller(&s, &svc).await?;
                    let req: TypingEvent = parse(data)?;
                    svc.typing(&who, &req.room_id, req.active).await
                }
                .await;
                reply(
                    ack,
                    match result {
                        Ok(()) => json!({"ok": true}),
                        Err(e) => nack(&e),
                    },
                );
            }
        },
    );

    let svc4 = svc.clone();
    s.on(
        "read",
        move |s: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
            let svc = svc4.clone();
            async move {
                let result = async {
                    let who = caller(&s, &svc).await?;
                    let req: ReadEvent = parse(data)?;
                    svc.read(&who, &req.room_id, req.seq).await
                }
                .await;
                reply(
                    ack,
                    match result {
                        Ok(seq) => json!({"ok": true, "seq": seq}),
                        Err(e) => nack(&e),
                    },
                );
            }
        },
    );
}
