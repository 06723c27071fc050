//! Idle protocol connections, pooled per worker thread: pgdual runs one current-thread
//! runtime per worker, and a socket must stay on the runtime that opened it.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::net::conn::{BackendConn, BackendError, Target};

/// Idle connections kept per target and worker thread: enough for the busy sessions of one
/// worker each to find one, so a burst of reads does not open and close connections (a
/// process fork on the server each time).
pub const MAX_IDLE_PER_KEY: usize = 32;

impl Target {
    /// `user@host:port/dbname`: connections with equal keys are interchangeable.
    pub fn key(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// Opens a new connection (not from the pool).
    pub async fn connect(&self) -> Result<BackendConn, BackendError> {
        BackendConn::connect_to(self).await
    }
}

thread_local! {
    /// Idle connections of this worker thread, by [`Target::key`].
    static IDLE: RefCell<HashMap<String, Vec<BackendConn>>> = RefCell::new(HashMap::new());
}

/// An idle connection to `target` from this thread's pool (the most recently used one that is
/// still open), or a new one.
pub async fn checkout(target: &Target) -> Result<BackendConn, BackendError> {
    let key = target.key();
    loop {
        let idle = IDLE
            .try_with(|p| p.borrow_mut().get_mut(&key).and_then(Vec::pop))
            .ok()
            .flatten();
        match idle {
            Some(conn) if conn.still_usable() => return Ok(conn),
            Some(_) => continue,
            None => return target.connect().await,
        }
    }
}

/// Returns a connection to this thread's pool; a broken one, one left in a transaction, or
/// one over [`MAX_IDLE_PER_KEY`] is closed instead.
pub fn checkin(target: &Target, conn: BackendConn) {
    if !conn.reusable() {
        return;
    }
    let key = target.key();
    let _ = IDLE.try_with(move |p| {
        let mut pool = p.borrow_mut();
        let idle = pool.entry(key).or_default();
        if idle.len() < MAX_IDLE_PER_KEY {
            idle.push(conn);
        }
    });
}

/// Keeps at least `min` idle connections to `target` in this thread's pool, off any
/// client's path: drops the idle ones the server has closed or written to, then opens the
/// missing ones. Returns how many it opened, or the first connect's error.
pub async fn keep_idle(target: &Target, min: usize) -> Result<usize, BackendError> {
    let key = target.key();
    let _ = IDLE.try_with(|p| {
        if let Some(idle) = p.borrow_mut().get_mut(&key) {
            idle.retain(BackendConn::still_usable);
        }
    });
    let missing = min.min(MAX_IDLE_PER_KEY).saturating_sub(idle_count(target));
    for _ in 0..missing {
        checkin(target, target.connect().await?);
    }
    Ok(missing)
}

/// Idle connections to `target` in this thread's pool.
pub fn idle_count(target: &Target) -> usize {
    IDLE.try_with(|p| p.borrow().get(&target.key()).map_or(0, Vec::len))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::net::tls::TlsTarget;

    #[test]
    fn target_debug_hides_password() {
        let t = Target {
            host: "h".into(),
            port: 1,
            user: "u".into(),
            password: Some("secret".into()),
            dbname: "d".into(),
            tls: TlsTarget::disabled(),
            tls_config: None,
            connect_timeout: Duration::from_secs(1),
        };
        assert!(!format!("{t:?}").contains("secret"));
        assert_eq!(t.key(), "u@h:1/d");
    }
}
