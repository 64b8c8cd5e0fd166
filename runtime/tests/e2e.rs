//! End to end: the real server on loopback, in-repo user agents (tests/ua/) as callers and
//! sleeping phones, and a local HTTP server standing in for the push service. One test per
//! row of the outcome table in specs/parking.md.

mod common;
mod harness;
mod ua;

use std::time::Duration;

use harness::Harness;
use pushpark::server::Server;
use rsip::Method;
use ua::{Behaviour, Caller, Device, GatewayRule, Transport, STEP};

const ANSWER: Behaviour = Behaviour::Answer {
    ring_for: Duration::from_millis(100),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_call_is_pushed_delivered_after_the_wake_up_register_and_answered() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h.sleeping_phone("sip:bob@localhost", "bob1", ANSWER).await;
    h.gateway.wake_on_push(&bob, Duration::from_millis(300));
    let alice = h.caller().await;
    let call_id = alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    alice
        .expect_response(100, STEP)
        .await
        .expect("100 Trying at once");
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack_and_hang_up(&ok).await;
    let pushes = h.gateway.pushes_for("bob1");
    assert_eq!(pushes.len(), 1, "one push for one call");
    assert_eq!(pushes[0].body.call_id, call_id);
    assert_eq!(pushes[0].body.callee_aor, "sip:bob@localhost");
    assert_eq!(pushes[0].body.caller_display_name.as_deref(), Some("Alice"));
    assert_eq!(
        bob.count(Method::Invite),
        1,
        "the parked INVITE is delivered once"
    );
    let invite = &bob.requests()[0].request;
    assert!(
        !invite.to_string().contains("pn-"),
        "pn-* parameters never leave the registrar:\n{invite}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tcp_phone_is_rung_directly_without_a_push() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h.phone("sip:bob@localhost", "bob2", ANSWER).await;
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack_and_hang_up(&ok).await;
    assert!(h.gateway.pushes().is_empty(), "no push to an awake phone");
    assert_eq!(bob.count(Method::Invite), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_phone_gives_the_caller_486() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h
        .sleeping_phone("sip:bob@localhost", "bob3", Behaviour::Busy)
        .await;
    h.gateway.wake_on_push(&bob, Duration::from_millis(100));
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let busy = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(busy.status_code.code(), 486, "{busy}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declining_phone_gives_the_caller_603() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h
        .sleeping_phone("sip:bob@localhost", "bob4", Behaviour::Decline)
        .await;
    h.gateway.wake_on_push(&bob, Duration::from_millis(100));
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let declined = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(declined.status_code.code(), 603, "{declined}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_that_never_wakes_gives_480_at_the_park_deadline() {
    let h = Harness::start(|c, _| {
        c.parking.park_timeout = Duration::from_millis(1500);
        c.parking.ended_notice_window = Duration::from_millis(200);
    })
    .await;
    let _bob = h.sleeping_phone("sip:bob@localhost", "bob5", ANSWER).await;
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let started = tokio::time::Instant::now();
    let unavailable = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(unavailable.status_code.code(), 480, "{unavailable}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "not before the deadline"
    );
    assert_eq!(h.gateway.pushes_for("bob5").len(), 1);
    // Once the ended-notice window has closed too, nothing of the call is left.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let gauges = h.server.as_ref().expect("running").gauges();
    assert_eq!(gauges.proxy_calls, 0, "the proxy kept the call");
    assert_eq!(gauges.core_calls, 0, "the core kept the call");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_the_push_gives_487_and_the_woken_phone_learns_the_call_ended() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h
        .sleeping_phone("sip:bob@localhost", "bob6", Behaviour::RingOnly)
        .await;
    h.gateway.wake_on_push(&bob, Duration::from_millis(600));
    let alice = h.caller().await;
    let call_id = alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    alice.expect_response(100, STEP).await.expect("100 Trying");
    h.gateway
        .wait_for_push(STEP)
        .await
        .expect("the push went out");
    alice.cancel().await.expect("CANCEL sent");
    alice
        .expect_response_for(Method::Cancel, 200, STEP)
        .await
        .expect("200 to the CANCEL");
    let terminated = alice
        .expect_final(STEP)
        .await
        .expect("the INVITE's final response");
    assert_eq!(terminated.status_code.code(), 487, "{terminated}");
    // The woken phone gets the INVITE and at once a CANCEL saying why (specs §6).
    let cancel = bob
        .expect_request(Method::Cancel, STEP)
        .await
        .expect("a CANCEL");
    assert_eq!(cancel.call_id, call_id);
    assert_eq!(
        cancel.reason_cause(),
        Some(487),
        "Reason: {:?}",
        cancel.reason
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_forwarding_reaches_the_ringing_phone() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h
        .phone("sip:bob@localhost", "bob7", Behaviour::RingOnly)
        .await;
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    alice.expect_response(180, STEP).await.expect("ringing");
    alice.cancel().await.expect("CANCEL sent");
    let terminated = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(terminated.status_code.code(), 487, "{terminated}");
    bob.expect_request(Method::Cancel, STEP)
        .await
        .expect("the CANCEL reaches the phone");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_answers_every_caller_503_and_cancels_ringing_phones() {
    let mut h = Harness::start(|c, _| c.sip.shutdown_grace = Duration::from_secs(10)).await;
    let bob = h
        .phone("sip:bob@localhost", "bob20", Behaviour::RingOnly)
        .await;
    let _carol = h
        .sleeping_phone("sip:carol@localhost", "carol20", ANSWER)
        .await;
    let ringing = h.caller().await;
    ringing
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    ringing.expect_response(180, STEP).await.expect("ringing");
    let parked = h.caller().await;
    parked
        .invite("sip:carol@localhost", h.udp)
        .await
        .expect("INVITE sent");
    h.gateway
        .wait_for_push(STEP)
        .await
        .expect("carol is pushed");

    let server = h.server.take().expect("running");
    let started = std::time::Instant::now();
    let drained = tokio::spawn(server.drain());
    for caller in [&ringing, &parked] {
        let answer = caller.expect_final(STEP).await.expect("a final response");
        assert_eq!(answer.status_code.code(), 503, "{answer}");
        assert!(
            answer.to_string().contains("Retry-After:"),
            "a 503 says when to come back: {answer}"
        );
    }
    bob.expect_request(Method::Cancel, STEP)
        .await
        .expect("the ringing phone is cancelled");
    drained.await.expect("the drain ends");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "done once every answer is through, not at the end of the grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_phones_the_first_answer_wins_and_the_other_is_cancelled() {
    let h = Harness::start(|_, _| {}).await;
    let desk = h
        .phone("sip:bob@localhost", "bob8a", Behaviour::RingOnly)
        .await;
    let mobile = h.sleeping_phone("sip:bob@localhost", "bob8b", ANSWER).await;
    h.gateway.wake_on_push(&mobile, Duration::from_millis(200));
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack_and_hang_up(&ok).await;
    desk.expect_request(Method::Cancel, STEP)
        .await
        .expect("the other phone's branch is cancelled");
    assert_eq!(
        h.gateway.pushes_for("bob8a").len(),
        0,
        "the awake phone is not pushed"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_calls_parked_for_one_phone_are_both_delivered_when_it_wakes() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h
        .sleeping_phone("sip:bob@localhost", "bob9", Behaviour::RingOnly)
        .await;
    let alice = h.caller().await;
    let carol = Caller::new("sip:carol@localhost", Transport::Udp)
        .await
        .expect("a caller");
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    carol
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    alice.expect_response(100, STEP).await.expect("100");
    carol.expect_response(100, STEP).await.expect("100");
    bob.wake().await.expect("the wake-up REGISTER");
    alice
        .expect_response(180, STEP)
        .await
        .expect("alice hears ringing");
    carol
        .expect_response(180, STEP)
        .await
        .expect("carol hears ringing");
    assert_eq!(bob.count(Method::Invite), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_wake_up_register_delivers_the_call_once() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h
        .sleeping_phone("sip:bob@localhost", "bob10", Behaviour::RingOnly)
        .await;
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    alice.expect_response(100, STEP).await.expect("100");
    bob.wake().await.expect("the wake-up REGISTER");
    bob.register(600).await.expect("a second REGISTER");
    alice.expect_response(180, STEP).await.expect("ringing");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob.count(Method::Invite), 1, "one INVITE for one call");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_token_is_forgotten_and_the_caller_gets_480() {
    let h = Harness::start(|_, _| {}).await;
    let _bob = h.sleeping_phone("sip:bob@localhost", "bob11", ANSWER).await;
    h.gateway.set_rule("bob11", GatewayRule::gone());
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let unavailable = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(unavailable.status_code.code(), 480, "{unavailable}");
    // The token is gone: the next call is not pushed at all.
    let again = h.caller().await;
    again
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let unavailable = again.expect_final(STEP).await.expect("a final response");
    assert_eq!(unavailable.status_code.code(), 480, "{unavailable}");
    assert_eq!(
        h.gateway.pushes_for("bob11").len(),
        1,
        "no push to a dead token"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenged_wake_up_register_keeps_the_call_parked() {
    let users = tempfile::NamedTempFile::new().expect("a users file");
    pushpark::auth::add_user(users.path(), "bob", "localhost", "secret").expect("a user");
    let path = users.path().to_owned();
    let h = Harness::start(|c, _| c.auth.users_file = Some(path)).await;
    let bob = Device::builder("sip:bob@localhost", h.tcp)
        .transport(Transport::Tcp)
        .push("apns", "bob12", Some("ABCD1234.com.example.app.voip"))
        .credentials("bob", "secret")
        .behaviour(ANSWER)
        .start()
        .await
        .expect("the phone starts");
    let ok = bob.register(600).await.expect("REGISTER after a challenge");
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    bob.sleep().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.gateway.wake_on_push(&bob, Duration::from_millis(200));
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let ok = alice
        .expect_response(200, STEP)
        .await
        .expect("answered after a challenged REGISTER");
    alice.ack_and_hang_up(&ok).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_survive_a_restart() {
    let mut h = Harness::start(|_, _| {}).await;
    let bob = h.sleeping_phone("sip:bob@localhost", "bob13", ANSWER).await;
    h.restart().await;
    h.gateway.wake_on_push(&bob, Duration::from_millis(100));
    // The phone registers again to the restarted server when woken.
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let push = h
        .gateway
        .wait_for_push(STEP)
        .await
        .expect("the kept binding is pushed");
    assert_eq!(push.body.pn_prid, "bob13");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_are_answered_exactly_like_known_users_without_a_phone() {
    let users = tempfile::NamedTempFile::new().expect("a users file");
    pushpark::auth::add_user(users.path(), "bob", "localhost", "secret").expect("a user");
    let path = users.path().to_owned();
    let h = Harness::start(|c, _| c.auth.users_file = Some(path)).await;
    let alice = h.caller().await;
    alice
        .invite("sip:nobody@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let not_found = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(
        not_found.status_code.code(),
        480,
        "no scan may tell an unknown user: {not_found}"
    );
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let unavailable = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(
        unavailable.status_code.code(),
        480,
        "a known user with no binding: {unavailable}"
    );
    let shape = |r: &rsip::Response| {
        let names: Vec<String> = r
            .headers
            .iter()
            .map(|h| h.to_string().split(':').next().unwrap_or("").to_owned())
            .collect();
        (r.status_code.to_string(), names)
    };
    assert_eq!(
        shape(&not_found),
        shape(&unavailable),
        "the same reason phrase and headers"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_for_foreign_domains_are_refused() {
    let h = Harness::start(|_, _| {}).await;
    let alice = h.caller().await;
    alice
        .invite("sip:bob@example.org", h.udp)
        .await
        .expect("INVITE sent");
    let forbidden = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(
        forbidden.status_code.code(),
        403,
        "no open relay: {forbidden}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_calls_wakes_a_phone_only_as_often_as_the_push_budget_allows() {
    let h = Harness::start(|c, _| c.push.max_per_device_per_minute = 3).await;
    let _bob = h.sleeping_phone("sip:bob@localhost", "bob14", ANSWER).await;
    for _ in 0..6 {
        let caller = h.caller().await;
        caller
            .invite("sip:bob@localhost", h.udp)
            .await
            .expect("INVITE sent");
        caller.expect_response(100, STEP).await.expect("100 Trying");
        tokio::time::sleep(Duration::from_millis(150)).await;
        caller.cancel().await.expect("CANCEL sent");
        let ended = caller.expect_final(STEP).await.expect("a final response");
        assert!([487, 480].contains(&ended.status_code.code()), "{ended}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.gateway.pushes_for("bob14").len(),
        3,
        "the push budget was exceeded"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_about_to_expire_gets_one_refresh_push_but_never_an_apns_voip_token() {
    let h = Harness::start(|c, _| c.registrar.sweep_interval = Duration::from_millis(200)).await;
    let android = Device::builder("sip:bob@localhost", h.tcp)
        .transport(Transport::Tcp)
        .push("fcm", "bob15a", Some("my-project"))
        .start()
        .await
        .expect("the phone starts");
    let iphone = Device::builder("sip:bob@localhost", h.tcp)
        .transport(Transport::Tcp)
        .push("apns", "bob15b", Some("ABCD1234.com.example.app.voip"))
        .start()
        .await
        .expect("the phone starts");
    // 100 s: inside the 120 s before expiry in which RFC 8599 §5.5 wants a refresh push.
    for phone in [&android, &iphone] {
        let ok = phone.register(100).await.expect("REGISTER is answered");
        assert_eq!(ok.status_code.code(), 200, "{ok}");
    }
    let push = h.gateway.wait_for_push(STEP).await.expect("a refresh push");
    assert_eq!(push.body.pn_prid, "bob15a");
    assert_eq!(push.body.kind, "binding_refresh", "{}", push.json);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        h.gateway.pushes_for("bob15a").len(),
        1,
        "one refresh per expiry"
    );
    assert!(
        h.gateway.pushes_for("bob15b").is_empty(),
        "no VoIP push without a call"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_just_started_is_healthy_before_any_traffic() {
    // An idle loop turns next at its first timer, seconds away: /health must not wait for
    // it (a supervisor or a load balancer would take the new server for a dead one).
    let h =
        Harness::start(|c, _| c.admin.listen = Some("127.0.0.1:0".parse().expect("an address")))
            .await;
    let admin = h
        .server
        .as_ref()
        .and_then(Server::admin_addr)
        .expect("admin");
    let health = reqwest::get(format!("http://{admin}/health"))
        .await
        .expect("the admin listener answers");
    assert_eq!(health.status(), 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_metrics_of_calls_outcomes_and_pushes() {
    let h =
        Harness::start(|c, _| c.admin.listen = Some("127.0.0.1:0".parse().expect("an address")))
            .await;
    let bob = h.sleeping_phone("sip:bob@localhost", "bob16", ANSWER).await;
    h.gateway.wake_on_push(&bob, Duration::from_millis(1500));
    let admin = h
        .server
        .as_ref()
        .expect("running")
        .admin_addr()
        .expect("an admin listener");
    let get = |path: &'static str| async move {
        reqwest::get(format!("http://{admin}{path}"))
            .await
            .expect("the admin listener answers")
            .text()
            .await
            .expect("a body")
    };
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    h.gateway.wait_for_push(STEP).await.expect("a push");
    // Pushed, the phone not awake yet: the call is parked.
    let metrics = get("/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "pushpark_calls_parked 1"),
        "not parked:\n{metrics}"
    );
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack_and_hang_up(&ok).await;
    let metrics = get("/metrics").await;
    for line in [
        "pushpark_calls_parked 0",
        "pushpark_calls_parked_total 1",
        "pushpark_wakeup_delay_seconds_bucket{le=\"1\"} 0",
        "pushpark_wakeup_delay_seconds_bucket{le=\"2\"} 1",
        "pushpark_wakeup_delay_seconds_count 1",
        "pushpark_calls_total 1",
        "pushpark_call_outcomes_total{code=\"200\"} 1",
        "pushpark_pushes_total{provider=\"gateway\",result=\"accepted\",reason=\"\"} 1",
        "pushpark_push_latency_seconds_count{provider=\"gateway\"} 1",
        "pushpark_bindings 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("process_resident_memory_bytes ")),
        "no resident memory in\n{metrics}"
    );
    assert_eq!(get("/health").await, "ok\n");
    h.stop().await;
}

// The three races found with real phones (specs/parking.md §5), with the in-repo UAs.

/// Race 1: a phone woken for a call that was cancelled while it slept, and for a live call,
/// gets the live call first; the notice of the cancelled one only once the live call is
/// settled, so a single-line phone never refuses the live call busy because of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_of_an_ended_call_never_comes_before_the_live_call_it_would_make_busy() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h.sleeping_phone("sip:bob@localhost", "bob30", ANSWER).await;
    let alice = h.caller().await;
    let ended = alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    h.gateway.wait_for_push(STEP).await.expect("the first push");
    alice.cancel().await.expect("CANCEL sent");
    let cancelled = alice.expect_final(STEP).await.expect("487");
    assert_eq!(cancelled.status_code.code(), 487, "{cancelled}");

    h.gateway.wake_on_push(&bob, Duration::from_millis(100));
    let carol = Caller::new("sip:carol@localhost", Transport::Udp)
        .await
        .expect("the second caller starts");
    let live = carol
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let ok = carol
        .expect_response(200, STEP)
        .await
        .expect("the live call is answered");
    let first = bob
        .expect_request(Method::Invite, STEP)
        .await
        .expect("an INVITE");
    assert_eq!(first.call_id, live, "the live call comes first");
    carol.ack_and_hang_up(&ok).await;
    let notice = bob
        .expect_request(Method::Invite, STEP)
        .await
        .expect("then the notice");
    assert_eq!(notice.call_id, ended);
    let cancel = bob
        .expect_request(Method::Cancel, STEP)
        .await
        .expect("the notice's CANCEL");
    assert_eq!(cancel.reason_cause(), Some(487), "{:?}", cancel.reason);
    h.stop().await;
}

/// Race 2: a phone in a call over UDP (with a push token) has no reason to register again
/// for a push; a second call reaches it at once, here as its own 486.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_in_a_call_on_udp_gets_a_second_call_at_once() {
    let h = Harness::start(|_, _| {}).await;
    let bob = Device::builder("sip:bob@localhost", h.udp)
        .transport(Transport::Udp)
        .push("apns", "bob31", Some("ABCD1234.com.example.app.voip"))
        .instance("00000000-0000-1000-8000-000000000031")
        .behaviour(ANSWER)
        .start()
        .await
        .expect("the phone starts");
    let ok = bob.register(600).await.expect("REGISTER is answered");
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack(&ok).await.expect("ACK sent");

    bob.set_behaviour(Behaviour::Busy);
    let carol = Caller::new("sip:carol@localhost", Transport::Udp)
        .await
        .expect("the second caller starts");
    carol
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    let busy = carol
        .expect_final(STEP)
        .await
        .expect("the phone's own answer, long before the park deadline");
    assert_eq!(busy.status_code.code(), 486, "{busy}");
    assert_eq!(bob.count(Method::Invite), 2, "both calls reached the phone");
    alice.bye().await.expect("BYE sent");
    h.stop().await;
}

/// Race 3: a phone rung over its TCP connection loses the connection before it answers: it
/// is pushed at once, and the call reaches it when it wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tcp_connection_falls_back_to_a_push_and_the_call_still_arrives() {
    let h = Harness::start(|_, _| {}).await;
    let bob = h
        .phone("sip:bob@localhost", "bob32", Behaviour::Ignore)
        .await;
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("INVITE sent");
    bob.expect_request(Method::Invite, STEP)
        .await
        .expect("rung directly over its connection");
    assert!(
        h.gateway.pushes().is_empty(),
        "no push while it is connected"
    );
    bob.set_behaviour(ANSWER);
    h.gateway.wake_on_push(&bob, Duration::from_millis(100));
    bob.sleep().await;
    let ok = alice
        .expect_response(200, STEP)
        .await
        .expect("answered after the fallback push woke it");
    alice.ack_and_hang_up(&ok).await;
    assert_eq!(h.gateway.pushes_for("bob32").len(), 1, "one fallback push");
    h.stop().await;
}
