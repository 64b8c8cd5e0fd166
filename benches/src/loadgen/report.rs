//! What a run measured: counters the progress line reads while calls run, histograms and
//! tallies each call adds to when it ends (and, in an overload run, a record of each call
//! for [`OverloadReport`]), and the final [`Report`] (text and JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pushpark::config::Transport;
use serde_json::{json, Value};

use super::overload::{CallRecord, End, OverloadReport};
use super::redis::RedisStats;
use super::{AnswerFromPush, Mode};

/// How one call ended, as its task saw it.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The final response the caller got to its INVITE.
    pub final_code: Option<u16>,
    /// Why the call failed; `None` when it ended as expected.
    pub failure: Option<String>,
    /// INVITE sent → 200 at the caller.
    pub latency: Option<Duration>,
    /// INVITE sent → its (first) push at the webhook.
    pub push_overhead: Option<Duration>,
    /// Wake-up REGISTER sent → the parked INVITE at the device.
    pub wake_overhead: Option<Duration>,
    /// Park: the (first) push at the webhook → the caller's final response, whatever it is.
    pub push_to_final: Option<Duration>,
    /// The answer from the push posted → the app API's reply.
    pub app_round_trip: Option<Duration>,
    /// The device sent a wake-up REGISTER.
    pub woke: bool,
    /// The device answered from its push over the app API.
    pub answered_from_push: bool,
    /// Pushes the call got.
    pub pushes: u32,
    /// The device was told to answer with this code instead of 200 (486, 603).
    pub rejected_with: Option<u16>,
    /// When the call started.
    pub started: Option<Instant>,
    /// The server accepted the call: it sent something other than a 503 for it (a response
    /// to the INVITE, a push, the INVITE at the device).
    pub accepted: bool,
    /// The server refused the call: a 503 to its INVITE before anything else.
    pub shed: bool,
    /// The shed call's Retry-After, in seconds, if it had one.
    pub retry_after: Option<u32>,
    /// What the call's parties sent again, and got again.
    pub retransmissions: Retransmissions,
}

/// Retransmissions over UDP (none over TCP): what the load generator sent again on its
/// RFC 3261 timers, and what it got again from the server. Many of either are a
/// retransmission storm: a server too slow to answer within T1 (500 ms) doubles its load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retransmissions {
    /// INVITEs sent again (Timer A: no response yet).
    pub invites: u64,
    /// Wake-up REGISTERs, BYEs and CANCELs sent again (Timer E: no final response yet).
    pub requests: u64,
    /// The devices' final responses to INVITEs sent again (no ACK yet).
    pub responses: u64,
    /// Final responses to INVITEs the callers got again (each ACKed again).
    pub finals_again: u64,
    /// INVITEs the devices got again (each answered again).
    pub invites_again: u64,
}

impl Retransmissions {
    /// Messages the load generator sent again.
    pub fn sent(&self) -> u64 {
        self.invites + self.requests + self.responses
    }

    /// Messages the load generator got again.
    pub fn received(&self) -> u64 {
        self.finals_again + self.invites_again
    }

    fn add(&mut self, other: &Retransmissions) {
        self.invites += other.invites;
        self.requests += other.requests;
        self.responses += other.responses;
        self.finals_again += other.finals_again;
        self.invites_again += other.invites_again;
    }

    fn to_json(self) -> Value {
        json!({
            "sent": self.sent(),
            "invites": self.invites,
            "requests": self.requests,
            "responses": self.responses,
            "received": self.received(),
            "finals_again": self.finals_again,
            "invites_again": self.invites_again,
        })
    }
}

impl fmt::Display for Retransmissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent (INVITE {}, REGISTER/BYE/CANCEL {}, devices' finals {}), {} received \
             again (finals at callers {}, INVITEs at devices {})",
            self.sent(),
            self.invites,
            self.requests,
            self.responses,
            self.received(),
            self.finals_again,
            self.invites_again
        )
    }
}

/// Counters read while the run goes on, and tallies filled as calls end.
pub(crate) struct Stats {
    /// Calls started.
    pub sent: AtomicU64,
    /// Calls that ended as expected.
    pub completed: AtomicU64,
    /// Calls that failed.
    pub failed: AtomicU64,
    /// Calls the server refused with a 503.
    pub shed: AtomicU64,
    /// Hold mode: calls that got their 100 Trying.
    pub trying: AtomicU64,
    /// Calls that got at least one push.
    pub pushed: AtomicU64,
    tallies: Mutex<Tallies>,
}

