//! `loadgen`: drives a pushpark server with parked (or relayed, or held) calls over
//! loopback and reports throughput, latency, parking overhead and memory.
//!
//! By default it starts `pushpark run` itself (the `pushpark` binary next to this one, or
//! `--server-bin`) on a generated configuration in a temporary directory; with `--target`
//! it drives a server already running on the configuration `--print-config` gives.
//!
//! To compare a busy answered from the push (the app API, specs/parking.md §9) with a busy
//! answered over SIP, run the same build twice and read "latency push → caller's final
//! response": `loadgen park --answer-from-push busy` and `loadgen park --busy-ratio 1`.
//!
//! To see how the server copes with overload, find the highest `--rate` at which
//! `loadgen park --rate R --calls N` has no failure, then run `loadgen park --overload
//! --rate R`: R for 10 s, twice R for 30 s, R again for 15 s, reported phase by phase with
//! the calls the server shed (503 + Retry-After), how soon it was back to normal, and
//! whether it met the target (goodput ≥ 90 % of R during the overload, no accepted call
//! failed, INVITE → 200 p99 < 100 ms, back to normal within 5 s). The exit status says
//! only whether any call failed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use pushpark_benches::loadgen::cluster::SpawnedCluster;
use pushpark_benches::loadgen::server::{self, ServerAddrs, SpawnedServer, Store};
use pushpark_benches::loadgen::{
    run, side_by_side, AnswerFromPush, LoadgenError, Mode, Node, Options, Overload, Report, Target,
    Transport, Webhook,
};

