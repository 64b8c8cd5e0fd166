//! Real phones end to end: linphonec (Debian `linphone-cli`) as a sleeping RFC 8599 phone,
//! baresip (Debian `baresip`) as the caller, both child processes on 127.0.0.1, against a
//! pushpark server started here with its default configuration, its pushes going to a local
//! gateway. A push is what makes the test wake the phone (start linphonec again); asleep is
//! linphonec killed with SIGKILL. What should happen is specs/parking.md §5–6.
//!
//! The clients must be installed (.ci/run does it); a missing one fails the test.
//!
//! One test adds a TLS listener to that configuration: linphonec registers over TLS there,
//! checking the server's certificate, while baresip calls over UDP. Another runs two nodes of
//! a cluster on a real redis-server: linphonec registers and wakes on one, baresip calls the
//! other.

mod common;
mod real;
mod ua;

use std::time::{Duration, Instant};

use real::{describe, wait_for, Baresip, Harness, Linphone, Traced, STEP};
use ua::MessageExt;

const BOB: &str = "sip:bob@localhost";

/// What each side saw, for a failure message.
fn evidence(h: &Harness, callers: &[&Baresip], bob: &Linphone) -> String {
    let mut out = String::from("gateway:\n");
    for p in h.gateway.pushes() {
        let (call, token) = (&p.body.call_id, &p.body.pn_prid);
        out += &format!("push for Call-ID {call} (token {token})\n");
    }
    for caller in callers {
        out += &format!(
            "\nbaresip {}:\n{}\n",
            caller.user,
            describe(&caller.trace())
        );
    }
    out + &format!("\nlinphonec (phone):\n{}", describe(&bob.trace()))
}

/// The phone registers, then sleeps; the caller dials it; the push for that call comes.
/// Returns the caller and the call's Call-ID.
async fn call_the_sleeping_phone(
    h: &Harness,
    bob: &mut Linphone,
    token: &str,
) -> (Baresip, String) {
    bob.start().await;
    bob.sleep();
    let mut alice = Baresip::start(h, "alice").await;
    let call = alice.dial(BOB).await;
    let push = h
        .gateway
        .wait_for_push(STEP)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", evidence(h, &[&alice], bob)));
    assert_eq!(push.body.call_id, call, "the push is for the parked call");
    assert_eq!(push.body.pn_prid, token);
    (alice, call)
}

/// The woken phone rings for `call` (the caller hears 180), then answers it; the caller
/// gets 200. Returns linphonec's id of the call.
async fn ring_and_answer(h: &Harness, alice: &Baresip, bob: &mut Linphone, call: &str) -> u32 {
    let ringing = alice
        .wait_for_response(call, |c| c == 180 || c >= 200, STEP)
        .await;
    assert_eq!(
        ringing,
        Some(180),
        "the phone should ring for Call-ID {call}\n{}",
        evidence(h, &[alice], bob)
    );
    let id = wait_for(STEP, || bob.incoming_calls().last().copied())
        .await
        .expect("linphonec rang, so it numbered the call");
    bob.answer(id);
    let answer = alice.wait_for_final(call, STEP).await;
    assert_eq!(
        answer,
        Some(200),
        "linphonec answered; the caller should get its 200\n{}",
        evidence(h, &[alice], bob)
    );
    id
}

/// The caller hangs up the established call: its BYE gets 200 and the phone's call ends.
async fn hang_up(h: &Harness, alice: &mut Baresip, bob: &Linphone, call: &str, id: u32) {
    // Long enough for baresip to give up on the call by itself if its media failed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        alice.responses(call, "BYE").is_empty(),
        "the call should still be up when the caller hangs up\n{}",
        evidence(h, &[&*alice], bob)
    );
    alice.hang_up();
    let bye = alice.wait_for_bye_answer(call, STEP).await;
    assert_eq!(
        bye,
        Some(200),
        "BYE answered\n{}",
        evidence(h, &[&*alice], bob)
    );
    assert!(
        bob.wait_for_end(id, STEP).await,
        "linphonec's call {id} should end\n{}",
        evidence(h, &[&*alice], bob)
    );
}

