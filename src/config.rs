//! Configuration: one struct tree that drives the TOML file, the environment and the docs.
//!
//! Sources, later ones win: built-in defaults, the TOML file (`--config`), environment variables
//! `COOLCHAT__SECTION__KEY` (double underscores everywhere, e.g. `COOLCHAT__SERVER__LISTEN`),
//! then command-line flags. Unknown keys are errors, so a typo never silently falls back to a
//! default. `examples/config.toml` documents every key with its default; a test keeps the two
//! equal. What must not live here: anything read at runtime from a backend.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the configuration was refused. The message always names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub cache: CacheConfig,
    pub bus: BusConfig,
    pub queue: QueueConfig,
    pub media: MediaConfig,
}

/// `[server]`: where the node listens and keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: String,
    /// The public origin clients use (scheme://host[:port]); SIWE messages must name it. Empty:
    /// `http://<listen address>`.
    pub public_url: String,
    /// Directory for the embedded store and local media.
    pub data_dir: PathBuf,
    /// Production mode: JSON logs.
    pub production: bool,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    pub log_level: String,
    /// Seconds to wait for in-flight work on shutdown before giving up.
    pub shutdown_grace_secs: u64,
    /// How often, in milliseconds, an embedded node looks for commands from `coolchat admin`
    /// (bans, revocations, deletions) in the store's control log.
    pub control_poll_ms: u64,
    /// Reverse proxies (exact IP addresses) whose `X-Forwarded-For` header is believed when
    /// keying per-client limits, e.g. `["127.0.0.1"]` behind a local nginx.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            public_url: String::new(),
            data_dir: PathBuf::from("./coolchat-data"),
            production: false,
            log_level: "info".into(),
            shutdown_grace_secs: 10,
            control_poll_ms: 200,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[auth]`: Sign-In with Ethereum and sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Chain ids accepted in SIWE messages; the first is the one advertised by `/auth/nonce`.
    pub allowed_chain_ids: Vec<u64>,
    /// Seconds a nonce stays usable.
    pub nonce_ttl_secs: u64,
    /// Seconds a session token lives.
    pub session_ttl_secs: u64,
    /// Largest accepted clock difference, in seconds, between a message's `Issued At` and now.
    pub issued_at_skew_secs: u64,
    /// Largest accepted SIWE message, in bytes.
    pub max_message_bytes: usize,
    /// Nonces one client address (IP) may request per minute.
    pub nonce_requests_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allowed_chain_ids: vec![1],
            nonce_ttl_secs: 300,
            session_ttl_secs: 7 * 24 * 3600,
            issued_at_skew_secs: 300,
            max_message_bytes: 4096,
            nonce_requests_per_minute: 600,
        }
    }
}

/// `[limits]`: every size, count and rate the node enforces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message body, in bytes (UTF-8).
    pub max_body_bytes: usize,
    /// Largest Socket.IO frame, in bytes; a bigger frame closes that socket. At least 4x
    /// `max_body_bytes`.
    pub max_frame_bytes: usize,
    /// Largest REST request body, in bytes.
    pub max_http_body_bytes: usize,
    /// Most members in one room.
    pub max_room_members: usize,
    /// Most rooms one user may belong to.
    pub max_rooms_per_user: usize,
    /// Longest `client_msg_id`, in bytes.
    pub max_client_msg_id_bytes: usize,
    /// Longest room name, in characters.
    pub max_room_name_chars: usize,
    /// Longest display name, in characters.
    pub max_display_name_chars: usize,
    /// Largest `limit` on a history page.
    pub max_history_page: usize,
    /// Most messages in one `sync` page.
    pub max_sync_page: usize,
    /// Sustained messages per second one user may send.
    pub messages_per_second: f64,
    /// Burst of messages one user may send at once.
    pub message_burst: u32,
    /// Sustained typing/read events per second one user may send.
    pub signals_per_second: f64,
    /// Most packets queued for one socket before it is treated as too slow and disconnected.
    pub socket_buffer_packets: usize,
    /// Most live sockets one user may hold.
    pub max_sockets_per_user: usize,
    /// Most room-mates whose presence a new socket is told about when it connects.
    pub presence_snapshot_max: usize,
    /// Furthest `deliver_at` in the future, in seconds.
    pub max_schedule_ahead_secs: u64,
    /// Most pending scheduled messages per user.
    pub max_scheduled_per_user: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 16 * 1024,
            max_frame_bytes: 80 * 1024,
            max_http_body_bytes: 80 * 1024,
            max_room_members: 1000,
            max_rooms_per_user: 1000,
            max_client_msg_id_bytes: 128,
            max_room_name_chars: 100,
            max_display_name_chars: 64,
            max_history_page: 200,
            max_sync_page: 500,
            messages_per_second: 20.0,
            message_burst: 50,
            signals_per_second: 10.0,
            socket_buffer_packets: 1024,
            max_sockets_per_user: 20,
            presence_snapshot_max: 1000,
            max_schedule_ahead_secs: 30 * 24 * 3600,
            max_scheduled_per_user: 100,
        }
    }
}

/// `[storage]`: the durable store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite` (embedded, in the data directory). MongoDB lands in its own issue.
    pub backend: String,
    /// Most writes committed in one transaction by the SQLite writer (group commit).
    pub sqlite_batch_max: usize,
    /// SQLite read connections.
    pub sqlite_readers: usize,
    /// SQLite `synchronous` setting: `full` (fsync every commit) or `normal` (WAL, fsync at
    /// checkpoints; a power cut may lose the last commits, a process crash loses nothing).
    pub sqlite_synchronous: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "sqlite".into(),
            sqlite_batch_max: 512,
            sqlite_readers: 4,
            sqlite_synchronous: "full".into(),
        }
    }
}

