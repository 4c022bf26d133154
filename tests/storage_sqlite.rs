//! The embedded store against real SQLite files (in a temporary directory): the guarantees the
//! `Store` trait documents, the writer thread's group commit, and close/reopen durability.

#![allow(clippy::unwrap_used)]

use coolchat::Error;
use coolchat::address::Address;
use coolchat::model::{self, Ban, NewMessage, RoomKind, ScheduledMessage, Session};
use coolchat::storage::sqlite::{MIGRATIONS, SqliteOptions, SqliteStore};
use coolchat::storage::{HistoryPage, MembershipLimits, NewRoom, Store};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tempfile::TempDir;
use time::OffsetDateTime;

fn addr(n: u8) -> Address {
    Address::from_bytes([n; 20])
}

const LIMITS: MembershipLimits = MembershipLimits {
    max_room_members: 100,
    max_rooms_per_user: 100,
};

fn opts() -> SqliteOptions {
    SqliteOptions {
        batch_max: 512,
        readers: 4,
        synchronous_full: true,
    }
}

/// A fresh store in its own temporary directory (nested, to check parents are created).
fn fresh() -> (TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("data").join("coolchat.db");
    let store = SqliteStore::open(&path, opts()).unwrap();
    (dir, path, store)
}

async fn group(store: &SqliteStore, id: &str, members: &[Address]) -> coolchat::model::Room {
    store
        .create_room(
            NewRoom {
                id: id.into(),
                name: Some(format!("room {id}")),
                created_by: members[0],
                members: members.to_vec(),
                created_at: model::now_ms(),
            },
            LIMITS,
        )
        .await
        .unwrap()
}

fn msg(room: &str, sender: Address, client_msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        id: model::new_id(),
        room_id: room.into(),
        sender,
        body: body.into(),
        client_msg_id: client_msg_id.into(),
        created_at: model::now_ms(),
        media: vec![],
    }
}

fn scheduled(room: &str, sender: Address, client_msg_id: &str, deliver_at: OffsetDateTime) -> ScheduledMessage {
    ScheduledMessage {
        id: model::new_id(),
        room_id: room.into(),
        sender,
        body: format!("later {client_msg_id}"),
        client_msg_id: client_msg_id.into(),
        deliver_at,
        created_at: model::now_ms(),
    }
}

fn seqs(messages: &[coolchat::model::Message]) -> Vec<i64> {
    messages.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn migrate_is_idempotent_and_sets_user_version() {
    let (_dir, path, store) = fresh();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.close().await.unwrap();
    // Reopening runs the migrations again: nothing to do, nothing breaks.
    let store = SqliteStore::open(&path, opts()).unwrap();
    store.migrate().await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = raw.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(store.describe(), format!("sqlite ({})", path.display()));
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let (_dir, path, store) = fresh();
    store.close().await.unwrap();
    drop(store);
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(&format!("PRAGMA user_version = {}", MIGRATIONS.len() + 1))
        .unwrap();
    drop(raw);
    let err = SqliteStore::open(&path, opts()).unwrap_err();
    assert_eq!(err.code(), "internal", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reopen_after_close_keeps_every_acknowledged_write() {
    let (_dir, path, store) = fresh();
    let (a, b) = (addr(1), addr(2));
    let now = model::now_ms();
    store.touch_user(a, now).await.unwrap();
    store.set_display_name(a, Some("Alice".into())).await.unwrap();
    store
        .create_session(Session {
            token_hash: "h1".into(),
            address: a,
            created_at: now,
            expires_at: now + Duration::from_secs(3600),
            revoked_at: None,
        })
        .await
        .unwrap();
    let room = group(&store, "r1", &[a, b]).await;
    let (dm, _) = store.get_or_create_dm("dm1".into(), a, b, now, LIMITS).await.unwrap();
    for i in 0..20 {
        store
            .append_message(msg(
                "r1",
                if i % 2 == 0 { a } else { b },
                &format!("c{i}"),
                &format!("hello {i}"),
            ))
            .await
            .unwrap();
    }
    store.set_read_marker("r1", b, 7).await.unwrap();
    let entry = scheduled("r1", a, "s1", now + Duration::from_secs(600));
    store.schedule_message(entry.clone(), 10).await.unwrap();
    let ban = Ban {
        address: addr(9),
        reason: Some("spam".into()),
        banned_by: "admin".into(),
        created_at: now,
        until: None,
    };
    store.put_ban(ban.clone()).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = SqliteStore::open(&path, opts()).unwrap();
    let user = store.get_user(a).await.unwrap().unwrap();
    assert_eq!(user.display_name.as_deref(), Some("Alice"));
    assert_eq!(user.created_at, now);
    assert_eq!(store.get_session("h1").await.unwrap().unwrap().address, a);
    assert_eq!(
        store.get_room("r1").await.unwrap().unwrap(),
        store.get_room(&room.id).await.unwrap().unwrap()
    );
    let reopened = store.get_room("r1").await.unwrap().unwrap();
    assert_eq!(reopened.last_seq, 20);
    assert_eq!(reopened.members, vec![a, b]);
    assert_eq!(store.get_room(&dm.id).await.unwrap().unwrap().kind, RoomKind::Dm);
    let all = store.history("r1", HistoryPage::After(0), 100).await.unwrap();
    assert_eq!(seqs(&all), (1..=20).collect::<Vec<_>>());
    assert_eq!(all[3].body, "hello 3");
    // The read marker survived: a lower one does not move it.
    assert_eq!(store.set_read_marker("r1", b, 1).await.unwrap(), 7);
    assert_eq!(store.find_scheduled(a, "s1").await.unwrap(), Some(entry));
    assert_eq!(store.get_ban(addr(9)).await.unwrap(), Some(ban));
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (
            stats.users,
            stats.rooms,
            stats.messages,
            stats.scheduled,
            stats.active_sessions
        ),
        (1, 2, 20, 1, 1)
    );
    assert!(stats.bytes_on_disk > 0);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seq_is_gap_free_under_concurrent_appends_and_visibility_follows_seq() {
    let (_dir, _path, store) = fresh();
    let store = Arc::new(store);
    let senders: Vec<Address> = (1..=4).map(addr).collect();
    let rooms = ["ra", "rb", "rc"];
    for room in rooms {
        group(&store, room, &senders).await;
    }

    // A reader watching while the writers write: every snapshot of a room must be exactly
    // 1..=k, never a later seq before an earlier one.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut snapshots = 0u64;
            while !done.load(Ordering::Acquire) {
                for room in rooms {
                    let page = store.history(room, HistoryPage::After(0), 1000).await.unwrap();
                    assert_eq!(
                        seqs(&page),
                        (1..=page.len() as i64).collect::<Vec<_>>(),
                        "a gap was visible in {room}"
                    );
                    snapshots += 1;
                }
                tokio::task::yield_now().await;
            }
            snapshots
        })
    };

    let mut tasks = Vec::new();
    for task in 0..8 {
        let (store, senders) = (store.clone(), senders.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let n = task * 25 + i;
                let room = rooms[n % 3];
                let sender = senders[n % senders.len()];
                let appended = store
                    .append_message(msg(room, sender, &format!("t{task}-{i}"), &format!("m{n}")))
                    .await
                    .unwrap();
                assert!(appended.created);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::Release);
    assert!(watcher.await.unwrap() > 0);

    let mut total = 0;
    for room in rooms {
        let page = store.history(room, HistoryPage::After(0), 1000).await.unwrap();
        let n = page.len() as i64;
        assert_eq!(seqs(&page), (1..=n).collect::<Vec<_>>(), "{room}");
        assert_eq!(store.get_room(room).await.unwrap().unwrap().last_seq, n);
        total += n;
    }
    assert_eq!(total, 200);
    let cursors = store.room_cursors_of(senders[0]).await.unwrap();
    assert_eq!(cursors.iter().map(|(_, s)| s).sum::<i64>(), 200);
}

#[tokio::test]
async fn a_repeated_append_returns_the_stored_message_and_consumes_no_seq() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    group(&store, "r", &[a]).await;
    let first = store.append_message(msg("r", a, "same", "hi")).await.unwrap();
    assert!(first.created);
    assert_eq!(first.message.seq, 1);
    // A retry carries a new message id (minted again) but the same client_msg_id.
    let again = store.append_message(msg("r", a, "same", "hi")).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.message, first.message);
    assert_eq!(
        store.find_by_client_msg_id(a, "same").await.unwrap(),
        Some(first.message.clone())
    );
    assert_eq!(store.find_by_client_msg_id(a, "other").await.unwrap(), None);
    let next = store.append_message(msg("r", a, "next", "there")).await.unwrap();
    assert_eq!(next.message.seq, 2);
    assert_eq!(store.get_room("r").await.unwrap().unwrap().last_seq, 2);
}

