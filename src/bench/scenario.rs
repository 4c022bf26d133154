//! The phases of a run, for every scenario:
//!
//! 1. keys: one random secp256k1 key per user;
//! 2. sign-in: nonce, sign, verify for every user, paced by `--ramp-rate` and bounded by
//!    `--max-inflight` (the `connect` scenario does sign-in and connect together instead);
//! 3. rooms: group rooms (`POST /api/v1/rooms`, by their first member) and DM pairs
//!    (`POST /api/v1/dms`); `history` also seeds each room with messages over REST;
//! 4. connect: one task per user opens its Socket.IO connection and waits for its `sync` ack;
//! 5. run: senders send on schedule, history readers page, for `--duration`;
//! 6. drain: senders stop; wait for the last acks and deliveries (bounded by `--drain-timeout`);
//! 7. close: every client hangs up, the ledger is reconciled.

use super::client::{self, Phase, RoomInfo, RoomTable, RunCtx};
use super::config::{BenchConfig, Scenario, secs};
use super::error::BenchError;
use super::login::Identity;
use super::monitor::{self, Monitor, Sample};
use super::net::Net;
use super::plan::{self, ClientPlan, Plan, RoomKind};
use super::rest;
use super::stats::{Counters, Ledger, Reconciled, Stats};
use super::sys::{self, NofileLimit};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a run measured beyond the shared counters and histograms.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    pub nofile: Option<NofileLimit>,
    /// Wall time of the sign-in phase (or of the whole storm in `connect`).
    pub signin_wall_s: Option<f64>,
    /// Wall time of the connect phase (or of the whole storm in `connect`).
    pub connect_wall_s: Option<f64>,
    /// Sockets connected when the run phase started.
    pub connected_at_run: i64,
    /// Length of the run phase.
    pub run_wall_s: f64,
    /// Counter increments during the run phase: sent, acked, delivered, history requests.
    pub run_sent: u64,
    pub run_acked: u64,
    pub run_delivered: u64,
    pub run_history: u64,
    pub rss_before: Option<f64>,
    pub rss_after: Option<f64>,
    pub reconciled: Reconciled,
    pub samples: Vec<Sample>,
    pub offered_rate: f64,
    pub senders: usize,
    pub rooms: usize,
    pub notes: Vec<String>,
}

/// Runs `cfg` against the node and returns the shared state (counters, histograms) and data.
pub async fn execute(cfg: &BenchConfig, mon: Arc<Monitor>) -> Result<(Arc<RunCtx>, RunData), BenchError> {
    let mut data = RunData::default();
    let n = cfg.clients;

    // Sockets, plus HTTP connections, plus slack.
    let nofile = sys::raise_nofile(n as u64 + (cfg.max_inflight as u64) * 2 + 1024);
    mon.say(&format!("open files limit: {} (hard {})", nofile.soft, nofile.hard));
    if nofile.soft < (n + cfg.max_inflight + 64) as u64 {
        data.notes.push(format!(
            "the open-files limit ({}) is below what {n} clients need; raise it (ulimit -n) or expect connect errors",
            nofile.soft
        ));
    }
    data.nofile = Some(nofile);

    let net = Net::new(&cfg.url, cfg.insecure, &cfg.source_ips, cfg.max_inflight.min(1024)).await?;
    check_reachable(&net).await?;

    let plan = plan::build(cfg);
    data.offered_rate = plan.offered_rate();
    data.senders = plan.senders();
    data.rooms = plan.rooms.len();
    for note in &data.notes {
        mon.say(&format!("note: {note}"));
    }
    for hint in advise(cfg, &plan) {
        mon.say(&format!("hint: {hint}"));
    }

    mon.set_phase("keys", Some(n as u64));
    let users = tokio::task::spawn_blocking(move || (0..n).map(|_| Identity::random()).collect::<Vec<_>>())
        .await
        .map_err(|e| BenchError::Protocol(format!("key generation failed: {e}")))?;

    let (phase_tx, _) = watch::channel(Phase::Setup);
    let ctx = Arc::new(RunCtx {
        net,
        users,
        stats: Stats::new(),
        ledger: Ledger::new(n),
        table: std::sync::OnceLock::new(),
        phase: phase_tx,
        payload_bytes: cfg.payload_bytes,
        padding: "x".repeat(cfg.payload_bytes),
        run_id: format!("b{:x}", rand::random::<u32>()),
        ack_timeout: secs(cfg.ack_timeout_secs),
        handshake_timeout: Duration::from_secs(30),
    });
    let monitor_task = tokio::spawn(monitor::run(ctx.clone(), mon.clone()));

    let result = phases(cfg, &ctx, &mon, plan, &mut data).await;
    let _ = ctx.phase.send_replace(Phase::Closing);
    monitor_task.abort();
    let _ = monitor_task.await;
    data.samples = std::mem::take(&mut *mon.samples.lock());
    result?;
    data.reconciled = ctx.ledger.reconcile();
    data.notes.extend(explain(&ctx.stats.errors()));
    Ok((ctx, data))
}

