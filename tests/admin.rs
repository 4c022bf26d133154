//! The operator's commands (`AdminService`) over the real embedded backends a node uses, with
//! the chat service alongside to observe their effect. Live notifications go straight onto the
//! node's bus (`Notifier::Bus`), except in the last test, where they take the embedded route:
//! the store's control log, replayed onto the bus by `run_control_watcher`.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use coolchat::address::Address;
use coolchat::admin::{AdminService, Notifier};
use coolchat::auth::token;
use coolchat::bus::{BusEvent, EndReason};
use coolchat::model::{self, Ban, Message, RoomKind, Session};
use coolchat::service::{SendOutcome, SendRequest};
use coolchat::storage::HistoryPage;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ACTOR: &str = "admin:test@host";

fn admin(node: &Node) -> AdminService {
    AdminService::new(
        node.backends.store.clone(),
        node.backends.media.clone(),
        Notifier::Bus(node.backends.bus.clone()),
        ACTOR.into(),
    )
}

fn no_progress(_: u64, _: u64) {}

fn deleted_events(events: &[BusEvent]) -> Vec<(String, String, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            BusEvent::MessageDeleted { room_id, id, seq } => Some((room_id.clone(), id.clone(), *seq)),
            _ => None,
        })
        .collect()
}

fn positions(messages: &[Message]) -> Vec<(String, String, i64)> {
    messages
        .iter()
        .map(|m| (m.room_id.clone(), m.id.clone(), m.seq))
        .collect()
}

async fn whole_history(node: &Node, who: &coolchat::service::Identity, room_id: &str) -> Vec<Message> {
    node.svc
        .history(who, room_id, HistoryPage::After(0), Some(200))
        .await
        .unwrap()
        .messages
}

// --- bans ----------------------------------------------------------------------------------------

#[tokio::test]
async fn a_ban_revokes_sessions_refuses_sign_in_ends_sockets_and_is_audited() {
    let node = node().await;
    let a = user(&node.svc).await;
    let second = sign_in_key(&node.svc, a.key.clone()).await;
    let bystander = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[bystander.address]).await.unwrap();
    let kept = send(&node.svc, &a.id, &room.id, "still here", "c1").await;
    let mut events = node.backends.bus.subscribe();

    let report = admin(&node)
        .ban(a.address, Some("spam".into()), None, false, &no_progress)
        .await
        .unwrap();
    assert_eq!(report.sessions_revoked, 2);
    assert!(report.sockets_notified);
    assert_eq!(report.messages_tombstoned, 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.ban.address, a.address);
    assert_eq!(report.ban.reason.as_deref(), Some("spam"));
    assert_eq!(report.ban.banned_by, ACTOR);
    assert_eq!(report.ban.until, None);
    assert_eq!(
        drain(&mut events),
        vec![BusEvent::AddressEnded {
            address: a.address,
            reason: EndReason::Banned
        }]
    );

    // Every session of the address is over; the bystander's is not.
    for t in [&a.token, &second.token] {
        let c = code(node.svc.authenticate(Some(t)).await);
        assert!(c == "token_revoked" || c == "banned", "{c}");
    }
    assert_eq!(code(node.svc.recheck(&a.id).await), "token_revoked");
    node.svc.authenticate(Some(&bystander.token)).await.unwrap();
    assert_eq!(admin(&node).user(a.address).await.unwrap().live_sessions, 0);
    // Signing in again is refused.
    assert_eq!(code(try_sign_in(&node.svc, &a.key).await), "banned");
    // A session that somehow survived is refused too.
    let tok = token::new_token();
    let now = model::now_ms();
    node.backends
        .store
        .create_session(Session {
            token_hash: token::hash_token(&tok),
            address: a.address,
            created_at: now,
            expires_at: now + Duration::from_secs(3600),
            revoked_at: None,
        })
        .await
        .unwrap();
    assert_eq!(code(node.svc.authenticate(Some(&tok)).await), "banned");
    // Without purge, their messages stay.
    assert_eq!(whole_history(&node, &bystander.id, &room.id).await, vec![kept]);

    // Audit: who, what, why.
    let audit = admin(&node).audit_log(Some(a.address.to_checksum()), 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "ban");
    assert_eq!(audit[0].actor, ACTOR);
    assert_eq!(audit[0].target, a.address.to_checksum());
    assert_eq!(audit[0].detail["reason"], "spam");
    assert_eq!(audit[0].detail["purge"], false);
    assert_eq!(audit[0].detail["sessions_revoked"], 2);
    // Listed, and shown on the user.
    let bans = admin(&node).bans().await.unwrap();
    assert_eq!(bans, vec![report.ban.clone()]);
    let shown = admin(&node).user(a.address).await.unwrap();
    assert!(shown.banned);
    assert_eq!(shown.ban, Some(report.ban));
    // The session written directly after the ban is the only one that looks live (and is
    // refused anyway, above).
    assert_eq!(shown.live_sessions, 1);
    assert_eq!(shown.sessions.iter().filter(|s| s.revoked_at.is_some()).count(), 2);
}

