//! Counting and timing: latency histograms, counters, errors by code, and the delivery
//! accounting that tells lost, duplicated and out-of-order messages apart.
//!
//! How loss is detected:
//! * every message body carries its sender's index, a per-sender sequence number `q` and the
//!   sender's monotonic send time (same process, same clock as the receiver);
//! * the sender notes each message in its [`Ledger`] row before sending it; when the ack comes
//!   back `ok`, the message is *expected* once by every member of the room whose socket is
//!   connected at that moment (the sender included: the node echoes to the whole room);
//! * each receiver keeps, per room, the set of room `seq`s it has seen ([`RoomTrack`]): a `seq`
//!   seen twice is a duplicate, a `seq` lower than the highest seen so far is out of order, and
//!   every first sighting is credited to the message's ledger row;
//! * after the drain, [`Ledger::reconcile`] sums, over acked messages, `expected - min(delivered,
//!   expected)`: that is `lost`. Refused sends (rate limits, ...) are errors, never lost; sends
//!   whose ack never came are `ack_timeouts`, and their deliveries are reported apart.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// Highest latency a histogram keeps, in microseconds (one hour); larger values are clamped.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram (microseconds) with a resettable window for live figures.
pub struct Hist {
    inner: Mutex<(Histogram<u64>, Histogram<u64>)>,
}

fn new_histogram() -> Histogram<u64> {
    // Three significant digits over 1 µs .. 1 h: a few tens of KiB.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant, valid histogram bounds")
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            inner: Mutex::new((new_histogram(), new_histogram())),
        }
    }
}

impl Hist {
    pub fn record_us(&self, us: u64) {
        let v = us.clamp(1, MAX_US);
        let mut g = self.inner.lock();
        let _ = g.0.record(v);
        let _ = g.1.record(v);
    }

    pub fn record(&self, d: std::time::Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(MAX_US));
    }

    /// The window's p99 in ms (None when empty), and starts a new window.
    pub fn take_window_p99_ms(&self) -> Option<f64> {
        let mut g = self.inner.lock();
        let r = (!g.1.is_empty()).then(|| g.1.value_at_quantile(0.99) as f64 / 1000.0);
        g.1.reset();
        r
    }

    pub fn summary(&self) -> HistSummary {
        HistSummary::of(&self.inner.lock().0)
    }
}

/// Percentiles of one histogram, in milliseconds with microsecond precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HistSummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl HistSummary {
    pub fn of(h: &Histogram<u64>) -> HistSummary {
        if h.is_empty() {
            return HistSummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        HistSummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Every counter of a run. Cheap to bump from any task.
#[derive(Default)]
pub struct Counters {
    pub signin_ok: AtomicU64,
    pub signin_failed: AtomicU64,
    pub connect_ok: AtomicU64,
    pub connect_failed: AtomicU64,
    /// Attempts finished, successful or not (sign-in or connect, per phase).
    pub attempts_done: AtomicU64,
    /// Sockets currently connected and ready.
    pub connected: AtomicI64,
    /// Sockets that closed before the bench closed them.
    pub disconnects: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub ack_timeouts: AtomicU64,
    /// Acks not yet received (drain waits for zero).
    pub pending_acks: AtomicI64,
    /// Sum over acked messages of the receivers expected at ack time.
    pub expected: AtomicU64,
    /// First sightings of (room, seq) by a receiver.
    pub delivered: AtomicU64,
    pub duplicated: AtomicU64,
    pub out_of_order: AtomicU64,
    /// `message` events that are not this run's (unknown room or body).
    pub foreign: AtomicU64,
    pub history_requests: AtomicU64,
    pub history_messages: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Shared measurement state of a run.
pub struct Stats {
    /// The clock every timestamp is relative to.
    pub start: Instant,
    pub c: Counters,
    errors: Mutex<BTreeMap<String, u64>>,
    pub latency: Hist,
    pub ack: Hist,
    pub signin: Hist,
    pub connect: Hist,
    pub login_connect: Hist,
    pub history: Hist,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            start: Instant::now(),
            c: Counters::default(),
            errors: Mutex::new(BTreeMap::new()),
            latency: Hist::default(),
            ack: Hist::default(),
            signin: Hist::default(),
            connect: Hist::default(),
            login_connect: Hist::default(),
            history: Hist::default(),
        }
    }

    /// Microseconds since the start of the run: the timestamp carried in message bodies.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Counts one error under `code`.
    pub fn error(&self, code: &str) {
        Counters::bump(&self.c.errors);
        let mut m = self.errors.lock();
        match m.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                m.insert(code.to_string(), 1);
            }
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }
}

