//! Scenario tests on a fake clock. Every scenario ends by checking that no transaction leaks.

use super::*;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg(String);

fn m(text: &str) -> Msg {
    Msg(text.to_owned())
}

fn build_ack(request: &Msg, response: &Msg) -> Msg {
    Msg(format!("ACK for {} after {}", request.0, response.0))
}

fn table() -> Transactions<Msg> {
    Transactions::new(Config::default(), build_ack)
}

fn table_with(config: Config) -> Transactions<Msg> {
    Transactions::new(config, build_ack)
}

const SENT_BY: &str = "192.0.2.1:5060";

fn server_key(branch: &str, method: &Method) -> Key {
    Key::server(&format!("z9hG4bK{branch}"), SENT_BY, method).expect("valid key")
}

fn client_key(branch: &str, method: &Method) -> Key {
    Key::client(&format!("z9hG4bK{branch}"), method).expect("valid key")
}

fn register() -> Method {
    Method::from_token("REGISTER")
}

fn drain(t: &mut Transactions<Msg>) -> Vec<Output<Msg>> {
    std::iter::from_fn(|| t.poll_output()).collect()
}

fn send(key: &Key, text: &str) -> Output<Msg> {
    Output::Send {
        key: key.clone(),
        msg: m(text),
    }
}

/// Drives the fake clock from deadline to deadline up to `until`, checking at every step that
/// `poll_timeout` is the earliest armed timer of any transaction. Returns what came out, with
/// the time it came out at.
fn run(t: &mut Transactions<Msg>, until: Millis) -> Vec<(Millis, Output<Msg>)> {
    let mut events = Vec::new();
    for _ in 0..10_000 {
        assert_eq!(t.poll_timeout(), t.earliest_timer_brute_force());
        match t.poll_timeout() {
            Some(at) if at <= until => {
                t.handle_timeout(at);
                events.extend(drain(t).into_iter().map(|o| (at, o)));
            }
            _ => return events,
        }
    }
    panic!("timers still firing after 10 000 wake-ups: {t:?}");
}

fn send_times(events: &[(Millis, Output<Msg>)]) -> Vec<Millis> {
    events
        .iter()
        .filter(|(_, o)| matches!(o, Output::Send { .. }))
        .map(|(at, _)| *at)
        .collect()
}

fn tu_events(events: &[(Millis, Output<Msg>)]) -> Vec<(Millis, TuEvent)> {
    events
        .iter()
        .filter_map(|(at, o)| match o {
            Output::ToTu(e) => Some((*at, e.clone())),
            _ => None,
        })
        .collect()
}

fn terminations(events: &[(Millis, Output<Msg>)]) -> Vec<(Millis, Key)> {
    events
        .iter()
        .filter_map(|(at, o)| match o {
            Output::Terminated(k) => Some((*at, k.clone())),
            _ => None,
        })
        .collect()
}

/// Runs every remaining timer and checks the table is empty (no leaked transaction).
fn assert_no_leak(t: &mut Transactions<Msg>) {
    run(t, Millis::MAX);
    assert!(t.is_empty(), "leaked transactions: {t:?}");
    assert_eq!(t.poll_timeout(), None);
}

fn timeout(key: &Key, timer: Timer) -> TuEvent {
    TuEvent::Timeout {
        key: key.clone(),
        timer,
    }
}

// ----- INVITE client: Timers A, B, D, M ----------------------------------------------------

#[test]
fn timer_a_retransmits_invite_from_t1_doubling_until_timer_b_at_64_t1() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    assert_eq!(drain(&mut t), vec![send(&k, "INVITE")]);
    let ev = run(&mut t, Millis::MAX);
    // Uncapped doubling: 500, 1000, 2000, 4000, 8000, 16000 after each other.
    assert_eq!(
        send_times(&ev),
        vec![500, 1_500, 3_500, 7_500, 15_500, 31_500]
    );
    assert_eq!(tu_events(&ev), vec![(32_000, timeout(&k, Timer::B))]);
    assert_eq!(terminations(&ev), vec![(32_000, k)]);
    assert!(t.is_empty());
}

#[test]
fn reliable_invite_client_never_retransmits_and_times_out_with_b() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Reliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(send_times(&ev), Vec::<Millis>::new());
    assert_eq!(tu_events(&ev), vec![(32_000, timeout(&k, Timer::B))]);
    assert!(t.is_empty());
}

#[test]
fn timer_b_is_reported_once_even_when_the_driver_wakes_late() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    t.handle_timeout(100_000);
    let out = drain(&mut t);
    let timeouts = out
        .iter()
        .filter(|o| matches!(o, Output::ToTu(TuEvent::Timeout { .. })))
        .count();
    assert_eq!(timeouts, 1);
    assert_eq!(out.last(), Some(&Output::Terminated(k)));
    t.handle_timeout(200_000);
    assert_eq!(drain(&mut t), vec![]);
    assert_no_leak(&mut t);
}

#[test]
fn rerouted_invite_is_sent_at_once_and_retransmitted_over_the_new_flow_only() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE old"))
        .unwrap();
    drain(&mut t);
    t.handle_timeout(500);
    assert_eq!(drain(&mut t), vec![send(&k, "INVITE old")]);
    t.handle_timeout(1_500);
    assert_eq!(drain(&mut t), vec![send(&k, "INVITE old")]);
    t.reroute(2_000, &k, Transport::Unreliable, m("INVITE new"))
        .unwrap();
    assert_eq!(drain(&mut t), vec![send(&k, "INVITE new")], "sent at once");
    let ev = run(&mut t, Millis::MAX);
    assert!(
        ev.iter()
            .all(|(_, o)| !matches!(o, Output::Send { msg, .. } if msg.0 == "INVITE old")),
        "nothing more goes the old way: {ev:?}"
    );
    assert_eq!(
        send_times(&ev),
        vec![2_500, 3_500, 5_500, 9_500, 17_500],
        "from T1 again: the device just woke there"
    );
    assert_eq!(tu_events(&ev), vec![(32_000, timeout(&k, Timer::B))]);
    assert!(t.is_empty());
}

