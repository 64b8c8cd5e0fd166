//! Timer names, configuration and the per-transaction timer slots (RFC 3261 §17, Appendix A;
//! RFC 6026 §7).

use super::{Millis, Transport};

/// Transaction timer values (RFC 3261 Appendix A). All times are milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// RTT estimate (§17.1.1.1); default 500 ms. Timers B, F, H, J, L, M are 64·T1.
    pub t1: Millis,
    /// Cap of the retransmit interval for non-INVITE requests and INVITE responses; default 4 s.
    pub t2: Millis,
    /// Maximum time a message stays in the network; Timers I and K; default 5 s.
    pub t4: Millis,
    /// Proxy Timer C (§16.6 step 11): must be more than 3 minutes; default 181 s.
    pub timer_c: Millis,
    /// After how long a silent TU is told to send 100 Trying for an INVITE (§17.2.1: the server
    /// transaction must send 100 unless the TU answers within 200 ms). `None` disables the
    /// reminder, for TUs that always send 100 at once. Default `Some(200)`.
    pub trying_delay: Option<Millis>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            t1: 500,
            t2: 4_000,
            t4: 5_000,
            timer_c: 181_000,
            trying_delay: Some(200),
        }
    }
}

impl Config {
    /// 64·T1: Timers B, F, H, J (unreliable), L and M, and the CANCEL wait of §9.1.
    pub fn t1_x64(&self) -> Millis {
        self.t1.saturating_mul(64)
    }

    /// Timer D (RFC 6026 §8.4): at least 32 s (and at least 64·T1) on unreliable transports,
    /// zero on reliable ones.
    pub fn timer_d(&self, transport: Transport) -> Millis {
        match transport {
            Transport::Reliable => 0,
            Transport::Unreliable => self.t1_x64().max(32_000),
        }
    }

    /// Timer I and Timer K: T4 on unreliable transports, zero on reliable ones.
    pub fn t4_unless_reliable(&self, transport: Transport) -> Millis {
        match transport {
            Transport::Reliable => 0,
            Transport::Unreliable => self.t4,
        }
    }

    /// Timer J: 64·T1 on unreliable transports, zero on reliable ones (§17.2.2).
    pub fn timer_j(&self, transport: Transport) -> Millis {
        match transport {
            Transport::Reliable => 0,
            Transport::Unreliable => self.t1_x64(),
        }
    }
}

/// The name of a timer, as reported in [`TuEvent::Timeout`](super::TuEvent::Timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// INVITE request retransmit, unreliable only, T1 doubling (§17.1.1.2).
    A,
    /// INVITE client timeout in Calling, 64·T1 (§17.1.1.2).
    B,
    /// Proxy INVITE timer, reset by 101–199 (§16.6 step 11, §16.7 step 2, §16.8).
    C,
    /// INVITE client wait in Completed (§17.1.1.2, RFC 6026 §8.4).
    D,
    /// Non-INVITE request retransmit, unreliable only, T1 doubling capped at T2 (§17.1.2.2).
    E,
    /// Non-INVITE client timeout, 64·T1 (§17.1.2.2).
    F,
    /// INVITE 3xx–6xx response retransmit, unreliable only, T1 doubling capped at T2 (§17.2.1).
    G,
    /// INVITE server wait for ACK, 64·T1 (§17.2.1).
    H,
    /// INVITE server absorbs ACKs in Confirmed (§17.2.1).
    I,
    /// Non-INVITE server absorbs request retransmissions (§17.2.2).
    J,
    /// Non-INVITE client absorbs response retransmissions (§17.1.2.2).
    K,
    /// INVITE server in Accepted absorbs INVITE retransmissions, 64·T1 (RFC 6026 §7.1).
    L,
    /// INVITE client in Accepted passes further 2xx to the TU, 64·T1 (RFC 6026 §7.2).
    M,
    /// Not an RFC letter: the 200 ms after which the TU is reminded to send 100 Trying (§17.2.1).
    Trying,
    /// Not an RFC letter: 64·T1 after a CANCEL was sent without a final response to the INVITE,
    /// the INVITE client transaction is given up (§9.1).
    CancelWait,
}

const TIMER_COUNT: usize = 15;

/// Deadlines of the timers armed in one transaction; at most one deadline per timer.
#[derive(Clone, Debug, Default)]
pub(super) struct Timers {
    slots: [Option<Millis>; TIMER_COUNT],
}

impl Timers {
    pub(super) fn set(&mut self, timer: Timer, at: Millis) {
        self.slots[timer as usize] = Some(at);
    }

    pub(super) fn clear(&mut self, timer: Timer) {
        self.slots[timer as usize] = None;
    }

    pub(super) fn get(&self, timer: Timer) -> Option<Millis> {
        self.slots[timer as usize]
    }

    /// The earliest armed timer; on a tie, the one with the lower letter fires first.
    pub(super) fn next(&self) -> Option<(Timer, Millis)> {
        self.next_excluding(&Timers::default())
    }

    /// Like [`next`](Self::next), ignoring the timers armed in `skip`.
    pub(super) fn next_excluding(&self, skip: &Timers) -> Option<(Timer, Millis)> {
        const ALL: [Timer; TIMER_COUNT] = [
            Timer::A,
            Timer::B,
            Timer::C,
            Timer::D,
            Timer::E,
            Timer::F,
            Timer::G,
            Timer::H,
            Timer::I,
            Timer::J,
            Timer::K,
            Timer::L,
            Timer::M,
            Timer::Trying,
            Timer::CancelWait,
        ];
        ALL.iter()
            .filter(|&&t| skip.get(t).is_none())
            .filter_map(|&t| self.get(t).map(|at| (t, at)))
            .min_by_key(|&(t, at)| (at, t))
    }
}