#[tokio::test]
async fn a_reused_client_msg_id_with_other_content_is_a_conflict() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    group(&store, "r", &[a]).await;
    group(&store, "r2", &[a]).await;
    store.append_message(msg("r", a, "c1", "original")).await.unwrap();
    let err = store.append_message(msg("r", a, "c1", "changed")).await.unwrap_err();
    assert!(matches!(err, Error::IdempotencyConflict), "{err}");
    let err = store.append_message(msg("r2", a, "c1", "original")).await.unwrap_err();
    assert!(matches!(err, Error::IdempotencyConflict), "{err}");
    // Another sender may use the same client_msg_id.
    let b = addr(2);
    store.add_member("r", b, LIMITS).await.unwrap();
    assert!(store.append_message(msg("r", b, "c1", "mine")).await.unwrap().created);
    assert_eq!(store.get_room("r").await.unwrap().unwrap().last_seq, 2);
}

#[tokio::test]
async fn membership_and_room_existence_are_checked() {
    let (_dir, _path, store) = fresh();
    let (a, b) = (addr(1), addr(2));
    group(&store, "r", &[a]).await;
    assert!(matches!(
        store.append_message(msg("r", b, "x", "hi")).await,
        Err(Error::NotMember)
    ));
    assert!(matches!(
        store.append_message(msg("nope", a, "x", "hi")).await,
        Err(Error::RoomNotFound)
    ));
    // Nothing was consumed by the refusals.
    assert_eq!(
        store.append_message(msg("r", a, "x", "hi")).await.unwrap().message.seq,
        1
    );
    assert!(store.is_member("r", a).await.unwrap());
    assert!(!store.is_member("r", b).await.unwrap());
    assert!(!store.is_member("nope", a).await.unwrap());
    assert!(matches!(
        store.add_member("nope", b, LIMITS).await,
        Err(Error::RoomNotFound)
    ));
    assert!(matches!(store.remove_member("nope", b).await, Err(Error::RoomNotFound)));
    assert!(matches!(store.set_read_marker("r", b, 1).await, Err(Error::NotMember)));
    assert!(matches!(
        store.set_read_marker("nope", a, 1).await,
        Err(Error::RoomNotFound)
    ));

    // Add, add again (no change), remove, remove again.
    let change = store.add_member("r", b, LIMITS).await.unwrap();
    assert!(change.changed);
    assert_eq!(change.room.members, vec![a, b]);
    assert!(!store.add_member("r", b, LIMITS).await.unwrap().changed);
    assert!(store.append_message(msg("r", b, "y", "joined")).await.unwrap().created);
    let (room, was_member) = store.remove_member("r", b).await.unwrap();
    assert!(was_member);
    assert_eq!(room.members, vec![a]);
    let (_, was_member) = store.remove_member("r", b).await.unwrap();
    assert!(!was_member);
    // A removed member can no longer send.
    assert!(matches!(
        store.append_message(msg("r", b, "z", "still here?")).await,
        Err(Error::NotMember)
    ));
}

#[tokio::test]
async fn history_pages_in_both_directions() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    group(&store, "r", &[a]).await;
    group(&store, "other", &[a]).await;
    for i in 1..=10 {
        store
            .append_message(msg("r", a, &format!("c{i}"), &format!("m{i}")))
            .await
            .unwrap();
    }
    store.append_message(msg("other", a, "o1", "elsewhere")).await.unwrap();
    let page = |p, n| {
        let store = &store;
        async move { seqs(&store.history("r", p, n).await.unwrap()) }
    };
    assert_eq!(page(HistoryPage::After(0), 3).await, vec![1, 2, 3]);
    assert_eq!(page(HistoryPage::After(3), 3).await, vec![4, 5, 6]);
    assert_eq!(page(HistoryPage::After(8), 3).await, vec![9, 10]);
    assert_eq!(page(HistoryPage::After(10), 3).await, Vec::<i64>::new());
    assert_eq!(page(HistoryPage::Before(i64::MAX), 3).await, vec![10, 9, 8]);
    assert_eq!(page(HistoryPage::Before(8), 3).await, vec![7, 6, 5]);
    assert_eq!(page(HistoryPage::Before(3), 3).await, vec![2, 1]);
    assert_eq!(page(HistoryPage::Before(1), 3).await, Vec::<i64>::new());
    assert_eq!(page(HistoryPage::After(0), 0).await, Vec::<i64>::new());
    let all = store.history("r", HistoryPage::After(0), 100).await.unwrap();
    assert!(all.iter().all(|m| m.room_id == "r" && m.sender == a));
    assert_eq!(all[4].body, "m5");
    assert!(
        store
            .history("nope", HistoryPage::After(0), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn media_round_trips() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    group(&store, "r", &[a]).await;
    let mut m = msg("r", a, "c", "look");
    m.media = vec![model::MediaRef {
        id: "m1".into(),
        content_type: "image/png".into(),
        size: 42,
        name: Some("cat.png".into()),
    }];
    let appended = store.append_message(m.clone()).await.unwrap();
    assert_eq!(appended.message.media, m.media);
    let stored = store.history("r", HistoryPage::After(0), 1).await.unwrap();
    assert_eq!(stored[0], appended.message);
}

#[tokio::test]
async fn a_dm_is_one_room_per_pair_in_either_order() {
    let (_dir, _path, store) = fresh();
    let (a, b, c) = (addr(0xbb), addr(0xaa), addr(0xcc));
    let now = model::now_ms();
    let (room, created) = store.get_or_create_dm("dm-1".into(), a, b, now, LIMITS).await.unwrap();
    assert!(created);
    assert_eq!(room.kind, RoomKind::Dm);
    assert_eq!(room.name, None);
    assert_eq!(room.members, vec![b, a], "members sorted by address");
    let (same, created) = store.get_or_create_dm("dm-2".into(), b, a, now, LIMITS).await.unwrap();
    assert!(!created);
    assert_eq!(same.id, "dm-1");
    let (again, created) = store.get_or_create_dm("dm-3".into(), a, b, now, LIMITS).await.unwrap();
    assert!(!created);
    assert_eq!(again, room);
    let (other, created) = store.get_or_create_dm("dm-4".into(), a, c, now, LIMITS).await.unwrap();
    assert!(created);
    assert_ne!(other.id, room.id);
    assert!(matches!(
        store.get_or_create_dm("dm-5".into(), a, a, now, LIMITS).await,
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        store.add_member("dm-1", c, LIMITS).await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(store.remove_member("dm-1", a).await, Err(Error::Forbidden(_))));
    assert!(store.get_room("dm-2").await.unwrap().is_none());
    let ids: Vec<String> = store.rooms_of(a).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec!["dm-1", "dm-4"]);
}

#[tokio::test]
async fn room_limits_are_enforced() {
    let (_dir, _path, store) = fresh();
    let limits = MembershipLimits {
        max_room_members: 3,
        max_rooms_per_user: 2,
    };
    let now = model::now_ms();
    let new_room = |id: &str, members: Vec<Address>| NewRoom {
        id: id.into(),
        name: Some(id.into()),
        created_by: members[0],
        members,
        created_at: now,
    };

    // Too many members at creation; duplicates do not count.
    let err = store
        .create_room(new_room("big", vec![addr(1), addr(2), addr(3), addr(4)]), limits)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RoomFull(3)), "{err}");
    let room = store
        .create_room(
            new_room("r1", vec![addr(1), addr(2), addr(1), addr(3), addr(2)]),
            limits,
        )
        .await
        .unwrap();
    assert_eq!(room.members, vec![addr(1), addr(2), addr(3)]);
    assert_eq!(room.kind, RoomKind::Group);
    assert!(store.get_room("big").await.unwrap().is_none());

    // Full room: adding a fourth member is refused.
    assert!(matches!(
        store.add_member("r1", addr(4), limits).await,
        Err(Error::RoomFull(3))
    ));

    // Rooms per user: addr(1) is in r1; r2 makes two; a third is refused.
    store.create_room(new_room("r2", vec![addr(1)]), limits).await.unwrap();
    let err = store
        .create_room(new_room("r3", vec![addr(5), addr(1)]), limits)
        .await
        .unwrap_err();
    match &err {
        Error::Forbidden(why) => assert!(why.contains("room limit"), "{why}"),
        other => panic!("expected Forbidden, got {other}"),
    }
    assert!(
        store.get_room("r3").await.unwrap().is_none(),
        "a refused room leaves nothing behind"
    );
    store.create_room(new_room("r4", vec![addr(5)]), limits).await.unwrap();
    assert!(matches!(
        store.add_member("r4", addr(1), limits).await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        store.get_or_create_dm("dm".into(), addr(1), addr(6), now, limits).await,
        Err(Error::Forbidden(_))
    ));
    // Leaving one room makes room for another.
    store.remove_member("r2", addr(1)).await.unwrap();
    assert!(store.add_member("r4", addr(1), limits).await.unwrap().changed);
}