#[tokio::test]
async fn a_ban_with_purge_tombstones_every_message_of_the_address() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let r1 = node.svc.create_room(&a.id, "one", &[b.address]).await.unwrap();
    let r2 = node.svc.create_room(&a.id, "two", &[b.address]).await.unwrap();
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..3 {
        mine.push(send(&node.svc, &a.id, &r1.id, &format!("a{i}"), &format!("a1-{i}")).await);
        theirs.push(send(&node.svc, &b.id, &r1.id, &format!("b{i}"), &format!("b1-{i}")).await);
    }
    for i in 0..2 {
        mine.push(send(&node.svc, &a.id, &r2.id, &format!("a{i}"), &format!("a2-{i}")).await);
    }
    let before1 = whole_history(&node, &b.id, &r1.id).await;
    let before2 = whole_history(&node, &b.id, &r2.id).await;
    let mut events = node.backends.bus.subscribe();

    let progress = Mutex::new(Vec::new());
    let record = |done: u64, total: u64| progress.lock().unwrap().push((done, total));
    let report = admin(&node)
        .ban(a.address, Some("abuse".into()), None, true, &record)
        .await
        .unwrap();
    assert_eq!(report.messages_tombstoned, 5);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(progress.lock().unwrap().last(), Some(&(5, 5)));

    let events = drain(&mut events);
    assert_eq!(
        events[0],
        BusEvent::AddressEnded {
            address: a.address,
            reason: EndReason::Banned
        }
    );
    let mut told = deleted_events(&events);
    told.sort();
    let mut want = positions(&mine);
    want.sort();
    assert_eq!(told, want, "one message:deleted per purged message");

    // Tombstones in place: same id, seq, sender and client_msg_id; empty body; others intact.
    for (before, room) in [(before1, &r1), (before2, &r2)] {
        let after = whole_history(&node, &b.id, &room.id).await;
        assert_eq!(after.len(), before.len());
        for (old, new) in before.iter().zip(&after) {
            assert_eq!(
                (&new.id, new.seq, new.sender, &new.client_msg_id),
                (&old.id, old.seq, old.sender, &old.client_msg_id)
            );
            if old.sender == a.address {
                assert!(new.deleted);
                assert!(new.body.is_empty());
            } else {
                assert_eq!(new, old);
            }
        }
    }
    assert!(theirs.iter().all(|m| !m.deleted));
    assert_eq!(node.svc.room(&b.id, &r1.id).await.unwrap().last_seq, 6);
    let audit = admin(&node).audit_log(Some(a.address.to_checksum()), 1).await.unwrap();
    assert_eq!(audit[0].detail["messages_tombstoned"], 5);
    assert_eq!(admin(&node).user(a.address).await.unwrap().messages, 0);
}

#[tokio::test]
async fn a_ban_that_would_already_be_over_is_refused() {
    let node = node().await;
    let a = user(&node.svc).await;
    let past = model::now_ms() - Duration::from_secs(1);
    assert_eq!(
        code(admin(&node).ban(a.address, None, Some(past), false, &no_progress).await),
        "invalid_request"
    );
    // Nothing happened.
    assert!(admin(&node).bans().await.unwrap().is_empty());
    assert!(admin(&node).audit_log(None, 10).await.unwrap().is_empty());
    node.svc.authenticate(Some(&a.token)).await.unwrap();
}

#[tokio::test]
async fn unban_lets_the_address_sign_in_again() {
    let node = node().await;
    let a = user(&node.svc).await;
    admin(&node)
        .ban(a.address, None, None, false, &no_progress)
        .await
        .unwrap();
    assert_eq!(code(try_sign_in(&node.svc, &a.key).await), "banned");
    assert!(admin(&node).unban(a.address).await.unwrap());
    let again = sign_in_key(&node.svc, a.key.clone()).await;
    assert_eq!(again.address, a.address);
    // The revoked session stays revoked.
    assert_eq!(code(node.svc.authenticate(Some(&a.token)).await), "token_revoked");
    // Unbanning twice says there was nothing to lift.
    assert!(!admin(&node).unban(a.address).await.unwrap());
    let actions: Vec<String> = admin(&node)
        .audit_log(Some(a.address.to_checksum()), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, vec!["unban", "unban", "ban"]);
    assert!(!admin(&node).user(a.address).await.unwrap().banned);
}