async fn phases(
    cfg: &BenchConfig,
    ctx: &Arc<RunCtx>,
    mon: &Monitor,
    plan: Plan,
    data: &mut RunData,
) -> Result<(), BenchError> {
    let n = cfg.clients;
    let c = &ctx.stats.c;
    let mut spawner: Option<JoinHandle<Vec<JoinHandle<()>>>> = None;

    if cfg.scenario == Scenario::Connect {
        let _ = ctx.table.set(RoomTable::default());
        data.rss_before = scrape_rss(ctx).await;
        mon.set_phase("storm", Some(n as u64));
        let t0 = Instant::now();
        spawner = Some(connect_all(ctx, cfg, plan.clients, vec![None; n]));
        wait_attempts(ctx, n).await;
        let wall = t0.elapsed().as_secs_f64();
        data.signin_wall_s = Some(wall);
        data.connect_wall_s = Some(wall);
        data.connected_at_run = c.connected.load(Ordering::Relaxed);
        run_phase(cfg, ctx, mon, data, &[], None).await;
        data.rss_after = scrape_rss(ctx).await;
    } else {
        mon.set_phase("sign-in", Some(n as u64));
        let t0 = Instant::now();
        let tokens = sign_in_all(ctx, cfg).await;
        data.signin_wall_s = Some(t0.elapsed().as_secs_f64());
        if tokens.iter().all(Option::is_none) {
            return Err(BenchError::Protocol(format!(
                "no user could sign in (errors: {:?})",
                ctx.stats.errors()
            )));
        }

        mon.set_phase("rooms", Some(plan.rooms.len() as u64));
        let table = setup_rooms(ctx, &plan, &tokens).await;
        let _ = ctx.table.set(table);

        if cfg.scenario == Scenario::History && cfg.history_seed > 0 {
            mon.set_phase("seed", Some(plan.rooms.len() as u64));
            seed_history(ctx, cfg, &plan, &tokens).await;
        }

        // Let the node settle after sign-ins before its baseline memory is read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        data.rss_before = scrape_rss(ctx).await;

        if cfg.scenario.uses_sockets() {
            let eligible = tokens.iter().filter(|t| t.is_some()).count();
            mon.set_phase("connect", Some(eligible as u64));
            let t0 = Instant::now();
            spawner = Some(connect_all(ctx, cfg, plan.clients.clone(), tokens.clone()));
            wait_attempts(ctx, eligible).await;
            data.connect_wall_s = Some(t0.elapsed().as_secs_f64());
        }
        data.connected_at_run = c.connected.load(Ordering::Relaxed);

        let hrate = match cfg.scenario {
            Scenario::History => cfg.history_rate.unwrap_or(cfg.rate),
            Scenario::Mixed => cfg.history_rate.unwrap_or(cfg.rate / 10.0),
            _ => 0.0,
        };
        let readers: Vec<(usize, String, String)> = plan
            .readers
            .iter()
            .filter_map(|&(u, r)| {
                let token = tokens.get(u).cloned().flatten()?;
                let room = ctx.rooms().get(r as usize)?.id.clone();
                (!room.is_empty()).then_some((u, token, room))
            })
            .collect();
        run_phase(cfg, ctx, mon, data, &readers, (hrate > 0.0).then_some(hrate)).await;
        data.rss_after = scrape_rss(ctx).await;
    }

    mon.set_phase("close", None);
    let _ = ctx.phase.send_replace(Phase::Closing);
    let deadline = Instant::now() + Duration::from_secs(10);
    let handles = match spawner {
        Some(s) => s.await.unwrap_or_default(),
        None => Vec::new(),
    };
    for h in handles {
        let abort = h.abort_handle();
        if tokio::time::timeout_at(deadline, h).await.is_err() {
            abort.abort();
        }
    }
    Ok(())
}

