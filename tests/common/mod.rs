//! Shared helpers for the service and admin integration tests: a node's real embedded backends
//! (SQLite in a temporary directory, memory state, local bus, in-process queue, local media),
//! Sign-In with Ethereum with real k256 keys, and deterministic observation of the bus.

#![allow(dead_code, clippy::unwrap_used)]

use coolchat::Error;
use coolchat::address::Address;
use coolchat::bus::BusEvent;
use coolchat::config::{Config, PublicOrigin};
use coolchat::model;
use coolchat::service::{Backends, ChatService, Identity, SendOutcome, SendRequest, SignedIn};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k256::ecdsa::SigningKey;
use sha3::{Digest, Keccak256};
use std::time::Duration;
use tempfile::TempDir;
use time::OffsetDateTime;

pub const ORIGIN: &str = "http://127.0.0.1:8080";
pub const DOMAIN: &str = "127.0.0.1:8080";

/// Upper bound on waiting for an asynchronous event (never a sleep: the wait ends on arrival).
pub const EVENT_BOUND: Duration = Duration::from_secs(10);

/// A node's backends and chat service over a fresh data directory.
pub struct Node {
    pub dir: TempDir,
    pub cfg: Config,
    pub backends: Backends,
    pub svc: ChatService,
}

/// The default configuration pointing at `dir`, with a generous send rate unless a test says
/// otherwise.
pub fn config_in(dir: &TempDir) -> Config {
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().into();
    cfg.limits.message_burst = 10_000;
    cfg.limits.messages_per_second = 10_000.0;
    cfg
}

pub fn origin() -> PublicOrigin {
    PublicOrigin::parse(ORIGIN).unwrap()
}

/// A node whose configuration `tweak` may change before the backends open.
pub async fn node_with(tweak: impl FnOnce(&mut Config)) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(&dir);
    tweak(&mut cfg);
    cfg.validate().expect("test configuration validates");
    let backends = coolchat::backends::open(&cfg).await.unwrap();
    let svc = ChatService::new(backends.clone(), cfg.clone(), origin());
    Node {
        dir,
        cfg,
        backends,
        svc,
    }
}

pub async fn node() -> Node {
    node_with(|_| {}).await
}

// --- keys and SIWE ---------------------------------------------------------------------------

pub fn random_key() -> SigningKey {
    SigningKey::random(&mut rand::rngs::OsRng)
}

pub fn address_of(key: &SigningKey) -> Address {
    let point = key.verifying_key().to_encoded_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(&hash[12..]);
    Address::from_bytes(bytes)
}

/// A canonical EIP-4361 message.
pub fn siwe_text(domain: &str, uri: &str, address: Address, nonce: &str, issued_at: OffsetDateTime) -> String {
    format!(
        "{domain} wants you to sign in with your Ethereum account:\n{address}\n\nSign in to CoolChat\n\nURI: {uri}\nVersion: 1\nChain ID: 1\nNonce: {nonce}\nIssued At: {}",
        model::fmt_time(issued_at)
    )
}

/// Signs `text` as `personal_sign` does: `0x` + r + s + v, v = 27/28.
pub fn sign(key: &SigningKey, text: &str) -> String {
    let message: siwe::Message = text.parse().expect("test message parses");
    let prehash = message.eip191_hash().expect("hashable");
    let (sig, recid) = key.sign_prehash_recoverable(&prehash).expect("signs");
    let mut bytes = sig.to_bytes().to_vec();
    bytes.push(recid.to_byte() + 27);
    format!("0x{}", hex::encode(bytes))
}

/// A fresh nonce and a correctly signed message for `key`.
pub async fn signed_message(svc: &ChatService, key: &SigningKey) -> (String, String) {
    let grant = svc.issue_nonce("test").await.unwrap();
    assert_eq!(grant.domain, DOMAIN);
    assert_eq!(grant.uri, ORIGIN);
    let text = siwe_text(DOMAIN, ORIGIN, address_of(key), &grant.nonce, model::now_ms());
    let sig = sign(key, &text);
    (text, sig)
}

