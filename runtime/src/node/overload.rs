//! Graceful overload (RFC 3261 §21.5.4, in the spirit of RFC 7339): when the node falls
//! behind, new work is refused at once with `503` and `Retry-After`, so what was accepted
//! still completes in time, instead of every request waiting until callers and phones
//! retransmit and the load they add buries the server.
//!
//! Falling behind is told by delay, not by queue length: a burst may fill a queue for a
//! moment and be gone, while a standing queue means more arrives than the node can do. As in
//! CoDel (RFC 8289), the test is the *least* delay met in an interval: when even the
//! quickest message of an [`INTERVAL`] waited longer than the bound (`sip.overload_delay`),
//! the node is behind. Two queues are watched, each with its own least delay:
//!
//! * [`Queue::Inbound`]: how long a message waited before the node handled it: in the UDP
//!   socket's buffer (the kernel's receive timestamp), or on the channel from a TCP or TLS
//!   connection's reader.
//! * [`Queue::Store`]: how long a store job (a REGISTER's write) waited for the store's
//!   thread: the registrar may fall behind while the loop does not.
//!
//! How much new work is let in is a share, adjusted at the end of every interval: cut by a
//! fifth while either queue is behind, raised by [`INCREASE`] once both have had an interval
//! under half the bound (additive increase, multiplicative decrease, as TCP finds a link's
//! rate). On and off instead (refuse everything until calm, then take everything) was
//! measured first: it let a second's worth of calls in at once, refused everything for
//! hundreds of milliseconds while the node idled, and did half the calls it could. New
//! requests are let in evenly within the share, without chance: with a share of 0.7, seven
//! of every ten.
//!
//! What is shed and what is not is decided where requests come in (`proxy`): this module
//! only says whether the next new request is let in.

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How long each measurement of the least delay lasts.
pub(crate) const INTERVAL: Duration = Duration::from_millis(50);
/// What the share of new work is multiplied by after an interval behind.
const DECREASE: f64 = 0.8;
/// What the share grows by after a calm interval: from nothing to everything in a second.
const INCREASE: f64 = 0.05;
/// The fewest messages (or jobs) an interval needs to show a queue behind: a standing
/// queue is a busy one, while a lone message late on a loaded machine (a test suite on two
/// cores, a slow fsync) is no overload.
const MIN_SAMPLES: u32 = 8;

/// A queue whose delay is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// Messages waiting for the node: in a UDP socket's buffer, or from a stream's reader.
    Inbound,
    /// Store jobs waiting for the store's thread.
    Store,
}

/// The least delay one queue met in an interval, and how many went through it.
#[derive(Debug, Default)]
struct Least {
    least: Duration,
    count: u32,
}

impl Least {
    /// The least delay, if enough went through the queue to tell.
    fn judged(self) -> Option<Duration> {
        (self.count >= MIN_SAMPLES).then_some(self.least)
    }
}

/// Whether the node is overloaded, from the delays its queues report, and how much new
/// work it lets in.
#[derive(Debug)]
pub(crate) struct Overload {
    /// The bound on the least delay; zero never sheds.
    bound: Duration,
    /// When the current interval began.
    since: Instant,
    /// The least delay of each queue in the current interval.
    inbound: Least,
    store: Least,
    /// The share of new requests let in, from 0 to 1.
    share: f64,
    /// What the share has earned and not spent: a request is let in when it reaches 1.
    credit: f64,
}

impl Overload {
    pub(crate) fn new(now: Instant, bound: Duration) -> Self {
        Self {
            bound,
            since: now,
            inbound: Least::default(),
            store: Least::default(),
            share: 1.0,
            credit: 0.0,
        }
    }

    /// A message or a job of `queue` waited `delay`.
    pub(crate) fn observe(&mut self, now: Instant, queue: Queue, delay: Duration) {
        self.advance(now);
        let least = match queue {
            Queue::Inbound => &mut self.inbound,
            Queue::Store => &mut self.store,
        };
        least.least = if least.count == 0 {
            delay
        } else {
            least.least.min(delay)
        };
        least.count += 1;
    }

    /// Whether a new request is let in now; each call that says no is one request shed.
    pub(crate) fn admits(&mut self, now: Instant) -> bool {
        self.advance(now);
        if self.share >= 1.0 {
            return true;
        }
        self.credit += self.share;
        if self.credit >= 1.0 {
            self.credit -= 1.0;
            return true;
        }
        false
    }

    /// Whether new work was being shed when last asked or told.
    pub(crate) fn is_shedding(&self) -> bool {
        self.share < 1.0
    }

    /// When the share may change without anything more observed: at the end of the
    /// current interval while shedding (it grows back as the queues stay calm), never
    /// otherwise.
    pub(crate) fn next_change(&self) -> Option<Instant> {
        self.is_shedding().then(|| self.since + INTERVAL)
    }

