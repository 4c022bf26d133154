//! The results: every figure by name (what `--assert` and `--compare` work on), the human
//! summary, the JSON report and the comparison with a baseline report.

use super::assertions::Verdict;
use super::client::RunCtx;
use super::config::{BenchConfig, Scenario};
use super::error::BenchError;
use super::monitor::{SATURATION_PCT, Sample};
use super::scenario::RunData;
use super::stats::{Counters, HistSummary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Every figure a report can hold, with its meaning. `--assert` accepts exactly these names.
pub const FIGURES: &[(&str, &str)] = &[
    ("clients", "simulated users"),
    ("nofile_limit", "the bench's open-files limit after raising it"),
    ("connected", "sockets connected and ready when the run phase started"),
    ("signin_ok", "successful SIWE sign-ins (nonce + verify)"),
    ("signin_failed", "failed sign-ins"),
    ("signin_per_s", "sign-ins per second over the sign-in phase"),
    ("signin_p50_ms", "sign-in time (nonce, sign, verify), median"),
    ("signin_p99_ms", "sign-in time, 99th percentile"),
    ("connect_ok", "Socket.IO connections that reached ready (sync acked)"),
    ("connect_failed", "connections that failed (see errors)"),
    (
        "connect_per_s",
        "ready connections per second over the connect phase (connect: sign-in + connect)",
    ),
    (
        "connect_p50_ms",
        "websocket + Socket.IO connect + first sync ack, median",
    ),
    ("connect_p99_ms", "connect time, 99th percentile"),
    (
        "login_connect_p50_ms",
        "sign-in + connect, median (the connect scenario's headline)",
    ),
    ("login_connect_p99_ms", "sign-in + connect, 99th percentile"),
    ("disconnects", "sockets the node closed before the bench did"),
    ("run_s", "length of the measured phase, seconds"),
    ("offered_per_s", "messages per second the plan offers"),
    ("sent", "message:send events sent"),
    ("acked", "sends acked ok (durably accepted)"),
    (
        "nacked",
        "sends refused with ok:false (by code in errors, e.g. ack:rate_limited)",
    ),
    ("ack_timeouts", "sends whose ack never came"),
    (
        "expected",
        "sum over acked messages of the room's connected receivers at ack time",
    ),
    ("delivered", "unique (room, seq) message events received by receivers"),
    (
        "lost",
        "expected deliveries of acked messages that never arrived (after the drain)",
    ),
    ("duplicated", "a receiver saw the same (room, seq) again"),
    (
        "out_of_order",
        "a receiver saw a lower seq after a higher one in a room",
    ),
    (
        "delivered_unacked",
        "deliveries of messages whose ack failed or never came",
    ),
    ("foreign", "message events that were not this run's"),
    ("errors", "all errors, by code in the errors table"),
    ("sent_per_s", "sends per second during the run phase"),
    ("acked_per_s", "acks per second during the run phase"),
    ("delivered_per_s", "deliveries per second during the run phase"),
    ("p50_ms", "end-to-end delivery latency (send to receive), median"),
    ("p90_ms", "delivery latency, 90th percentile"),
    ("p99_ms", "delivery latency, 99th percentile"),
    ("p999_ms", "delivery latency, 99.9th percentile"),
    ("max_ms", "delivery latency, maximum"),
    ("mean_ms", "delivery latency, mean"),
    ("ack_p50_ms", "send to ack, median"),
    ("ack_p90_ms", "send to ack, 90th percentile"),
    ("ack_p99_ms", "send to ack, 99th percentile"),
    ("ack_p999_ms", "send to ack, 99.9th percentile"),
    ("ack_max_ms", "send to ack, maximum"),
    ("history_requests", "history pages fetched"),
    ("history_per_s", "history pages per second during the run phase"),
    ("history_messages", "messages read through history pages"),
    ("history_p50_ms", "history page time, median"),
    ("history_p99_ms", "history page time, 99th percentile"),
    ("history_max_ms", "history page time, maximum"),
    (
        "server_cpu_pct_avg",
        "node CPU during the run phase, percent of one core, mean",
    ),
    ("server_cpu_pct_max", "node CPU, highest one-second sample"),
    (
        "server_rss_bytes_before",
        "node resident memory before the connect phase",
    ),
    (
        "server_rss_bytes_after",
        "node resident memory at the end of the run, sockets still open",
    ),
    ("server_rss_bytes_max", "node resident memory, highest sample"),
    (
        "server_rss_per_conn_bytes",
        "(rss after - rss before) / connected sockets",
    ),
    (
        "bench_cpu_pct_avg",
        "this process's CPU during the run phase, percent of one core, mean",
    ),
    ("bench_cpu_pct_max", "this process's CPU, highest one-second sample"),
    (
        "bench_saturated_s",
        "seconds the bench was above 90% of one core (load generator saturated)",
    ),
];

pub fn is_figure(name: &str) -> bool {
    FIGURES.iter().any(|(n, _)| *n == name)
}

/// The JSON report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub config: BenchConfig,
    pub figures: BTreeMap<String, f64>,
    pub errors: BTreeMap<String, u64>,
    pub timeseries: Vec<Sample>,
    pub notes: Vec<String>,
    #[serde(default)]
    pub assertions: Vec<Verdict>,
}

