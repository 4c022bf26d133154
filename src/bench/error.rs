//! Why something in a bench run failed, with the stable code it is counted under.

/// A failure. [`BenchError::code`] is the key of the "errors by code" table.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The command line asks for something that cannot run (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The node answered an HTTP request with an error status.
    #[error("HTTP {status} from {what}: {code}")]
    Http {
        what: &'static str,
        status: u16,
        code: String,
    },
    /// The node refused the Socket.IO connection.
    #[error("connect_error: {0}")]
    ConnectRefused(String),
    /// TCP, TLS, websocket or HTTP transport failure.
    #[error("{what}: {detail}")]
    Transport { what: &'static str, detail: String },
    /// The node said something the protocol does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A step did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// Local I/O (report files).
    #[error("{0}")]
    Io(String),
}

impl BenchError {
    /// The stable key this error is counted under, e.g. `http_429:rate_limited`,
    /// `connect_error:invalid_token`, `tcp_connect`.
    pub fn code(&self) -> String {
        match self {
            BenchError::Usage(_) => "usage".into(),
            BenchError::Http { status, code, .. } => format!("http_{status}:{code}"),
            BenchError::ConnectRefused(code) => format!("connect_error:{code}"),
            BenchError::Transport { what, .. } => (*what).to_string(),
            BenchError::Protocol(_) => "protocol".into(),
            BenchError::Timeout(what) => format!("timeout:{what}"),
            BenchError::Io(_) => "io".into(),
        }
    }

    pub fn transport(what: &'static str, e: impl std::fmt::Display) -> Self {
        BenchError::Transport {
            what,
            detail: e.to_string(),
        }
    }

    /// A transport error with its whole cause chain (reqwest and tungstenite keep the useful
    /// part, e.g. the TLS refusal, in the sources).
    pub fn transport_chain(what: &'static str, e: &(dyn std::error::Error + 'static)) -> Self {
        BenchError::Transport { what, detail: chain(e) }
    }
}

/// `outer: cause: root cause`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
