//! Per-source request limits, in the spirit of Kamailio's `pike`: a source address that
//! sends more than `max_requests` requests in a `window`, or fails digest authentication
//! `max_auth_failures` times within a `failure_window`, is blocked for `block_for`: its
//! requests are dropped before anything else looks at them (no answer, so a flood gets no
//! amplification and a password guesser no verdicts). Trusted peers are never counted.
//!
//! Counting is in fixed windows (a window starts with the first request after the last
//! one ended), so each source costs one small entry and each request O(1). Entries of
//! sources that are neither counting nor blocked are forgotten by [`Pike::prune`]; at most
//! `max_sources` are held, beyond which new sources go uncounted until room is made (a
//! spoofed-source flood cannot grow the table, and cannot complete a digest exchange either).

use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::RateLimit;
use crate::Map;

/// Why a source was blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Block {
    /// Too many requests in a window.
    Requests,
    /// Too many refused credentials in a failure window.
    AuthFailures,
}

impl Block {
    /// The limit's name in `pushpark_limit_hits_total{limit=...}`.
    pub(crate) fn limit(self) -> &'static str {
        match self {
            Block::Requests => "rate_limit",
            Block::AuthFailures => "auth_failures",
        }
    }
}

/// One line at warn when a source is blocked, in the form `pushpark.fail2ban` matches:
/// `security: blocked <ip> for <seconds>s: <why>`.
pub(crate) fn log_block(ip: IpAddr, block: Block, block_for: Duration) {
    let why = match block {
        Block::Requests => "too many requests",
        Block::AuthFailures => "too many failed credentials",
    };
    tracing::warn!("security: blocked {ip} for {}s: {why}", block_for.as_secs());
}

/// What to do with a request from a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Handle it.
    Yes,
    /// Drop it: the source is blocked, since earlier.
    Blocked,
    /// Drop it: this request blocked the source (log and count once).
    NowBlocked(Block),
}

#[derive(Debug)]
struct Source {
    window_start: Instant,
    requests: u32,
    failures_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

impl Source {
    fn new(now: Instant) -> Self {
        Source {
            window_start: now,
            requests: 0,
            failures_start: now,
            failures: 0,
            blocked_until: None,
        }
    }
}

/// The per-source counters.
pub(crate) struct Pike {
    limits: RateLimit,
    trusted: Vec<ipnet::IpNet>,
    sources: Map<IpAddr, Source>,
}

impl Pike {
    pub(crate) fn new(limits: RateLimit, trusted: Vec<ipnet::IpNet>) -> Self {
        Pike {
            limits,
            trusted,
            sources: Map::default(),
        }
    }

    /// The source's entry, made if there is room; `None` for trusted or untracked sources.
    fn source(&mut self, now: Instant, ip: IpAddr) -> Option<&mut Source> {
        if self.trusted.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        let full = self.sources.len() >= self.limits.max_sources;
        match self.sources.entry(ip) {
            Entry::Occupied(known) => Some(known.into_mut()),
            Entry::Vacant(_) if full => None,
            Entry::Vacant(new) => Some(new.insert(Source::new(now))),
        }
    }

    /// Counts a request from `ip` at `now`.
    pub(crate) fn request(&mut self, now: Instant, ip: IpAddr) -> Admit {
        let (window, max, block_for) = (
            self.limits.window,
            self.limits.max_requests,
            self.limits.block_for,
        );
        let Some(source) = self.source(now, ip) else {
            return Admit::Yes;
        };
        if source.blocked_until.is_some_and(|until| now < until) {
            return Admit::Blocked;
        }
        source.blocked_until = None;
        if now.saturating_duration_since(source.window_start) >= window {
            source.window_start = now;
            source.requests = 0;
        }
        source.requests = source.requests.saturating_add(1);
        if source.requests > max {
            source.blocked_until = Some(now + block_for);
            source.requests = 0;
            return Admit::NowBlocked(Block::Requests);
        }
        Admit::Yes
    }

