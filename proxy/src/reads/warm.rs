//! The warm pool: while some table's reads are routed to new, each worker keeps
//! `reads.pool_min_idle` connections to new open and checked, so no read opens one (a fork
//! on new) on the client's path. A connection new closed is replaced at the next check; a
//! new that cannot be reached is left alone until `reads.retry_after_ms` has passed.

use std::sync::Arc;
use std::time::Duration;

use pgdual_rules::ruleset::TargetDatabase;
use pgdual_rules::{ReadMode, RuleSet};
use tokio::sync::watch;
use tracing::debug;

use super::Reads;
use crate::control::rules_store::RulesStore;
use crate::net::pool;

/// How often a worker checks its pool.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Whether any table's reads may go to (or be shadowed on) the new database.
fn routes_to_new(rules: &RuleSet) -> bool {
    rules
        .tables()
        .iter()
        .any(|t| t.read != ReadMode::Legacy && t.database == TargetDatabase::New)
}

/// Runs on each worker's runtime until `stop`: keeps this worker's pool of connections to
/// new at its floor.
pub async fn keep_warm(reads: Arc<Reads>, rules: Arc<RulesStore>, mut stop: watch::Receiver<bool>) {
    let min = reads.settings.pool_min_idle;
    let Some(target) = reads.targets.new.as_ref().filter(|_| min > 0) else {
        return;
    };
    loop {
        if routes_to_new(&rules.load().rules) && !reads.health.is_down() {
            match pool::keep_idle(target, min).await {
                Ok(0) => {}
                Ok(opened) => debug!(opened, "connections to new opened ahead of reads"),
                Err(e) => {
                    let retry_after = Duration::from_millis(reads.settings.retry_after_ms);
                    reads.health.failed(retry_after);
                    debug!(error = %e, "cannot keep connections to new open");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