/// Where an external server is assumed to be, and pushes to, when not told.
const DEFAULT_SIP: &str = "127.0.0.1:5060";
const DEFAULT_ADMIN: &str = "127.0.0.1:9060";
const DEFAULT_WEBHOOK: &str = "127.0.0.1:8060";
const DEFAULT_APP_API: &str = "127.0.0.1:5443";
/// Calls in flight at most unless told: …
const DEFAULT_MAX_IN_FLIGHT: usize = 500;
/// … or, in an overload run, at least the calls of this long at the overload's rate (a
/// server that keeps calls longer is collapsing; the report then shows calls not started).
const OVERLOAD_IN_FLIGHT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Calls to sleeping devices: parked, pushed, woken, delivered, answered.
    Park,
    /// --calls calls parked at once (devices never wake), then cancelled: RSS per call.
    Hold,
    /// Calls to awake devices: the plain proxy path.
    Relay,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AnswerArg {
    /// The caller gets the server's 486 Busy Here.
    Busy,
    /// The caller gets the server's 603 Decline.
    Decline,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Udp,
    Tcp,
}

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for the pushpark SIP server",
    after_help = "Busy from the push against busy over SIP (same build, two runs; compare \
                  \"latency push → caller's final response\"):\n  \
                  loadgen park --calls 20000 --answer-from-push busy\n  \
                  loadgen park --calls 20000 --busy-ratio 1\n\n\
                  Overload (find R first: the highest --rate with no failure):\n  \
                  loadgen park --rate 2000 --calls 60000\n  \
                  loadgen park --overload --rate 2000 --overload-secs 15"
)]
struct Cli {
    /// What to run.
    #[arg(value_enum)]
    mode: ModeArg,
    /// Calls in all (hold: calls held at once).
    #[arg(long, default_value_t = 10_000)]
    calls: u64,
    /// Calls started per second; 0 = as fast as --max-in-flight allows (open loop).
    /// With --overload: the base rate.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Park, relay: the overload scenario instead of --calls: --warm-up-secs at --rate,
    /// --overload-secs at --overload-factor x --rate, --recovery-secs at --rate again, each
    /// call open loop on its schedule. Reports each phase (rate offered, goodput, shed,
    /// failed, accepted but failed, INVITE → 200, retransmissions), the recovery, and the
    /// target. A call answered 503 before anything else is shed: ACKed, not retried.
    #[arg(long, conflicts_with = "calls")]
    overload: bool,
    /// With --overload: the overload phase's rate as a multiple of --rate.
    #[arg(long, default_value_t = 2.0, requires = "overload")]
    overload_factor: f64,
    /// With --overload: seconds of overload.
    #[arg(long, default_value_t = 30.0, requires = "overload")]
    overload_secs: f64,
    /// With --overload: seconds at --rate before the overload.
    #[arg(long, default_value_t = 10.0, requires = "overload")]
    warm_up_secs: f64,
    /// With --overload: seconds at --rate after the overload (at least 1).
    #[arg(long, default_value_t = 15.0, requires = "overload")]
    recovery_secs: f64,
    /// Calls in flight at most (park, relay); hold: calls started and not yet parked
    /// [default: 500; with --overload: 2 s of the overload phase's calls, at least 500].
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Devices to register (default: min(calls, 2 x max-in-flight); hold: min(calls, 10000)).
    #[arg(long)]
    devices: Option<usize>,
    /// Park: milliseconds from a push to the device's wake-up REGISTER (or to its answer
    /// from the push, with --answer-from-push).
    #[arg(long, default_value_t = 0)]
    wake_delay: u64,
    /// Share of calls the device answers 486 Busy Here.
    #[arg(long, default_value_t = 0.0)]
    busy_ratio: f64,
    /// Share of calls the device answers 603 Decline.
    #[arg(long, default_value_t = 0.0)]
    decline_ratio: f64,
    /// Park: every app answers this from its push over the server's app API (POST of the
    /// push's answer_token to its answer_url) instead of waking and registering; the
    /// caller expects the server's 486 or 603. Turns the app API on in the generated
    /// configuration. Not with --busy-ratio or --decline-ratio.
    #[arg(long, value_enum, value_name = "ANSWER")]
    answer_from_push: Option<AnswerArg>,
    /// SIP transport of callers and devices.
    #[arg(long, value_enum, default_value_t = TransportArg::Udp)]
    transport: TransportArg,
    /// Sockets (UDP) or connections (TCP) the callers, and the devices, each spread over.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// The server's park timeout in seconds (default 30; hold: 600).
    #[arg(long)]
    park_timeout: Option<f64>,
    /// Print the final report as JSON too.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Drive the server at this SIP address instead of starting one (see --print-config).
    #[arg(long)]
    target: Option<SocketAddr>,
    /// The external server's admin listener, for its metrics.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Where the webhook listens (default with --target: 127.0.0.1:8060; else any port).
    #[arg(long)]
    webhook_listen: Option<SocketAddr>,
    /// Where the server's app API listens, for --print-config with --answer-from-push
    /// (default 127.0.0.1:5443; a started server gets a free port). The load generator
    /// posts to the answer_url each push carries.
    #[arg(long)]
    app_api_listen: Option<SocketAddr>,
    /// The pushpark binary to start (default: `pushpark` next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Print the configuration an external server must run with for these options, and exit.
    #[arg(long)]
    print_config: bool,
    /// Start a two-node cluster sharing bindings on a Redis of its own (`redis-server` from
    /// PATH, appendfsync always) instead of one node on SQLite: callers send their INVITEs
    /// to node A, devices register and wake up on node B. Reports both nodes and the Redis
    /// commands per call.
    #[arg(long, conflicts_with_all = ["target", "compare_cluster"])]
    cluster: bool,
    /// Run one node on SQLite and the two-node cluster (--cluster) in turn, --rounds times
    /// each, interleaved, each run on servers started afresh, and print them side by side.
    #[arg(long, conflicts_with = "target")]
    compare_cluster: bool,
    /// With --compare-cluster: rounds of one run each.
    #[arg(long, default_value_t = 2, requires = "compare_cluster")]
    rounds: u32,
}

