//! The whole node simulated from seeds (see `sim/mod.rs`): thousands of random runs with
//! every fault of the network, the push service and the phones, each checked against the
//! properties of `sim/check.rs`; one scripted run per real-world race of issue 9, and of
//! the answers from the push of issue 13; and the proof that the properties catch a broken
//! core.
//!
//! `SIM_SEEDS=<n>` runs more seeds (the default keeps the suite quick); `SIM_SEED=<seed>`
//! runs one and prints its trace.

mod sim;

use pushpark_model::Fault;

use sim::caller::CallSpec;
use sim::net::NetFaults;
use sim::phone::{Answer, FromPush, OnPush, PhoneSpec};
use sim::push::PushFaults;
use sim::{run, Scenario};

/// Seeds the suite runs by default.
const SEEDS: u64 = 2_000;

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        // One seed: the node's own log too (RUST_LOG, e.g. `pushpark=debug`).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .with_test_writer()
            .try_init();
        return vec![seed];
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS);
    (0..n).collect()
}

/// The first `lines` and last `lines` of a long report.
fn shorten(report: &str, lines: usize) -> String {
    let all: Vec<&str> = report.lines().collect();
    if all.len() <= 2 * lines {
        return report.to_owned();
    }
    format!(
        "{}\n[… {} lines …]\n{}",
        all[..lines].join("\n"),
        all.len() - 2 * lines,
        all[all.len() - lines..].join("\n")
    )
}

#[test]
fn every_seed_keeps_every_property() {
    let seeds = seeds();
    let mut failed = Vec::new();
    let mut broken = std::collections::BTreeMap::<String, Vec<u64>>::new();
    let mut exercised = std::collections::BTreeMap::<&str, usize>::new();
    for &seed in &seeds {
        match run(seed, &Scenario::random(seed), None) {
            Err(report) => {
                if failed.is_empty() {
                    eprintln!("{}", shorten(&report, 400));
                }
                failed.push(seed);
                for property in sim::broken_properties(&report) {
                    broken.entry(property).or_default().push(seed);
                }
            }
            Ok(world) => {
                if seeds.len() == 1 {
                    eprintln!("{}", world.net.trace.join("\n"));
                }
                for what in answers_from_the_push(&world) {
                    *exercised.entry(what).or_default() += 1;
                }
            }
        }
    }
    for (property, seeds) in &broken {
        eprintln!(
            "{property}: {} seeds, first {:?}",
            seeds.len(),
            &seeds[..seeds.len().min(10)]
        );
    }
    eprintln!("runs with answers from the push: {exercised:?}");
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed: {failed:?} (rerun one with SIM_SEED=<seed>)",
        failed.len(),
        seeds.len()
    );
    if seeds.len() >= SEEDS as usize {
        // The properties of the app API hold only if its paths are taken: the simulation's
        // reachability, as the model's "sometimes" properties.
        for what in ANSWERS {
            assert!(
                exercised.contains_key(what),
                "no run exercised {what}: {exercised:?}"
            );
        }
    }
}

/// What the runs' answers from the push came to, each of which some run must see.
const ANSWERS: [&str; 10] = [
    "busy taken",
    "decline taken",
    "ringing taken",
    "ringback",
    "conflict",
    "conflict on a refusal",
    "call over",
    "registered after a taken refusal",
    "caller got 486 after a taken busy",
    "app gave up (lost)",
];

