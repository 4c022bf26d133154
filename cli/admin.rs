//! `coolchat admin`: clap wiring and output formatting over [`coolchat::admin::AdminService`].
//!
//! Exit codes scripts can rely on: 0 done, 1 failed (or not found), 2 usage (bad arguments,
//! malformed address, bad configuration).

use crate::CommonOpts;
use anyhow::Result;
use clap::{Args, Subcommand};
use coolchat::address::Address;
use coolchat::admin::{AdminService, Notifier};
use coolchat::error::Error;
use coolchat::model;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use time::OffsetDateTime;

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    common: CommonOpts,
    /// Machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Who is acting, recorded in the audit log [default: admin:<user>@<host>].
    #[arg(long, global = true, value_name = "NAME")]
    actor: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Ban an address: refuse sign-in and sends, revoke every session, end live sockets on every node.
    #[command(
        after_help = "Examples:\n  coolchat admin ban 0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B --reason spam --for 7d\n  coolchat admin ban 0xab58…ec9b --until 2027-01-01T00:00:00Z --purge-messages"
    )]
    Ban {
        address: String,
        /// Why (shown in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// End of the ban, RFC 3339.
        #[arg(long, conflicts_with = "for_")]
        until: Option<String>,
        /// Length of the ban, e.g. 7d, 12h, 30m.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// Also tombstone every message the address sent (seq stays gap-free).
        #[arg(long)]
        purge_messages: bool,
    },
    /// Lift a ban.
    #[command(after_help = "Examples:\n  coolchat admin unban 0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B")]
    Unban { address: String },
    /// List bans.
    #[command(after_help = "Examples:\n  coolchat admin bans --json")]
    Bans,
    /// Show the audit log (newest first).
    #[command(after_help = "Examples:\n  coolchat admin audit --limit 20\n  coolchat admin audit --target 0xAb58…")]
    Audit {
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Users: list, show.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Rooms: list, show, remove-member.
    #[command(subcommand)]
    Rooms(RoomsCommand),
    /// Messages: delete.
    #[command(subcommand)]
    Messages(MessagesCommand),
    /// Sessions: revoke.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Counts from the store, plus live figures from the local node's /metrics when it runs.
    #[command(after_help = "Examples:\n  coolchat admin stats\n  coolchat admin stats --json")]
    Stats,
    /// Everything stored about an address, as JSON (data-request tool).
    #[command(
        after_help = "Examples:\n  coolchat admin export 0xAb58… > export.json\n  coolchat admin export 0xAb58… --output export.json"
    )]
    Export {
        address: String,
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Erase a user: messages tombstoned, memberships, sessions, scheduled messages and profile removed.
    #[command(
        after_help = "Examples:\n  coolchat admin delete-user 0xAb58…          (asks for confirmation)\n  coolchat admin delete-user 0xAb58… --yes"
    )]
    DeleteUser {
        address: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
enum UsersCommand {
    /// List users by address.
    #[command(after_help = "Examples:\n  coolchat admin users list --limit 100")]
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this address (paging).
        #[arg(long)]
        after: Option<String>,
    },
    /// Status, rooms, sessions and last seen of one user.
    #[command(after_help = "Examples:\n  coolchat admin users show 0xAb58…")]
    Show { address: String },
}

#[derive(Subcommand, Debug)]
enum RoomsCommand {
    /// List rooms by id.
    #[command(after_help = "Examples:\n  coolchat admin rooms list")]
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        after: Option<String>,
    },
    /// One room with its members.
    #[command(after_help = "Examples:\n  coolchat admin rooms show 01a2…")]
    Show { id: String },
    /// Remove a member from a room (their sockets leave it at once).
    #[command(after_help = "Examples:\n  coolchat admin rooms remove-member 01a2… 0xAb58…")]
    RemoveMember { id: String, address: String },
}

#[derive(Subcommand, Debug)]
enum MessagesCommand {
    /// Tombstone one message (its seq stays; clients get `message:deleted`).
    #[command(after_help = "Examples:\n  coolchat admin messages delete 01a2…")]
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
enum SessionsCommand {
    /// Revoke every session of an address and end its live sockets.
    #[command(after_help = "Examples:\n  coolchat admin sessions revoke 0xAb58…")]
    Revoke { address: String },
}

/// A usage problem (exit 2) as opposed to a failure (exit 1).
struct Usage(String);

fn address(s: &str) -> Result<Address, Usage> {
    s.parse().map_err(|e: Error| Usage(format!("{s}: {e}")))
}

fn parse_until(until: Option<&str>, for_: Option<&str>) -> Result<Option<OffsetDateTime>, Usage> {
    if let Some(u) = until {
        return OffsetDateTime::parse(u, &time::format_description::well_known::Rfc3339)
            .map(Some)
            .map_err(|_| Usage(format!("--until {u}: not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)")));
    }
    if let Some(f) = for_ {
        let d = humantime::parse_duration(f).map_err(|e| Usage(format!("--for {f}: {e} (e.g. 7d, 12h)")))?;
        let d = time::Duration::try_from(d).map_err(|_| Usage(format!("--for {f}: too long")))?;
        return Ok(Some(model::now_ms() + d));
    }
    Ok(None)
}

fn default_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("admin:{user}@{host}")
}

