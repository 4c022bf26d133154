//! What a bench run does: the scenario and every knob, validated, and echoed into the JSON
//! report so that two reports can be compared knowing what produced them.

use super::assertions::Assertion;
use super::error::BenchError;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;

/// What the simulated users do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Group rooms of `room_size` members; `senders_per_room` of them send at `rate` in total.
    Fanout,
    /// Pairs of users chatting in direct-message rooms (`POST /api/v1/dms`).
    Dm,
    /// Sign-in + connect storm: how fast, and how long each user waits.
    Connect,
    /// Connections held open, doing nothing: memory per connection on the server.
    Idle,
    /// History paging over REST (`GET /api/v1/rooms/{id}/messages`).
    History,
    /// Half the users in group rooms, half in DM pairs, plus history readers.
    Mixed,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Fanout,
        Scenario::Dm,
        Scenario::Connect,
        Scenario::Idle,
        Scenario::History,
        Scenario::Mixed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Dm => "dm",
            Scenario::Connect => "connect",
            Scenario::Idle => "idle",
            Scenario::History => "history",
            Scenario::Mixed => "mixed",
        }
    }

    /// Whether users hold Socket.IO connections during the run.
    pub fn uses_sockets(self) -> bool {
        !matches!(self, Scenario::History)
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|x| x.as_str()).collect();
                format!("unknown scenario `{s}` (one of: {})", names.join(", "))
            })
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole configuration of one run. Durations are in seconds (fractions allowed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Origin of the node or of a proxy in front of it (`http://host:port`, `https://host`).
    pub url: String,
    pub scenario: Scenario,
    /// Simulated users, each with its own key, session and (except `history`) socket.
    pub clients: usize,
    /// Length of the measured phase.
    pub duration_secs: f64,
    /// Group rooms; `None`: as many as `clients / room_size` allows.
    pub rooms: Option<usize>,
    /// Members per group room.
    pub room_size: usize,
    /// Offered load: messages per second over all senders (`history`: page requests per second).
    pub rate: f64,
    /// Members of each group room that send.
    pub senders_per_room: usize,
    /// Size of each message body, in bytes (at least the bookkeeping JSON, ~60 bytes).
    pub payload_bytes: usize,
    /// New sign-ins and connections started per second; 0: as fast as `max_inflight` allows.
    pub ramp_rate: f64,
    /// Most sign-ins/connections in progress at once.
    pub max_inflight: usize,
    /// Accept any TLS certificate (self-signed test deployments).
    pub insecure: bool,
    /// Local addresses to bind outgoing sockets to, round-robin; empty: let the kernel pick.
    pub source_ips: Vec<IpAddr>,
    /// After the run, how long to wait for outstanding acks and deliveries.
    pub drain_timeout_secs: f64,
    /// A send not acked within this is counted as `ack_timeout`.
    pub ack_timeout_secs: f64,
    /// `history`/`mixed`: messages written into each room before paging starts.
    pub history_seed: usize,
    /// `history`/`mixed`: messages per page (`limit`).
    pub history_page: usize,
    /// `mixed`: history page requests per second (default: a tenth of `rate`).
    pub history_rate: Option<f64>,
    /// Write the report here.
    pub json: Option<PathBuf>,
    /// Print the ratio of every figure to this earlier report.
    pub compare: Option<PathBuf>,
    /// CI gates, checked after the run.
    pub asserts: Vec<Assertion>,
    /// No live progress (summary and assertions are still printed).
    pub quiet: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            url: "http://127.0.0.1:8080".into(),
            scenario: Scenario::Fanout,
            clients: 100,
            duration_secs: 30.0,
            rooms: None,
            room_size: 10,
            rate: 1000.0,
            senders_per_room: 1,
            payload_bytes: 128,
            ramp_rate: 500.0,
            max_inflight: 256,
            insecure: false,
            source_ips: Vec::new(),
            drain_timeout_secs: 10.0,
            ack_timeout_secs: 10.0,
            history_seed: 200,
            history_page: 50,
            history_rate: None,
            json: None,
            compare: None,
            asserts: Vec::new(),
            quiet: false,
        }
    }
}

/// `127.0.0.1`, `127.0.0.2`, ...: `count` loopback addresses (Linux routes all of 127/8 to `lo`).
pub fn loopback_sources(count: usize) -> Result<Vec<IpAddr>, BenchError> {
    if count == 0 || count > 65_000 {
        return Err(BenchError::Usage(
            "--source-ip-count must be between 1 and 65000".into(),
        ));
    }
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 1));
    Ok((0..count as u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
        .collect())
}