/// The kinds of answers from the push that `world`'s run exercised.
fn answers_from_the_push(world: &sim::World) -> Vec<&'static str> {
    use pushpark::node::AppAnswer;
    use pushpark_model::{AppReply, PushAnswer};
    let mut kinds = Vec::new();
    let mut saw = |what: &'static str, yes: bool| {
        if yes && !kinds.contains(&what) {
            kinds.push(what);
        }
    };
    for a in &world.app_answers {
        let taken = a.reply == AppAnswer::Reply(AppReply::Taken);
        saw("busy taken", taken && a.answer == PushAnswer::Busy);
        saw("decline taken", taken && a.answer == PushAnswer::Decline);
        saw("ringing taken", taken && a.answer == PushAnswer::Ringing);
        saw("ringback", a.ringbacks > 0);
        let conflict = a.reply == AppAnswer::Reply(AppReply::Conflict);
        saw("conflict", conflict);
        saw(
            "conflict on a refusal",
            conflict && a.answer != PushAnswer::Ringing,
        );
        saw("call over", a.reply == AppAnswer::Reply(AppReply::CallOver));
        saw("expired", a.reply == AppAnswer::Expired);
        saw("taken again (a retry)", taken && a.attempt > 0);
        let refused = taken && a.answer != PushAnswer::Ringing;
        let phone = &world.phones[a.phone];
        saw(
            "registered after a taken refusal",
            refused && phone.seen.registered.iter().any(|&r| r > a.at),
        );
        let caller = world.callers.iter().find(|c| c.call_id == a.call_id);
        saw(
            "caller got 486 after a taken busy",
            taken && a.answer == PushAnswer::Busy && caller.and_then(|c| c.answer()) == Some(486),
        );
    }
    for phone in &world.phones {
        let unanswered =
            phone.seen.answered_from_push.iter().any(|(_, call_id, _)| {
                !phone.seen.app_replies.iter().any(|(_, c, _)| c == call_id)
            });
        saw("app gave up (lost)", unanswered);
    }
    kinds
}

#[test]
fn a_seed_reproduces_its_run() {
    for seed in [1, 7, 42] {
        let scenario = Scenario::random(seed);
        let trace = |_| match run(seed, &scenario, None) {
            Ok(world) => world.net.trace,
            Err(report) => vec![report],
        };
        assert_eq!(trace(0), trace(1), "seed {seed} ran differently twice");
    }
}

// ----- the three races of issue 9, scripted ------------------------------------------

/// A phone of user `u0` that answers every call after two seconds.
fn phone(tcp: bool) -> PhoneSpec {
    PhoneSpec {
        user: "u0".to_owned(),
        tcp,
        call_waiting: false,
        sleeps_at: None,
        stays_awake: 60_000,
        new_port_on_wake: false,
        answers: [
            (Answer::Accept, 1),
            (Answer::Busy, 0),
            (Answer::Decline, 0),
            (Answer::Ignore, 0),
        ],
        answer_after: (2_000, 2_000),
        wake_after: (2_000, 2_000),
        dies: 0.0,
        talk: (5_000, 5_000),
        from_push: FromPush::NEVER,
    }
}

fn call(at: u64, cancel_after: Option<u64>, talk: u64) -> CallSpec {
    CallSpec {
        callee: "u0".to_owned(),
        at,
        cancel_after,
        talk,
    }
}

fn scenario(phones: Vec<PhoneSpec>, calls: Vec<CallSpec>) -> Scenario {
    Scenario {
        phones,
        calls,
        net: NetFaults::PERFECT,
        push: PushFaults::PERFECT,
        store_latency: (5, 5),
        config: sim::with_app_api(),
    }
}

/// Runs `scenario` as is and with `fault` in the core: as is, every property holds and
/// the last caller is answered 200; with the fault, `property` fails.
fn race(scenario: &Scenario, fault: Fault, property: &str) {
    race_ending(scenario, fault, property, 200);
}

/// [`race`], the last caller answered `code`; the run as is, for more checks.
fn race_ending(scenario: &Scenario, fault: Fault, property: &str, code: u16) -> sim::World {
    let world = match run(1, scenario, None) {
        Ok(world) => world,
        Err(report) => panic!("{}", shorten(&report, 300)),
    };
    let last = world.callers.last().expect("a call");
    assert_eq!(last.answer(), Some(code), "{}", world.net.trace.join("\n"));
    match run(1, scenario, Some(fault)) {
        Ok(world) => panic!("{fault:?} went unnoticed\n{}", world.net.trace.join("\n")),
        Err(report) => assert!(
            report.contains(&format!("\n{property}:"))
                || report.contains(&format!(": {property}:")),
            "{fault:?} broke something else than {property}:\n{}",
            shorten(&report, 200)
        ),
    }
    world
}

