//! How far the mirror has got, as a clock both the mirror and the sessions read: a session
//! that finished a write at instant `t` reads from legacy until the mirror has applied every
//! change committed before some instant after `t` (read-your-writes).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

#[derive(Debug)]
pub struct Watermark {
    epoch: Instant,
    /// The mirror has applied every change committed before this instant (µs since epoch).
    mirrored_through: AtomicU64,
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark {
            epoch: Instant::now(),
            mirrored_through: AtomicU64::new(0),
        }
    }
}

impl Watermark {
    /// Microseconds since the watermark started; the clock of [`Watermark::mirrored`].
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The mirror has applied every change committed before `at` (from [`Watermark::now`]).
    pub fn mirrored(&self, at: u64) {
        self.mirrored_through.fetch_max(at, Relaxed);
    }

    /// True when a write the session finished at `at` may not be on new yet.
    pub fn unmirrored(&self, at: Option<u64>) -> bool {
        at.is_some_and(|at| at >= self.mirrored_through.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_unmirrored_until_the_mirror_passes_it() {
        let w = Watermark::default();
        assert!(!w.unmirrored(None));
        let wrote = w.now();
        assert!(w.unmirrored(Some(wrote)));
        w.mirrored(wrote + 1);
        assert!(!w.unmirrored(Some(wrote)));
        w.mirrored(0);
        assert!(!w.unmirrored(Some(wrote)), "the watermark never goes back");
    }
}