/// `[cache]`: nonces, presence, rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `memory` (single node). Redis lands in its own issue.
    pub backend: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: "memory".into(),
        }
    }
}

/// `[bus]`: fan-out of events between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `local` (in-process). Redis lands in its own issue.
    pub backend: String,
    /// Events buffered per subscriber before the slowest one starts losing events (recovered by
    /// `sync`).
    pub capacity: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            backend: "local".into(),
            capacity: 65536,
        }
    }
}

/// `[queue]`: the send pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// `inprocess`. RabbitMQ lands in its own issue.
    pub backend: String,
    /// Sends waiting for the writer before new sends are refused with `overloaded`.
    pub capacity: usize,
    /// Seconds a send waits for its persisted result before failing with a retryable error.
    pub send_timeout_secs: u64,
    /// How often, in milliseconds, due scheduled messages are looked for.
    pub scheduler_interval_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            backend: "inprocess".into(),
            capacity: 10_000,
            send_timeout_secs: 10,
            scheduler_interval_ms: 500,
        }
    }
}

/// `[media]`: attachment bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// `local` (a folder in the data directory). S3 lands in its own issue.
    pub backend: String,
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
    /// Uploads one user may start per minute (burst: the same number).
    pub uploads_per_minute: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            backend: "local".into(),
            max_upload_bytes: 25 * 1024 * 1024,
            uploads_per_minute: 60,
        }
    }
}

/// Values given on the command line; they win over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
}