#[tokio::test]
async fn a_temporary_ban_is_reported_with_its_end() {
    let node = node().await;
    let a = user(&node.svc).await;
    let until = model::now_ms() + Duration::from_secs(3600);
    let report = admin(&node)
        .ban(a.address, None, Some(until), false, &no_progress)
        .await
        .unwrap();
    assert_eq!(report.ban.until, Some(until));
    match try_sign_in(&node.svc, &a.key).await {
        Err(coolchat::Error::Banned { until: Some(text) }) => assert_eq!(text, model::fmt_time(until)),
        other => panic!("expected a temporary ban, got {other:?}"),
    }
    let shown = admin(&node).user(a.address).await.unwrap();
    assert!(shown.banned);
    assert_eq!(shown.ban.unwrap().until, Some(until));
}

#[tokio::test]
async fn a_ban_that_is_over_no_longer_refuses_and_a_new_ban_replaces_the_old() {
    let node = node().await;
    let a = user(&node.svc).await;
    let now = model::now_ms();
    // Written straight to the store: the admin refuses to create a ban that is already over.
    let over = Ban {
        address: a.address,
        reason: Some("old".into()),
        banned_by: ACTOR.into(),
        created_at: now - Duration::from_secs(7200),
        until: Some(now - Duration::from_secs(1)),
    };
    node.backends.store.put_ban(over.clone()).await.unwrap();
    node.svc.authenticate(Some(&a.token)).await.unwrap();
    sign_in_key(&node.svc, a.key.clone()).await;
    let shown = admin(&node).user(a.address).await.unwrap();
    assert!(!shown.banned);
    assert_eq!(shown.ban, Some(over));
    assert_eq!(
        admin(&node).stats().await.unwrap().bans,
        1,
        "expired bans are still counted"
    );

    let until = model::now_ms() + Duration::from_secs(60);
    admin(&node)
        .ban(a.address, Some("first".into()), None, false, &no_progress)
        .await
        .unwrap();
    admin(&node)
        .ban(a.address, Some("second".into()), Some(until), false, &no_progress)
        .await
        .unwrap();
    let bans = admin(&node).bans().await.unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(
        (bans[0].reason.as_deref(), bans[0].until),
        (Some("second"), Some(until))
    );
}

/// The ban doc says "from that moment sign-in, REST and sends are refused", and the changelog
/// that every send re-checks for a ban. A scheduled message accepted before the ban is a send
/// that has not happened yet: it must not be delivered after it (least of all past a purge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_scheduled_messages_of_a_banned_address_are_not_delivered() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let room = node.svc.create_room(&b.id, "r", &[a.address]).await.unwrap();
    let now = model::now_ms();
    let spam_at = model::fmt_time(now + Duration::from_millis(600));
    let legit_at = model::fmt_time(now + Duration::from_millis(700));
    let spam = SendRequest {
        deliver_at: Some(spam_at),
        ..req(&room.id, "buy now", "spam")
    };
    assert!(matches!(
        node.svc.send(&a.id, spam).await.unwrap(),
        SendOutcome::Scheduled { created: true, .. }
    ));
    let legit = SendRequest {
        deliver_at: Some(legit_at),
        ..req(&room.id, "meeting at 3", "legit")
    };
    assert!(matches!(
        node.svc.send(&b.id, legit).await.unwrap(),
        SendOutcome::Scheduled { created: true, .. }
    ));
    admin(&node)
        .ban(a.address, Some("spam".into()), None, true, &no_progress)
        .await
        .unwrap();
    let mut events = node.backends.bus.subscribe();

    // Delivery follows deliver_at: once b's message is out, a's entry has been handled.
    let delivered = run_scheduler_until(&node, &mut events, |m| m.sender == b.address).await;
    let from_banned: Vec<&Message> = delivered.iter().filter(|m| m.sender == a.address).collect();
    assert!(
        from_banned.is_empty(),
        "a banned address's scheduled message was delivered after the ban: {from_banned:?}"
    );
    let history = whole_history(&node, &b.id, &room.id).await;
    assert!(
        history.iter().all(|m| m.sender != a.address || m.deleted),
        "{history:?}"
    );
}

// --- users and rooms -----------------------------------------------------------------------------

