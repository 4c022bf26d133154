//! The chat service over the real embedded backends (SQLite in a temporary directory, memory
//! state, local bus, in-process queue): sign-in and sessions, rooms, sending, history, sync,
//! typing and read receipts, presence, scheduled messages and restarts. Bus events are observed
//! through `Bus::subscribe`; every publish the service makes happens before the call returns, so
//! draining the subscription right after a call is deterministic.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use coolchat::address::Address;
use coolchat::admin::{AdminService, Notifier};
use coolchat::auth::token;
use coolchat::bus::{BusEvent, EndReason};
use coolchat::model::{self, Message, RoomKind, Session};
use coolchat::service::{ChatService, SendOutcome, SendRequest};
use coolchat::storage::HistoryPage;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn admin(node: &Node) -> AdminService {
    AdminService::new(
        node.backends.store.clone(),
        node.backends.media.clone(),
        Notifier::Bus(node.backends.bus.clone()),
        "admin:test".into(),
    )
}

fn no_progress(_: u64, _: u64) {}

fn created_messages(events: &[BusEvent]) -> Vec<Message> {
    events
        .iter()
        .filter_map(|e| match e {
            BusEvent::MessageCreated { message } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// `(added, removed)` of every `RoomChanged` event, in order.
fn room_changes(events: &[BusEvent]) -> Vec<(String, Vec<Address>, Vec<Address>)> {
    events
        .iter()
        .filter_map(|e| match e {
            BusEvent::RoomChanged { room, added, removed } => Some((room.id.clone(), added.clone(), removed.clone())),
            _ => None,
        })
        .collect()
}

fn sorted(mut v: Vec<Address>) -> Vec<Address> {
    v.sort();
    v
}

// --- sign-in and sessions ------------------------------------------------------------------------

#[tokio::test]
async fn sign_in_opens_a_session_that_authenticates() {
    let node = node().await;
    let key = random_key();
    let before = model::now_ms();
    let signed = try_sign_in(&node.svc, &key).await.unwrap();
    assert_eq!(signed.address, address_of(&key));
    assert!(token::looks_like_token(&signed.token), "{}", signed.token);
    let ttl = Duration::from_secs(node.cfg.auth.session_ttl_secs);
    assert!(signed.expires_at >= before + ttl && signed.expires_at <= model::now_ms() + ttl);

    let who = node.svc.authenticate(Some(&signed.token)).await.unwrap();
    assert_eq!(who.address, signed.address);
    assert_eq!(who.token_hash, token::hash_token(&signed.token));
    assert_eq!(who.expires_at, signed.expires_at);
    node.svc.recheck(&who).await.unwrap();
    // Surrounding whitespace is tolerated.
    node.svc
        .authenticate(Some(&format!("  {}\n", signed.token)))
        .await
        .unwrap();
    // Only the hash is stored.
    let session = node.backends.store.get_session(&who.token_hash).await.unwrap().unwrap();
    assert_eq!(session.address, signed.address);
    // The user exists now.
    let view = node.svc.user(signed.address).await.unwrap();
    assert_eq!(view.user.address, signed.address);
    assert!(!view.online);
}

#[tokio::test]
async fn a_nonce_signs_in_only_once() {
    let node = node().await;
    let key = random_key();
    let (text, sig) = signed_message(&node.svc, &key).await;
    node.svc.sign_in(&text, &sig).await.unwrap();
    assert_eq!(code(node.svc.sign_in(&text, &sig).await), "siwe_invalid_nonce");
    // A nonce the node never issued is refused the same way.
    let forged = siwe_text(DOMAIN, ORIGIN, address_of(&key), "neverIssued12345", model::now_ms());
    assert_eq!(
        code(node.svc.sign_in(&forged, &sign(&key, &forged)).await),
        "siwe_invalid_nonce"
    );
}

#[tokio::test]
async fn a_bad_signature_does_not_burn_the_nonce() {
    let node = node().await;
    let key = random_key();
    let (text, good) = signed_message(&node.svc, &key).await;
    // Signed by someone else for this address.
    let impostor = sign(&random_key(), &text);
    assert_eq!(code(node.svc.sign_in(&text, &impostor).await), "siwe_invalid_signature");
    // Not even shaped like a signature: refused like a wrong one.
    assert_eq!(code(node.svc.sign_in(&text, "0x1234").await), "siwe_invalid_signature");
    // The rightful signer still gets in with the same nonce.
    let signed = node.svc.sign_in(&text, &good).await.unwrap();
    assert_eq!(signed.address, address_of(&key));
}

#[tokio::test]
async fn a_message_for_another_domain_is_refused_without_burning_the_nonce() {
    let node = node().await;
    let key = random_key();
    let grant = node.svc.issue_nonce("test").await.unwrap();
    let now = model::now_ms();
    let wrong = siwe_text("evil.example:8080", ORIGIN, address_of(&key), &grant.nonce, now);
    assert_eq!(
        code(node.svc.sign_in(&wrong, &sign(&key, &wrong)).await),
        "siwe_domain_mismatch"
    );
    let wrong_uri = siwe_text(DOMAIN, "https://127.0.0.1:8080", address_of(&key), &grant.nonce, now);
    assert_eq!(
        code(node.svc.sign_in(&wrong_uri, &sign(&key, &wrong_uri)).await),
        "siwe_uri_mismatch"
    );
    let other_chain =
        siwe_text(DOMAIN, ORIGIN, address_of(&key), &grant.nonce, now).replace("Chain ID: 1", "Chain ID: 5");
    assert_eq!(
        code(node.svc.sign_in(&other_chain, &sign(&key, &other_chain)).await),
        "siwe_chain_not_allowed"
    );
    let stale = siwe_text(
        DOMAIN,
        ORIGIN,
        address_of(&key),
        &grant.nonce,
        now - Duration::from_secs(3600),
    );
    assert_eq!(
        code(node.svc.sign_in(&stale, &sign(&key, &stale)).await),
        "siwe_issued_at_skew"
    );
    assert_eq!(
        code(node.svc.sign_in("not a SIWE message", &sign(&key, &stale)).await),
        "siwe_malformed"
    );
    let right = siwe_text(DOMAIN, ORIGIN, address_of(&key), &grant.nonce, now);
    node.svc.sign_in(&right, &sign(&key, &right)).await.unwrap();
}

#[tokio::test]
async fn nonces_are_rate_limited_per_client() {
    let node = node_with(|c| c.auth.nonce_requests_per_minute = 3).await;
    for _ in 0..3 {
        node.svc.issue_nonce("10.0.0.1").await.unwrap();
    }
    let err = node.svc.issue_nonce("10.0.0.1").await.unwrap_err();
    assert_eq!(err.code(), "rate_limited");
    assert!(err.retry_after_secs().unwrap() >= 1);
    // Another client is not affected, and nonces are all different.
    let a = node.svc.issue_nonce("10.0.0.2").await.unwrap();
    let b = node.svc.issue_nonce("10.0.0.2").await.unwrap();
    assert_ne!(a.nonce, b.nonce);
    assert!(a.nonce.len() >= 16 && a.nonce.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(a.chain_id, 1);
}

#[tokio::test]
async fn a_banned_address_cannot_sign_in() {
    let node = node().await;
    let key = random_key();
    let address = address_of(&key);
    admin(&node)
        .ban(address, Some("spam".into()), None, false, &no_progress)
        .await
        .unwrap();
    let (text, sig) = signed_message(&node.svc, &key).await;
    assert_eq!(code(node.svc.sign_in(&text, &sig).await), "banned");
    // The refusal came before the nonce was spent: once unbanned, the same message works.
    assert!(admin(&node).unban(address).await.unwrap());
    node.svc.sign_in(&text, &sig).await.unwrap();
}

#[tokio::test]
async fn authenticate_refuses_missing_garbage_unknown_revoked_and_expired_tokens() {
    let node = node().await;
    let svc = &node.svc;
    assert_eq!(code(svc.authenticate(None).await), "missing_token");
    assert_eq!(code(svc.authenticate(Some("")).await), "missing_token");
    assert_eq!(code(svc.authenticate(Some("   ")).await), "missing_token");
    assert_eq!(code(svc.authenticate(Some("garbage")).await), "invalid_token");
    assert_eq!(
        code(svc.authenticate(Some(&format!("cct_{}", "z".repeat(64)))).await),
        "invalid_token"
    );
    // Well-formed but never issued.
    assert_eq!(code(svc.authenticate(Some(&token::new_token())).await), "invalid_token");

    // Revoked by logout, which also tells every node to end its sockets.
    let a = user(svc).await;
    let mut events = node.backends.bus.subscribe();
    svc.logout(&a.id).await.unwrap();
    assert_eq!(
        drain(&mut events),
        vec![BusEvent::SessionsEnded {
            token_hashes: vec![a.id.token_hash.clone()],
            reason: EndReason::LoggedOut
        }]
    );
    assert_eq!(code(svc.authenticate(Some(&a.token)).await), "token_revoked");
    assert_eq!(code(svc.recheck(&a.id).await), "token_revoked");

    // Expired: a session whose lifetime is over.
    let tok = token::new_token();
    let now = model::now_ms();
    node.backends
        .store
        .create_session(Session {
            token_hash: token::hash_token(&tok),
            address: a.address,
            created_at: now - Duration::from_secs(7200),
            expires_at: now - Duration::from_secs(3600),
            revoked_at: None,
        })
        .await
        .unwrap();
    assert_eq!(code(svc.authenticate(Some(&tok)).await), "token_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_message_replayed_concurrently_signs_in_once() {
    let node = node().await;
    let key = random_key();
    let (text, sig) = signed_message(&node.svc, &key).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (svc, text, sig) = (node.svc.clone(), text.clone(), sig.clone());
            tokio::spawn(async move { svc.sign_in(&text, &sig).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(signed) => {
                ok += 1;
                node.svc.authenticate(Some(&signed.token)).await.unwrap();
            }
            Err(e) => assert_eq!(e.code(), "siwe_invalid_nonce"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn display_names_are_trimmed_bounded_and_printable() {
    let node = node_with(|c| c.limits.max_display_name_chars = 5).await;
    let a = user(&node.svc).await;
    let set = |name: Option<&str>| node.svc.set_display_name(&a.id, name.map(String::from));
    assert_eq!(
        set(Some("  Ada ")).await.unwrap().user.display_name.as_deref(),
        Some("Ada")
    );
    // Characters, not bytes.
    assert_eq!(
        set(Some("ÉÉÉÉÉ")).await.unwrap().user.display_name.as_deref(),
        Some("ÉÉÉÉÉ")
    );
    assert_eq!(code(set(Some("abcdef")).await), "invalid_request");
    assert_eq!(code(set(Some("a\nb")).await), "invalid_request");
    // Blank clears it.
    assert_eq!(set(Some("   ")).await.unwrap().user.display_name, None);
    set(Some("Bob")).await.unwrap();
    assert_eq!(set(None).await.unwrap().user.display_name, None);
    assert_eq!(node.svc.user(a.address).await.unwrap().user.display_name, None);
    assert_eq!(code(node.svc.user(address_of(&random_key())).await), "user_not_found");
}

// --- rooms -------------------------------------------------------------------------------------

#[tokio::test]
async fn create_room_includes_the_creator_and_dedupes_members() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let c = user(&node.svc).await;
    let mut events = node.backends.bus.subscribe();
    let room = node
        .svc
        .create_room(&a.id, "  team  ", &[b.address, c.address, b.address, a.address])
        .await
        .unwrap();
    assert_eq!(room.kind, RoomKind::Group);
    assert_eq!(room.name.as_deref(), Some("team"));
    assert_eq!(room.created_by, a.address);
    assert_eq!(room.last_seq, 0);
    assert_eq!(room.members, sorted(vec![a.address, b.address, c.address]));
    // Alone is fine too.
    let solo = node.svc.create_room(&b.id, "solo", &[]).await.unwrap();
    assert_eq!(solo.members, vec![b.address]);
    assert_eq!(
        room_changes(&drain(&mut events)),
        vec![
            (room.id.clone(), room.members.clone(), vec![]),
            (solo.id.clone(), vec![b.address], vec![])
        ]
    );
    // Everyone sees it among their rooms.
    for u in [&a, &b, &c] {
        let ids: Vec<String> = node.svc.rooms(&u.id).await.unwrap().into_iter().map(|r| r.id).collect();
        assert!(ids.contains(&room.id));
        assert_eq!(node.svc.room(&u.id, &room.id).await.unwrap(), room);
    }
    // Names: empty, too long, control characters.
    assert_eq!(code(node.svc.create_room(&a.id, "   ", &[]).await), "invalid_request");
    assert_eq!(
        code(node.svc.create_room(&a.id, &"x".repeat(101), &[]).await),
        "invalid_request"
    );
    assert_eq!(
        code(node.svc.create_room(&a.id, "a\u{7}b", &[]).await),
        "invalid_request"
    );
    assert!(drain(&mut events).is_empty());
}

#[tokio::test]
async fn rooms_are_capped_at_max_room_members() {
    let node = node_with(|c| c.limits.max_room_members = 3).await;
    let a = user(&node.svc).await;
    let others: Vec<Address> = (0..3).map(|_| address_of(&random_key())).collect();
    // Creator plus three is four.
    assert_eq!(code(node.svc.create_room(&a.id, "big", &others).await), "room_full");
    // Duplicates do not count twice.
    let room = node
        .svc
        .create_room(&a.id, "ok", &[others[0], others[1], others[0]])
        .await
        .unwrap();
    assert_eq!(room.members.len(), 3);
    assert_eq!(code(node.svc.add_member(&a.id, &room.id, others[2]).await), "room_full");
    // Re-adding a member of a full room changes nothing and is no error.
    assert_eq!(
        node.svc
            .add_member(&a.id, &room.id, others[0])
            .await
            .unwrap()
            .members
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_never_pass_the_room_cap() {
    let node = node_with(|c| c.limits.max_room_members = 5).await;
    let a = user(&node.svc).await;
    let room = node
        .svc
        .create_room(&a.id, "r", &[address_of(&random_key())])
        .await
        .unwrap();
    let mut events = node.backends.bus.subscribe();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (svc, id, room_id) = (node.svc.clone(), a.id.clone(), room.id.clone());
            tokio::spawn(async move { svc.add_member(&id, &room_id, address_of(&random_key())).await })
        })
        .collect();
    let mut added = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => added += 1,
            Err(e) => assert_eq!(e.code(), "room_full"),
        }
    }
    assert_eq!(added, 3);
    assert_eq!(node.svc.room(&a.id, &room.id).await.unwrap().members.len(), 5);
    assert_eq!(room_changes(&drain(&mut events)).len(), 3);
}

#[tokio::test]
async fn rooms_per_user_are_capped() {
    let node = node_with(|c| c.limits.max_rooms_per_user = 2).await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    node.svc.create_room(&a.id, "one", &[]).await.unwrap();
    let (dm, _) = node.svc.open_dm(&a.id, b.address).await.unwrap();
    assert_eq!(code(node.svc.create_room(&a.id, "three", &[]).await), "forbidden");
    let theirs = node.svc.create_room(&b.id, "b's", &[]).await.unwrap();
    assert_eq!(
        code(node.svc.add_member(&b.id, &theirs.id, a.address).await),
        "forbidden"
    );
    // Leaving frees a slot (DMs cannot be left, so leave the group).
    let first = node
        .svc
        .rooms(&a.id)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id != dm.id)
        .unwrap();
    node.svc.remove_member(&a.id, &first.id, a.address).await.unwrap();
    node.svc.add_member(&b.id, &theirs.id, a.address).await.unwrap();
}

#[tokio::test]
async fn non_members_and_unknown_rooms_are_refused() {
    let node = node().await;
    let a = user(&node.svc).await;
    let outsider = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "private", &[]).await.unwrap();
    send(&node.svc, &a.id, &room.id, "secret", "m1").await;
    let svc = &node.svc;
    let page = HistoryPage::After(0);

    assert_eq!(code(svc.room(&outsider.id, &room.id).await), "not_member");
    assert_eq!(
        code(svc.history(&outsider.id, &room.id, page, None).await),
        "not_member"
    );
    assert_eq!(
        code(svc.send(&outsider.id, req(&room.id, "hi", "o1")).await),
        "not_member"
    );
    assert_eq!(
        code(svc.add_member(&outsider.id, &room.id, outsider.address).await),
        "not_member"
    );
    assert_eq!(
        code(svc.remove_member(&outsider.id, &room.id, a.address).await),
        "not_member"
    );
    assert!(svc.rooms(&outsider.id).await.unwrap().is_empty());
    assert!(
        svc.sync(&outsider.id, &HashMap::new())
            .await
            .unwrap()
            .messages
            .is_empty()
    );

    let unknown = model::new_id();
    assert_eq!(code(svc.room(&a.id, &unknown).await), "room_not_found");
    assert_eq!(code(svc.history(&a.id, &unknown, page, None).await), "room_not_found");
    assert_eq!(code(svc.send(&a.id, req(&unknown, "hi", "u1")).await), "room_not_found");
    assert_eq!(
        code(svc.add_member(&a.id, &unknown, outsider.address).await),
        "room_not_found"
    );
    assert_eq!(
        code(svc.remove_member(&a.id, &unknown, a.address).await),
        "room_not_found"
    );
    // The refused sends consumed no seq.
    assert_eq!(svc.room(&a.id, &room.id).await.unwrap().last_seq, 1);
}

#[tokio::test]
async fn a_dm_is_one_room_both_ways_and_never_changes_members() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let c = user(&node.svc).await;
    let mut events = node.backends.bus.subscribe();
    let (dm, created) = node.svc.open_dm(&a.id, b.address).await.unwrap();
    assert!(created);
    assert_eq!(dm.kind, RoomKind::Dm);
    assert_eq!(dm.members, sorted(vec![a.address, b.address]));
    let (again, created) = node.svc.open_dm(&b.id, a.address).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, dm.id);
    let (same, created) = node.svc.open_dm(&a.id, b.address).await.unwrap();
    assert!(!created);
    assert_eq!(same.id, dm.id);
    // Only the creation is announced.
    assert_eq!(
        room_changes(&drain(&mut events)),
        vec![(dm.id.clone(), dm.members.clone(), vec![])]
    );

    assert_eq!(code(node.svc.open_dm(&a.id, a.address).await), "invalid_request");
    assert_eq!(code(node.svc.add_member(&a.id, &dm.id, c.address).await), "forbidden");
    assert_eq!(
        code(node.svc.remove_member(&a.id, &dm.id, b.address).await),
        "forbidden"
    );
    assert_eq!(
        code(node.svc.remove_member(&a.id, &dm.id, a.address).await),
        "forbidden"
    );
    assert_eq!(code(node.svc.room(&c.id, &dm.id).await), "not_member");
    assert!(drain(&mut events).is_empty());
    // Both can talk in it.
    assert_eq!(send(&node.svc, &a.id, &dm.id, "hi", "a1").await.seq, 1);
    assert_eq!(send(&node.svc, &b.id, &dm.id, "hello", "b1").await.seq, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opening_the_same_dm_concurrently_from_both_sides_creates_one_room() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let mut events = node.backends.bus.subscribe();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let svc = node.svc.clone();
            let (me, other) = if i % 2 == 0 {
                (a.id.clone(), b.address)
            } else {
                (b.id.clone(), a.address)
            };
            tokio::spawn(async move { svc.open_dm(&me, other).await.unwrap() })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut created = 0;
    for task in tasks {
        let (room, new) = task.await.unwrap();
        ids.insert(room.id);
        created += usize::from(new);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    assert_eq!(room_changes(&drain(&mut events)).len(), 1);
}

#[tokio::test]
async fn membership_changes_follow_the_rules_and_are_announced() {
    let node = node().await;
    let svc = &node.svc;
    let creator = user(svc).await;
    let b = user(svc).await;
    let c = user(svc).await;
    let d = user(svc).await;
    let room = svc
        .create_room(&creator.id, "club", &[b.address, c.address])
        .await
        .unwrap();
    let mut events = node.backends.bus.subscribe();

    // Any member may add.
    let after = svc.add_member(&b.id, &room.id, d.address).await.unwrap();
    assert!(after.members.contains(&d.address));
    // Adding a member again changes nothing and announces nothing.
    svc.add_member(&c.id, &room.id, d.address).await.unwrap();
    // Only the creator removes others.
    assert_eq!(code(svc.remove_member(&b.id, &room.id, c.address).await), "forbidden");
    // A member may leave.
    let left = svc.remove_member(&b.id, &room.id, b.address).await.unwrap();
    assert!(!left.members.contains(&b.address));
    assert_eq!(code(svc.room(&b.id, &room.id).await), "not_member");
    // The creator removes anyone.
    let removed = svc.remove_member(&creator.id, &room.id, c.address).await.unwrap();
    assert_eq!(removed.members, sorted(vec![creator.address, d.address]));
    // Removing a non-member is an error, not a silent success.
    assert_eq!(
        code(svc.remove_member(&creator.id, &room.id, c.address).await),
        "invalid_request"
    );

    let changes = room_changes(&drain(&mut events));
    assert_eq!(
        changes,
        vec![
            (room.id.clone(), vec![d.address], vec![]),
            (room.id.clone(), vec![], vec![b.address]),
            (room.id.clone(), vec![], vec![c.address]),
        ]
    );
    // A removed member can no longer send; the room state is what the last event said.
    assert_eq!(code(svc.send(&c.id, req(&room.id, "hi", "c1")).await), "not_member");
    assert_eq!(svc.room(&d.id, &room.id).await.unwrap(), removed);
}

// --- sending -------------------------------------------------------------------------------------

#[tokio::test]
async fn sends_get_consecutive_seqs_and_are_fanned_out_once() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[b.address]).await.unwrap();
    let mut events = node.backends.bus.subscribe();
    let mut sent = Vec::new();
    for i in 1..=5 {
        let who = if i % 2 == 0 { &b.id } else { &a.id };
        let m = send(&node.svc, who, &room.id, &format!("message {i}"), &format!("c{i}")).await;
        assert_eq!(m.seq, i);
        assert_eq!(m.sender, who.address);
        assert_eq!(m.room_id, room.id);
        assert!(!m.deleted);
        sent.push(m);
    }
    assert_eq!(created_messages(&drain(&mut events)), sent);
    assert_eq!(node.svc.room(&a.id, &room.id).await.unwrap().last_seq, 5);
    assert_eq!(
        node.svc
            .history(&b.id, &room.id, HistoryPage::After(0), None)
            .await
            .unwrap()
            .messages,
        sent
    );
}

#[tokio::test]
async fn a_resend_is_idempotent_and_a_conflicting_reuse_is_refused() {
    let node = node().await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    let other = node.svc.create_room(&a.id, "other", &[]).await.unwrap();
    let mut events = node.backends.bus.subscribe();

    let first = match node.svc.send(&a.id, req(&room.id, "hello", "same-id")).await.unwrap() {
        SendOutcome::Sent { message, created } => {
            assert!(created);
            message
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(created_messages(&drain(&mut events)), vec![first.clone()]);

    match node.svc.send(&a.id, req(&room.id, "hello", "same-id")).await.unwrap() {
        SendOutcome::Sent { message, created } => {
            assert!(!created);
            assert_eq!(message, first);
        }
        other => panic!("{other:?}"),
    }
    // No second fan-out.
    assert!(drain(&mut events).is_empty());

    assert_eq!(
        code(node.svc.send(&a.id, req(&room.id, "hello!", "same-id")).await),
        "idempotency_conflict"
    );
    assert_eq!(
        code(node.svc.send(&a.id, req(&other.id, "hello", "same-id")).await),
        "idempotency_conflict"
    );
    // No seq was consumed by the resend or the conflicts.
    assert_eq!(send(&node.svc, &a.id, &room.id, "next", "next-id").await.seq, 2);
    // The key is per sender: someone else may use the same client_msg_id.
    let b = user(&node.svc).await;
    node.svc.add_member(&a.id, &room.id, b.address).await.unwrap();
    let theirs = send(&node.svc, &b.id, &room.id, "hello", "same-id").await;
    assert_eq!(theirs.seq, 3);
    assert_ne!(theirs.id, first.id);
}

#[tokio::test]
async fn send_validates_body_and_client_msg_id() {
    let node = node_with(|c| c.limits.max_body_bytes = 64).await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    let svc = &node.svc;
    let too_big = svc
        .send(&a.id, req(&room.id, &"x".repeat(65), "big"))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), "payload_too_large");
    assert!(
        matches!(too_big, coolchat::Error::PayloadTooLarge { limit: 64, .. }),
        "{too_big:?}"
    );
    // The limit is in bytes: 22 three-byte characters are 66 bytes.
    assert_eq!(
        code(svc.send(&a.id, req(&room.id, &"€".repeat(22), "euro")).await),
        "payload_too_large"
    );
    // Exactly the limit is fine.
    assert_eq!(send(svc, &a.id, &room.id, &"x".repeat(64), "exact").await.seq, 1);
    assert_eq!(
        code(svc.send(&a.id, req(&room.id, "", "empty")).await),
        "invalid_request"
    );
    assert_eq!(
        code(svc.send(&a.id, req(&room.id, " \n\t ", "blank")).await),
        "invalid_request"
    );
    assert_eq!(code(svc.send(&a.id, req(&room.id, "hi", "")).await), "invalid_request");
    assert_eq!(
        code(svc.send(&a.id, req(&room.id, "hi", &"k".repeat(129))).await),
        "invalid_request"
    );
    assert_eq!(send(svc, &a.id, &room.id, "hi", &"k".repeat(128)).await.seq, 2);
}

#[tokio::test]
async fn the_send_rate_limits_new_messages_but_never_retries() {
    let node = node_with(|c| {
        c.limits.messages_per_second = 0.001;
        c.limits.message_burst = 3;
    })
    .await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[b.address]).await.unwrap();
    let first = send(&node.svc, &a.id, &room.id, "one", "1").await;
    send(&node.svc, &a.id, &room.id, "two", "2").await;
    send(&node.svc, &a.id, &room.id, "three", "3").await;
    let err = node.svc.send(&a.id, req(&room.id, "four", "4")).await.unwrap_err();
    assert_eq!(err.code(), "rate_limited");
    match err {
        coolchat::Error::RateLimited { retry_after } => {
            assert!(retry_after > Duration::from_secs(1), "{retry_after:?}")
        }
        other => panic!("{other:?}"),
    }
    // A retry of a message already sent is answered, not limited (and repeatedly so).
    for _ in 0..5 {
        match node.svc.send(&a.id, req(&room.id, "one", "1")).await.unwrap() {
            SendOutcome::Sent { message, created } => {
                assert!(!created);
                assert_eq!(message, first);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        code(node.svc.send(&a.id, req(&room.id, "four", "4")).await),
        "rate_limited"
    );
    // The limit is per user.
    assert_eq!(send(&node.svc, &b.id, &room.id, "mine", "b1").await.seq, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_resends_create_one_message() {
    let node = node().await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    let mut events = node.backends.bus.subscribe();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (svc, id, room_id) = (node.svc.clone(), a.id.clone(), room.id.clone());
            tokio::spawn(async move { svc.send(&id, req(&room_id, "once", "dup")).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    let mut seen = HashSet::new();
    for task in tasks {
        match task.await.unwrap() {
            SendOutcome::Sent { message, created: new } => {
                created += usize::from(new);
                seen.insert((message.id, message.seq));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(seen.len(), 1, "every attempt got the same message");
    assert_eq!(created_messages(&drain(&mut events)).len(), 1);
    assert_eq!(node.svc.room(&a.id, &room.id).await.unwrap().last_seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_get_gap_free_seqs_in_each_senders_order() {
    const SENDERS: usize = 4;
    const EACH: usize = 50;
    let node = node().await;
    let mut users = Vec::new();
    for _ in 0..SENDERS {
        users.push(user(&node.svc).await);
    }
    let others: Vec<Address> = users[1..].iter().map(|u| u.address).collect();
    let room = node.svc.create_room(&users[0].id, "busy", &others).await.unwrap();
    let mut events = node.backends.bus.subscribe();

    let mut tasks = Vec::new();
    for (u, who) in users.iter().enumerate() {
        let svc = node.svc.clone();
        let id = who.id.clone();
        let room_id = room.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let m = send(&svc, &id, &room_id, &format!("{u}:{i}"), &format!("{u}-{i}")).await;
                seqs.push(m.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a sender's messages are out of order: {seqs:?}"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    let total = (SENDERS * EACH) as i64;
    assert_eq!(all, (1..=total).collect::<Vec<_>>());

    // The stored history agrees: seqs 1..=200, each sender's bodies in their send order.
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = node
            .svc
            .history(&users[0].id, &room.id, HistoryPage::After(after), Some(200))
            .await
            .unwrap();
        stored.extend(page.messages.iter().cloned());
        after = stored.last().map_or(0, |m| m.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    for (u, who) in users.iter().enumerate() {
        let bodies: Vec<String> = stored
            .iter()
            .filter(|m| m.sender == who.address)
            .map(|m| m.body.clone())
            .collect();
        assert_eq!(bodies, (0..EACH).map(|i| format!("{u}:{i}")).collect::<Vec<_>>());
    }
    // Each message was fanned out exactly once.
    let fanned = created_messages(&drain(&mut events));
    assert_eq!(fanned.len(), SENDERS * EACH);
    assert_eq!(
        fanned.iter().map(|m| m.id.clone()).collect::<HashSet<_>>().len(),
        SENDERS * EACH
    );
}

// --- history -------------------------------------------------------------------------------------

#[tokio::test]
async fn history_pages_both_ways_with_has_more() {
    let node = node().await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    for i in 1..=10 {
        send(&node.svc, &a.id, &room.id, &format!("m{i}"), &format!("c{i}")).await;
    }
    let seqs = |r: &coolchat::service::HistoryResult| r.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let h = |page, limit| node.svc.history(&a.id, &room.id, page, limit);

    let r = h(HistoryPage::After(0), Some(4)).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), (vec![1, 2, 3, 4], true));
    let r = h(HistoryPage::After(4), Some(4)).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), (vec![5, 6, 7, 8], true));
    let r = h(HistoryPage::After(8), Some(4)).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), (vec![9, 10], false));
    // Exactly the rest: no more beyond it.
    let r = h(HistoryPage::After(6), Some(4)).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), (vec![7, 8, 9, 10], false));
    let r = h(HistoryPage::After(10), Some(4)).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), (vec![], false));

    // Backwards: descending.
    let r = h(HistoryPage::Before(i64::MAX), Some(3)).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), (vec![10, 9, 8], true));
    let r = h(HistoryPage::Before(8), Some(3)).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), (vec![7, 6, 5], true));
    let r = h(HistoryPage::Before(4), Some(3)).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), (vec![3, 2, 1], false));
    let r = h(HistoryPage::Before(1), Some(3)).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), (vec![], false));

    // Default limit (50) covers all ten.
    let r = h(HistoryPage::After(0), None).await.unwrap();
    assert_eq!((seqs(&r), r.has_more), ((1..=10).collect(), false));
}

