//! Cancel keys. Each session gets pgdual's own BackendKeyData (process id and secret), so a
//! client's CancelRequest comes to pgdual, which looks up legacy's real key and forwards it.
//! A CancelRequest with a wrong secret is dropped silently, as PostgreSQL does.

use dashmap::DashMap;
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyKey {
    pub pid: i32,
    pub secret: [u8; 4],
}

struct Entry {
    secret: [u8; 4],
    legacy: Option<(i32, Box<[u8]>)>,
}

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
    /// A fresh key, unique among live sessions.
    pub fn register(&self) -> ProxyKey {
        loop {
            let mut raw = [0u8; 8];
            if self.rng.fill(&mut raw).is_err() {
                // The OS random source failing is not recoverable in any useful way; fall
                // back to a time-derived value rather than refusing the session.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                raw = nanos.to_le_bytes();
            }
            let pid = i32::from_be_bytes([raw[0] & 0x7f, raw[1], raw[2], raw[3]]).max(1);
            let secret = [raw[4], raw[5], raw[6], raw[7]];
            if let dashmap::mapref::entry::Entry::Vacant(v) = self.map.entry(pid) {
                v.insert(Entry {
                    secret,
                    legacy: None,
                });
                return ProxyKey { pid, secret };
            }
        }
    }

    /// Records legacy's key for the session holding `key`.
    pub fn set_legacy(&self, key: ProxyKey, legacy_pid: i32, legacy_secret: &[u8]) {
        if let Some(mut e) = self.map.get_mut(&key.pid) {
            e.legacy = Some((legacy_pid, legacy_secret.into()));
        }
    }

    /// Legacy's key for a CancelRequest carrying pgdual's `pid` and `secret`.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<(i32, Box<[u8]>)> {
        let e = self.map.get(&pid)?;
        if e.secret[..] != *secret {
            return None;
        }
        e.legacy.clone()
    }

    pub fn remove(&self, key: ProxyKey) {
        self.map.remove(&key.pid);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_resolve_only_with_the_right_secret() {
        let keys = CancelKeys::default();
        let a = keys.register();
        let b = keys.register();
        assert_ne!(a.pid, b.pid);
        assert!(a.pid > 0);
        assert_eq!(keys.lookup(a.pid, &a.secret), None, "no legacy key yet");
        keys.set_legacy(a, 4242, &[9, 9, 9, 9]);
        assert_eq!(
            keys.lookup(a.pid, &a.secret),
            Some((4242, vec![9, 9, 9, 9].into()))
        );
        let mut wrong = a.secret;
        wrong[0] ^= 1;
        assert_eq!(keys.lookup(a.pid, &wrong), None);
        keys.remove(a);
        assert_eq!(keys.lookup(a.pid, &a.secret), None);
        assert_eq!(keys.len(), 1);
    }
}