pub async fn run(args: AdminArgs) -> Result<ExitCode> {
    let config = match crate::load_config(&args.common, Default::default()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    coolchat::logging::init("warn", config.server.production);
    let backends = coolchat::backends::open(&config).await?;
    let notifier = if config.bus.backend == "local" {
        Notifier::ControlLog(backends.store.clone())
    } else {
        Notifier::Bus(backends.bus.clone())
    };
    let admin = AdminService::new(
        backends.store.clone(),
        backends.media.clone(),
        notifier,
        args.actor.clone().unwrap_or_else(default_actor),
    );
    let out = Output { json: args.json };
    let result = dispatch(&admin, &config, args.command, &out).await;
    backends.store.close().await?;
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Failure::Usage(Usage(msg))) => {
            eprintln!("error: {msg}");
            Ok(ExitCode::from(2))
        }
        Err(Failure::Error(e)) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

enum Failure {
    Usage(Usage),
    Error(anyhow::Error),
}

impl From<Usage> for Failure {
    fn from(u: Usage) -> Self {
        Failure::Usage(u)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidAddress(_) | Error::InvalidRequest(_) => Failure::Usage(Usage(e.to_string())),
            other => Failure::Error(other.into()),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Error(e)
    }
}

/// Tables for people, JSON for scripts.
struct Output {
    json: bool,
}

impl Output {
    fn json<T: Serialize>(&self, v: &T) -> Result<(), Failure> {
        let text = serde_json::to_string_pretty(v).map_err(|e| Failure::Error(e.into()))?;
        println!("{text}");
        Ok(())
    }

    /// Prints `rows` under `headers`, columns aligned.
    fn table(&self, headers: &[&str], rows: Vec<Vec<String>>) {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: Vec<String>| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
                .collect();
            println!("{}", padded.join("  ").trim_end());
        };
        line(headers.iter().map(|h| h.to_uppercase()).collect());
        let empty = rows.is_empty();
        for row in rows {
            line(row);
        }
        if empty {
            println!("(none)");
        }
    }

    fn fields(&self, pairs: Vec<(&str, String)>) {
        let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in pairs {
            println!("{:<w$}  {}", format!("{k}:"), v, w = w + 1);
        }
    }

    fn progress(&self, what: &'static str) -> ProgressBar {
        if self.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what);
        bar
    }
}

fn time_or_dash(t: Option<OffsetDateTime>) -> String {
    t.map(model::fmt_time).unwrap_or_else(|| "-".into())
}