#[tokio::test]
async fn history_limit_is_clamped_to_max_history_page() {
    let node = node_with(|c| c.limits.max_history_page = 3).await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    for i in 1..=5 {
        send(&node.svc, &a.id, &room.id, &format!("m{i}"), &format!("c{i}")).await;
    }
    for limit in [Some(1000), Some(usize::MAX), None] {
        let r = node
            .svc
            .history(&a.id, &room.id, HistoryPage::After(0), limit)
            .await
            .unwrap();
        assert_eq!(
            r.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "{limit:?}"
        );
        assert!(r.has_more);
    }
    // Zero is raised to one.
    let r = node
        .svc
        .history(&a.id, &room.id, HistoryPage::Before(i64::MAX), Some(0))
        .await
        .unwrap();
    assert_eq!(r.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![5]);
    assert!(r.has_more);
}

// --- sync ----------------------------------------------------------------------------------------

/// Three rooms of `a` (with `b` as a co-member) and one room `a` is not in; messages interleaved
/// across rooms. Returns `a`, the rooms of `a` and every message in them.
async fn three_rooms(node: &Node, counts: [usize; 3]) -> (TestUser, Vec<String>, Vec<Message>) {
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let mut rooms = Vec::new();
    for i in 0..3 {
        rooms.push(
            node.svc
                .create_room(&a.id, &format!("room {i}"), &[b.address])
                .await
                .unwrap()
                .id,
        );
    }
    let elsewhere = node.svc.create_room(&b.id, "not a's", &[]).await.unwrap();
    let mut all = Vec::new();
    let most = *counts.iter().max().unwrap();
    for i in 0..most {
        for (r, room) in rooms.iter().enumerate() {
            if i < counts[r] {
                let who = if i % 2 == 0 { &a.id } else { &b.id };
                all.push(send(&node.svc, who, room, &format!("{r}/{i}"), &format!("{r}-{i}")).await);
            }
        }
        send(&node.svc, &b.id, &elsewhere.id, "noise", &format!("noise-{i}")).await;
    }
    all.sort_by(|x, y| (&x.room_id, x.seq).cmp(&(&y.room_id, y.seq)));
    (a, rooms, all)
}

