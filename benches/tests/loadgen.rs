//! The load generator against an in-process pushpark server, configured with the very text
//! `loadgen --print-config` gives (with graceful overload off, see [`ACCOUNTING`]): small
//! runs that finish in a few seconds each. And against a stand-in for a server that sheds
//! load, which sheds exactly the calls the test expects. (The server's own shedding is
//! tested in runtime/tests/overload.rs.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushpark::config::Config;
use pushpark::server::Server;
use pushpark::sip::parse_datagram;
use pushpark_benches::loadgen::redis::SpawnedRedis;
use pushpark_benches::loadgen::server::{config_text, free_port, ServerAddrs, Store};
use pushpark_benches::loadgen::{
    run, AnswerFromPush, Mode, Node, Options, Overload, Report, Target, Transport, Webhook,
};
use tempfile::TempDir;
use tokio::net::UdpSocket;

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("a literal address")
}

/// A small run's options: `calls` calls at `rate` per second, quiet.
fn options(mode: Mode, transport: Transport, calls: u64, rate: f64) -> Options {
    let mut options = Options::new(mode);
    options.transport = transport;
    options.calls = calls;
    options.rate = rate;
    options.max_in_flight = 100;
    options.devices = Some(50);
    options.sockets = 2;
    options.progress = false;
    options
}

/// What the in-process servers add to the generated configuration: these tests check the
/// load generator's accounting, and a server that shed a call because the machine is busy
/// with other tests would change the counts they expect.
const ACCOUNTING: &str = "\n[sip]\noverload_delay = \"0s\"\n";

/// Starts a server on the generated configuration (edited by `edit`) and the webhook it
/// pushes to.
async fn start(
    options: &Options,
    edit: impl FnOnce(String) -> String,
) -> (Server, Target, TempDir) {
    let webhook = Webhook::bind(any()).await.expect("the webhook binds");
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Call pushes carry the app API's URL as configured: its port must be a real one.
    let app_api_port = free_port().expect("a free port");
    let addrs = ServerAddrs {
        udp: any(),
        tcp: any(),
        admin: any(),
        webhook: webhook.addr(),
        app_api: SocketAddr::from(([127, 0, 0, 1], app_api_port)),
    };
    let store = dir.path().join("bindings.db");
    let text = edit(config_text(options, &addrs, &Store::Sqlite(&store)) + ACCOUNTING);
    let config = Config::parse(&text, &dir.path().join("pushpark.toml"))
        .unwrap_or_else(|e| panic!("the generated configuration parses: {e}\n{text}"));
    let server = Server::start(config).await.expect("the server starts");
    let target = Target {
        node: Node {
            sip: server
                .local_addr(options.transport)
                .expect("a listener for the transport"),
            admin: server.admin_addr(),
            pid: None,
        },
        devices_node: None,
        redis: None,
        webhook,
    };
    (server, target, dir)
}

async fn load(options: &Options) -> Report {
    let (server, target, _dir) = start(options, |text| text).await;
    let report = run(options, &target).await.expect("the run is carried out");
    server.shutdown().await;
    report
}