/// Signs in with `key` (issue a nonce, sign, verify).
pub async fn try_sign_in(svc: &ChatService, key: &SigningKey) -> Result<SignedIn, Error> {
    let (text, sig) = signed_message(svc, key).await;
    svc.sign_in(&text, &sig).await
}

/// A signed-in user.
pub struct TestUser {
    pub key: SigningKey,
    pub address: Address,
    pub token: String,
    pub id: Identity,
}

pub async fn sign_in_key(svc: &ChatService, key: SigningKey) -> TestUser {
    let signed = try_sign_in(svc, &key).await.unwrap();
    assert_eq!(signed.address, address_of(&key));
    let id = svc.authenticate(Some(&signed.token)).await.unwrap();
    assert_eq!(id.address, signed.address);
    TestUser {
        address: signed.address,
        key,
        token: signed.token,
        id,
    }
}

pub async fn user(svc: &ChatService) -> TestUser {
    sign_in_key(svc, random_key()).await
}

// --- sending -----------------------------------------------------------------------------------

pub fn req(room_id: &str, body: &str, client_msg_id: &str) -> SendRequest {
    SendRequest {
        room_id: room_id.into(),
        body: body.into(),
        client_msg_id: client_msg_id.into(),
        deliver_at: None,
        media: vec![],
    }
}

/// Sends and expects an immediately persisted message.
pub async fn send(svc: &ChatService, who: &Identity, room_id: &str, body: &str, client_msg_id: &str) -> model::Message {
    match svc.send(who, req(room_id, body, client_msg_id)).await.unwrap() {
        SendOutcome::Sent { message, .. } => message,
        other => panic!("expected a sent message, got {other:?}"),
    }
}

/// The error code of a result that must be an error.
pub fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}

// --- the bus -----------------------------------------------------------------------------------

pub type Events = BoxStream<'static, BusEvent>;

/// Every event already published to `events`, without waiting. Deterministic for events the
/// service publishes before returning (every publish is synchronous on the local bus). Polled
/// outside tokio's cooperative budget, which would otherwise report "pending" after ~128 events.
pub fn drain(events: &mut Events) -> Vec<BusEvent> {
    let mut out = Vec::new();
    while let Some(Some(ev)) = tokio::task::unconstrained(events.next()).now_or_never() {
        out.push(ev);
    }
    out
}

/// Runs the real scheduler (20 ms ticks) until a delivered message satisfies `last`; returns
/// every message delivered meanwhile, in bus order. Each wait is bounded by [`EVENT_BOUND`].
pub async fn run_scheduler_until(
    node: &Node,
    events: &mut Events,
    mut last: impl FnMut(&model::Message) -> bool,
) -> Vec<model::Message> {
    let stop = tokio_util::sync::CancellationToken::new();
    let scheduler = tokio::spawn(coolchat::worker::run_scheduler(
        node.backends.store.clone(),
        node.backends.queue.clone(),
        Duration::from_millis(20),
        stop.clone(),
    ));
    let mut delivered = Vec::new();
    loop {
        if let BusEvent::MessageCreated { message } =
            wait_for(events, |e| matches!(e, BusEvent::MessageCreated { .. })).await
        {
            let done = last(&message);
            delivered.push(message);
            if done {
                break;
            }
        }
    }
    stop.cancel();
    scheduler.await.unwrap();
    delivered
}

/// Waits (bounded by [`EVENT_BOUND`]) for the first event matching `want`, skipping others.
pub async fn wait_for(events: &mut Events, mut want: impl FnMut(&BusEvent) -> bool) -> BusEvent {
    tokio::time::timeout(EVENT_BOUND, async {
        loop {
            match events.next().await {
                Some(ev) if want(&ev) => return ev,
                Some(_) => {}
                None => panic!("the bus closed"),
            }
        }
    })
    .await
    .expect("the expected bus event did not arrive in time")
}