/// The measured phase, then the drain.
async fn run_phase(
    cfg: &BenchConfig,
    ctx: &Arc<RunCtx>,
    mon: &Monitor,
    data: &mut RunData,
    readers: &[(usize, String, String)],
    history_rate: Option<f64>,
) {
    let c = &ctx.stats.c;
    let snap = || {
        (
            Counters::get(&c.sent),
            Counters::get(&c.acked),
            Counters::get(&c.delivered),
            Counters::get(&c.history_requests),
        )
    };
    let hold = cfg.scenario != Scenario::Connect;
    mon.set_phase(if cfg.scenario == Scenario::Idle { "hold" } else { "run" }, None);
    let before = snap();
    let t0 = Instant::now();
    let _ = ctx.phase.send_replace(Phase::Running);
    let mut reader_tasks = Vec::new();
    if let Some(rate) = history_rate
        && !readers.is_empty()
    {
        let interval = secs(readers.len() as f64 / rate).max(Duration::from_micros(100));
        for (k, (u, token, room)) in readers.iter().enumerate() {
            let offset = interval.mul_f64(k as f64 / readers.len() as f64);
            reader_tasks.push(tokio::spawn(history_reader(
                ctx.clone(),
                *u,
                token.clone(),
                room.clone(),
                interval,
                offset,
                cfg.history_page,
            )));
        }
    }
    if hold {
        tokio::time::sleep(cfg.duration()).await;
    }
    let _ = ctx.phase.send_replace(Phase::Draining);
    data.run_wall_s = t0.elapsed().as_secs_f64();
    let after = snap();
    data.run_sent = after.0 - before.0;
    data.run_acked = after.1 - before.1;
    data.run_delivered = after.2 - before.2;
    data.run_history = after.3 - before.3;

    if data.senders > 0 {
        mon.set_phase("drain", None);
        let deadline = Instant::now() + secs(cfg.drain_timeout_secs);
        while Instant::now() < deadline {
            let pending = c.pending_acks.load(Ordering::SeqCst);
            if pending <= 0 && Counters::get(&c.delivered) >= Counters::get(&c.expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for t in &reader_tasks {
        t.abort();
    }
}

async fn check_reachable(net: &Net) -> Result<(), BenchError> {
    let req = net.http(0).get(net.url("/healthz")).timeout(Duration::from_secs(10));
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(BenchError::Http {
            what: "healthz",
            status: r.status().as_u16(),
            code: "unhealthy".into(),
        }),
        Err(e) => Err(BenchError::transport(
            "unreachable",
            format!("{}: {}", net.origin, super::error::chain(&e)),
        )),
    }
}

async fn scrape_rss(ctx: &RunCtx) -> Option<f64> {
    tokio::time::timeout(Duration::from_secs(5), rest::scrape_metrics(&ctx.net))
        .await
        .ok()?
        .ok()
        .map(|p| p.rss_bytes)
}

/// Before the run: node defaults this configuration would run into (the bench cannot see the
/// node's settings, so these are only printed).
fn advise(cfg: &BenchConfig, plan: &Plan) -> Vec<String> {
    let mut hints = Vec::new();
    if let Some(s) = plan.clients.iter().find_map(|c| c.send) {
        let per_sender = 1.0 / s.interval.as_secs_f64();
        if per_sender > 20.0 {
            hints.push(format!(
                "each sender sends {per_sender:.1} msg/s, above the node's default limit of 20/s per user (burst \
                 50); unless the node runs with COOLCHAT__LIMITS__MESSAGES_PER_SECOND and \
                 COOLCHAT__LIMITS__MESSAGE_BURST raised, the excess is refused as ack:rate_limited"
            ));
        }
    }
    let per_ip = cfg.clients.div_ceil(cfg.source_ips.len().max(1));
    if per_ip > 600 {
        hints.push(format!(
            "{per_ip} sign-ins per source address, above the node's default nonce limit of 600/min per IP; unless \
             the node runs with COOLCHAT__AUTH__NONCE_REQUESTS_PER_MINUTE raised, use --source-ip-count"
        ));
    }
    if plan.rooms.iter().any(|r| r.members.len() > 1000) {
        hints.push("rooms above 1000 members need COOLCHAT__LIMITS__MAX_ROOM_MEMBERS raised on the node".into());
    }
    if cfg.clients > 25_000 && cfg.source_ips.len() <= 1 {
        hints.push("one source address has ~28k ephemeral ports: use --source-ip-count for this many clients".into());
    }
    hints
}

/// After the run: what the errors say about the node's limits or the machine.
fn explain(errors: &std::collections::BTreeMap<String, u64>) -> Vec<String> {
    let mut notes = Vec::new();
    let count = |pred: &dyn Fn(&str) -> bool| errors.iter().filter(|(k, _)| pred(k)).map(|(_, v)| *v).sum::<u64>();
    let n = count(&|k| k == "ack:rate_limited");
    if n > 0 {
        notes.push(format!(
            "{n} sends were refused by the node's per-user rate limit: raise COOLCHAT__LIMITS__MESSAGES_PER_SECOND \
             and COOLCHAT__LIMITS__MESSAGE_BURST on the node, or add senders (--senders-per-room)"
        ));
    }
    let n = count(&|k| k == "http_429:rate_limited");
    if n > 0 {
        notes.push(format!(
            "{n} sign-ins were refused by the node's nonce limit per IP: raise \
             COOLCHAT__AUTH__NONCE_REQUESTS_PER_MINUTE on the node, or spread over --source-ip-count"
        ));
    }
    if count(&|k| k.ends_with("room_full")) > 0 {
        notes.push("rooms were refused as full: raise COOLCHAT__LIMITS__MAX_ROOM_MEMBERS on the node".into());
    }
    let n = count(&|k| k.starts_with("tcp_"));
    if n > 0 {
        notes.push(format!(
            "{n} TCP connects or binds failed: out of ephemeral ports or open files? try --source-ip-count, \
             ulimit -n on both sides"
        ));
    }
    let n = count(&|k| k == "ack_timeout");
    if n > 0 {
        notes.push(format!(
            "{n} sends were never acked within --ack-timeout: the node (or this machine) is overloaded"
        ));
    }
    notes
}

/// Waits until `total` attempts of the current phase have finished.
async fn wait_attempts(ctx: &RunCtx, total: usize) {
    while (Counters::get(&ctx.stats.c.attempts_done) as usize) < total {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Paces starts at `rate` per second (0: unpaced): start `i` is due at `t0 + i / rate`.
struct Pacer {
    t0: Instant,
    rate: f64,
    i: u64,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            t0: Instant::now(),
            rate,
            i: 0,
        }
    }

    async fn wait(&mut self) {
        if self.rate > 0.0 {
            let due = self.t0 + secs(self.i as f64 / self.rate);
            tokio::time::sleep_until(due).await;
        }
        self.i += 1;
    }
}

/// Signs every user in; `None` for those that failed (counted by error code).
async fn sign_in_all(ctx: &Arc<RunCtx>, cfg: &BenchConfig) -> Vec<Option<String>> {
    ctx.stats.c.attempts_done.store(0, Ordering::Relaxed);
    let sem = Arc::new(Semaphore::new(cfg.max_inflight));
    let mut pacer = Pacer::new(cfg.ramp_rate);
    let mut tasks = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        pacer.wait().await;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let token = sign_in_one(&ctx, i).await;
            Counters::bump(&ctx.stats.c.attempts_done);
            drop(permit);
            token
        }));
    }
    let mut tokens = Vec::with_capacity(cfg.clients);
    for t in tasks {
        tokens.push(t.await.ok().flatten());
    }
    tokens.resize(cfg.clients, None);
    tokens
}