async fn dispatch(
    admin: &AdminService,
    config: &coolchat::config::Config,
    cmd: AdminCommand,
    out: &Output,
) -> Result<(), Failure> {
    match cmd {
        AdminCommand::Ban {
            address: a,
            reason,
            until,
            for_,
            purge_messages,
        } => {
            let a = address(&a)?;
            let until = parse_until(until.as_deref(), for_.as_deref())?;
            let bar = out.progress("purging messages");
            let progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let report = admin.ban(a, reason, until, purge_messages, &progress).await?;
            bar.finish_and_clear();
            if out.json {
                out.json(&report)?;
            } else {
                println!(
                    "banned {} until {}",
                    a,
                    report
                        .ban
                        .until
                        .map(model::fmt_time)
                        .unwrap_or_else(|| "further notice".into())
                );
                println!("  sessions revoked: {}", report.sessions_revoked);
                println!(
                    "  live sockets told: {}",
                    if report.sockets_notified { "yes" } else { "NO" }
                );
                if purge_messages {
                    println!("  messages tombstoned: {}", report.messages_tombstoned);
                }
            }
            if !report.errors.is_empty() {
                for e in &report.errors {
                    eprintln!("error: {e}");
                }
                return Err(Failure::Error(anyhow::anyhow!(
                    "the ban is in force, but {} step(s) failed (see above)",
                    report.errors.len()
                )));
            }
        }
        AdminCommand::Unban { address: a } => {
            let a = address(&a)?;
            let existed = admin.unban(a).await?;
            if out.json {
                out.json(&serde_json::json!({"address": a, "unbanned": existed}))?;
            } else if existed {
                println!("unbanned {a}");
            } else {
                println!("{a} was not banned");
            }
        }
        AdminCommand::Bans => {
            let bans = admin.bans().await?;
            if out.json {
                return out.json(&bans);
            }
            let now = model::now_ms();
            out.table(
                &["address", "until", "active", "by", "reason"],
                bans.iter()
                    .map(|b| {
                        vec![
                            b.address.to_checksum(),
                            b.until.map(model::fmt_time).unwrap_or_else(|| "forever".into()),
                            if b.active_at(now) { "yes" } else { "no" }.into(),
                            b.banned_by.clone(),
                            b.reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCommand::Audit { target, limit } => {
            let target = target.map(|t| t.parse::<Address>().map(|a| a.to_checksum()).unwrap_or(t));
            let entries = admin.audit_log(target, limit).await?;
            if out.json {
                return out.json(&entries);
            }
            out.table(
                &["at", "actor", "action", "target", "detail"],
                entries
                    .iter()
                    .map(|e| {
                        vec![
                            model::fmt_time(e.at),
                            e.actor.clone(),
                            e.action.clone(),
                            e.target.clone(),
                            e.detail.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCommand::Users(UsersCommand::List { limit, after }) => {
            let after = after.as_deref().map(address).transpose()?;
            let users = admin.users(after, limit).await?;
            if out.json {
                return out.json(&users);
            }
            out.table(
                &["address", "display name", "created", "last seen"],
                users
                    .iter()
                    .map(|u| {
                        vec![
                            u.address.to_checksum(),
                            u.display_name.clone().unwrap_or_default(),
                            model::fmt_time(u.created_at),
                            time_or_dash(u.last_seen_at),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCommand::Users(UsersCommand::Show { address: a }) => {
            let a = address(&a)?;
            let r = admin.user(a).await?;
            if out.json {
                return out.json(&r);
            }
            out.fields(vec![
                ("address", r.user.address.to_checksum()),
                (
                    "display name",
                    r.user.display_name.clone().unwrap_or_else(|| "-".into()),
                ),
                (
                    "status",
                    if r.banned {
                        format!(
                            "BANNED until {}",
                            r.ban
                                .as_ref()
                                .and_then(|b| b.until)
                                .map(model::fmt_time)
                                .unwrap_or_else(|| "further notice".into())
                        )
                    } else {
                        "active".into()
                    },
                ),
                ("created", model::fmt_time(r.user.created_at)),
                ("last seen", time_or_dash(r.user.last_seen_at)),
                ("messages", r.messages.to_string()),
                ("live sessions", format!("{} of {}", r.live_sessions, r.sessions.len())),
                ("rooms", r.rooms.len().to_string()),
            ]);
            println!();
            out.table(
                &["room", "kind", "name", "members", "last seq"],
                r.rooms
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.clone(),
                            m.kind.clone(),
                            m.name.clone().unwrap_or_default(),
                            m.members.to_string(),
                            m.last_seq.to_string(),
                        ]
                    })
                    .collect(),
            );
            println!();
            out.table(
                &["session", "created", "expires", "revoked", "live"],
                r.sessions
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.clone(),
                            model::fmt_time(s.created_at),
                            model::fmt_time(s.expires_at),
                            time_or_dash(s.revoked_at),
                            if s.live { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCommand::Rooms(RoomsCommand::List { limit, after }) => {
            let rooms = admin.rooms(after, limit).await?;
            if out.json {
                return out.json(&rooms);
            }
            out.table(
                &["id", "kind", "name", "members", "last seq", "created"],
                rooms
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.kind.as_str().into(),
                            r.name.clone().unwrap_or_default(),
                            r.members.len().to_string(),
                            r.last_seq.to_string(),
                            model::fmt_time(r.created_at),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCommand::Rooms(RoomsCommand::Show { id }) => {
            let r = admin.room(&id).await?;
            if out.json {
                return out.json(&r);
            }
            out.fields(vec![
                ("id", r.id.clone()),
                ("kind", r.kind.as_str().into()),
                ("name", r.name.clone().unwrap_or_else(|| "-".into())),
                ("created by", r.created_by.to_checksum()),
                ("created", model::fmt_time(r.created_at)),
                ("last seq", r.last_seq.to_string()),
                ("members", r.members.len().to_string()),
            ]);
            for m in &r.members {
                println!("  {m}");
            }
        }
        AdminCommand::Rooms(RoomsCommand::RemoveMember { id, address: a }) => {
            let a = address(&a)?;
            let room = admin.remove_member(&id, a).await?;
            if out.json {
                return out.json(&room);
            }
            println!("removed {a} from room {id} ({} members left)", room.members.len());
        }
        AdminCommand::Messages(MessagesCommand::Delete { id }) => {
            let tomb = admin.delete_message(&id).await?;
            if out.json {
                return out.json(&tomb);
            }
            println!("deleted message {id} (room {}, seq {})", tomb.room_id, tomb.seq);
        }
        AdminCommand::Sessions(SessionsCommand::Revoke { address: a }) => {
            let a = address(&a)?;
            let n = admin.revoke_sessions(a).await?;
            if out.json {
                return out.json(&serde_json::json!({"address": a, "revoked": n}));
            }
            println!("revoked {n} session(s) of {a}; live sockets are being closed");
        }
        AdminCommand::Stats => {
            let stats = admin.stats().await?;
            let live = node_gauges(config).await;
            if out.json {
                return out.json(&serde_json::json!({"store": stats, "node": live}));
            }
            out.fields(vec![
                ("users", stats.users.to_string()),
                ("rooms", stats.rooms.to_string()),
                ("messages", stats.messages.to_string()),
                ("messages last minute", stats.messages_last_minute.to_string()),
                ("scheduled", stats.scheduled.to_string()),
                ("active sessions", stats.active_sessions.to_string()),
                ("bans", stats.bans.to_string()),
                (
                    "storage size",
                    format!("{:.1} MiB", stats.bytes_on_disk as f64 / 1_048_576.0),
                ),
                (
                    "online users",
                    live.as_ref()
                        .and_then(|l| l.get("online_users"))
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "- (no node answering)".into()),
                ),
                (
                    "queue depth",
                    live.as_ref()
                        .and_then(|l| l.get("queue_depth"))
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                ),
                (
                    "sockets",
                    live.as_ref()
                        .and_then(|l| l.get("sockets"))
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                ),
            ]);
        }
        AdminCommand::Export { address: a, output } => {
            let a = address(&a)?;
            let bar = out.progress("exporting messages");
            let progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let export = admin.export(a, &progress).await?;
            bar.finish_and_clear();
            let text = serde_json::to_string_pretty(&export).map_err(|e| Failure::Error(e.into()))?;
            match output {
                Some(path) => {
                    std::fs::write(&path, text)
                        .map_err(|e| Failure::Error(anyhow::anyhow!("writing {}: {e}", path.display())))?;
                    eprintln!(
                        "exported {} messages of {a} to {}",
                        export.messages.len(),
                        path.display()
                    );
                }
                None => println!("{text}"),
            }
        }
        AdminCommand::DeleteUser { address: a, yes } => {
            let a = address(&a)?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(Usage("refusing to erase without confirmation: pass --yes".into()).into());
                }
                eprint!(
                    "Erase {a}: tombstone all their messages and remove their profile, rooms and sessions? Type the address to confirm: "
                );
                let _ = std::io::stderr().flush();
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| Failure::Error(e.into()))?;
                if line.trim().parse::<Address>().ok() != Some(a) {
                    return Err(Failure::Error(anyhow::anyhow!("not confirmed; nothing was changed")));
                }
            }
            let report = admin.delete_user(a).await?;
            if out.json {
                return out.json(&report);
            }
            println!(
                "erased {a}: {} messages tombstoned, {} memberships, {} sessions, {} scheduled messages removed",
                report.messages_tombstoned,
                report.memberships_removed,
                report.sessions_deleted,
                report.scheduled_deleted
            );
        }
    }
    Ok(())
}

/// Live figures from the local node's `/metrics`, if one answers at `server.listen`.
async fn node_gauges(config: &coolchat::config::Config) -> Option<serde_json::Map<String, serde_json::Value>> {
    let base = if config.server.public_url.is_empty() {
        format!("http://{}", config.server.listen)
    } else {
        config.server.public_url.clone()
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .ok()?;
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut map = serde_json::Map::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let key = match name {
            "coolchat_online_users" => "online_users",
            "coolchat_queue_depth" => "queue_depth",
            "coolchat_sockets_connected" => "sockets",
            "process_resident_memory_bytes" => "rss_bytes",
            _ => continue,
        };
        if let Ok(v) = value.parse::<f64>() {
            map.insert(key.into(), serde_json::json!(v as u64));
        }
    }
    Some(map)
}