#[test]
fn invite_rerouted_onto_a_connection_is_not_retransmitted_and_one_answered_is_sent_once_more() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE udp"))
        .unwrap();
    drain(&mut t);
    t.reroute(0, &k, Transport::Reliable, m("INVITE tcp"))
        .unwrap();
    assert_eq!(drain(&mut t), vec![send(&k, "INVITE tcp")]);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(send_times(&ev), Vec::<Millis>::new());
    assert_eq!(tu_events(&ev), vec![(32_000, timeout(&k, Timer::B))]);

    let k = client_key("b", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    t.handle_response(10, &k, 180, m("180")).unwrap();
    drain(&mut t);
    t.reroute(20, &k, Transport::Unreliable, m("INVITE again"))
        .unwrap();
    assert_eq!(
        drain(&mut t),
        vec![send(&k, "INVITE again")],
        "once more, for a device that lost it"
    );
    assert_eq!(
        send_times(&run(&mut t, 15_000)),
        Vec::<Millis>::new(),
        "and not retransmitted"
    );
    t.handle_response(20_000, &k, 486, m("486")).unwrap();
    let k = client_key("c", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    t.handle_response(10, &k, 486, m("486")).unwrap();
    drain(&mut t);
    t.reroute(20, &k, Transport::Unreliable, m("INVITE again"))
        .unwrap();
    assert_eq!(drain(&mut t), vec![], "it has its answer: nothing to send");
    assert_no_leak(&mut t);
}

#[test]
fn silenced_invite_is_not_retransmitted_but_hears_answers_until_timer_b() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    t.silence(&k).unwrap();
    assert_eq!(run(&mut t, 31_999), vec![], "no retransmission");
    assert_eq!(
        t.handle_response(1_000, &k, 100, m("100")).unwrap(),
        ResponseOutcome::Deliver(m("100")),
        "what the device answers still comes in"
    );
    t.handle_response(2_000, &k, 487, m("487")).unwrap();
    assert_no_leak(&mut t);

    let k = client_key("b", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    t.silence(&k).unwrap();
    let out = run(&mut t, 32_000);
    assert!(
        out.iter().any(|(_, o)| matches!(
            o,
            Output::ToTu(TuEvent::Timeout {
                timer: Timer::B,
                ..
            })
        )),
        "Timer B still ends it: {out:?}"
    );
    assert!(t.is_empty());
}

#[test]
fn discarded_transaction_ends_at_once_whatever_its_state_and_its_key_is_free_again() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    t.handle_response(10, &k, 180, m("180")).unwrap();
    drain(&mut t);
    t.discard(&k);
    assert_eq!(drain(&mut t), vec![Output::Terminated(k.clone())]);
    assert_eq!(run(&mut t, Millis::MAX), vec![], "no timer left");
    t.start_client(20, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    assert_eq!(t.state(&k), Some(State::Calling));
    t.discard(&client_key("nothing", &Method::Invite));
}

#[test]
fn provisional_stops_timer_a_and_timer_b() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    assert_eq!(
        t.handle_response(100, &k, 100, m("100")).unwrap(),
        ResponseOutcome::Deliver(m("100"))
    );
    assert_eq!(t.state(&k), Some(State::Proceeding));
    assert_eq!(
        t.poll_timeout(),
        None,
        "no timer runs in Proceeding without Timer C"
    );
    t.handle_response(200, &k, 486, m("486")).unwrap();
    assert_no_leak(&mut t);
}

#[test]
fn invite_client_acks_non_2xx_itself_and_reacks_retransmissions_until_timer_d_32s() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    t.handle_response(100, &k, 180, m("180")).unwrap();
    assert_eq!(
        t.handle_response(200, &k, 486, m("486")).unwrap(),
        ResponseOutcome::Deliver(m("486"))
    );
    assert_eq!(drain(&mut t), vec![send(&k, "ACK for INVITE after 486")]);
    assert_eq!(t.state(&k), Some(State::Completed));
    // The retransmitted 486 is not passed up; the stored ACK is re-sent.
    assert_eq!(
        t.handle_response(300, &k, 486, m("486")).unwrap(),
        ResponseOutcome::Absorbed
    );
    assert_eq!(drain(&mut t), vec![send(&k, "ACK for INVITE after 486")]);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(terminations(&ev), vec![(32_200, k)]);
    assert_eq!(tu_events(&ev), vec![]);
    assert!(t.is_empty());
}

#[test]
fn reliable_invite_client_still_acks_non_2xx_and_timer_d_is_zero() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Reliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    t.handle_response(50, &k, 603, m("603")).unwrap();
    assert_eq!(
        drain(&mut t),
        vec![
            send(&k, "ACK for INVITE after 603"),
            Output::Terminated(k.clone())
        ]
    );
    assert!(t.is_empty());
}

#[test]
fn timer_d_is_at_least_64_t1_when_t1_is_large() {
    let mut t = table_with(Config {
        t1: 1_000,
        ..Config::default()
    });
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    t.handle_response(10, &k, 404, m("404")).unwrap();
    drain(&mut t);
    assert_eq!(t.poll_timeout(), Some(64_010));
    assert_no_leak(&mut t);
}

