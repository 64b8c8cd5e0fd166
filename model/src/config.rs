//! The core's policy knobs. Defaults are the ones specs/parking.md argues for.

use crate::Millis;

/// Timers and limits of the call-parking protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// How long a call may wait for a sleeping device to wake and register (RFC 8599's
    /// Bucket Timer). When it fires, parked devices are pushed no more and, unless a
    /// forwarded branch is still in progress, the caller gets its final response (480).
    pub park_timeout: Millis,
    /// How long a call that has ended stays known to the devices that were pushed for it but
    /// have not registered yet, so that a late waker is told the call ended.
    pub ended_notice_window: Millis,
    /// Push attempts per device per call, the first one included. Only transient failures
    /// are retried.
    pub push_attempts: u8,
    /// Delay before the first retry; each further retry waits twice as long.
    pub push_retry_base: Millis,
    /// How long after the last message from a device's connectionless (UDP) flow the device
    /// still counts as awake: a call is then forwarded to it at once, with a push in
    /// parallel in case it fell asleep meanwhile. A device in a dialog through this server
    /// counts as awake whatever the time. Zero trusts only dialogs.
    pub awake_window: Millis,
    /// Calls the core holds at once (in progress or lingering); beyond it new calls get 503.
    pub max_calls: usize,
    /// Calls of one callee that may be waking its devices at once; beyond it a new call
    /// pushes no device: it rings those that are awake, or gets 486 if none is.
    pub max_calls_per_callee: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            park_timeout: 30_000,
            ended_notice_window: 30_000,
            push_attempts: 3,
            push_retry_base: 500,
            awake_window: 120_000,
            max_calls: 200_000,
            max_calls_per_callee: 10,
        }
    }
}

impl Config {
    /// The delay before retry number `attempt` (1 for the first retry).
    pub fn retry_delay(&self, attempt: u8) -> Millis {
        self.push_retry_base
            .saturating_mul(1u64 << u32::from(attempt.saturating_sub(1)).min(16))
    }
}
