//! The `pgdual` command line: `serve`, `config check`, `rules check`, `flags`, `backfill`,
//! `verify`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pgdual::Proxy;
use pgdual_config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "pgdual",
    version,
    about = "PostgreSQL proxy for expand-and-contract schema migrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Work with rules files.
    Rules {
        #[command(subcommand)]
        command: RulesCmd,
    },
    /// Show or change per-table modes on a running pgdual, through its admin API.
    Flags {
        /// Admin API address (default: admin.listen from the config, or 127.0.0.1:9187).
        #[arg(long, global = true)]
        admin: Option<String>,
        /// Bearer token when the admin API requires one.
        #[arg(
            long,
            global = true,
            env = "PGDUAL_ADMIN_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        /// pgdual config to take the admin address from.
        #[arg(long, short, global = true, env = "PGDUAL_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: FlagsCmd,
    },
    /// Copy the rows a table held before its dual-write began, in resumable chunks.
    Backfill(BackfillArgs),
    /// Compare a table in legacy and new (as the rules map it); repair what differs.
    Verify(VerifyArgs),
    /// Logical capture's slot in legacy: its state, or drop it (and the publication).
    Capture {
        #[command(subcommand)]
        command: CaptureCmd,
    },
    /// Start throwaway legacy and new PostgreSQL servers and pgdual with dual-write on.
    Demo {
        /// Address for the proxy (default 127.0.0.1:6432, or a free port if taken).
        #[arg(long)]
        listen: Option<String>,
        /// Run the sample workload and exit instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config file (with PGDUAL_* overrides) and list every problem.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Validate a rules file, then check it against the catalogs of the configured legacy
    /// and new databases and the grants pgdual's roles hold there; list every problem and
    /// every missing grant.
    Check {
        file: PathBuf,
        /// pgdual config naming the databases (legacy.user, [new], ...).
        #[arg(long, short, env = "PGDUAL_CONFIG")]
        config: Option<PathBuf>,
        /// Only validate the file; do not connect to any database.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Subcommand)]
enum CaptureCmd {
    /// The slot's state (retained WAL, lag, who streams from it) and the tables whose
    /// capture had a gap.
    Status {
        /// pgdual config naming legacy and [mirror] slot and publication.
        #[arg(long, short, env = "PGDUAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Drop the slot and the publication, so legacy retains no WAL for pgdual. Refused
    /// while a pgdual streams from the slot, unless --force (which ends that stream; a
    /// running pgdual then makes the slot again).
    Drop {
        #[arg(long, short, env = "PGDUAL_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum FlagsCmd {
    /// Rules version, each table's modes, and the mirror's state.
    Status,
    /// Set a table's write or read mode: `pgdual flags set public.users write on`,
    /// `pgdual flags set public.users read shadow 10` (mode and percentage).
    Set {
        /// Legacy table, schema-qualified.
        table: String,
        /// `write` or `read`.
        flag: String,
        /// write: `on` or `off`; read: `legacy`, `shadow` or `new`.
        value: String,
        /// read only: the share of reads (0-100) taking the mode; the file's value if left out.
        percent: Option<u8>,
    },
}

#[derive(Args)]
struct BackfillArgs {
    /// Legacy table, as the rules name it (`public.users`).
    table: String,
    /// pgdual config naming the databases and the rules file.
    #[arg(long, short, env = "PGDUAL_CONFIG")]
    config: Option<PathBuf>,
    /// Rows per chunk (default: sized to --target-chunk-ms).
    #[arg(long, conflicts_with = "target_chunk_ms")]
    batch_size: Option<u32>,
    /// Size chunks to take about this long (default backfill.target_chunk_ms, 500).
    #[arg(long)]
    target_chunk_ms: Option<u64>,
    /// Chunks copied at once (default backfill.concurrency, 2).
    #[arg(long)]
    concurrency: Option<usize>,
    /// At most this many rows per second.
    #[arg(long)]
    rate: Option<u64>,
    /// Stop cleanly at a checkpoint after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    max_runtime: Option<u64>,
    /// Print the plan; copy and record nothing.
    #[arg(long)]
    dry_run: bool,
    /// Start again from the lowest key instead of resuming.
    #[arg(long)]
    restart: bool,
    /// Ask the running backfill (anywhere) to pause before its next chunk.
    #[arg(long, group = "control")]
    pause: bool,
    /// Let a paused backfill go on.
    #[arg(long, group = "control")]
    resume: bool,
    /// Ask the running backfill to stop at its next checkpoint (a later run resumes).
    #[arg(long, group = "control")]
    cancel: bool,
    /// Print the backfill's checkpoint as legacy keeps it.
    #[arg(long, group = "control")]
    status: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// Legacy table, as the rules name it (`public.users`).
    table: String,
    /// pgdual config naming the databases and the rules file.
    #[arg(long, short, env = "PGDUAL_CONFIG")]
    config: Option<PathBuf>,
    /// Copy the rows that differ again from legacy (as the mirror does), then look again.
    #[arg(long)]
    repair: bool,
    /// Legacy rows per compared chunk (default verify.chunk_rows, 10000).
    #[arg(long)]
    chunk_rows: Option<u32>,
    /// Show the differing columns' values in the report.
    #[arg(long)]
    show_values: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; settings not in it keep their defaults.
    #[arg(long, short, env = "PGDUAL_CONFIG")]
    config: Option<PathBuf>,
    /// Client listen address (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Legacy host or Unix socket directory (overrides `legacy.host`).
    #[arg(long)]
    legacy_host: Option<String>,
    /// Legacy port (overrides `legacy.port`).
    #[arg(long)]
    legacy_port: Option<String>,
    /// Admin API address, "" to disable (overrides `admin.listen`).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Log filter such as info or pgdual=debug (overrides `log.level`).
    #[arg(long)]
    log_level: Option<String>,
    /// text or json (overrides `log.format`).
    #[arg(long)]
    log_format: Option<String>,
}

/// File, then `PGDUAL_*` environment, then flags; every problem listed at once.
fn load(path: Option<&PathBuf>, flags: &[(&str, Option<&String>)]) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let mut problems = config.apply_env(std::env::vars());
    for (field, value) in flags {
        if let Some(v) = value {
            if let Err(mut p) = config.set(field, v) {
                p.field = format!("{} (from --{})", p.field, field.replace(['.', '_'], "-"));
                problems.push(p);
            }
        }
    }
    problems.extend(config.problems());
    let origin = path.map_or("configuration".to_string(), |p| p.display().to_string());
    if !problems.is_empty() {
        return Err(pgdual_config::ConfigError::Invalid { origin, problems }.into());
    }
    Ok(config)
}

/// The filter pgdual logs with, from `log.level`. A bare level (`debug`, `trace`) applies to
/// pgdual's own crates only; every other crate stays at `info` unless a directive names it
/// (`debug,tokio_postgres=debug`). Dependencies cannot redact: sqlparser logs each statement
/// it parses with its literals, and tokio-postgres each query with its parameters, at debug.
fn log_filter(level: &str) -> String {
    const OWN: &str = "pgdual"; // a target prefix: also pgdual_rules, pgdual_config
    let directives = split_directives(level);
    // A directive for `pgdual` itself is the user's choice; narrower ones (`pgdual::mirror`)
    // win over ours anyway, being more specific.
    let names_own = directives.iter().any(|d| {
        d.split(['=', '['])
            .next()
            .is_some_and(|t| t.trim() == OWN && d.contains('='))
    });
    let mut out = Vec::new();
    for d in directives {
        let bare = d.trim();
        let verbose = ["debug", "trace"]
            .iter()
            .any(|l| bare.eq_ignore_ascii_case(l));
        if verbose {
            out.push("info".to_string());
            if !names_own {
                out.push(format!("{OWN}={bare}"));
            }
        } else {
            out.push(d.to_string());
        }
    }
    out.join(",")
}

/// Splits a filter at the commas between directives, not those inside a span's `[{...}]`.
fn split_directives(filter: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in filter.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth <= 0 => {
                parts.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&filter[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(level))
        .with_context(|| format!("log.level: invalid filter {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load(
        args.config.as_ref(),
        &[
            ("listen", args.listen.as_ref()),
            ("legacy.host", args.legacy_host.as_ref()),
            ("legacy.port", args.legacy_port.as_ref()),
            ("admin.listen", args.admin_listen.as_ref()),
            ("log.level", args.log_level.as_ref()),
            ("log.format", args.log_format.as_ref()),
        ],
    )?;
    init_logging(&config.log.level, config.log.format)?;
    let drain = Duration::from_millis(config.limits.drain_timeout_ms);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut handlers = {
        let _in_runtime = rt.enter();
        pgdual::cli::signals::Handlers::install()
    };
    let proxy = Proxy::start(config)?;
    rt.block_on(async {
        let rules = proxy.rules().clone();
        let hangup = handlers.hangup.take();
        let mut term = handlers.take_term();
        let reload = async move {
            let Some(mut hup) = hangup else {
                return std::future::pending().await;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the rules file");
                rules.reload_file().await;
            }
        };
        tokio::select! {
            _ = pgdual::cli::signals::Handlers::terminated(&mut term) => {}
            _ = reload => {}
        }
    });
    tracing::info!("shutdown requested");
    proxy.shutdown(drain);
    Ok(())
}

/// Validates a config file, reads the password files it names and, when it names one, its
/// rules file (offline).
fn config_check(file: &PathBuf) -> anyhow::Result<()> {
    let mut config = load(Some(file), &[])?;
    for warning in config.read_password_files(&file.display().to_string())? {
        eprintln!("pgdual: warning: {warning}");
    }
    if let Some(rules) = &config.rules_file {
        let text = std::fs::read_to_string(rules)
            .with_context(|| format!("rules_file: cannot read {}", rules.display()))?;
        pgdual_rules::parse_rules(&text, &rules.display().to_string())?;
    }
    println!("{}: ok", file.display());
    Ok(())
}

fn rules_check(file: &PathBuf, config: Option<&PathBuf>, offline: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read rules file {}", file.display()))?;
    let origin = file.display().to_string();
    let rules = pgdual_rules::parse_rules(&text, &origin)?;
    if offline {
        println!(
            "{origin}: ok ({} tables, not checked against databases)",
            rules.tables().len()
        );
        return Ok(());
    }
    let config = load(config, &[])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (legacy, new) = pgdual::net::endpoint::Endpoints::from_config(&config)?
            .clients()
            .await
            .map_err(anyhow::Error::msg)?;
        let problems = pgdual::control::catalog::check(&rules, &legacy, new.as_ref()).await;
        let missing = pgdual::control::grants::missing(&rules, &legacy, new.as_ref())
            .await
            .context("cannot look up the grants of pgdual's roles")?;
        let capture = pgdual::capture::method::choose(&legacy, &rules, &config.mirror)
            .await
            .context("cannot tell which capture method legacy allows")?;
        let mut report = Vec::new();
        let capture_line = match capture {
            Ok(choice) => format!("capture: {} ({})", choice.method, choice.reason),
            Err(obstacles) => {
                report.push(format!(
                    "capture cannot run as configured:\n{}",
                    obstacles
                        .iter()
                        .map(|o| format!("  - {o}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
                String::new()
            }
        };
        if !problems.is_empty() {
            report.push(
                pgdual_rules::RulesError::Invalid {
                    origin: origin.clone(),
                    problems,
                }
                .to_string(),
            );
        }
        if !missing.is_empty() {
            let lines: Vec<String> = missing.iter().map(|m| format!("  - {m}")).collect();
            report.push(format!(
                "{} missing grant(s) for pgdual's roles:\n{}",
                missing.len(),
                lines.join("\n")
            ));
        }
        if !report.is_empty() {
            anyhow::bail!("{}", report.join("\n"));
        }
        println!(
            "{origin}: ok ({} tables, checked against legacy{})",
            rules.tables().len(),
            if new.is_some() { " and new" } else { "" }
        );
        println!("{capture_line}");
        Ok(())
    })
}

fn capture(command: CaptureCmd) -> anyhow::Result<()> {
    let (CaptureCmd::Status { config } | CaptureCmd::Drop { config, .. }) = &command;
    let config = load(config.as_ref(), &[])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let legacy = pgdual::net::endpoint::Endpoint::legacy(&config.legacy)?
            .client()
            .await
            .map_err(anyhow::Error::msg)?;
        let m = &config.mirror;
        match command {
            CaptureCmd::Status { .. } => {
                match pgdual::capture::method::slot(&legacy, &m.slot).await? {
                    None => println!("slot {}: none (no logical capture here)", m.slot),
                    Some(s) => println!(
                        "slot {}: {} (retains {} bytes of WAL, {} bytes behind legacy){}",
                        m.slot,
                        if s.wal_status.is_empty() {
                            "?"
                        } else {
                            &s.wal_status
                        },
                        s.retained_bytes,
                        s.behind_bytes,
                        s.active_pid
                            .map(|p| format!(", streamed by process {p}"))
                            .unwrap_or_default()
                    ),
                }
                for (table, why) in pgdual::capture::method::gaps(&legacy).await? {
                    println!("needs a backfill and a verify: {table} ({why})");
                }
                Ok(())
            }
            CaptureCmd::Drop { force, .. } => {
                let dropped =
                    pgdual::capture::method::drop_capture(&legacy, &m.slot, &m.publication, force)
                        .await?;
                if dropped {
                    println!(
                        "dropped slot {} and publication {}: legacy retains no WAL for pgdual",
                        m.slot, m.publication
                    );
                } else {
                    println!(
                        "no slot {} (publication {} dropped if it existed)",
                        m.slot, m.publication
                    );
                }
                Ok(())
            }
        }
    })
}

fn flags(
    admin: Option<String>,
    token: Option<String>,
    config: Option<PathBuf>,
    command: FlagsCmd,
) -> anyhow::Result<()> {
    let addr = match admin {
        Some(a) => a,
        None => load(config.as_ref(), &[])?.admin.listen,
    };
    anyhow::ensure!(
        !addr.is_empty(),
        "the admin API is disabled (admin.listen = \"\")"
    );
    let token = token.as_deref();
    match command {
        FlagsCmd::Status => pgdual::cli::admin_client::print_status(&addr, token),
        FlagsCmd::Set {
            table,
            flag,
            value,
            percent,
        } => match flag.as_str() {
            "write" => {
                anyhow::ensure!(percent.is_none(), "write takes no percentage");
                pgdual::cli::admin_client::set_write(&addr, token, &table, &value)
            }
            "read" => pgdual::cli::admin_client::set_read(&addr, token, &table, &value, percent),
            _ => anyhow::bail!("unknown flag {flag:?}: `write` or `read`"),
        },
    }
}

fn backfill(args: BackfillArgs) -> anyhow::Result<()> {
    use pgdual::cli::jobs::Control;
    let config = load(args.config.as_ref(), &[])?;
    init_logging(&config.log.level, config.log.format)?;
    let control = [
        (args.pause, Control::Pause),
        (args.resume, Control::Resume),
        (args.cancel, Control::Cancel),
        (args.status, Control::Status),
    ]
    .into_iter()
    .find_map(|(set, c)| set.then_some(c));
    let request = pgdual::jobs::backfill::Request {
        batch_size: args.batch_size,
        target_chunk_ms: args.target_chunk_ms,
        concurrency: args.concurrency,
        rate: args.rate,
        max_runtime_s: args.max_runtime,
        restart: args.restart,
        dry_run: args.dry_run,
    };
    pgdual::cli::jobs::backfill(config, &args.table, request, control)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::Config {
            command: ConfigCmd::Check { file },
        } => config_check(&file),
        Cmd::Capture { command } => capture(command),
        Cmd::Rules {
            command:
                RulesCmd::Check {
                    file,
                    config,
                    offline,
                },
        } => rules_check(&file, config.as_ref(), offline),
        Cmd::Flags {
            admin,
            token,
            config,
            command,
        } => flags(admin, token, config, command),
        Cmd::Backfill(args) => backfill(args),
        Cmd::Verify(args) => load(args.config.as_ref(), &[]).and_then(|config| {
            init_logging(&config.log.level, config.log.format)?;
            pgdual::cli::jobs::verify(
                config,
                &args.table,
                args.repair,
                args.chunk_rows,
                args.show_values,
                args.json,
            )
        }),
        Cmd::Demo { listen, once } => {
            let _ = init_logging("warn", LogFormat::Text);
            pgdual::cli::demo::run(pgdual::cli::demo::DemoOptions { listen, once })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgdual: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn a_bare_verbose_level_is_pgdual_s_alone() {
        for (given, used) in [
            ("info", "info"),
            ("warn", "warn"),
            ("debug", "info,pgdual=debug"),
            ("TRACE", "info,pgdual=TRACE"),
            // Named crates are honoured, own and others.
            (
                "debug,tokio_postgres=debug",
                "info,pgdual=debug,tokio_postgres=debug",
            ),
            (
                "pgdual::mirror=trace,debug",
                "pgdual::mirror=trace,info,pgdual=debug",
            ),
            ("pgdual=info,debug", "pgdual=info,info"),
            ("sqlparser=trace", "sqlparser=trace"),
            ("info,[conn{peer=a,b}]=debug", "info,[conn{peer=a,b}]=debug"),
        ] {
            assert_eq!(log_filter(given), used, "{given}");
        }
    }
}
