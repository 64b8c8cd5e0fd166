//! A load generator for pushpark over real UDP or TCP on loopback.
//!
//! It plays every party of a parked call against a running server: N sleeping devices
//! register with RFC 8599 push parameters; it serves the webhook the server pushes to;
//! callers INVITE at a set rate (or as fast as a cap on calls in flight allows); each
//! device wakes on its push after a set delay, REGISTERs again, rings and answers (or is
//! busy, or declines, at set ratios); ACK and BYE end each call. A call whose INVITE the
//! server refuses with a 503 before accepting it is *shed*: ACKed, counted apart from the
//! failures with its Retry-After, not retried. Three modes:
//!
//! * [`Mode::Park`]: every call is parked, pushed, woken and delivered (the push path).
//!   With [`Options::answer_from_push`] the devices never wake their SIP stack: each app
//!   answers `busy` or `decline` from its push over the server's app API (specs/parking.md
//!   §9), posting the push's `answer_token` to its `answer_url`, and the caller gets the
//!   server's 486 or 603.
//! * [`Mode::Hold`]: N calls are kept parked at once (devices never wake) to measure the
//!   server's memory per parked call, then released by CANCEL.
//! * [`Mode::Relay`]: devices register without push parameters and stay reachable, so
//!   calls take the plain proxy path.
//!
//! Park and relay also run the overload scenario ([`Options::overload`], see
//! [`OverloadReport`]): a warm-up at the base rate, an overload at a multiple of it, a
//! recovery at the base rate, and per phase what was offered, completed and shed, how
//! fast, and how soon after the overload the server was back to normal.
//!
//! It stays cheap: a few sockets shared by all devices and callers (`link.rs`), one task per
//! call in flight playing both of its ends (`call.rs`), and messages routed to calls by
//! identifiers written into their Call-IDs and branches (`router.rs`). Answers from the
//! push go over one HTTP client with keep-alive (a pool of connections reused call after
//! call). It reports completed calls per second, outcomes, failures by cause, the INVITE →
//! 200 latency at the caller, the server's parking overhead (INVITE → push, wake-up
//! REGISTER → INVITE), and, park mode, the time from the push at the webhook to the caller's
//! final response, which compares a busy answered from the push with a busy answered over
//! SIP (`--answer-from-push busy` against `--busy-ratio 1`), calls shed, and the
//! retransmissions sent and received (a retransmission storm shows there), see [`Report`].
//!
//! Library use (what the tests do with an in-process server): bind a [`Webhook`] first, give
//! its address to [`server::config_text`], start the server on that configuration, then
//! [`run`] against a [`Target`]. With [`Options::answer_from_push`], give the configuration
//! a free port for the app API too (not port 0: the pushes carry the URL as configured).

pub mod cluster;
pub mod metrics;
pub mod redis;
pub mod server;
pub mod webhook;

mod call;
mod device;
mod link;
mod overload;
mod report;
mod router;
mod sip;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

pub use overload::{Overload, OverloadReport, PhaseReport, Recovery};
pub use pushpark::config::Transport;
pub use report::{side_by_side, HoldReport, Percentiles, Report, Retransmissions, ServerFigures};
pub use webhook::Webhook;

use device::Devices;
use link::{Link, Side};
use metrics::Scrape;
use overload::{CpuSample, Observed, Schedule};
use redis::RedisStats;
use report::Stats;
use router::Router;

/// How long hold mode waits, after the last INVITE, for every call to be parked.
const HOLD_SETTLE: Duration = Duration::from_secs(30);
/// How long hold mode waits, after the release, for the server to hold no call.
const DRAIN_WAIT: Duration = Duration::from_secs(15);
/// How much longer than the park timeout a call may take before it is a time-out.
const CALL_GRACE: Duration = Duration::from_secs(5);

/// How every app answers from its push, instead of waking its SIP stack (park mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerFromPush {
    /// `busy`: the caller gets the server's 486.
    Busy,
    /// `decline`: the caller gets the server's 603.
    Decline,
}

impl AnswerFromPush {
    /// The answer as the app API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerFromPush::Busy => "busy",
            AnswerFromPush::Decline => "decline",
        }
    }
}

impl fmt::Display for AnswerFromPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AnswerFromPush {
    type Err = String;