    /// Counts credentials from `ip` that were refused; `true` when this blocks the source.
    pub(crate) fn auth_failure(&mut self, now: Instant, ip: IpAddr) -> bool {
        let limits = self.limits.clone();
        let Some(source) = self.source(now, ip) else {
            return false;
        };
        if now.saturating_duration_since(source.failures_start) >= limits.failure_window {
            source.failures_start = now;
            source.failures = 0;
        }
        source.failures = source.failures.saturating_add(1);
        if source.failures >= limits.max_auth_failures {
            source.blocked_until = Some(now + limits.block_for);
            source.failures = 0;
            return true;
        }
        false
    }

    /// Forgets the sources with nothing left to count: no block in force, their request
    /// window over and no failure in the current failure window.
    pub(crate) fn prune(&mut self, now: Instant) {
        let limits = &self.limits;
        self.sources.retain(|_, s| {
            s.blocked_until.is_some_and(|until| now < until)
                || now.saturating_duration_since(s.window_start) < limits.window
                || (s.failures > 0
                    && now.saturating_duration_since(s.failures_start) < limits.failure_window)
        });
    }

    /// Sources held now.
    pub(crate) fn len(&self) -> usize {
        self.sources.len()
    }

    /// How long a block lasts.
    pub(crate) fn block_for(&self) -> Duration {
        self.limits.block_for
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> RateLimit {
        RateLimit {
            window: Duration::from_secs(2),
            max_requests: 5,
            max_auth_failures: 3,
            failure_window: Duration::from_secs(60),
            block_for: Duration::from_secs(30),
            max_sources: 4,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, n])
    }

    #[test]
    fn a_source_over_the_rate_is_blocked_for_block_for_then_counted_afresh() {
        let t0 = Instant::now();
        let mut pike = Pike::new(limits(), Vec::new());
        for _ in 0..5 {
            assert_eq!(pike.request(t0, ip(1)), Admit::Yes);
        }
        assert_eq!(pike.request(t0, ip(1)), Admit::NowBlocked(Block::Requests));
        assert_eq!(
            pike.request(t0, ip(2)),
            Admit::Yes,
            "others are not blocked"
        );
        let later = t0 + Duration::from_secs(29);
        assert_eq!(pike.request(later, ip(1)), Admit::Blocked);
        let after = t0 + Duration::from_secs(30);
        assert_eq!(pike.request(after, ip(1)), Admit::Yes);
    }

    #[test]
    fn requests_spread_over_windows_are_never_blocked() {
        let t0 = Instant::now();
        let mut pike = Pike::new(limits(), Vec::new());
        for i in 0..100 {
            let now = t0 + Duration::from_millis(500 * i);
            assert_eq!(pike.request(now, ip(1)), Admit::Yes, "request {i}");
        }
    }

    #[test]
    fn failed_credentials_block_a_source_and_trusted_peers_are_never_counted() {
        let t0 = Instant::now();
        let mut pike = Pike::new(limits(), vec!["198.51.100.9/32".parse().unwrap()]);
        assert!(!pike.auth_failure(t0, ip(1)));
        assert!(!pike.auth_failure(t0, ip(1)));
        assert!(pike.auth_failure(t0, ip(1)));
        assert_eq!(pike.request(t0, ip(1)), Admit::Blocked);
        for _ in 0..100 {
            assert_eq!(pike.request(t0, ip(9)), Admit::Yes);
            assert!(!pike.auth_failure(t0, ip(9)));
        }
        // Failures a failure window apart do not add up.
        let mut pike = Pike::new(limits(), Vec::new());
        for i in 0..10 {
            assert!(!pike.auth_failure(t0 + Duration::from_secs(31 * i), ip(2)));
        }
    }

    #[test]
    fn the_table_is_bounded_and_pruned() {
        let t0 = Instant::now();
        let mut pike = Pike::new(limits(), Vec::new());
        for n in 0..10 {
            pike.request(t0, ip(n));
        }
        assert_eq!(pike.len(), 4, "at most max_sources");
        // An untracked source is let through uncounted, not blocked.
        for _ in 0..10 {
            assert_eq!(pike.request(t0, ip(200)), Admit::Yes);
        }
        for _ in 0..6 {
            pike.request(t0, ip(0));
        }
        pike.prune(t0 + Duration::from_secs(3));
        assert_eq!(pike.len(), 1, "only the blocked source is kept");
        pike.prune(t0 + Duration::from_secs(31));
        assert_eq!(pike.len(), 0);
    }
}