/// Race 1: B sleeps; A1 calls and cancels while B is pushed; A2 calls; B wakes and
/// registers. B must ring for A2's live call, not be held busy by the notice of A1's
/// ended one. (Broken: the notice goes first, B answers A2 486.)
#[test]
fn notice_of_an_ended_call_never_makes_a_free_phone_busy() {
    let mut b = phone(false);
    b.sleeps_at = Some(1_000);
    // Past the awake window: the node takes B to be asleep.
    let scenario = scenario(
        vec![b],
        vec![
            call(200_000, Some(1_000), 5_000),
            call(200_500, None, 5_000),
        ],
    );
    race(
        &scenario,
        Fault::NoticeBeforeLiveCall,
        "live_call_never_refused_for_an_ended_call",
    );
}

/// Race 2: B, on UDP, is in a call through this server (A1's), long after it last
/// registered; A2 calls. B is awake and must get A2's INVITE at once (it has call
/// waiting); an awake app ignores a push. (Broken: A2 is parked, pushed, and gets 480.)
#[test]
fn call_waiting_on_udp_reaches_the_phone_in_a_call() {
    let mut b = phone(false);
    b.call_waiting = true;
    b.talk = (300_000, 300_000);
    let scenario = scenario(
        vec![b],
        vec![call(100_000, None, 300_000), call(250_000, None, 5_000)],
    );
    race(
        &scenario,
        Fault::AwakeDeviceTakenAsleep,
        "awake_device_gets_the_call",
    );
}

/// Race 3: B is connected over TCP; its app is killed while A's INVITE rings on it. The
/// node must push B at once, B wakes, registers and answers. (Broken: no push; A hears
/// nothing until the deadline.)
#[test]
fn dropped_tcp_connection_falls_back_to_push() {
    let mut b = phone(true);
    b.dies = 1.0;
    let scenario = scenario(vec![b], vec![call(5_000, None, 5_000)]);
    race(
        &scenario,
        Fault::NoFallbackPush,
        "dead_flow_falls_back_to_push",
    );
}

// ----- answers from the push (issue 13), scripted --------------------------------------

/// A phone of `u0` on TCP that falls asleep after a second (its connection closes: the
/// node knows it sleeps), and whose app answers `answer` from a call's push.
fn sleeper(answer: OnPush, think: u64, latency: u64) -> PhoneSpec {
    let mut b = phone(true);
    b.sleeps_at = Some(1_000);
    b.from_push = FromPush::always(answer, think, latency);
    b
}

/// The answers from the push the node took for `call_id`.
fn taken(world: &sim::World, call_id: &str) -> Vec<sim::AppAnswered> {
    use pushpark::node::AppAnswer;
    use pushpark_model::AppReply;
    world
        .app_answers
        .iter()
        .filter(|a| a.call_id == call_id && a.reply == AppAnswer::Reply(AppReply::Taken))
        .cloned()
        .collect()
}

