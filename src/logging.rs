//! Log set-up: human-readable lines by default, JSON lines in production mode.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` wins over `level`. Logs go to stderr so that
/// stdout stays for the command's own output (banners, tables, `--json`).
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
