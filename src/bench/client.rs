//! One simulated user's Socket.IO connection, as one task: handshake, readiness, sending on
//! schedule, receiving and accounting. Per connection there is one task, one websocket with a
//! 4 KiB read buffer, and a few small vectors; everything shared is atomics, a histogram lock
//! and the sender's ledger row.

use super::error::BenchError;
use super::net::Ws;
use super::plan::ClientPlan;
use super::sio::{self, EioPacket, SioPacket};
use super::stats::{Counters, Ledger, RoomTrack, Seen, Stamp, Stats, message_body, parse_stamp};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Where the run is. Sockets send only while `Running`; `Closing` makes every client hang up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Setup,
    Running,
    Draining,
    Closing,
}

/// A room of the run, with how many of its members are connected right now.
pub struct RoomInfo {
    pub id: String,
    pub connected: AtomicU32,
}

/// The rooms of the run, once created.
#[derive(Default)]
pub struct RoomTable {
    pub rooms: Vec<RoomInfo>,
    pub index: HashMap<String, u32>,
}

/// Everything client tasks share.
pub struct RunCtx {
    pub net: super::net::Net,
    pub users: Vec<super::login::Identity>,
    pub stats: Stats,
    pub ledger: Ledger,
    /// Set once, after room setup and before any socket connects.
    pub table: std::sync::OnceLock<RoomTable>,
    pub phase: watch::Sender<Phase>,
    pub payload_bytes: usize,
    pub padding: String,
    /// Prefix of every `client_msg_id`, unique per run.
    pub run_id: String,
    pub ack_timeout: Duration,
    pub handshake_timeout: Duration,
}

impl RunCtx {
    pub fn rooms(&self) -> &[RoomInfo] {
        self.table.get().map(|t| t.rooms.as_slice()).unwrap_or(&[])
    }

    pub fn room_of(&self, id: &str) -> Option<u32> {
        self.table.get().and_then(|t| t.index.get(id).copied())
    }
}

/// How long to wait for the `sync` ack that proves the node has subscribed the socket to its
/// rooms, before asking again (a `sync` sent before the handlers exist gets no answer).
const READY_RETRY: Duration = Duration::from_secs(1);
const READY_ATTEMPTS: u32 = 15;

/// Next text frame; pings and binary frames are skipped (tungstenite answers websocket pings).
async fn next_text(ws: &mut Ws) -> Result<Utf8Bytes, BenchError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(_))) | None => {
                return Err(BenchError::transport("ws_closed", "the node closed the socket"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(BenchError::transport("ws_read", e)),
        }
    }
}

async fn send_text(ws: &mut Ws, text: String) -> Result<(), BenchError> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| BenchError::transport("ws_write", e))
}

