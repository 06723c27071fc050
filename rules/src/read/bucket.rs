//! Sticky buckets: where a read falls in a ramp (0-99), from its key value or connection.
//! Below planning and routing: a plan carries its table's part of a bucket, routing reads it.

/// The bucket (0-99) of a key value or connection: FNV-1a, stable across runs and versions.
pub fn bucket(seed: &[u8]) -> u8 {
    let mut b = Bucket::default();
    b.feed(seed);
    b.finish()
}

/// [`bucket`] fed in pieces (bytes, or text through `fmt::Write`) with no buffer: the same
/// bucket as the pieces joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket(u64);

impl Default for Bucket {
    fn default() -> Self {
        Bucket(0xcbf2_9ce4_8422_2325)
    }
}

impl Bucket {
    pub fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(self) -> u8 {
        (self.0 % 100) as u8
    }
}

impl std::fmt::Write for Bucket {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.feed(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket(b"42"), bucket(b"42"));
        let mut seen = [0u32; 100];
        for k in 0..10_000u32 {
            seen[bucket(k.to_string().as_bytes()) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (50..=150).contains(&n)), "{seen:?}");
        // Known values: buckets must not move between versions (a fleet shares them).
        assert_eq!(bucket(b""), (0xcbf2_9ce4_8422_2325u64 % 100) as u8);
        // Fed in pieces, the same bucket as the pieces joined.
        use std::fmt::Write;
        for k in 0..1_000u32 {
            let whole = format!("public.users\0{k}\0x");
            let mut b = Bucket::default();
            let table = "public.users";
            write!(b, "{table}").unwrap();
            b.feed(b"\0");
            write!(b, "{k}").unwrap();
            b.feed(b"\0x");
            assert_eq!(b.finish(), bucket(whole.as_bytes()));
        }
    }
}