#[test]
fn invite_client_2xx_enters_accepted_passes_every_2xx_up_without_acking_until_timer_m() {
    let mut t = table();
    let k = client_key("a", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    assert_eq!(
        t.handle_response(100, &k, 200, m("200 a")).unwrap(),
        ResponseOutcome::Deliver(m("200 a"))
    );
    assert_eq!(t.state(&k), Some(State::Accepted));
    // Retransmission, and a 2xx from another fork branch: both to the TU, no ACK from us.
    assert_eq!(
        t.handle_response(600, &k, 200, m("200 a")).unwrap(),
        ResponseOutcome::Deliver(m("200 a"))
    );
    assert_eq!(
        t.handle_response(700, &k, 200, m("200 b")).unwrap(),
        ResponseOutcome::Deliver(m("200 b"))
    );
    assert_eq!(drain(&mut t), vec![]);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(terminations(&ev), vec![(32_100, k.clone())]);
    assert_eq!(send_times(&ev), Vec::<Millis>::new());
    // After Timer M, a 2xx is stray (RFC 6026 §7.2).
    assert_eq!(
        t.handle_response(40_000, &k, 200, m("200 a")).unwrap(),
        ResponseOutcome::Stray(m("200 a"))
    );
}

// ----- non-INVITE client: Timers E, F, K ---------------------------------------------------

#[test]
fn timer_e_doubles_from_t1_caps_at_t2_and_timer_f_fires_at_64_t1() {
    let mut t = table();
    let k = client_key("r", &register());
    t.start_client(0, k.clone(), Transport::Unreliable, m("REGISTER"))
        .unwrap();
    assert_eq!(drain(&mut t), vec![send(&k, "REGISTER")]);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(
        send_times(&ev),
        vec![500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]
    );
    assert_eq!(tu_events(&ev), vec![(32_000, timeout(&k, Timer::F))]);
    assert_eq!(terminations(&ev), vec![(32_000, k)]);
    assert!(t.is_empty());
}

#[test]
fn timer_e_is_t2_in_proceeding_and_timer_f_still_fires_once() {
    let mut t = table();
    let k = client_key("r", &register());
    t.start_client(0, k.clone(), Transport::Unreliable, m("REGISTER"))
        .unwrap();
    drain(&mut t);
    let ev = run(&mut t, 600);
    assert_eq!(send_times(&ev), vec![500]);
    assert_eq!(
        t.handle_response(600, &k, 100, m("100")).unwrap(),
        ResponseOutcome::Deliver(m("100"))
    );
    let ev = run(&mut t, Millis::MAX);
    // The 1_500 retransmission was already scheduled; from then on every T2.
    assert_eq!(
        send_times(&ev),
        vec![1_500, 5_500, 9_500, 13_500, 17_500, 21_500, 25_500, 29_500]
    );
    assert_eq!(tu_events(&ev), vec![(32_000, timeout(&k, Timer::F))]);
    assert!(t.is_empty());
}

#[test]
fn timer_k_is_t4_on_unreliable_and_absorbs_response_retransmissions() {
    let mut t = table();
    let k = client_key("r", &register());
    t.start_client(0, k.clone(), Transport::Unreliable, m("REGISTER"))
        .unwrap();
    drain(&mut t);
    assert_eq!(
        t.handle_response(1_000, &k, 200, m("200")).unwrap(),
        ResponseOutcome::Deliver(m("200"))
    );
    assert_eq!(t.state(&k), Some(State::Completed));
    assert_eq!(
        t.handle_response(3_000, &k, 200, m("200")).unwrap(),
        ResponseOutcome::Absorbed
    );
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(send_times(&ev), Vec::<Millis>::new());
    assert_eq!(terminations(&ev), vec![(6_000, k)]);
    assert!(t.is_empty());
}

#[test]
fn reliable_non_invite_client_never_retransmits_and_timer_k_is_zero() {
    let mut t = table();
    let k = client_key("r", &register());
    t.start_client(0, k.clone(), Transport::Reliable, m("REGISTER"))
        .unwrap();
    drain(&mut t);
    assert_eq!(t.poll_timeout(), Some(32_000), "only Timer F is armed");
    t.handle_response(100, &k, 200, m("200")).unwrap();
    assert_eq!(drain(&mut t), vec![Output::Terminated(k)]);
    assert!(t.is_empty());
}

// ----- INVITE server: Timers G, H, I, L, 100 Trying -----------------------------------------

fn new_invite_server(t: &mut Transactions<Msg>, now: Millis, transport: Transport) -> Key {
    let k = server_key("s", &Method::Invite);
    let outcome = t
        .handle_request(now, &k, &Method::Invite, transport, m("INVITE"))
        .unwrap();
    assert_eq!(outcome, RequestOutcome::New(m("INVITE")));
    k
}

#[test]
fn timer_g_doubles_from_t1_caps_at_t2_and_timer_h_fires_after_64_t1_without_ack() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Unreliable);
    t.send_response(0, &k, 486, m("486")).unwrap();
    assert_eq!(drain(&mut t), vec![send(&k, "486")]);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(
        send_times(&ev),
        vec![500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]
    );
    assert_eq!(tu_events(&ev), vec![(32_000, timeout(&k, Timer::H))]);
    assert_eq!(terminations(&ev), vec![(32_000, k)]);
    assert!(t.is_empty());
}

#[test]
fn reliable_invite_server_never_retransmits_final_but_timer_h_still_fires() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Reliable);
    t.send_response(10, &k, 486, m("486")).unwrap();
    drain(&mut t);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(send_times(&ev), Vec::<Millis>::new());
    assert_eq!(tu_events(&ev), vec![(32_010, timeout(&k, Timer::H))]);
    assert!(t.is_empty());
}