/// What a receiver makes of one `(room, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time; `out_of_order` when a higher seq of this room was seen before.
    First {
        out_of_order: bool,
    },
    Duplicate,
    /// A seq the protocol cannot produce (below 1, or absurdly large).
    Invalid,
}

/// One receiver's view of one room: which seqs it saw, and the highest.
#[derive(Debug, Default, Clone)]
pub struct RoomTrack {
    max_seq: i64,
    seen: Vec<u64>,
}

/// Seqs above this are refused rather than allocating a huge bitmap for them.
const MAX_TRACKED_SEQ: i64 = 1 << 32;

impl RoomTrack {
    pub fn observe(&mut self, seq: i64) -> Seen {
        if !(1..=MAX_TRACKED_SEQ).contains(&seq) {
            return Seen::Invalid;
        }
        // In range by the check above.
        let bit = (seq - 1) as usize;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & mask != 0 {
            return Seen::Duplicate;
        }
        self.seen[word] |= mask;
        let out_of_order = seq < self.max_seq;
        self.max_seq = self.max_seq.max(seq);
        Seen::First { out_of_order }
    }
}

/// Outcome of one sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgState {
    Pending,
    Acked,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct MsgRecord {
    state: MsgState,
    expected: u32,
    delivered: u32,
}

/// Per-sender record of every message: its outcome, how many receivers should get it and how
/// many did. Rows are indexed by user; a row's messages by `q - 1`.
pub struct Ledger {
    rows: Vec<Mutex<Vec<MsgRecord>>>,
}

/// The ledger summed up after the drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciled {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub pending: u64,
    /// Sum over acked messages of the receivers that should have got them.
    pub expected: u64,
    /// Unique deliveries of acked messages, capped at what was expected of each.
    pub delivered_expected: u64,
    /// `expected - delivered_expected`.
    pub lost: u64,
    /// Deliveries of messages whose ack failed or never came.
    pub delivered_unacked: u64,
    /// Deliveries beyond what was expected (a receiver that joined after the ack).
    pub delivered_extra: u64,
}

