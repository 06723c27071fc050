//! A bounded concurrent cache of analyses keyed by statement fingerprint (the SQL text with
//! literals replaced, see `fingerprint`), so prepared, repeated and same-shaped statements
//! are parsed once.
//!
//! Eviction is second-chance (CLOCK-like): each entry has a "used since last sweep" bit;
//! when the map is full, a sweep drops the entries not used since the previous sweep
//! (or, if all were used, all of them) and clears the bits. A hit costs one hash and one
//! shard read lock; it never allocates.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::sql::analysis::{analyze, Analysis};
use crate::sql::fingerprint::fingerprint_into;

thread_local! {
    /// Reused buffer for fingerprints, so a cache hit never allocates.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

struct Entry {
    analysis: Arc<Analysis>,
    used: AtomicBool,
}

pub struct AnalysisCache {
    map: DashMap<Box<str>, Entry>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl AnalysisCache {
    /// A cache holding at most `capacity` SQL texts (at least 1).
    pub fn new(capacity: usize) -> Self {
        AnalysisCache {
            map: DashMap::new(),
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The analysis of `sql`, from the cache or freshly parsed (and then cached).
    pub fn get(&self, sql: &str) -> Arc<Analysis> {
        KEY.with_borrow_mut(|key| {
            fingerprint_into(sql, key);
            self.get_keyed(key, sql)
        })
    }

    fn get_keyed(&self, key: &str, sql: &str) -> Arc<Analysis> {
        if let Some(e) = self.map.get(key) {
            if !e.used.load(Ordering::Relaxed) {
                e.used.store(true, Ordering::Relaxed);
            }
            self.hits.fetch_add(1, Ordering::Relaxed);
            return e.analysis.clone();
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let analysis = Arc::new(analyze(sql));
        if self.map.len() >= self.capacity {
            self.sweep();
        }
        self.map.insert(
            key.into(),
            Entry {
                analysis: analysis.clone(),
                used: AtomicBool::new(false),
            },
        );
        analysis
    }

    fn sweep(&self) {
        let before = self.map.len();
        self.map
            .retain(|_, e| e.used.swap(false, Ordering::Relaxed));
        if self.map.len() >= self.capacity || self.map.len() == before {
            self.map.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lookup_is_a_hit_with_the_same_analysis() {
        let c = AnalysisCache::new(10);
        let a = c.get("SELECT 1");
        let b = c.get("SELECT 1");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((c.hits(), c.misses()), (1, 1));
    }

    #[test]
    fn statements_differing_only_in_literals_share_an_entry() {
        let c = AnalysisCache::new(10);
        let a = c.get("SELECT v FROM t WHERE id = 1");
        let b = c.get("SELECT v FROM t WHERE id = 2");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((c.hits(), c.misses(), c.len()), (1, 1, 1));
    }

    #[test]
    fn stays_bounded_and_keeps_recently_used_entries() {
        let c = AnalysisCache::new(4);
        c.get("SELECT * FROM t0");
        for i in 1..4 {
            c.get(&format!("SELECT * FROM t{i}"));
        }
        c.get("SELECT * FROM t0"); // mark used
        c.get("SELECT * FROM t99"); // full: sweep keeps only t0
        assert!(c.len() <= 4);
        let misses = c.misses();
        c.get("SELECT * FROM t0");
        assert_eq!(c.misses(), misses, "recently used entry survived the sweep");
        for i in 100..200 {
            c.get(&format!("SELECT * FROM t{i}"));
            assert!(c.len() <= 4);
        }
    }
}