    fn from_str(s: &str) -> Result<AnswerFromPush, String> {
        match s {
            "busy" => Ok(AnswerFromPush::Busy),
            "decline" => Ok(AnswerFromPush::Decline),
            other => Err(format!("unknown answer {other:?} (busy or decline)")),
        }
    }
}

/// What the load generator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Calls to sleeping devices: parked, pushed, woken, delivered, answered, hung up.
    Park,
    /// `calls` calls kept parked at once, then cancelled: memory per parked call.
    Hold,
    /// Calls to awake, reachable devices: the plain proxy path.
    Relay,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Park => "park",
            Mode::Hold => "hold",
            Mode::Relay => "relay",
        })
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "park" => Ok(Mode::Park),
            "hold" => Ok(Mode::Hold),
            "relay" => Ok(Mode::Relay),
            other => Err(format!("unknown mode {other:?} (park, hold or relay)")),
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Park, hold or relay.
    pub mode: Mode,
    /// UDP or TCP, for callers and devices alike.
    pub transport: Transport,
    /// Calls in all (hold: calls held at once); an overload run's phases decide instead.
    pub calls: u64,
    /// Calls started per second; 0 starts them as fast as the other limits allow. An
    /// overload run's base rate.
    pub rate: f64,
    /// Park, relay: run the overload scenario at base rate [`Options::rate`] instead of
    /// [`Options::calls`] calls.
    pub overload: Option<Overload>,
    /// Calls in flight at most (park, relay); hold: calls started and not yet parked.
    pub max_in_flight: usize,
    /// Devices registered; `None` picks a number from the others (see
    /// [`Options::device_count`]).
    pub devices: Option<usize>,
    /// Park: from a device's push to its wake-up REGISTER (or its answer from the push).
    pub wake_delay: Duration,
    /// Share of calls the device answers 486 Busy Here.
    pub busy_ratio: f64,
    /// Share of calls the device answers 603 Decline.
    pub decline_ratio: f64,
    /// Park: every app answers this from its push over the server's app API (which the
    /// generated configuration then turns on) instead of waking and registering; the caller
    /// expects the server's 486 or 603. After [`Options::wake_delay`], as a wake-up would.
    pub answer_from_push: Option<AnswerFromPush>,
    /// Sockets (UDP) or connections (TCP) the callers, and the devices, each spread over.
    pub sockets: usize,
    /// The server's park timeout (also in the generated configuration); a call that has
    /// no final response 5 s after it is a time-out.
    pub park_timeout: Duration,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

impl Options {
    /// The defaults for `mode`: 10,000 calls as fast as 500 in flight allow, over UDP,
    /// 4 sockets, no wake-up delay, every call answered, park timeout 30 s (hold: 10 min).
    pub fn new(mode: Mode) -> Options {
        Options {
            mode,
            transport: Transport::Udp,
            calls: 10_000,
            rate: 0.0,
            overload: None,
            max_in_flight: 500,
            devices: None,
            wake_delay: Duration::ZERO,
            busy_ratio: 0.0,
            decline_ratio: 0.0,
            answer_from_push: None,
            sockets: 4,
            park_timeout: match mode {
                Mode::Hold => Duration::from_secs(600),
                Mode::Park | Mode::Relay => Duration::from_secs(30),
            },
            progress: true,
        }
    }

    /// Devices to register: as asked, or else as many as calls but at most twice the calls
    /// in flight (park, relay: a call takes a free device, so this bounds concurrency), or
    /// at most 10,000 (hold: the calls share the devices round robin).
    pub fn device_count(&self) -> usize {
        let calls = usize::try_from(self.planned_calls()).unwrap_or(usize::MAX);
        let auto = match self.mode {
            Mode::Hold => calls.min(10_000),
            Mode::Park | Mode::Relay => calls.min(self.max_in_flight.saturating_mul(2)),
        };
        self.devices.unwrap_or(auto).max(1)
    }

    /// Calls the run starts: [`Options::calls`], or all the overload scenario's phases'.
    pub fn planned_calls(&self) -> u64 {
        self.schedule().map_or(self.calls, |s| s.calls())
    }

    fn schedule(&self) -> Option<Schedule> {
        Some(Schedule::new(self.rate, self.overload.as_ref()?))
    }