impl Cli {
    fn options(&self) -> Options {
        let mode = match self.mode {
            ModeArg::Park => Mode::Park,
            ModeArg::Hold => Mode::Hold,
            ModeArg::Relay => Mode::Relay,
        };
        let mut options = Options::new(mode);
        options.transport = match self.transport {
            TransportArg::Udp => Transport::Udp,
            TransportArg::Tcp => Transport::Tcp,
        };
        options.calls = self.calls;
        options.rate = self.rate;
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO);
        options.overload = self.overload.then(|| Overload {
            factor: self.overload_factor,
            warm_up: secs(self.warm_up_secs),
            overload: secs(self.overload_secs),
            recovery: secs(self.recovery_secs),
        });
        let overload_calls = |o: &Overload| self.rate * o.factor * OVERLOAD_IN_FLIGHT.as_secs_f64();
        options.max_in_flight = self.max_in_flight.unwrap_or_else(|| {
            (options.overload.as_ref())
                .map_or(0, |o| overload_calls(o).ceil() as usize)
                .max(DEFAULT_MAX_IN_FLIGHT)
        });
        options.devices = self.devices;
        options.wake_delay = Duration::from_millis(self.wake_delay);
        options.busy_ratio = self.busy_ratio;
        options.decline_ratio = self.decline_ratio;
        options.answer_from_push = self.answer_from_push.map(|answer| match answer {
            AnswerArg::Busy => AnswerFromPush::Busy,
            AnswerArg::Decline => AnswerFromPush::Decline,
        });
        options.sockets = self.sockets;
        if let Some(park_timeout) = self.park_timeout {
            options.park_timeout = secs(park_timeout);
        }
        options.progress = !self.quiet;
        options
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

/// Resolves on Ctrl-C (never, if the handler cannot be installed).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The servers a run starts (boxed: they differ much in size).
enum Spawned {
    One(Box<SpawnedServer>),
    Cluster(Box<SpawnedCluster>),
}

impl Spawned {
    fn log_tail(&self) -> String {
        match self {
            Spawned::One(server) => server.log_tail(),
            Spawned::Cluster(cluster) => cluster.log_tail(),
        }
    }

    async fn stop(self) {
        match self {
            Spawned::One(server) => server.stop().await,
            Spawned::Cluster(cluster) => cluster.stop().await,
        }
    }
}

fn node(server: &SpawnedServer) -> Node {
    Node {
        sip: server.sip(),
        admin: Some(server.admin()),
        pid: server.pid(),
    }
}

/// Runs the load (on a cluster if `cluster`); `Ok(None)` when interrupted by Ctrl-C
/// (spawned servers are stopped and their directories removed all the same).
async fn drive(
    cli: &Cli,
    options: &Options,
    cluster: bool,
) -> Result<Option<Report>, LoadgenError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| LoadgenError::Io { what, source }
    };
    if let Some(sip) = cli.target {
        let listen = cli.webhook_listen.unwrap_or_else(|| addr(DEFAULT_WEBHOOK));
        let webhook = Webhook::bind(listen)
            .await
            .map_err(io(&format!("webhook on {listen}")))?;
        let target = Target {
            node: Node {
                sip,
                admin: cli.admin,
                pid: None,
            },
            devices_node: None,
            redis: None,
            webhook,
        };
        return tokio::select! {
            result = run(options, &target) => result.map(Some),
            () = interrupted() => Ok(None),
        };
    }
    let listen = cli.webhook_listen.unwrap_or_else(|| addr("127.0.0.1:0"));
    let webhook = Webhook::bind(listen)
        .await
        .map_err(io(&format!("webhook on {listen}")))?;
    let bin = cli
        .server_bin
        .clone()
        .or_else(server::sibling_server_bin)
        .ok_or_else(|| LoadgenError::Server("cannot find the pushpark binary".to_owned()))?;
    let starting = async {
        if cluster {
            SpawnedCluster::start(&bin, options, webhook.addr())
                .await
                .map(|cluster| Spawned::Cluster(Box::new(cluster)))
        } else {
            SpawnedServer::start(&bin, options, webhook.addr(), None)
                .await
                .map(|server| Spawned::One(Box::new(server)))
        }
    };
    let spawned = tokio::select! {
        // Dropped half-started, the servers are killed (and their directories removed).
        spawned = starting => spawned?,
        () = interrupted() => return Ok(None),
    };
    let target = match &spawned {
        Spawned::One(server) => Target {
            node: node(server),
            devices_node: None,
            redis: None,
            webhook,
        },
        Spawned::Cluster(cluster) => Target {
            node: node(&cluster.callers),
            devices_node: Some(node(&cluster.devices)),
            redis: Some(cluster.redis()),
            webhook,
        },
    };
    if options.progress {
        let pid = |n: &Node| n.pid.map_or("?".to_owned(), |p| p.to_string());
        let mut started = format!(
            "loadgen: started {} (pid {}) on {}",
            bin.display(),
            pid(&target.node),
            target.node.sip
        );
        if let (Some(b), Some(redis)) = (&target.devices_node, target.redis) {
            started += &format!(
                " for the callers, (pid {}) on {} for the devices, sharing redis-server on {redis}",
                pid(b),
                b.sip
            );
        }
        eprintln!("{started}");
    }
    let result = tokio::select! {
        result = run(options, &target) => result.map(Some),
        () = interrupted() => Ok(None),
    };
    if result.is_err() {
        eprintln!(
            "loadgen: the server's log ends with:\n{}",
            spawned.log_tail()
        );
    }
    spawned.stop().await;
    result
}

