//! Every thread of pgdual (relay workers, admin API, mirror, rules watcher) runs its own
//! single-threaded tokio runtime, so no job's tasks ever migrate to another's thread.

/// A single-threaded runtime with I/O and timers, or `None` (logged) if the OS refuses one.
pub fn current_thread(what: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the {what} runtime");
            None
        }
    }
}
