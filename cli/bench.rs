//! `coolchat bench`: argument parsing only; the load generator lives in `coolchat::bench`.

use anyhow::Result;
use clap::Args;
use coolchat::bench::{Assertion, BenchConfig, BenchError, Scenario};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const AFTER_HELP: &str = "\
Scenarios:
  fanout   group rooms of --room-size; --senders-per-room of each send, --rate msg/s in total
  dm       pairs of users chatting in direct-message rooms
  connect  sign-in + connect storm: rate and p50/p99 of sign-in+connect time
  idle     --clients connections held for --duration: node memory per connection
  history  paging over GET /api/v1/rooms/{id}/messages at --rate pages/s (rooms seeded first)
  mixed    half fanout, half dm, plus history paging at --history-rate (default --rate/10)

Start the node with limits that fit the load, e.g.:
  COOLCHAT__AUTH__NONCE_REQUESTS_PER_MINUTE=1000000 COOLCHAT__LIMITS__MESSAGES_PER_SECOND=1000 \\
  COOLCHAT__LIMITS__MESSAGE_BURST=1000 coolchat serve

Examples:
  coolchat bench --url http://127.0.0.1:8080 --clients 1000 --rooms 100 --room-size 10 --rate 2000 --duration 30s
  coolchat bench --scenario idle --clients 20000 --ramp-rate 2000 --duration 30s --source-ip-count 4
  coolchat bench --scenario connect --clients 5000 --ramp-rate 0 --max-inflight 512
  coolchat bench --json run.json --compare baseline.json --assert 'p99_ms<50' --assert 'lost==0'

Exit status: 0 ok, 1 an assertion failed or the run could not complete, 2 usage error.
Figures (for --assert and --compare) are listed in docs/BENCH.md.";

/// Load generator: real SIWE logins and Socket.IO clients against a running node.
#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    /// Origin of the node or of nginx in front of it (http:// or https://).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// What the users do: fanout, dm, connect, idle, history, mixed.
    #[arg(long, default_value = "fanout", value_parser = parse_scenario)]
    scenario: Scenario,
    /// Simulated users (each with its own key, session and socket).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Length of the measured phase, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Group rooms [default: clients / room-size].
    #[arg(long)]
    rooms: Option<usize>,
    /// Members per group room.
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Messages per second over all senders (history: pages per second).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Members of each group room that send.
    #[arg(long, default_value_t = 1)]
    senders_per_room: usize,
    /// Size of each message body in bytes (the bookkeeping JSON is ~40 bytes).
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,
    /// Sign-ins and connections started per second (0: as fast as --max-inflight allows).
    #[arg(long, default_value_t = 500.0)]
    ramp_rate: f64,
    /// Most sign-ins/connections in progress at once.
    #[arg(long, default_value_t = 256)]
    max_inflight: usize,
    /// Accept any TLS certificate (self-signed deployments).
    #[arg(long)]
    insecure: bool,
    /// Bind outgoing sockets to these local addresses, round-robin (e.g. 127.0.0.1,127.0.0.2).
    #[arg(long, value_delimiter = ',', conflicts_with = "source_ip_count")]
    source_ips: Vec<IpAddr>,
    /// Bind outgoing sockets to 127.0.0.1 .. 127.0.0.K, round-robin.
    #[arg(long, value_name = "K")]
    source_ip_count: Option<usize>,
    /// After the run, wait at most this long for outstanding acks and deliveries.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// A send not acked within this counts as ack_timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ack_timeout: Duration,
    /// history: messages written into each room before paging starts.
    #[arg(long, default_value_t = 200)]
    history_seed: usize,
    /// history/mixed: messages per page.
    #[arg(long, default_value_t = 50)]
    history_page: usize,
    /// history/mixed: pages per second [default: --rate for history, --rate/10 for mixed].
    #[arg(long)]
    history_rate: Option<f64>,
    /// Write every figure, the time series and the configuration to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Print the ratio of every figure to this earlier --json report.
    #[arg(long, value_name = "BASELINE.json")]
    compare: Option<PathBuf>,
    /// CI gate `name op number` (ops < <= > >= ==), e.g. "p99_ms<50"; repeatable.
    #[arg(long = "assert", value_name = "EXPR", value_parser = parse_assertion)]
    asserts: Vec<Assertion>,
    /// No live progress.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse()
}

fn parse_assertion(s: &str) -> Result<Assertion, String> {
    s.parse()
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let source_ips = match args.source_ip_count {
        Some(k) => match coolchat::bench::config::loopback_sources(k) {
            Ok(ips) => ips,
            Err(e) => return Ok(usage(&e)),
        },
        None => args.source_ips,
    };
    let cfg = BenchConfig {
        url: args.url,
        scenario: args.scenario,
        clients: args.clients,
        duration_secs: args.duration.as_secs_f64(),
        rooms: args.rooms,
        room_size: args.room_size,
        rate: args.rate,
        senders_per_room: args.senders_per_room,
        payload_bytes: args.payload_bytes,
        ramp_rate: args.ramp_rate,
        max_inflight: args.max_inflight,
        insecure: args.insecure,
        source_ips,
        drain_timeout_secs: args.drain_timeout.as_secs_f64(),
        ack_timeout_secs: args.ack_timeout.as_secs_f64(),
        history_seed: args.history_seed,
        history_page: args.history_page,
        history_rate: args.history_rate,
        json: args.json,
        compare: args.compare,
        asserts: args.asserts,
        quiet: args.quiet,
    };
    match coolchat::bench::run(cfg).await {
        Ok(code) => Ok(code),
        Err(e @ BenchError::Usage(_)) => Ok(usage(&e)),
        Err(e) => Err(anyhow::anyhow!("bench: {e}")),
    }
}

fn usage(e: &BenchError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}
