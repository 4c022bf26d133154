//! Embedded store throughput: how many messages per second the SQLite writer sustains with
//! group commit, with `synchronous = FULL` (every commit fsynced) and `NORMAL`.
//!
//! Each iteration appends `CONCURRENCY` messages concurrently (as many senders would) and waits
//! for every acknowledgement; throughput is reported in messages/s.
//! Run: `cargo bench --bench store`.

use coolchat::address::Address;
use coolchat::model::{self, NewMessage};
use coolchat::storage::sqlite::{SqliteOptions, SqliteStore};
use coolchat::storage::{MembershipLimits, NewRoom, Store};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONCURRENCY: u64 = 1000;

fn append_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("sqlite_append");
    group.throughput(Throughput::Elements(CONCURRENCY));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (label, full) in [("synchronous_full", true), ("synchronous_normal", false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            SqliteStore::open(
                &dir.path().join("bench.db"),
                SqliteOptions {
                    batch_max: 512,
                    readers: 2,
                    synchronous_full: full,
                },
            )
            .expect("open"),
        );
        let sender = Address::from_bytes([7; 20]);
        let room = rt
            .block_on(store.create_room(
                NewRoom {
                    id: "bench".into(),
                    name: Some("bench".into()),
                    created_by: sender,
                    members: vec![sender],
                    created_at: model::now_ms(),
                },
                MembershipLimits {
                    max_room_members: 10,
                    max_rooms_per_user: 10,
                },
            ))
            .expect("room");
        let counter = std::sync::atomic::AtomicU64::new(0);
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    rt.block_on(async {
                        let mut tasks = Vec::with_capacity(CONCURRENCY as usize);
                        for _ in 0..CONCURRENCY {
                            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let store = store.clone();
                            let room_id = room.id.clone();
                            tasks.push(tokio::spawn(async move {
                                store
                                    .append_message(NewMessage {
                                        id: model::new_id(),
                                        room_id,
                                        sender,
                                        body: "x".repeat(200),
                                        client_msg_id: format!("b-{n}"),
                                        created_at: model::now_ms(),
                                        media: vec![],
                                    })
                                    .await
                                    .expect("append")
                            }));
                        }
                        for t in tasks {
                            t.await.expect("join");
                        }
                    });
                    total += start.elapsed();
                }
                total
            })
        });
        rt.block_on(store.close()).expect("close");
    }
    group.finish();
}

criterion_group!(benches, append_throughput);
criterion_main!(benches);
