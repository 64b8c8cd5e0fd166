//! The whole node simulated from seeds (see `sim/mod.rs`): thousands of random runs with
//! every fault of the network, the push service and the phones, each checked against the
//! properties of `sim/check.rs`; one scripted run per real-world race of issue 9; and the
//! proof that the properties catch a broken core.
//!
//! `SIM_SEEDS=<n>` runs more seeds (the default keeps the suite quick); `SIM_SEED=<seed>`
//! runs one and prints its trace.

mod sim;

use pushpark_model::Fault;

use sim::caller::CallSpec;
use sim::net::NetFaults;
use sim::phone::{Answer, PhoneSpec};
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
    for &seed in &seeds {
        if let Err(report) = run(seed, &Scenario::random(seed), None) {
            if failed.is_empty() {
                eprintln!("{}", shorten(&report, 400));
            }
            failed.push(seed);
            for property in sim::broken_properties(&report) {
                broken.entry(property).or_default().push(seed);
            }
        } else if seeds.len() == 1 {
            let world = run(seed, &Scenario::random(seed), None).expect("it passed");
            eprintln!("{}", world.net.trace.join("\n"));
        }
    }
    for (property, seeds) in &broken {
        eprintln!(
            "{property}: {} seeds, first {:?}",
            seeds.len(),
            &seeds[..seeds.len().min(10)]
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed: {failed:?} (rerun one with SIM_SEED=<seed>)",
        failed.len(),
        seeds.len()
    );
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
        config: pushpark::config::Config::default(),
    }
}

/// Runs `scenario` as is and with `fault` in the core: as is, every property holds and
/// the last caller is answered 200; with the fault, `property` fails.
fn race(scenario: &Scenario, fault: Fault, property: &str) {
    let world = match run(1, scenario, None) {
        Ok(world) => world,
        Err(report) => panic!("{}", shorten(&report, 300)),
    };
    let last = world.callers.last().expect("a call");
    assert_eq!(last.answer(), Some(200), "{}", world.net.trace.join("\n"));
    match run(1, scenario, Some(fault)) {
        Ok(world) => panic!("{fault:?} went unnoticed\n{}", world.net.trace.join("\n")),
        Err(report) => assert!(
            report.contains(&format!("\n{property}:"))
                || report.contains(&format!(": {property}:")),
            "{fault:?} broke something else than {property}:\n{}",
            shorten(&report, 200)
        ),
    }
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