/// Connects user `idx` with `token`: websocket, Engine.IO open, Socket.IO CONNECT with
/// `{"token"}`, then `sync` until acked (the node has joined the socket to its rooms by then).
/// Returns the socket and the next free ack id.
pub async fn handshake(ctx: &RunCtx, idx: usize, token: &str) -> Result<(Ws, u64), BenchError> {
    let mut ws = ctx.net.connect_ws(idx).await?;
    loop {
        let frame = next_text(&mut ws).await?;
        match sio::parse(&frame) {
            Ok(EioPacket::Open(_)) => break,
            Ok(EioPacket::Ping(_)) => send_text(&mut ws, sio::PONG.into()).await?,
            _ => {
                return Err(BenchError::Protocol(format!(
                    "expected the Engine.IO open packet, got `{}`",
                    clip(&frame)
                )));
            }
        }
    }
    let connect = sio::encode_connect(&json!({ "token": token })).map_err(|e| BenchError::Protocol(e.to_string()))?;
    send_text(&mut ws, connect).await?;
    loop {
        let frame = next_text(&mut ws).await?;
        match sio::parse(&frame) {
            Ok(EioPacket::Message(SioPacket::Connect { nsp: "/", .. })) => break,
            Ok(EioPacket::Message(SioPacket::ConnectError { data, .. })) => {
                return Err(BenchError::ConnectRefused(sio::connect_error_code(data)));
            }
            Ok(EioPacket::Ping(_)) => send_text(&mut ws, sio::PONG.into()).await?,
            Ok(EioPacket::Close) => return Err(BenchError::transport("ws_closed", "Engine.IO close during connect")),
            Ok(_) => {}
            Err(e) => return Err(BenchError::Protocol(e.to_string())),
        }
    }
    let mut next_ack = 1u64;
    for _ in 0..READY_ATTEMPTS {
        let id = next_ack;
        next_ack += 1;
        let frame = sio::encode_event(Some(id), "sync", &json!({"cursors": {}}))
            .map_err(|e| BenchError::Protocol(e.to_string()))?;
        send_text(&mut ws, frame).await?;
        let deadline = Instant::now() + READY_RETRY;
        loop {
            let frame = match tokio::time::timeout_at(deadline, next_text(&mut ws)).await {
                Ok(f) => f?,
                Err(_) => break,
            };
            match sio::parse(&frame) {
                // Any of our sync acks proves readiness.
                Ok(EioPacket::Message(SioPacket::Ack { id: got, .. })) if got < next_ack => return Ok((ws, next_ack)),
                Ok(EioPacket::Ping(_)) => send_text(&mut ws, sio::PONG.into()).await?,
                Ok(EioPacket::Message(SioPacket::Event { payload, .. }))
                    if sio::event_name(payload).as_deref() == Some("session:end") =>
                {
                    return Err(BenchError::ConnectRefused(format!("session_end:{}", end_code(payload))));
                }
                Ok(EioPacket::Close | EioPacket::Message(SioPacket::Disconnect { .. })) => {
                    return Err(BenchError::transport(
                        "ws_closed",
                        "closed while waiting for the sync ack",
                    ));
                }
                _ => {}
            }
        }
    }
    Err(BenchError::Timeout("sync_ack"))
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn end_code(payload: &str) -> String {
    #[derive(Deserialize)]
    struct End {
        code: String,
    }
    sio::event_arg::<End>(payload)
        .map(|e| e.code)
        .unwrap_or_else(|_| "unknown".into())
}

#[derive(Serialize)]
struct SendPayload<'a> {
    room_id: &'a str,
    body: &'a str,
    client_msg_id: &'a str,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    room_id: Cow<'a, str>,
    seq: i64,
    #[serde(borrow)]
    body: Cow<'a, str>,
}

#[derive(Deserialize)]
struct AckBody {
    ok: bool,
    #[serde(default)]
    error: Option<AckError>,
}

#[derive(Deserialize)]
struct AckError {
    code: String,
}

/// A send waiting for its ack.
struct Pending {
    ack_id: u64,
    q: u64,
    sent_us: u64,
}

/// What a frame asks of the connection.
enum After {
    Nothing,
    Pong,
    /// The node ended the session (`session:end`, Engine.IO close, Socket.IO disconnect).
    Ended,
}

/// The receiving half's state: per-room tracking and the acks in flight.
struct Conn {
    idx: usize,
    tracks: Vec<(u32, RoomTrack)>,
    pending: Vec<Pending>,
    send_room: Option<u32>,
}

impl Conn {
    fn on_frame(&mut self, ctx: &RunCtx, frame: &str) -> After {
        let stats = &ctx.stats;
        match sio::parse(frame) {
            Ok(EioPacket::Ping(_)) => After::Pong,
            Ok(EioPacket::Message(SioPacket::Event { payload, .. })) => match sio::event_name(payload).as_deref() {
                Some("message") => {
                    self.on_message(ctx, payload);
                    After::Nothing
                }
                Some("session:end") => {
                    stats.error(&format!("session_end:{}", end_code(payload)));
                    After::Ended
                }
                _ => After::Nothing,
            },
            Ok(EioPacket::Message(SioPacket::Ack { id, payload, .. })) => {
                self.on_ack(ctx, id, payload);
                After::Nothing
            }
            Ok(EioPacket::Close | EioPacket::Message(SioPacket::Disconnect { .. })) => After::Ended,
            Ok(_) => After::Nothing,
            Err(_) => {
                stats.error("protocol:bad_frame");
                After::Nothing
            }
        }
    }