async fn sign_in_one(ctx: &RunCtx, i: usize) -> Option<String> {
    let who = ctx.users.get(i)?;
    let t = Instant::now();
    match rest::sign_in(&ctx.net, i, who).await {
        Ok(token) => {
            ctx.stats.signin.record(t.elapsed());
            Counters::bump(&ctx.stats.c.signin_ok);
            Some(token)
        }
        Err(e) => {
            Counters::bump(&ctx.stats.c.signin_failed);
            ctx.stats.error(&e.code());
            None
        }
    }
}

/// Creates the plan's rooms. A room that could not be created keeps an empty id (its members
/// connect but neither send nor expect anything).
async fn setup_rooms(ctx: &Arc<RunCtx>, plan: &Plan, tokens: &[Option<String>]) -> RoomTable {
    let jobs = plan.rooms.iter().enumerate().map(|(r, spec)| {
        let ctx = ctx.clone();
        let spec = spec.clone();
        // The first member that signed in creates the room.
        let creator = spec
            .members
            .iter()
            .copied()
            .find(|&m| tokens.get(m).is_some_and(Option::is_some));
        let token = creator.and_then(|m| tokens.get(m).cloned().flatten());
        async move {
            let (Some(creator), Some(token)) = (creator, token) else {
                ctx.stats.error("room_setup:no_signed_in_member");
                return (r, String::new());
            };
            let address = |m: usize| ctx.users.get(m).map(Identity::checksummed).unwrap_or_default();
            let result = match spec.kind {
                RoomKind::Group => {
                    let members: Vec<String> = spec
                        .members
                        .iter()
                        .filter(|&&m| m != creator)
                        .map(|&m| address(m))
                        .collect();
                    rest::create_room(&ctx.net, creator, &token, &format!("bench {r}"), &members).await
                }
                RoomKind::Dm => {
                    let other = spec.members.iter().copied().find(|&m| m != creator).unwrap_or(creator);
                    rest::open_dm(&ctx.net, creator, &token, &address(other)).await
                }
            };
            Counters::bump(&ctx.stats.c.attempts_done);
            match result {
                Ok(room) => (r, room.id),
                Err(e) => {
                    ctx.stats.error(&format!("room_setup:{}", e.code()));
                    (r, String::new())
                }
            }
        }
    });
    ctx.stats.c.attempts_done.store(0, Ordering::Relaxed);
    let mut ids: Vec<(usize, String)> = futures::stream::iter(jobs).buffer_unordered(16).collect().await;
    ids.sort_by_key(|(r, _)| *r);
    let mut table = RoomTable::default();
    for (r, id) in ids {
        if !id.is_empty() {
            table.index.insert(id.clone(), r as u32);
        }
        table.rooms.push(RoomInfo {
            id,
            connected: AtomicU32::new(0),
        });
    }
    table
}