impl BenchConfig {
    /// Refuses settings that cannot run, with a message naming the flag.
    pub fn validate(&self) -> Result<(), BenchError> {
        let usage = |m: String| Err(BenchError::Usage(m));
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| BenchError::Usage(format!("--url `{}`: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return usage(format!("--url `{}` must be an http:// or https:// origin", self.url));
        }
        if self.clients == 0 {
            return usage("--clients must be at least 1".into());
        }
        if !self.duration_secs.is_finite() || self.duration_secs < 0.0 {
            return usage("--duration must be a non-negative duration".into());
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            return usage("--rate must be a non-negative number".into());
        }
        if !self.ramp_rate.is_finite() || self.ramp_rate < 0.0 {
            return usage("--ramp-rate must be a non-negative number".into());
        }
        if self.max_inflight == 0 {
            return usage("--max-inflight must be at least 1".into());
        }
        if self.history_rate.is_some_and(|r| !r.is_finite() || r < 0.0) {
            return usage("--history-rate must be a non-negative number".into());
        }
        if self.history_page == 0 {
            return usage("--history-page must be at least 1".into());
        }
        for (v, name) in [
            (self.drain_timeout_secs, "--drain-timeout"),
            (self.ack_timeout_secs, "--ack-timeout"),
        ] {
            if !v.is_finite() || v < 0.0 {
                return usage(format!("{name} must be a non-negative duration"));
            }
        }
        match self.scenario {
            Scenario::Fanout | Scenario::History | Scenario::Mixed => {
                if self.room_size < 2 {
                    return usage("--room-size must be at least 2".into());
                }
                if self.senders_per_room == 0 || self.senders_per_room > self.room_size {
                    return usage(format!(
                        "--senders-per-room must be between 1 and --room-size ({})",
                        self.room_size
                    ));
                }
                let group_clients = if self.scenario == Scenario::Mixed {
                    self.clients / 2
                } else {
                    self.clients
                };
                let rooms = self.group_rooms();
                if rooms == 0 {
                    return usage(format!(
                        "{} clients cannot fill one room of {} (raise --clients or lower --room-size)",
                        group_clients, self.room_size
                    ));
                }
                if rooms * self.room_size > group_clients {
                    return usage(format!(
                        "--rooms {rooms} x --room-size {} needs {} clients in group rooms, only {group_clients} available",
                        self.room_size,
                        rooms * self.room_size
                    ));
                }
            }
            Scenario::Dm => {
                if self.clients < 2 {
                    return usage("the dm scenario needs at least 2 clients".into());
                }
            }
            Scenario::Connect | Scenario::Idle => {}
        }
        if self.payload_bytes > 1024 * 1024 {
            return usage("--payload-bytes is at most 1 MiB".into());
        }
        Ok(())
    }

    /// Number of group rooms the scenario uses.
    pub fn group_rooms(&self) -> usize {
        let group_clients = match self.scenario {
            Scenario::Fanout | Scenario::History => self.clients,
            Scenario::Mixed => self.clients / 2,
            Scenario::Dm | Scenario::Connect | Scenario::Idle => return 0,
        };
        self.rooms.unwrap_or(group_clients / self.room_size.max(1))
    }

    pub fn duration(&self) -> std::time::Duration {
        secs(self.duration_secs)
    }
}

/// Seconds to a `Duration`, saturating on nonsense.
pub fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(s).unwrap_or(std::time::Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse() {
        for s in Scenario::ALL {
            assert_eq!(s.as_str().parse::<Scenario>(), Ok(s));
        }
        assert_eq!("FANOUT".parse::<Scenario>(), Ok(Scenario::Fanout));
        assert!("nope".parse::<Scenario>().is_err());
    }

    #[test]
    fn validation() {
        let ok = BenchConfig {
            clients: 100,
            room_size: 10,
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.group_rooms(), 10);
        let too_many_rooms = BenchConfig {
            rooms: Some(11),
            ..ok.clone()
        };
        assert!(too_many_rooms.validate().is_err());
        let bad_url = BenchConfig {
            url: "ftp://x".into(),
            ..ok.clone()
        };
        assert!(bad_url.validate().is_err());
        let bad_senders = BenchConfig {
            senders_per_room: 11,
            ..ok.clone()
        };
        assert!(bad_senders.validate().is_err());
        let tiny = BenchConfig {
            clients: 5,
            ..ok.clone()
        };
        assert!(tiny.validate().is_err());
        let idle = BenchConfig {
            clients: 1,
            scenario: Scenario::Idle,
            ..ok.clone()
        };
        assert!(idle.validate().is_ok());
        let mixed = BenchConfig {
            clients: 40,
            scenario: Scenario::Mixed,
            ..ok
        };
        assert_eq!(mixed.group_rooms(), 2);
        assert!(mixed.validate().is_ok());
    }

    #[test]
    fn loopback_addresses() {
        let ips = loopback_sources(3).unwrap_or_default();
        let want: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert_eq!(ips, want);
        let many = loopback_sources(300).unwrap_or_default();
        assert_eq!(many.last().map(ToString::to_string).as_deref(), Some("127.0.1.44"));
        assert!(loopback_sources(0).is_err());
    }
}
