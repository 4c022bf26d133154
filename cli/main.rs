//! The `coolchat` binary: clap wiring over the library. No logic lives here beyond turning
//! command-line input into library calls and library errors into exit codes (0 ok, 1 error,
//! 2 usage or configuration).

mod admin;
mod bench;
mod serve;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// CoolChat: a self-hosted, real-time chat node (Socket.IO + REST, Sign-In with Ethereum).
#[derive(Parser)]
#[command(name = "coolchat", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand shares: where the configuration and data live.
#[derive(Args, Clone, Debug)]
pub struct CommonOpts {
    /// TOML configuration file (see examples/config.toml). Environment variables
    /// COOLCHAT__SECTION__KEY override it.
    #[arg(long, short = 'c', value_name = "FILE", env = "COOLCHAT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of the embedded store and local media [default: ./coolchat-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: REST + Socket.IO on one port.
    #[command(
        after_help = "Examples:\n  coolchat serve\n  coolchat serve --listen 0.0.0.0:8080 --public-url https://chat.example.com\n  coolchat serve --config /etc/coolchat/config.toml\n  COOLCHAT__LIMITS__MAX_BODY_BYTES=4096 coolchat serve"
    )]
    Serve(serve::ServeArgs),
    /// Run the message-processing worker (needs a broker backend; embedded mode runs it inside `serve`).
    #[command(after_help = "Examples:\n  coolchat worker --config /etc/coolchat/config.toml")]
    Worker(CommonOpts),
    /// Create or upgrade everything the configured backends need. Idempotent.
    #[command(after_help = "Examples:\n  coolchat migrate\n  coolchat migrate --data-dir /var/lib/coolchat")]
    Migrate(CommonOpts),
    /// Operator tasks: bans, sessions, users, rooms, messages, stats, export, erasure.
    #[command(
        after_help = "Works with or without a running node (same --config/--data-dir as serve).\n\nExamples:\n  coolchat admin ban 0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B --reason spam --for 7d\n  coolchat admin users show 0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B\n  coolchat admin stats --json"
    )]
    Admin(admin::AdminArgs),
    /// Load generator: real SIWE logins and Socket.IO clients against a running node.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: Result<ExitCode> = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Migrate(opts) => migrate(opts).await,
            Command::Worker(opts) => worker(opts).await,
            Command::Admin(args) => admin::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads the configuration for a subcommand, exiting 2 with the offending key on failure.
pub fn load_config(
    opts: &CommonOpts,
    overrides: coolchat::config::Overrides,
) -> std::result::Result<coolchat::config::Config, ExitCode> {
    let overrides = coolchat::config::Overrides {
        data_dir: opts.data_dir.clone().or(overrides.data_dir),
        ..overrides
    };
    coolchat::config::Config::load(opts.config.as_deref(), &overrides).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn migrate(opts: CommonOpts) -> Result<ExitCode> {
    let config = match load_config(&opts, Default::default()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    coolchat::logging::init(&config.server.log_level, config.server.production);
    let backends = coolchat::backends::open(&config).await?;
    backends.store.migrate().await?;
    println!("migrated: storage {}", backends.store.describe());
    backends.store.close().await?;
    Ok(ExitCode::SUCCESS)
}

async fn worker(opts: CommonOpts) -> Result<ExitCode> {
    let config = match load_config(&opts, Default::default()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    // Validation admits only the in-process queue today; a broker backend (RabbitMQ) brings the
    // consumer loop here: the same `worker::Processor` and `run_scheduler` that `serve` runs.
    eprintln!(
        "error: queue.backend is `{}`: the worker runs inside `coolchat serve` in embedded mode.\n\
         A separate worker needs a broker backend (queue.backend = \"rabbitmq\"), which this release does not include yet.",
        config.queue.backend
    );
    Ok(ExitCode::from(2))
}