#[tokio::test]
async fn rooms_of_and_cursors_are_sorted_by_id() {
    let (_dir, _path, store) = fresh();
    let (a, b, c) = (addr(3), addr(1), addr(2));
    for id in ["zeta", "alpha", "mid"] {
        group(&store, id, &[a, b, c]).await;
    }
    group(&store, "not-mine", &[b]).await;
    store.append_message(msg("mid", a, "1", "x")).await.unwrap();
    store.append_message(msg("mid", a, "2", "y")).await.unwrap();
    store.append_message(msg("zeta", a, "3", "z")).await.unwrap();
    let rooms = store.rooms_of(a).await.unwrap();
    assert_eq!(
        rooms.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["alpha", "mid", "zeta"]
    );
    assert!(rooms.iter().all(|r| r.members == vec![b, c, a]));
    assert_eq!(rooms[1].last_seq, 2);
    assert_eq!(rooms[1], store.get_room("mid").await.unwrap().unwrap());
    assert_eq!(
        store.room_cursors_of(a).await.unwrap(),
        vec![
            ("alpha".to_string(), 0),
            ("mid".to_string(), 2),
            ("zeta".to_string(), 1)
        ]
    );
    assert!(store.rooms_of(addr(99)).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_read_marker_never_moves_backwards() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    group(&store, "r", &[a]).await;
    assert_eq!(store.set_read_marker("r", a, 5).await.unwrap(), 5);
    assert_eq!(store.set_read_marker("r", a, 3).await.unwrap(), 5);
    assert_eq!(store.set_read_marker("r", a, 5).await.unwrap(), 5);
    assert_eq!(store.set_read_marker("r", a, 7).await.unwrap(), 7);
    assert_eq!(store.set_read_marker("r", a, 0).await.unwrap(), 7);
}

#[tokio::test]
async fn scheduled_messages_get_their_seq_at_delivery() {
    let (_dir, _path, store) = fresh();
    let (a, b) = (addr(1), addr(2));
    group(&store, "r", &[a, b]).await;
    let t0 = model::now_ms();
    let at = t0 + Duration::from_secs(60);
    let entry = scheduled("r", a, "s1", at);
    let (stored, created) = store.schedule_message(entry.clone(), 5).await.unwrap();
    assert!(created);
    assert_eq!(stored, entry);
    // Idempotent: the same client_msg_id returns the existing entry (even with a new id).
    let (again, created) = store
        .schedule_message(
            ScheduledMessage {
                id: model::new_id(),
                ..entry.clone()
            },
            5,
        )
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again, entry);
    let changed = ScheduledMessage {
        id: model::new_id(),
        body: "different".into(),
        ..entry.clone()
    };
    assert!(matches!(
        store.schedule_message(changed, 5).await,
        Err(Error::IdempotencyConflict)
    ));
    assert_eq!(store.find_scheduled(a, "s1").await.unwrap(), Some(entry.clone()));

    assert!(store.due_scheduled(t0, 10).await.unwrap().is_empty());
    assert_eq!(store.due_scheduled(at, 10).await.unwrap(), vec![entry.clone()]);

    // A live message in the meantime takes seq 1; the scheduled one gets seq 2 when delivered.
    store.append_message(msg("r", b, "live", "now")).await.unwrap();
    let deliver_time = at + Duration::from_millis(5);
    let appended = store.deliver_scheduled(&entry.id, deliver_time).await.unwrap().unwrap();
    assert!(appended.created);
    assert_eq!(appended.message.seq, 2);
    assert_eq!(appended.message.id, entry.id);
    assert_eq!(appended.message.body, entry.body);
    assert_eq!(appended.message.client_msg_id, "s1");
    assert_eq!(appended.message.created_at, deliver_time);
    assert_eq!(store.find_scheduled(a, "s1").await.unwrap(), None);
    assert!(store.due_scheduled(at, 10).await.unwrap().is_empty());
    assert_eq!(
        store.find_by_client_msg_id(a, "s1").await.unwrap(),
        Some(appended.message.clone())
    );
    assert_eq!(store.deliver_scheduled(&entry.id, deliver_time).await.unwrap(), None);
    assert_eq!(store.get_room("r").await.unwrap().unwrap().last_seq, 2);
}

#[tokio::test]
async fn scheduling_checks_limits_membership_and_order() {
    let (_dir, _path, store) = fresh();
    let (a, b, outsider) = (addr(1), addr(2), addr(3));
    group(&store, "r", &[a, b]).await;
    let t0 = model::now_ms();
    let late = scheduled("r", a, "late", t0 + Duration::from_secs(30));
    let early = scheduled("r", a, "early", t0 + Duration::from_secs(10));
    store.schedule_message(late.clone(), 2).await.unwrap();
    store.schedule_message(early.clone(), 2).await.unwrap();
    let err = store
        .schedule_message(scheduled("r", a, "third", t0 + Duration::from_secs(5)), 2)
        .await
        .unwrap_err();
    match err {
        Error::Forbidden(why) => assert!(why.contains("too many scheduled messages"), "{why}"),
        other => panic!("expected Forbidden, got {other}"),
    }
    // The limit is per sender.
    let from_b = scheduled("r", b, "b1", t0 + Duration::from_secs(20));
    store.schedule_message(from_b.clone(), 2).await.unwrap();
    assert!(matches!(
        store.schedule_message(scheduled("r", outsider, "o", t0), 2).await,
        Err(Error::NotMember)
    ));
    assert!(matches!(
        store.schedule_message(scheduled("nope", a, "n", t0), 2).await,
        Err(Error::RoomNotFound)
    ));

    let due = store.due_scheduled(t0 + Duration::from_secs(60), 10).await.unwrap();
    assert_eq!(due, vec![early.clone(), from_b.clone(), late.clone()]);
    assert_eq!(
        store.due_scheduled(t0 + Duration::from_secs(60), 2).await.unwrap(),
        vec![early.clone(), from_b.clone()]
    );
    assert_eq!(
        store.due_scheduled(t0 + Duration::from_secs(20), 10).await.unwrap(),
        vec![early.clone(), from_b.clone()]
    );

    // A sender who left: the entry is dropped and the delivery refused.
    store.remove_member("r", b).await.unwrap();
    assert!(matches!(
        store.deliver_scheduled(&from_b.id, t0).await,
        Err(Error::NotMember)
    ));
    assert_eq!(store.find_scheduled(b, "b1").await.unwrap(), None);
    assert_eq!(
        store.get_room("r").await.unwrap().unwrap().last_seq,
        0,
        "no seq consumed"
    );
    assert_eq!(store.deliver_scheduled(&from_b.id, t0).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().scheduled, 2);
}

