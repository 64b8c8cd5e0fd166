//! Exhaustive checks of the bounded configurations: every property holds, every
//! interesting path is reached, and the size of each search is pinned so that a search that
//! silently shrinks (a budget hit, a model change) fails too.

use std::time::{Duration, Instant};

use pushpark_model::checker::{Action, ParkModel, CONFIGURATIONS, LIVENESS, SAFETY, SOMETIMES};
use pushpark_model::{CallId, DeviceId};
use stateright::{Checker, Model};

/// A search that reaches this is not exhaustive and fails.
const BUDGET: Duration = Duration::from_secs(100);

/// Checks `name` exhaustively and returns the checker for further assertions.
fn check(name: &str, unique_states: usize, reaches: &[&'static str]) -> impl Checker<ParkModel> {
    let model = ParkModel::configuration(name).expect("a known configuration");
    let started = Instant::now();
    let checker = model
        .clone()
        .checker()
        .threads(2)
        .timeout(BUDGET)
        .spawn_dfs()
        .join();
    let elapsed = started.elapsed();
    println!(
        "{name}: {} unique states, {} generated, {:.2} s, {:.0} unique states/s",
        checker.unique_state_count(),
        checker.state_count(),
        elapsed.as_secs_f64(),
        checker.unique_state_count() as f64 / elapsed.as_secs_f64()
    );
    assert!(
        elapsed < BUDGET,
        "{name}: hit the time budget, not exhaustive"
    );
    for property in SAFETY.iter().chain(&LIVENESS) {
        if let Some(path) = checker.discovery(property) {
            panic!(
                "{name}: `{property}` violated by\n{}\nreplay: http://127.0.0.1:3000/#/steps/{}",
                path.clone()
                    .into_actions()
                    .iter()
                    .map(|a| format!("  {a}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                path.encode(&model)
            );
        }
    }
    for property in reaches {
        assert!(
            checker.discovery(property).is_some(),
            "{name}: `{property}` never reached"
        );
    }
    assert_eq!(
        checker.unique_state_count(),
        unique_states,
        "{name}: the state space changed size; if the model changed on purpose, pin the new count"
    );
    checker
}

/// Paths only a device awake on UDP, or a dead flow, can take.
const AWAKE_OR_DEAD_FLOW: [&str; 3] = [
    "awake_device_answers_without_registering",
    "push_after_dead_flow",
    "lost_invite_rerouted",
];

/// Needs a second device.
const OTHER_DEVICE: &str = "push_failure_while_other_device_answers";

/// Needs a second call.
const SECOND_CALL: &str = "live_call_answered_after_a_notice";

/// Needs INVITEs that take a while to arrive.
const IN_FLIGHT: &str = "dropped_invite_that_arrived_is_cancelled";

/// Needs bindings that near expiry.
const REFRESH: &str = "refresh_push_sent";

/// Need apps that answer from the push.
const FROM_PUSH: [&str; 4] = [
    "busy_from_push_reaches_caller",
    "decline_from_push_reaches_caller",
    "ringback_from_push",
    "push_answer_races_register",
];

/// Needs an INVITE that a device awake on UDP slept through, and an app answering its push.
const UNHEARD: &str = "refusal_from_push_stops_an_unanswered_invite";

/// Needs a device that registers on another node of a cluster.
const CLUSTER: &str = "delivered_after_register_on_another_node";

/// What only the configurations made for them reach.
const SPECIAL: [&str; 11] = [
    AWAKE_OR_DEAD_FLOW[0],
    AWAKE_OR_DEAD_FLOW[1],
    AWAKE_OR_DEAD_FLOW[2],
    IN_FLIGHT,
    REFRESH,
    FROM_PUSH[0],
    FROM_PUSH[1],
    FROM_PUSH[2],
    FROM_PUSH[3],
    UNHEARD,
    CLUSTER,
];

/// The configurations: their unique states, the common paths they do not reach, and the
/// special paths (of [`SPECIAL`]) they do.
const PINNED: [(&str, usize, &[&str], &[&str]); 21] = [
    ("1x1", 537, &[OTHER_DEVICE, SECOND_CALL], &[]),
    ("1x2", 28_723, &[SECOND_CALL], &[]),
    ("2x1", 34_527, &[OTHER_DEVICE], &[]),
    (
        "2x2",
        934_346,
        &["push_retried_after_transient_failure"],
        &[],
    ),
    ("3x1", 987_016, &[OTHER_DEVICE], &[]),
    (
        "1x2-no-cancel",
        994,
        &["cancel_races_register", SECOND_CALL],
        &[],
    ),
    (
        "2x2-no-cancel",
        509_725,
        &[
            "cancel_races_register",
            "push_retried_after_transient_failure",
        ],
        &[],
    ),
    ("1x2-flow", 43_607, &[SECOND_CALL], &[AWAKE_OR_DEAD_FLOW[1]]),
    ("1x2-flight", 1_829, &[SECOND_CALL], &[IN_FLIGHT]),
    ("2x1-flight", 36_001, &[OTHER_DEVICE], &[IN_FLIGHT]),
    ("1x2-refresh", 21_162, &[SECOND_CALL], &[REFRESH]),
    ("2x1-drain", 45_133, &[OTHER_DEVICE], &[]),
    ("1x2-answer", 92_970, &[SECOND_CALL], &FROM_PUSH),
    ("2x1-answer", 323_614, &[OTHER_DEVICE], &FROM_PUSH),
    (
        "1x2-udp-answer",
        438_910,
        &[SECOND_CALL],
        &[
            FROM_PUSH[0],
            FROM_PUSH[1],
            FROM_PUSH[2],
            FROM_PUSH[3],
            UNHEARD,
        ],
    ),
    (
        "1x2-flow-answer",
        113_066,
        &[
            OTHER_DEVICE,
            SECOND_CALL,
            "push_retried_after_transient_failure",
        ],
        &[
            AWAKE_OR_DEAD_FLOW[1],
            FROM_PUSH[0],
            FROM_PUSH[1],
            FROM_PUSH[2],
            FROM_PUSH[3],
        ],
    ),
    ("2x1-udp", 98_844, &[OTHER_DEVICE], &AWAKE_OR_DEAD_FLOW),
    (
        "2x1-udp-waiting",
        100_986,
        &[OTHER_DEVICE],
        &AWAKE_OR_DEAD_FLOW,
    ),
    (
        "1x1-cluster",
        45_061,
        &[OTHER_DEVICE, SECOND_CALL],
        &[AWAKE_OR_DEAD_FLOW[1], AWAKE_OR_DEAD_FLOW[2], CLUSTER],
    ),
    ("1x2-cluster", 45_626, &[SECOND_CALL], &[CLUSTER]),
    ("2x1-cluster", 207_091, &[OTHER_DEVICE], &[CLUSTER]),
];

/// The reachability properties configuration `name` reaches.
fn reached(name: &str) -> Vec<&'static str> {
    let (_, _, unreached, special) = PINNED
        .iter()
        .find(|(n, ..)| *n == name)
        .expect("a pinned configuration");
    SOMETIMES
        .iter()
        .copied()
        .filter(|p| !unreached.contains(p) && (!SPECIAL.contains(p) || special.contains(p)))
        .collect()
}

fn check_pinned(name: &str) -> impl Checker<ParkModel> {
    let (_, states, ..) = PINNED
        .iter()
        .find(|(n, ..)| *n == name)
        .expect("a pinned configuration");
    check(name, *states, &reached(name))
}

#[test]
fn one_call_one_device() {
    let checker = check_pinned("1x1");
    // The race the project exists for, pinned as a regression example: the caller cancels
    // while the woken device's REGISTER is on its way; the device is told, not rung.
    checker.assert_discovery(
        "cancel_races_register",
        vec![
            Action::Invite,
            Action::PushDelivered(CallId(0), DeviceId(0)),
            Action::Cancel(CallId(0)),
            Action::Register(DeviceId(0)),
        ],
    );
}

#[test]
fn one_call_two_devices() {
    check_pinned("1x2");
}

/// Race 1 of the real phones: a notice of an ended call never makes a single-line phone
/// refuse a live call.
#[test]
fn two_calls_one_device() {
    check_pinned("2x1");
}

#[test]
fn two_calls_two_devices() {
    check_pinned("2x2");
}

#[test]
fn three_calls_one_device() {
    check_pinned("3x1");
}

#[test]
fn callers_that_never_cancel_still_get_an_answer() {
    check_pinned("1x2-no-cancel");
    check_pinned("2x2-no-cancel");
}

/// Race 3: a forwarded INVITE whose flow dies falls back to a push.
#[test]
fn a_dead_flow_falls_back_to_a_push() {
    check_pinned("1x2-flow");
}

/// A graceful shutdown at any moment: every caller still gets exactly one final response,
/// no device is rung twice, and a device woken for a call that ended is told.
#[test]
fn a_shutdown_at_any_moment_answers_every_caller() {
    check_pinned("2x1-drain");
}

/// Binding-refresh pushes (RFC 8599 §5.5): never through a calls-only (APNs VoIP) token.
#[test]
fn a_calls_only_token_never_gets_a_refresh_push() {
    check_pinned("1x2-refresh");
}

/// Race 2: a device awake on UDP (in a call, or heard from lately) gets a second call at
/// once, single-line or with call waiting, and one that fell asleep unseen still gets it
/// once after the push.
#[test]
fn a_device_awake_on_udp_gets_the_call() {
    check_pinned("2x1-udp");
    check_pinned("2x1-udp-waiting");
}

/// An INVITE still on its way when its call ends is dropped; if it arrives after all, the
/// device's 100 Trying gets it cancelled, and a live call is never refused because of it.
#[test]
fn an_invite_on_its_way_when_the_call_ends_is_cancelled_if_it_arrives() {
    check_pinned("1x2-flight");
    check_pinned("2x1-flight");
}

/// Busy, decline or ringing straight from the push (specs/parking.md §9): each counts as the
/// device's SIP answer would, races its REGISTER without a double outcome, and changes
/// nothing once the call is over.
#[test]
fn an_app_may_answer_from_its_push() {
    check_pinned("1x2-answer");
    check_pinned("2x1-answer");
    check_pinned("1x2-udp-answer");
    check_pinned("1x2-flow-answer");
}

/// Issue 11: on a node of a cluster, a woken device may register on another node; its
/// notice reaches the parking node late, twice, or through a restart of the node's reader,
/// and every property still holds. The call reaches the device through the other node, and
/// a dead flow there (430) falls back to a push.
#[test]
fn a_device_may_register_on_another_node_of_a_cluster() {
    let checker = check_pinned("1x1-cluster");
    // Delivered after a REGISTER on the other node, the notice read late.
    checker.assert_discovery(
        CLUSTER,
        vec![
            Action::Invite,
            Action::PushDelivered(CallId(0), DeviceId(0)),
            Action::RegisterElsewhere(DeviceId(0)),
            Action::ReadNotice,
            Action::Respond(CallId(0), DeviceId(0), 200),
        ],
    );
    check_pinned("1x2-cluster");
    check_pinned("2x1-cluster");
}

#[test]
fn every_configuration_is_checked_and_every_path_reached_somewhere() {
    let pinned: Vec<&str> = PINNED.iter().map(|(name, ..)| *name).collect();
    let listed: Vec<&str> = CONFIGURATIONS.iter().map(|(name, _)| *name).collect();
    assert_eq!(listed, pinned);
    for property in SOMETIMES {
        assert!(
            pinned.iter().any(|name| reached(name).contains(&property)),
            "no configuration reaches `{property}`"
        );
    }
    let model = ParkModel::configuration("1x2").expect("known");
    assert_eq!(
        model.properties().len(),
        SAFETY.len() + LIVENESS.len() + SOMETIMES.len()
    );
}
