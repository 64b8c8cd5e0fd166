//! How many connections a listener holds, in all and per source address: a place is taken
//! when a connection is accepted (or opened) and given back when its [`Slot`] drops. The
//! SIP stream listeners and the app API's share the rule (each their own count).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;

/// The connection limits of a listener (or of all SIP stream listeners).
pub(crate) struct Admission {
    counts: Mutex<Counts>,
    max: usize,
    max_per_ip: usize,
    /// Peers the per-address limit does not apply to (`auth.trusted_peers`).
    trusted: Vec<ipnet::IpNet>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Counts {
    /// Connections held, in all (including those still in their TLS handshake).
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's place within the limits, given back when dropped.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.admission.counts);
        counts.total -= 1;
        if let Some(ip) = self.ip {
            if let Some(n) = counts.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(
        max: usize,
        max_per_ip: usize,
        trusted: Vec<ipnet::IpNet>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            counts: Mutex::new(Counts::default()),
            max,
            max_per_ip,
            trusted,
            metrics,
        }
    }

    /// A place for a new connection with `peer` (counted against its address when
    /// `inbound` and not trusted), or `None` when a limit says no (counted in
    /// `pushpark_limit_hits_total`).
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr, inbound: bool) -> Option<Slot> {
        let counted = inbound && !self.trusted.iter().any(|net| net.contains(&peer));
        let mut counts = lock(&self.counts);
        if counts.total >= self.max {
            drop(counts);
            self.metrics.limit_hit("connections");
            return None;
        }
        if counted {
            let n = counts.per_ip.entry(peer).or_default();
            if *n >= self.max_per_ip {
                drop(counts);
                self.metrics.limit_hit("connections_per_ip");
                return None;
            }
            *n += 1;
        }
        counts.total += 1;
        Some(Slot {
            admission: Arc::clone(self),
            ip: counted.then_some(peer),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_limited_in_all_and_per_address_and_given_back() {
        let trusted = vec!["10.0.0.0/8".parse().expect("a network")];
        let admission = Arc::new(Admission::new(3, 1, trusted, Arc::default()));
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        let a = admission.admit(ip("192.0.2.1"), true).expect("a place");
        assert!(
            admission.admit(ip("192.0.2.1"), true).is_none(),
            "per address"
        );
        let b = admission.admit(ip("10.0.0.1"), true).expect("trusted");
        let c = admission
            .admit(ip("10.0.0.1"), true)
            .expect("trusted twice");
        assert!(admission.admit(ip("192.0.2.2"), true).is_none(), "in all");
        drop((a, b));
        assert!(
            admission.admit(ip("192.0.2.1"), true).is_some(),
            "given back"
        );
        drop(c);
    }
}
