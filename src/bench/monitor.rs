//! Once a second: the node's CPU and memory from `/metrics`, the bench's own CPU from
//! `/proc/self/stat`, and the run's counters, kept as a time series and shown as live progress
//! (an indicatif spinner on a terminal, a line every five seconds otherwise).

use super::client::RunCtx;
use super::rest::{ServerProcess, scrape_metrics};
use super::stats::Counters;
use super::sys::self_cpu_seconds;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A bench process above this share of one core is flagged "load generator saturated".
pub const SATURATION_PCT: f64 = 90.0;

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the bench started.
    pub t_s: f64,
    pub phase: String,
    pub connected: i64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub errors: u64,
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub delivered_per_s: f64,
    pub history_per_s: f64,
    /// Delivery latency p99 over this second.
    pub p99_ms: Option<f64>,
    /// Node CPU, percent of one core.
    pub server_cpu_pct: Option<f64>,
    pub server_rss_bytes: Option<f64>,
    /// Bench CPU, percent of one core.
    pub bench_cpu_pct: Option<f64>,
}

/// The phase shown in the progress line, with a done/total count for setup phases.
#[derive(Debug, Clone, Default)]
pub struct PhaseLabel {
    pub name: String,
    pub total: Option<u64>,
}

pub struct Monitor {
    pub samples: Mutex<Vec<Sample>>,
    pub label: Mutex<PhaseLabel>,
    bar: Option<ProgressBar>,
    /// Print a plain line every few samples (no terminal).
    plain: bool,
    quiet: bool,
}

impl Monitor {
    pub fn new(quiet: bool) -> Monitor {
        let tty = std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner:.green} [{elapsed_precise}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Monitor {
            samples: Mutex::new(Vec::new()),
            label: Mutex::new(PhaseLabel::default()),
            bar,
            plain: !quiet && !tty,
            quiet,
        }
    }

    pub fn set_phase(&self, name: &str, total: Option<u64>) {
        *self.label.lock() = PhaseLabel {
            name: name.to_string(),
            total,
        };
        if let Some(bar) = &self.bar {
            bar.set_message(name.to_string());
        }
        if !self.quiet {
            self.say(&format!(
                "phase: {name}{}",
                total.map(|t| format!(" ({t})")).unwrap_or_default()
            ));
        }
    }

    /// A line above the progress spinner (or on stderr), even when quiet.
    pub fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

struct Prev {
    at: Instant,
    sent: u64,
    acked: u64,
    delivered: u64,
    history: u64,
    server: Option<ServerProcess>,
    cpu: Option<f64>,
}

/// Samples until the task is aborted.
pub async fn run(ctx: Arc<RunCtx>, mon: Arc<Monitor>) {
    let c = &ctx.stats.c;
    let mut prev = Prev {
        at: Instant::now(),
        sent: 0,
        acked: 0,
        delivered: 0,
        history: 0,
        server: scrape(&ctx).await,
        cpu: self_cpu_seconds(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let server = scrape(&ctx).await;
        let now = Instant::now();
        let dt = now.duration_since(prev.at).as_secs_f64().max(1e-3);
        let cpu = self_cpu_seconds();
        let (sent, acked, delivered, history) = (
            Counters::get(&c.sent),
            Counters::get(&c.acked),
            Counters::get(&c.delivered),
            Counters::get(&c.history_requests),
        );
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        let label = mon.label.lock().clone();
        let sample = Sample {
            t_s: ctx.stats.start.elapsed().as_secs_f64(),
            phase: label.name.clone(),
            connected: c.connected.load(std::sync::atomic::Ordering::Relaxed),
            sent,
            acked,
            delivered,
            errors: Counters::get(&c.errors),
            sent_per_s: rate(sent, prev.sent),
            acked_per_s: rate(acked, prev.acked),
            delivered_per_s: rate(delivered, prev.delivered),
            history_per_s: rate(history, prev.history),
            p99_ms: ctx.stats.latency.take_window_p99_ms(),
            server_cpu_pct: match (server, prev.server) {
                (Some(s), Some(p)) => Some(((s.cpu_seconds - p.cpu_seconds) / dt * 100.0).max(0.0)),
                _ => None,
            },
            server_rss_bytes: server.map(|s| s.rss_bytes),
            bench_cpu_pct: match (cpu, prev.cpu) {
                (Some(a), Some(b)) => Some(((a - b) / dt * 100.0).max(0.0)),
                _ => None,
            },
        };
        let line = progress_line(&sample, &label, Counters::get(&c.attempts_done));
        match &mon.bar {
            Some(bar) => bar.set_message(line),
            None if mon.plain && n.is_multiple_of(5) => eprintln!("{line}"),
            None => {}
        }
        mon.samples.lock().push(sample);
        prev = Prev {
            at: now,
            sent,
            acked,
            delivered,
            history,
            server: server.or(prev.server),
            cpu,
        };
        n += 1;
    }
}

async fn scrape(ctx: &RunCtx) -> Option<ServerProcess> {
    tokio::time::timeout(Duration::from_millis(900), scrape_metrics(&ctx.net))
        .await
        .ok()?
        .ok()
}

fn progress_line(s: &Sample, label: &PhaseLabel, done: u64) -> String {
    let mut line = format!("{:<9}", label.name);
    if let Some(total) = label.total {
        line.push_str(&format!(" {done}/{total}"));
    }
    line.push_str(&format!(" | conns {}", s.connected));
    if s.sent_per_s > 0.0 || s.delivered_per_s > 0.0 {
        line.push_str(&format!(
            " | sent {:.0}/s deliv {:.0}/s",
            s.sent_per_s, s.delivered_per_s
        ));
    }
    if let Some(p) = s.p99_ms {
        line.push_str(&format!(" | p99 {p:.2} ms"));
    }
    if s.history_per_s > 0.0 {
        line.push_str(&format!(" | history {:.0}/s", s.history_per_s));
    }
    if let Some(c) = s.server_cpu_pct {
        line.push_str(&format!(" | node cpu {c:.0}%"));
    }
    if let Some(r) = s.server_rss_bytes {
        line.push_str(&format!(" rss {:.0} MiB", r / 1048576.0));
    }
    if let Some(c) = s.bench_cpu_pct {
        line.push_str(&format!(
            " | bench cpu {c:.0}%{}",
            if c > SATURATION_PCT { " (saturated)" } else { "" }
        ));
    }
    if s.errors > 0 {
        line.push_str(&format!(" | errors {}", s.errors));
    }
    line
}
