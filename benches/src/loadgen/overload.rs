//! The overload scenario (`--overload`): how the server copes when it is offered more calls
//! than it can take, and how soon it is back to normal once the surge is over.
//!
//! Calls are offered open loop in three phases ([`Schedule`]): a warm-up at the base rate
//! (`--rate`, meant to be the most the server takes without a failure), an overload at
//! [`Overload::factor`] times that rate, and a recovery at the base rate again. Each call
//! belongs to the phase in which it started. A server that sheds load gracefully answers
//! the calls it cannot take with a stateless `503 Service Unavailable` and a
//! `Retry-After`: such a call is *shed* (the caller ACKs the 503 and does not retry), not
//! failed; every call it did accept must complete, quickly.
//!
//! Per phase ([`PhaseReport`]): the rate actually offered (the load generator shares the
//! machine with the server and may fall short of the plan: a call that cannot start before
//! its phase ends, for want of a free device or of room under `--max-in-flight`, is not
//! started at all, and counted so), the goodput (completed calls per second of the phase),
//! shed, failed, failed after the server had accepted them, INVITE → 200 percentiles of the
//! completed calls, retransmissions, and the CPU time the server and the load generator
//! used. Then [`Recovery`], by the rule it states, and the target
//! ([`OverloadReport::target`]).

use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};

use super::report::{histogram, micros, short, Percentiles};

/// The sliding window of the recovery rule, over call start times.
const WINDOW: Duration = Duration::from_secs(1);
/// How far the window slides each step.
const STEP: Duration = Duration::from_millis(100);
/// A window is normal when its p99 is at most this many times the warm-up's p99 …
const SLOWDOWN: u32 = 2;
/// … or at most this, whichever is more (a p99 of 1 ms doubling is noise, not overload) …
const FLOOR: Duration = Duration::from_millis(10);
/// … and at least this share of the calls the plan puts in the window started.
const OFFERED_SHARE: f64 = 0.9;

/// The target: goodput during the overload at least this share of the base rate, …
const TARGET_GOODPUT: f64 = 0.9;
/// … INVITE → 200 p99 of the completed calls below this in every phase (no
/// retransmission storm: Timer A fires at 500 ms) …
const TARGET_P99: Duration = Duration::from_millis(100);
/// … and back to normal within this of the overload's end.
const TARGET_RECOVERY: Duration = Duration::from_secs(5);
/// Below this share of a phase's planned calls started, the load generator fell short
/// and the target cannot be judged.
const OFFERED_ENOUGH: f64 = 0.95;

/// The overload scenario's phases (the base rate is [`super::Options::rate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overload {
    /// The overload phase's rate, as a multiple of the base rate.
    pub factor: f64,
    /// Phase 1, at the base rate.
    pub warm_up: Duration,
    /// Phase 2, at `factor` times the base rate.
    pub overload: Duration,
    /// Phase 3, at the base rate; at least 1 s, the recovery rule's window.
    pub recovery: Duration,
}

impl Default for Overload {
    /// Twice the base rate for 30 s, after 10 s of warm-up and before 15 s of recovery.
    fn default() -> Overload {
        Overload {
            factor: 2.0,
            warm_up: Duration::from_secs(10),
            overload: Duration::from_secs(30),
            recovery: Duration::from_secs(15),
        }
    }
}

impl Overload {
    /// What is wrong with these phases at base rate `rate`, if anything.
    pub(crate) fn check(&self, rate: f64) -> Result<(), String> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--overload needs a --rate (calls per second, more than 0)".to_owned());
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err("--overload-factor must be 1 or more".to_owned());
        }
        if self.warm_up.is_zero() || self.overload.is_zero() {
            return Err("--warm-up-secs and --overload-secs must not be zero".to_owned());
        }
        if self.recovery < WINDOW {
            return Err("--recovery-secs must be at least 1".to_owned());
        }
        let schedule = Schedule::new(rate, self);
        if schedule.phases.iter().any(|p| p.calls == 0) {
            return Err("--rate is too low to start a call in every phase".to_owned());
        }
        Ok(())
    }
}

/// CPU time used so far, at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuSample {
    /// By the server (all its nodes; `None` unless each one's pid is known).
    pub server: Option<Duration>,
    /// By the load generator's process (an in-process server's included).
    pub loadgen: Option<Duration>,
}