    /// Checks the options make sense together.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let usage = |s: &str| Err(LoadgenError::Usage(s.to_owned()));
        if let Some(overload) = &self.overload {
            if self.mode == Mode::Hold {
                return usage("--overload is for park and relay");
            }
            overload.check(self.rate).map_err(LoadgenError::Usage)?;
        } else if self.calls == 0 {
            return usage("--calls must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return usage("--rate must be a number of calls per second, 0 or more");
        }
        if self.max_in_flight == 0 || self.max_in_flight > u32::MAX as usize / 2 {
            return usage("--max-in-flight must be at least 1");
        }
        if self.mode == Mode::Hold && self.calls > u64::from(u32::MAX / 2) {
            return usage("--calls is too large to hold at once");
        }
        if self.devices == Some(0) || self.device_count() > u32::MAX as usize {
            return usage("--devices must be at least 1");
        }
        if self.sockets == 0 || self.sockets > 1024 {
            return usage("--sockets must be between 1 and 1024");
        }
        let ratio = |r: f64| r.is_finite() && (0.0..=1.0).contains(&r);
        if !ratio(self.busy_ratio)
            || !ratio(self.decline_ratio)
            || self.busy_ratio + self.decline_ratio > 1.0
        {
            return usage(
                "--busy-ratio and --decline-ratio must be in 0..1 and add up to 1 at most",
            );
        }
        if self.answer_from_push.is_some() {
            if self.mode != Mode::Park {
                return usage("--answer-from-push is for park mode");
            }
            if self.busy_ratio > 0.0 || self.decline_ratio > 0.0 {
                return usage(
                    "--answer-from-push answers every call: no --busy-ratio or --decline-ratio",
                );
            }
        }
        if self.park_timeout.is_zero() {
            return usage("--park-timeout must not be zero");
        }
        Ok(())
    }

    fn call_timeout(&self) -> Duration {
        self.park_timeout + CALL_GRACE
    }
}

/// A pushpark server (a node of a cluster, or the one node) a run goes against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Its SIP address for the run's transport.
    pub sip: SocketAddr,
    /// Its admin listener (metrics), if it has one.
    pub admin: Option<SocketAddr>,
    /// Its process id, for its CPU time, and its RSS when it exposes no RSS metric.
    pub pid: Option<u32>,
}

/// What a run goes against.
pub struct Target {
    /// The server callers send their INVITEs to (node A of a cluster), and devices register
    /// on unless `devices_node` says otherwise.
    pub node: Node,
    /// A cluster's other node, which the devices register and wake up on (node B): every
    /// call then crosses from one node to the other.
    pub devices_node: Option<Node>,
    /// The Redis a cluster's nodes share, for the commands it ran and its CPU time.
    pub redis: Option<SocketAddr>,
    /// The webhook the server pushes to (bound before the server was configured).
    pub webhook: Webhook,
}

impl Target {
    /// Where the devices register.
    fn devices_sip(&self) -> SocketAddr {
        self.devices_node.as_ref().unwrap_or(&self.node).sip
    }
}

/// Why a run could not be carried out (failed calls are not errors: see [`Report`]).
#[derive(Debug)]
pub enum LoadgenError {
    /// Options that do not make sense.
    Usage(String),
    /// A socket, file or process operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The devices could not all register.
    Registration(String),
    /// The server could not be started or reached.
    Server(String),
}

impl fmt::Display for LoadgenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadgenError::Usage(what) => write!(f, "{what}"),
            LoadgenError::Io { what, source } => write!(f, "{what}: {source}"),
            LoadgenError::Registration(what) => write!(f, "registration failed: {what}"),
            LoadgenError::Server(what) => write!(f, "server: {what}"),
        }
    }
}

impl std::error::Error for LoadgenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadgenError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What every call's task shares.
pub(crate) struct Ctx {
    pub run: u32,
    pub mode: Mode,
    pub transport: Transport,
    /// Where callers send (devices send to [`Devices::server`]).
    pub server: SocketAddr,
    pub router: Arc<Router>,
    pub devices: Devices,
    pub callers: Vec<Arc<Link>>,
    pub stats: Stats,
    pub wake_delay: Duration,
    pub call_timeout: Duration,
    pub busy_ratio: f64,
    pub decline_ratio: f64,
    pub answer_from_push: Option<AnswerFromPush>,
    /// The HTTP client of the metrics scrapes and of every answer from the push: one pool
    /// of kept-alive connections, reused call after call.
    pub http: reqwest::Client,
}

