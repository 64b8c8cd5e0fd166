//! How often one device may be pushed: a token bucket per device, refilled continuously,
//! so that nobody can make a victim's phone wake without bound (and burn its battery).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A token bucket per key: `per_minute` pushes a minute, in bursts of as many.
#[derive(Debug)]
pub struct PushBudget<K> {
    per_minute: f64,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Eq + Hash> PushBudget<K> {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one push from `key`'s budget at `now`, if there is one left.
    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        let tokens = self.refill(key, now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `key` has a push left at `now`, without taking it.
    pub fn has_left(&mut self, key: K, now: Instant) -> bool {
        *self.refill(key, now) >= 1.0
    }

    /// `key`'s tokens, refilled up to `now`.
    fn refill(&mut self, key: K, now: Instant) -> &mut f64 {
        let per_minute = self.per_minute;
        let (tokens, last) = self.buckets.entry(key).or_insert((per_minute, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * per_minute / 60.0;
        *tokens = (*tokens + refill).min(per_minute);
        *last = now;
        tokens
    }

    /// Forgets the keys whose bucket has been full again for a while: they cost nothing.
    pub fn prune(&mut self, now: Instant) {
        let full_after = Duration::from_secs(60);
        self.buckets
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < full_after);
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_capped_and_the_budget_refills_with_time() {
        let mut budget = PushBudget::new(3);
        let t0 = Instant::now();
        let allowed = (0..5).filter(|_| budget.allow("phone", t0)).count();
        assert_eq!(allowed, 3, "a burst of three, then nothing");
        assert!(
            !budget.allow("phone", t0 + Duration::from_secs(10)),
            "1/20 s: not yet"
        );
        assert!(
            budget.allow("phone", t0 + Duration::from_secs(21)),
            "one back after 20 s"
        );
        assert!(budget.allow("other", t0), "each device has its own budget");
    }

    #[test]
    fn idle_devices_are_forgotten() {
        let mut budget = PushBudget::new(3);
        let t0 = Instant::now();
        budget.allow("phone", t0);
        budget.prune(t0 + Duration::from_secs(30));
        assert_eq!(budget.len(), 1);
        budget.prune(t0 + Duration::from_secs(61));
        assert!(budget.is_empty());
    }
}