/// What the load generator saw of the phases beside the calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Observed {
    /// Each phase's calls that could not start before the phase ended.
    pub not_started: [u64; 3],
    /// Each phase's calls that had to wait for room under `--max-in-flight` or for a free
    /// device (started or not).
    pub held_up: [u64; 3],
    /// CPU time used so far at the start of each phase and at the end of the last.
    pub cpu: Vec<CpuSample>,
}

/// One phase as planned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Planned {
    /// `warm-up`, `overload` or `recovery`.
    pub name: &'static str,
    /// Calls started per second.
    pub rate: f64,
    /// When it begins, from the first call's start.
    pub start: Duration,
    /// When it ends.
    pub end: Duration,
    /// The index of its first call.
    pub first: u64,
    /// Calls it starts.
    pub calls: u64,
}

impl Planned {
    fn length(&self) -> Duration {
        self.end - self.start
    }
}

/// The three phases of an overload run, as planned: when each call is due.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schedule {
    phases: [Planned; 3],
}

impl Schedule {
    /// The phases of `overload` at base rate `rate`.
    pub fn new(rate: f64, overload: &Overload) -> Schedule {
        let (mut start, mut first) = (Duration::ZERO, 0);
        let mut phase = |name, rate: f64, length: Duration| {
            let calls = (rate * length.as_secs_f64()).round() as u64;
            let planned = Planned {
                name,
                rate,
                start,
                end: start + length,
                first,
                calls,
            };
            start += length;
            first += calls;
            planned
        };
        let phases = [
            phase("warm-up", rate, overload.warm_up),
            phase("overload", rate * overload.factor, overload.overload),
            phase("recovery", rate, overload.recovery),
        ];
        Schedule { phases }
    }

    /// Calls in all.
    pub fn calls(&self) -> u64 {
        let last = &self.phases[2];
        last.first + last.calls
    }

    /// The phases in order.
    pub fn phases(&self) -> &[Planned; 3] {
        &self.phases
    }

    /// When each phase starts, and the last ends, from the first call's start.
    pub fn boundaries(&self) -> [Duration; 4] {
        let [w, o, r] = &self.phases;
        [w.start, o.start, r.start, r.end]
    }

    /// When call `idx` is due, from the first call's start, and the index of its phase.
    pub fn due(&self, idx: u64) -> Option<(Duration, usize)> {
        let i = self.phases.iter().position(|p| idx < p.first + p.calls)?;
        let phase = &self.phases[i];
        let nanos = (idx - phase.first) as f64 * 1e9 / phase.rate;
        Some((phase.start + Duration::from_nanos(nanos.round() as u64), i))
    }

    /// The index of the phase a call started at `started` belongs to (the last one for a
    /// call started after the end, which the pacing does not do).
    fn phase_of(&self, started: Duration) -> usize {
        self.phases
            .iter()
            .position(|p| started < p.end)
            .unwrap_or(self.phases.len() - 1)
    }
}

/// How a call of an overload run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// As expected.
    Completed,
    /// Its INVITE got a 503 before anything else: the server refused it.
    Shed,
    /// Failed before the server accepted it (no response, or a final other than 503).
    Failed,
    /// Failed after the server accepted it (it sent something other than a 503).
    FailedAccepted,
}

/// One call of an overload run, as the phases and the recovery rule need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CallRecord {
    /// When it started, from the first call's start.
    pub started: Duration,
    /// How it ended.
    pub end: End,
    /// INVITE sent → 200 at the caller.
    pub latency: Option<Duration>,
    /// Messages the load generator sent again for it.
    pub retransmitted: u64,
    /// Messages it got again from the server.
    pub received_again: u64,
}

/// One phase of an overload run, as it went.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseReport {
    /// `warm-up`, `overload` or `recovery`.
    pub name: &'static str,
    /// Its length.
    pub duration: Duration,
    /// Calls per second the plan offered.
    pub planned_rate: f64,
    /// Calls the plan offered.
    pub planned: u64,
    /// Calls started.
    pub started: u64,
    /// Calls not started before the phase ended: the load generator had no free device or
    /// no room under `--max-in-flight` (see `held_up`), or was itself too slow.
    pub not_started: u64,
    /// Calls that had to wait for room under `--max-in-flight` or for a free device
    /// (started or not): the calls in flight, which the server kept, held them up.
    pub held_up: u64,
    /// Calls that ended as expected.
    pub completed: u64,
    /// Calls the server refused with a 503.
    pub shed: u64,
    /// Calls that failed, whether the server had accepted them or not.
    pub failed: u64,
    /// Of the failed calls, those the server had accepted (sent anything but a 503 for).
    pub accepted_but_failed: u64,
    /// INVITE sent → 200 at the caller, of the completed calls.
    pub latency: Option<Percentiles>,
    /// Messages the load generator sent again for its calls (its RFC 3261 timers).
    pub retransmitted: u64,
    /// Messages its calls got again from the server.
    pub received_again: u64,
    /// CPU time the server used during the phase (its pid known).
    pub server_cpu: Option<Duration>,
    /// CPU time the load generator used during the phase (an in-process server's included).
    pub loadgen_cpu: Option<Duration>,
}