/// An identifier for this run, so messages of an earlier run are told apart.
fn run_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
    nanos ^ std::process::id().rotate_left(16)
}

/// Runs the load described by `options` against `target` and reports what happened.
pub async fn run(options: &Options, target: &Target) -> Result<Report, LoadgenError> {
    options.validate()?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| LoadgenError::Server(format!("HTTP client: {e}")))?;
    let router = Arc::clone(target.webhook.router());
    let run = run_id();
    router.start_run(run);
    let io = |what: &'static str| {
        move |source| LoadgenError::Io {
            what: what.to_owned(),
            source,
        }
    };
    let mut callers = Vec::with_capacity(options.sockets);
    for _ in 0..options.sockets {
        let link = Link::open(options.transport, Side::Caller, target.node.sip, &router)
            .await
            .map_err(io("opening a caller socket"))?;
        callers.push(link);
    }
    let opened = Devices::open(options, target.devices_sip(), &router, run).await;
    let (devices, mut pool) = match opened {
        Ok(opened) => opened,
        Err(source) => {
            callers.iter().for_each(|c| c.shutdown());
            return Err(io("opening a device socket")(source));
        }
    };
    let ctx = Arc::new(Ctx {
        run,
        mode: options.mode,
        transport: options.transport,
        server: target.node.sip,
        router,
        devices,
        callers,
        stats: Stats::new(),
        wake_delay: options.wake_delay,
        call_timeout: options.call_timeout(),
        busy_ratio: options.busy_ratio,
        decline_ratio: options.decline_ratio,
        answer_from_push: options.answer_from_push,
        http,
    });
    let result = drive(&ctx, options, target, &mut pool).await;
    ctx.devices.shutdown();
    for caller in &ctx.callers {
        caller.shutdown();
    }
    result
}