#[tokio::test]
async fn sync_returns_every_room_ordered_by_room_id_then_seq() {
    let node = node().await;
    let (a, rooms, all) = three_rooms(&node, [3, 2, 4]).await;
    let r = node.svc.sync(&a.id, &HashMap::new()).await.unwrap();
    assert!(!r.has_more);
    assert_eq!(r.messages, all);
    assert_eq!(r.messages.len(), 9);
    assert!(r.messages.iter().all(|m| rooms.contains(&m.room_id)));
    // Up to date: nothing.
    let cursors: HashMap<String, i64> = rooms.iter().map(|id| (id.clone(), 100)).collect();
    let r = node.svc.sync(&a.id, &cursors).await.unwrap();
    assert!(r.messages.is_empty() && !r.has_more);
}

#[tokio::test]
async fn sync_paging_yields_every_message_exactly_once() {
    let node = node_with(|c| c.limits.max_sync_page = 4).await;
    let (a, _rooms, all) = three_rooms(&node, [5, 3, 6]).await;
    let mut cursors: HashMap<String, i64> = HashMap::new();
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let r = node.svc.sync(&a.id, &cursors).await.unwrap();
        pages += 1;
        assert!(pages < 50, "sync never finished");
        assert!(r.messages.len() <= 4, "a page is larger than max_sync_page");
        if r.has_more {
            assert!(!r.messages.is_empty(), "an empty page says has_more");
        }
        for m in &r.messages {
            let c = cursors.entry(m.room_id.clone()).or_insert(0);
            *c = (*c).max(m.seq);
        }
        got.extend(r.messages);
        if !r.has_more {
            break;
        }
    }
    assert_eq!(got, all, "every message exactly once, in (room, seq) order");
    assert_eq!(pages, 4, "14 messages in pages of 4");
}