#[tokio::test]
async fn users_are_listed_in_address_order_and_shown_with_rooms_sessions_and_counts() {
    let node = node().await;
    let a = user(&node.svc).await;
    let a2 = sign_in_key(&node.svc, a.key.clone()).await;
    let a3 = sign_in_key(&node.svc, a.key.clone()).await;
    node.svc.logout(&a3.id).await.unwrap();
    let b = user(&node.svc).await;
    let c = user(&node.svc).await;
    let group = node.svc.create_room(&a.id, "g", &[b.address]).await.unwrap();
    let (dm, _) = node.svc.open_dm(&a.id, c.address).await.unwrap();
    for i in 0..3 {
        send(&node.svc, &a2.id, &group.id, "hi", &format!("g{i}")).await;
    }
    send(&node.svc, &a.id, &dm.id, "psst", "d0").await;
    send(&node.svc, &c.id, &dm.id, "hey", "d1").await;

    let mut all = vec![a.address, b.address, c.address];
    all.sort();
    let listed: Vec<Address> = admin(&node)
        .users(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.address)
        .collect();
    assert_eq!(listed, all);
    let page1: Vec<Address> = admin(&node)
        .users(None, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.address)
        .collect();
    let page2: Vec<Address> = admin(&node)
        .users(Some(page1[1]), 2)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.address)
        .collect();
    assert_eq!([page1, page2].concat(), all);

    let shown = admin(&node).user(a.address).await.unwrap();
    assert_eq!(shown.user.address, a.address);
    assert!(!shown.banned);
    assert_eq!(shown.ban, None);
    let mut room_ids = vec![group.id.clone(), dm.id.clone()];
    room_ids.sort();
    assert_eq!(shown.rooms.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), room_ids);
    let g = shown.rooms.iter().find(|r| r.id == group.id).unwrap();
    assert_eq!(
        (g.kind.as_str(), g.name.as_deref(), g.members, g.last_seq),
        ("group", Some("g"), 2, 3)
    );
    let d = shown.rooms.iter().find(|r| r.id == dm.id).unwrap();
    assert_eq!((d.kind.as_str(), d.members, d.last_seq), ("dm", 2, 2));
    assert_eq!(shown.sessions.len(), 3);
    assert_eq!(shown.live_sessions, 2);
    assert!(shown.sessions.iter().all(|s| s.id.len() == 12));
    let revoked: Vec<_> = shown.sessions.iter().filter(|s| !s.live).collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].id, a3.id.token_hash[..12]);
    assert!(revoked[0].revoked_at.is_some());
    assert_eq!(shown.messages, 4);

    assert_eq!(
        code(admin(&node).user(address_of(&random_key())).await),
        "user_not_found"
    );
}

#[tokio::test]
async fn rooms_are_listed_in_id_order_and_shown_with_members() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let mut made = Vec::new();
    for i in 0..3 {
        made.push(
            node.svc
                .create_room(&a.id, &format!("r{i}"), &[b.address])
                .await
                .unwrap(),
        );
    }
    made.push(node.svc.open_dm(&a.id, b.address).await.unwrap().0);
    send(&node.svc, &a.id, &made[1].id, "x", "x1").await;
    made[1].last_seq = 1;
    made.sort_by(|x, y| x.id.cmp(&y.id));

    assert_eq!(admin(&node).rooms(None, 100).await.unwrap(), made);
    let first = admin(&node).rooms(None, 3).await.unwrap();
    let rest = admin(&node).rooms(Some(first[2].id.clone()), 3).await.unwrap();
    assert_eq!([first, rest].concat(), made);
    for room in &made {
        assert_eq!(&admin(&node).room(&room.id).await.unwrap(), room);
    }
    assert_eq!(code(admin(&node).room("no-such-room").await), "room_not_found");
}

#[tokio::test]
async fn remove_member_tells_live_clients_and_refuses_non_members() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[b.address]).await.unwrap();
    let mut events = node.backends.bus.subscribe();

    let after = admin(&node).remove_member(&room.id, b.address).await.unwrap();
    assert_eq!(after.members, vec![a.address]);
    assert_eq!(
        drain(&mut events),
        vec![BusEvent::RoomChanged {
            room: after.clone(),
            added: vec![],
            removed: vec![b.address]
        }]
    );
    assert_eq!(code(node.svc.room(&b.id, &room.id).await), "not_member");
    assert_eq!(
        code(node.svc.send(&b.id, req(&room.id, "hi", "b1")).await),
        "not_member"
    );

    assert_eq!(
        code(admin(&node).remove_member(&room.id, b.address).await),
        "invalid_request"
    );
    assert_eq!(
        code(admin(&node).remove_member("no-such-room", b.address).await),
        "room_not_found"
    );
    assert!(drain(&mut events).is_empty());
    let audit = admin(&node).audit_log(Some(room.id.clone()), 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "remove_member");
}

/// `AdminService::remove_member` documents "DMs included: an operator may".
#[tokio::test]
async fn an_operator_cannot_split_a_dm() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let (dm, _) = node.svc.open_dm(&a.id, b.address).await.unwrap();
    assert_eq!(dm.kind, RoomKind::Dm);
    let mut events = node.backends.bus.subscribe();
    assert_eq!(code(admin(&node).remove_member(&dm.id, b.address).await), "forbidden");
    assert_eq!(drain(&mut events), vec![]);
    assert_eq!(node.svc.room(&b.id, &dm.id).await.unwrap().members.len(), 2);
}

// --- messages and sessions -----------------------------------------------------------------------