async fn drive(
    ctx: &Arc<Ctx>,
    options: &Options,
    target: &Target,
    pool: &mut mpsc::UnboundedReceiver<u32>,
) -> Result<Report, LoadgenError> {
    let client = &ctx.http;
    let devices = ctx.devices.count();
    if options.progress {
        eprintln!(
            "loadgen: registering {devices} devices over {} ({} sockets)…",
            options.transport, options.sockets
        );
    }
    let registering = Instant::now();
    ctx.devices
        .register_all(&ctx.router)
        .await
        .map_err(LoadgenError::Registration)?;
    ctx.devices.fall_asleep(options.transport, options.mode);
    if options.transport == Transport::Tcp && options.mode != Mode::Relay {
        // Let the server see the registration connections close.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if options.progress {
        eprintln!(
            "loadgen: registered in {:.2} s; {} {} calls…",
            registering.elapsed().as_secs_f64(),
            match options.mode {
                Mode::Hold => "holding",
                Mode::Park => "parking",
                Mode::Relay => "relaying",
            },
            options.planned_calls()
        );
    }
    let counters = ctx.router.counters();
    let node_before = Baseline::take(client, &target.node, ctx.transport).await;
    let devices_node_before = match &target.devices_node {
        Some(node) => Some(Baseline::take(client, node, ctx.transport).await),
        None => None,
    };
    let redis_before = redis_stats(target.redis).await;
    let cpu_before = cpu_time("self");
    let own_ports = own_udp_ports(ctx);
    let drops_before = udp_drops(&own_ports);
    let start = Instant::now();
    let progress = options.progress.then(|| {
        let ctx = Arc::clone(ctx);
        tokio::spawn(async move { ctx.stats.progress(start).await })
    });
    let (duration, hold, observed) = match options.mode {
        Mode::Hold => {
            let (duration, hold) = hold(ctx, options, target, client, node_before.rss).await;
            (duration, Some(hold), Observed::default())
        }
        Mode::Park | Mode::Relay => {
            let nodes = [Some(&target.node), target.devices_node.as_ref()];
            let pids = nodes.into_iter().flatten().map(|n| n.pid).collect();
            let (duration, observed) = load(ctx, options, pool, pids).await;
            (duration, None, observed)
        }
    };
    if let Some(progress) = progress {
        progress.abort();
    }
    let loadgen_cpu = grown(cpu_before, cpu_time("self"));
    let loadgen_udp_drops = grown(drops_before, udp_drops(&own_ports));
    let server = node_before.figures(client, &target.node).await;
    let devices_node = match (devices_node_before, &target.devices_node) {
        (Some(before), Some(node)) => Some(before.figures(client, node).await),
        _ => None,
    };
    let redis = match (redis_before, redis_stats(target.redis).await) {
        (Some(before), Some(after)) => Some(after.since(&before)),
        _ => None,
    };
    let counters = ctx.router.counters().since(&counters);
    for (cause, n) in [
        ("unparsable message from the server", counters.unparsable),
        (
            "TCP connection closed by the server",
            counters.closed_by_server,
        ),
        ("webhook request that is no push", counters.bad_pushes),
    ] {
        ctx.stats.fail(cause.to_owned(), n);
    }
    let tallied = ctx.stats.tallied();
    let overload = options.overload.as_ref().zip(options.schedule());
    let overload = overload.map(|(overload, schedule)| {
        OverloadReport::of(&schedule, overload, ctx.stats.take_records(), &observed)
    });
    Ok(Report {
        mode: options.mode,
        transport: options.transport,
        devices: u64::from(devices),
        duration,
        attempted: ctx.stats.sent.load(Ordering::Relaxed),
        completed: ctx.stats.completed.load(Ordering::Relaxed),
        failed: ctx.stats.failed.load(Ordering::Relaxed),
        shed: ctx.stats.shed.load(Ordering::Relaxed),
        accepted_but_failed: tallied.accepted_but_failed,
        retry_after: tallied.retry_after,
        shed_without_retry_after: tallied.shed_without_retry_after,
        retransmissions: tallied.retransmissions,
        outcomes: tallied.outcomes,
        failures: tallied.failures,
        expected_rejections: tallied.expected_rejections,
        latency: tallied.latency,
        push_overhead: tallied.push_overhead,
        wake_overhead: tallied.wake_overhead,
        push_to_final: tallied.push_to_final,
        app_round_trip: tallied.app_round_trip,
        wake_ups: tallied.wake_ups,
        answers_from_push: tallied.answers_from_push,
        answer_from_push: options.answer_from_push,
        pushes: tallied.pushes + counters.unknown_pushes,
        pushed_twice: tallied.pushed_twice,
        not_pushed: tallied.not_pushed,
        stray: counters.stray,
        hold,
        overload,
        loadgen_cpu,
        loadgen_udp_drops,
        loadgen_peak_rss: status_bytes("self", "VmHWM:"),
        server,
        devices_node,
        redis,
    })
}

/// The UDP ports on 127.0.0.1 of the load generator's own sockets (none over TCP).
fn own_udp_ports(ctx: &Ctx) -> Vec<u16> {
    if ctx.transport != Transport::Udp {
        return Vec::new();
    }
    let mut own: Vec<u16> = ctx.callers.iter().map(|l| l.local().addr.port()).collect();
    own.extend(ctx.devices.local_ports());
    own
}

/// What a node had done when the calls began, to subtract from what it did by their end.
struct Baseline {
    scrape: Option<Scrape>,
    rss: Option<u64>,
    cpu: Option<Duration>,
    /// Its UDP socket on 127.0.0.1 (none over TCP, or elsewhere).
    udp_ports: Vec<u16>,
    udp_drops: Option<u64>,
}

impl Baseline {
    async fn take(client: &reqwest::Client, node: &Node, transport: Transport) -> Baseline {
        let scrape = scrape(client, node.admin).await;
        let udp = transport == Transport::Udp && node.sip.ip().is_loopback();
        let udp_ports = if udp {
            vec![node.sip.port()]
        } else {
            Vec::new()
        };
        Baseline {
            rss: server_rss(scrape.as_ref(), node.pid),
            scrape,
            cpu: node_cpu(node),
            udp_drops: udp_drops(&udp_ports),
            udp_ports,
        }
    }