/// The phone sleeps, is pushed for the call, wakes, rings, answers; the caller hangs up.
/// One push, and the parked INVITE reaches the phone once.
async fn pushed_woken_answered_and_hung_up(h: Harness, token: &str) {
    let mut bob = Linphone::new(&h, "bob", token, false);
    let (mut alice, call) = call_the_sleeping_phone(&h, &mut bob, token).await;
    bob.wake().await;
    let id = ring_and_answer(&h, &alice, &mut bob, &call).await;
    hang_up(&h, &mut alice, &bob, &call, id).await;
    assert_eq!(h.gateway.pushes().len(), 1, "one push for one call");
    assert_eq!(
        bob.invites_received(),
        vec![call],
        "the parked INVITE, once"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asleep_phone_is_pushed_wakes_answers_and_the_call_hangs_up_cleanly() {
    pushed_woken_answered_and_hung_up(Harness::start().await, "tok-answer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_wakes_on_one_node_of_a_cluster_takes_the_call_parked_on_the_other() {
    // Found that baresip's route to its outbound proxy (node one, no flow token) was kept
    // on the INVITE node one forwards, so node two took it for a new call and answered 480.
    pushed_woken_answered_and_hung_up(Harness::start_cluster().await, "bob-cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn woken_busy_phone_answers_486_and_the_caller_gets_486() {
    let h = Harness::start().await;
    let mut bob = Linphone::new(&h, "bob", "tok-busy", true);
    let (alice, call) = call_the_sleeping_phone(&h, &mut bob, "tok-busy").await;
    bob.wake().await;
    let busy = alice.wait_for_final(&call, STEP).await;
    assert_eq!(busy, Some(486), "{}", evidence(&h, &[&alice], &bob));
    let own = wait_for(STEP, || {
        bob.invite_responses_sent(&call)
            .contains(&486)
            .then_some(())
    })
    .await;
    assert!(
        own.is_some(),
        "the 486 is linphonec's own\n{}",
        evidence(&h, &[&alice], &bob)
    );
    h.stop().await;
}

/// specs/parking.md §6: a phone pushed for a call the caller cancelled is told so when it
/// registers, by the INVITE and a CANCEL. That notice must not keep the phone from taking
/// the next, live call. Today the server sends the notice and the live INVITE back to back,
/// so linphonec, ringing for the notice, answers the live call 486.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_while_parked_does_not_keep_the_woken_phone_from_the_next_call() {
    let h = Harness::start().await;
    let mut bob = Linphone::new(&h, "bob", "tok-cancel", false);
    let (mut alice, ended) = call_the_sleeping_phone(&h, &mut bob, "tok-cancel").await;
    alice.hang_up();
    let cancelled = alice.wait_for_final(&ended, STEP).await;
    assert_eq!(cancelled, Some(487), "{}", evidence(&h, &[&alice], &bob));

    let live = alice.dial(BOB).await;
    let push = h.gateway.wait_for_push(STEP).await.expect("a second push");
    assert_eq!(
        push.body.call_id, live,
        "the second push is for the live call"
    );
    bob.wake().await;
    let first = alice
        .wait_for_response(&live, |c| c == 180 || c >= 200, STEP)
        .await;
    if first != Some(180) {
        // Let the rest of the exchange (the notice's CANCEL) into the evidence.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        first,
        Some(180),
        "the woken phone should ring for the live call {live}; linphonec got INVITEs for \
         {:?} (the cancelled call is {ended}) and answered the live one {:?}\n{}",
        bob.invites_received(),
        bob.invite_responses_sent(&live),
        evidence(&h, &[&alice], &bob)
    );
    let id = ring_and_answer(&h, &alice, &mut bob, &live).await;
    hang_up(&h, &mut alice, &bob, &live, id).await;
    h.stop().await;
}

/// A phone that is awake and in a call, registered over UDP with a push token, gets a second
/// call at once (it rings, or answers 486 itself: linphonec is single-line), not a push and a
/// wait for a REGISTER that never comes, ending in 480 at the park deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_call_reaches_a_phone_that_is_in_a_call_without_waiting_for_a_push() {
    let h = Harness::start().await;
    let mut bob = Linphone::new(&h, "bob", "tok-in-call", false);
    bob.start().await;
    let mut alice = Baresip::start(&h, "alice").await;
    let first = alice.dial(BOB).await;
    // The first call: the server may ring the awake phone or push it. A pushed app
    // registers again, so if no INVITE has come a second after the push, the test does
    // that (restarts linphonec).
    let pushed = wait_for(STEP, || {
        if bob.invites_received().contains(&first) {
            return Some(false);
        }
        let pushes = h.gateway.pushes();
        let waited = |p: &ua::Push| p.body.call_id == first && p.at.elapsed().as_secs() >= 1;
        pushes.iter().any(waited).then_some(true)
    })
    .await
    .unwrap_or_else(|| panic!("neither ring nor push\n{}", evidence(&h, &[&alice], &bob)));
    if pushed {
        bob.restart().await;
    }
    let id = ring_and_answer(&h, &alice, &mut bob, &first).await;

    let mut carol = Baresip::start(&h, "carol").await;
    let sent = Instant::now();
    let second = carol.dial(BOB).await;
    let reached = wait_for(Duration::from_secs(5), || {
        bob.invites_received().contains(&second).then_some(())
    })
    .await;
    if reached.is_none() {
        let pushes: Vec<String> = h
            .gateway
            .pushes()
            .iter()
            .filter(|p| p.body.call_id == second)
            .map(|p| format!("at +{:?}", p.at.saturating_duration_since(sent)))
            .collect();
        let last = match carol.wait_for_final(&second, h.park_timeout + STEP).await {
            Some(code) => format!("{code} after {:.1} s", sent.elapsed().as_secs_f64()),
            None => "no final response".to_owned(),
        };
        panic!(
            "the second call ({second}) did not reach linphonec within 5 s; the server \
             pushed the phone instead ({pushes:?}) and the second caller got {last}\n{}",
            evidence(&h, &[&alice, &carol], &bob)
        );
    }
    let reply = carol
        .wait_for_response(&second, |c| c == 180 || c >= 200, STEP)
        .await;
    match reply {
        Some(486) => {}
        Some(180) => {
            carol.hang_up();
            let cancelled = carol.wait_for_final(&second, STEP).await;
            assert_eq!(cancelled, Some(487), "{}", evidence(&h, &[&carol], &bob));
        }
        other => panic!(
            "the second caller should hear linphonec ring or get its 486, not {other:?}\n{}",
            evidence(&h, &[&alice, &carol], &bob)
        ),
    }
    hang_up(&h, &mut alice, &bob, &first, id).await;
    h.stop().await;
}

/// Issue 10, part 2: a real phone on TLS. linphonec registers over the server's TLS listener,
/// checking its certificate (chain to the test authority, name 127.0.0.1), sleeps, is pushed
/// for a call from baresip on UDP, wakes over a new TLS connection and takes the call; the
/// call crosses transports, so the server record-routes twice (RFC 5658), and the caller's
/// BYE reaches the phone over TLS through both routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_on_tls_is_pushed_wakes_over_tls_and_takes_a_call_from_udp() {
    let h = Harness::start_with_tls().await;
    let tls = h.tls.expect("a TLS listener");
    let mut bob = Linphone::over_tls(&h, "bob", "tok-tls");
    let (mut alice, call) = call_the_sleeping_phone(&h, &mut bob, "tok-tls").await;
    bob.wake().await;
    let id = ring_and_answer(&h, &alice, &mut bob, &call).await;
    hang_up(&h, &mut alice, &bob, &call, id).await;
    assert_eq!(h.gateway.pushes().len(), 1, "one push for one call");

    let trace = bob.trace();
    let top_via = |m: &Traced| m.header("Via").unwrap_or_default();
    // Both runs registered over TLS (the REGISTER went to the TLS listener, the only
    // address linphonec has for the server, and its 200 came back).
    let registers: Vec<&Traced> = trace
        .iter()
        .filter(|m| m.sent && m.method() == Some("REGISTER"))
        .collect();
    assert!(registers.len() >= 2, "{}", describe(&trace));
    for register in &registers {
        assert!(
            top_via(register).starts_with("SIP/2.0/TLS "),
            "REGISTER over TLS: {register:#?}"
        );
    }
    // The parked INVITE came over TLS with a route back for each side: TLS toward the
    // phone on top, UDP toward the caller under it.
    let invite = trace
        .iter()
        .find(|m| !m.sent && m.method() == Some("INVITE") && m.call_id() == call)
        .expect("linphonec received the INVITE");
    assert!(
        top_via(invite).starts_with(&format!("SIP/2.0/TLS {tls};")),
        "the server's Via for TLS on top: {invite:#?}"
    );
    let record_route = invite.record_routes();
    assert_eq!(record_route.len(), 2, "{invite:#?}");
    assert!(
        record_route[0].ends_with(&format!("@{tls};transport=tls;lr>")),
        "{invite:#?}"
    );
    assert!(
        record_route[1].ends_with(&format!("@{};lr>", h.udp)),
        "{invite:#?}"
    );
    let bye = trace
        .iter()
        .find(|m| !m.sent && m.method() == Some("BYE") && m.call_id() == call)
        .expect("linphonec received the caller's BYE");
    assert!(top_via(bye).starts_with("SIP/2.0/TLS "), "{bye:#?}");
    h.stop().await;
}

/// The default challenges are ones real clients answer: baresip 1.0.0 answers only the first
/// challenge and knows only MD5, and its INVITE must get past the 407 of the default
/// configuration. bob is a user without a phone: past the challenge, the call gets 480.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_caller_authenticates_against_the_default_challenges() {
    let h = Harness::start_with_users(&[("alice", "secret"), ("bob", "other")]).await;
    let alice = Baresip::start_authenticated(&h, "alice", "secret").await;
    let mut alice = alice;
    let call = alice.dial(BOB).await;
    let answer = alice
        .wait_for_response(&call, |c| c >= 200 && c != 401 && c != 407, STEP)
        .await;
    let responses = alice.responses(&call, "INVITE");
    assert_eq!(
        answer,
        Some(480),
        "baresip should authenticate and get bob's 480; it got {responses:?} (logs kept)"
    );
    assert!(responses.contains(&407), "challenged first: {responses:?}");
    h.stop().await;
}

