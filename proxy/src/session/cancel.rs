//! Cancel keys. A session's BackendKeyData keeps legacy's process ID (so `pg_backend_pid()`,
//! `PQbackendPID` and the PID in NotificationResponse agree with what the client was told)
//! and carries a secret of pgdual's own, of the length legacy used (4 bytes in protocol 3.0,
//! up to 256 in 3.2). A CancelRequest therefore comes to pgdual, which finds legacy's secret
//! by (process ID, pgdual's secret) and forwards it; a wrong secret is dropped silently, as
//! PostgreSQL does. Legacy's secret never reaches the client.

use dashmap::DashMap;
use ring::rand::{SecureRandom, SystemRandom};

/// The key a client was given: legacy's process ID and pgdual's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub pid: i32,
    pub secret: Box<[u8]>,
}

struct Entry {
    secret: Box<[u8]>,
    legacy_secret: Box<[u8]>,
}

/// Live sessions' keys, by legacy's process ID (unique among legacy's live backends).
pub struct CancelKeys {
    map: DashMap<i32, Entry>,
    rng: SystemRandom,
}

impl Default for CancelKeys {
    fn default() -> Self {
        CancelKeys {
            map: DashMap::new(),
            rng: SystemRandom::new(),
        }
    }
}

impl CancelKeys {
    /// Records legacy's key for a session and returns the one its client gets: the same
    /// process ID and a fresh secret of the same length. A stale entry for the same process
    /// ID (a backend that ended and whose ID legacy reused) is replaced.
    pub fn register(&self, legacy_pid: i32, legacy_secret: &[u8]) -> ClientKey {
        let mut secret = vec![0u8; legacy_secret.len()].into_boxed_slice();
        if self.rng.fill(&mut secret).is_err() {
            // The OS random source failing is not recoverable in any useful way; fall back to
            // a time-derived value rather than refusing the session.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                .to_le_bytes();
            for (b, n) in secret.iter_mut().zip(nanos.iter().cycle()) {
                *b = *n;
            }
        }
        self.map.insert(
            legacy_pid,
            Entry {
                secret: secret.clone(),
                legacy_secret: legacy_secret.into(),
            },
        );
        ClientKey {
            pid: legacy_pid,
            secret,
        }
    }

    /// Legacy's secret for a CancelRequest carrying `pid` and pgdual's `secret`.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<Box<[u8]>> {
        let e = self.map.get(&pid)?;
        constant_time_eq(&e.secret, secret).then(|| e.legacy_secret.clone())
    }

    /// Forgets a session's key (only if it is still that session's).
    pub fn remove(&self, key: &ClientKey) {
        self.map
            .remove_if(&key.pid, |_, e| constant_time_eq(&e.secret, &key.secret));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Compares secrets without an early exit, so timing does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_pid_and_resolve_only_with_the_right_secret() {
        let keys = CancelKeys::default();
        let a = keys.register(4242, &[9, 9, 9, 9]);
        let b = keys.register(4343, &[7, 7, 7, 7]);
        assert_eq!((a.pid, b.pid), (4242, 4343));
        assert_eq!(a.secret.len(), 4);
        assert_eq!(keys.lookup(a.pid, &a.secret), Some(vec![9, 9, 9, 9].into()));
        let mut wrong = a.secret.to_vec();
        wrong[0] ^= 1;
        assert_eq!(keys.lookup(a.pid, &wrong), None);
        assert_eq!(
            keys.lookup(a.pid, &[9, 9, 9, 9]),
            None,
            "legacy's own secret"
        );
        assert_eq!(keys.lookup(a.pid, &a.secret[..3]), None);
        keys.remove(&a);
        assert_eq!(keys.lookup(a.pid, &a.secret), None);
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn protocol_3_2_secrets_keep_their_length() {
        let keys = CancelKeys::default();
        let legacy: Vec<u8> = (0..32).collect();
        let k = keys.register(7, &legacy);
        assert_eq!(k.secret.len(), 32);
        assert_ne!(&k.secret[..], &legacy[..]);
        assert_eq!(keys.lookup(7, &k.secret).as_deref(), Some(&legacy[..]));
    }

    #[test]
    fn a_reused_pid_replaces_the_stale_key_and_the_old_session_cannot_remove_it() {
        let keys = CancelKeys::default();
        let old = keys.register(99, &[1, 1, 1, 1]);
        let new = keys.register(99, &[2, 2, 2, 2]);
        keys.remove(&old);
        assert_eq!(keys.lookup(99, &new.secret), Some(vec![2, 2, 2, 2].into()));
    }
}