impl PhaseReport {
    /// Calls started per second of the phase.
    pub fn offered_rate(&self) -> f64 {
        per_second(self.started, self.duration)
    }

    /// Calls completed per second of the phase (by their start).
    pub fn goodput(&self) -> f64 {
        per_second(self.completed, self.duration)
    }

    /// The load generator started too few of the planned calls (under 95 %): held up by
    /// the calls in flight, or too slow itself (see [`PhaseReport::short_by_loadgen`]).
    pub fn fell_short(&self) -> bool {
        (self.started as f64) < OFFERED_ENOUGH * self.planned as f64
    }

    /// The load generator fell short of the plan with no call held up by the calls in
    /// flight: too slow itself (its CPU), so the phase says nothing of the server at the
    /// planned rate.
    pub fn short_by_loadgen(&self) -> bool {
        self.fell_short() && self.held_up == 0
    }

    /// Retransmissions (sent and received) per call started.
    pub fn retransmissions_per_call(&self) -> f64 {
        (self.retransmitted + self.received_again) as f64 / self.started.max(1) as f64
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "duration_s": self.duration.as_secs_f64(),
            "planned_rate": self.planned_rate,
            "planned": self.planned,
            "started": self.started,
            "not_started": self.not_started,
            "held_up": self.held_up,
            "offered_rate": self.offered_rate(),
            "fell_short": self.fell_short(),
            "completed": self.completed,
            "goodput": self.goodput(),
            "shed": self.shed,
            "failed": self.failed,
            "accepted_but_failed": self.accepted_but_failed,
            "latency_invite_to_200": self.latency.map_or(Value::Null, Percentiles::to_json),
            "retransmitted": self.retransmitted,
            "received_again": self.received_again,
            "server_cpu_s": self.server_cpu.map(|d| d.as_secs_f64()),
            "loadgen_cpu_s": self.loadgen_cpu.map(|d| d.as_secs_f64()),
        })
    }
}

fn per_second(n: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// How soon after the overload the server was back to normal.
///
/// The rule: a window of calls started within 1 s of each other (in the recovery phase,
/// sliding 100 ms at a time from the overload's end) is *normal* when at least 90 % of
/// the calls the plan puts in it started, none of them was shed or failed, and the
/// INVITE → 200 p99 of its completed calls is at most the threshold: twice the warm-up's
/// p99, or 10 ms if that is more. The server recovered at the start of the first window
/// from which every later window is normal; the recovery time runs from the overload's end
/// to that start ("not recovered" when even the last window of the phase is not normal).
/// p99s here are exact (nearest rank) over the window's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// INVITE → 200 p99 of the warm-up's completed calls (`None`: none completed).
    pub warm_up_p99: Option<Duration>,
    /// The most a normal window's p99 may be (`None` without a warm-up p99).
    pub threshold: Option<Duration>,
    /// From the overload's end until the server was back to normal; `None`: not within
    /// the recovery phase.
    pub after: Option<Duration>,
    /// Windows of the recovery phase that were not normal.
    pub abnormal_windows: usize,
    /// Windows of the recovery phase.
    pub windows: usize,
}

