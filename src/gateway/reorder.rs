//! Per-room resequencing of live messages before they are emitted.
//!
//! Sends committed in the same group-commit batch (or by concurrent workers) reach the bus in
//! whatever order their tasks wake up, so `seq = 7` can be published a few microseconds before
//! `seq = 6`. Clients would see a gap, then a late message, and sync for nothing. This holds a
//! message that arrives ahead of its room's next expected `seq` until the gap fills or
//! `max_hold` passes (the bus may have dropped the missing one: then the held messages go out
//! anyway, and the client's `sync` recovers the gap). Memory is bounded: rooms idle for a minute
//! are forgotten, and a room holds at most `max_held` messages.

use crate::model::Message;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// See the module docs.
pub struct Resequencer {
    rooms: HashMap<String, RoomState>,
    max_hold: Duration,
    max_held: usize,
    /// Rooms with held messages (so flushing never walks every room).
    holding: usize,
    last_prune: Option<Instant>,
}

struct RoomState {
    next: i64,
    held: BTreeMap<i64, Message>,
    /// When the oldest held message arrived.
    held_since: Option<Instant>,
    last_activity: Instant,
}

const IDLE: Duration = Duration::from_secs(60);

impl Resequencer {
    pub fn new(max_hold: Duration, max_held: usize) -> Self {
        Resequencer {
            rooms: HashMap::new(),
            max_hold,
            max_held: max_held.max(1),
            holding: 0,
            last_prune: None,
        }
    }

    /// Takes a message; returns those to emit now, in order.
    pub fn push(&mut self, message: Message, now: Instant) -> Vec<Message> {
        let seq = message.seq;
        let Some(room) = self.rooms.get_mut(&message.room_id) else {
            // First message seen for this room: nothing to order against.
            self.rooms.insert(
                message.room_id.clone(),
                RoomState {
                    next: seq + 1,
                    held: BTreeMap::new(),
                    held_since: None,
                    last_activity: now,
                },
            );
            return vec![message];
        };
        room.last_activity = now;
        if seq < room.next {
            // Late or repeated: the client orders and deduplicates by seq.
            return vec![message];
        }
        let was_holding = !room.held.is_empty();
        let out = if seq > room.next {
            room.held.insert(seq, message);
            room.held_since.get_or_insert(now);
            if room.held.len() > self.max_held {
                release_all(room)
            } else {
                Vec::new()
            }
        } else {
            let mut out = vec![message];
            room.next = seq + 1;
            while let Some(m) = room.held.remove(&room.next) {
                room.next += 1;
                out.push(m);
            }
            room.held_since = if room.held.is_empty() { None } else { Some(now) };
            out
        };
        match (was_holding, room.held.is_empty()) {
            (false, false) => self.holding += 1,
            (true, true) => self.holding -= 1,
            _ => {}
        }
        out
    }

    /// Releases rooms whose oldest held message waited `max_hold`, and forgets idle rooms.
    pub fn flush_due(&mut self, now: Instant) -> Vec<Message> {
        let mut out = Vec::new();
        if self.holding > 0 {
            for room in self.rooms.values_mut() {
                if room.held_since.is_some_and(|t| now.duration_since(t) >= self.max_hold) {
                    out.extend(release_all(room));
                    self.holding -= 1;
                }
            }
        }
        if self.last_prune.is_none_or(|t| now.duration_since(t) >= IDLE / 4) {
            self.last_prune = Some(now);
            self.rooms
                .retain(|_, r| !r.held.is_empty() || now.duration_since(r.last_activity) < IDLE);
        }
        out
    }

    /// True when something is held.
    #[cfg(test)]
    pub fn holding(&self) -> bool {
        self.holding > 0
    }
}

/// Gives up on the gap: everything held goes out in order.
fn release_all(room: &mut RoomState) -> Vec<Message> {
    let held = std::mem::take(&mut room.held);
    room.held_since = None;
    if let Some((&last, _)) = held.iter().next_back() {
        room.next = last + 1;
    }
    held.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;

    fn msg(room: &str, seq: i64) -> Message {
        Message {
            id: format!("{room}-{seq}"),
            room_id: room.into(),
            seq,
            sender: Address::from_bytes([1; 20]),
            body: "x".into(),
            created_at: crate::model::now_ms(),
            client_msg_id: format!("c{seq}"),
            media: vec![],
            deleted: false,
        }
    }

    fn seqs(v: &[Message]) -> Vec<i64> {
        v.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn holds_ahead_of_a_gap_and_releases_in_order() {
        let t = Instant::now();
        let mut r = Resequencer::new(Duration::from_millis(50), 100);
        assert_eq!(seqs(&r.push(msg("a", 1), t)), vec![1]);
        assert!(r.push(msg("a", 3), t).is_empty());
        assert!(r.push(msg("a", 4), t).is_empty());
        assert!(r.holding());
        assert_eq!(seqs(&r.push(msg("a", 2), t)), vec![2, 3, 4]);
        assert!(!r.holding());
        // Rooms are independent.
        assert_eq!(seqs(&r.push(msg("b", 10), t)), vec![10]);
    }

    #[test]
    fn a_gap_that_never_fills_is_given_up_after_max_hold() {
        let t = Instant::now();
        let mut r = Resequencer::new(Duration::from_millis(50), 100);
        r.push(msg("a", 1), t);
        assert!(r.push(msg("a", 3), t).is_empty());
        assert!(r.flush_due(t + Duration::from_millis(10)).is_empty());
        assert_eq!(seqs(&r.flush_due(t + Duration::from_millis(50))), vec![3]);
        assert_eq!(seqs(&r.push(msg("a", 4), t)), vec![4]);
        // The missing one arriving late still goes out (the client dedups by seq).
        assert_eq!(seqs(&r.push(msg("a", 2), t)), vec![2]);
    }

    #[test]
    fn held_messages_are_bounded() {
        let t = Instant::now();
        let mut r = Resequencer::new(Duration::from_secs(10), 3);
        r.push(msg("a", 1), t);
        for s in 3..=5 {
            assert!(r.push(msg("a", s), t).is_empty());
        }
        assert_eq!(seqs(&r.push(msg("a", 6), t)), vec![3, 4, 5, 6]);
    }

    #[test]
    fn idle_rooms_are_forgotten() {
        let t = Instant::now();
        let mut r = Resequencer::new(Duration::from_millis(50), 10);
        r.push(msg("a", 1), t);
        r.flush_due(t + IDLE);
        // Forgotten: a later message is taken as the new baseline, not held.
        assert_eq!(seqs(&r.push(msg("a", 9), t + IDLE)), vec![9]);
    }
}