fn put_hist(f: &mut BTreeMap<String, f64>, prefix: &str, h: &HistSummary, all: bool) {
    if h.count == 0 {
        return;
    }
    let mut put = |k: &str, v: f64| {
        f.insert(format!("{prefix}{k}"), round3(v));
    };
    put("p50_ms", h.p50_ms);
    put("p99_ms", h.p99_ms);
    put("max_ms", h.max_ms);
    if all {
        put("p90_ms", h.p90_ms);
        put("p999_ms", h.p999_ms);
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter()
        .copied()
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
}

/// Every figure of a finished run.
pub fn figures(cfg: &BenchConfig, ctx: &RunCtx, d: &RunData) -> BTreeMap<String, f64> {
    let c = &ctx.stats.c;
    let g = |a: &std::sync::atomic::AtomicU64| Counters::get(a) as f64;
    let mut f = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        f.insert(k.to_string(), round3(v));
    };
    put("clients", cfg.clients as f64);
    if let Some(n) = d.nofile {
        put("nofile_limit", n.soft as f64);
    }
    put("connected", d.connected_at_run as f64);
    put("signin_ok", g(&c.signin_ok));
    put("signin_failed", g(&c.signin_failed));
    if let Some(w) = d.signin_wall_s.filter(|w| *w > 0.0) {
        put("signin_per_s", g(&c.signin_ok) / w);
    }
    if cfg.scenario.uses_sockets() {
        put("connect_ok", g(&c.connect_ok));
        put("connect_failed", g(&c.connect_failed));
        put("disconnects", g(&c.disconnects));
        if let Some(w) = d.connect_wall_s.filter(|w| *w > 0.0) {
            put("connect_per_s", g(&c.connect_ok) / w);
        }
    }
    put("run_s", d.run_wall_s);
    if d.senders > 0 {
        let r = &d.reconciled;
        put("offered_per_s", d.offered_rate);
        put("sent", g(&c.sent));
        put("acked", g(&c.acked));
        put("nacked", g(&c.nacked));
        put("ack_timeouts", g(&c.ack_timeouts));
        put("expected", r.expected as f64);
        put("delivered", g(&c.delivered));
        put("lost", r.lost as f64);
        put("duplicated", g(&c.duplicated));
        put("out_of_order", g(&c.out_of_order));
        put("delivered_unacked", r.delivered_unacked as f64);
        put("foreign", g(&c.foreign));
        if d.run_wall_s > 0.0 {
            put("sent_per_s", d.run_sent as f64 / d.run_wall_s);
            put("acked_per_s", d.run_acked as f64 / d.run_wall_s);
            put("delivered_per_s", d.run_delivered as f64 / d.run_wall_s);
        }
    }
    put("errors", g(&c.errors));
    if matches!(cfg.scenario, Scenario::History | Scenario::Mixed) {
        put("history_requests", g(&c.history_requests));
        put("history_messages", g(&c.history_messages));
        if d.run_wall_s > 0.0 {
            put("history_per_s", d.run_history as f64 / d.run_wall_s);
        }
    }

    put_hist(&mut f, "signin_", &ctx.stats.signin.summary(), false);
    put_hist(&mut f, "connect_", &ctx.stats.connect.summary(), false);
    if cfg.scenario == Scenario::Connect {
        put_hist(&mut f, "login_connect_", &ctx.stats.login_connect.summary(), false);
        // The storm measures both steps together.
        if let Some(w) = d.connect_wall_s.filter(|w| *w > 0.0) {
            f.insert("connect_per_s".into(), round3(g(&c.connect_ok) / w));
        }
    }
    let lat = ctx.stats.latency.summary();
    put_hist(&mut f, "", &lat, true);
    if lat.count > 0 {
        f.insert("mean_ms".into(), round3(lat.mean_ms));
    }
    put_hist(&mut f, "ack_", &ctx.stats.ack.summary(), true);
    put_hist(&mut f, "history_", &ctx.stats.history.summary(), false);

    // Node and bench CPU over the run phase; memory over the whole run.
    let in_run = |s: &&Sample| s.phase == "run" || s.phase == "hold" || s.phase == "storm";
    let mut run_samples: Vec<&Sample> = d.samples.iter().filter(in_run).collect();
    // A sample covers the second before it was taken: the first one of the run phase still
    // holds the end of the connect phase.
    if run_samples.len() > 2 {
        run_samples.remove(0);
    }
    let server_cpu: Vec<f64> = run_samples.iter().filter_map(|s| s.server_cpu_pct).collect();
    let bench_cpu: Vec<f64> = run_samples.iter().filter_map(|s| s.bench_cpu_pct).collect();
    let all_bench_cpu: Vec<f64> = d.samples.iter().filter_map(|s| s.bench_cpu_pct).collect();
    let rss: Vec<f64> = d.samples.iter().filter_map(|s| s.server_rss_bytes).collect();
    let mut put_opt = |k: &str, v: Option<f64>| {
        if let Some(v) = v {
            f.insert(k.to_string(), round3(v));
        }
    };
    put_opt("server_cpu_pct_avg", mean(&server_cpu));
    put_opt("server_cpu_pct_max", max(&server_cpu));
    put_opt("server_rss_bytes_before", d.rss_before);
    put_opt("server_rss_bytes_after", d.rss_after);
    put_opt("server_rss_bytes_max", max(&rss).or(d.rss_after));
    if let (Some(a), Some(b)) = (d.rss_after, d.rss_before)
        && d.connected_at_run > 0
        && cfg.scenario.uses_sockets()
    {
        put_opt("server_rss_per_conn_bytes", Some((a - b) / d.connected_at_run as f64));
    }
    put_opt("bench_cpu_pct_avg", mean(&bench_cpu));
    put_opt("bench_cpu_pct_max", max(&all_bench_cpu));
    put_opt(
        "bench_saturated_s",
        (!all_bench_cpu.is_empty()).then(|| bench_cpu.iter().filter(|&&c| c > SATURATION_PCT).count() as f64),
    );
    // Only documented figures (e.g. no `signin_max_ms`).
    f.retain(|k, _| is_figure(k));
    f
}