#[test]
fn ack_for_non_2xx_confirms_stops_timer_g_and_timer_i_is_t4_on_unreliable() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Unreliable);
    t.send_response(0, &k, 486, m("486")).unwrap();
    drain(&mut t);
    assert_eq!(
        t.handle_request(700, &k, &Method::Ack, Transport::Unreliable, m("ACK"))
            .unwrap(),
        RequestOutcome::Absorbed
    );
    assert_eq!(t.state(&k), Some(State::Confirmed));
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(send_times(&ev), Vec::<Millis>::new(), "Timer G stopped");
    assert_eq!(tu_events(&ev), vec![], "Timer H stopped");
    assert_eq!(terminations(&ev), vec![(5_700, k)]);
    assert!(t.is_empty());
}

#[test]
fn timer_i_is_zero_on_reliable_transport() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Reliable);
    t.send_response(0, &k, 486, m("486")).unwrap();
    drain(&mut t);
    t.handle_request(100, &k, &Method::Ack, Transport::Reliable, m("ACK"))
        .unwrap();
    assert_eq!(drain(&mut t), vec![Output::Terminated(k)]);
    assert!(t.is_empty());
}

#[test]
fn acks_and_invites_are_absorbed_silently_in_confirmed() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Unreliable);
    t.send_response(0, &k, 486, m("486")).unwrap();
    t.handle_request(700, &k, &Method::Ack, Transport::Unreliable, m("ACK"))
        .unwrap();
    drain(&mut t);
    for now in [800, 900] {
        assert_eq!(
            t.handle_request(now, &k, &Method::Ack, Transport::Unreliable, m("ACK"))
                .unwrap(),
            RequestOutcome::Absorbed
        );
    }
    assert_eq!(
        t.handle_request(
            1_000,
            &k,
            &Method::Invite,
            Transport::Unreliable,
            m("INVITE")
        )
        .unwrap(),
        RequestOutcome::Absorbed
    );
    assert_eq!(drain(&mut t), vec![]);
    assert_eq!(
        t.poll_timeout(),
        Some(5_700),
        "Timer I not restarted by an ACK"
    );
    assert_no_leak(&mut t);
}

#[test]
fn retransmitted_invite_in_proceeding_resends_the_last_provisional() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Unreliable);
    t.send_response(0, &k, 100, m("100")).unwrap();
    t.send_response(50, &k, 180, m("180")).unwrap();
    assert_eq!(drain(&mut t), vec![send(&k, "100"), send(&k, "180")]);
    assert_eq!(
        t.handle_request(500, &k, &Method::Invite, Transport::Unreliable, m("INVITE"))
            .unwrap(),
        RequestOutcome::Absorbed
    );
    assert_eq!(drain(&mut t), vec![send(&k, "180")]);
    t.send_response(600, &k, 480, m("480")).unwrap();
    assert_no_leak(&mut t);
}

#[test]
fn retransmitted_invite_in_completed_resends_the_final() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Reliable);
    t.send_response(0, &k, 480, m("480")).unwrap();
    drain(&mut t);
    t.handle_request(300, &k, &Method::Invite, Transport::Reliable, m("INVITE"))
        .unwrap();
    assert_eq!(drain(&mut t), vec![send(&k, "480")]);
    assert_no_leak(&mut t);
}

#[test]
fn invite_retransmission_after_2xx_is_absorbed_and_ack_goes_to_tu_rfc6026() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Unreliable);
    t.send_response(0, &k, 200, m("200")).unwrap();
    assert_eq!(drain(&mut t), vec![send(&k, "200")]);
    assert_eq!(t.state(&k), Some(State::Accepted));
    // Retransmitted INVITE: not a new request, not passed up, no 2xx re-sent by us.
    assert_eq!(
        t.handle_request(500, &k, &Method::Invite, Transport::Unreliable, m("INVITE"))
            .unwrap(),
        RequestOutcome::Absorbed
    );
    assert_eq!(drain(&mut t), vec![]);
    // The TU's own 2xx retransmission goes out.
    t.send_response(500, &k, 200, m("200")).unwrap();
    assert_eq!(drain(&mut t), vec![send(&k, "200")]);
    // A non-2xx is not allowed any more.
    assert_eq!(
        t.send_response(600, &k, 486, m("486")),
        Err(Error::InvalidState {
            state: State::Accepted
        })
    );
    // An ACK matching the transaction is passed to the TU, not absorbed.
    assert_eq!(
        t.handle_request(700, &k, &Method::Ack, Transport::Unreliable, m("ACK"))
            .unwrap(),
        RequestOutcome::Ack {
            msg: m("ACK"),
            matched: true
        }
    );
    assert_eq!(t.state(&k), Some(State::Accepted));
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(terminations(&ev), vec![(32_000, k)], "Timer L = 64·T1");
    assert_eq!(tu_events(&ev), vec![]);
    assert!(t.is_empty());
}

#[test]
fn tu_is_told_to_send_100_trying_after_200ms_of_silence_once() {
    let mut t = table();
    let k = new_invite_server(&mut t, 1_000, Transport::Unreliable);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(
        tu_events(&ev),
        vec![(1_200, TuEvent::SendTrying { key: k.clone() })]
    );
    assert_eq!(t.state(&k), Some(State::Proceeding));
    t.send_response(1_200, &k, 100, m("100")).unwrap();
    t.send_response(5_000, &k, 480, m("480")).unwrap();
    assert_no_leak(&mut t);
}