impl Config {
    /// Loads defaults, then `file` (if any), then `COOLCHAT__*` variables, then `overrides`,
    /// and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("COOLCHAT")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("auth.allowed_chain_ids")
                .with_list_parse_key("server.trusted_proxies")
                .try_parsing(true),
        );
        if let Some(v) = &overrides.listen {
            builder = builder.set_override("server.listen", v.as_str())?;
        }
        if let Some(v) = &overrides.data_dir {
            builder = builder.set_override("server.data_dir", v.to_string_lossy().as_ref())?;
        }
        if let Some(v) = &overrides.public_url {
            builder = builder.set_override("server.public_url", v.as_str())?;
        }
        let cfg: Config = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        self.listen_addr()?;
        if !self.server.public_url.is_empty() {
            PublicOrigin::parse(&self.server.public_url).map_err(|p| bad("server.public_url", p))?;
        }
        let l = &self.limits;
        let positive: [(&'static str, usize); 12] = [
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_http_body_bytes", l.max_http_body_bytes),
            ("limits.max_room_members", l.max_room_members),
            ("limits.max_rooms_per_user", l.max_rooms_per_user),
            ("limits.max_client_msg_id_bytes", l.max_client_msg_id_bytes),
            ("limits.max_room_name_chars", l.max_room_name_chars),
            ("limits.max_display_name_chars", l.max_display_name_chars),
            ("limits.max_history_page", l.max_history_page),
            ("limits.max_sync_page", l.max_sync_page),
            ("limits.socket_buffer_packets", l.socket_buffer_packets),
            ("limits.max_sockets_per_user", l.max_sockets_per_user),
            ("storage.sqlite_batch_max", self.storage.sqlite_batch_max),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(bad(key, "must be greater than 0"));
            }
        }
        if l.max_room_members < 2 {
            return Err(bad("limits.max_room_members", "must be at least 2"));
        }
        if l.max_frame_bytes < 4 * l.max_body_bytes {
            return Err(bad(
                "limits.max_frame_bytes",
                format!("must be at least 4x limits.max_body_bytes ({})", 4 * l.max_body_bytes),
            ));
        }
        if l.max_http_body_bytes < l.max_body_bytes + 1024 {
            return Err(bad(
                "limits.max_http_body_bytes",
                "must exceed limits.max_body_bytes by at least 1024",
            ));
        }
        if !(l.messages_per_second > 0.0 && l.messages_per_second.is_finite()) {
            return Err(bad("limits.messages_per_second", "must be a positive number"));
        }
        if !(l.signals_per_second > 0.0 && l.signals_per_second.is_finite()) {
            return Err(bad("limits.signals_per_second", "must be a positive number"));
        }
        if l.message_burst == 0 {
            return Err(bad("limits.message_burst", "must be greater than 0"));
        }
        let a = &self.auth;
        if a.allowed_chain_ids.is_empty() {
            return Err(bad("auth.allowed_chain_ids", "must list at least one chain id"));
        }
        if a.nonce_ttl_secs == 0 || a.session_ttl_secs == 0 {
            return Err(bad("auth.nonce_ttl_secs", "TTLs must be greater than 0"));
        }
        if a.max_message_bytes < 256 {
            return Err(bad("auth.max_message_bytes", "must be at least 256"));
        }
        if a.nonce_requests_per_minute == 0 {
            return Err(bad("auth.nonce_requests_per_minute", "must be greater than 0"));
        }
        if self.storage.backend != "sqlite" {
            return Err(bad(
                "storage.backend",
                format!("unknown backend `{}` (available: sqlite)", self.storage.backend),
            ));
        }
        if !matches!(self.storage.sqlite_synchronous.as_str(), "full" | "normal") {
            return Err(bad("storage.sqlite_synchronous", "must be `full` or `normal`"));
        }
        if self.storage.sqlite_readers == 0 {
            return Err(bad("storage.sqlite_readers", "must be greater than 0"));
        }
        if self.cache.backend != "memory" {
            return Err(bad(
                "cache.backend",
                format!("unknown backend `{}` (available: memory)", self.cache.backend),
            ));
        }
        if self.bus.backend != "local" {
            return Err(bad(
                "bus.backend",
                format!("unknown backend `{}` (available: local)", self.bus.backend),
            ));
        }
        if self.server.control_poll_ms == 0 || self.server.control_poll_ms > 1000 {
            return Err(bad(
                "server.control_poll_ms",
                "must be between 1 and 1000 (bans must reach sockets within a second)",
            ));
        }
        if self.bus.capacity == 0 {
            return Err(bad("bus.capacity", "must be greater than 0"));
        }
        if self.queue.backend != "inprocess" {
            return Err(bad(
                "queue.backend",
                format!("unknown backend `{}` (available: inprocess)", self.queue.backend),
            ));
        }
        if self.queue.capacity == 0 || self.queue.send_timeout_secs == 0 || self.queue.scheduler_interval_ms == 0 {
            return Err(bad(
                "queue.capacity",
                "queue capacity, send_timeout_secs and scheduler_interval_ms must be greater than 0",
            ));
        }
        if self.media.uploads_per_minute == 0 || self.media.max_upload_bytes == 0 {
            return Err(bad(
                "media.uploads_per_minute",
                "uploads_per_minute and max_upload_bytes must be greater than 0",
            ));
        }
        if self.media.backend != "local" {
            return Err(bad(
                "media.backend",
                format!("unknown backend `{}` (available: local)", self.media.backend),
            ));
        }
        Ok(())
    }

    /// The parsed listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|e| ConfigError::Invalid {
            key: "server.listen",
            problem: format!("`{}` is not HOST:PORT ({e})", self.server.listen),
        })
    }
}

/// The public origin SIWE messages must name: `domain` is `host[:port]`, `uri` the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin {
    pub scheme: String,
    pub domain: String,
    pub origin: String,
}

impl PublicOrigin {
    /// Parses `http(s)://host[:port]` (a trailing `/` is allowed; a path is not).
    pub fn parse(url: &str) -> Result<PublicOrigin, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL ({e})"))?;
        let scheme = uri.scheme_str().ok_or_else(|| format!("`{url}` has no scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{url}`: scheme must be http or https"));
        }
        let authority = uri.authority().ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{url}`: user info is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("`{url}`: must be an origin, without path or query"));
        }
        let domain = authority.as_str().to_ascii_lowercase();
        Ok(PublicOrigin {
            scheme: scheme.to_string(),
            origin: format!("{scheme}://{domain}"),
            domain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn frame_limit_must_cover_four_bodies() {
        let mut c = Config::default();
        c.limits.max_frame_bytes = c.limits.max_body_bytes * 3;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("limits.max_frame_bytes"), "{e}");
    }

    #[test]
    fn public_origin_parsing() {
        let o = PublicOrigin::parse("https://Chat.Example.com:8443/").unwrap();
        assert_eq!(o.domain, "chat.example.com:8443");
        assert_eq!(o.origin, "https://chat.example.com:8443");
        assert!(PublicOrigin::parse("ftp://x").is_err());
        assert!(PublicOrigin::parse("https://x/path").is_err());
        assert!(PublicOrigin::parse("nonsense").is_err());
    }

    #[test]
    fn example_config_documents_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let example: Config = toml::from_str(&text).unwrap();
        assert_eq!(
            example,
            Config::default(),
            "examples/config.toml must show the defaults"
        );
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &defaults {
            let Some(keys) = keys.as_table() else { continue };
            for key in keys.keys() {
                assert!(
                    parsed.get(section).and_then(|s| s.get(key)).is_some(),
                    "examples/config.toml lacks [{section}] {key}"
                );
            }
        }
    }
}
