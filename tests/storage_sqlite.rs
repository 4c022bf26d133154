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
    store.put_ban(&ban).await.unwrap();
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
    store.put_ban(&ban).await.unwrap();
    assert_eq!(store.get_ban(a).await.unwrap(), Some(ban.clone()));
    let forever = Ban {
        reason: Some("again".into()),
        until: None,
        ..ban
    };
    store.put_ban(&forever).await.unwrap();
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
            .put_ban(&Ban {
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