impl Recovery {
    /// Applies the rule to `records`, sorted by start time.
    fn of(records: &[CallRecord], schedule: &Schedule) -> Recovery {
        let [warm_up, overload, recovery] = schedule.phases();
        let in_warm_up = in_range(records, warm_up.start, warm_up.end);
        let warm_up_p99 = p99(completed_latencies(in_warm_up));
        let threshold = warm_up_p99.map(|p| (p * SLOWDOWN).max(FLOOR));
        let planned = (recovery.rate * WINDOW.as_secs_f64() * OFFERED_SHARE).floor() as usize;
        let mut normal = Vec::new();
        let mut at = overload.end;
        while at + WINDOW <= recovery.end {
            let window = in_range(records, at, at + WINDOW);
            let clean = window.iter().all(|r| r.end == End::Completed);
            let p99 = p99(completed_latencies(window));
            let fast = matches!((p99, threshold), (Some(p), Some(t)) if p <= t);
            normal.push((at, window.len() >= planned && clean && fast));
            at += STEP;
        }
        // The first window after the last abnormal one, if it is in the phase.
        let last_abnormal = normal.iter().rposition(|&(_, ok)| !ok);
        let first_of_the_rest = last_abnormal.map_or(0, |i| i + 1);
        Recovery {
            warm_up_p99,
            threshold,
            after: (normal.get(first_of_the_rest)).map(|&(at, _)| at - overload.end),
            abnormal_windows: normal.iter().filter(|&&(_, ok)| !ok).count(),
            windows: normal.len(),
        }
    }

    fn to_json(self) -> Value {
        let us = |d: Option<Duration>| d.map(micros);
        json!({
            "rule": "first 1-s window (by call start, sliding 100 ms from the overload's end) \
                     from which every window of the recovery phase has >= 90% of its planned \
                     calls started, none shed or failed, and INVITE→200 p99 <= max(2 x warm-up \
                     p99, 10 ms)",
            "warm_up_p99_us": us(self.warm_up_p99),
            "threshold_us": us(self.threshold),
            "recovered_after_s": self.after.map(|d| d.as_secs_f64()),
            "abnormal_windows": self.abnormal_windows,
            "windows": self.windows,
        })
    }
}

/// The records (sorted by start) that started in `[from, to)`.
fn in_range(records: &[CallRecord], from: Duration, to: Duration) -> &[CallRecord] {
    let first = records.partition_point(|r| r.started < from);
    let end = records.partition_point(|r| r.started < to);
    &records[first..end.max(first)]
}

fn completed_latencies(records: &[CallRecord]) -> Vec<Duration> {
    (records.iter())
        .filter(|r| r.end == End::Completed)
        .filter_map(|r| r.latency)
        .collect()
}

/// The exact 99th percentile (nearest rank) of `values`.
fn p99(mut values: Vec<Duration>) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let rank = (values.len() * 99).div_ceil(100).max(1);
    let (_, nth, _) = values.select_nth_unstable(rank - 1);
    Some(*nth)
}

/// An overload run: its phases, its recovery, and whether it met the target.
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadReport {
    /// The base rate (phases 1 and 3), calls per second.
    pub base_rate: f64,
    /// Phase 2's rate as a multiple of the base rate.
    pub factor: f64,
    /// Warm-up, overload, recovery.
    pub phases: Vec<PhaseReport>,
    /// How soon the server was back to normal.
    pub recovery: Recovery,
}

impl OverloadReport {
    /// Sums `records` up by phase, with what the load generator `observed` beside them.
    pub(crate) fn of(
        schedule: &Schedule,
        overload: &Overload,
        mut records: Vec<CallRecord>,
        observed: &Observed,
    ) -> OverloadReport {
        records.sort_by_key(|r| r.started);
        let mut by_phase: [Vec<CallRecord>; 3] = Default::default();
        for record in &records {
            by_phase[schedule.phase_of(record.started)].push(*record);
        }
        // CPU time used during phase `i`, when sampled at both of its ends.
        let used = |i: usize, of: fn(&CpuSample) -> Option<Duration>| {
            let (from, to) = (observed.cpu.get(i)?, observed.cpu.get(i + 1)?);
            Some(of(to)?.saturating_sub(of(from)?))
        };
        let phases = (schedule.phases().iter().zip(by_phase).enumerate())
            .map(|(i, (planned, calls))| {
                let count = |end| calls.iter().filter(|r| r.end == end).count() as u64;
                let mut latency = histogram();
                for d in completed_latencies(&calls) {
                    latency.saturating_record(micros(d));
                }
                let accepted_but_failed = count(End::FailedAccepted);
                PhaseReport {
                    name: planned.name,
                    duration: planned.length(),
                    planned_rate: planned.rate,
                    planned: planned.calls,
                    started: calls.len() as u64,
                    not_started: observed.not_started[i],
                    held_up: observed.held_up[i],
                    completed: count(End::Completed),
                    shed: count(End::Shed),
                    failed: count(End::Failed) + accepted_but_failed,
                    accepted_but_failed,
                    latency: Percentiles::of(&latency),
                    retransmitted: calls.iter().map(|r| r.retransmitted).sum(),
                    received_again: calls.iter().map(|r| r.received_again).sum(),
                    server_cpu: used(i, |s| s.server),
                    loadgen_cpu: used(i, |s| s.loadgen),
                }
            })
            .collect();
        OverloadReport {
            base_rate: schedule.phases()[0].rate,
            factor: overload.factor,
            phases,
            recovery: Recovery::of(&records, schedule),
        }
    }

