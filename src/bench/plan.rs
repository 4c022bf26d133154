//! Who is in which room and who sends how often: a pure function of the configuration.

use super::config::{BenchConfig, Scenario};
use std::time::Duration;

/// Group room (created with `POST /api/v1/rooms`) or direct-message pair (`POST /api/v1/dms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomKind {
    Group,
    Dm,
}

/// A room to set up before the run. `members[0]` creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSpec {
    pub kind: RoomKind,
    pub members: Vec<usize>,
    /// Members that send into it during the run.
    pub senders: Vec<usize>,
}

/// When one sender sends: every `interval`, first at `offset` after the run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendPlan {
    pub room: u32,
    pub interval: Duration,
    pub offset: Duration,
}

/// One simulated user: its rooms (indices into [`Plan::rooms`]) and its sending schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPlan {
    pub idx: usize,
    pub rooms: Vec<u32>,
    pub send: Option<SendPlan>,
}

/// The whole arrangement of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub rooms: Vec<RoomSpec>,
    pub clients: Vec<ClientPlan>,
    /// `(user, room)` pairs that page history during the run.
    pub readers: Vec<(usize, u32)>,
}

impl Plan {
    pub fn senders(&self) -> usize {
        self.clients.iter().filter(|c| c.send.is_some()).count()
    }

    /// Messages per second the plan offers (sum over senders).
    pub fn offered_rate(&self) -> f64 {
        self.clients
            .iter()
            .filter_map(|c| c.send)
            .map(|s| 1.0 / s.interval.as_secs_f64())
            .sum()
    }
}

fn group_rooms(first: usize, rooms: usize, size: usize, senders: usize) -> Vec<RoomSpec> {
    (0..rooms)
        .map(|r| {
            let members: Vec<usize> = (first + r * size..first + (r + 1) * size).collect();
            let senders = members[..senders.min(members.len())].to_vec();
            RoomSpec {
                kind: RoomKind::Group,
                members,
                senders,
            }
        })
        .collect()
}

fn dm_pairs(first: usize, end: usize) -> Vec<RoomSpec> {
    (first..end)
        .step_by(2)
        .filter(|a| a + 1 < end)
        .map(|a| RoomSpec {
            kind: RoomKind::Dm,
            members: vec![a, a + 1],
            senders: vec![a, a + 1],
        })
        .collect()
}

/// Lays out the run described by `cfg` (which must have passed `validate`).
pub fn build(cfg: &BenchConfig) -> Plan {
    let n = cfg.clients;
    let senders = cfg.senders_per_room;
    let rooms = match cfg.scenario {
        Scenario::Fanout => group_rooms(0, cfg.group_rooms(), cfg.room_size, senders),
        Scenario::History => {
            let mut r = group_rooms(0, cfg.group_rooms(), cfg.room_size, senders);
            // Readers page over REST; nobody sends over Socket.IO.
            r.iter_mut().for_each(|r| r.senders.clear());
            r
        }
        Scenario::Dm => dm_pairs(0, n),
        Scenario::Mixed => {
            let mut r = group_rooms(0, cfg.group_rooms(), cfg.room_size, senders);
            r.extend(dm_pairs(n / 2, n));
            r
        }
        Scenario::Connect | Scenario::Idle => Vec::new(),
    };

    let mut clients: Vec<ClientPlan> = (0..n)
        .map(|idx| ClientPlan {
            idx,
            rooms: Vec::new(),
            send: None,
        })
        .collect();
    let total_senders: usize = rooms.iter().map(|r| r.senders.len()).sum();
    let interval = (cfg.rate > 0.0 && total_senders > 0)
        .then(|| Duration::try_from_secs_f64(total_senders as f64 / cfg.rate).ok())
        .flatten()
        .filter(|d| !d.is_zero());
    let mut k = 0usize;
    for (r, room) in rooms.iter().enumerate() {
        let r = r as u32;
        for &m in &room.members {
            if let Some(c) = clients.get_mut(m) {
                c.rooms.push(r);
            }
        }
        for &s in &room.senders {
            if let (Some(c), Some(interval)) = (clients.get_mut(s), interval) {
                // Spread first sends evenly over one interval so senders do not fire together.
                let offset = interval.mul_f64(k as f64 / total_senders as f64);
                c.send = Some(SendPlan {
                    room: r,
                    interval,
                    offset,
                });
            }
            k += 1;
        }
    }

    let readers = match cfg.scenario {
        Scenario::History | Scenario::Mixed => rooms
            .iter()
            .enumerate()
            .filter(|(_, r)| r.kind == RoomKind::Group)
            .flat_map(|(i, r)| r.members.iter().map(move |&m| (m, i as u32)))
            .collect(),
        _ => Vec::new(),
    };
    Plan {
        rooms,
        clients,
        readers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_layout_and_rate() {
        let cfg = BenchConfig {
            clients: 105,
            room_size: 10,
            senders_per_room: 2,
            rate: 200.0,
            ..Default::default()
        };
        let p = build(&cfg);
        assert_eq!(p.rooms.len(), 10);
        assert_eq!(p.rooms[3].members, (30..40).collect::<Vec<_>>());
        assert_eq!(p.rooms[3].senders, vec![30, 31]);
        assert_eq!(p.senders(), 20);
        assert!((p.offered_rate() - 200.0).abs() < 1e-6);
        // 20 senders at 200/s: each every 100 ms, offsets spread over 100 ms.
        let s = p.clients[31].send.unwrap_or_else(|| panic!("31 sends"));
        assert_eq!(s.room, 3);
        assert_eq!(s.interval, Duration::from_millis(100));
        assert_eq!(s.offset, Duration::from_millis(35));
        // The leftover five are connected but in no room.
        assert!(p.clients[104].rooms.is_empty());
        assert!(p.readers.is_empty());
    }

    #[test]
    fn dm_pairs_both_send() {
        let cfg = BenchConfig {
            clients: 7,
            scenario: Scenario::Dm,
            rate: 6.0,
            ..Default::default()
        };
        let p = build(&cfg);
        assert_eq!(p.rooms.len(), 3);
        assert!(p.rooms.iter().all(|r| r.kind == RoomKind::Dm && r.members.len() == 2));
        assert_eq!(p.senders(), 6);
        assert_eq!(p.clients[5].rooms, vec![2]);
        assert_eq!(p.clients[6].send, None);
    }

    #[test]
    fn mixed_and_history() {
        let cfg = BenchConfig {
            clients: 40,
            scenario: Scenario::Mixed,
            room_size: 10,
            rate: 100.0,
            ..Default::default()
        };
        let p = build(&cfg);
        assert_eq!(p.rooms.iter().filter(|r| r.kind == RoomKind::Group).count(), 2);
        assert_eq!(p.rooms.iter().filter(|r| r.kind == RoomKind::Dm).count(), 10);
        assert_eq!(p.readers.len(), 20);
        assert_eq!(p.senders(), 2 + 20);
        let cfg = BenchConfig {
            clients: 20,
            scenario: Scenario::History,
            room_size: 10,
            ..Default::default()
        };
        let p = build(&cfg);
        assert_eq!(p.senders(), 0);
        assert_eq!(p.readers.len(), 20);
        let idle = build(&BenchConfig {
            clients: 3,
            scenario: Scenario::Idle,
            ..Default::default()
        });
        assert!(idle.rooms.is_empty() && idle.clients.len() == 3 && idle.senders() == 0);
        let silent = build(&BenchConfig {
            clients: 20,
            rate: 0.0,
            ..Default::default()
        });
        assert_eq!(silent.senders(), 0);
    }
}
