//! SIPp as an independent peer: the scenarios in specs/sipp/ against a real server on
//! loopback. Needs `sipp` (Debian package `sip-tester`; .ci/run installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use pushpark::auth::add_user;
use pushpark::config::{Config, Transport};
use pushpark::server::Server;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../specs/sipp")
        .join(name)
}

/// A server on an ephemeral loopback UDP port with its store in `dir`.
async fn server(dir: &Path, adjust: impl FnOnce(&mut Config)) -> (Server, SocketAddr) {
    let mut config = common::loopback_config(dir, &[Transport::Udp], false);
    adjust(&mut config);
    common::start_udp(config).await
}

/// A UDP port free a moment ago (SIPp binds 5060 unless told otherwise).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs one SIPp scenario for one call against `server`; `args` are extra options.
async fn sipp(dir: &Path, server: SocketAddr, file: &str, args: &[&str]) -> Result<(), String> {
    let mut command = Command::new("sipp");
    command
        .current_dir(dir)
        .arg(server.to_string())
        .arg("-sf")
        .arg(scenario(file))
        .args(["-m", "1", "-t", "u1", "-i", "127.0.0.1", "-timeout", "30s"])
        .args(["-p", &free_udp_port().to_string()])
        .args(["-timeout_error", "-nostdin", "-trace_err"])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the blocking task runs")
        .map_err(|e| format!("cannot run sipp ({e}); install it: apt-get install sip-tester"))?;
    if output.status.success() {
        return Ok(());
    }
    let errors: String = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("_errors.log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    Err(format!(
        "sipp {file} failed ({}):\n{}\n{errors}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_pn_parameters_gets_feature_caps() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, addr) = server(dir.path(), |_| {}).await;
    let run = sipp(
        dir.path(),
        addr,
        "register_pn.xml",
        &["-set", "user", "carol", "-set", "token", "t1"],
    )
    .await;
    server.shutdown().await;
    run.expect("register_pn.xml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_answers_a_digest_challenge() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let users = dir.path().join("users");
    add_user(&users, "dave", "localhost", "secret").expect("a users file");
    // SIPp answers only the first challenge and knows MD5 alone: the default order works.
    let (server, addr) = server(dir.path(), |c| {
        c.auth.users_file = Some(users.clone());
    })
    .await;
    let run = sipp(
        dir.path(),
        addr,
        "register_pn.xml",
        &[
            "-set", "user", "dave", "-set", "token", "t2", "-au", "dave", "-ap", "secret",
        ],
    )
    .await;
    server.shutdown().await;
    run.expect("register_pn.xml with digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_call_is_delivered_to_a_device_that_re_registers() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // SIPp's "sleeping" device keeps its socket open, and is called a moment after it
    // registered: without an awake window the server parks the call as for an app that
    // really sleeps (with the window, it would also ring the socket at once, specs §3).
    let (server, addr) = server(dir.path(), |c| {
        c.parking.awake_window = Duration::ZERO;
    })
    .await;
    let call_id = "sipp-parked-call@127.0.0.1";
    let device_dir = dir.path().to_owned();
    let device = tokio::spawn(async move {
        sipp(
            &device_dir,
            addr,
            "sleeping_device.xml",
            &["-cid_str", call_id],
        )
        .await
    });
    // The device registers first; then the call comes while it sleeps.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let caller = sipp(dir.path(), addr, "caller.xml", &["-cid_str", call_id]).await;
    let device = device.await.expect("the device task");
    server.shutdown().await;
    caller.expect("caller.xml");
    device.expect("sleeping_device.xml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancel_while_parked_gets_487_and_it_is_retransmitted_until_acked() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, addr) = server(dir.path(), |_| {}).await;
    let register = sipp(
        dir.path(),
        addr,
        "register_pn.xml",
        &["-set", "user", "bob", "-set", "token", "t3"],
    )
    .await;
    let trace = dir.path().join("caller_cancel_messages.log");
    let trace_arg = trace.to_string_lossy().into_owned();
    let caller = sipp(
        dir.path(),
        addr,
        "caller_cancel.xml",
        &["-trace_msg", "-message_file", &trace_arg],
    )
    .await;
    server.shutdown().await;
    register.expect("register_pn.xml");
    caller.expect("caller_cancel.xml");
    let messages = std::fs::read_to_string(&trace).expect("SIPp's message trace");
    let copies = messages.matches("SIP/2.0 487 Request Terminated").count();
    assert!(
        copies >= 2,
        "the 487 was not retransmitted before the ACK ({copies} copy)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_deadline_gives_480() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, addr) = server(dir.path(), |c| {
        c.parking.park_timeout = Duration::from_secs(2)
    })
    .await;
    let register = sipp(
        dir.path(),
        addr,
        "register_pn.xml",
        &["-set", "user", "bob", "-set", "token", "t4"],
    )
    .await;
    let caller = sipp(dir.path(), addr, "caller_timeout.xml", &[]).await;
    server.shutdown().await;
    register.expect("register_pn.xml");
    caller.expect("caller_timeout.xml");
}