/// Every call was pushed once; the server agrees when it counts parked calls.
fn assert_parked_once_each(report: &Report, calls: u64) {
    assert_eq!(report.pushes, calls, "{report}");
    assert_eq!(report.pushed_twice, 0, "{report}");
    assert_eq!(report.not_pushed, 0, "{report}");
    if let Some(parked) = report.server.calls_parked {
        assert_eq!(parked, calls as f64, "{report}");
    }
    if let Some(server_calls) = report.server.calls {
        assert_eq!(server_calls, calls as f64, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_over_udp_completes_every_call_pushing_each_once() {
    let options = options(Mode::Park, Transport::Udp, 200, 200.0);
    let report = load(&options).await;
    assert!(report.success(), "{report}");
    assert_eq!(report.completed, 200, "{report}");
    assert_eq!(report.outcomes.get(&200), Some(&200), "{report}");
    assert_parked_once_each(&report, 200);
    assert_eq!(report.latency.map(|p| p.count), Some(200), "{report}");
    assert_eq!(report.push_overhead.map(|p| p.count), Some(200), "{report}");
    assert_eq!(report.wake_overhead.map(|p| p.count), Some(200), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_with_busy_and_decline_ratios_counts_them_as_expected() {
    let mut options = options(Mode::Park, Transport::Udp, 200, 0.0);
    options.busy_ratio = 0.2;
    options.decline_ratio = 0.1;
    options.wake_delay = Duration::from_millis(5);
    let report = load(&options).await;
    assert!(report.success(), "{report}");
    let busy = report.outcomes.get(&486).copied().unwrap_or(0);
    let declined = report.outcomes.get(&603).copied().unwrap_or(0);
    let answered = report.outcomes.get(&200).copied().unwrap_or(0);
    assert_eq!(
        Some(&busy),
        report.expected_rejections.get(&486),
        "{report}"
    );
    assert_eq!(
        Some(&declined),
        report.expected_rejections.get(&603),
        "{report}"
    );
    assert!((20..=60).contains(&busy), "{report}");
    assert!((5..=40).contains(&declined), "{report}");
    assert_eq!(answered + busy + declined, 200, "{report}");
    assert_parked_once_each(&report, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_over_tcp_completes_every_call() {
    let options = options(Mode::Park, Transport::Tcp, 200, 200.0);
    let report = load(&options).await;
    assert!(report.success(), "{report}");
    assert_eq!(report.outcomes.get(&200), Some(&200), "{report}");
    assert_parked_once_each(&report, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_keeps_every_call_parked_then_releases_them_all() {
    let mut options = options(Mode::Hold, Transport::Udp, 300, 0.0);
    options.devices = Some(100);
    let report = load(&options).await;
    assert!(report.success(), "{report}");
    let hold = report.hold.as_ref().expect("hold figures");
    assert_eq!(hold.held, 300, "{report}");
    assert_eq!(hold.released, 300, "{report}");
    assert_eq!(hold.drained, Some(true), "{report}");
    if let Some(gauge) = hold.parked_gauge {
        assert_eq!(gauge, 300.0, "{report}");
    }
    assert_eq!(report.outcomes.get(&487), Some(&300), "{report}");
    assert_eq!(report.server.core_calls_after, Some(0.0), "{report}");
    assert_parked_once_each(&report, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_udp_forwards_every_call_without_a_push() {
    let options = options(Mode::Relay, Transport::Udp, 200, 0.0);
    let report = load(&options).await;
    assert!(report.success(), "{report}");
    assert_eq!(report.outcomes.get(&200), Some(&200), "{report}");
    assert_eq!(report.pushes, 0, "{report}");
    assert_eq!(report.push_overhead, None, "{report}");
    assert_eq!(report.server.calls_parked.unwrap_or(0.0), 0.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_tcp_forwards_every_call() {
    let options = options(Mode::Relay, Transport::Tcp, 200, 0.0);
    let report = load(&options).await;
    assert!(report.success(), "{report}");
    assert_eq!(report.outcomes.get(&200), Some(&200), "{report}");
    assert_eq!(report.pushes, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_wakes_the_devices_fails_the_run() {
    // The push route goes to the `log` provider: it accepts every push and wakes nobody,
    // so each call waits out a short park timeout and ends 480.
    let mut options = options(Mode::Park, Transport::Udp, 20, 0.0);
    options.park_timeout = Duration::from_secs(1);
    let (server, target, _dir) = start(&options, |text| {
        text.replace("fcm = \"loadgen\"", "fcm = \"log\"")
    })
    .await;
    let report = run(&options, &target)
        .await
        .expect("the run is carried out");
    server.shutdown().await;
    assert!(!report.success(), "{report}");
    assert_eq!(report.failed, 20, "{report}");
    assert_eq!(report.completed, 0, "{report}");
    assert_eq!(report.failures.get("final 480"), Some(&20), "{report}");
    assert_eq!(report.outcomes.get(&480), Some(&20), "{report}");
    assert_eq!(report.pushes, 0, "{report}");
}

/// Every call ended with the server's `code` for the answer from the push, taken by the app
/// API, and no device woke: no wake-up REGISTER, no INVITE at a device.
fn assert_answered_from_push(report: &Report, calls: u64, code: u16) {
    assert!(report.success(), "{report}");
    assert_eq!(report.completed, calls, "{report}");
    assert!(report.failures.is_empty(), "{report}");
    assert_eq!(report.outcomes.len(), 1, "{report}");
    assert_eq!(report.outcomes.get(&code), Some(&calls), "{report}");
    assert_eq!(
        report.expected_rejections.get(&code),
        Some(&calls),
        "{report}"
    );
    assert_eq!(report.answers_from_push, calls, "{report}");
    assert_eq!(report.wake_ups, 0, "{report}");
    assert_eq!(report.wake_overhead, None, "{report}");
    assert_parked_once_each(report, calls);
    let push_to_final = report
        .push_to_final
        .expect("push → caller's final response");
    assert_eq!(push_to_final.count, calls, "{report}");
    assert!(push_to_final.p50 <= push_to_final.max, "{report}");
    assert_eq!(
        report.app_round_trip.map(|p| p.count),
        Some(calls),
        "{report}"
    );
    let taken = report.server.app_answers.get("taken").copied();
    assert_eq!(taken, Some(calls as f64), "{report}");
    assert_eq!(report.server.app_answers.len(), 1, "{report}");
    let code = code.to_string();
    assert_eq!(
        report.server.outcomes.get(&code),
        Some(&(calls as f64)),
        "{report}"
    );
    assert_eq!(report.server.wakeup_delay_mean, None, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("latency push → caller's final response"),
        "{text}"
    );
    let json = report.to_json();
    assert_eq!(
        json["latency_push_to_final_response"]["count"].as_u64(),
        Some(calls),
        "{json}"
    );
    assert_eq!(json["wake_up_registers"].as_u64(), Some(0), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_answered_busy_from_the_push_gets_every_caller_a_486_without_a_register() {
    let mut options = options(Mode::Park, Transport::Udp, 200, 0.0);
    options.answer_from_push = Some(AnswerFromPush::Busy);
    let report = load(&options).await;
    assert_answered_from_push(&report, 200, 486);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_declined_from_the_push_over_tcp_gets_every_caller_a_603() {
    let mut options = options(Mode::Park, Transport::Tcp, 100, 0.0);
    options.answer_from_push = Some(AnswerFromPush::Decline);
    let report = load(&options).await;
    assert_answered_from_push(&report, 100, 603);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_busy_over_sip_reports_push_to_final_response_too() {
    // The SIP path the answer from the push is compared with: wake-up REGISTER, INVITE,
    // the device's 486, relayed.
    let mut options = options(Mode::Park, Transport::Udp, 100, 0.0);
    options.busy_ratio = 1.0;
    let report = load(&options).await;
    assert!(report.success(), "{report}");
    assert_eq!(report.outcomes.get(&486), Some(&100), "{report}");
    assert_eq!(report.wake_ups, 100, "{report}");
    assert_eq!(report.answers_from_push, 0, "{report}");
    assert_eq!(report.push_to_final.map(|p| p.count), Some(100), "{report}");
    assert_eq!(report.app_round_trip, None, "{report}");
    assert!(report.server.app_answers.is_empty(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_the_push_to_a_server_without_the_app_api_fail_the_run() {
    // The server is configured as for a plain park run: its pushes carry no answer token,
    // so no device can answer from its push, and each call fails at once by that cause.
    let mut options = options(Mode::Park, Transport::Udp, 20, 0.0);
    options.park_timeout = Duration::from_secs(2);
    let plain = options.clone();
    options.answer_from_push = Some(AnswerFromPush::Busy);
    let (server, target, _dir) = start(&plain, |text| text).await;
    let report = run(&options, &target)
        .await
        .expect("the run is carried out");
    server.shutdown().await;
    assert!(!report.success(), "{report}");
    assert_eq!(report.failed, 20, "{report}");
    let cause = "push without answer_token and answer_url (is the server's [app_api] on?)";
    assert_eq!(report.failures.get(cause), Some(&20), "{report}");
    assert_eq!(report.wake_ups, 0, "{report}");
}

/// A node of a cluster on `redis`, in-process, pushing to `webhook`.
async fn cluster_node(options: &Options, dir: &Path, url: &str, webhook: SocketAddr) -> Server {
    let secret_file = dir.join("cluster.secret");
    let addrs = ServerAddrs {
        udp: any(),
        tcp: any(),
        admin: any(),
        webhook,
        app_api: any(),
    };
    let store = Store::Redis {
        url,
        secret_file: &secret_file,
    };
    let text = config_text(options, &addrs, &store) + ACCOUNTING;
    let config = Config::parse(&text, &dir.join("pushpark.toml"))
        .unwrap_or_else(|e| panic!("the generated configuration parses: {e}\n{text}"));
    Server::start(config).await.expect("the node starts")
}

fn node(server: &Server, transport: Transport) -> Node {
    Node {
        sip: server.local_addr(transport).expect("a listener"),
        admin: server.admin_addr(),
        pid: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_across_a_two_node_cluster_delivers_every_call_through_the_devices_node() {
    let options = options(Mode::Park, Transport::Udp, 100, 0.0);
    let redis = SpawnedRedis::start().await.expect("redis-server starts");
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        dir.path().join("cluster.secret"),
        format!("{}\n", "5a".repeat(32)),
    )
    .expect("the secret written");
    let webhook = Webhook::bind(any()).await.expect("the webhook binds");
    let a = cluster_node(&options, dir.path(), &redis.url(), webhook.addr()).await;
    let b = cluster_node(&options, dir.path(), &redis.url(), webhook.addr()).await;
    let target = Target {
        node: node(&a, options.transport),
        devices_node: Some(node(&b, options.transport)),
        redis: Some(redis.addr()),
        webhook,
    };
    let report = run(&options, &target)
        .await
        .expect("the run is carried out");
    a.shutdown().await;
    b.shutdown().await;
    assert!(report.success(), "{report}");
    assert_eq!(report.outcomes.get(&200), Some(&100), "{report}");
    // Node A parked and pushed every call; node B, where the devices woke, parked none.
    assert_parked_once_each(&report, 100);
    let b = report.devices_node.as_ref().expect("node B's figures");
    assert_eq!(b.calls_parked, Some(0.0), "{report}");
    assert_eq!(report.wake_overhead.map(|p| p.count), Some(100), "{report}");
    // Each wake-up REGISTER is one MULTI/EXEC on Redis, its notice appended in it.
    let redis = report.redis.as_ref().expect("Redis figures");
    for command in ["exec", "xadd"] {
        let calls = redis.commands.get(command).map(|c| c.calls);
        assert_eq!(calls, Some(100), "{command}: {report}");
    }
    assert!(report.redis_commands_per_call().is_some(), "{report}");
    let text = report.to_string();
    assert!(
        text.contains("node B metrics") && text.contains("redis commands"),
        "{text}"
    );
}

#[test]
fn answer_from_push_is_for_park_mode_alone_and_not_beside_ratios() {
    let mut options = Options::new(Mode::Relay);
    options.answer_from_push = Some(AnswerFromPush::Busy);
    assert!(options.validate().is_err());
    let mut options = Options::new(Mode::Park);
    options.answer_from_push = Some(AnswerFromPush::Decline);
    assert!(options.validate().is_ok());
    options.busy_ratio = 0.5;
    assert!(options.validate().is_err());
}

/// An overload scenario of a few seconds: 1 s at the base rate, 1 s at twice it, 2 s at it.
fn short_overload() -> Overload {
    Overload {
        factor: 2.0,
        warm_up: Duration::from_secs(1),
        overload: Duration::from_secs(1),
        recovery: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_overload_run_reports_its_three_phases_and_no_call_shed_when_none_is() {
    let mut options = options(Mode::Park, Transport::Udp, 1, 40.0);
    options.overload = Some(short_overload());
    let report = load(&options).await;
    assert!(report.success(), "{report}");
    assert_eq!(report.shed, 0, "{report}");
    assert_eq!(report.accepted_but_failed, 0, "{report}");
    let overload = report.overload.as_ref().expect("the overload figures");
    let planned: Vec<u64> = overload.phases.iter().map(|p| p.planned).collect();
    assert_eq!(planned, [40, 80, 80], "{report}");
    for phase in &overload.phases {
        // A call the load generator could not start in time is not started at all.
        assert_eq!(phase.started + phase.not_started, phase.planned, "{report}");
        assert_eq!(phase.completed, phase.started, "{report}");
        assert_eq!((phase.shed, phase.failed), (0, 0), "{report}");
    }
    // This process's CPU time (the in-process server's included), sampled at each phase's
    // ends (Linux).
    assert!(
        overload.phases.iter().all(|p| p.loadgen_cpu.is_some()),
        "{report}"
    );
    let started: u64 = overload.phases.iter().map(|p| p.started).sum();
    assert_eq!(report.attempted, started, "{report}");
    // 1-s windows sliding 100 ms over the 2 s of recovery.
    assert_eq!(overload.recovery.windows, 11, "{report}");
    assert!(overload.recovery.threshold.is_some(), "{report}");
    let text = report.to_string();
    for label in [
        "shed (503)",
        "retransmissions",
        "phase 1 warm-up",
        "phase 2 overload",
        "phase 3 recovery",
        "goodput",
        "recovery",
        "target",
    ] {
        assert!(text.contains(label), "{label}: {text}");
    }
    let json = report.to_json();
    assert_eq!(json["shed"].as_u64(), Some(0), "{json}");
    assert_eq!(json["overload"]["phases"][1]["planned"].as_u64(), Some(80));
    assert_eq!(json["overload"]["recovery"]["windows"].as_u64(), Some(11));
    assert!(json["retransmissions"]["sent"].is_u64(), "{json}");
}

#[test]
fn the_overload_scenario_needs_a_rate_and_is_for_park_and_relay() {
    let mut options = Options::new(Mode::Relay);
    options.overload = Some(short_overload());
    assert!(options.validate().is_err(), "no rate");
    options.rate = 100.0;
    assert!(options.validate().is_ok());
    // The phases decide the calls.
    options.calls = 0;
    assert!(options.validate().is_ok());
    assert_eq!(options.planned_calls(), 100 + 200 + 200);
    let mut options = Options::new(Mode::Hold);
    options.rate = 100.0;
    options.overload = Some(short_overload());
    assert!(options.validate().is_err(), "hold");
}

/// A stand-in for a server that sheds load, over UDP: it registers every device (200),
/// answers the INVITEs of the 1st, 3rd, 5th… call it sees with a stateless 503 and
/// `Retry-After: 7`, those of the others with 100 Trying and then a 503 (a call it accepted
/// and then failed), and notes every ACK it gets.
struct Shedder {
    addr: SocketAddr,
    /// Each call's INVITE branch, by Call-ID.
    invites: Arc<Mutex<HashMap<String, String>>>,
    /// The ACKs' (Call-ID, branch).
    acks: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Shedder {
    async fn start() -> Shedder {
        let socket = UdpSocket::bind(any()).await.expect("the shedder binds");
        let addr = socket.local_addr().expect("its address");
        let invites = Arc::new(Mutex::new(HashMap::new()));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (seen, acked) = (Arc::clone(&invites), Arc::clone(&acks));
        let task = tokio::spawn(async move {
            let mut buf = vec![0; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(request) = parse_datagram(&buf[..n]) else {
                    continue;
                };
                let call_id = match request.call_id() {
                    Some(Ok(id)) => id.to_owned(),
                    _ => continue,
                };
                let branch = (request.top_via().and_then(Result::ok))
                    .and_then(|via| via.branch().map(str::to_owned))
                    .unwrap_or_default();
                let mut replies = Vec::new();
                match request.method().map(|m| m.as_str()) {
                    Some("REGISTER") => replies.push(request.response(200).to_tag("r")),
                    Some("INVITE") => {
                        let mut seen = seen.lock().expect("not poisoned");
                        let nth = seen.len();
                        seen.entry(call_id).or_insert(branch);
                        if nth % 2 == 1 {
                            replies.push(request.response(100));
                        }
                        let refused = request.response(503).to_tag("s");
                        replies.push(refused.header("Retry-After", "7"));
                    }
                    Some("ACK") => acked.lock().expect("not poisoned").push((call_id, branch)),
                    _ => {}
                }
                for reply in replies {
                    let _ = socket.send_to(&reply.to_bytes(), from).await;
                }
            }
        });
        Shedder {
            addr,
            invites,
            acks,
            task,
        }
    }

    async fn target(&self) -> Target {
        Target {
            node: Node {
                sip: self.addr,
                admin: None,
                pid: None,
            },
            devices_node: None,
            redis: None,
            webhook: Webhook::bind(any()).await.expect("the webhook binds"),
        }
    }

    /// Waits (a little) until `n` ACKs came, and gives them.
    async fn acks(&self, n: usize) -> Vec<(String, String)> {
        for _ in 0..100 {
            if self.acks.lock().expect("not poisoned").len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.acks.lock().expect("not poisoned").clone()
    }
}

impl Drop for Shedder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_before_anything_else_is_shed_and_acked_and_one_after_a_100_is_a_failure() {
    let shedder = Shedder::start().await;
    let options = options(Mode::Relay, Transport::Udp, 40, 0.0);
    let report = run(&options, &shedder.target().await)
        .await
        .expect("the run is carried out");
    assert_eq!(report.attempted, 40, "{report}");
    assert_eq!(report.shed, 20, "{report}");
    assert_eq!(report.retry_after.get(&7), Some(&20), "{report}");
    assert_eq!(report.shed_without_retry_after, 0, "{report}");
    assert_eq!(report.completed, 0, "{report}");
    assert_eq!(report.failed, 20, "{report}");
    assert_eq!(report.accepted_but_failed, 20, "{report}");
    assert_eq!(report.failures.get("final 503"), Some(&20), "{report}");
    assert_eq!(report.outcomes.get(&503), Some(&40), "{report}");
    assert!(!report.success(), "{report}");
    // Every 503 ACKed once, on its INVITE's branch (RFC 3261 §17.1.1.3), and not retried.
    let mut acks = shedder.acks(40).await;
    acks.sort();
    let mut invites: Vec<(String, String)> = (shedder.invites.lock().expect("not poisoned"))
        .iter()
        .map(|(id, branch)| (id.clone(), branch.clone()))
        .collect();
    invites.sort();
    assert_eq!(acks, invites, "{report}");
    assert_eq!(report.retransmissions.invites, 0, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("20 shed (503), 20 failed (20 accepted but failed)"),
        "{text}"
    );
    assert!(text.contains("7 s × 20"), "{text}");
    assert_eq!(report.to_json()["retry_after_s"]["7"].as_u64(), Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_run_against_a_server_that_sheds_counts_shed_calls_by_phase() {
    let shedder = Shedder::start().await;
    let mut options = options(Mode::Relay, Transport::Udp, 1, 20.0);
    options.overload = Some(short_overload());
    let report = run(&options, &shedder.target().await)
        .await
        .expect("the run is carried out");
    let overload = report.overload.as_ref().expect("the overload figures");
    let shed: u64 = overload.phases.iter().map(|p| p.shed).sum();
    let failed: u64 = overload.phases.iter().map(|p| p.accepted_but_failed).sum();
    assert_eq!(shed, report.shed, "{report}");
    assert_eq!(failed, report.accepted_but_failed, "{report}");
    assert_eq!(report.shed + report.failed, report.attempted, "{report}");
    assert!(report.shed > 0, "{report}");
    // No call completed: never back to normal, and the target is not met.
    assert_eq!(overload.recovery.after, None, "{report}");
    assert!(
        overload.phases.iter().all(|p| p.latency.is_none()),
        "{report}"
    );
    assert!(!overload.met_target(), "{report}");
    assert!(report.to_string().contains("NOT"), "{report}");
}