#[tokio::test]
async fn delete_message_leaves_a_tombstone_and_tells_live_clients() {
    let node = node().await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    let mut msgs = Vec::new();
    for i in 1..=3 {
        msgs.push(send(&node.svc, &a.id, &room.id, &format!("m{i}"), &format!("c{i}")).await);
    }
    let mut events = node.backends.bus.subscribe();

    let tomb = admin(&node).delete_message(&msgs[1].id).await.unwrap();
    assert!(tomb.deleted);
    assert!(tomb.body.is_empty());
    assert_eq!(
        (&tomb.id, tomb.seq, &tomb.room_id, tomb.sender),
        (&msgs[1].id, 2, &room.id, a.address)
    );
    assert_eq!(
        drain(&mut events),
        vec![BusEvent::MessageDeleted {
            room_id: room.id.clone(),
            id: msgs[1].id.clone(),
            seq: 2
        }]
    );
    let history = whole_history(&node, &a.id, &room.id).await;
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(history[0], msgs[0]);
    assert_eq!(history[1], tomb);
    assert_eq!(history[2], msgs[2]);

    // A retry of the deleted message's send gets the tombstone, not a second message.
    match node.svc.send(&a.id, req(&room.id, "m2", "c2")).await.unwrap() {
        SendOutcome::Sent { message, created } => {
            assert!(!created);
            assert_eq!(message, tomb);
        }
        other => panic!("{other:?}"),
    }
    assert!(drain(&mut events).is_empty());
    assert_eq!(send(&node.svc, &a.id, &room.id, "m4", "c4").await.seq, 4);

    assert_eq!(code(admin(&node).delete_message("no-such-message").await), "not_found");
    let audit = admin(&node).audit_log(Some(msgs[1].id.clone()), 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "delete_message");
    assert_eq!(audit[0].detail["seq"], 2);
}

#[tokio::test]
async fn revoke_sessions_ends_every_live_session_and_counts_them() {
    let node = node().await;
    let a = user(&node.svc).await;
    let a2 = sign_in_key(&node.svc, a.key.clone()).await;
    let a3 = sign_in_key(&node.svc, a.key.clone()).await;
    node.svc.logout(&a3.id).await.unwrap();
    let b = user(&node.svc).await;
    let mut events = node.backends.bus.subscribe();

    assert_eq!(admin(&node).revoke_sessions(a.address).await.unwrap(), 2);
    assert_eq!(
        drain(&mut events),
        vec![BusEvent::AddressEnded {
            address: a.address,
            reason: EndReason::Revoked
        }]
    );
    for t in [&a.token, &a2.token, &a3.token] {
        assert_eq!(code(node.svc.authenticate(Some(t)).await), "token_revoked");
    }
    node.svc.authenticate(Some(&b.token)).await.unwrap();
    // Nothing left to revoke; not a ban: signing in works.
    assert_eq!(admin(&node).revoke_sessions(a.address).await.unwrap(), 0);
    sign_in_key(&node.svc, a.key.clone()).await;
    let audit = admin(&node).audit_log(Some(a.address.to_checksum()), 10).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .map(|e| e.detail["revoked"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 2]
    );
}

#[tokio::test]
async fn stats_count_what_is_stored() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let c = user(&node.svc).await;
    node.svc.logout(&c.id).await.unwrap();
    let room = node.svc.create_room(&a.id, "r", &[b.address]).await.unwrap();
    let (dm, _) = node.svc.open_dm(&a.id, b.address).await.unwrap();
    let mut last = None;
    for i in 0..4 {
        last = Some(send(&node.svc, &a.id, &room.id, "m", &format!("r{i}")).await);
    }
    send(&node.svc, &b.id, &dm.id, "m", "d0").await;
    admin(&node).delete_message(&last.unwrap().id).await.unwrap();
    let later = model::fmt_time(model::now_ms() + Duration::from_secs(3600));
    let scheduled = SendRequest {
        deliver_at: Some(later),
        ..req(&room.id, "later", "s0")
    };
    node.svc.send(&a.id, scheduled).await.unwrap();
    // Banning an address that never signed in adds a ban and no user.
    admin(&node)
        .ban(address_of(&random_key()), None, None, false, &no_progress)
        .await
        .unwrap();

    let stats = admin(&node).stats().await.unwrap();
    assert_eq!(stats.users, 3);
    assert_eq!(stats.rooms, 2);
    assert_eq!(stats.messages, 4, "five sent, one deleted");
    assert_eq!(stats.messages_last_minute, 5);
    assert_eq!(stats.scheduled, 1);
    assert_eq!(stats.active_sessions, 2);
    assert_eq!(stats.bans, 1);
    assert!(stats.bytes_on_disk > 0);
}

// --- export and erasure --------------------------------------------------------------------------

