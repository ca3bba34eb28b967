//! Retrying: one backoff for every loop that waits before trying the store or the kernel
//! again.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl Backoff {
    /// From `min` doubling to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, cur: min }
    }

    /// The next delay (±20 % jitter so that many nodes do not retry in step).
    pub fn delay(&mut self) -> Duration {
        let d = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        d.mul_f64(0.8 + 0.4 * fastrand::f64())
    }

    /// Back to the minimum.
    pub fn reset(&mut self) {
        self.cur = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u128> = (0..4).map(|_| b.delay().as_millis()).collect();
        for (got, base) in d.iter().zip([100u128, 200, 350, 350]) {
            assert!((base * 8 / 10..=base * 12 / 10).contains(got), "{d:?}");
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(120));
    }
}