#[tokio::test]
async fn sessions_are_revoked_once() {
    let (_dir, _path, store) = fresh();
    let (a, b) = (addr(1), addr(2));
    let now = model::now_ms();
    let hour = Duration::from_secs(3600);
    let session = |hash: &str, address, expires_at| Session {
        token_hash: hash.into(),
        address,
        created_at: now - hour,
        expires_at,
        revoked_at: None,
    };
    store.create_session(session("a1", a, now + hour)).await.unwrap();
    store.create_session(session("a2", a, now + hour)).await.unwrap();
    store
        .create_session(session("a3-expired", a, now - Duration::from_secs(1)))
        .await
        .unwrap();
    store.create_session(session("a4", a, now + hour)).await.unwrap();
    store.create_session(session("b1", b, now + hour)).await.unwrap();
    assert_eq!(
        store.get_session("a1").await.unwrap(),
        Some(session("a1", a, now + hour))
    );
    assert_eq!(store.get_session("zz").await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().active_sessions, 4);

    assert!(store.revoke_session("a1", now).await.unwrap());
    assert!(!store.revoke_session("a1", now + hour).await.unwrap());
    assert!(!store.revoke_session("unknown", now).await.unwrap());
    assert_eq!(store.get_session("a1").await.unwrap().unwrap().revoked_at, Some(now));

    // Every not-yet-revoked session of `a`, expired ones included; `b` untouched.
    assert_eq!(
        store.revoke_sessions_of(a, now).await.unwrap(),
        vec!["a2", "a3-expired", "a4"]
    );
    assert!(store.revoke_sessions_of(a, now).await.unwrap().is_empty());
    assert_eq!(store.get_session("a1").await.unwrap().unwrap().revoked_at, Some(now));
    assert_eq!(store.get_session("b1").await.unwrap().unwrap().revoked_at, None);
    assert_eq!(store.stats().await.unwrap().active_sessions, 1);
}

#[tokio::test]
async fn users_are_created_once_and_touched_after() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    let t0 = model::now_ms();
    let t1 = t0 + Duration::from_secs(90);
    assert!(matches!(
        store.set_display_name(a, Some("x".into())).await,
        Err(Error::UserNotFound)
    ));
    let first = store.touch_user(a, t0).await.unwrap();
    assert_eq!(
        (first.created_at, first.last_seen_at, first.display_name.as_deref()),
        (t0, Some(t0), None)
    );
    store.set_display_name(a, Some("Alice".into())).await.unwrap();
    let second = store.touch_user(a, t1).await.unwrap();
    assert_eq!(
        (second.created_at, second.last_seen_at, second.display_name.as_deref()),
        (t0, Some(t1), Some("Alice"))
    );
    assert_eq!(store.set_display_name(a, None).await.unwrap().display_name, None);
    assert_eq!(store.get_user(a).await.unwrap().unwrap().last_seen_at, Some(t1));
    assert_eq!(store.get_user(addr(2)).await.unwrap(), None);
}