/// B1 sleeps; A calls; B1's app answers busy from its push and registers anyway, its
/// REGISTER on its way when the busy is taken; B2, awake, refuses busy over SIP five
/// seconds later. B1 must never get the INVITE, and A gets 486. (Broken: B1's REGISTER
/// brings it the INVITE it refused.)
#[test]
fn busy_from_the_push_wins_the_race_with_the_register() {
    // Pushed at 10.02 s, the push there at 10.12; the busy posted at 10.22 reaches the
    // node at 10.42, when the REGISTER sent at 10.42 (woken 300 ms after the push) is on
    // its way (5 ms).
    let mut b1 = sleeper(OnPush::Busy, 100, 200);
    b1.from_push.registers_anyway = 1.0;
    b1.wake_after = (300, 300);
    let mut b2 = phone(true);
    b2.answers = [
        (Answer::Accept, 0),
        (Answer::Busy, 1),
        (Answer::Decline, 0),
        (Answer::Ignore, 0),
    ];
    b2.answer_after = (5_000, 5_000);
    let scenario = scenario(vec![b1, b2], vec![call(10_000, None, 5_000)]);
    let world = race_ending(
        &scenario,
        Fault::RegisterAfterBusyDelivers,
        "device_refused_from_push_gets_no_invite",
        486,
    );
    let trace = world.net.trace.join("\n");
    let call_id = &world.callers[0].call_id;
    let busy = taken(&world, call_id);
    assert_eq!(busy.len(), 1, "{trace}");
    let registered = world.phones[0]
        .seen
        .registered
        .iter()
        .find(|&&r| r > busy[0].at);
    let register_sent = world.heard[0].iter().any(|&(at, _)| at > busy[0].at);
    assert!(
        registered.is_some() && register_sent,
        "B1 registered after its busy: {trace}"
    );
    assert!(world.phones[0].seen.invites.is_empty(), "{trace}");
    assert!(
        world.phones[1]
            .seen
            .invites
            .iter()
            .any(|(_, c, _)| c == call_id),
        "{trace}"
    );
}

/// B1 and B2 sleep; A calls; both are pushed and B2 wakes, slowly; B1's app declines from
/// the push. The decline ends the call at once (603), and B2, registering after, is told
/// the call was declined elsewhere and never rings for it.
#[test]
fn decline_from_the_push_ends_the_call_before_a_woken_phone_rings() {
    let b1 = sleeper(OnPush::Decline, 500, 50);
    let mut b2 = phone(true);
    b2.sleeps_at = Some(1_000);
    let scenario = scenario(vec![b1, b2], vec![call(10_000, None, 5_000)]);
    let world = match run(1, &scenario, None) {
        Ok(world) => world,
        Err(report) => panic!("{}", shorten(&report, 300)),
    };
    let trace = world.net.trace.join("\n");
    let caller = &world.callers[0];
    assert_eq!(caller.answer(), Some(603), "{trace}");
    let decline = taken(&world, &caller.call_id);
    assert_eq!(decline.len(), 1, "{trace}");
    let (_, code, sent) = world.finals_sent[0].clone();
    assert_eq!((code, sent), (603, decline[0].at), "{trace}");
    let (b1, b2) = (&world.phones[0], &world.phones[1]);
    assert!(b1.seen.invites.is_empty(), "{trace}");
    // B2 was woken by its push, and registered after the call had ended.
    assert!(
        b2.seen
            .pushes
            .iter()
            .any(|(_, c, asleep)| *c == caller.call_id && *asleep),
        "{trace}"
    );
    assert!(b2.seen.registered.iter().any(|&r| r > sent), "{trace}");
    assert!(
        b2.seen.rang.iter().all(|(_, c)| *c != caller.call_id),
        "B2 rang: {trace}"
    );
    let told = b2
        .seen
        .cancelled
        .iter()
        .find(|(_, c, _)| *c == caller.call_id);
    assert!(
        told.is_some_and(|(_, _, reason)| reason.contains("cause=603")),
        "B2 was told the call was declined elsewhere: {told:?}\n{trace}"
    );
}

/// B sleeps; A calls and cancels at once; B's app answers busy from its push after the
/// call is over. The answer changes nothing (`CallOver`); B is told nothing it did not ask
/// for. (Broken: the stale busy is taken.)
#[test]
fn an_answer_for_a_call_that_ended_changes_nothing() {
    let b = sleeper(OnPush::Busy, 1_000, 50);
    let scenario = scenario(vec![b], vec![call(10_000, Some(300), 5_000)]);
    let world = race_ending(
        &scenario,
        Fault::StaleAnswerTaken,
        "answer_for_an_ended_call_changes_nothing",
        487,
    );
    let trace = world.net.trace.join("\n");
    assert_eq!(world.app_answers.len(), 1, "{trace}");
    assert_eq!(
        world.app_answers[0].reply,
        pushpark::node::AppAnswer::Reply(pushpark_model::AppReply::CallOver),
        "{trace}"
    );
}