#[test]
fn no_trying_reminder_when_the_tu_answers_within_200ms() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Unreliable);
    t.send_response(10, &k, 100, m("100")).unwrap();
    drain(&mut t);
    assert_eq!(t.poll_timeout(), None);
    t.send_response(50_000, &k, 480, m("480")).unwrap();
    let ev = run(&mut t, Millis::MAX);
    assert!(!tu_events(&ev)
        .iter()
        .any(|(_, e)| matches!(e, TuEvent::SendTrying { .. })));
    assert!(t.is_empty());
}

#[test]
fn invite_retransmission_before_any_response_asks_for_trying_at_once() {
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Unreliable);
    t.handle_request(100, &k, &Method::Invite, Transport::Unreliable, m("INVITE"))
        .unwrap();
    assert_eq!(
        drain(&mut t),
        vec![Output::ToTu(TuEvent::SendTrying { key: k.clone() })]
    );
    assert_eq!(
        t.poll_timeout(),
        None,
        "the 200 ms reminder is not repeated"
    );
    t.send_response(150, &k, 486, m("486")).unwrap();
    assert_no_leak(&mut t);
}

#[test]
fn trying_reminder_can_be_disabled() {
    let mut t = table_with(Config {
        trying_delay: None,
        ..Config::default()
    });
    let k = new_invite_server(&mut t, 0, Transport::Unreliable);
    assert_eq!(t.poll_timeout(), None);
    t.handle_request(100, &k, &Method::Invite, Transport::Unreliable, m("INVITE"))
        .unwrap();
    assert_eq!(drain(&mut t), vec![]);
    t.send_response(150, &k, 486, m("486")).unwrap();
    assert_no_leak(&mut t);
}

// ----- non-INVITE server: Timer J ----------------------------------------------------------

#[test]
fn non_invite_server_discards_in_trying_resends_in_proceeding_and_completed_then_timer_j() {
    let mut t = table();
    let k = server_key("n", &register());
    let req = |t: &mut Transactions<Msg>, now| {
        t.handle_request(now, &k, &register(), Transport::Unreliable, m("REGISTER"))
            .unwrap()
    };
    assert_eq!(req(&mut t, 0), RequestOutcome::New(m("REGISTER")));
    assert_eq!(t.state(&k), Some(State::Trying));
    assert_eq!(req(&mut t, 500), RequestOutcome::Absorbed);
    assert_eq!(drain(&mut t), vec![]);
    t.send_response(600, &k, 100, m("100")).unwrap();
    assert_eq!(req(&mut t, 1_500), RequestOutcome::Absorbed);
    assert_eq!(drain(&mut t), vec![send(&k, "100"), send(&k, "100")]);
    t.send_response(2_000, &k, 200, m("200")).unwrap();
    assert_eq!(req(&mut t, 3_500), RequestOutcome::Absorbed);
    assert_eq!(drain(&mut t), vec![send(&k, "200"), send(&k, "200")]);
    assert_eq!(
        t.send_response(3_600, &k, 200, m("200")),
        Err(Error::InvalidState {
            state: State::Completed
        })
    );
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(
        send_times(&ev),
        Vec::<Millis>::new(),
        "servers never retransmit non-INVITE responses on their own"
    );
    assert_eq!(terminations(&ev), vec![(34_000, k)]);
    assert!(t.is_empty());
}

#[test]
fn timer_j_is_zero_on_reliable_transport() {
    let mut t = table();
    let k = server_key("n", &register());
    t.handle_request(0, &k, &register(), Transport::Reliable, m("REGISTER"))
        .unwrap();
    t.send_response(10, &k, 200, m("200")).unwrap();
    assert_eq!(
        drain(&mut t),
        vec![send(&k, "200"), Output::Terminated(k.clone())]
    );
    assert!(t.is_empty());
}

// ----- table matching ----------------------------------------------------------------------

#[test]
fn ack_matches_its_invite_server_transaction() {
    let ack_key = server_key("s", &Method::Ack);
    assert_eq!(ack_key, server_key("s", &Method::Invite));
    let mut t = table();
    let k = new_invite_server(&mut t, 0, Transport::Unreliable);
    t.send_response(0, &k, 404, m("404")).unwrap();
    t.handle_request(10, &ack_key, &Method::Ack, Transport::Unreliable, m("ACK"))
        .unwrap();
    assert_eq!(t.state(&k), Some(State::Confirmed));
    assert_eq!(t.len(), 1);
    assert_no_leak(&mut t);
}

#[test]
fn cancel_is_its_own_server_transaction_and_names_the_invite_it_cancels() {
    let mut t = table();
    let invite = new_invite_server(&mut t, 0, Transport::Unreliable);
    let cancel = server_key("s", &Method::Cancel);
    assert_ne!(cancel, invite);
    assert_eq!(
        t.handle_request(
            10,
            &cancel,
            &Method::Cancel,
            Transport::Unreliable,
            m("CANCEL")
        )
        .unwrap(),
        RequestOutcome::New(m("CANCEL"))
    );
    assert_eq!(t.len(), 2);
    assert_eq!(
        t.state(&invite),
        Some(State::Proceeding),
        "CANCEL did not touch the INVITE"
    );
    assert_eq!(cancel.cancelled_invite(), Some(invite.clone()));
    assert_eq!(invite.cancelled_invite(), None);
    // §9.2: 200 to the CANCEL, 487 to the INVITE.
    t.send_response(10, &cancel, 200, m("200 CANCEL")).unwrap();
    t.send_response(10, &invite, 487, m("487")).unwrap();
    t.handle_request(20, &invite, &Method::Ack, Transport::Unreliable, m("ACK"))
        .unwrap();
    assert_no_leak(&mut t);
}

