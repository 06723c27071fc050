//! Idle protocol connections, pooled per worker thread: pgdual runs one current-thread
//! runtime per worker, and a socket must stay on the runtime that opened it.

use std::cell::RefCell;

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

/// This thread's idle connections to one target.
struct Idle {
    user: String,
    host: String,
    port: u16,
    dbname: String,
    conns: Vec<BackendConn>,
}

impl Idle {
    /// Whether connections to `target` are these (compared field by field: checkouts and
    /// checkins are on every read's path, so no key is built).
    fn serves(&self, target: &Target) -> bool {
        self.port == target.port
            && self.host == target.host
            && self.user == target.user
            && self.dbname == target.dbname
    }
}

thread_local! {
    /// Idle connections of this worker thread, by target (a handful at most).
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's idle connections to `target` (created empty if need be).
fn with_idle<T>(target: &Target, f: impl FnOnce(&mut Vec<BackendConn>) -> T) -> Option<T> {
    IDLE.try_with(|p| {
        let mut pool = p.borrow_mut();
        let at = match pool.iter().position(|i| i.serves(target)) {
            Some(at) => at,
            None => {
                pool.push(Idle {
                    user: target.user.clone(),
                    host: target.host.clone(),
                    port: target.port,
                    dbname: target.dbname.clone(),
                    conns: Vec::new(),
                });
                pool.len() - 1
            }
        };
        f(&mut pool[at].conns)
    })
    .ok()
}

/// An idle connection to `target` from this thread's pool (the most recently used one that is
/// still open), or a new one.
pub async fn checkout(target: &Target) -> Result<BackendConn, BackendError> {
    loop {
        match with_idle(target, Vec::pop).flatten() {
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
    with_idle(target, move |idle| {
        if idle.len() < MAX_IDLE_PER_KEY {
            idle.push(conn);
        }
    });
}

/// Keeps at least `min` idle connections to `target` in this thread's pool, off any
/// client's path: drops the idle ones the server has closed or written to, then opens the
/// missing ones. Returns how many it opened, or the first connect's error.
pub async fn keep_idle(target: &Target, min: usize) -> Result<usize, BackendError> {
    with_idle(target, |idle| idle.retain(BackendConn::still_usable));
    let missing = min.min(MAX_IDLE_PER_KEY).saturating_sub(idle_count(target));
    for _ in 0..missing {
        checkin(target, target.connect().await?);
    }
    Ok(missing)
}

/// Idle connections to `target` in this thread's pool.
pub fn idle_count(target: &Target) -> usize {
    with_idle(target, |idle| idle.len()).unwrap_or(0)
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
