//! Graceful overload with the real server on loopback (specs/parking.md §8, `[sip]
//! overload_delay`): while the server is behind, a new call and a REGISTER get `503` with
//! `Retry-After`, a call already parked is still delivered when its phone wakes, and once the
//! load is gone everything is taken again.
//!
//! "Behind" is made certain, not waited for: the bound is one nanosecond, which every
//! message of a flood of OPTIONS exceeds (a lone message does not count: an interval needs
//! several to show a standing queue), so the share of new work let in falls by a fifth
//! every 50 ms.

mod common;
mod harness;
mod ua;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::Harness;
use tokio::net::UdpSocket;
use ua::{Behaviour, STEP};

const ANSWER: Behaviour = Behaviour::Answer {
    ring_for: Duration::from_millis(100),
};

/// OPTIONS to the server every 2 ms until `stop`: 25 messages in each 50 ms interval.
fn flood(server: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
        let local = socket.local_addr().expect("bound");
        while !stop.load(Ordering::Relaxed) {
            let _ = socket.send_to(options(local).as_bytes(), server).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// An OPTIONS from `local`, a new transaction each.
fn options(local: SocketAddr) -> String {
    let n = next_number();
    format!(
        "OPTIONS sip:localhost SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};branch=z9hG4bKload{n}\r\n\
Max-Forwards: 70\r\n\
From: <sip:load@localhost>;tag=f\r\n\
To: <sip:localhost>\r\n\
Call-ID: load{n}@test\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// The server on `adjust`'s configuration (with an admin listener), and alice's call to
/// bob's sleeping phone parked and pushed; the phone wakes `wake_after` the push.
async fn parked_call(
    adjust: impl FnOnce(&mut pushpark::config::Config),
    wake_after: Duration,
) -> (Harness, ua::Device, ua::Caller) {
    let h = Harness::start(|config, _| {
        adjust(config);
        config.admin.listen = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let bob = h.sleeping_phone("sip:bob@localhost", "bob1", ANSWER).await;
    h.gateway.wake_on_push(&bob, wake_after);
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    alice.expect_response(100, STEP).await.expect("100 Trying");
    h.gateway.wait_for_push(STEP).await.expect("pushed");
    (h, bob, alice)
}

/// A REGISTER of `user` from a UDP phone nobody calls.
fn register(user: &str, local: SocketAddr) -> String {
    format!(
        "REGISTER sip:localhost SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};branch=z9hG4bKreg-{user}-{}\r\n\
Max-Forwards: 70\r\n\
From: <sip:{user}@localhost>;tag=r\r\n\
To: <sip:{user}@localhost>\r\n\
Call-ID: reg-{user}@test\r\n\
CSeq: {} REGISTER\r\n\
Contact: <sip:{user}@{local}>\r\n\
Expires: 600\r\n\
Content-Length: 0\r\n\r\n",
        next_number(),
        next_number(),
    )
}

/// A number that differs from call to call (a new branch and CSeq per REGISTER).
fn next_number() -> u32 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_overloaded_new_calls_and_registers_get_503_and_a_parked_call_still_completes() {
    // A call parked before the load comes; its phone wakes once the server is shedding.
    let overloadable = |config: &mut pushpark::config::Config| {
        config.sip.overload_delay = Duration::from_nanos(1);
    };
    let (h, bob, alice) = parked_call(overloadable, Duration::from_millis(1500)).await;
    assert_eq!(common::counter(h.server(), "pushpark_overloaded").await, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let flooding = flood(h.udp, Arc::clone(&stop));
    // Twenty intervals behind: about one new request in a hundred is let in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(common::counter(h.server(), "pushpark_overloaded").await, 1);

    // A new call is refused at once, and says when to come back.
    let carol = h.caller().await;
    carol
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let refused = carol.expect_final(STEP).await.expect("a final response");
    assert_eq!(refused.status_code.code(), 503, "{refused}");
    assert!(refused.to_string().contains("Retry-After: 5"), "{refused}");
    // So is a REGISTER of a phone no call waits for.
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    let local = socket.local_addr().expect("bound");
    let answer = common::final_response(&socket, h.udp, &register("dave", local)).await;
    assert!(answer.starts_with("SIP/2.0 503"), "{answer}");
    assert!(answer.contains("Retry-After: 5"), "{answer}");

    // The parked call is not: bob's wake-up REGISTER goes through and the call is answered.
    let ok = alice
        .expect_response(200, STEP * 2)
        .await
        .expect("answered");
    alice.ack_and_hang_up(&ok).await;
    assert_eq!(bob.count(rsip::Method::Invite), 1, "delivered once");
    let shed_invites = "pushpark_shed_total{method=\"INVITE\"}";
    let shed_registers = "pushpark_shed_total{method=\"REGISTER\"}";
    assert!(common::counter(h.server(), shed_invites).await >= 1);
    assert!(common::counter(h.server(), shed_registers).await >= 1);

    // The load goes: within a second and a half every new request is taken again.
    stop.store(true, Ordering::Relaxed);
    flooding.await.expect("the flood ends");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(common::counter(h.server(), "pushpark_overloaded").await, 0);
    let answer = common::final_response(&socket, h.udp, &register("dave", local)).await;
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_transactions_a_parked_calls_wake_up_register_still_goes_through() {
    let small = |config: &mut pushpark::config::Config| config.sip.max_transactions = 4;
    let (h, _bob, alice) = parked_call(small, Duration::from_millis(800)).await;
    // OPTIONS over UDP keep their transactions 32 s: the table fills.
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    let local = socket.local_addr().expect("bound");
    for _ in 0..4 {
        let _ = common::final_response(&socket, h.udp, &options(local)).await;
    }
    let answer = common::final_response(&socket, h.udp, &register("dave", local)).await;
    assert!(answer.starts_with("SIP/2.0 503"), "{answer}");
    // Bob's wake-up REGISTER is not refused: the call is delivered and answered.
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack_and_hang_up(&ok).await;
    assert!(common::limit_hits(h.server(), "max_transactions").await >= 1);
    h.stop().await;
}