#[tokio::test]
async fn sync_cursors_missing_negative_or_foreign_count_from_zero_or_are_ignored() {
    let node = node().await;
    let (a, rooms, all) = three_rooms(&node, [2, 2, 2]).await;
    let of = |room: &str, after: i64| {
        all.iter()
            .filter(|m| m.room_id == room && m.seq > after)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut cursors = HashMap::new();
    cursors.insert(rooms[0].clone(), -5); // negative: from 0
    cursors.insert(rooms[1].clone(), 1); // partial
    // rooms[2] missing: from 0.
    cursors.insert(model::new_id(), 3); // not a room of a's: ignored
    let r = node.svc.sync(&a.id, &cursors).await.unwrap();
    let mut want: Vec<Message> = Vec::new();
    want.extend(of(&rooms[0], 0));
    want.extend(of(&rooms[1], 1));
    want.extend(of(&rooms[2], 0));
    want.sort_by(|x, y| (&x.room_id, x.seq).cmp(&(&y.room_id, y.seq)));
    assert_eq!(r.messages, want);
    assert_eq!(r.messages.len(), 5);
    assert!(!r.has_more);
    cursors.insert(rooms[0].clone(), i64::MIN);
    assert_eq!(node.svc.sync(&a.id, &cursors).await.unwrap().messages, want);
}

// --- typing and read receipts ------------------------------------------------------------------

#[tokio::test]
async fn typing_needs_membership_and_is_published() {
    let node = node().await;
    let a = user(&node.svc).await;
    let outsider = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    let mut events = node.backends.bus.subscribe();
    node.svc.typing(&a.id, &room.id, true).await.unwrap();
    node.svc.typing(&a.id, &room.id, false).await.unwrap();
    assert_eq!(code(node.svc.typing(&outsider.id, &room.id, true).await), "not_member");
    assert_eq!(
        code(node.svc.typing(&a.id, &model::new_id(), true).await),
        "room_not_found"
    );
    assert_eq!(
        drain(&mut events),
        vec![
            BusEvent::Typing {
                room_id: room.id.clone(),
                address: a.address,
                active: true
            },
            BusEvent::Typing {
                room_id: room.id.clone(),
                address: a.address,
                active: false
            },
        ]
    );
}

#[tokio::test]
async fn read_markers_never_decrease_and_stay_within_the_room() {
    let node = node().await;
    let a = user(&node.svc).await;
    let outsider = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    for i in 1..=3 {
        send(&node.svc, &a.id, &room.id, "m", &format!("c{i}")).await;
    }
    let mut events = node.backends.bus.subscribe();
    let read = |seq| BusEvent::Read {
        room_id: room.id.clone(),
        address: a.address,
        seq,
    };

    assert_eq!(node.svc.read(&a.id, &room.id, 2).await.unwrap(), 2);
    assert_eq!(drain(&mut events), vec![read(2)]);
    // Lower: unchanged, nothing published.
    assert_eq!(node.svc.read(&a.id, &room.id, 1).await.unwrap(), 2);
    assert_eq!(node.svc.read(&a.id, &room.id, 0).await.unwrap(), 2);
    assert!(drain(&mut events).is_empty());
    assert_eq!(node.svc.read(&a.id, &room.id, 3).await.unwrap(), 3);
    assert_eq!(drain(&mut events), vec![read(3)]);
    // Out of range.
    assert_eq!(code(node.svc.read(&a.id, &room.id, 4).await), "invalid_request");
    assert_eq!(code(node.svc.read(&a.id, &room.id, -1).await), "invalid_request");
    assert_eq!(code(node.svc.read(&outsider.id, &room.id, 1).await), "not_member");
    assert_eq!(code(node.svc.read(&a.id, &model::new_id(), 1).await), "room_not_found");
    assert!(drain(&mut events).is_empty());
    assert_eq!(node.svc.read(&a.id, &room.id, 1).await.unwrap(), 3);
}

// --- presence ----------------------------------------------------------------------------------

#[tokio::test]
async fn presence_goes_online_with_the_first_socket_and_offline_with_the_last() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[b.address]).await.unwrap();
    let (dm, _) = node.svc.open_dm(&a.id, b.address).await.unwrap();
    let mut rooms = vec![room.id.clone(), dm.id.clone()];
    rooms.sort();
    let mut events = node.backends.bus.subscribe();
    let presence = |online| BusEvent::Presence {
        address: a.address,
        online,
        rooms: rooms.clone(),
    };

    node.svc.connected(&a.id, "conn-1").await.unwrap();
    node.svc.connected(&a.id, "conn-2").await.unwrap();
    assert_eq!(drain(&mut events), vec![presence(true)]);
    assert!(node.svc.user(a.address).await.unwrap().online);

    node.svc.disconnected(&a.id, "conn-1").await.unwrap();
    assert!(drain(&mut events).is_empty());
    assert!(node.svc.user(a.address).await.unwrap().online);
    // An unknown connection changes nothing.
    node.svc.disconnected(&a.id, "conn-9").await.unwrap();
    assert!(drain(&mut events).is_empty());

    node.svc.disconnected(&a.id, "conn-2").await.unwrap();
    assert_eq!(drain(&mut events), vec![presence(false)]);
    assert!(!node.svc.user(a.address).await.unwrap().online);
    // A second disconnect of the same socket says nothing more.
    node.svc.disconnected(&a.id, "conn-2").await.unwrap();
    assert!(drain(&mut events).is_empty());
    assert!(!node.svc.user(b.address).await.unwrap().online);
}

