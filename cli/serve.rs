//! `coolchat serve`: wiring only. Loads config, opens backends, binds, runs the gateway and the
//! scheduler, and shuts down cleanly on SIGINT/SIGTERM.

use crate::CommonOpts;
use anyhow::{Context, Result};
use clap::Args;
use coolchat::config::{Overrides, PublicOrigin};
use coolchat::service::ChatService;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonOpts,
    /// Address to listen on, HOST:PORT (port 0 picks a free port) [default: 127.0.0.1:8080].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Public origin SIWE messages must name [default: http://<listen address>].
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let overrides = Overrides {
        listen: args.listen.clone(),
        public_url: args.public_url.clone(),
        data_dir: None,
    };
    let config = match crate::load_config(&args.common, overrides) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    coolchat::logging::init(&config.server.log_level, config.server.production);
    raise_open_file_limit();
    let addr = config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let public_url = if config.server.public_url.is_empty() {
        format!("http://{local}")
    } else {
        config.server.public_url.clone()
    };
    let origin = PublicOrigin::parse(&public_url).map_err(|p| anyhow::anyhow!("server.public_url: {p}"))?;

    let backends = coolchat::backends::open(&config)
        .await
        .context("opening the backends")?;
    let svc = ChatService::new(backends.clone(), config.clone(), origin.clone());

    println!("coolchat {} listening on http://{local}", env!("CARGO_PKG_VERSION"));
    println!(
        "  public origin (SIWE domain/uri): {} ({})",
        origin.origin, origin.domain
    );
    println!("  data directory: {}", config.server.data_dir.display());
    println!("  storage: {}", backends.store.describe());
    println!("  cache/presence: {}", backends.state.describe());
    println!("  fan-out bus: {}", backends.bus.describe());
    println!("  queue: {}", backends.queue.describe());
    println!("  media: {}", backends.media.describe());
    tracing::info!(%local, public = %origin.origin, data_dir = %config.server.data_dir.display(), "serving");

    let stop = CancellationToken::new();
    let scheduler = tokio::spawn(coolchat::worker::run_scheduler(
        backends.store.clone(),
        backends.queue.clone(),
        Duration::from_millis(config.queue.scheduler_interval_ms),
        stop.clone(),
    ));
    let control = (config.bus.backend == "local").then(|| {
        tokio::spawn(coolchat::worker::run_control_watcher(
            backends.store.clone(),
            backends.bus.clone(),
            Duration::from_millis(config.server.control_poll_ms),
            stop.clone(),
        ))
    });
    tokio::spawn(wait_for_signal(stop.clone()));

    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    coolchat::gateway::serve(listener, svc, stop.clone(), grace).await?;
    stop.cancel();
    let _ = scheduler.await;
    if let Some(control) = control {
        let _ = control.await;
    }
    backends.store.close().await.context("flushing the store")?;
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    stop.cancel();
}

/// Every socket is a file descriptor: lift the soft limit to the hard one.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}