struct Tallies {
    latency: Histogram<u64>,
    push: Histogram<u64>,
    wake: Histogram<u64>,
    push_final: Histogram<u64>,
    app: Histogram<u64>,
    wake_ups: u64,
    answers_from_push: u64,
    outcomes: BTreeMap<u16, u64>,
    failures: BTreeMap<String, u64>,
    pushes: u64,
    pushed_twice: u64,
    not_pushed: u64,
    expected_rejections: BTreeMap<u16, u64>,
    accepted_but_failed: u64,
    retry_after: BTreeMap<u32, u64>,
    shed_without_retry_after: u64,
    retransmissions: Retransmissions,
    /// Overload runs: when the first call was due, and each call's record.
    timeline: Option<(Instant, Vec<CallRecord>)>,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Stats {
    pub fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            trying: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            tallies: Mutex::new(Tallies {
                latency: histogram(),
                push: histogram(),
                wake: histogram(),
                push_final: histogram(),
                app: histogram(),
                wake_ups: 0,
                answers_from_push: 0,
                outcomes: BTreeMap::new(),
                failures: BTreeMap::new(),
                pushes: 0,
                pushed_twice: 0,
                not_pushed: 0,
                expected_rejections: BTreeMap::new(),
                accepted_but_failed: 0,
                retry_after: BTreeMap::new(),
                shed_without_retry_after: 0,
                retransmissions: Retransmissions::default(),
                timeline: None,
            }),
        }
    }

    fn tallies(&self) -> std::sync::MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, keep a record of each call, its start counted from `start` (the
    /// overload scenario's phases and recovery need them).
    pub fn keep_records(&self, start: Instant) {
        self.tallies().timeline = Some((start, Vec::new()));
    }

    /// The records kept since [`Stats::keep_records`].
    pub fn take_records(&self) -> Vec<CallRecord> {
        (self.tallies().timeline.take()).map_or_else(Vec::new, |(_, records)| records)
    }

    /// A call ended.
    pub fn record(&self, outcome: Outcome) {
        let end = match (&outcome.failure, outcome.shed, outcome.accepted) {
            (Some(_), _, true) => End::FailedAccepted,
            (Some(_), _, false) => End::Failed,
            (None, true, _) => End::Shed,
            (None, false, _) => End::Completed,
        };
        let counter = match end {
            End::Completed => &self.completed,
            End::Shed => &self.shed,
            End::Failed | End::FailedAccepted => &self.failed,
        };
        let mut t = self.tallies();
        match end {
            End::FailedAccepted => t.accepted_but_failed += 1,
            End::Shed => match outcome.retry_after {
                Some(secs) => *t.retry_after.entry(secs).or_default() += 1,
                None => t.shed_without_retry_after += 1,
            },
            End::Completed | End::Failed => {}
        }
        t.retransmissions.add(&outcome.retransmissions);
        if let (Some((start, records)), Some(started)) = (&mut t.timeline, outcome.started) {
            records.push(CallRecord {
                started: started.saturating_duration_since(*start),
                end,
                latency: outcome.latency,
                retransmitted: outcome.retransmissions.sent(),
                received_again: outcome.retransmissions.received(),
            });
        }
        if let Some(latency) = outcome.latency {
            t.latency.saturating_record(micros(latency));
        }
        if let Some(d) = outcome.push_overhead {
            t.push.saturating_record(micros(d));
        }
        if let Some(d) = outcome.wake_overhead {
            t.wake.saturating_record(micros(d));
        }
        if let Some(d) = outcome.push_to_final {
            t.push_final.saturating_record(micros(d));
        }
        if let Some(d) = outcome.app_round_trip {
            t.app.saturating_record(micros(d));
        }
        t.wake_ups += u64::from(outcome.woke);
        t.answers_from_push += u64::from(outcome.answered_from_push);
        if let Some(code) = outcome.final_code {
            *t.outcomes.entry(code).or_default() += 1;
        }
        if let Some(code) = outcome.rejected_with {
            *t.expected_rejections.entry(code).or_default() += 1;
        }
        if let Some(failure) = outcome.failure {
            *t.failures.entry(failure).or_default() += 1;
        }
        t.pushes += u64::from(outcome.pushes);
        match outcome.pushes {
            0 => t.not_pushed += 1,
            1 => {}
            _ => t.pushed_twice += 1,
        }
        drop(t);
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` failures that belong to no one call (e.g. the server did not drain).
    pub fn fail(&self, cause: String, n: u64) {
        if n > 0 {
            *self.tallies().failures.entry(cause).or_default() += n;
        }
    }

    /// Calls ended, whichever way.
    pub fn ended(&self) -> u64 {
        [&self.completed, &self.failed, &self.shed]
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Calls started and not ended yet.
    pub fn in_flight(&self) -> u64 {
        self.sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.ended())
    }

    /// Prints a progress line to stderr once a second until the task is aborted.
    pub async fn progress(&self, start: Instant) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tick.tick().await;
            let ended = self.ended();
            eprintln!(
                "[{:7.1}s] sent {:>8}  completed {:>8}  shed {:>7}  failed {:>6}  in flight {:>6}  {:>7} calls/s",
                start.elapsed().as_secs_f64(),
                self.sent.load(Ordering::Relaxed),
                self.completed.load(Ordering::Relaxed),
                self.shed.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
                self.in_flight(),
                ended - last,
            );
            last = ended;
        }
    }
}

/// Percentiles of a latency distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// How many values.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest value.
    pub max: Duration,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        let at = |q: f64| Duration::from_micros(h.value_at_quantile(q));
        (!h.is_empty()).then(|| Percentiles {
            count: h.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_micros(h.max()),
        })
    }

    pub(crate) fn to_json(self) -> Value {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        json!({
            "count": self.count,
            "p50_us": us(self.p50),
            "p90_us": us(self.p90),
            "p99_us": us(self.p99),
            "p99_9_us": us(self.p999),
            "max_us": us(self.max),
        })
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} calls)",
            short(self.p50),
            short(self.p90),
            short(self.p99),
            short(self.p999),
            short(self.max),
            self.count
        )
    }
}

/// `812 µs`, `12.3 ms`, `4.56 s`.
pub(crate) fn short(d: Duration) -> String {
    let us = d.as_micros();
    if us < 10_000 {
        format!("{us} µs")
    } else if us < 10_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// `12.3 MB`.
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Hold mode: what holding the calls cost the server.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldReport {
    /// Calls sent to be held.
    pub calls: u64,
    /// Calls that got their 100 Trying and a push while held.
    pub held: u64,
    /// `pushpark_calls_parked` at full hold, if the server exposes it.
    pub parked_gauge: Option<f64>,
    /// From the first INVITE until every call was held.
    pub time_to_hold: Duration,
    /// Server RSS before the first call.
    pub rss_before: Option<u64>,
    /// Server RSS with every call held.
    pub rss_held: Option<u64>,
    /// Calls released by CANCEL as expected (200 to the CANCEL, 487 to the INVITE).
    pub released: u64,
    /// After the release the server held no call any more (parked gauge and core calls 0).
    pub drained: Option<bool>,
}

impl HoldReport {
    /// RSS at full hold minus RSS before.
    pub fn rss_delta(&self) -> Option<i64> {
        let before = i64::try_from(self.rss_before?).ok()?;
        let held = i64::try_from(self.rss_held?).ok()?;
        Some(held - before)
    }

    /// RSS delta per held call.
    pub fn bytes_per_call(&self) -> Option<f64> {
        let held = self.held.max(1);
        self.rss_delta().map(|d| d as f64 / held as f64)
    }
}

/// What the server's metrics said (deltas over the run where that makes sense).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerFigures {
    /// Server RSS before the first call.
    pub rss_before: Option<u64>,
    /// Server RSS after the last call.
    pub rss_after: Option<u64>,
    /// `pushpark_calls_total` over the run.
    pub calls: Option<f64>,
    /// `pushpark_calls_parked_total` over the run.
    pub calls_parked: Option<f64>,
    /// `pushpark_pushes_total` (all labels) over the run.
    pub pushes: Option<f64>,
    /// `pushpark_call_outcomes_total` by code over the run.
    pub outcomes: BTreeMap<String, f64>,
    /// `pushpark_app_answers_total` by result (`taken`, `conflict`, …) over the run.
    pub app_answers: BTreeMap<String, f64>,
    /// Mean of `pushpark_wakeup_delay_seconds` over the run.
    pub wakeup_delay_mean: Option<Duration>,
    /// `pushpark_core_calls` at the end.
    pub core_calls_after: Option<f64>,
    /// `pushpark_transactions` at the end.
    pub transactions_after: Option<f64>,
    /// CPU time (user and system) the server process used during the calls, when its pid
    /// is known.
    pub cpu: Option<Duration>,
    /// Datagrams its UDP socket dropped during the calls because its receive buffer was full
    /// (a loopback server, Linux).
    pub udp_drops: Option<u64>,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Park, hold or relay.
    pub mode: Mode,
    /// UDP or TCP.
    pub transport: Transport,
    /// Devices registered.
    pub devices: u64,
    /// From the first INVITE until the last call ended.
    pub duration: Duration,
    /// Calls started.
    pub attempted: u64,
    /// Calls that ended as expected (answered and hung up, or busy / declined as told, or
    /// in hold mode released).
    pub completed: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Calls the server refused: a 503 to the INVITE before anything else (ACKed, not
    /// retried, not a failure).
    pub shed: u64,
    /// Of the failed calls, those the server had accepted (sent anything but a 503 for).
    pub accepted_but_failed: u64,
    /// The shed calls' Retry-After, in seconds: how many calls got each value.
    pub retry_after: BTreeMap<u32, u64>,
    /// Shed calls whose 503 had no (readable) Retry-After.
    pub shed_without_retry_after: u64,
    /// What was sent and received again, over all calls.
    pub retransmissions: Retransmissions,
    /// Final responses to the INVITEs, by code.
    pub outcomes: BTreeMap<u16, u64>,
    /// Failures by cause (calls, and problems of no one call).
    pub failures: BTreeMap<String, u64>,
    /// Rejections the devices were told to give (486, 603), by code.
    pub expected_rejections: BTreeMap<u16, u64>,
    /// INVITE sent → 200 at the caller.
    pub latency: Option<Percentiles>,
    /// INVITE sent → push at the webhook (loopback round trips included).
    pub push_overhead: Option<Percentiles>,
    /// Wake-up REGISTER sent → parked INVITE at the device (loopback round trips included).
    pub wake_overhead: Option<Percentiles>,
    /// Park: push at the webhook → the caller's final response (whatever it is: 200, or
    /// the 486 / 603 of a device, or of the server for an answer from the push). With
    /// `--busy-ratio 1` it is the busy of the SIP path (wake-up REGISTER, INVITE, the
    /// device's 486, relayed); with `--answer-from-push busy` the busy of the app API.
    pub push_to_final: Option<Percentiles>,
    /// The answer from the push posted → the app API's reply (HTTP over loopback).
    pub app_round_trip: Option<Percentiles>,
    /// Calls whose device sent a wake-up REGISTER.
    pub wake_ups: u64,
    /// Calls whose device answered from its push over the app API.
    pub answers_from_push: u64,
    /// What every device answered from its push, if it did.
    pub answer_from_push: Option<AnswerFromPush>,
    /// Pushes for calls that reached the webhook.
    pub pushes: u64,
    /// Calls pushed more than once.
    pub pushed_twice: u64,
    /// Calls never pushed.
    pub not_pushed: u64,
    /// Messages for no call in flight (late retransmissions).
    pub stray: u64,
    /// Hold mode figures.
    pub hold: Option<HoldReport>,
    /// The overload scenario's phases and recovery (`--overload`).
    pub overload: Option<OverloadReport>,
    /// CPU time (user and system) this process used during the calls (an in-process
    /// server's included).
    pub loadgen_cpu: Option<Duration>,
    /// Datagrams the load generator's UDP sockets dropped during the calls because their
    /// receive buffers were full (Linux).
    pub loadgen_udp_drops: Option<u64>,
    /// The load generator's own peak RSS (an in-process server's included; Linux).
    pub loadgen_peak_rss: Option<u64>,
    /// The server's own figures (node A's, the callers' node, in a cluster).
    pub server: ServerFigures,
    /// A cluster: the figures of node B, where the devices registered and woke up.
    pub devices_node: Option<ServerFigures>,
    /// A cluster: what the Redis the nodes share did during the calls (the load
    /// generator's own INFO left out).
    pub redis: Option<RedisStats>,
}

/// What the run's tallies hold, for [`Report`].
pub(crate) struct Tallied {
    pub outcomes: BTreeMap<u16, u64>,
    pub failures: BTreeMap<String, u64>,
    pub expected_rejections: BTreeMap<u16, u64>,
    pub latency: Option<Percentiles>,
    pub push_overhead: Option<Percentiles>,
    pub wake_overhead: Option<Percentiles>,
    pub push_to_final: Option<Percentiles>,
    pub app_round_trip: Option<Percentiles>,
    pub wake_ups: u64,
    pub answers_from_push: u64,
    pub pushes: u64,
    pub pushed_twice: u64,
    pub not_pushed: u64,
    pub accepted_but_failed: u64,
    pub retry_after: BTreeMap<u32, u64>,
    pub shed_without_retry_after: u64,
    pub retransmissions: Retransmissions,
}

impl Stats {
    /// The tallies, summarised.
    pub fn tallied(&self) -> Tallied {
        let t = self.tallies();
        Tallied {
            outcomes: t.outcomes.clone(),
            failures: t.failures.clone(),
            expected_rejections: t.expected_rejections.clone(),
            latency: Percentiles::of(&t.latency),
            push_overhead: Percentiles::of(&t.push),
            wake_overhead: Percentiles::of(&t.wake),
            push_to_final: Percentiles::of(&t.push_final),
            app_round_trip: Percentiles::of(&t.app),
            wake_ups: t.wake_ups,
            answers_from_push: t.answers_from_push,
            pushes: t.pushes,
            pushed_twice: t.pushed_twice,
            not_pushed: t.not_pushed,
            accepted_but_failed: t.accepted_but_failed,
            retry_after: t.retry_after.clone(),
            shed_without_retry_after: t.shed_without_retry_after,
            retransmissions: t.retransmissions,
        }
    }
}

impl Report {
    /// No call failed and nothing else went wrong: every call completed or was shed (a
    /// shed call is the server's to decide; whether an overload run met its target is
    /// [`OverloadReport::met_target`]).
    pub fn success(&self) -> bool {
        self.failed == 0 && self.failures.is_empty() && self.completed + self.shed == self.attempted
    }

    /// Completed calls per second of the run.
    pub fn calls_per_second(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.completed as f64 / secs
        } else {
            0.0
        }
    }

    /// `total` divided among the completed calls.
    fn per_call(&self, total: Duration) -> Option<Duration> {
        let calls = u32::try_from(self.completed).ok().filter(|&n| n > 0)?;
        Some(total / calls)
    }

    /// CPU time the server used during the calls: both nodes' of a cluster, added up.
    pub fn server_cpu(&self) -> Option<Duration> {
        match &self.devices_node {
            Some(b) => Some(self.server.cpu? + b.cpu?),
            None => self.server.cpu,
        }
    }

    /// The server's CPU time per completed call (both nodes of a cluster).
    pub fn server_cpu_per_call(&self) -> Option<Duration> {
        self.per_call(self.server_cpu()?)
    }

    /// Redis commands per completed call.
    pub fn redis_commands_per_call(&self) -> Option<f64> {
        let redis = self.redis.as_ref()?;
        (self.completed > 0).then(|| redis.total_calls() as f64 / self.completed as f64)
    }

    /// Redis's CPU time per completed call.
    pub fn redis_cpu_per_call(&self) -> Option<Duration> {
        self.per_call(self.redis.as_ref()?.cpu?)
    }

    /// A figure of each node that has it: the server's, or nodes A's and B's.
    fn by_node<T>(&self, figure: impl Fn(&ServerFigures) -> Option<T>) -> Vec<(&'static str, T)> {
        let nodes = match &self.devices_node {
            Some(b) => vec![("node A", &self.server), ("node B", b)],
            None => vec![("server", &self.server)],
        };
        (nodes.into_iter())
            .filter_map(|(name, node)| Some((name, figure(node)?)))
            .collect()
    }

    /// How the calls crossed the servers, for titles.
    pub fn setup(&self) -> &'static str {
        if self.devices_node.is_some() {
            "two nodes on Redis"
        } else {
            "one node"
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let percentiles = |p: Option<Percentiles>| p.map_or(Value::Null, Percentiles::to_json);
        let hold = self.hold.as_ref().map_or(Value::Null, |h| {
            json!({
                "calls": h.calls,
                "held": h.held,
                "parked_gauge": h.parked_gauge,
                "time_to_hold_s": h.time_to_hold.as_secs_f64(),
                "rss_before_bytes": h.rss_before,
                "rss_held_bytes": h.rss_held,
                "rss_delta_bytes": h.rss_delta(),
                "rss_bytes_per_call": h.bytes_per_call(),
                "released": h.released,
                "drained": h.drained,
            })
        });
        let us = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6);
        let redis = self.redis.as_ref().map_or(Value::Null, |r| {
            let commands: serde_json::Map<_, _> = (r.commands.iter())
                .map(|(name, c)| (name.clone(), json!({"calls": c.calls, "usec": c.usec})))
                .collect();
            json!({
                "commands": commands,
                "commands_total": r.total_calls(),
                "commands_usec_total": r.total_usec(),
                "commands_per_call": self.redis_commands_per_call(),
                "cpu_s": r.cpu.map(|d| d.as_secs_f64()),
                "cpu_per_call_us": us(self.redis_cpu_per_call()),
            })
        });
        let mut retry_after: serde_json::Map<_, _> = (self.retry_after.iter())
            .map(|(secs, n)| (secs.to_string(), json!(n)))
            .collect();
        if self.shed_without_retry_after > 0 {
            retry_after.insert("none".to_owned(), json!(self.shed_without_retry_after));
        }
        json!({
            "mode": self.mode.to_string(),
            "transport": self.transport.to_string(),
            "setup": self.setup(),
            "devices": self.devices,
            "duration_s": self.duration.as_secs_f64(),
            "attempted": self.attempted,
            "completed": self.completed,
            "failed": self.failed,
            "shed": self.shed,
            "accepted_but_failed": self.accepted_but_failed,
            "retry_after_s": retry_after,
            "retransmissions": self.retransmissions.to_json(),
            "calls_per_second": self.calls_per_second(),
            "success": self.success(),
            "outcomes": self.outcomes.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "failures": self.failures,
            "expected_rejections": self.expected_rejections.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "latency_invite_to_200": percentiles(self.latency),
            "overhead_invite_to_push": percentiles(self.push_overhead),
            "overhead_register_to_invite": percentiles(self.wake_overhead),
            "latency_push_to_final_response": percentiles(self.push_to_final),
            "app_api_round_trip": percentiles(self.app_round_trip),
            "answer_from_push": self.answer_from_push.map(|a| a.as_str()),
            "wake_up_registers": self.wake_ups,
            "answers_from_push": self.answers_from_push,
            "pushes": self.pushes,
            "calls_pushed_twice": self.pushed_twice,
            "calls_not_pushed": self.not_pushed,
            "stray_messages": self.stray,
            "hold": hold,
            "overload": self.overload.as_ref().map_or(Value::Null, OverloadReport::to_json),
            "loadgen_cpu_s": self.loadgen_cpu.map(|d| d.as_secs_f64()),
            "loadgen_udp_drops": self.loadgen_udp_drops,
            "loadgen_peak_rss_bytes": self.loadgen_peak_rss,
            "server": self.server.to_json(),
            "server_cpu_per_call_us": us(self.server_cpu_per_call()),
            "devices_node": self.devices_node.as_ref().map_or(Value::Null, ServerFigures::to_json),
            "redis": redis,
        })
    }
}

impl ServerFigures {
    fn to_json(&self) -> Value {
        json!({
            "rss_before_bytes": self.rss_before,
            "rss_after_bytes": self.rss_after,
            "calls": self.calls,
            "calls_parked": self.calls_parked,
            "pushes": self.pushes,
            "outcomes": self.outcomes,
            "app_answers": self.app_answers,
            "wakeup_delay_mean_s": self.wakeup_delay_mean.map(|d| d.as_secs_f64()),
            "core_calls_after": self.core_calls_after,
            "transactions_after": self.transactions_after,
            "cpu_s": self.cpu.map(|d| d.as_secs_f64()),
            "udp_drops": self.udp_drops,
        })
    }

    /// Its metrics in one line (`None` when it exposes none).
    fn metrics_line(&self) -> Option<String> {
        let mut figures = Vec::new();
        let mut add = |name: &str, v: Option<f64>| {
            if let Some(v) = v {
                figures.push(format!("{name} {v}"));
            }
        };
        add("calls", self.calls);
        add("parked", self.calls_parked);
        add("pushes", self.pushes);
        add("core calls now", self.core_calls_after);
        add("transactions now", self.transactions_after);
        if let Some(d) = self.wakeup_delay_mean {
            figures.push(format!("mean wake-up delay {}", short(d)));
        }
        if !self.outcomes.is_empty() {
            figures.push(format!("outcomes {}", counts(&self.outcomes)));
        }
        if !self.app_answers.is_empty() {
            figures.push(format!("app answers {}", counts(&self.app_answers)));
        }
        (!figures.is_empty()).then(|| figures.join(", "))
    }
}

/// Commands per completed call, in all and by command (most called first), and the time
/// Redis spent executing them.
fn redis_commands(redis: &RedisStats, completed: u64) -> String {
    let calls = completed.max(1) as f64;
    let mut by_command: Vec<_> = redis.commands.iter().collect();
    by_command.sort_by_key(|(_, c)| std::cmp::Reverse(c.calls));
    let each = (by_command.iter())
        .map(|(name, c)| format!("{name} {:.2}", c.calls as f64 / calls))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{:.2} per completed call ({each}; {} in all), executing them {:.1} µs per call",
        redis.total_calls() as f64 / calls,
        redis.total_calls(),
        redis.total_usec() as f64 / calls
    )
}

fn counts<K: fmt::Display, V: fmt::Display>(map: &BTreeMap<K, V>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, what: &str, value: String| {
            writeln!(f, "  {what:<40} {value}")
        };
        writeln!(
            f,
            "pushpark loadgen: {} over {}, {} devices, {}{}",
            self.mode,
            self.transport,
            self.devices,
            self.setup(),
            if self.devices_node.is_some() {
                " (INVITEs to node A, REGISTERs to node B)"
            } else {
                ""
            }
        )?;
        line(
            f,
            "duration",
            format!("{:.2} s", self.duration.as_secs_f64()),
        )?;
        let calls = if self.shed > 0 || self.accepted_but_failed > 0 || self.overload.is_some() {
            format!(
                "{} attempted, {} completed, {} shed (503), {} failed ({} accepted but failed)",
                self.attempted, self.completed, self.shed, self.failed, self.accepted_but_failed
            )
        } else {
            format!(
                "{} attempted, {} completed, {} failed",
                self.attempted, self.completed, self.failed
            )
        };
        line(f, "calls", calls)?;
        if self.mode != Mode::Hold {
            line(
                f,
                "throughput",
                format!("{:.0} completed calls/s", self.calls_per_second()),
            )?;
        }
        line(f, "final responses", counts(&self.outcomes))?;
        if !self.expected_rejections.is_empty() {
            line(
                f,
                "rejections asked of devices",
                counts(&self.expected_rejections),
            )?;
        }
        line(f, "failures", counts(&self.failures))?;
        if self.shed > 0 {
            let mut retry_after: Vec<String> = (self.retry_after.iter())
                .map(|(secs, n)| format!("{secs} s × {n}"))
                .collect();
            if self.shed_without_retry_after > 0 {
                retry_after.push(format!("none × {}", self.shed_without_retry_after));
            }
            line(
                f,
                "shed: Retry-After",
                format!("{} (not retried)", retry_after.join(", ")),
            )?;
        }
        line(f, "retransmissions", self.retransmissions.to_string())?;
        let none = || "no data".to_owned();
        if self.mode != Mode::Hold {
            line(
                f,
                "latency INVITE → 200 (caller)",
                self.latency.map_or_else(none, |p| p.to_string()),
            )?;
        }
        if self.mode == Mode::Park {
            line(
                f,
                "latency push → caller's final response",
                self.push_to_final.map_or_else(none, |p| p.to_string()),
            )?;
            if self.answer_from_push.is_some() || self.answers_from_push > 0 {
                line(
                    f,
                    "app API answer → reply (app)",
                    self.app_round_trip.map_or_else(none, |p| p.to_string()),
                )?;
            }
        }
        if self.mode != Mode::Relay {
            line(
                f,
                "overhead INVITE → push (webhook)",
                self.push_overhead.map_or_else(none, |p| p.to_string()),
            )?;
        }
        if self.mode == Mode::Park {
            line(
                f,
                "overhead REGISTER → INVITE (device)",
                self.wake_overhead.map_or_else(none, |p| p.to_string()),
            )?;
            writeln!(
                f,
                "  {:<40} (parking overheads include the loopback round trips and the load \
                 generator's own scheduling)",
                ""
            )?;
        }
        let pushes = if self.mode == Mode::Relay {
            format!("{} received (none expected)", self.pushes)
        } else {
            format!(
                "{} received, {} calls pushed more than once, {} calls not pushed",
                self.pushes, self.pushed_twice, self.not_pushed
            )
        };
        line(f, "pushes", pushes)?;
        if self.mode == Mode::Park {
            let answered = match self.answer_from_push {
                Some(answer) => format!(
                    "{} wake-up REGISTERs, {} answers from the push ({answer})",
                    self.wake_ups, self.answers_from_push
                ),
                None => format!("{} wake-up REGISTERs", self.wake_ups),
            };
            line(f, "devices", answered)?;
        }
        if self.stray > 0 {
            line(f, "stray messages", self.stray.to_string())?;
        }
        if let Some(h) = &self.hold {
            line(
                f,
                "held",
                format!(
                    "{} of {} calls in {:.2} s (server parked gauge: {})",
                    h.held,
                    h.calls,
                    h.time_to_hold.as_secs_f64(),
                    h.parked_gauge
                        .map_or("absent".to_owned(), |g| format!("{g}"))
                ),
            )?;
            let rss = match (h.rss_before, h.rss_held, h.rss_delta(), h.bytes_per_call()) {
                (Some(before), Some(held), Some(delta), Some(per_call)) => format!(
                    "{} before, {} held, delta {:.1} MB, {:.0} bytes per parked call",
                    megabytes(before),
                    megabytes(held),
                    delta as f64 / 1e6,
                    per_call
                ),
                _ => "not measured (no RSS metric and no server pid)".to_owned(),
            };
            line(f, "server RSS", rss)?;
            line(
                f,
                "released by CANCEL",
                format!(
                    "{} (server back to no calls: {})",
                    h.released,
                    match h.drained {
                        Some(true) => "yes",
                        Some(false) => "NO",
                        None => "unknown",
                    }
                ),
            )?;
        } else if let (Some(before), Some(after)) = (self.server.rss_before, self.server.rss_after)
        {
            line(
                f,
                "server RSS",
                format!("{} before, {} after", megabytes(before), megabytes(after)),
            )?;
        }
        let share = |cpu: Duration| {
            let secs = self.duration.as_secs_f64();
            let percent = if secs > 0.0 {
                cpu.as_secs_f64() / secs * 100.0
            } else {
                0.0
            };
            format!("{:.2} s ({percent:.0}% of one core)", cpu.as_secs_f64())
        };
        let mut cpu = Vec::new();
        if let Some(own) = self.loadgen_cpu {
            cpu.push(format!("loadgen {}", share(own)));
        }
        for (node, used) in self.by_node(|s| s.cpu) {
            cpu.push(format!("{node} {}", share(used)));
        }
        if let Some(used) = self.redis.as_ref().and_then(|r| r.cpu) {
            cpu.push(format!("redis {}", share(used)));
        }
        if !cpu.is_empty() {
            line(f, "CPU during the calls", cpu.join(", "))?;
        }
        let mut per_call = Vec::new();
        let server = match self.devices_node {
            Some(_) => "server (nodes A + B)",
            None => "server",
        };
        if let Some(used) = self.server_cpu_per_call() {
            per_call.push(format!("{server} {}", short(used)));
        }
        if let Some(used) = self.redis_cpu_per_call() {
            per_call.push(format!("redis {}", short(used)));
        }
        if let Some(used) = self.loadgen_cpu.and_then(|own| self.per_call(own)) {
            per_call.push(format!("loadgen {}", short(used)));
        }
        if !per_call.is_empty() {
            line(f, "CPU per completed call", per_call.join(", "))?;
        }
        let mut drops: Vec<String> = (self.by_node(|s| s.udp_drops).into_iter())
            .map(|(node, n)| format!("{node} socket {n}"))
            .collect();
        drops.extend(
            self.loadgen_udp_drops
                .map(|n| format!("loadgen sockets {n}")),
        );
        if !drops.is_empty() {
            line(f, "UDP datagrams dropped (buffer full)", drops.join(", "))?;
        }
        if let Some(peak) = self.loadgen_peak_rss {
            line(f, "loadgen peak RSS", megabytes(peak))?;
        }
        match &self.devices_node {
            Some(b) => {
                if let Some(m) = self.server.metrics_line() {
                    line(f, "node A metrics (callers' INVITEs)", m)?;
                }
                if let Some(m) = b.metrics_line() {
                    line(f, "node B metrics (devices' REGISTERs)", m)?;
                }
            }
            None => {
                if let Some(m) = self.server.metrics_line() {
                    line(f, "server metrics", m)?;
                }
            }
        }
        if let Some(redis) = &self.redis {
            line(f, "redis commands", redis_commands(redis, self.completed))?;
        }
        if let Some(overload) = &self.overload {
            overload.write(f, &line)?;
        }
        Ok(())
    }
}

/// Runs side by side, one column each (in the order they ran): throughput, the parking
/// overheads, CPU and Redis per completed call.
pub fn side_by_side(runs: &[Report]) -> String {
    let p50_p99 = |p: Option<Percentiles>| {
        p.map_or_else(
            || "-".to_owned(),
            |p| format!("{} / {}", short(p.p50), short(p.p99)),
        )
    };
    let per_call = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), short);
    type Cell<'a> = &'a dyn Fn(&Report) -> String;
    let rows: [(&str, Cell<'_>); 10] = [
        ("setup", &|r| r.setup().to_owned()),
        ("calls completed / failed", &|r| {
            format!("{} / {}", r.completed, r.failed)
        }),
        ("completed calls/s", &|r| {
            format!("{:.0}", r.calls_per_second())
        }),
        ("INVITE → push p50 / p99", &|r| p50_p99(r.push_overhead)),
        ("REGISTER → INVITE p50 / p99", &|r| {
            p50_p99(r.wake_overhead)
        }),
        ("INVITE → 200 p50 / p99", &|r| p50_p99(r.latency)),
        ("server CPU per call", &|r| {
            per_call(r.server_cpu_per_call())
        }),
        ("redis commands per call", &|r| {
            r.redis_commands_per_call()
                .map_or_else(|| "-".to_owned(), |n| format!("{n:.2}"))
        }),
        ("redis CPU per call", &|r| per_call(r.redis_cpu_per_call())),
        ("loadgen CPU per call", &|r| {
            per_call(r.loadgen_cpu.and_then(|own| r.per_call(own)))
        }),
    ];
    let cells: Vec<Vec<String>> = (rows.iter())
        .map(|(_, cell)| runs.iter().map(cell).collect())
        .collect();
    let label_width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..runs.len())
        .map(|i| {
            let widest = cells.iter().map(|row| row[i].chars().count()).max();
            widest.unwrap_or(0).max(format!("run {}", i + 1).len())
        })
        .collect();
    let mut out = String::new();
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    out.push_str(&pad("", label_width));
    for (i, w) in widths.iter().enumerate() {
        out.push_str(" | ");
        out.push_str(&pad(&format!("run {}", i + 1), *w));
    }
    out.push('\n');
    for ((label, _), row) in rows.iter().zip(&cells) {
        out.push_str(&pad(label, label_width));
        for (cell, w) in row.iter().zip(&widths) {
            out.push_str(" | ");
            out.push_str(&pad(cell, *w));
        }
        out.push('\n');
    }
    out
}