#[tokio::test]
async fn sockets_per_user_are_capped() {
    let node = node_with(|c| c.limits.max_sockets_per_user = 2).await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    node.svc.connected(&a.id, "1").await.unwrap();
    node.svc.connected(&a.id, "2").await.unwrap();
    assert_eq!(code(node.svc.connected(&a.id, "3").await), "too_many_connections");
    // Per user, not per node.
    node.svc.connected(&b.id, "1").await.unwrap();
    // A freed slot can be reused.
    node.svc.disconnected(&a.id, "1").await.unwrap();
    node.svc.connected(&a.id, "3").await.unwrap();
    assert_eq!(code(node.svc.connected(&a.id, "4").await), "too_many_connections");
    let (online, _) = node.svc.live_gauges().await.unwrap();
    assert_eq!(online, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_connects_never_pass_the_socket_cap() {
    let node = node_with(|c| c.limits.max_sockets_per_user = 3).await;
    let a = user(&node.svc).await;
    let mut events = node.backends.bus.subscribe();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let svc = node.svc.clone();
            let id = a.id.clone();
            tokio::spawn(async move { svc.connected(&id, &format!("conn-{i}")).await })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => accepted += 1,
            Err(e) => assert_eq!(e.code(), "too_many_connections"),
        }
    }
    assert_eq!(accepted, 3);
    let online: Vec<BusEvent> = drain(&mut events)
        .into_iter()
        .filter(|e| matches!(e, BusEvent::Presence { online: true, .. }))
        .collect();
    assert_eq!(online.len(), 1, "online is announced once");
}