    fn on_message(&mut self, ctx: &RunCtx, payload: &str) {
        let stats = &ctx.stats;
        let now = stats.now_us();
        let Ok(m) = sio::event_arg::<Incoming<'_>>(payload) else {
            stats.error("protocol:bad_message");
            return;
        };
        let Some(room) = ctx.room_of(m.room_id.as_ref()) else {
            Counters::bump(&stats.c.foreign);
            return;
        };
        let Some(stamp) = parse_stamp(&m.body) else {
            Counters::bump(&stats.c.foreign);
            return;
        };
        let track = match self.tracks.iter_mut().find(|(r, _)| *r == room) {
            Some((_, t)) => t,
            None => {
                // A room we were not told about (membership changed): track it anyway.
                self.tracks.push((room, RoomTrack::default()));
                match self.tracks.last_mut() {
                    Some((_, t)) => t,
                    None => return,
                }
            }
        };
        match track.observe(m.seq) {
            Seen::First { out_of_order } => {
                Counters::bump(&stats.c.delivered);
                if out_of_order {
                    Counters::bump(&stats.c.out_of_order);
                }
                let sender = usize::try_from(stamp.s).unwrap_or(usize::MAX);
                if !ctx.ledger.delivered(sender, stamp.q) {
                    Counters::bump(&stats.c.foreign);
                }
                stats.latency.record_us(now.saturating_sub(stamp.t));
            }
            Seen::Duplicate => Counters::bump(&stats.c.duplicated),
            Seen::Invalid => stats.error("protocol:bad_seq"),
        }
    }

    fn on_ack(&mut self, ctx: &RunCtx, id: u64, payload: &str) {
        let Some(pos) = self.pending.iter().position(|p| p.ack_id == id) else {
            // A late `sync` ack from the handshake, or an ack we already gave up on.
            return;
        };
        let p = self.pending.swap_remove(pos);
        let stats = &ctx.stats;
        stats.c.pending_acks.fetch_sub(1, Ordering::Relaxed);
        match sio::ack_arg::<AckBody>(payload) {
            Ok(AckBody { ok: true, .. }) => {
                Counters::bump(&stats.c.acked);
                stats.ack.record_us(stats.now_us().saturating_sub(p.sent_us));
                let expected = self
                    .send_room
                    .and_then(|r| ctx.rooms().get(r as usize))
                    .map(|r| r.connected.load(Ordering::Relaxed))
                    .unwrap_or(0);
                stats.c.expected.fetch_add(u64::from(expected), Ordering::Relaxed);
                ctx.ledger.acked(self.idx, p.q, expected);
            }
            Ok(AckBody { ok: false, error }) => {
                Counters::bump(&stats.c.nacked);
                let code = error.map(|e| e.code).unwrap_or_else(|| "none".into());
                stats.error(&format!("ack:{code}"));
                ctx.ledger.failed(self.idx, p.q);
            }
            Err(_) => {
                stats.error("protocol:bad_ack");
                ctx.ledger.failed(self.idx, p.q);
            }
        }
    }

    /// Gives up on acks older than `ack_timeout` (all of them when `all`).
    fn expire(&mut self, ctx: &RunCtx, all: bool) {
        let now = ctx.stats.now_us();
        let limit = u64::try_from(ctx.ack_timeout.as_micros()).unwrap_or(u64::MAX);
        let stats = &ctx.stats;
        self.pending.retain(|p| {
            let keep = !all && now.saturating_sub(p.sent_us) < limit;
            if !keep {
                Counters::bump(&stats.c.ack_timeouts);
                stats.error("ack_timeout");
                stats.c.pending_acks.fetch_sub(1, Ordering::Relaxed);
                ctx.ledger.failed(self.idx, p.q);
            }
            keep
        });
    }
}

/// Counts a ready user as a connected receiver of its rooms ([`run`] undoes it at the end).
pub fn join_rooms(ctx: &RunCtx, plan: &ClientPlan) {
    for &r in &plan.rooms {
        if let Some(room) = ctx.rooms().get(r as usize) {
            room.connected.fetch_add(1, Ordering::Relaxed);
        }
    }
    ctx.stats.c.connected.fetch_add(1, Ordering::Relaxed);
}