#[tokio::test]
async fn export_holds_everything_about_a_user_and_no_secret() {
    let node = node().await;
    let a = user(&node.svc).await;
    let a2 = sign_in_key(&node.svc, a.key.clone()).await;
    let b = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[b.address]).await.unwrap();
    let (dm, _) = node.svc.open_dm(&b.id, a.address).await.unwrap();
    let mut mine = vec![
        send(&node.svc, &a.id, &room.id, "one", "1").await,
        send(&node.svc, &b.id, &room.id, "not mine", "b1").await,
        send(&node.svc, &a.id, &dm.id, "two", "2").await,
        send(&node.svc, &a.id, &room.id, "three", "3").await,
    ];
    mine.remove(1);
    mine.sort_by(|x, y| (&x.room_id, x.seq).cmp(&(&y.room_id, y.seq)));
    let later = model::fmt_time(model::now_ms() + Duration::from_secs(3600));
    node.svc
        .send(
            &a.id,
            SendRequest {
                deliver_at: Some(later),
                ..req(&room.id, "later", "s")
            },
        )
        .await
        .unwrap();
    admin(&node).revoke_sessions(a.address).await.unwrap();

    let progress = Mutex::new(Vec::new());
    let record = |done: u64, total: u64| progress.lock().unwrap().push((done, total));
    let export = admin(&node).export(a.address, &record).await.unwrap();
    assert_eq!(export.user.as_ref().unwrap().address, a.address);
    assert_eq!(export.ban, None);
    let mut room_ids = vec![room.id.clone(), dm.id.clone()];
    room_ids.sort();
    assert_eq!(export.rooms.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), room_ids);
    assert_eq!(export.messages, mine);
    assert_eq!(export.scheduled.len(), 1);
    assert_eq!(export.scheduled[0].body, "later");
    assert_eq!(export.sessions.len(), 2);
    assert!(export.sessions.iter().all(|s| s.id.len() == 12 && !s.live));
    assert_eq!(export.audit.len(), 1);
    assert_eq!(export.audit[0].action, "revoke_sessions");
    assert_eq!(progress.lock().unwrap().last(), Some(&(3, 3)));

    // No token and no full token hash anywhere in what an operator hands out.
    let json = serde_json::to_string(&export).unwrap();
    for who in [&a, &a2] {
        assert!(!json.contains(&who.token), "a token leaked");
        assert!(!json.contains(&who.id.token_hash), "a token hash leaked");
        assert!(
            !json.contains(&who.id.token_hash[..13]),
            "more than 12 digits of a token hash leaked"
        );
        assert!(json.contains(&who.id.token_hash[..12]));
    }
    assert!(!json.contains("not mine"));
    // The export itself is audited.
    let audit = admin(&node).audit_log(Some(a.address.to_checksum()), 1).await.unwrap();
    assert_eq!(audit[0].action, "export");
    assert_eq!(audit[0].detail["messages"], 3);

    assert_eq!(
        code(admin(&node).export(address_of(&random_key()), &no_progress).await),
        "user_not_found"
    );
}

