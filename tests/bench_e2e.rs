//! `coolchat bench` against a real `coolchat serve`: a small fanout run must deliver every
//! acked message exactly once, write a JSON report with the figures and the configuration, and
//! fail its assertions when asked for the impossible; a refused token shows up as a
//! `connect_error` code; the CLI-level errors are usage errors.

#![allow(clippy::unwrap_used)]

use coolchat::bench::{self, BenchConfig, BenchError, Scenario};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

/// A running node on 127.0.0.1:0 with limits loose enough for the bench; SIGTERM on drop.
struct Node {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_coolchat"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("COOLCHAT__AUTH__NONCE_REQUESTS_PER_MINUTE", "100000")
            .env("COOLCHAT__LIMITS__MESSAGES_PER_SECOND", "1000")
            .env("COOLCHAT__LIMITS__MESSAGE_BURST", "1000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(at) = line.find("listening on ") {
                    let url = line[at + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let _ = tx.send(url);
                    sent = true;
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the node prints its address");
        Node { child, url, _dir: dir }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn small_fanout(url: &str) -> BenchConfig {
    BenchConfig {
        url: url.to_string(),
        scenario: Scenario::Fanout,
        clients: 20,
        room_size: 10,
        senders_per_room: 2,
        rate: 40.0,
        duration_secs: 2.0,
        ramp_rate: 0.0,
        quiet: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fanout_run_loses_nothing_and_reports() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let cfg = BenchConfig {
        json: Some(json.clone()),
        asserts: vec![
            "lost==0".parse().unwrap(),
            "duplicated==0".parse().unwrap(),
            "p99_ms<5000".parse().unwrap(),
        ],
        ..small_fanout(&node.url)
    };
    let code = bench::run(cfg).await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS);

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let f = &report["figures"];
    assert_eq!(f["connected"], 20.0);
    assert_eq!(f["lost"], 0.0);
    assert_eq!(f["duplicated"], 0.0);
    assert!(f["acked"].as_f64().unwrap() > 0.0);
    // Every acked message reaches the 10 members of its room, sender included.
    assert_eq!(f["expected"].as_f64().unwrap(), f["acked"].as_f64().unwrap() * 10.0);
    assert_eq!(f["delivered"], f["expected"]);
    assert!(f["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(f["server_rss_bytes_before"].as_f64().unwrap() > 0.0);
    assert_eq!(report["config"]["clients"], 20);
    assert_eq!(report["config"]["asserts"][0], "lost==0");
    assert!(report["timeseries"].as_array().is_some_and(|t| !t.is_empty()));
    assert_eq!(report["assertions"].as_array().map(Vec::len), Some(3));

    // The same run, compared with the first, gated on the impossible: exit code 1.
    let cfg = BenchConfig {
        compare: Some(json.clone()),
        asserts: vec!["delivered_per_s>100000000".parse().unwrap()],
        ..small_fanout(&node.url)
    };
    assert_eq!(bench::run(cfg).await.unwrap(), ExitCode::from(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_scenarios_run() {
    let node = Node::start();
    for scenario in [Scenario::Dm, Scenario::Connect, Scenario::Idle, Scenario::History] {
        let cfg = BenchConfig {
            scenario,
            clients: 10,
            duration_secs: 1.0,
            history_seed: 20,
            rate: 20.0,
            asserts: vec!["errors==0".parse().unwrap()],
            ..small_fanout(&node.url)
        };
        assert_eq!(bench::run(cfg).await.unwrap(), ExitCode::SUCCESS, "{scenario}");
    }
}

#[tokio::test]
async fn a_refused_token_is_a_connect_error_code() {
    let node = Node::start();
    let net = bench::net::Net::new(&node.url, false, &[], 4).await.unwrap();
    let (phase, _) = tokio::sync::watch::channel(bench::client::Phase::Setup);
    let ctx = bench::client::RunCtx {
        net,
        users: vec![bench::login::Identity::random()],
        stats: bench::stats::Stats::new(),
        ledger: bench::stats::Ledger::new(1),
        table: Default::default(),
        phase,
        payload_bytes: 0,
        padding: String::new(),
        run_id: "t".into(),
        ack_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
    };
    let Err(err) = bench::client::handshake(&ctx, 0, "not-a-token").await else {
        panic!("a bad token must be refused");
    };
    assert_eq!(err.code(), "connect_error:invalid_token");
    // A real sign-in gets in.
    let token = bench::rest::sign_in(&ctx.net, 0, &ctx.users[0]).await.unwrap();
    assert!(bench::client::handshake(&ctx, 0, &token).await.is_ok());
}

#[tokio::test]
async fn unusable_settings_are_usage_errors() {
    let cfg = BenchConfig {
        clients: 5,
        room_size: 10,
        ..Default::default()
    };
    assert!(matches!(bench::run(cfg).await, Err(BenchError::Usage(_))));
    let cfg = BenchConfig {
        compare: Some("/nonexistent/base.json".into()),
        ..Default::default()
    };
    assert!(matches!(bench::run(cfg).await, Err(BenchError::Usage(_))));
    assert!("no_such_figure<1".parse::<bench::Assertion>().is_err());
}