/// Writes `history_seed` messages into every group room over REST, members taking turns.
async fn seed_history(ctx: &Arc<RunCtx>, cfg: &BenchConfig, plan: &Plan, tokens: &[Option<String>]) {
    ctx.stats.c.attempts_done.store(0, Ordering::Relaxed);
    let jobs = plan.rooms.iter().enumerate().map(|(r, spec)| {
        let ctx = ctx.clone();
        let room_id = ctx.rooms().get(r).map(|x| x.id.clone()).unwrap_or_default();
        let writers: Vec<(usize, String)> = spec
            .members
            .iter()
            .filter_map(|&m| tokens.get(m).cloned().flatten().map(|t| (m, t)))
            .collect();
        let count = cfg.history_seed;
        let body = format!("seed {}", "x".repeat(cfg.payload_bytes.saturating_sub(5)));
        async move {
            if room_id.is_empty() || writers.is_empty() {
                return;
            }
            for k in 0..count {
                let (m, token) = &writers[k % writers.len()];
                let id = format!("{}-seed-{r}-{k}", ctx.run_id);
                for _attempt in 0..60 {
                    match rest::post_message(&ctx.net, *m, token, &room_id, &body, &id).await {
                        Ok(()) => break,
                        Err(super::error::BenchError::Http { status: 429, .. }) => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => {
                            ctx.stats.error(&format!("seed:{}", e.code()));
                            break;
                        }
                    }
                }
            }
            Counters::bump(&ctx.stats.c.attempts_done);
        }
    });
    futures::stream::iter(jobs)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// Starts one task per user: (sign-in when no token is given, then) connect, then run. The
/// spawner is itself a task (so the caller can watch progress meanwhile); it returns the
/// users' task handles.
fn connect_all(
    ctx: &Arc<RunCtx>,
    cfg: &BenchConfig,
    clients: Vec<ClientPlan>,
    tokens: Vec<Option<String>>,
) -> JoinHandle<Vec<JoinHandle<()>>> {
    ctx.stats.c.attempts_done.store(0, Ordering::Relaxed);
    let sign_in_too = cfg.scenario == Scenario::Connect;
    let sem = Arc::new(Semaphore::new(cfg.max_inflight));
    let ramp_rate = cfg.ramp_rate;
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let mut pacer = Pacer::new(ramp_rate);
        let mut handles = Vec::with_capacity(clients.len());
        for (plan, token) in clients.into_iter().zip(tokens) {
            if token.is_none() && !sign_in_too {
                continue;
            }
            pacer.wait().await;
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            let ctx = ctx.clone();
            handles.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let token = match token {
                    Some(t) => t,
                    None => match sign_in_one(&ctx, plan.idx).await {
                        Some(t) => t,
                        None => {
                            Counters::bump(&ctx.stats.c.attempts_done);
                            return;
                        }
                    },
                };
                let t1 = Instant::now();
                let outcome =
                    tokio::time::timeout(ctx.handshake_timeout, client::handshake(&ctx, plan.idx, &token)).await;
                let (ws, next_ack) = match outcome {
                    Ok(Ok(pair)) => pair,
                    Ok(Err(e)) => {
                        fail_connect(&ctx, &e.code());
                        return;
                    }
                    Err(_) => {
                        fail_connect(&ctx, "timeout:handshake");
                        return;
                    }
                };
                ctx.stats.connect.record(t1.elapsed());
                ctx.stats.login_connect.record(t0.elapsed());
                Counters::bump(&ctx.stats.c.connect_ok);
                drop(permit);
                // Counted in its rooms before the attempt counts as done, so that the run
                // never starts with a ready socket missing from its rooms' receiver counts.
                client::join_rooms(&ctx, &plan);
                Counters::bump(&ctx.stats.c.attempts_done);
                client::run(ctx.clone(), plan, ws, next_ack).await;
            }));
        }
        handles
    })
}