#[test]
fn different_sent_by_is_a_different_server_transaction() {
    let mut t = table();
    let a = Key::server("z9hG4bKsame", "192.0.2.1:5060", &Method::Invite).unwrap();
    let b = Key::server("z9hG4bKsame", "192.0.2.2:5060", &Method::Invite).unwrap();
    for k in [&a, &b] {
        assert_eq!(
            t.handle_request(0, k, &Method::Invite, Transport::Unreliable, m("INVITE"))
                .unwrap(),
            RequestOutcome::New(m("INVITE"))
        );
    }
    assert_eq!(t.len(), 2);
    for k in [&a, &b] {
        t.send_response(0, k, 486, m("486")).unwrap();
    }
    assert_no_leak(&mut t);
}

#[test]
fn same_branch_different_non_invite_method_is_a_different_transaction() {
    let r = server_key("x", &register());
    let o = server_key("x", &Method::from_token("OPTIONS"));
    assert_ne!(r, o);
}

#[test]
fn branch_and_sent_by_match_case_insensitively_but_methods_do_not() {
    let a = Key::server("z9hG4bKAbC", "Host.Example:5060", &Method::Invite).unwrap();
    let b = Key::server("z9hg4bkabc", "host.example:5060", &Method::Invite).unwrap();
    assert_eq!(a, b);
    assert_eq!(Method::from_token("invite"), Method::Other("invite".into()));
}

#[test]
fn branch_without_magic_cookie_is_rejected() {
    assert_eq!(
        Key::server("abc123", SENT_BY, &Method::Invite),
        Err(KeyError::MissingMagicCookie)
    );
    assert_eq!(
        Key::client("z9hG4b", &Method::Invite),
        Err(KeyError::MissingMagicCookie)
    );
    assert_eq!(
        Key::server("z9hG4bK1", " ", &Method::Invite),
        Err(KeyError::EmptySentBy)
    );
}

#[test]
fn ack_without_a_matching_transaction_goes_to_the_tu_and_creates_nothing() {
    let mut t = table();
    let k = server_key("ack2xx", &Method::Ack);
    assert_eq!(
        t.handle_request(0, &k, &Method::Ack, Transport::Unreliable, m("ACK"))
            .unwrap(),
        RequestOutcome::Ack {
            msg: m("ACK"),
            matched: false
        }
    );
    assert!(t.is_empty());
    assert_eq!(drain(&mut t), vec![]);
}

#[test]
fn client_matching_uses_branch_and_cseq_method() {
    let mut t = table();
    let invite = client_key("c", &Method::Invite);
    let cancel = invite.cancel().unwrap();
    assert_eq!(cancel, client_key("c", &Method::Cancel));
    t.start_client(0, invite.clone(), Transport::Reliable, m("INVITE"))
        .unwrap();
    t.handle_response(10, &invite, 180, m("180")).unwrap();
    t.start_client(20, cancel.clone(), Transport::Reliable, m("CANCEL"))
        .unwrap();
    t.cancel_sent(20, &invite).unwrap();
    // 200 with CSeq CANCEL goes to the CANCEL transaction, not the INVITE one.
    assert_eq!(
        t.handle_response(30, &cancel, 200, m("200 CANCEL"))
            .unwrap(),
        ResponseOutcome::Deliver(m("200 CANCEL"))
    );
    assert_eq!(t.state(&invite), Some(State::Proceeding));
    assert_eq!(t.state(&cancel), None, "reliable: Timer K is zero");
    t.handle_response(40, &invite, 487, m("487")).unwrap();
    assert_no_leak(&mut t);
}

#[test]
fn response_without_a_matching_client_transaction_is_stray() {
    let mut t = table();
    let k = client_key("nope", &Method::Invite);
    assert_eq!(
        t.handle_response(0, &k, 200, m("200")).unwrap(),
        ResponseOutcome::Stray(m("200"))
    );
    assert!(t.is_empty());
}

#[test]
fn ack_cannot_have_a_client_transaction() {
    assert_eq!(
        Key::client("z9hG4bK1", &Method::Ack),
        Err(KeyError::AckHasNoClientTransaction)
    );
}

