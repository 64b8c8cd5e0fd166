//! The load generator against an in-process pushpark server, configured with the very text
//! `loadgen --print-config` gives: small runs that finish in a few seconds each.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pushpark::config::Config;
use pushpark::server::Server;
use pushpark_benches::loadgen::redis::SpawnedRedis;
use pushpark_benches::loadgen::server::{config_text, free_port, ServerAddrs, Store};
use pushpark_benches::loadgen::{
    run, AnswerFromPush, Mode, Node, Options, Report, Target, Transport, Webhook,
};
use tempfile::TempDir;

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
    let text = edit(config_text(options, &addrs, &Store::Sqlite(&store)));
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
    let text = config_text(options, &addrs, &store);
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