/// Posts `answer` from the push of `call`, as the woken app would (specs/parking.md §9):
/// the HTTP status.
async fn answer_from_push(h: &Harness, call: &str, answer: &str) -> u16 {
    let push = (h.gateway.pushes().into_iter())
        .find(|p| p.body.call_id == call)
        .expect("the push of the call");
    let url = push.body.answer_url.expect("an answer URL");
    let token = push.body.answer_token.expect("an answer token");
    let body = format!(r#"{{"token":"{token}","answer":"{answer}"}}"#);
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the app API answers");
    response.status().as_u16()
}

/// The app says busy from its push: baresip hears linphonec's user busy at once, and
/// linphonec is never started again (its SIP stack stays asleep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_answer_from_the_push_reaches_a_real_caller_without_waking_the_phone() {
    let h = Harness::start_with_app_api().await;
    let mut bob = Linphone::new(&h, "bob", "tok-app-busy", false);
    let (alice, call) = call_the_sleeping_phone(&h, &mut bob, "tok-app-busy").await;
    assert_eq!(answer_from_push(&h, &call, "busy").await, 200);
    let busy = alice.wait_for_final(&call, STEP).await;
    assert_eq!(busy, Some(486), "{}", evidence(&h, &[&alice], &bob));
    assert!(
        bob.invites_received().is_empty(),
        "the phone got no INVITE\n{}",
        evidence(&h, &[&alice], &bob)
    );
    h.stop().await;
}

/// The app says ringing from its push: baresip gets pushpark's 180 (its To tag), then the
/// woken linphonec's own 180 and 200 (another To tag, as from a forked call); baresip takes
/// the 200 and the call hangs up cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ringing_answer_from_the_push_gives_a_real_caller_ringback_then_the_call() {
    let h = Harness::start_with_app_api().await;
    let mut bob = Linphone::new(&h, "bob", "tok-app-ring", false);
    let (mut alice, call) = call_the_sleeping_phone(&h, &mut bob, "tok-app-ring").await;
    assert_eq!(answer_from_push(&h, &call, "ringing").await, 200);
    let ringback = alice
        .wait_for_response(&call, |c| c == 180 || c >= 200, STEP)
        .await;
    assert_eq!(ringback, Some(180), "{}", evidence(&h, &[&alice], &bob));
    bob.wake().await;
    let id = ring_and_answer(&h, &alice, &mut bob, &call).await;
    hang_up(&h, &mut alice, &bob, &call, id).await;
    h.stop().await;
}
