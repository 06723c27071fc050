//! `pgdual backfill` and `pgdual verify`: the jobs run from the command line, against the
//! databases and rules of a pgdual config, with a progress bar (or, when standard error is
//! not a terminal, a progress line every few seconds). Ctrl-C stops a backfill at its next
//! checkpoint; running it again resumes there.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use pgdual_config::Config;
use pgdual_rules::RuleSet;
use tokio::sync::watch;

use crate::jobs::backfill::{Backfill, Ended, Progress, Request};
use crate::jobs::table::TablePlan;
use crate::jobs::verify::Verify;
use crate::jobs::{state, JobMetrics};
use crate::net::endpoint::Endpoints;

/// What `pgdual backfill TABLE` does besides running the backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Cancel,
    Status,
}

fn rules(config: &Config) -> anyhow::Result<Arc<RuleSet>> {
    let path = config
        .rules_file
        .as_ref()
        .context("the config names no rules_file: backfill and verify need the table's rule")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("rules_file: cannot read {}", path.display()))?;
    Ok(Arc::new(pgdual_rules::parse_rules(
        &text,
        &path.display().to_string(),
    )?))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs (or controls) the backfill of `table`.
pub fn backfill(
    config: Config,
    table: &str,
    request: Request,
    control: Option<Control>,
) -> anyhow::Result<()> {
    let rules = rules(&config)?;
    let name = TablePlan::rule(&rules, table)?.legacy.to_string();
    let endpoints = Endpoints::from_config(&config)?;
    let rt = runtime()?;
    if let Some(c) = control {
        return rt.block_on(backfill_control(&endpoints, &name, c));
    }
    let options = request
        .options(&config.backfill)
        .map_err(anyhow::Error::msg)?;
    let (stop_tx, stop) = watch::channel(false);
    let progress = Progress::new(&name);
    let job = Backfill {
        table: name.clone(),
        rules,
        endpoints,
        options,
        progress: progress.clone(),
        metrics: JobMetrics::unexported(),
        log_values: config.reads.log_values,
        stop,
    };
    rt.block_on(async move {
        let ticker = tokio::spawn(show_progress(progress.clone()));
        let interrupted = async {
            super::signals::terminated().await;
            eprintln!("pgdual: stopping at the next checkpoint (run again to resume)");
            let _ = stop_tx.send(true);
            std::future::pending::<()>().await
        };
        let outcome = tokio::select! {
            r = job.run() => r,
            _ = interrupted => unreachable!("pending never resolves"),
        };
        ticker.abort();
        let _ = ticker.await;
        let v = progress.view();
        match outcome? {
            Ended::Planned(plan) => println!("{plan}"),
            Ended::Done => println!(
                "backfill of {name} done: {} rows copied in {} chunks, {:.1} s ({:.0} rows/s \
                 this run, {:.1} s of it throttled)",
                v.rows_copied, v.chunks, v.elapsed_seconds, v.rows_per_second, v.throttled_seconds
            ),
            Ended::Stopped(why) => println!(
                "backfill of {name} stopped ({why}) after {} rows; run it again to resume",
                v.rows_copied
            ),
            Ended::Cancelled => println!(
                "backfill of {name} cancelled after {} rows; run it again to resume",
                v.rows_copied
            ),
        }
        Ok(())
    })
}

async fn backfill_control(endpoints: &Endpoints, table: &str, c: Control) -> anyhow::Result<()> {
    let legacy = endpoints
        .legacy
        .client()
        .await
        .map_err(anyhow::Error::msg)?;
    state::install(&legacy).await?;
    let request = match c {
        Control::Status => {
            match state::load(&legacy, table).await? {
                Some(cp) => println!("{}", serde_json::to_string_pretty(&cp)?),
                None => println!("legacy has no backfill of {table} on record"),
            }
            return Ok(());
        }
        Control::Pause => Some("pause"),
        Control::Cancel => Some("cancel"),
        Control::Resume => None,
    };
    anyhow::ensure!(
        state::request(&legacy, table, request).await?,
        "legacy has no backfill of {table} on record"
    );
    println!(
        "{} recorded for the backfill of {table}",
        request.unwrap_or("resume")
    );
    Ok(())
}

/// Draws the progress until aborted.
async fn show_progress(progress: Arc<Progress>) {
    let terminal = std::io::stderr().is_terminal();
    let bar = ProgressBar::new(0);
    if terminal {
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} rows, {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last_line = std::time::Instant::now();
    loop {
        let v = progress.view();
        bar.set_length(v.rows_estimate);
        bar.set_position(v.rows_copied);
        bar.set_message(format!("{} {}", v.table, v.state));
        if !terminal && last_line.elapsed() >= Duration::from_secs(5) {
            last_line = std::time::Instant::now();
            eprintln!(
                "backfill {}: {} {}/{} rows, {:.0} rows/s, chunk {} rows, throttled {:.1} s",
                v.table,
                v.state,
                v.rows_copied,
                v.rows_estimate,
                v.rows_per_second,
                v.chunk_rows,
                v.throttled_seconds
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Verifies (and with `repair`, repairs) `table`; prints the report as text or JSON. Fails
/// (exit status 1) when differences persist.
pub fn verify(
    config: Config,
    table: &str,
    repair: bool,
    chunk_rows: Option<u32>,
    show_values: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let rules = rules(&config)?;
    let mut settings = config.verify.clone();
    if let Some(n) = chunk_rows {
        anyhow::ensure!(n > 0, "--chunk-rows: must be at least 1");
        settings.chunk_rows = n;
    }
    let job = Verify {
        table: table.to_string(),
        rules,
        endpoints: Endpoints::from_config(&config)?,
        settings,
        repair,
        show_values,
        metrics: JobMetrics::unexported(),
    };
    let report = runtime()?.block_on(job.run())?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    let left = report
        .after_repair
        .unwrap_or(report.differing + report.missing_in_new + report.extra_in_new);
    anyhow::ensure!(
        left == 0,
        "{left} row(s) differ between legacy and new{}",
        if repair {
            " after repair"
        } else {
            " (--repair fixes them)"
        }
    );
    Ok(())
}