    /// Ends every interval that is over by `now`, adjusting the share at the end of each.
    pub(crate) fn advance(&mut self, now: Instant) {
        if self.bound.is_zero() {
            return;
        }
        while now.saturating_duration_since(self.since) >= INTERVAL {
            self.since += INTERVAL;
            // A queue too little went through in an interval held nothing up.
            let inbound = std::mem::take(&mut self.inbound).judged();
            let store = std::mem::take(&mut self.store).judged();
            let worst = inbound.max(store).unwrap_or_default();
            if worst > self.bound {
                if self.share >= 1.0 {
                    warn!(
                        "overloaded: shedding new calls and REGISTERs with 503 (least delay in \
                         {INTERVAL:?}: inbound {inbound:?}, store {store:?}; \
                         sip.overload_delay {:?})",
                        self.bound
                    );
                }
                self.share *= DECREASE;
            } else if worst <= self.bound / 2 && self.share < 1.0 {
                self.share = (self.share + INCREASE).min(1.0);
                if self.share >= 1.0 {
                    info!("no longer overloaded: every new call and REGISTER is taken again");
                    self.credit = 0.0;
                }
            }
            // A node idle for long catches up in one step: nothing more can change.
            if self.share >= 1.0 {
                let behind = now.saturating_duration_since(self.since).as_nanos();
                let skipped = behind / INTERVAL.as_nanos();
                self.since += INTERVAL * u32::try_from(skipped).unwrap_or(u32::MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_millis(20);
    const MS: Duration = Duration::from_millis(1);

    /// Feeds `delay` on `queue` every millisecond for `ms` milliseconds from `*now`.
    fn feed(o: &mut Overload, now: &mut Instant, queue: Queue, delay: Duration, ms: u32) {
        for _ in 0..ms {
            o.observe(*now, queue, delay);
            *now += MS;
        }
    }

    /// How many of `n` new requests are let in at `now`.
    fn admitted(o: &mut Overload, now: Instant, n: usize) -> usize {
        (0..n).filter(|_| o.admits(now)).count()
    }

    #[test]
    fn a_standing_queue_sheds_and_a_burst_does_not() {
        let start = Instant::now();
        let (mut o, mut now) = (Overload::new(start, BOUND), start);
        // A burst: 30 ms of messages that waited long, then the queue is empty again.
        feed(&mut o, &mut now, Queue::Inbound, 80 * MS, 30);
        feed(&mut o, &mut now, Queue::Inbound, Duration::ZERO, 220);
        assert_eq!(admitted(&mut o, now, 100), 100);
        // A standing queue: even the quickest waited 30 ms, for a whole interval.
        feed(&mut o, &mut now, Queue::Inbound, 30 * MS, 50);
        assert!(!o.is_shedding(), "decided at the end of the interval");
        feed(&mut o, &mut now, Queue::Inbound, 30 * MS, 1);
        assert!(o.is_shedding());
        assert_eq!(admitted(&mut o, now, 100), 80, "a fifth is shed");
    }

    #[test]
    fn the_share_falls_while_behind_and_climbs_back_once_calm() {
        let start = Instant::now();
        let (mut o, mut now) = (Overload::new(start, BOUND), start);
        feed(&mut o, &mut now, Queue::Store, 50 * MS, 150);
        // Three intervals behind: 0.8³ of new requests are let in, evenly.
        assert_eq!(admitted(&mut o, now, 1000), 512);
        // Under the bound but above half of it: the share holds.
        feed(&mut o, &mut now, Queue::Store, 15 * MS, 500);
        assert_eq!(admitted(&mut o, now, 1000), 512);
        // Calm: 0.05 more each interval, everything again after ten.
        feed(&mut o, &mut now, Queue::Store, MS, 200);
        assert_eq!(admitted(&mut o, now, 1000), 712);
        feed(&mut o, &mut now, Queue::Store, MS, 300);
        assert_eq!(admitted(&mut o, now, 1000), 1000);
        assert!(!o.is_shedding());
    }

    #[test]
    fn either_queue_sheds_and_both_must_be_calm() {
        let start = Instant::now();
        let (mut o, mut now) = (Overload::new(start, BOUND), start);
        for _ in 0..51 {
            o.observe(now, Queue::Inbound, Duration::ZERO);
            o.observe(now, Queue::Store, 25 * MS);
            now += MS;
        }
        assert!(o.is_shedding());
        for _ in 0..500 {
            o.observe(now, Queue::Inbound, Duration::ZERO);
            o.observe(now, Queue::Store, 15 * MS);
            now += MS;
        }
        assert!(o.is_shedding(), "the store is not calm yet");
    }

    #[test]
    fn silence_is_calm_and_a_zero_bound_never_sheds() {
        let start = Instant::now();
        let (mut o, mut now) = (Overload::new(start, BOUND), start);
        feed(&mut o, &mut now, Queue::Inbound, 50 * MS, 51);
        assert!(o.is_shedding());
        // Twenty intervals with nothing queued bring the share back whole.
        assert_eq!(admitted(&mut o, now + 20 * INTERVAL, 10), 10);
        assert!(!o.is_shedding());
        // After an hour idle the next messages are judged in an interval of their own.
        let mut later = now + Duration::from_secs(3600);
        feed(&mut o, &mut later, Queue::Inbound, 30 * MS, 10);
        assert!(!o.is_shedding());
        o.observe(later + INTERVAL, Queue::Inbound, Duration::ZERO);
        assert!(o.is_shedding());
        // A few late messages are no standing queue.
        let (mut sparse, mut now) = (Overload::new(start, BOUND), start);
        for _ in 0..20 {
            feed(
                &mut sparse,
                &mut now,
                Queue::Store,
                30 * MS,
                MIN_SAMPLES - 1,
            );
            now += INTERVAL;
        }
        assert!(!sparse.is_shedding());

        let (mut off, mut now) = (Overload::new(start, Duration::ZERO), start);
        feed(
            &mut off,
            &mut now,
            Queue::Inbound,
            Duration::from_secs(5),
            1000,
        );
        assert_eq!(admitted(&mut off, now, 100), 100);
    }
}