/// Runs a connected, ready user (already counted by [`join_rooms`]) until the run closes or
/// the node hangs up.
pub async fn run(ctx: Arc<RunCtx>, plan: ClientPlan, mut ws: Ws, mut next_ack: u64) {
    let stats = &ctx.stats;
    let mut phase_rx = ctx.phase.subscribe();
    let mut conn = Conn {
        idx: plan.idx,
        tracks: plan.rooms.iter().map(|&r| (r, RoomTrack::default())).collect(),
        pending: Vec::new(),
        send_room: plan.send.map(|s| s.room),
    };
    let room_id: Option<&str> = plan
        .send
        .and_then(|s| ctx.rooms().get(s.room as usize))
        .map(|r| r.id.as_str())
        .filter(|id| !id.is_empty());

    let mut phase = *phase_rx.borrow_and_update();
    let mut next_send = Instant::now();
    let mut sending = false;
    let far = Duration::from_secs(86_400);
    let start_sending = |next: &mut Instant| {
        if let Some(s) = plan.send {
            *next = Instant::now() + s.offset;
        }
    };
    if phase == Phase::Running {
        start_sending(&mut next_send);
        sending = plan.send.is_some() && room_id.is_some();
    }

    let hung_up_by_node = loop {
        if phase >= Phase::Closing {
            break false;
        }
        let send_at = if sending { next_send } else { Instant::now() + far };
        tokio::select! {
            biased;
            changed = phase_rx.changed() => {
                if changed.is_err() {
                    break false;
                }
                let new = *phase_rx.borrow_and_update();
                if new == Phase::Running && phase < Phase::Running {
                    start_sending(&mut next_send);
                    sending = plan.send.is_some() && room_id.is_some();
                }
                if new >= Phase::Draining {
                    sending = false;
                }
                phase = new;
            }
            frame = ws.next() => {
                match frame {
                    Some(Ok(Message::Text(t))) => match conn.on_frame(&ctx, &t) {
                        After::Nothing => {}
                        After::Pong => {
                            if send_text(&mut ws, sio::PONG.into()).await.is_err() {
                                break true;
                            }
                        }
                        After::Ended => break true,
                    },
                    Some(Ok(Message::Close(_))) | None => break true,
                    Some(Ok(_)) => {}
                    Some(Err(_)) => break true,
                }
            }
            _ = tokio::time::sleep_until(send_at), if sending => {
                let (Some(s), Some(room_id)) = (plan.send, room_id) else {
                    sending = false;
                    continue;
                };
                // Counted as in flight before looking at the phase: the drain reads this
                // counter after switching the phase, so a send either sees the switch and
                // stays unsent, or is counted and waited for.
                stats.c.pending_acks.fetch_add(1, Ordering::SeqCst);
                if *phase_rx.borrow() != Phase::Running {
                    stats.c.pending_acks.fetch_sub(1, Ordering::SeqCst);
                    sending = false;
                    continue;
                }
                conn.expire(&ctx, false);
                let q = ctx.ledger.sent(plan.idx);
                let sent_us = stats.now_us();
                let body = message_body(&Stamp { s: plan.idx as u64, q, t: sent_us }, ctx.payload_bytes, &ctx.padding);
                let client_msg_id = format!("{}-{}-{q}", ctx.run_id, plan.idx);
                let id = next_ack;
                next_ack += 1;
                let payload = SendPayload { room_id, body: &body, client_msg_id: &client_msg_id };
                let Ok(frame) = sio::encode_event(Some(id), "message:send", &payload) else {
                    stats.c.pending_acks.fetch_sub(1, Ordering::SeqCst);
                    ctx.ledger.failed(plan.idx, q);
                    stats.error("encode");
                    continue;
                };
                conn.pending.push(Pending { ack_id: id, q, sent_us });
                Counters::bump(&stats.c.sent);
                if send_text(&mut ws, frame).await.is_err() {
                    break true;
                }
                // Keep the schedule; if more than a second behind, skip ahead instead of bursting.
                next_send += s.interval;
                let now = Instant::now();
                if next_send + Duration::from_secs(1) < now {
                    next_send = now + s.interval;
                }
            }
        }
    };

    if hung_up_by_node {
        Counters::bump(&stats.c.disconnects);
        stats.error("disconnected");
    }
    conn.expire(&ctx, true);
    for &r in &plan.rooms {
        if let Some(room) = ctx.rooms().get(r as usize) {
            room.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }
    stats.c.connected.fetch_sub(1, Ordering::Relaxed);
    if !hung_up_by_node {
        // Close, then read until the node closes the TCP connection: the side that closes
        // first keeps TIME_WAIT, and the bench's ephemeral ports are the scarcer ones.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}