fn ms(f: &BTreeMap<String, f64>, k: &str) -> String {
    f.get(k).map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
}

fn num(f: &BTreeMap<String, f64>, k: &str) -> String {
    match f.get(k) {
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", *v as i64),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn mib(v: Option<&f64>) -> String {
    v.map(|b| format!("{:.1} MiB", b / 1048576.0))
        .unwrap_or_else(|| "-".into())
}

/// The final human summary.
pub fn summary(r: &Report) -> String {
    let f = &r.figures;
    let cfg = &r.config;
    let mut s = String::new();
    let _ = writeln!(s, "\n== coolchat bench: {} against {} ==", cfg.scenario, cfg.url);
    let mut shape = format!("{} clients", cfg.clients);
    match cfg.scenario {
        Scenario::Fanout | Scenario::History | Scenario::Mixed => {
            let _ = write!(shape, ", {} rooms x {}", cfg.group_rooms(), cfg.room_size);
        }
        _ => {}
    }
    if f.contains_key("offered_per_s") {
        let _ = write!(
            shape,
            ", {} msg/s offered, {} B bodies",
            num(f, "offered_per_s"),
            cfg.payload_bytes
        );
    }
    let _ = writeln!(s, "{shape}, run {} s", num(f, "run_s"));
    let _ = writeln!(
        s,
        "sign-in   {} ok, {} failed, {}/s, p50 {} ms, p99 {} ms",
        num(f, "signin_ok"),
        num(f, "signin_failed"),
        num(f, "signin_per_s"),
        ms(f, "signin_p50_ms"),
        ms(f, "signin_p99_ms")
    );
    if f.contains_key("connect_ok") {
        let _ = writeln!(
            s,
            "connect   {} ok, {} failed, {}/s, p50 {} ms, p99 {} ms; {} connected at start, {} dropped by the node",
            num(f, "connect_ok"),
            num(f, "connect_failed"),
            num(f, "connect_per_s"),
            ms(f, "connect_p50_ms"),
            ms(f, "connect_p99_ms"),
            num(f, "connected"),
            num(f, "disconnects")
        );
    }
    if f.contains_key("login_connect_p50_ms") {
        let _ = writeln!(
            s,
            "storm     sign-in + connect p50 {} ms, p99 {} ms",
            ms(f, "login_connect_p50_ms"),
            ms(f, "login_connect_p99_ms")
        );
    }
    if f.contains_key("sent") {
        let _ = writeln!(
            s,
            "messages  sent {} ({}/s), acked {} ({}/s), refused {}, ack timeouts {}",
            num(f, "sent"),
            num(f, "sent_per_s"),
            num(f, "acked"),
            num(f, "acked_per_s"),
            num(f, "nacked"),
            num(f, "ack_timeouts")
        );
        let _ = writeln!(
            s,
            "delivery  {} delivered ({}/s) of {} expected: lost {}, duplicated {}, out of order {}, unacked {}",
            num(f, "delivered"),
            num(f, "delivered_per_s"),
            num(f, "expected"),
            num(f, "lost"),
            num(f, "duplicated"),
            num(f, "out_of_order"),
            num(f, "delivered_unacked")
        );
        let _ = writeln!(
            s,
            "latency   p50 {} | p90 {} | p99 {} | p99.9 {} | max {} ms",
            ms(f, "p50_ms"),
            ms(f, "p90_ms"),
            ms(f, "p99_ms"),
            ms(f, "p999_ms"),
            ms(f, "max_ms")
        );
        let _ = writeln!(
            s,
            "ack       p50 {} | p90 {} | p99 {} | p99.9 {} | max {} ms",
            ms(f, "ack_p50_ms"),
            ms(f, "ack_p90_ms"),
            ms(f, "ack_p99_ms"),
            ms(f, "ack_p999_ms"),
            ms(f, "ack_max_ms")
        );
    }
    if f.contains_key("history_requests") {
        let _ = writeln!(
            s,
            "history   {} pages ({}/s), {} messages, p50 {} ms, p99 {} ms, max {} ms",
            num(f, "history_requests"),
            num(f, "history_per_s"),
            num(f, "history_messages"),
            ms(f, "history_p50_ms"),
            ms(f, "history_p99_ms"),
            ms(f, "history_max_ms")
        );
    }
    let _ = write!(
        s,
        "node      cpu avg {}% max {}% | rss before {}, after {}, max {}",
        num(f, "server_cpu_pct_avg"),
        num(f, "server_cpu_pct_max"),
        mib(f.get("server_rss_bytes_before")),
        mib(f.get("server_rss_bytes_after")),
        mib(f.get("server_rss_bytes_max")),
    );
    match f.get("server_rss_per_conn_bytes") {
        Some(b) => {
            let _ = writeln!(s, " | {b:.0} B per connection");
        }
        None => s.push('\n'),
    }
    let _ = writeln!(
        s,
        "bench     cpu avg {}% max {}% (percent of one core), open files {}",
        num(f, "bench_cpu_pct_avg"),
        num(f, "bench_cpu_pct_max"),
        num(f, "nofile_limit")
    );
    if f.get("bench_saturated_s").is_some_and(|v| *v > 0.0) {
        let _ = writeln!(
            s,
            "WARNING   load generator saturated: above {SATURATION_PCT:.0}% of one core for {} s of the run; \
             figures may reflect the bench, not the node",
            num(f, "bench_saturated_s")
        );
    }
    if !r.errors.is_empty() {
        let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "errors    {}", list.join(", "));
    }
    for n in &r.notes {
        let _ = writeln!(s, "note      {n}");
    }
    s
}