#[tokio::test]
async fn delete_user_erases_the_user_tombstones_their_messages_and_tells_their_rooms() {
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let c = user(&node.svc).await;
    let group = node.svc.create_room(&a.id, "g", &[b.address, c.address]).await.unwrap();
    let (dm, _) = node.svc.open_dm(&a.id, b.address).await.unwrap();
    let mut mine = vec![
        send(&node.svc, &a.id, &group.id, "a1", "a1").await,
        send(&node.svc, &a.id, &dm.id, "a2", "a2").await,
        send(&node.svc, &a.id, &group.id, "a3", "a3").await,
    ];
    let b_said = send(&node.svc, &b.id, &group.id, "b1", "b1").await;
    let later = model::fmt_time(model::now_ms() + Duration::from_secs(3600));
    node.svc
        .send(
            &a.id,
            SendRequest {
                deliver_at: Some(later),
                ..req(&group.id, "later", "s")
            },
        )
        .await
        .unwrap();
    let mut events = node.backends.bus.subscribe();

    let report = admin(&node).delete_user(a.address).await.unwrap();
    assert_eq!(report.messages_tombstoned, 3);
    assert_eq!(report.memberships_removed, 2);
    assert_eq!(report.sessions_deleted, 1);
    assert_eq!(report.scheduled_deleted, 1);
    let mut room_ids = vec![group.id.clone(), dm.id.clone()];
    room_ids.sort();
    assert_eq!(report.rooms, room_ids);

    let events = drain(&mut events);
    assert_eq!(
        events[0],
        BusEvent::AddressEnded {
            address: a.address,
            reason: EndReason::Revoked
        }
    );
    let mut told = deleted_events(&events);
    told.sort();
    mine.sort_by(|x, y| (&x.room_id, x.seq).cmp(&(&y.room_id, y.seq)));
    let mut want = positions(&mine);
    want.sort();
    assert_eq!(told, want);
    let changed: Vec<(String, Vec<Address>, Vec<Address>, bool)> = events
        .iter()
        .filter_map(|e| match e {
            BusEvent::RoomChanged { room, added, removed } => Some((
                room.id.clone(),
                added.clone(),
                removed.clone(),
                room.members.contains(&a.address),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        changed,
        room_ids
            .iter()
            .map(|id| (id.clone(), vec![], vec![a.address], false))
            .collect::<Vec<_>>(),
        "every room of the erased user is told, with the user gone from it"
    );

    // Gone: user, sessions, memberships.
    assert_eq!(code(node.svc.user(a.address).await), "user_not_found");
    assert_eq!(code(admin(&node).user(a.address).await), "user_not_found");
    assert_eq!(code(node.svc.authenticate(Some(&a.token)).await), "invalid_token");
    assert_eq!(node.svc.room(&b.id, &group.id).await.unwrap().members, {
        let mut m = vec![b.address, c.address];
        m.sort();
        m
    });
    // Their messages are tombstones in place; others' stay.
    let history = whole_history(&node, &b.id, &group.id).await;
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    for m in &history {
        if m.sender == a.address {
            assert!(m.deleted && m.body.is_empty(), "{m:?}");
        } else {
            assert_eq!(m, &b_said);
        }
    }
    assert!(whole_history(&node, &b.id, &dm.id).await.iter().all(|m| m.deleted));
    assert!(
        node.backends
            .store
            .find_scheduled(a.address, "s")
            .await
            .unwrap()
            .is_none()
    );

    // Erasing again, or someone unknown: nothing to erase.
    assert_eq!(code(admin(&node).delete_user(a.address).await), "user_not_found");
    assert_eq!(
        code(admin(&node).delete_user(address_of(&random_key())).await),
        "user_not_found"
    );
    // The audit log keeps the operator's record.
    let audit = admin(&node).audit_log(Some(a.address.to_checksum()), 10).await.unwrap();
    assert_eq!(audit[0].action, "delete_user");
    assert_eq!(audit[0].detail["messages_tombstoned"], 3);

    // If the address comes back, it is a new user, and a DM with b is a new room.
    let back = sign_in_key(&node.svc, a.key.clone()).await;
    let (new_dm, created) = node.svc.open_dm(&back.id, b.address).await.unwrap();
    assert!(created);
    assert_ne!(new_dm.id, dm.id);
    assert_eq!(code(node.svc.room(&back.id, &group.id).await), "not_member");
}

/// Sends `n` messages from `who`, alternating between `rooms`, concurrently (so the store's
/// writer commits them in a few group commits). Returns them in (room id, seq) order.
async fn flood(node: &Node, who: &coolchat::service::Identity, rooms: &[&str], n: usize, tag: &str) -> Vec<Message> {
    let sends = (0..n).map(|i| {
        let room = rooms[i % rooms.len()];
        async move { send(&node.svc, who, room, &format!("{tag} {i}"), &format!("{tag}-{i}")).await }
    });
    let mut all = futures::future::join_all(sends).await;
    all.sort_by(|x, y| (&x.room_id, x.seq).cmp(&(&y.room_id, y.seq)));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_purge_and_erasure_page_past_one_batch() {
    // The admin pages through a user's messages 500 at a time.
    let node = node().await;
    let a = user(&node.svc).await;
    let c = user(&node.svc).await;
    let r1 = node.svc.create_room(&a.id, "one", &[c.address]).await.unwrap();
    let r2 = node.svc.create_room(&a.id, "two", &[c.address]).await.unwrap();
    let rooms = [r1.id.as_str(), r2.id.as_str()];
    let from_a = flood(&node, &a.id, &rooms, 520, "a").await;
    let from_c = flood(&node, &c.id, &rooms, 510, "c").await;

    let progress = Mutex::new(Vec::new());
    let record = |done: u64, total: u64| progress.lock().unwrap().push((done, total));
    let export = admin(&node).export(a.address, &record).await.unwrap();
    assert_eq!(export.messages, from_a);
    assert_eq!(progress.lock().unwrap().last(), Some(&(520, 520)));

    let mut events = node.backends.bus.subscribe();
    progress.lock().unwrap().clear();
    let report = admin(&node).ban(a.address, None, None, true, &record).await.unwrap();
    assert_eq!(report.messages_tombstoned, 520);
    assert_eq!(progress.lock().unwrap().last(), Some(&(520, 520)));
    let mut told = deleted_events(&drain(&mut events));
    told.sort();
    let mut want = positions(&from_a);
    want.sort();
    assert_eq!(told, want);

    let report = admin(&node).delete_user(c.address).await.unwrap();
    assert_eq!(report.messages_tombstoned, 510);
    let mut told = deleted_events(&drain(&mut events));
    told.sort();
    let mut want = positions(&from_c);
    want.sort();
    assert_eq!(told, want);

    let stats = admin(&node).stats().await.unwrap();
    assert_eq!(stats.messages, 0);
    let mut last = 0;
    for room in [&r1, &r2] {
        last += admin(&node).room(&room.id).await.unwrap().last_seq;
    }
    assert_eq!(last, 1030, "tombstones keep their seqs");
}

// --- the control log (admin in another process than the node) -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_log_notifications_reach_the_bus_through_the_watcher() {
    let node = node().await;
    let a = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "r", &[]).await.unwrap();
    let m = send(&node.svc, &a.id, &room.id, "bad", "c1").await;
    let store = node.backends.store.clone();
    let bus = node.backends.bus.clone();
    let admin = AdminService::new(
        store.clone(),
        node.backends.media.clone(),
        Notifier::ControlLog(store.clone()),
        ACTOR.into(),
    );
    let mut events = bus.subscribe();
    // Through the control log, nothing is published directly.
    let b = user(&node.svc).await;
    assert_eq!(admin.revoke_sessions(b.address).await.unwrap(), 1);
    assert!(drain(&mut events).is_empty());

    let stop = CancellationToken::new();
    let watcher = tokio::spawn(coolchat::worker::run_control_watcher(
        store.clone(),
        bus.clone(),
        Duration::from_millis(20),
        stop.clone(),
    ));
    // The watcher starts after the newest entry present when it starts. Push probes until one
    // comes through, so that it is known to be watching before the real commands.
    let probe_notifier = Notifier::ControlLog(store.clone());
    let mut probe = 0;
    loop {
        let room_id = format!("probe-{probe}");
        probe_notifier
            .notify(BusEvent::Typing {
                room_id: room_id.clone(),
                address: a.address,
                active: true,
            })
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(500), futures::StreamExt::next(&mut events)).await {
            Ok(Some(BusEvent::Typing { room_id: r, .. })) if r.starts_with("probe-") => break,
            // Entries older than the watcher (b's revocation) would come before any probe.
            Ok(Some(ev)) => panic!("the watcher replayed an entry from before it started: {ev:?}"),
            Ok(None) => panic!("the bus closed"),
            Err(_) => {
                probe += 1;
                assert!(probe < 20, "the control watcher never replayed a probe");
            }
        }
    }

    let report = admin.delete_message(&m.id).await.unwrap();
    assert!(report.deleted);
    admin
        .ban(a.address, Some("via control log".into()), None, false, &no_progress)
        .await
        .unwrap();

    // Replayed in order, as pushed.
    let first = wait_for(&mut events, |e| !matches!(e, BusEvent::Typing { .. })).await;
    assert_eq!(
        first,
        BusEvent::MessageDeleted {
            room_id: room.id.clone(),
            id: m.id.clone(),
            seq: 1
        }
    );
    let second = wait_for(&mut events, |e| !matches!(e, BusEvent::Typing { .. })).await;
    assert_eq!(
        second,
        BusEvent::AddressEnded {
            address: a.address,
            reason: EndReason::Banned
        }
    );

    stop.cancel();
    watcher.await.unwrap();
    // The writes themselves did not wait for the watcher.
    assert_eq!(code(node.svc.authenticate(Some(&a.token)).await), "token_revoked");
}

// --- erasure removes media ------------------------------------------------------------------------

#[tokio::test]
async fn delete_user_removes_their_media_bytes_and_metadata() {
    use futures::StreamExt;
    let node = node().await;
    let a = user(&node.svc).await;
    let b = user(&node.svc).await;
    let room = node.svc.create_room(&a.id, "pics", &[b.address]).await.unwrap();
    let body = futures::stream::iter(vec![Ok(bytes::Bytes::from_static(b"secret picture"))]).boxed();
    let media = node
        .svc
        .upload_media(&b.id, "image/png", None, body, Some(14))
        .await
        .unwrap();
    let sent = node
        .svc
        .send(
            &b.id,
            SendRequest {
                media: vec![media.id.clone()],
                ..req(&room.id, "look", "m1")
            },
        )
        .await
        .unwrap();
    assert!(matches!(sent, SendOutcome::Sent { created: true, .. }));
    assert!(
        node.svc.download_media(&a.id, &media.id).await.is_ok(),
        "a room-mate can download before erasure"
    );

    let report = admin(&node).delete_user(b.address).await.unwrap();
    assert_eq!(report.media_ids, vec![media.id.clone()]);
    assert!(
        node.backends.store.get_media_meta(&media.id).await.unwrap().is_none(),
        "metadata gone"
    );
    assert!(
        node.backends.media.get(&media.id).await.unwrap().is_none(),
        "bytes gone"
    );
    assert_eq!(code(node.svc.download_media(&a.id, &media.id).await), "not_found");
}