    /// The target, item by item, with whether each was met: goodput during the overload
    /// at least 90 % of the base rate, no call the server accepted failed, INVITE → 200
    /// p99 below 100 ms in every phase, back to normal within 5 s, and the plan offered:
    /// a phase in which the calls in flight held up so many calls that the load generator
    /// fell short of the plan fails the target (a server that sheds gracefully completes or
    /// refuses calls quickly). Empty when the load generator fell short by itself (its
    /// CPU), which leaves the target unjudged.
    pub fn target(&self) -> Vec<(String, bool)> {
        if self.phases.iter().any(PhaseReport::short_by_loadgen) {
            return Vec::new();
        }
        let mut checks = Vec::new();
        for phase in self.phases.iter().filter(|p| p.fell_short()) {
            checks.push((
                format!(
                    "{}: {} of {} calls not started, held up by the calls in flight (must \
                     all start)",
                    phase.name, phase.not_started, phase.planned
                ),
                false,
            ));
        }
        if let Some(overload) = self.phases.get(1) {
            let goal = TARGET_GOODPUT * self.base_rate;
            checks.push((
                format!(
                    "overload goodput {:.0} calls/s (must be ≥ {:.0}, 90 % of the base rate)",
                    overload.goodput(),
                    goal
                ),
                overload.goodput() >= goal,
            ));
        }
        let accepted_but_failed: u64 = self.phases.iter().map(|p| p.accepted_but_failed).sum();
        checks.push((
            format!("{accepted_but_failed} accepted calls failed (must be 0)"),
            accepted_but_failed == 0,
        ));
        let worst = (self.phases.iter())
            .filter_map(|p| p.latency.map(|l| l.p99))
            .max();
        checks.push((
            match worst {
                Some(p99) => format!(
                    "worst phase INVITE → 200 p99 {} (must be < {}: no retransmission storm)",
                    short(p99),
                    short(TARGET_P99)
                ),
                None => "no call completed (INVITE → 200 p99 must be < 100 ms)".to_owned(),
            },
            worst.is_some_and(|p| p < TARGET_P99),
        ));
        checks.push((
            match self.recovery.after {
                Some(after) => format!(
                    "back to normal {:.1} s after the overload (must be ≤ {} s)",
                    after.as_secs_f64(),
                    TARGET_RECOVERY.as_secs()
                ),
                None => format!(
                    "not back to normal within the recovery phase (must be within {} s)",
                    TARGET_RECOVERY.as_secs()
                ),
            },
            self.recovery.after.is_some_and(|d| d <= TARGET_RECOVERY),
        ));
        checks
    }

    /// The target was judged and met.
    pub fn met_target(&self) -> bool {
        let target = self.target();
        !target.is_empty() && target.iter().all(|(_, met)| *met)
    }

    pub(crate) fn to_json(&self) -> Value {
        let target = self.target();
        let unmet: Vec<&str> = (target.iter())
            .filter(|(_, met)| !met)
            .map(|(what, _)| what.as_str())
            .collect();
        json!({
            "base_rate": self.base_rate,
            "factor": self.factor,
            "phases": self.phases.iter().map(PhaseReport::to_json).collect::<Vec<_>>(),
            "recovery": self.recovery.to_json(),
            "target": {
                "judged": !target.is_empty(),
                "met": self.met_target(),
                "unmet": unmet,
            },
        })
    }

