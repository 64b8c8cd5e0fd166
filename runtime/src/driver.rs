//! The core driver: owns a [`Core`], feeds it events with the time, keeps the timers the
//! core arms, and fires them when they fall due. The I/O shell stays thin around it: it
//! executes the effects that [`Driver::handle`] and [`Driver::fire_due`] return.

use std::collections::{BTreeMap, BTreeSet};

use pushpark_model::{Config, Core, Effect, Event, Millis, Timer};

/// A core and its timer queue.
pub struct Driver {
    core: Core,
    now: Millis,
    due: BTreeSet<(Millis, Timer)>,
    armed: BTreeMap<Timer, Millis>,
}

impl Driver {
    pub fn new(config: Config) -> Self {
        Self::with_core(Core::new(config))
    }

    /// A driver around `core`.
    pub fn with_core(core: Core) -> Self {
        Self {
            core,
            now: 0,
            due: BTreeSet::new(),
            armed: BTreeMap::new(),
        }
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The earliest armed timer and when it falls due.
    pub fn next_timer(&self) -> Option<(Millis, Timer)> {
        self.due.first().copied()
    }

    /// Feeds `event` at `now` (clamped so time never runs backwards) and returns the
    /// effects, timers already taken care of.
    pub fn handle(&mut self, now: Millis, event: Event) -> Vec<Effect> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        self.core.step(self.now, event, &mut out);
        self.track_timers(&out);
        out
    }

    /// Fires every timer due at or before `now`, earliest first, and returns the effects.
    pub fn fire_due(&mut self, now: Millis) -> Vec<Effect> {
        let mut out = Vec::new();
        while let Some((_, effects)) = self.fire_next(now) {
            out.extend(effects);
        }
        out
    }

    /// Fires the earliest timer due at or before `now`, if any: the timer and its effects.
    pub fn fire_next(&mut self, now: Millis) -> Option<(Timer, Vec<Effect>)> {
        let Some(&(at, timer)) = self.due.first().filter(|&&(at, _)| at <= now) else {
            self.now = self.now.max(now);
            return None;
        };
        self.due.remove(&(at, timer));
        self.armed.remove(&timer);
        Some((timer, self.handle(at, Event::TimerFired(timer))))
    }

    fn track_timers(&mut self, effects: &[Effect]) {
        for effect in effects {
            match *effect {
                Effect::ArmTimer { timer, at } => {
                    if let Some(old) = self.armed.insert(timer, at) {
                        self.due.remove(&(old, timer));
                    }
                    self.due.insert((at, timer));
                }
                Effect::DisarmTimer { timer } => {
                    if let Some(at) = self.armed.remove(&timer) {
                        self.due.remove(&(at, timer));
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpark_model::{AorId, CallId, Callee, DeviceId, Flow, Target};

    fn park(driver: &mut Driver) {
        driver.handle(
            0,
            Event::CallArrived {
                call: CallId(1),
                aor: AorId(1),
                waking_limit: None,
                callee: Callee::Devices(vec![Target {
                    device: DeviceId(1),
                    flow: Flow::Closed,
                    pushable: true,
                }]),
            },
        );
    }

    #[test]
    fn the_park_deadline_fires_when_due_and_not_before() {
        let mut driver = Driver::new(Config::default());
        park(&mut driver);
        assert_eq!(
            driver.next_timer(),
            Some((30_000, Timer::Deadline(CallId(1))))
        );
        assert!(driver.fire_due(29_999).is_empty());
        let effects = driver.fire_due(30_000);
        assert!(effects.contains(&Effect::Respond {
            call: CallId(1),
            code: 480,
            relay: None
        }));
    }

    #[test]
    fn a_disarmed_timer_never_fires() {
        let mut driver = Driver::new(Config::default());
        park(&mut driver);
        driver.handle(10, Event::CallerCancelled { call: CallId(1) });
        // Only the ended-notice window remains, and it lets the call go quietly.
        assert_eq!(
            driver.next_timer(),
            Some((30_010, Timer::Linger(CallId(1))))
        );
        assert!(driver.fire_due(60_000).is_empty());
        assert!(driver.core().is_empty());
        assert_eq!(driver.next_timer(), None);
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut driver = Driver::new(Config::default());
        driver.fire_due(500);
        park(&mut driver);
        assert_eq!(
            driver.next_timer(),
            Some((30_500, Timer::Deadline(CallId(1))))
        );
    }
}
