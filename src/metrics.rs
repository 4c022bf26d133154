//! Prometheus metrics: the recorder, and process CPU/RSS for capacity planning.
//!
//! Counters and gauges are recorded with the `metrics` macros where things happen; this module
//! only installs the recorder and renders `/metrics`. Process figures are read from `/proc` at
//! scrape time (so `coolchat bench` can report memory per connection).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once and returns the render handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // If another recorder is already installed (tests), rendering still works on ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Renders every metric plus process figures, in Prometheus text format.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    if let Some(p) = process_figures() {
        out.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n");
        out.push_str(&format!("process_resident_memory_bytes {}\n", p.rss_bytes));
        out.push_str("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\n");
        out.push_str(&format!("process_cpu_seconds_total {:.3}\n", p.cpu_seconds));
        out.push_str("# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\n");
        out.push_str(&format!("process_open_fds {}\n", p.open_fds));
    }
    out
}

/// CPU time and memory of this process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessFigures {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
}

/// Reads `/proc/self`; `None` off Linux.
pub fn process_figures() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the ')'.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = 100.0; // USER_HZ is 100 on every Linux platform Rust targets.
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcessFigures {
        rss_bytes: rss_pages * 4096,
        cpu_seconds: (utime + stime) / ticks,
        open_fds,
    })
}