fn fail_connect(ctx: &RunCtx, code: &str) {
    Counters::bump(&ctx.stats.c.connect_failed);
    ctx.stats.error(code);
    Counters::bump(&ctx.stats.c.attempts_done);
}

/// One reader: pages backwards through its room's history, from the newest message to the
/// first, then starts again; checks that each page is contiguous and descending.
async fn history_reader(
    ctx: Arc<RunCtx>,
    user: usize,
    token: String,
    room_id: String,
    interval: Duration,
    offset: Duration,
    limit: usize,
) {
    let stats = &ctx.stats;
    let mut due = Instant::now() + offset;
    let mut before = i64::MAX;
    loop {
        tokio::time::sleep_until(due).await;
        if *ctx.phase.borrow() != Phase::Running {
            break;
        }
        due += interval;
        let now = Instant::now();
        if due + Duration::from_secs(1) < now {
            due = now + interval;
        }
        let t = Instant::now();
        match rest::history_before(&ctx.net, user, &token, &room_id, before, limit).await {
            Ok(page) => {
                stats.history.record(t.elapsed());
                Counters::bump(&stats.c.history_requests);
                stats
                    .c
                    .history_messages
                    .fetch_add(page.messages.len() as u64, Ordering::Relaxed);
                let seqs: Vec<i64> = page.messages.iter().map(|m| m.seq).collect();
                let contiguous = seqs.windows(2).all(|w| w[0] == w[1] + 1) && seqs.first().is_none_or(|&s| s < before);
                if !contiguous {
                    stats.error("history_inconsistent");
                }
                before = match seqs.last() {
                    Some(&last) if page.has_more && last > 1 => last,
                    _ => i64::MAX,
                };
            }
            Err(e) => {
                stats.error(&format!("history:{}", e.code()));
                before = i64::MAX;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_explained() {
        let mut errors = std::collections::BTreeMap::new();
        assert!(explain(&errors).is_empty());
        errors.insert("ack:rate_limited".to_string(), 3);
        errors.insert("http_429:rate_limited".to_string(), 2);
        errors.insert("room_setup:http_409:room_full".to_string(), 1);
        errors.insert("tcp_connect".to_string(), 4);
        errors.insert("ack_timeout".to_string(), 5);
        let notes = explain(&errors).join("\n");
        for want in [
            "3 sends were refused",
            "MESSAGES_PER_SECOND",
            "2 sign-ins",
            "NONCE_REQUESTS_PER_MINUTE",
            "MAX_ROOM_MEMBERS",
            "4 TCP",
            "5 sends were never acked",
        ] {
            assert!(notes.contains(want), "{want} missing from {notes}");
        }
    }

    #[test]
    fn hints_follow_the_defaults() {
        let cfg = BenchConfig {
            clients: 1000,
            room_size: 10,
            rate: 5000.0,
            ..Default::default()
        };
        let hints = advise(&cfg, &plan::build(&cfg)).join("\n");
        assert!(hints.contains("50.0 msg/s"), "{hints}");
        assert!(hints.contains("1000 sign-ins per source address"), "{hints}");
        let cfg = BenchConfig {
            clients: 100,
            rate: 100.0,
            ..Default::default()
        };
        assert!(advise(&cfg, &plan::build(&cfg)).is_empty());
    }
}