#[tokio::test]
async fn bans_can_be_put_read_and_lifted() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    let now = model::now_ms();
    assert_eq!(store.get_ban(a).await.unwrap(), None);
    let ban = Ban {
        address: a,
        reason: None,
        banned_by: "ops".into(),
        created_at: now,
        until: Some(now + Duration::from_secs(60)),
    };
    store.put_ban(ban.clone()).await.unwrap();
    assert_eq!(store.get_ban(a).await.unwrap(), Some(ban.clone()));
    let forever = Ban {
        reason: Some("again".into()),
        until: None,
        ..ban
    };
    store.put_ban(forever.clone()).await.unwrap();
    assert_eq!(store.get_ban(a).await.unwrap(), Some(forever));
    assert!(store.delete_ban(a).await.unwrap());
    assert!(!store.delete_ban(a).await.unwrap());
    assert_eq!(store.get_ban(a).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_close_writes_are_refused_and_reads_still_work() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    group(&store, "r", &[a]).await;
    store.append_message(msg("r", a, "c", "before")).await.unwrap();
    store.close().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        store.append_message(msg("r", a, "d", "after")).await,
        Err(Error::ShuttingDown)
    ));
    assert!(matches!(
        store.touch_user(a, model::now_ms()).await,
        Err(Error::ShuttingDown)
    ));
    assert!(matches!(store.migrate().await, Err(Error::ShuttingDown)));
    assert!(matches!(
        store
            .put_ban(Ban {
                address: a,
                reason: None,
                banned_by: "x".into(),
                created_at: model::now_ms(),
                until: None
            })
            .await,
        Err(Error::ShuttingDown)
    ));
    assert!(matches!(store.ping().await, Err(Error::ShuttingDown)));
    assert_eq!(store.history("r", HistoryPage::After(0), 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn close_writes_everything_already_queued() {
    let (_dir, path, store) = fresh();
    let a = addr(1);
    group(&store, "r", &[a]).await;
    // `join` polls the appends first: each one is queued on its first poll, before close
    // takes the queue away. Close must still commit (and answer) every one of them.
    let appends =
        futures::future::join_all((0..100).map(|i| store.append_message(msg("r", a, &format!("c{i}"), "queued"))));
    let (results, closed) = futures::future::join(appends, store.close()).await;
    closed.unwrap();
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|a| a.created)));
    drop(store);
    let store = SqliteStore::open(&path, opts()).unwrap();
    assert_eq!(store.get_room("r").await.unwrap().unwrap().last_seq, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_batches_writes_and_isolates_failures() {
    let (_dir, _path, store) = fresh();
    let store = Arc::new(store);
    let members: Vec<Address> = (1..=5).map(addr).collect();
    let outsider = addr(0xee);
    group(&store, "r", &members).await;
    let before = store.commits();

    let mut tasks = Vec::new();
    for i in 0..500usize {
        let store = store.clone();
        // Every tenth send comes from a non-member: refused inside the same batches as the
        // good ones, without disturbing them.
        let sender = if i % 10 == 9 {
            outsider
        } else {
            members[i % members.len()]
        };
        tasks.push(tokio::spawn(async move {
            (
                i,
                store
                    .append_message(msg("r", sender, &format!("c{i}"), &format!("m{i}")))
                    .await,
            )
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (i, result) = t.await.unwrap();
        if i % 10 == 9 {
            assert!(matches!(result, Err(Error::NotMember)), "{i}: {result:?}");
        } else {
            assert!(result.unwrap().created);
            created += 1;
        }
    }
    let commits = store.commits() - before;
    eprintln!("group commit: 500 concurrent appends ({created} accepted) in {commits} transactions");
    assert_eq!(created, 450);
    assert!(commits < 500, "{commits} commits for 500 appends: no batching");

    let page = store.history("r", HistoryPage::After(0), 1000).await.unwrap();
    assert_eq!(seqs(&page), (1..=450).collect::<Vec<_>>());
    assert_eq!(store.get_room("r").await.unwrap().unwrap().last_seq, 450);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_max_one_commits_each_write_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(
            &dir.path().join("one.db"),
            SqliteOptions {
                batch_max: 1,
                readers: 1,
                synchronous_full: false,
            },
        )
        .unwrap(),
    );
    let a = addr(1);
    group(&store, "r", &[a]).await;
    let before = store.commits();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append_message(msg("r", a, &format!("c{i}"), "x")).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.commits() - before, 20);
    // One reader is enough for concurrent reads: they queue for it.
    let reads = futures::future::join_all((0..10).map(|_| store.history("r", HistoryPage::After(0), 100))).await;
    assert!(reads.into_iter().all(|r| r.unwrap().len() == 20));
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_row_is_an_internal_error() {
    let (_dir, path, store) = fresh();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "INSERT INTO rooms (id, kind, created_by, created_at_ms) VALUES ('bad', 'group', 'not an address', 0)",
        [],
    )
    .unwrap();
    drop(raw);
    let err = store.get_room("bad").await.unwrap_err();
    assert_eq!(err.code(), "internal", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_failing_midway_rolls_back_only_itself() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    group(&store, "r", &[a]).await;
    let t0 = model::now_ms();
    // A scheduled entry whose id is already taken by a message: delivering it deletes the
    // entry and bumps last_seq before the message insert fails on the duplicate id.
    store
        .append_message(NewMessage {
            id: "dup".into(),
            ..msg("r", a, "first", "one")
        })
        .await
        .unwrap();
    store
        .schedule_message(
            ScheduledMessage {
                id: "dup".into(),
                ..scheduled("r", a, "s", t0)
            },
            5,
        )
        .await
        .unwrap();

    // Queue good writes around the failing one (same batch when the writer is busy).
    let before =
        futures::future::join_all((0..5).map(|i| store.append_message(msg("r", a, &format!("b{i}"), "before"))));
    let failing = store.deliver_scheduled("dup", t0);
    let after = futures::future::join_all((0..5).map(|i| store.append_message(msg("r", a, &format!("a{i}"), "after"))));
    let (before, failing, after) = tokio::join!(before, failing, after);
    assert_eq!(failing.unwrap_err().code(), "backend_unavailable");
    assert!(before.into_iter().chain(after).all(|r| r.is_ok_and(|a| a.created)));
    // Its delete and its seq bump were rolled back; the others' writes were not.
    assert!(store.find_scheduled(a, "s").await.unwrap().is_some());
    let page = store.history("r", HistoryPage::After(0), 100).await.unwrap();
    assert_eq!(seqs(&page), (1..=11).collect::<Vec<_>>());
    assert_eq!(store.get_room("r").await.unwrap().unwrap().last_seq, 11);
}

// --- operator (admin) and control channel ------------------------------------------------------

use coolchat::model::AuditEntry;

fn ban_of(address: Address, created_at: OffsetDateTime, reason: &str) -> Ban {
    Ban {
        address,
        reason: Some(reason.into()),
        banned_by: "admin:test".into(),
        created_at,
        until: None,
    }
}

fn audit(at: OffsetDateTime, action: &str, target: &str, detail: serde_json::Value) -> AuditEntry {
    AuditEntry {
        id: 0,
        at,
        actor: "admin:root@host".into(),
        action: action.into(),
        target: target.into(),
        detail,
    }
}

fn session_of(hash: &str, address: Address, created_at: OffsetDateTime) -> Session {
    Session {
        token_hash: hash.into(),
        address,
        created_at,
        expires_at: created_at + Duration::from_secs(3600),
        revoked_at: None,
    }
}

#[tokio::test]
async fn bans_are_put_replaced_deleted_and_listed_newest_first() {
    let (_dir, _path, store) = fresh();
    let t0 = model::now_ms();
    let s = Duration::from_secs(1);
    assert!(store.list_bans().await.unwrap().is_empty());
    store.put_ban(ban_of(addr(1), t0, "one")).await.unwrap();
    store.put_ban(ban_of(addr(2), t0 + s, "two")).await.unwrap();
    store.put_ban(ban_of(addr(3), t0 + 2 * s, "three")).await.unwrap();
    let listed = || {
        let store = &store;
        async move {
            store
                .list_bans()
                .await
                .unwrap()
                .into_iter()
                .map(|b| (b.address, b.reason.unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed().await,
        vec![
            (addr(3), "three".to_string()),
            (addr(2), "two".to_string()),
            (addr(1), "one".to_string())
        ]
    );
    // Replacing a ban replaces every field, its time included (so it moves to the front).
    let replaced = Ban {
        until: Some(t0 + 60 * s),
        ..ban_of(addr(1), t0 + 3 * s, "one again")
    };
    store.put_ban(replaced.clone()).await.unwrap();
    assert_eq!(store.get_ban(addr(1)).await.unwrap(), Some(replaced.clone()));
    assert_eq!(store.list_bans().await.unwrap()[0], replaced);
    assert_eq!(store.stats().await.unwrap().bans, 3);
    assert!(store.delete_ban(addr(2)).await.unwrap());
    assert!(!store.delete_ban(addr(2)).await.unwrap());
    assert_eq!(
        listed().await,
        vec![(addr(1), "one again".to_string()), (addr(3), "three".to_string())]
    );
    // Expired bans are listed and counted too (they are the operator's record).
    let expired = Ban {
        until: Some(t0 - s),
        ..ban_of(addr(4), t0 - 10 * s, "old")
    };
    store.put_ban(expired.clone()).await.unwrap();
    assert_eq!(store.list_bans().await.unwrap().last(), Some(&expired));
    assert_eq!(store.stats().await.unwrap().bans, 3);
}

#[tokio::test]
async fn audit_entries_are_listed_newest_first_and_by_target() {
    let (_dir, _path, store) = fresh();
    let t0 = model::now_ms();
    let target_a = addr(1).to_lower_hex();
    assert!(store.list_audit(None, 10).await.unwrap().is_empty());
    let mut ids = Vec::new();
    let entries = [
        audit(
            t0,
            "ban",
            &target_a,
            serde_json::json!({"reason": "spam", "until": null}),
        ),
        audit(t0, "delete_message", "msg-1", serde_json::json!({"room": "r"})),
        audit(t0, "unban", &target_a, serde_json::Value::Null),
        audit(t0, "remove_member", "room-9", serde_json::json!(["x", 1, true])),
        audit(t0, "revoke_sessions", &target_a, serde_json::json!({"count": 2})),
    ];
    for entry in &entries {
        ids.push(store.append_audit(entry.clone()).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let with_id = |i: usize| AuditEntry {
        id: ids[i],
        ..entries[i].clone()
    };

    assert_eq!(
        store.list_audit(None, 3).await.unwrap(),
        vec![with_id(4), with_id(3), with_id(2)]
    );
    assert_eq!(store.list_audit(None, 100).await.unwrap().len(), 5);
    assert_eq!(
        store.list_audit(Some(target_a.clone()), 10).await.unwrap(),
        vec![with_id(4), with_id(2), with_id(0)]
    );
    assert_eq!(
        store.list_audit(Some(target_a.clone()), 2).await.unwrap(),
        vec![with_id(4), with_id(2)]
    );
    assert_eq!(
        store.list_audit(Some("msg-1".into()), 10).await.unwrap(),
        vec![with_id(1)]
    );
    assert!(store.list_audit(Some("nobody".into()), 10).await.unwrap().is_empty());
    assert!(store.list_audit(None, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn users_and_rooms_are_listed_in_pages() {
    let (_dir, _path, store) = fresh();
    let now = model::now_ms();
    // Created out of order; listed by address.
    for n in [5u8, 1, 0xab, 3, 0x20] {
        store.touch_user(addr(n), now).await.unwrap();
    }
    let page = |after: Option<Address>, limit| {
        let store = &store;
        async move {
            store
                .list_users(after, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.address)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, 2).await, vec![addr(1), addr(3)]);
    assert_eq!(page(Some(addr(3)), 2).await, vec![addr(5), addr(0x20)]);
    assert_eq!(page(Some(addr(0x20)), 2).await, vec![addr(0xab)]);
    assert!(page(Some(addr(0xab)), 2).await.is_empty());
    // `after` need not be a user.
    assert_eq!(
        page(Some(addr(2)), 10).await,
        vec![addr(3), addr(5), addr(0x20), addr(0xab)]
    );
    assert!(page(None, 0).await.is_empty());
    let first = &store.list_users(None, 1).await.unwrap()[0];
    assert_eq!(Some(first), store.get_user(addr(1)).await.unwrap().as_ref());

    let (a, b, c) = (addr(1), addr(2), addr(3));
    group(&store, "delta", &[a]).await;
    group(&store, "bravo", &[c, a, b]).await;
    group(&store, "alpha", &[b]).await;
    group(&store, "charlie", &[a, c]).await;
    store.get_or_create_dm("echo".into(), b, c, now, LIMITS).await.unwrap();
    store.append_message(msg("charlie", a, "m", "hi")).await.unwrap();
    let rooms = |after: Option<&str>, limit| {
        let store = &store;
        let after = after.map(str::to_string);
        async move { store.list_rooms(after, limit).await.unwrap() }
    };
    let first = rooms(None, 2).await;
    assert_eq!(
        first.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["alpha", "bravo"]
    );
    // Members are included, sorted, exactly as get_room gives them.
    for room in &first {
        assert_eq!(Some(room), store.get_room(&room.id).await.unwrap().as_ref());
    }
    assert_eq!(first[1].members, vec![a, b, c]);
    let second = rooms(Some("bravo"), 2).await;
    assert_eq!(
        second.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["charlie", "delta"]
    );
    assert_eq!(second[0].members, vec![a, c]);
    assert_eq!(second[0].last_seq, 1);
    assert_eq!(second[1].members, vec![a]);
    let third = rooms(Some("delta"), 2).await;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].kind, RoomKind::Dm);
    assert_eq!(third[0].members, vec![b, c]);
    assert!(rooms(Some("echo"), 2).await.is_empty());
    assert!(rooms(None, 0).await.is_empty());
    assert_eq!(rooms(None, 100).await.len(), 5);
}

#[tokio::test]
async fn sessions_and_scheduled_messages_of_an_address() {
    let (_dir, _path, store) = fresh();
    let (a, b) = (addr(1), addr(2));
    let t0 = model::now_ms();
    let s = Duration::from_secs(1);
    store.create_session(session_of("old", a, t0)).await.unwrap();
    store.create_session(session_of("new", a, t0 + 2 * s)).await.unwrap();
    store.create_session(session_of("mid", a, t0 + s)).await.unwrap();
    store.create_session(session_of("other", b, t0 + 3 * s)).await.unwrap();
    store.revoke_session("mid", t0 + 3 * s).await.unwrap();
    let sessions = store.sessions_of(a).await.unwrap();
    assert_eq!(
        sessions.iter().map(|s| s.token_hash.as_str()).collect::<Vec<_>>(),
        vec!["new", "mid", "old"]
    );
    assert_eq!(sessions[1].revoked_at, Some(t0 + 3 * s));
    assert!(store.sessions_of(addr(9)).await.unwrap().is_empty());

    group(&store, "r", &[a, b]).await;
    let late = scheduled("r", a, "late", t0 + 30 * s);
    let early = scheduled("r", a, "early", t0 + 10 * s);
    store.schedule_message(late.clone(), 10).await.unwrap();
    store.schedule_message(early.clone(), 10).await.unwrap();
    store
        .schedule_message(scheduled("r", b, "b's", t0 + 20 * s), 10)
        .await
        .unwrap();
    assert_eq!(store.scheduled_of(a).await.unwrap(), vec![early, late]);
    assert!(store.scheduled_of(addr(9)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_tombstone_keeps_its_seq_and_answers_retries() {
    let (_dir, _path, store) = fresh();
    let (a, b) = (addr(1), addr(2));
    group(&store, "r", &[a, b]).await;
    group(&store, "r2", &[a]).await;
    store.append_message(msg("r", b, "b1", "before")).await.unwrap();
    let mut original = msg("r", a, "c1", "regrettable");
    original.media = vec![model::MediaRef {
        id: "m1".into(),
        content_type: "image/png".into(),
        size: 7,
        name: None,
    }];
    let sent = store.append_message(original.clone()).await.unwrap().message;
    store.append_message(msg("r", b, "b2", "after")).await.unwrap();
    assert_eq!(sent.seq, 2);
    assert!(!sent.deleted);
    assert_eq!(store.stats().await.unwrap().messages, 3);

    let tombstone = store.tombstone_message(&sent.id).await.unwrap().unwrap();
    let expected = model::Message {
        body: String::new(),
        media: vec![],
        deleted: true,
        ..sent.clone()
    };
    assert_eq!(tombstone, expected);
    // Idempotent.
    assert_eq!(store.tombstone_message(&sent.id).await.unwrap(), Some(expected.clone()));
    assert_eq!(store.tombstone_message("no-such-id").await.unwrap(), None);
    assert_eq!(store.get_message(&sent.id).await.unwrap(), Some(expected.clone()));
    assert_eq!(store.get_message("no-such-id").await.unwrap(), None);

    // History still has every seq; the tombstone in its place.
    let history = store.history("r", HistoryPage::After(0), 10).await.unwrap();
    assert_eq!(seqs(&history), vec![1, 2, 3]);
    assert_eq!(history[1], expected);
    assert_eq!(
        history.iter().map(|m| m.deleted).collect::<Vec<_>>(),
        vec![false, true, false]
    );
    // On the wire, `deleted` appears only on tombstones.
    let json = serde_json::to_value(&history[1]).unwrap();
    assert_eq!(json["deleted"], true);
    assert_eq!(json["body"], "");
    assert!(json.get("media").is_none());
    assert!(serde_json::to_value(&history[0]).unwrap().get("deleted").is_none());

    // A retry of the original send gets the tombstone back and consumes no seq, even if its
    // content (or room) differs: the tombstone's own content is gone.
    for retry in [original.clone(), msg("r", a, "c1", "other"), msg("r2", a, "c1", "x")] {
        let again = store.append_message(retry).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.message, expected);
    }
    assert_eq!(store.find_by_client_msg_id(a, "c1").await.unwrap(), Some(expected));
    assert_eq!(store.get_room("r").await.unwrap().unwrap().last_seq, 3);
    assert_eq!(store.get_room("r2").await.unwrap().unwrap().last_seq, 0);
    let next = store.append_message(msg("r", a, "c2", "better")).await.unwrap();
    assert!(next.created);
    assert_eq!(next.message.seq, 4);

    // Excluded from the sender's messages and counts.
    assert_eq!(store.count_messages_of(a).await.unwrap(), 1);
    let mine = store.messages_of(a, None, 10).await.unwrap();
    assert_eq!(mine, vec![next.message]);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.messages, 3);
}

#[tokio::test]
async fn messages_of_pages_by_room_then_seq() {
    let (_dir, _path, store) = fresh();
    let (a, b) = (addr(1), addr(2));
    for room in ["r3", "r1", "r2"] {
        group(&store, room, &[a, b]).await;
    }
    // a: r1 seq 1, 3; r2 seq 2; r3 seq 1, 2.  b: r1 seq 2, r2 seq 1.
    for (room, sender, cid) in [
        ("r1", a, "1"),
        ("r1", b, "2"),
        ("r1", a, "3"),
        ("r2", b, "4"),
        ("r2", a, "5"),
        ("r3", a, "6"),
        ("r3", a, "7"),
    ] {
        store.append_message(msg(room, sender, cid, cid)).await.unwrap();
    }
    let pos = |m: &model::Message| (m.room_id.clone(), m.seq);
    let all = store.messages_of(a, None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(pos).collect::<Vec<_>>(),
        vec![
            ("r1".to_string(), 1),
            ("r1".to_string(), 3),
            ("r2".to_string(), 2),
            ("r3".to_string(), 1),
            ("r3".to_string(), 2)
        ]
    );
    assert!(all.iter().all(|m| m.sender == a));
    // Paging with the last position of each page visits every message once.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.messages_of(a, after.clone(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = page.last().map(pos);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert_eq!(
        store.messages_of(a, Some(("r1".into(), 3)), 1).await.unwrap()[0].body,
        "5"
    );
    assert!(store.messages_of(a, None, 0).await.unwrap().is_empty());
    assert!(store.messages_of(addr(9), None, 10).await.unwrap().is_empty());
    assert_eq!(store.count_messages_of(a).await.unwrap(), 5);
    assert_eq!(store.count_messages_of(b).await.unwrap(), 2);
}

#[tokio::test]
async fn tombstone_messages_of_works_in_batches_until_empty() {
    let (_dir, _path, store) = fresh();
    let (a, b) = (addr(1), addr(2));
    for room in ["rb", "ra"] {
        group(&store, room, &[a, b]).await;
    }
    for i in 0..7 {
        let room = if i % 2 == 0 { "ra" } else { "rb" };
        store
            .append_message(msg(room, a, &format!("a{i}"), &format!("from a {i}")))
            .await
            .unwrap();
    }
    store.append_message(msg("ra", b, "b1", "from b")).await.unwrap();
    store.append_message(msg("rb", b, "b2", "from b")).await.unwrap();
    // One of a's is already a tombstone: it is not picked again.
    let first_of_a = store.find_by_client_msg_id(a, "a0").await.unwrap().unwrap();
    store.tombstone_message(&first_of_a.id).await.unwrap();
    assert_eq!(store.count_messages_of(a).await.unwrap(), 6);
    assert_eq!(store.stats().await.unwrap().messages, 8);

    let mut batches = Vec::new();
    loop {
        let batch = store.tombstone_messages_of(a, 4).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.iter().all(|m| m.deleted && m.body.is_empty() && m.sender == a));
        let positions: Vec<_> = batch.iter().map(|m| (m.room_id.clone(), m.seq)).collect();
        let mut sorted = positions.clone();
        sorted.sort();
        assert_eq!(positions, sorted, "each batch is in (room_id, seq) order");
        batches.push(positions);
        assert!(batches.len() < 10, "tombstone_messages_of never ran dry");
    }
    assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 2]);
    // ra holds a0 (already a tombstone), a2, a4, a6 and b1: seqs 1..=4 are a's, 5 is b's.
    assert_eq!(
        batches[0],
        vec![
            ("ra".to_string(), 2),
            ("ra".to_string(), 3),
            ("ra".to_string(), 4),
            ("rb".to_string(), 1)
        ]
    );
    assert_eq!(store.count_messages_of(a).await.unwrap(), 0);
    assert!(store.messages_of(a, None, 100).await.unwrap().is_empty());
    assert_eq!(store.count_messages_of(b).await.unwrap(), 2);
    assert!(store.tombstone_messages_of(a, 0).await.unwrap().is_empty());
    // Seqs untouched; stats count the two live messages exactly.
    assert_eq!(store.get_room("ra").await.unwrap().unwrap().last_seq, 5);
    assert_eq!(store.get_room("rb").await.unwrap().unwrap().last_seq, 4);
    let history = store.history("ra", HistoryPage::After(0), 100).await.unwrap();
    assert_eq!(seqs(&history), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        history
            .iter()
            .filter(|m| !m.deleted)
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        vec!["from b"]
    );
    assert_eq!(store.stats().await.unwrap().messages, 2);
}

#[tokio::test]
async fn erase_user_removes_the_user_and_keeps_the_operators_record() {
    let (_dir, _path, store) = fresh();
    let (a, b, c) = (addr(1), addr(2), addr(3));
    let now = model::now_ms();
    store.touch_user(a, now).await.unwrap();
    store.touch_user(b, now).await.unwrap();
    store.create_session(session_of("a1", a, now)).await.unwrap();
    store.create_session(session_of("a2", a, now)).await.unwrap();
    store.revoke_session("a2", now).await.unwrap();
    store.create_session(session_of("b1", b, now)).await.unwrap();
    group(&store, "g1", &[a, b, c]).await;
    group(&store, "g2", &[b, a]).await;
    group(&store, "g3", &[b, c]).await;
    let (dm, _) = store.get_or_create_dm("dm-ab".into(), a, b, now, LIMITS).await.unwrap();
    for i in 0..3 {
        store
            .append_message(msg("g1", a, &format!("g1-{i}"), "secret"))
            .await
            .unwrap();
    }
    store.append_message(msg("g1", b, "b-g1", "reply")).await.unwrap();
    store.append_message(msg("dm-ab", a, "dm-1", "psst")).await.unwrap();
    store.set_read_marker("g1", a, 2).await.unwrap();
    store
        .schedule_message(scheduled("g2", a, "s1", now + Duration::from_secs(600)), 10)
        .await
        .unwrap();
    store
        .schedule_message(scheduled("g2", b, "s2", now + Duration::from_secs(600)), 10)
        .await
        .unwrap();
    let ban = ban_of(a, now, "abuse");
    store.put_ban(ban.clone()).await.unwrap();
    let audit_id = store
        .append_audit(audit(
            now,
            "ban",
            &a.to_lower_hex(),
            serde_json::json!({"reason": "abuse"}),
        ))
        .await
        .unwrap();
    let before = store.stats().await.unwrap();
    assert_eq!((before.users, before.messages), (2, 5));

    let report = store.erase_user(a).await.unwrap();
    assert_eq!(
        report,
        coolchat::storage::ErasureReport {
            messages_tombstoned: 4,
            memberships_removed: 3,
            sessions_deleted: 2,
            scheduled_deleted: 1,
            rooms: vec!["dm-ab".into(), "g1".into(), "g2".into()],
            media_ids: vec![],
        }
    );

    // The user, their sessions, memberships and scheduled messages are gone.
    assert_eq!(store.get_user(a).await.unwrap(), None);
    assert!(store.sessions_of(a).await.unwrap().is_empty());
    assert_eq!(store.get_session("a1").await.unwrap(), None);
    assert!(store.rooms_of(a).await.unwrap().is_empty());
    assert!(store.room_cursors_of(a).await.unwrap().is_empty());
    assert!(store.scheduled_of(a).await.unwrap().is_empty());
    assert_eq!(store.get_room("g1").await.unwrap().unwrap().members, vec![b, c]);
    assert_eq!(store.get_room("g2").await.unwrap().unwrap().members, vec![b]);
    assert_eq!(store.get_room("dm-ab").await.unwrap().unwrap().members, vec![b]);
    for room in store.list_rooms(None, 100).await.unwrap() {
        assert!(!room.members.contains(&a), "{} still lists the erased user", room.id);
    }
    assert!(!store.is_member("g1", a).await.unwrap());
    assert!(matches!(
        store.append_message(msg("g1", a, "late", "x")).await,
        Err(Error::NotMember)
    ));
    // Their messages are tombstones with their seqs; others' are untouched.
    assert_eq!(store.count_messages_of(a).await.unwrap(), 0);
    let g1 = store.history("g1", HistoryPage::After(0), 100).await.unwrap();
    assert_eq!(seqs(&g1), vec![1, 2, 3, 4]);
    assert!(g1[..3].iter().all(|m| m.deleted && m.body.is_empty() && m.sender == a));
    assert_eq!((g1[3].deleted, g1[3].body.as_str()), (false, "reply"));
    // Other users keep everything.
    assert!(store.get_user(b).await.unwrap().is_some());
    assert_eq!(store.get_session("b1").await.unwrap().unwrap().revoked_at, None);
    assert_eq!(store.scheduled_of(b).await.unwrap().len(), 1);
    // Bans and audit entries stay.
    assert_eq!(store.get_ban(a).await.unwrap(), Some(ban));
    assert_eq!(
        store.list_audit(Some(a.to_lower_hex()), 10).await.unwrap()[0].id,
        audit_id
    );
    let after = store.stats().await.unwrap();
    assert_eq!(
        (
            after.users,
            after.messages,
            after.scheduled,
            after.active_sessions,
            after.bans
        ),
        (1, 1, 1, 1, 1)
    );
    // A DM between the same pair later is a new room (the old one keeps b and the history).
    let (again, created) = store
        .get_or_create_dm("dm-ab-2".into(), a, b, now, LIMITS)
        .await
        .unwrap();
    assert!(created);
    assert_ne!(again.id, dm.id);
    assert_eq!(again.members, vec![a, b]);
    // Erasing again (or an unknown address) finds nothing more to do.
    let report = store.erase_user(addr(9)).await.unwrap();
    assert_eq!(report, coolchat::storage::ErasureReport::default());
}

#[tokio::test]
async fn control_events_are_pushed_read_and_pruned() {
    let (_dir, path, store) = fresh();
    let t0 = model::now_ms();
    assert_eq!(store.last_control_id().await.unwrap(), 0);
    assert!(store.control_since(0, 10).await.unwrap().is_empty());
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(store.push_control(format!("{{\"n\":{i}}}"), t0).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(store.last_control_id().await.unwrap(), ids[2]);
    assert_eq!(
        store.control_since(0, 10).await.unwrap(),
        vec![
            (ids[0], "{\"n\":0}".to_string()),
            (ids[1], "{\"n\":1}".to_string()),
            (ids[2], "{\"n\":2}".to_string())
        ]
    );
    assert_eq!(
        store.control_since(ids[0], 1).await.unwrap(),
        vec![(ids[1], "{\"n\":1}".to_string())]
    );
    assert!(store.control_since(ids[2], 10).await.unwrap().is_empty());
    assert!(store.control_since(0, 0).await.unwrap().is_empty());

    // Pushing an event more than an hour later prunes the old ones; ids keep growing.
    let later = t0 + Duration::from_secs(3600) + Duration::from_millis(1);
    let newest = store.push_control("{\"n\":3}".into(), later).await.unwrap();
    assert!(newest > ids[2]);
    assert_eq!(
        store.control_since(0, 10).await.unwrap(),
        vec![(newest, "{\"n\":3}".to_string())]
    );
    assert_eq!(store.last_control_id().await.unwrap(), newest);
    // Exactly an hour old is still kept.
    let edge = store
        .push_control("{\"n\":4}".into(), later + Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        store
            .control_since(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        vec![newest, edge]
    );

    // Another store on the same file (another process, in real life) sees the same log.
    let other = SqliteStore::open(&path, opts()).unwrap();
    assert_eq!(other.last_control_id().await.unwrap(), edge);
    let pushed = other.push_control("{\"from\":\"admin\"}".into(), later).await.unwrap();
    assert_eq!(
        store.control_since(edge, 10).await.unwrap(),
        vec![(pushed, "{\"from\":\"admin\"}".to_string())]
    );
    other.close().await.unwrap();
}

#[tokio::test]
async fn stats_count_the_last_minute_and_the_bans() {
    let (_dir, _path, store) = fresh();
    let a = addr(1);
    group(&store, "r", &[a]).await;
    let now = model::now_ms();
    let old = NewMessage {
        created_at: now - Duration::from_secs(120),
        ..msg("r", a, "old", "old")
    };
    store.append_message(old).await.unwrap();
    store.append_message(msg("r", a, "new1", "new")).await.unwrap();
    let recent = store.append_message(msg("r", a, "new2", "new")).await.unwrap();
    store.tombstone_message(&recent.message.id).await.unwrap();
    store.put_ban(ban_of(addr(7), now, "x")).await.unwrap();
    let stats = store.stats().await.unwrap();
    // A tombstoned message still counts as sent in the last minute; not as a message.
    assert_eq!((stats.messages, stats.messages_last_minute, stats.bans), (2, 2, 1));
}

#[tokio::test]
async fn a_v1_database_is_upgraded_and_reopening_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let version = |path: &PathBuf| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    // A database as the first release left it: migration 1 only, with a message in it.
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(MIGRATIONS[0]).unwrap();
        raw.execute_batch("PRAGMA user_version = 1").unwrap();
        let a = addr(1).to_lower_hex();
        raw.execute(
            "INSERT INTO rooms (id, kind, name, created_by, created_at_ms, last_seq) VALUES ('r', 'group', 'old', ?1, 0, 1)",
            [&a],
        )
        .unwrap();
        raw.execute(
            "INSERT INTO members (room_id, address, joined_at_ms, read_seq) VALUES ('r', ?1, 0, 0)",
            [&a],
        )
        .unwrap();
        raw.execute(
            "INSERT INTO messages (room_id, seq, id, sender, body, client_msg_id, created_at_ms, media_json)
             VALUES ('r', 1, 'm1', ?1, 'from v1', 'c1', 0, NULL)",
            [&a],
        )
        .unwrap();
    }
    assert_eq!(version(&path), 1);

    let store = SqliteStore::open(&path, opts()).unwrap();
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
    let old = store.get_message("m1").await.unwrap().unwrap();
    assert_eq!((old.body.as_str(), old.deleted, old.seq), ("from v1", false, 1));
    assert_eq!(store.count_messages_of(addr(1)).await.unwrap(), 1);
    assert_eq!(store.stats().await.unwrap().messages, 1);
    assert_eq!(store.last_control_id().await.unwrap(), 0);
    let next = store.append_message(msg("r", addr(1), "c2", "from v2")).await.unwrap();
    assert_eq!(next.message.seq, 2);
    store.tombstone_message("m1").await.unwrap();
    store.migrate().await.unwrap();
    store.close().await.unwrap();
    drop(store);

    // Reopening applies nothing and changes nothing.
    let store = SqliteStore::open(&path, opts()).unwrap();
    assert_eq!(version(&path), MIGRATIONS.len() as i64);
    let history = store.history("r", HistoryPage::After(0), 10).await.unwrap();
    assert_eq!(
        history.iter().map(|m| (m.seq, m.deleted)).collect::<Vec<_>>(),
        vec![(1, true), (2, false)]
    );
    assert_eq!(store.stats().await.unwrap().messages, 1);
    store.close().await.unwrap();
}

#[tokio::test]
async fn operator_queries_use_their_indexes() {
    let (_dir, path, store) = fresh();
    store.close().await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = raw.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    };
    for (sql, index) in [
        (
            "SELECT id FROM messages WHERE sender = 'x' AND deleted = 0 AND (room_id, seq) > ('', 0) ORDER BY room_id, seq LIMIT 5",
            "messages_by_sender",
        ),
        (
            "SELECT COUNT(*) FROM messages WHERE sender = 'x' AND deleted = 0",
            "messages_by_sender",
        ),
        ("SELECT COUNT(*) FROM messages WHERE deleted = 1", "messages_tombstones"),
        (
            "SELECT COUNT(*) FROM messages WHERE created_at_ms >= 5",
            "messages_created",
        ),
        (
            "SELECT id FROM audit_log WHERE target = 'x' ORDER BY id DESC LIMIT 5",
            "audit_log_by_target",
        ),
    ] {
        let plan = plan(sql);
        assert!(plan.contains(index), "{sql}\n  → {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts:\n  → {plan}");
    }
}

// --- media metadata ------------------------------------------------------------------------------

fn media_meta(id: &str, uploader: Address) -> model::MediaMeta {
    model::MediaMeta {
        id: id.into(),
        uploader,
        content_type: "image/png".into(),
        size: 1234,
        name: Some("cat.png".into()),
        created_at: model::now_ms(),
    }
}

#[tokio::test]
async fn media_meta_round_trips_refuses_a_taken_id_and_survives_reopen() {
    let (_dir, path, store) = fresh();
    assert_eq!(store.get_media_meta("m1").await.unwrap(), None);
    let meta = media_meta("m1", addr(1));
    store.put_media_meta(meta.clone()).await.unwrap();
    assert_eq!(store.get_media_meta("m1").await.unwrap(), Some(meta.clone()));
    let nameless = model::MediaMeta {
        name: None,
        ..media_meta("m2", addr(2))
    };
    store.put_media_meta(nameless.clone()).await.unwrap();
    assert_eq!(store.get_media_meta("m2").await.unwrap(), Some(nameless));
    let taken = store.put_media_meta(media_meta("m1", addr(3))).await.unwrap_err();
    assert_eq!(taken.code(), "invalid_request");
    assert_eq!(
        store.get_media_meta("m1").await.unwrap(),
        Some(meta.clone()),
        "unchanged"
    );
    store.close().await.unwrap();
    drop(store);
    let store = SqliteStore::open(&path, opts()).unwrap();
    assert_eq!(store.get_media_meta("m1").await.unwrap(), Some(meta));
    store.close().await.unwrap();
}

#[tokio::test]
async fn media_is_visible_to_members_of_rooms_whose_live_messages_carry_it() {
    let (_dir, _path, store) = fresh();
    let (a, b, c) = (addr(1), addr(2), addr(3));
    group(&store, "r1", &[a, b]).await;
    group(&store, "r2", &[c]).await;
    let meta = media_meta("m1", a);
    store.put_media_meta(meta.clone()).await.unwrap();
    // Uploaded but carried by no message: visible to nobody through rooms.
    for who in [a, b, c] {
        assert!(!store.media_visible_to("m1", who).await.unwrap());
    }
    let mut with_media = msg("r1", a, "c1", "look");
    with_media.media = vec![meta.to_ref()];
    let appended = store.append_message(with_media.clone()).await.unwrap();
    assert_eq!(appended.message.media, vec![meta.to_ref()]);
    assert_eq!(
        store.get_message(&appended.message.id).await.unwrap().unwrap().media,
        vec![meta.to_ref()]
    );
    // A retry appends nothing (and writes no second mapping).
    assert!(!store.append_message(with_media).await.unwrap().created);
    assert!(store.media_visible_to("m1", a).await.unwrap());
    assert!(store.media_visible_to("m1", b).await.unwrap());
    assert!(!store.media_visible_to("m1", c).await.unwrap(), "not a member of r1");
    assert!(!store.media_visible_to("other", b).await.unwrap(), "another id");
    // Leaving the room ends it.
    store.remove_member("r1", b).await.unwrap();
    assert!(!store.media_visible_to("m1", b).await.unwrap());
    // Deleting the message withdraws it from everyone.
    store.tombstone_message(&appended.message.id).await.unwrap();
    assert!(!store.media_visible_to("m1", a).await.unwrap());
    store.close().await.unwrap();
}

#[tokio::test]
async fn the_media_migration_backfills_messages_that_already_carry_media() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(MIGRATIONS[0]).unwrap();
        raw.execute_batch(MIGRATIONS[1]).unwrap();
        raw.execute_batch("PRAGMA user_version = 2").unwrap();
        let a = addr(1).to_lower_hex();
        raw.execute(
            "INSERT INTO rooms (id, kind, name, created_by, created_at_ms, last_seq) VALUES ('r', 'group', 'old', ?1, 0, 1)",
            [&a],
        )
        .unwrap();
        raw.execute(
            "INSERT INTO members (room_id, address, joined_at_ms, read_seq) VALUES ('r', ?1, 0, 0)",
            [&a],
        )
        .unwrap();
        raw.execute(
            "INSERT INTO messages (room_id, seq, id, sender, body, client_msg_id, created_at_ms, media_json)
             VALUES ('r', 1, 'm1', ?1, 'old', 'c1', 0, '[{\"id\":\"abc\",\"content_type\":\"image/png\",\"size\":3}]')",
            [&a],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path, opts()).unwrap();
    assert!(store.media_visible_to("abc", addr(1)).await.unwrap());
    assert!(!store.media_visible_to("abc", addr(2)).await.unwrap());
    store.close().await.unwrap();
}