impl Ledger {
    pub fn new(users: usize) -> Ledger {
        Ledger {
            rows: (0..users).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Notes a message about to be sent by `sender`; returns its `q` (from 1).
    pub fn sent(&self, sender: usize) -> u64 {
        let Some(row) = self.rows.get(sender) else { return 0 };
        let mut row = row.lock();
        row.push(MsgRecord {
            state: MsgState::Pending,
            expected: 0,
            delivered: 0,
        });
        row.len() as u64
    }

    fn with(&self, sender: usize, q: u64, f: impl FnOnce(&mut MsgRecord)) -> bool {
        let Some(row) = self.rows.get(sender) else { return false };
        let Some(i) = q.checked_sub(1).and_then(|i| usize::try_from(i).ok()) else {
            return false;
        };
        let mut row = row.lock();
        match row.get_mut(i) {
            Some(r) => {
                f(r);
                true
            }
            None => false,
        }
    }

    pub fn acked(&self, sender: usize, q: u64, expected: u32) {
        self.with(sender, q, |r| {
            r.state = MsgState::Acked;
            r.expected = expected;
        });
    }

    pub fn failed(&self, sender: usize, q: u64) {
        self.with(sender, q, |r| r.state = MsgState::Failed);
    }

    /// Credits one unique delivery; false when no such message was sent in this run.
    pub fn delivered(&self, sender: usize, q: u64) -> bool {
        self.with(sender, q, |r| r.delivered = r.delivered.saturating_add(1))
    }

    pub fn reconcile(&self) -> Reconciled {
        let mut t = Reconciled::default();
        for row in &self.rows {
            for r in row.lock().iter() {
                t.sent += 1;
                let (d, e) = (u64::from(r.delivered), u64::from(r.expected));
                match r.state {
                    MsgState::Acked => {
                        t.acked += 1;
                        t.expected += e;
                        t.delivered_expected += d.min(e);
                        t.lost += e - d.min(e);
                        t.delivered_extra += d.saturating_sub(e);
                    }
                    MsgState::Failed => {
                        t.failed += 1;
                        t.delivered_unacked += d;
                    }
                    MsgState::Pending => {
                        t.pending += 1;
                        t.delivered_unacked += d;
                    }
                }
            }
        }
        t
    }
}

/// The JSON carried in each message body: sender, per-sender seq, send time (µs), padding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Sender's user index.
    pub s: u64,
    /// Sender's sequence number, from 1.
    pub q: u64,
    /// Send time, microseconds on the bench's monotonic clock.
    pub t: u64,
}

/// The body of message `stamp`, padded with `x` to `payload_bytes` when that is larger.
pub fn message_body(stamp: &Stamp, payload_bytes: usize, padding: &str) -> String {
    let head = format!("{{\"s\":{},\"q\":{},\"t\":{}", stamp.s, stamp.q, stamp.t);
    // `,"p":""}` is 8 bytes.
    let room = payload_bytes.saturating_sub(head.len() + 8);
    let pad = &padding[..room.min(padding.len())];
    if pad.is_empty() {
        format!("{head}}}")
    } else {
        format!("{head},\"p\":\"{pad}\"}}")
    }
}

/// Reads a body written by [`message_body`]; `None` for anything else.
pub fn parse_stamp(body: &str) -> Option<Stamp> {
    serde_json::from_str(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_track_classifies() {
        let mut t = RoomTrack::default();
        assert_eq!(t.observe(1), Seen::First { out_of_order: false });
        assert_eq!(t.observe(2), Seen::First { out_of_order: false });
        assert_eq!(t.observe(2), Seen::Duplicate);
        assert_eq!(t.observe(5), Seen::First { out_of_order: false });
        assert_eq!(t.observe(3), Seen::First { out_of_order: true });
        assert_eq!(t.observe(3), Seen::Duplicate);
        assert_eq!(t.observe(4), Seen::First { out_of_order: true });
        assert_eq!(t.observe(6), Seen::First { out_of_order: false });
        assert_eq!(t.observe(1), Seen::Duplicate);
        assert_eq!(t.observe(0), Seen::Invalid);
        assert_eq!(t.observe(-3), Seen::Invalid);
        assert_eq!(t.observe(i64::MAX), Seen::Invalid);
        // Across word boundaries.
        for s in 60..200 {
            assert_eq!(
                t.observe(s),
                if s <= 6 {
                    Seen::Duplicate
                } else {
                    Seen::First { out_of_order: false }
                }
            );
        }
        assert_eq!(t.observe(64), Seen::Duplicate);
        assert_eq!(t.observe(65), Seen::Duplicate);
    }

    #[test]
    fn ledger_accounts_loss_and_failures() {
        let l = Ledger::new(3);
        // Sender 0: three messages in a room of 3 connected receivers.
        let q1 = l.sent(0);
        let q2 = l.sent(0);
        let q3 = l.sent(0);
        assert_eq!((q1, q2, q3), (1, 2, 3));
        // Delivery may come before the ack.
        assert!(l.delivered(0, q1));
        l.acked(0, q1, 3);
        assert!(l.delivered(0, q1));
        assert!(l.delivered(0, q1));
        l.acked(0, q2, 3);
        assert!(l.delivered(0, q2)); // two of three lost
        l.failed(0, q3); // rate limited: never expected
        // Sender 1: one acked, delivered to more receivers than expected at ack time.
        let q = l.sent(1);
        l.acked(1, q, 1);
        assert!(l.delivered(1, q));
        assert!(l.delivered(1, q));
        // Sender 2: ack never came, but it was delivered once.
        let q = l.sent(2);
        assert!(l.delivered(2, q));
        // Unknown messages are not credited.
        assert!(!l.delivered(0, 9));
        assert!(!l.delivered(0, 0));
        assert!(!l.delivered(7, 1));
        let r = l.reconcile();
        assert_eq!(
            r,
            Reconciled {
                sent: 5,
                acked: 3,
                failed: 1,
                pending: 1,
                expected: 7,
                delivered_expected: 3 + 1 + 1,
                lost: 2,
                delivered_unacked: 1,
                delivered_extra: 1,
            }
        );
    }

    #[test]
    fn receivers_and_ledger_together() {
        // Two receivers in one room, a sender whose messages get seqs 1..=4. Receiver A sees
        // everything once, B sees 2 twice and 4 before 3, and misses 1.
        let l = Ledger::new(1);
        let stats = Stats::new();
        for _ in 0..4 {
            let q = l.sent(0);
            l.acked(0, q, 2);
        }
        let mut a = RoomTrack::default();
        let mut b = RoomTrack::default();
        let deliver = |t: &mut RoomTrack, seq: i64| match t.observe(seq) {
            Seen::First { out_of_order } => {
                Counters::bump(&stats.c.delivered);
                if out_of_order {
                    Counters::bump(&stats.c.out_of_order);
                }
                l.delivered(0, seq as u64);
            }
            Seen::Duplicate => Counters::bump(&stats.c.duplicated),
            Seen::Invalid => stats.error("bad_seq"),
        };
        for s in [1, 2, 3, 4] {
            deliver(&mut a, s);
        }
        for s in [2, 2, 4, 3] {
            deliver(&mut b, s);
        }
        let r = l.reconcile();
        assert_eq!(r.expected, 8);
        assert_eq!(r.lost, 1);
        assert_eq!(Counters::get(&stats.c.delivered), 7);
        assert_eq!(Counters::get(&stats.c.duplicated), 1);
        assert_eq!(Counters::get(&stats.c.out_of_order), 1);
    }

    #[test]
    fn bodies_round_trip_and_pad() {
        let padding = "x".repeat(1000);
        let s = Stamp {
            s: 12,
            q: 345,
            t: 6_789_000,
        };
        let short = message_body(&s, 0, &padding);
        assert_eq!(short, r#"{"s":12,"q":345,"t":6789000}"#);
        assert_eq!(parse_stamp(&short), Some(s.clone()));
        let long = message_body(&s, 128, &padding);
        assert_eq!(long.len(), 128);
        assert_eq!(parse_stamp(&long), Some(s.clone()));
        // Padding is capped by what was prepared, never panics.
        let capped = message_body(&s, 5000, &padding);
        assert!(capped.len() < 1100);
        assert_eq!(parse_stamp("hello"), None);
        assert_eq!(parse_stamp(r#"{"s":1}"#), None);
    }

    #[test]
    fn histogram_summary_in_ms() {
        let h = Hist::default();
        for us in 1..=1000u64 {
            h.record_us(us * 10); // 10 µs .. 10 ms
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.02, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
        assert!(h.take_window_p99_ms().is_some());
        assert!(h.take_window_p99_ms().is_none());
        assert_eq!(h.summary().count, 1000);
        h.record_us(0);
        h.record_us(u64::MAX);
        assert_eq!(h.summary().count, 1002);
        stats_errors_count();
    }

    fn stats_errors_count() {
        let s = Stats::new();
        s.error("http_429:rate_limited");
        s.error("http_429:rate_limited");
        s.error("ack:payload_too_large");
        assert_eq!(s.errors().get("http_429:rate_limited"), Some(&2));
        assert_eq!(Counters::get(&s.c.errors), 3);
    }
}