/// One node on SQLite and the cluster in turn, `rounds` times; each report printed as it
/// comes, then all side by side. `Ok(None)` when interrupted.
async fn compare(cli: &Cli, options: &Options) -> Result<Option<Vec<Report>>, LoadgenError> {
    let mut reports = Vec::new();
    for round in 1..=cli.rounds {
        for cluster in [false, true] {
            if options.progress {
                let setup = if cluster {
                    "two nodes on Redis"
                } else {
                    "one node on SQLite"
                };
                eprintln!("loadgen: round {round} of {}, {setup}", cli.rounds);
            }
            let Some(report) = drive(cli, options, cluster).await? else {
                return Ok(None);
            };
            println!("run {}: {report}", reports.len() + 1);
            reports.push(report);
        }
    }
    Ok(Some(reports))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = cli.options();
    if let Err(e) = options.validate() {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    if cli.print_config {
        let sip = cli.target.unwrap_or_else(|| addr(DEFAULT_SIP));
        let addrs = ServerAddrs {
            udp: sip,
            tcp: sip,
            admin: cli.admin.unwrap_or_else(|| addr(DEFAULT_ADMIN)),
            webhook: cli.webhook_listen.unwrap_or_else(|| addr(DEFAULT_WEBHOOK)),
            app_api: cli.app_api_listen.unwrap_or_else(|| addr(DEFAULT_APP_API)),
        };
        let store = PathBuf::from("pushpark-loadgen.db");
        print!(
            "{}",
            server::config_text(&options, &addrs, &Store::Sqlite(&store))
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let reports = if cli.compare_cluster {
        runtime.block_on(compare(&cli, &options))
    } else {
        let report = runtime.block_on(drive(&cli, &options, cli.cluster));
        report.map(|r| r.map(|r| vec![r]))
    };
    match reports {
        Ok(Some(reports)) => {
            if cli.compare_cluster {
                println!(
                    "side by side (runs in the order they ran):\n{}",
                    side_by_side(&reports)
                );
            } else {
                reports.iter().for_each(|r| println!("{r}"));
            }
            if cli.json {
                reports.iter().for_each(|r| println!("{}", r.to_json()));
            }
            if reports.iter().all(Report::success) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(None) => {
            eprintln!("loadgen: interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}