#[test]
fn misuse_is_reported_as_errors_without_changing_state() {
    let mut t = table();
    let sk = new_invite_server(&mut t, 0, Transport::Unreliable);
    let ck = client_key("c", &Method::Invite);
    assert_eq!(
        t.send_response(0, &sk, 99, m("99")),
        Err(Error::InvalidStatus(99))
    );
    assert_eq!(
        t.send_response(0, &sk, 700, m("700")),
        Err(Error::InvalidStatus(700))
    );
    assert_eq!(
        t.handle_request(0, &sk, &register(), Transport::Unreliable, m("REGISTER")),
        Err(Error::KeyMismatch)
    );
    assert_eq!(
        t.handle_request(0, &ck, &Method::Invite, Transport::Unreliable, m("INVITE")),
        Err(Error::WrongRole)
    );
    assert_eq!(
        t.send_response(0, &ck, 200, m("200")),
        Err(Error::WrongRole)
    );
    assert_eq!(
        t.start_client(0, sk.clone(), Transport::Unreliable, m("X")),
        Err(Error::WrongRole)
    );
    t.start_client(0, ck.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    assert_eq!(
        t.start_client(0, ck.clone(), Transport::Unreliable, m("INVITE")),
        Err(Error::AlreadyExists)
    );
    assert_eq!(
        t.start_proxied_invite(
            0,
            client_key("r", &register()),
            Transport::Unreliable,
            m("R")
        ),
        Err(Error::NotInvite)
    );
    assert_eq!(t.state(&sk), Some(State::Proceeding));
    t.send_response(0, &sk, 500, m("500")).unwrap();
    assert_eq!(
        t.send_response(0, &sk, 500, m("500")),
        Err(Error::InvalidState {
            state: State::Completed
        })
    );
    assert_no_leak(&mut t);
}

// ----- Timer C and CANCEL wait ---------------------------------------------------------------

fn timer_c_deadline(t: &Transactions<Msg>, k: &Key) -> Option<Millis> {
    t.txs.get(k).and_then(|tx| tx.timers.get(Timer::C))
}

#[test]
fn timer_c_is_reset_by_101_to_199_but_not_100_and_then_asks_for_cancel() {
    let mut t = table();
    let k = client_key("p", &Method::Invite);
    t.start_proxied_invite(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    assert_eq!(timer_c_deadline(&t, &k), Some(181_000));
    t.handle_response(500, &k, 100, m("100")).unwrap();
    assert_eq!(
        timer_c_deadline(&t, &k),
        Some(181_000),
        "100 does not reset"
    );
    t.handle_response(1_000, &k, 180, m("180")).unwrap();
    assert_eq!(timer_c_deadline(&t, &k), Some(182_000), "180 resets");
    let ev = run(&mut t, 182_000);
    assert_eq!(
        tu_events(&ev),
        vec![(182_000, TuEvent::CancelNeeded { key: k.clone() })]
    );
    assert_eq!(t.state(&k), Some(State::Proceeding), "waits for the 487");
    // No 487 ever comes: given up 64·T1 after the CANCEL (§9.1).
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(
        tu_events(&ev),
        vec![(214_000, timeout(&k, Timer::CancelWait))]
    );
    assert_eq!(terminations(&ev), vec![(214_000, k)]);
    assert!(t.is_empty());
}

#[test]
fn timer_c_cancel_followed_by_487_ends_normally() {
    let mut t = table();
    let k = client_key("p", &Method::Invite);
    t.start_proxied_invite(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    t.handle_response(100, &k, 183, m("183")).unwrap();
    drain(&mut t);
    run(&mut t, 181_100);
    assert_eq!(
        t.handle_response(181_200, &k, 487, m("487")).unwrap(),
        ResponseOutcome::Deliver(m("487"))
    );
    assert_eq!(drain(&mut t), vec![send(&k, "ACK for INVITE after 487")]);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(
        tu_events(&ev),
        vec![],
        "no CancelWait timeout after the final"
    );
    assert!(t.is_empty());
}

#[test]
fn timer_c_without_provisional_reports_408_equivalent() {
    // T1 = 5 s makes Timer B (320 s) later than Timer C (181 s).
    let mut t = table_with(Config {
        t1: 5_000,
        ..Config::default()
    });
    let k = client_key("p", &Method::Invite);
    t.start_proxied_invite(0, k.clone(), Transport::Reliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    let ev = run(&mut t, Millis::MAX);
    assert_eq!(tu_events(&ev), vec![(181_000, timeout(&k, Timer::C))]);
    assert_eq!(terminations(&ev), vec![(181_000, k)]);
    assert!(t.is_empty());
}

#[test]
fn timer_c_stops_on_a_final_response_and_is_absent_for_plain_clients() {
    let mut t = table();
    let p = client_key("p", &Method::Invite);
    t.start_proxied_invite(0, p.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    t.handle_response(100, &p, 180, m("180")).unwrap();
    t.handle_response(200, &p, 200, m("200")).unwrap();
    assert_eq!(timer_c_deadline(&t, &p), None);
    let plain = client_key("q", &Method::Invite);
    t.start_client(0, plain.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    assert_eq!(timer_c_deadline(&t, &plain), None);
    t.handle_response(100, &plain, 180, m("180")).unwrap();
    assert_eq!(timer_c_deadline(&t, &plain), None);
    t.cancel_sent(300, &plain).unwrap();
    let ev = run(&mut t, Millis::MAX);
    assert!(!tu_events(&ev)
        .iter()
        .any(|(_, e)| matches!(e, TuEvent::CancelNeeded { .. })));
    assert!(t.is_empty());
}

#[test]
fn cancel_sent_is_rejected_before_a_provisional_and_for_non_invite() {
    let mut t = table();
    let k = client_key("p", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    assert_eq!(
        t.cancel_sent(10, &k),
        Err(Error::InvalidState {
            state: State::Calling
        })
    );
    let r = client_key("r", &register());
    t.start_client(0, r.clone(), Transport::Unreliable, m("REGISTER"))
        .unwrap();
    assert_eq!(t.cancel_sent(10, &r), Err(Error::NotInvite));
    assert_no_leak(&mut t);
}

// ----- transport errors ----------------------------------------------------------------------

#[test]
fn transport_error_terminates_clients_but_not_invite_server_rfc6026() {
    let mut t = table();
    let c = client_key("c", &Method::Invite);
    t.start_client(0, c.clone(), Transport::Reliable, m("INVITE"))
        .unwrap();
    drain(&mut t);
    t.transport_error(&c).unwrap();
    assert_eq!(
        drain(&mut t),
        vec![
            Output::ToTu(TuEvent::TransportError { key: c.clone() }),
            Output::Terminated(c.clone())
        ]
    );
    let s = new_invite_server(&mut t, 0, Transport::Reliable);
    t.send_response(0, &s, 486, m("486")).unwrap();
    drain(&mut t);
    t.transport_error(&s).unwrap();
    assert_eq!(
        drain(&mut t),
        vec![Output::ToTu(TuEvent::TransportError { key: s.clone() })]
    );
    assert_eq!(t.state(&s), Some(State::Completed));
    assert_eq!(t.transport_error(&c), Err(Error::NoTransaction));
    assert_no_leak(&mut t);
}

// ----- poll_timeout --------------------------------------------------------------------------

#[test]
fn poll_timeout_is_the_earliest_deadline_across_transactions() {
    let mut t = table();
    assert_eq!(t.poll_timeout(), None);
    let inv = client_key("a", &Method::Invite);
    t.start_client(0, inv.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    assert_eq!(t.poll_timeout(), Some(500), "Timer A");
    let s = new_invite_server(&mut t, 100, Transport::Unreliable);
    assert_eq!(t.poll_timeout(), Some(300), "100 Trying reminder");
    t.send_response(100, &s, 100, m("100")).unwrap();
    assert_eq!(t.poll_timeout(), Some(500), "back to Timer A");
    let reg = client_key("r", &register());
    t.start_client(200, reg.clone(), Transport::Reliable, m("REGISTER"))
        .unwrap();
    assert_eq!(t.poll_timeout(), Some(500), "Timer F (32 200) is later");
    t.handle_response(250, &inv, 180, m("180")).unwrap();
    assert_eq!(t.poll_timeout(), Some(32_200), "Timer F once A and B stop");
    t.send_response(300, &s, 500, m("500")).unwrap();
    assert_eq!(t.poll_timeout(), Some(800), "Timer G");
    t.handle_response(400, &inv, 486, m("486")).unwrap();
    t.handle_response(400, &reg, 200, m("200")).unwrap();
    drain(&mut t);
    assert_no_leak(&mut t);
}

/// A tiny deterministic generator so the randomised test needs no dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

#[test]
fn poll_timeout_stays_the_earliest_deadline_under_random_traffic_and_nothing_leaks() {
    let mut rng = Lcg(7);
    let mut t = table();
    let mut now: Millis = 0;
    for step in 0..3_000u64 {
        now += rng.next(700);
        let transport = if rng.next(2) == 0 {
            Transport::Reliable
        } else {
            Transport::Unreliable
        };
        let branch = format!("b{}", rng.next(40));
        let method = match rng.next(3) {
            0 => Method::Invite,
            1 => Method::Cancel,
            _ => register(),
        };
        let status = [100, 180, 200, 404, 487][rng.next(5) as usize];
        // Errors are fine here (e.g. a response in the wrong state); state must stay consistent.
        match rng.next(6) {
            0 => {
                let k = client_key(&branch, &method);
                let _ = if method == Method::Invite && rng.next(2) == 0 {
                    t.start_proxied_invite(now, k, transport, m("req"))
                } else {
                    t.start_client(now, k, transport, m("req"))
                };
            }
            1 => {
                let k = client_key(&branch, &method);
                let _ = t.handle_response(now, &k, status, m("resp"));
            }
            2 => {
                let k = server_key(&branch, &method);
                let _ = t.handle_request(now, &k, &method, transport, m("req"));
            }
            3 => {
                let k = server_key(&branch, &method);
                let _ = t.send_response(now, &k, status, m("resp"));
            }
            4 => {
                let k = server_key(&branch, &Method::Ack);
                let _ = t.handle_request(now, &k, &Method::Ack, transport, m("ACK"));
            }
            _ => t.handle_timeout(now),
        }
        drain(&mut t);
        assert_eq!(
            t.poll_timeout(),
            t.earliest_timer_brute_force(),
            "step {step}"
        );
        assert_eq!(
            t.schedule.len(),
            t.txs
                .values()
                .filter(|tx| tx.timers.next().is_some())
                .count()
        );
    }
    // Finish every server transaction still waiting for its TU, then run the clock out.
    let waiting: Vec<Key> = t
        .txs
        .keys()
        .filter(|k| k.role() == Role::Server)
        .cloned()
        .collect();
    for k in waiting {
        let _ = t.send_response(now, &k, 486, m("486"));
    }
    let pending: Vec<Key> = t.txs.keys().cloned().collect();
    for k in pending {
        if t.state(&k) == Some(State::Proceeding) && k.role() == Role::Client {
            let _ = t.handle_response(now, &k, 408, m("408"));
        }
    }
    assert_no_leak(&mut t);
}

#[test]
fn handle_timeout_returns_even_with_zero_timers_or_saturated_deadlines() {
    let mut t = table_with(Config {
        t1: 0,
        t2: 0,
        ..Config::default()
    });
    let k = client_key("z", &Method::Invite);
    t.start_client(0, k.clone(), Transport::Unreliable, m("INVITE"))
        .unwrap();
    t.handle_timeout(0);
    assert!(
        drain(&mut t).contains(&Output::Terminated(k.clone())),
        "Timer B = 0"
    );
    let mut t = table();
    t.start_client(
        Millis::MAX - 10,
        k.clone(),
        Transport::Unreliable,
        m("INVITE"),
    )
    .unwrap();
    t.handle_timeout(Millis::MAX);
    assert!(drain(&mut t).contains(&Output::Terminated(k)));
    assert_no_leak(&mut t);
}

#[test]
fn timeouts_handled_at_most_a_few_at_a_time_leave_the_rest_due() {
    let mut t = table();
    for n in 0..5 {
        let k = client_key(&format!("x{n}"), &Method::Other("OPTIONS".to_owned()));
        t.start_client(0, k, Transport::Reliable, m("OPTIONS"))
            .unwrap();
    }
    drain(&mut t);
    t.handle_timeout_at_most(Millis::MAX, 2);
    assert_eq!(t.len(), 3, "two timed out, earliest first");
    assert!(t.poll_timeout().is_some_and(|at| at < Millis::MAX));
    t.handle_timeout_at_most(Millis::MAX, 10);
    assert!(t.is_empty());
}