    /// The node's figures over the calls.
    async fn figures(self, client: &reqwest::Client, node: &Node) -> ServerFigures {
        let cpu = grown(self.cpu, node_cpu(node));
        let udp_drops = grown(self.udp_drops, udp_drops(&self.udp_ports));
        let after = scrape(client, node.admin).await;
        let rss_after = server_rss(after.as_ref(), node.pid);
        let mut figures = server_figures(self.scrape.as_ref(), after.as_ref(), self.rss, rss_after);
        figures.cpu = cpu;
        figures.udp_drops = udp_drops;
        figures
    }
}

/// How much a count or time grew from `before` to `now`, when both are known.
fn grown<T: Copy + Ord + std::ops::Sub<Output = T>>(
    before: Option<T>,
    now: Option<T>,
) -> Option<T> {
    let (before, now) = (before?, now?);
    Some(now.max(before) - before)
}

fn node_cpu(node: &Node) -> Option<Duration> {
    cpu_time(&node.pid?.to_string())
}

async fn redis_stats(redis: Option<SocketAddr>) -> Option<RedisStats> {
    RedisStats::read(redis?).await.ok()
}

/// Datagrams the UDP sockets on 127.0.0.1 with these ports have dropped so far because
/// their receive buffers were full (Linux: `/proc/net/udp`). `None` without ports.
fn udp_drops(ports: &[u16]) -> Option<u64> {
    if ports.is_empty() {
        return None;
    }
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let mut total = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some((ip, port)) = fields.get(1).and_then(|a| a.split_once(':')) else {
            continue;
        };
        // 127.0.0.1 as the kernel prints it, on either byte order.
        let loopback = ip == "0100007F" || ip == "7F000001";
        let port = u16::from_str_radix(port, 16).ok();
        if loopback && port.is_some_and(|p| ports.contains(&p)) {
            total += fields
                .last()
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(total)
}

/// CPU time (user and system, all threads) of process `pid` (`self`: this one), from
/// `/proc/<pid>/stat` (Linux; clock ticks taken to be the usual 100 per second).
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may hold spaces: state is the
    // 3rd field of the line, utime the 14th and stime the 15th.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Waits until call `idx` is due at `rate` calls per second from `start`.
async fn pace(start: Instant, idx: u64, rate: f64) {
    if rate > 0.0 {
        wait_until(start + Duration::from_secs_f64(idx as f64 / rate)).await;
    }
}

async fn wait_until(due: Instant) {
    if due > Instant::now() {
        tokio::time::sleep_until(due.into()).await;
    }
}

fn spawn_call(
    ctx: &Arc<Ctx>,
    idx: u64,
    dev: u32,
    hold: Option<call::Hold>,
    permit: OwnedSemaphorePermit,
) {
    let events = ctx.router.open(idx);
    ctx.stats.sent.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(call::run(Arc::clone(ctx), idx, dev, events, hold, permit));
}

/// Park and relay: starts the calls at the rate (an overload run: on its schedule), each
/// on a free device, at most `max_in_flight` at once; returns once all have ended, with
/// what an overload run saw beside the calls: each phase's calls that could not start
/// before the phase ended, and the CPU time used by then by this process and by the
/// server's processes `server_pids`.
async fn load(
    ctx: &Arc<Ctx>,
    options: &Options,
    pool: &mut mpsc::UnboundedReceiver<u32>,
    server_pids: Vec<Option<u32>>,
) -> (Duration, Observed) {
    let permits = options.max_in_flight;
    let in_flight = Arc::new(Semaphore::new(permits));
    let schedule = options.schedule();
    let mut observed = Observed::default();
    let start = Instant::now();
    let sampler = schedule.as_ref().map(|schedule| {
        ctx.stats.keep_records(start);
        let boundaries = schedule.boundaries().map(|at| start + at);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            for at in boundaries {
                wait_until(at).await;
                samples.push(cpu_sample(&server_pids));
            }
            samples
        })
    });
    for idx in 0..options.planned_calls() {
        // An overload run: the phase of the call, and when it ends.
        let phase = match &schedule {
            Some(schedule) => {
                let Some((due, phase)) = schedule.due(idx) else {
                    break;
                };
                let planned = &schedule.phases()[phase];
                wait_until(start + due).await;
                if options.progress && idx == planned.first {
                    eprintln!(
                        "loadgen: phase {} ({}): {:.0} calls/s for {:.0} s",
                        phase + 1,
                        planned.name,
                        planned.rate,
                        (planned.end - planned.start).as_secs_f64()
                    );
                }
                Some((phase, start + planned.end))
            }
            None => {
                pace(start, idx, options.rate).await;
                None
            }
        };
        let mut held_up = false;
        let free = async {
            let permit = match Arc::clone(&in_flight).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    held_up = true;
                    Arc::clone(&in_flight).acquire_owned().await.ok()?
                }
            };
            let dev = match pool.try_recv() {
                Ok(dev) => dev,
                Err(_) => {
                    held_up = true;
                    pool.recv().await?
                }
            };
            Some((permit, dev))
        };
        let free = match phase {
            // Not started at all once its phase is over.
            Some((phase, end)) => {
                let free = tokio::time::timeout_at(end.into(), free).await;
                observed.held_up[phase] += u64::from(held_up);
                match free {
                    Ok(free) if Instant::now() < end => free,
                    _ => {
                        observed.not_started[phase] += 1;
                        continue;
                    }
                }
            }
            None => free.await,
        };
        let Some((permit, dev)) = free else {
            break;
        };
        spawn_call(ctx, idx, dev, None, permit);
    }
    let _ = in_flight.acquire_many(permits as u32).await;
    let duration = start.elapsed();
    if let Some(sampler) = sampler {
        observed.cpu = sampler.await.unwrap_or_default();
    }
    (duration, observed)
}