/// Writes the report as pretty JSON.
pub fn write_json(r: &Report, path: &Path) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(r).map_err(|e| BenchError::Io(format!("encoding the report: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| BenchError::Io(format!("writing {}: {e}", path.display())))
}

/// The `figures` of an earlier report (only that part is needed, so older reports work too).
pub fn load_figures(path: &Path) -> Result<BTreeMap<String, f64>, BenchError> {
    #[derive(Deserialize)]
    struct Figures {
        figures: BTreeMap<String, f64>,
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| BenchError::Usage(format!("--compare {}: {e}", path.display())))?;
    serde_json::from_str::<Figures>(&text)
        .map(|f| f.figures)
        .map_err(|e| BenchError::Usage(format!("--compare {}: not a bench report: {e}", path.display())))
}

/// One line per figure present in both: baseline, current, and current / baseline.
pub fn compare(current: &BTreeMap<String, f64>, baseline: &BTreeMap<String, f64>, name: &str) -> String {
    let mut s = format!("\n== compared with {name} (ratio = current / baseline) ==\n");
    let _ = writeln!(
        s,
        "{:<28} {:>16} {:>16} {:>9}",
        "figure", "baseline", "current", "ratio"
    );
    // In the order of FIGURES, which groups related figures.
    for (k, _) in FIGURES {
        let (Some(cur), Some(base)) = (current.get(*k), baseline.get(*k)) else {
            continue;
        };
        let _ = writeln!(s, "{k:<28} {base:>16.3} {cur:>16.3} {:>9}", ratio(*cur, *base));
    }
    s
}

/// `current / baseline`, `=` when both are zero, `-` when only the baseline is.
pub fn ratio(current: f64, baseline: f64) -> String {
    if baseline == 0.0 {
        if current == 0.0 { "=".into() } else { "-".into() }
    } else {
        format!("{:.3}", current / baseline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_names_are_unique_snake_case() {
        let mut names: Vec<&str> = FIGURES.iter().map(|(n, _)| *n).collect();
        assert!(names.iter().all(|n| {
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before);
        assert!(is_figure("p99_ms") && is_figure("lost") && is_figure("delivered_per_s"));
        assert!(!is_figure("p99"));
    }

    #[test]
    fn every_figure_is_documented() {
        let doc = include_str!("../../docs/BENCH.md");
        for (name, _) in FIGURES {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/BENCH.md does not describe `{name}`"
            );
        }
    }

    #[test]
    fn ratios_and_comparison() {
        assert_eq!(ratio(2.0, 4.0), "0.500");
        assert_eq!(ratio(0.0, 0.0), "=");
        assert_eq!(ratio(1.0, 0.0), "-");
        let mut a = BTreeMap::new();
        let mut b = BTreeMap::new();
        a.insert("p99_ms".to_string(), 12.0);
        b.insert("p99_ms".to_string(), 10.0);
        a.insert("lost".to_string(), 0.0);
        b.insert("sent".to_string(), 5.0);
        let text = compare(&a, &b, "base.json");
        assert!(text.contains("p99_ms"), "{text}");
        assert!(text.contains("1.200"), "{text}");
        assert!(!text.contains("lost"), "{text}");
        assert!(!text.contains("sent "), "{text}");
    }

    #[test]
    fn report_round_trips_through_json() {
        let mut figures = BTreeMap::new();
        figures.insert("p99_ms".to_string(), 1.5);
        let r = Report {
            tool: "coolchat bench".into(),
            version: "0".into(),
            started_at: "2030-01-01T00:00:00Z".into(),
            config: BenchConfig {
                asserts: vec!["lost==0".parse().unwrap_or_else(|e| panic!("{e}"))],
                ..Default::default()
            },
            figures,
            errors: BTreeMap::new(),
            timeseries: vec![Sample::default()],
            notes: vec![],
            assertions: vec![],
        };
        let dir = std::env::temp_dir().join(format!("coolchat-bench-report-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("r.json");
        write_json(&r, &path).unwrap_or_else(|e| panic!("{e}"));
        let figs = load_figures(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(figs.get("p99_ms"), Some(&1.5));
        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.config.asserts.len(), 1);
        assert!(summary(&back).contains("fanout"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load_figures(Path::new("/nonexistent/x.json")).is_err());
    }
}
