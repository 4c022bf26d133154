//! `coolchat bench`: a load generator that drives a running CoolChat deployment the way real
//! users do (SIWE sign-in over HTTP, Socket.IO over websocket) and reports what a capacity
//! planner needs: delivery and ack latency, loss, duplicates, reordering, errors by code,
//! throughput, and the node's CPU and memory. See `docs/BENCH.md`.
//!
//! One concept per module:
//! * [`config`]: the scenario and its knobs; [`plan`]: who is in which room and sends when;
//! * [`net`]: HTTP clients, websocket connections, source addresses, TLS;
//! * [`login`] and [`rest`]: keys, SIWE and the REST calls; [`sio`]: Socket.IO framing;
//! * [`client`]: one task per simulated user; [`scenario`]: the phases of a run;
//! * [`stats`]: histograms, counters and the loss/duplicate/reorder accounting;
//! * [`monitor`]: per-second samples and live progress; [`sys`]: open-files limit, own CPU;
//! * [`report`]: figures, summary, JSON, comparison; [`assertions`]: CI gates.

pub mod assertions;
pub mod client;
pub mod config;
pub mod error;
pub mod login;
pub mod monitor;
pub mod net;
pub mod plan;
pub mod report;
pub mod rest;
pub mod scenario;
pub mod sio;
pub mod stats;
pub mod sys;

pub use assertions::Assertion;
pub use config::{BenchConfig, Scenario};
pub use error::BenchError;

use std::process::ExitCode;
use std::sync::Arc;

/// Runs the bench described by `cfg`, prints the summary (and comparison, and assertion
/// verdicts), writes the JSON report if asked. Exit code: 0, or 1 when an assertion failed.
/// A [`BenchError::Usage`] means the configuration cannot run (the caller exits 2).
pub async fn run(cfg: BenchConfig) -> Result<ExitCode, BenchError> {
    cfg.validate()?;
    // Read the baseline first: a wrong path should not cost a whole run.
    let baseline = match &cfg.compare {
        Some(p) => Some(report::load_figures(p)?),
        None => None,
    };
    let started_at = crate::model::fmt_time(time::OffsetDateTime::now_utc());
    let mon = Arc::new(monitor::Monitor::new(cfg.quiet));
    let outcome = scenario::execute(&cfg, mon.clone()).await;
    mon.finish();
    let (ctx, data) = outcome?;

    let figures = report::figures(&cfg, &ctx, &data);
    let assertions: Vec<assertions::Verdict> = cfg.asserts.iter().map(|a| a.check(&figures)).collect();
    let report = report::Report {
        tool: "coolchat bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        config: cfg.clone(),
        figures,
        errors: ctx.stats.errors(),
        timeseries: data.samples.clone(),
        notes: data.notes.clone(),
        assertions: assertions.clone(),
    };
    print!("{}", report::summary(&report));
    if let (Some(base), Some(path)) = (&baseline, &cfg.compare) {
        print!(
            "{}",
            report::compare(&report.figures, base, &path.display().to_string())
        );
    }
    if let Some(path) = &cfg.json {
        report::write_json(&report, path)?;
        println!("report written to {}", path.display());
    }
    let mut failed = 0;
    if !assertions.is_empty() {
        println!("\n== assertions ==");
        for v in &assertions {
            let actual = v
                .actual
                .map(|a| format!("{a}"))
                .unwrap_or_else(|| "n/a (not measured)".into());
            println!(
                "{:<4} {:<36} actual {actual}",
                if v.pass { "PASS" } else { "FAIL" },
                v.assertion
            );
            if !v.pass {
                failed += 1;
            }
        }
        println!(
            "{} of {} assertions passed",
            assertions.len() - failed,
            assertions.len()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