/// The CPU time used so far by the server's processes `pids` (`None` unless all are known)
/// and by this one.
fn cpu_sample(pids: &[Option<u32>]) -> CpuSample {
    CpuSample {
        server: pids.iter().map(|pid| cpu_time(&(*pid)?.to_string())).sum(),
        loadgen: cpu_time("self"),
    }
}

/// Hold: starts every call (devices round robin; at most `max_in_flight` not yet parked),
/// waits until all are parked, measures, cancels them all (at most `max_in_flight` at once)
/// and checks the server lets them go.
async fn hold(
    ctx: &Arc<Ctx>,
    options: &Options,
    target: &Target,
    client: &reqwest::Client,
    rss_before: Option<u64>,
) -> (Duration, HoldReport) {
    let calls = options.calls;
    let permits = calls as usize;
    let all = Arc::new(Semaphore::new(permits));
    let parking = Arc::new(Semaphore::new(options.max_in_flight));
    let cancelling = Arc::new(Semaphore::new(options.max_in_flight));
    let (release, released) = watch::channel(false);
    let devices = u64::from(ctx.devices.count());
    let start = Instant::now();
    for idx in 0..calls {
        pace(start, idx, options.rate).await;
        let (Ok(permit), Ok(until_parked)) = (
            Arc::clone(&all).acquire_owned().await,
            Arc::clone(&parking).acquire_owned().await,
        ) else {
            break;
        };
        let hold = call::Hold {
            release: released.clone(),
            until_parked,
            cancelling: Arc::clone(&cancelling),
        };
        spawn_call(ctx, idx, (idx % devices) as u32, Some(hold), permit);
    }
    let stats = &ctx.stats;
    let settle = Instant::now() + HOLD_SETTLE;
    let (held_all, parked_gauge, at_hold) = loop {
        let ended = stats.ended();
        let live = calls.saturating_sub(ended);
        let trying = stats.trying.load(Ordering::Relaxed);
        let pushed = stats.pushed.load(Ordering::Relaxed);
        let now = scrape(client, target.node.admin).await;
        let gauge = now.as_ref().and_then(|s| s.get(metrics::CALLS_PARKED));
        let parked = match gauge {
            Some(gauge) => gauge >= live as f64,
            None => pushed >= live,
        };
        let held_all = trying >= calls && pushed >= calls && parked && ended == 0;
        if held_all || live == 0 || Instant::now() > settle {
            break (held_all, gauge, now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let time_to_hold = start.elapsed();
    let rss_held = server_rss(at_hold.as_ref(), target.node.pid);
    let ended = stats.ended();
    let held = stats
        .trying
        .load(Ordering::Relaxed)
        .min(stats.pushed.load(Ordering::Relaxed))
        .saturating_sub(ended);
    if !held_all {
        let cause = format!(
            "not every call was held ({held} of {calls}) within {HOLD_SETTLE:?} of the last INVITE"
        );
        stats.fail(cause, 1);
    }
    let _ = release.send(true);
    let _ = all.acquire_many(permits as u32).await;
    let duration = start.elapsed();
    let drained = drained(client, target.node.admin).await;
    if drained == Some(false) {
        stats.fail(
            "the server still held calls after the release".to_owned(),
            1,
        );
    }
    let hold = HoldReport {
        calls,
        held,
        parked_gauge,
        time_to_hold,
        rss_before,
        rss_held,
        released: stats.completed.load(Ordering::Relaxed),
        drained,
    };
    (duration, hold)
}

/// Whether the server lets go of every call: the parked gauge and the core's call records
/// back to 0 (`None` without metrics).
async fn drained(client: &reqwest::Client, admin: Option<SocketAddr>) -> Option<bool> {
    admin?;
    let deadline = Instant::now() + DRAIN_WAIT;
    loop {
        let now = scrape(client, admin).await;
        let parked = now.as_ref().and_then(|s| s.get(metrics::CALLS_PARKED));
        let core = now.as_ref().and_then(|s| s.get(metrics::CORE_CALLS));
        if parked.is_none() && core.is_none() {
            return None;
        }
        if parked.unwrap_or(0.0) == 0.0 && core.unwrap_or(0.0) == 0.0 {
            return Some(true);
        }
        if Instant::now() > deadline {
            return Some(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scrape(client: &reqwest::Client, admin: Option<SocketAddr>) -> Option<Scrape> {
    metrics::scrape(client, admin?).await.ok()
}

/// The server's RSS: its metric, or else /proc/<pid>/status.
fn server_rss(scrape: Option<&Scrape>, pid: Option<u32>) -> Option<u64> {
    if let Some(rss) = scrape.and_then(|s| s.get(metrics::RSS)) {
        return Some(rss as u64);
    }
    status_bytes(&pid?.to_string(), "VmRSS:")
}

/// A memory figure (`VmRSS:`, `VmHWM:`) of process `pid` (`self`: this one) from
/// `/proc/<pid>/status` (Linux).
fn status_bytes(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn server_figures(
    before: Option<&Scrape>,
    after: Option<&Scrape>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
) -> ServerFigures {
    let Some(after) = after else {
        return ServerFigures {
            rss_before,
            rss_after,
            ..ServerFigures::default()
        };
    };
    let delta = |name: &str| {
        let now = after.sum(name)?;
        Some(now - before.and_then(|b| b.sum(name)).unwrap_or(0.0))
    };
    // Over the run, by the value of one label (summed over the others).
    let by_label = |name: &str, label: &str| {
        let mut counts = std::collections::BTreeMap::new();
        for (value, n) in after.by_label(name, label) {
            *counts.entry(value).or_insert(0.0) += n;
        }
        for (value, n) in before.map(|b| b.by_label(name, label)).unwrap_or_default() {
            *counts.entry(value).or_insert(0.0) -= n;
        }
        counts.retain(|_, n| *n > 0.0);
        counts
    };
    let outcomes = by_label(metrics::OUTCOMES_TOTAL, "code");
    let app_answers = by_label(metrics::APP_ANSWERS_TOTAL, "result");
    let sum = delta(&format!("{}_sum", metrics::WAKEUP_DELAY));
    let count = delta(&format!("{}_count", metrics::WAKEUP_DELAY));
    let wakeup_delay_mean = match (sum, count) {
        (Some(sum), Some(count)) if count > 0.0 && sum >= 0.0 => {
            Some(Duration::from_secs_f64(sum / count))
        }
        _ => None,
    };
    ServerFigures {
        rss_before,
        rss_after,
        calls: delta(metrics::CALLS_TOTAL),
        calls_parked: delta(metrics::CALLS_PARKED_TOTAL),
        pushes: delta(metrics::PUSHES_TOTAL),
        outcomes,
        app_answers,
        wakeup_delay_mean,
        core_calls_after: after.get(metrics::CORE_CALLS),
        transactions_after: after.get(metrics::TRANSACTIONS),
        cpu: None,
        udp_drops: None,
    }
}