    /// The report's overload lines, as `line` writes them (label, value).
    pub(crate) fn write(
        &self,
        f: &mut fmt::Formatter<'_>,
        line: &dyn Fn(&mut fmt::Formatter<'_>, &str, String) -> fmt::Result,
    ) -> fmt::Result {
        let [warm_up, overload, recovery] = [0, 1, 2].map(|i| self.phases.get(i));
        if let (Some(w), Some(o), Some(r)) = (warm_up, overload, recovery) {
            line(
                f,
                "overload scenario",
                format!(
                    "base rate {:.0} calls/s: warm-up {:.0} s, ×{} for {:.0} s, recovery {:.0} s",
                    self.base_rate,
                    w.duration.as_secs_f64(),
                    self.factor,
                    o.duration.as_secs_f64(),
                    r.duration.as_secs_f64()
                ),
            )?;
        }
        let mut from = Duration::ZERO;
        for (i, phase) in self.phases.iter().enumerate() {
            let to = from + phase.duration;
            let label = format!(
                "phase {} {} ({:.0}–{:.0} s)",
                i + 1,
                phase.name,
                from.as_secs_f64(),
                to.as_secs_f64()
            );
            from = to;
            let short_of_plan = if phase.short_by_loadgen() {
                format!(
                    " — SHORT of the plan: {} calls not started, the load generator too slow \
                     (no call held up by the calls in flight)",
                    phase.not_started
                )
            } else if phase.fell_short() {
                format!(
                    " — SHORT of the plan: {} calls not started, {} held up by the calls in \
                     flight (--max-in-flight reached or no free device)",
                    phase.not_started, phase.held_up
                )
            } else if phase.not_started > 0 || phase.held_up > 0 {
                format!(
                    " ({} calls not started, {} held up by the calls in flight)",
                    phase.not_started, phase.held_up
                )
            } else {
                String::new()
            };
            line(
                f,
                &label,
                format!(
                    "offered {:.0} calls/s of {:.0} planned{short_of_plan}",
                    phase.offered_rate(),
                    phase.planned_rate
                ),
            )?;
            line(
                f,
                "",
                format!(
                    "goodput {:.0} completed calls/s; {} shed, {} failed ({} accepted but failed)",
                    phase.goodput(),
                    phase.shed,
                    phase.failed,
                    phase.accepted_but_failed
                ),
            )?;
            line(
                f,
                "",
                format!(
                    "INVITE → 200 {}",
                    phase.latency.map_or_else(
                        || "no data".to_owned(),
                        |p| format!(
                            "p50 {}  p99 {}  max {}  ({} calls)",
                            short(p.p50),
                            short(p.p99),
                            short(p.max),
                            p.count
                        )
                    )
                ),
            )?;
            line(
                f,
                "",
                format!(
                    "retransmissions {} sent, {} received again ({:.3} per call)",
                    phase.retransmitted,
                    phase.received_again,
                    phase.retransmissions_per_call()
                ),
            )?;
            let share = |cpu: Duration| {
                let percent = cpu.as_secs_f64() / phase.duration.as_secs_f64() * 100.0;
                format!("{:.2} s ({percent:.0}% of one core)", cpu.as_secs_f64())
            };
            let cpu: Vec<String> = [("server", phase.server_cpu), ("loadgen", phase.loadgen_cpu)]
                .into_iter()
                .filter_map(|(who, cpu)| Some(format!("{who} {}", share(cpu?))))
                .collect();
            if !cpu.is_empty() {
                line(f, "", format!("CPU {}", cpu.join(", ")))?;
            }
        }
        let r = &self.recovery;
        let threshold = match (r.warm_up_p99, r.threshold) {
            (Some(p99), Some(t)) => format!(
                "p99 ≤ {} (2 × warm-up p99 {}, at least {})",
                short(t),
                short(p99),
                short(FLOOR)
            ),
            _ => "no warm-up p99 to compare with".to_owned(),
        };
        let after = match r.after {
            Some(after) => format!(
                "back to normal {:.1} s after the overload ended",
                after.as_secs_f64()
            ),
            None => "NOT back to normal within the recovery phase".to_owned(),
        };
        line(
            f,
            "recovery",
            format!(
                "{after}; {} of {} windows not normal",
                r.abnormal_windows, r.windows
            ),
        )?;
        line(
            f,
            "",
            format!(
                "(normal: the calls started in a 1-s window, sliding 100 ms, ≥ 90 % of plan, \
                 none shed or failed, {threshold}; recovered from the first window after \
                 which all are normal)"
            ),
        )?;
        let target = self.target();
        let verdict = if target.is_empty() {
            "not judged: the load generator itself fell short of the plan".to_owned()
        } else if self.met_target() {
            format!(
                "met: {}",
                (target.iter().map(|(what, _)| what.as_str()))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        } else {
            format!(
                "NOT met: {}",
                (target.iter().filter(|(_, met)| !met))
                    .map(|(what, _)| what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        line(f, "target", verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn overload(warm_up: u64, overload: u64, recovery: u64) -> Overload {
        Overload {
            factor: 2.0,
            warm_up: Duration::from_secs(warm_up),
            overload: Duration::from_secs(overload),
            recovery: Duration::from_secs(recovery),
        }
    }

    /// Calls at `rate` per second over `[from, to)` ms, each ending `end` after `latency`.
    fn calls(from: u64, to: u64, rate: u64, end: End, latency: u64) -> Vec<CallRecord> {
        let step = 1000 / rate;
        (from..to)
            .step_by(step as usize)
            .map(|at| CallRecord {
                started: ms(at),
                end,
                latency: (end == End::Completed).then(|| ms(latency)),
                retransmitted: 0,
                received_again: 0,
            })
            .collect()
    }

    #[test]
    fn the_schedule_plans_each_phase_at_its_rate_one_after_the_other() {
        let schedule = Schedule::new(100.0, &overload(2, 3, 4));
        let [w, o, r] = schedule.phases();
        assert_eq!((w.calls, o.calls, r.calls), (200, 600, 400));
        assert_eq!((o.first, o.start, o.end), (200, ms(2000), ms(5000)));
        assert_eq!(schedule.calls(), 1200);
        assert_eq!(schedule.due(0), Some((ms(0), 0)));
        assert_eq!(schedule.due(199), Some((ms(1990), 0)));
        assert_eq!(schedule.due(201), Some((ms(2005), 1)));
        assert_eq!(schedule.due(800), Some((ms(5000), 2)));
        assert_eq!(schedule.due(1200), None);
    }

    #[test]
    fn a_server_that_stays_fast_and_sheds_nothing_recovers_at_once() {
        let schedule = Schedule::new(100.0, &overload(2, 2, 3));
        let mut records = calls(0, 2000, 100, End::Completed, 4);
        records.extend(calls(2000, 4000, 200, End::Completed, 5));
        records.extend(calls(4000, 7000, 100, End::Completed, 4));
        let sample = |server: u64, loadgen: Option<u64>| CpuSample {
            server: Some(ms(server)),
            loadgen: loadgen.map(ms),
        };
        let observed = Observed {
            not_started: [0; 3],
            held_up: [0; 3],
            cpu: vec![
                sample(100, Some(0)),
                sample(1100, Some(500)),
                sample(3100, None),
                sample(4100, Some(2000)),
            ],
        };
        let report = OverloadReport::of(&schedule, &overload(2, 2, 3), records, &observed);
        let cpu: Vec<_> = report.phases.iter().map(|p| p.server_cpu).collect();
        assert_eq!(cpu, [Some(ms(1000)), Some(ms(2000)), Some(ms(1000))]);
        let cpu: Vec<_> = report.phases.iter().map(|p| p.loadgen_cpu).collect();
        assert_eq!(cpu, [Some(ms(500)), None, None]);
        assert_eq!(report.recovery.after, Some(Duration::ZERO), "{report:?}");
        assert_eq!(report.recovery.abnormal_windows, 0);
        assert_eq!(report.recovery.windows, 21);
        assert_eq!(report.recovery.warm_up_p99, Some(ms(4)));
        // 2 × 4 ms is under the floor.
        assert_eq!(report.recovery.threshold, Some(FLOOR));
        let phases: Vec<_> = report
            .phases
            .iter()
            .map(|p| (p.started, p.completed))
            .collect();
        assert_eq!(phases, [(200, 200), (400, 400), (300, 300)]);
        assert!((report.phases[1].goodput() - 200.0).abs() < 1e-9);
        assert!(report.met_target(), "{:?}", report.target());
    }

    #[test]
    fn recovery_is_timed_from_the_first_window_after_which_every_window_is_normal() {
        let schedule = Schedule::new(100.0, &overload(2, 2, 5));
        let mut records = calls(0, 2000, 100, End::Completed, 20);
        records.extend(calls(2000, 4000, 200, End::Shed, 0));
        // Slow until 5.5 s, then two more slow calls at 6.0 s, then fast (one slow call
        // in a window of 100 is not its p99; two are).
        records.extend(calls(4000, 5500, 100, End::Completed, 300));
        records.extend(calls(5500, 9000, 100, End::Completed, 30));
        for record in &mut records {
            if record.started == ms(6000) || record.started == ms(6010) {
                record.latency = Some(ms(500));
                record.retransmitted = 1;
            }
        }
        let report =
            OverloadReport::of(&schedule, &overload(2, 2, 5), records, &Observed::default());
        assert_eq!(report.recovery.threshold, Some(ms(40)));
        // The last window holding both 6.0 s calls starts at 6.0 s: recovered from 6.1 s.
        assert_eq!(report.recovery.after, Some(ms(2100)), "{report:?}");
        let shed: Vec<_> = report.phases.iter().map(|p| p.shed).collect();
        assert_eq!(shed, [0, 400, 0]);
        assert_eq!(report.phases[2].retransmitted, 2);
        assert_eq!(report.phases[1].latency, None);
    }

    #[test]
    fn a_server_still_shedding_or_failing_at_the_end_has_not_recovered() {
        let schedule = Schedule::new(100.0, &overload(1, 1, 2));
        let mut records = calls(0, 1000, 100, End::Completed, 5);
        records.extend(calls(1000, 2000, 200, End::Completed, 5));
        records.extend(calls(2000, 3990, 100, End::Completed, 5));
        records.push(CallRecord {
            started: ms(3990),
            end: End::FailedAccepted,
            latency: None,
            retransmitted: 0,
            received_again: 0,
        });
        let report =
            OverloadReport::of(&schedule, &overload(1, 1, 2), records, &Observed::default());
        assert_eq!(report.recovery.after, None, "{report:?}");
        assert_eq!(report.phases[2].accepted_but_failed, 1);
        assert_eq!(report.phases[2].failed, 1);
        assert!(!report.met_target());
    }

    #[test]
    fn too_few_calls_started_in_a_window_is_not_normal_and_a_short_phase_is_not_judged() {
        let schedule = Schedule::new(100.0, &overload(1, 1, 2));
        let mut records = calls(0, 1000, 100, End::Completed, 5);
        records.extend(calls(1000, 2000, 200, End::Completed, 5));
        // The recovery phase's first second offered at half the rate.
        records.extend(calls(2000, 3000, 50, End::Completed, 5));
        records.extend(calls(3000, 4000, 100, End::Completed, 5));
        let mut observed = Observed {
            not_started: [0, 0, 50],
            held_up: [0; 3],
            cpu: Vec::new(),
        };
        let report = OverloadReport::of(&schedule, &overload(1, 1, 2), records.clone(), &observed);
        // [2.7 s, 3.7 s) holds 15 + 70 calls, [2.8 s, 3.8 s) 10 + 80: 90 % of 100.
        assert_eq!(report.recovery.after, Some(ms(800)), "{report:?}");
        assert_eq!(report.phases[2].not_started, 50);
        assert!(report.phases[2].fell_short());
        // Nothing held the calls up: the load generator was too slow, nothing is judged.
        assert!(report.phases[2].short_by_loadgen());
        assert!(report.target().is_empty());
        assert!(!report.met_target());
        // Held up by the calls in flight: the server kept them, and fails the target.
        observed.held_up = [0, 0, 60];
        let report = OverloadReport::of(&schedule, &overload(1, 1, 2), records, &observed);
        assert!(!report.phases[2].short_by_loadgen());
        let target = report.target();
        assert!(target
            .iter()
            .any(|(what, met)| what.starts_with("recovery: 50 of 200") && !met));
        assert!(!report.met_target());
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let values = |n: u64| (1..=n).map(ms).collect::<Vec<_>>();
        assert_eq!(p99(values(100)), Some(ms(99)));
        assert_eq!(p99(values(1000)), Some(ms(990)));
        assert_eq!(p99(values(1)), Some(ms(1)));
        assert_eq!(p99(Vec::new()), None);
    }

    #[test]
    fn overload_phases_are_checked() {
        assert!(Overload::default().check(100.0).is_ok());
        assert!(Overload::default().check(0.0).is_err());
        let slower = Overload {
            factor: 0.5,
            ..Overload::default()
        };
        assert!(slower.check(100.0).is_err());
        let no_window = Overload {
            recovery: ms(500),
            ..Overload::default()
        };
        assert!(no_window.check(100.0).is_err());
        assert!(overload(1, 1, 1).check(0.1).is_err());
    }
}