// --- scheduled messages ------------------------------------------------------------------------

fn scheduled_req(room_id: &str, body: &str, client_msg_id: &str, deliver_at: String) -> SendRequest {
    SendRequest {
        deliver_at: Some(deliver_at),
        ..req(room_id, body, client_msg_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_is_delivered_by_the_scheduler_with_the_next_seq() {
    let node = node().await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    send(&node.svc, &a.id, &room.id, "one", "c1").await;
    send(&node.svc, &a.id, &room.id, "two", "c2").await;
    let mut events = node.backends.bus.subscribe();

    let at = model::now_ms() + Duration::from_millis(500);
    // Any offset is accepted; the instant is kept to the millisecond.
    let at_text = at
        .to_offset(time::macros::offset!(+2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let scheduled = match node
        .svc
        .send(&a.id, scheduled_req(&room.id, "later", "sched", at_text.clone()))
        .await
        .unwrap()
    {
        SendOutcome::Scheduled { scheduled, created } => {
            assert!(created);
            scheduled
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(scheduled.deliver_at, at);
    assert_eq!(scheduled.room_id, room.id);
    assert_eq!(scheduled.sender, a.address);
    // A resend returns the pending entry (with or without deliver_at); a different body conflicts.
    for resend in [
        scheduled_req(&room.id, "later", "sched", at_text.clone()),
        req(&room.id, "later", "sched"),
    ] {
        match node.svc.send(&a.id, resend).await.unwrap() {
            SendOutcome::Scheduled {
                scheduled: again,
                created,
            } => {
                assert!(!created);
                assert_eq!(again, scheduled);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        code(
            node.svc
                .send(&a.id, scheduled_req(&room.id, "sooner", "sched", at_text))
                .await
        ),
        "idempotency_conflict"
    );
    // Nothing visible yet: no seq, no event.
    assert_eq!(node.svc.room(&a.id, &room.id).await.unwrap().last_seq, 2);
    assert!(created_messages(&drain(&mut events)).is_empty());

    let delivered = run_scheduler_until(&node, &mut events, |_| true).await.remove(0);

    assert_eq!(delivered.id, scheduled.id);
    assert_eq!(delivered.seq, 3);
    assert_eq!(delivered.body, "later");
    assert_eq!(delivered.client_msg_id, "sched");
    assert!(delivered.created_at >= at, "delivered before deliver_at");
    let h = node
        .svc
        .history(&a.id, &room.id, HistoryPage::After(2), None)
        .await
        .unwrap();
    assert_eq!(h.messages, vec![delivered.clone()]);
    // Once delivered, a resend returns the message.
    match node.svc.send(&a.id, req(&room.id, "later", "sched")).await.unwrap() {
        SendOutcome::Sent { message, created } => {
            assert!(!created);
            assert_eq!(message, delivered);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        node.backends
            .store
            .find_scheduled(a.address, "sched")
            .await
            .unwrap()
            .is_none()
    );
    // Exactly one fan-out.
    assert!(created_messages(&drain(&mut events)).is_empty());
}

#[tokio::test]
async fn deliver_at_must_be_rfc3339_and_within_the_horizon() {
    let node = node_with(|c| c.limits.max_schedule_ahead_secs = 60).await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    let far = model::fmt_time(model::now_ms() + Duration::from_secs(120));
    assert_eq!(
        code(node.svc.send(&a.id, scheduled_req(&room.id, "x", "far", far)).await),
        "invalid_request"
    );
    for bad in ["tomorrow", "2030-01-01", "2030-01-01 10:00:00"] {
        assert_eq!(
            code(
                node.svc
                    .send(&a.id, scheduled_req(&room.id, "x", "bad", bad.into()))
                    .await
            ),
            "invalid_request"
        );
    }
    let near = model::fmt_time(model::now_ms() + Duration::from_secs(30));
    assert!(matches!(
        node.svc
            .send(&a.id, scheduled_req(&room.id, "x", "near", near))
            .await
            .unwrap(),
        SendOutcome::Scheduled { created: true, .. }
    ));
    // Scheduling in a room one is not in is refused when accepted.
    let outsider = user(&node.svc).await;
    let soon = model::fmt_time(model::now_ms() + Duration::from_secs(30));
    assert_eq!(
        code(
            node.svc
                .send(&outsider.id, scheduled_req(&room.id, "x", "o", soon))
                .await
        ),
        "not_member"
    );
}

#[tokio::test]
async fn pending_scheduled_messages_are_capped_per_user() {
    let node = node_with(|c| c.limits.max_scheduled_per_user = 2).await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    let at = || model::fmt_time(model::now_ms() + Duration::from_secs(600));
    node.svc
        .send(&a.id, scheduled_req(&room.id, "1", "s1", at()))
        .await
        .unwrap();
    node.svc
        .send(&a.id, scheduled_req(&room.id, "2", "s2", at()))
        .await
        .unwrap();
    assert_eq!(
        code(node.svc.send(&a.id, scheduled_req(&room.id, "3", "s3", at())).await),
        "forbidden"
    );
    // A resend of a pending one is still answered.
    assert!(matches!(
        node.svc
            .send(&a.id, scheduled_req(&room.id, "2", "s2", at()))
            .await
            .unwrap(),
        SendOutcome::Scheduled { created: false, .. }
    ));
    // Immediate sends are not affected.
    assert_eq!(send(&node.svc, &a.id, &room.id, "now", "n1").await.seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_drops_an_entry_whose_sender_left_the_room() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[b.address]).await.unwrap();
    let now = model::now_ms();
    let first = model::fmt_time(now + Duration::from_millis(600));
    let second = model::fmt_time(now + Duration::from_millis(700));
    node.svc
        .send(&b.id, scheduled_req(&room.id, "gone", "b-s", first))
        .await
        .unwrap();
    node.svc
        .send(&a.id, scheduled_req(&room.id, "stays", "a-s", second))
        .await
        .unwrap();
    node.svc.remove_member(&b.id, &room.id, b.address).await.unwrap();
    let mut events = node.backends.bus.subscribe();

    // Entries are delivered in deliver_at order, so once a's is out, b's has been handled.
    let delivered = run_scheduler_until(&node, &mut events, |_| true).await.remove(0);
    assert_eq!(
        (delivered.sender, delivered.body.as_str(), delivered.seq),
        (a.address, "stays", 1)
    );
    assert!(
        node.backends
            .store
            .find_scheduled(b.address, "b-s")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        node.backends
            .store
            .find_by_client_msg_id(b.address, "b-s")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        node.svc
            .history(&a.id, &room.id, HistoryPage::After(0), None)
            .await
            .unwrap()
            .messages,
        vec![delivered]
    );
}

#[tokio::test]
async fn a_deliver_at_in_the_past_is_sent_immediately() {
    let node = node().await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    let mut events = node.backends.bus.subscribe();
    let past = model::fmt_time(model::now_ms() - Duration::from_secs(3600));
    let message = match node
        .svc
        .send(&a.id, scheduled_req(&room.id, "now", "p1", past))
        .await
        .unwrap()
    {
        SendOutcome::Sent { message, created } => {
            assert!(created);
            message
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(message.seq, 1);
    assert_eq!(created_messages(&drain(&mut events)), vec![message]);
    assert!(
        node.backends
            .store
            .find_scheduled(a.address, "p1")
            .await
            .unwrap()
            .is_none()
    );
}

// --- restart -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_restart_keeps_history_and_sessions() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "durable", &[b.address]).await.unwrap();
    let mut sent = Vec::new();
    for i in 1..=5 {
        sent.push(send(&node.svc, &a.id, &room.id, &format!("m{i}"), &format!("c{i}")).await);
    }
    let pending = model::fmt_time(model::now_ms() + Duration::from_secs(3600));
    node.svc
        .send(&a.id, scheduled_req(&room.id, "later", "s1", pending))
        .await
        .unwrap();
    node.svc.logout(&b.id).await.unwrap();
    node.backends.store.close().await.unwrap();
    let ready = node.svc.readiness().await;
    assert_eq!(ready[0].0, "storage");
    assert_eq!(ready[0].1.as_ref().map_err(|e| e.code()), Err("shutting_down"));
    // The closed store refuses writes.
    assert_eq!(
        code(node.svc.send(&a.id, req(&room.id, "lost", "c6")).await),
        "shutting_down"
    );

    let backends = coolchat::backends::open(&node.cfg).await.unwrap();
    let svc = ChatService::new(backends.clone(), node.cfg.clone(), origin());
    assert!(svc.readiness().await.iter().all(|(_, r)| r.is_ok()));
    let who = svc.authenticate(Some(&a.token)).await.unwrap();
    assert_eq!(who, a.id);
    assert_eq!(code(svc.authenticate(Some(&b.token)).await), "token_revoked");
    let room_after = svc.room(&who, &room.id).await.unwrap();
    assert_eq!(room_after.last_seq, 5);
    assert_eq!(room_after.members, room.members);
    assert_eq!(
        svc.history(&who, &room.id, HistoryPage::After(0), None)
            .await
            .unwrap()
            .messages,
        sent
    );
    // Idempotence survives too, and the next message follows on.
    match svc.send(&who, req(&room.id, "m3", "c3")).await.unwrap() {
        SendOutcome::Sent { message, created } => assert_eq!((message, created), (sent[2].clone(), false)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        svc.send(&who, req(&room.id, "later", "s1")).await.unwrap(),
        SendOutcome::Scheduled { created: false, .. }
    ));
    assert_eq!(send(&svc, &who, &room.id, "m6", "c6").await.seq, 6);
    backends.store.close().await.unwrap();
}

// --- media -----------------------------------------------------------------------------------------

fn chunks(parts: Vec<Vec<u8>>) -> coolchat::media::ByteStream {
    use futures::StreamExt;
    futures::stream::iter(parts.into_iter().map(|p| Ok(bytes::Bytes::from(p)))).boxed()
}

async fn read_all(body: coolchat::media::ByteStream) -> Vec<u8> {
    use futures::StreamExt;
    let parts: Vec<bytes::Bytes> = body.map(|c| c.unwrap()).collect().await;
    parts.concat()
}

fn with_media(room_id: &str, body: &str, client_msg_id: &str, media: Vec<String>) -> coolchat::service::SendRequest {
    coolchat::service::SendRequest {
        media,
        ..req(room_id, body, client_msg_id)
    }
}

#[tokio::test]
async fn media_upload_download_and_the_access_rule() {
    let node = node().await;
    let (a, b, c) = (user(&node.svc).await, user(&node.svc).await, user(&node.svc).await);
    let room = node.svc.create_room(&a.id, "pics", &[b.address]).await.unwrap();
    let r = node
        .svc
        .upload_media(
            &a.id,
            "Image/PNG",
            Some(" cat.png ".into()),
            chunks(vec![b"hello ".to_vec(), b"world".to_vec()]),
            Some(11),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.content_type.as_str(), r.size, r.name.as_deref()),
        ("image/png", 11, Some("cat.png"))
    );
    let meta = node.backends.store.get_media_meta(&r.id).await.unwrap().unwrap();
    assert_eq!(meta.uploader, a.address);

    let down = node.svc.download_media(&a.id, &r.id).await.unwrap();
    assert_eq!((down.size, down.meta.content_type.as_str()), (11, "image/png"));
    assert_eq!(read_all(down.body).await, b"hello world");
    // Not yet carried by any message: only the uploader.
    assert_eq!(code(node.svc.download_media(&b.id, &r.id).await), "not_found");

    let sent = match node
        .svc
        .send(&a.id, with_media(&room.id, "look", "m1", vec![r.id.clone()]))
        .await
        .unwrap()
    {
        SendOutcome::Sent { message, .. } => message,
        other => panic!("{other:?}"),
    };
    assert_eq!(sent.media, vec![r.clone()]);
    assert_eq!(
        read_all(node.svc.download_media(&b.id, &r.id).await.unwrap().body).await,
        b"hello world"
    );
    assert_eq!(
        code(node.svc.download_media(&c.id, &r.id).await),
        "not_found",
        "non-member"
    );
    assert_eq!(
        code(node.svc.download_media(&c.id, "nope").await),
        "not_found",
        "unknown"
    );

    // Retries: same media is the same message; different media is a conflict.
    match node
        .svc
        .send(&a.id, with_media(&room.id, "look", "m1", vec![r.id.clone()]))
        .await
        .unwrap()
    {
        SendOutcome::Sent { message, created } => assert!(!created && message.id == sent.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        code(node.svc.send(&a.id, with_media(&room.id, "look", "m1", vec![])).await),
        "idempotency_conflict"
    );
}

#[tokio::test]
async fn media_upload_limits_and_validation() {
    let node = node_with(|cfg| cfg.media.max_upload_bytes = 10).await;
    let a = user(&node.svc).await;
    let media_dir = node.dir.path().join("media");
    let files = || walkdir(&media_dir);
    // Declared too large: refused up front.
    assert_eq!(
        code(
            node.svc
                .upload_media(&a.id, "image/png", None, chunks(vec![vec![0; 5]]), Some(11))
                .await
        ),
        "payload_too_large"
    );
    // Undeclared and too large: refused while streaming, nothing stored.
    assert_eq!(
        code(
            node.svc
                .upload_media(&a.id, "image/png", None, chunks(vec![vec![0; 6], vec![0; 6]]), None)
                .await
        ),
        "payload_too_large"
    );
    assert_eq!(files(), 0);
    for bad in [
        "image",
        "/png",
        "image/",
        "image/png; q=1",
        "a b/c",
        "",
        &format!("x/{}", "y".repeat(130)),
    ] {
        assert_eq!(
            code(
                node.svc
                    .upload_media(&a.id, bad, None, chunks(vec![vec![1]]), Some(1))
                    .await
            ),
            "invalid_request",
            "{bad:?}"
        );
    }
    assert_eq!(
        code(
            node.svc
                .upload_media(&a.id, "text/plain", Some("a\nb".into()), chunks(vec![vec![1]]), Some(1))
                .await
        ),
        "invalid_request"
    );
    assert_eq!(files(), 0);
    let ok = node
        .svc
        .upload_media(&a.id, "application/vnd.api+json", None, chunks(vec![vec![1; 10]]), None)
        .await
        .unwrap();
    assert_eq!((ok.size, ok.name), (10, None));
    assert_eq!(files(), 1);
}

fn walkdir(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .map(|p| if p.is_dir() { walkdir(&p) } else { 1 })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn attaching_media_requires_own_existing_uploads() {
    let node = node().await;
    let (a, b) = (user(&node.svc).await, user(&node.svc).await);
    let room = node.svc.create_room(&a.id, "r", &[b.address]).await.unwrap();
    let of_b = node
        .svc
        .upload_media(&b.id, "text/plain", None, chunks(vec![b"b".to_vec()]), Some(1))
        .await
        .unwrap();
    let mut mine = Vec::new();
    for _ in 0..11 {
        mine.push(
            node.svc
                .upload_media(&a.id, "text/plain", None, chunks(vec![b"a".to_vec()]), Some(1))
                .await
                .unwrap()
                .id,
        );
    }
    let send =
        |body: &str, cmid: &str, media: Vec<String>| node.svc.send(&a.id, with_media(&room.id, body, cmid, media));
    assert_eq!(
        code(send("x", "1", vec![of_b.id.clone()]).await),
        "invalid_request",
        "someone else's"
    );
    assert_eq!(
        code(send("x", "2", vec!["missing".into()]).await),
        "invalid_request",
        "unknown"
    );
    assert_eq!(code(send("x", "3", mine.clone()).await), "invalid_request", "eleven");
    assert_eq!(
        code(send("x", "4", vec![mine[0].clone(), mine[0].clone()]).await),
        "invalid_request",
        "twice"
    );
    // Nothing of the refused sends consumed a seq.
    assert_eq!(node.svc.room(&a.id, &room.id).await.unwrap().last_seq, 0);
    // Media cannot be scheduled.
    let later = model::fmt_time(model::now_ms() + Duration::from_secs(60));
    let mut scheduled = with_media(&room.id, "later", "5", vec![mine[0].clone()]);
    scheduled.deliver_at = Some(later);
    assert_eq!(code(node.svc.send(&a.id, scheduled).await), "invalid_request");
    // Ten is the maximum; a media-only message may have an empty body (text-only may not).
    match send("", "6", mine[..10].to_vec()).await.unwrap() {
        SendOutcome::Sent { message, .. } => {
            assert_eq!(
                message.media.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
                mine[..10].to_vec()
            );
            assert_eq!(message.seq, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(code(send(" ", "7", vec![]).await), "invalid_request");
}

#[tokio::test]
async fn uploads_are_rate_limited_per_user() {
    let node = node_with(|c| c.media.uploads_per_minute = 2).await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    for _ in 0..2 {
        node.svc
            .upload_media(&a.id, "text/plain", None, chunks(vec![b"x".to_vec()]), Some(1))
            .await
            .unwrap();
    }
    let refused = node
        .svc
        .upload_media(&a.id, "text/plain", None, chunks(vec![b"x".to_vec()]), Some(1))
        .await;
    assert_eq!(code(refused), "rate_limited");
    // Per user: another user is not affected.
    node.svc
        .upload_media(&b.id, "text/plain", None, chunks(vec![b"x".to_vec()]), Some(1))
        .await
        .unwrap();
}
