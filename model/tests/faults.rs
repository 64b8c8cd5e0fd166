//! The properties have teeth: each deliberately broken core is caught with a
//! counterexample by the property that guards against that bug.

use std::collections::BTreeSet;

use pushpark_model::checker::{ClusterFault, ParkModel};
use pushpark_model::Fault;
use stateright::{Checker, HasDiscoveries, Model};

/// The configuration that exposes `fault` and the property that must catch it. A new
/// fault fails to compile here until it has both.
fn caught_by(fault: Fault) -> (&'static str, &'static str) {
    match fault {
        Fault::KeepDeadlineOnAnswer => ("1x1", "timers_match_state"),
        Fault::ForwardAfterCancel => ("1x1", "nothing_forwarded_after_final"),
        Fault::PushTwice => ("1x1", "one_push_per_device_per_call"),
        Fault::PushAfterWake => ("1x1", "one_push_per_device_per_call"),
        Fault::LoseBusyCode => ("1x1", "sole_device_rejection_reaches_caller"),
        Fault::LeakFinishedCall => ("1x1", "quiescent_means_resolved"),
        Fault::IgnoreCancelWhileParked => ("1x1", "cancel_gets_487"),
        Fault::NoDeadline => ("1x2-no-cancel", "every_call_gets_a_final_response"),
        Fault::NoticeBeforeLiveCall => ("2x1", "live_call_never_sent_beside_an_ended_call"),
        Fault::AwakeDeviceTakenAsleep => ("2x1-udp", "awake_device_gets_the_call"),
        Fault::NoFallbackPush => ("1x2-flow", "dead_flow_falls_back_to_push"),
        Fault::NoReroute => ("2x1-udp", "woken_device_learns_outcome"),
        Fault::KeepProbing => ("2x1-udp", "no_stale_invite_after_the_call_ended"),
        Fault::RefreshCallsOnlyToken => ("1x2-refresh", "calls_only_token_gets_only_call_pushes"),
        Fault::ShutdownLeavesCalls => ("2x1-drain", "shutdown_answers_every_caller"),
        Fault::RegisterAfterBusyDelivers => {
            ("1x2-answer", "device_refused_from_push_gets_no_invite")
        }
        Fault::StaleAnswerTaken => ("2x1-answer", "answer_for_an_ended_call_changes_nothing"),
        Fault::RingbackAfterRelayedRing => ("1x2-flow-answer", "one_ringback_per_call"),
    }
}

/// The configuration that exposes a defect of the runtime's design around the core in a
/// cluster, and the property that must catch it.
fn cluster_fault_caught_by(fault: ClusterFault) -> (&'static str, &'static str) {
    match fault {
        ClusterFault::SubscribeAfterLoad => {
            ("1x1-cluster", "every_registration_reaches_the_parking_node")
        }
        ClusterFault::PubSub => ("1x1-cluster", "every_registration_reaches_the_parking_node"),
    }
}

fn assert_caught(fault: Fault) {
    let (configuration, property) = caught_by(fault);
    let model = ParkModel {
        fault: Some(fault),
        ..ParkModel::configuration(configuration).expect("a known configuration")
    };
    shortest_counterexample(&model, &format!("{fault:?}"), configuration, property);
}

fn assert_cluster_fault_caught(fault: ClusterFault) -> usize {
    let (configuration, property) = cluster_fault_caught_by(fault);
    assert_caught_in(fault, configuration, property)
}

fn assert_caught_in(fault: ClusterFault, configuration: &str, property: &'static str) -> usize {
    let model = ParkModel {
        cluster_fault: Some(fault),
        ..ParkModel::configuration(configuration).expect("a known configuration")
    };
    shortest_counterexample(&model, &format!("{fault:?}"), configuration, property)
}

/// Finds the shortest counterexample to `property` in `model`, prints it, and returns its
/// number of actions.
fn shortest_counterexample(
    model: &ParkModel,
    fault: &str,
    configuration: &str,
    property: &'static str,
) -> usize {
    // Iterative deepening: the shortest counterexample is the easiest to read.
    let path = (3..=40)
        .find_map(|depth| {
            model
                .clone()
                .checker()
                .target_max_depth(depth)
                .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
                .spawn_bfs()
                .join()
                .discovery(property)
        })
        .unwrap_or_else(|| panic!("{fault} in {configuration}: `{property}` caught nothing"));
    let actions = path.into_actions();
    println!(
        "{fault} caught by `{property}` in {configuration}, {} actions:",
        actions.len()
    );
    for action in &actions {
        println!("  {}", model.format_action(action));
    }
    actions.len()
}

#[test]
fn deadline_left_armed_after_answer_is_caught() {
    assert_caught(Fault::KeepDeadlineOnAnswer);
}

#[test]
fn forward_after_cancel_is_caught() {
    assert_caught(Fault::ForwardAfterCancel);
}

#[test]
fn second_push_for_one_call_is_caught() {
    assert_caught(Fault::PushTwice);
}

#[test]
fn push_to_a_device_that_already_has_the_call_is_caught() {
    assert_caught(Fault::PushAfterWake);
}

#[test]
fn lost_busy_code_is_caught() {
    assert_caught(Fault::LoseBusyCode);
}

#[test]
fn leaked_finished_call_is_caught() {
    assert_caught(Fault::LeakFinishedCall);
}

#[test]
fn cancel_ignored_while_parked_is_caught() {
    assert_caught(Fault::IgnoreCancelWhileParked);
}

#[test]
fn missing_deadline_is_caught_by_liveness() {
    assert_caught(Fault::NoDeadline);
}

#[test]
fn notice_sent_beside_a_live_call_is_caught() {
    assert_caught(Fault::NoticeBeforeLiveCall);
}

#[test]
fn awake_device_left_waiting_for_a_register_is_caught() {
    assert_caught(Fault::AwakeDeviceTakenAsleep);
}

#[test]
fn dead_flow_without_a_fallback_push_is_caught() {
    assert_caught(Fault::NoFallbackPush);
}

#[test]
fn invite_not_rerouted_to_a_woken_device_is_caught() {
    assert_caught(Fault::NoReroute);
}

#[test]
fn retransmissions_of_an_ended_call_reaching_a_woken_phone_are_caught() {
    assert_caught(Fault::KeepProbing);
}

#[test]
fn refresh_push_through_a_calls_only_token_is_caught() {
    assert_caught(Fault::RefreshCallsOnlyToken);
}

#[test]
fn a_shutdown_that_leaves_calls_to_their_deadlines_is_caught() {
    assert_caught(Fault::ShutdownLeavesCalls);
}

#[test]
fn a_call_delivered_to_a_device_that_answered_busy_from_its_push_is_caught() {
    assert_caught(Fault::RegisterAfterBusyDelivers);
}

#[test]
fn an_answer_from_the_push_taken_for_an_ended_call_is_caught() {
    assert_caught(Fault::StaleAnswerTaken);
}

#[test]
fn a_ringback_after_a_device_rang_is_caught() {
    assert_caught(Fault::RingbackAfterRelayedRing);
}

/// Issue 11, the SUBSCRIBE race: a reader that loads the bindings and only then subscribes
/// from "now" never sees a REGISTER stored on another node in between.
#[test]
fn a_reader_that_subscribes_after_loading_is_caught() {
    let length = assert_cluster_fault_caught(ClusterFault::SubscribeAfterLoad);
    // Start the reader (load), REGISTER on the other node, subscribe.
    assert_eq!(length, 3);
}

/// The same race as the runtime's users met it: the push is sent, the woken device
/// registers on the other node, and the parked call never reaches it.
#[test]
fn a_reader_that_subscribes_after_loading_leaves_the_woken_device_without_its_call() {
    assert_caught_in(
        ClusterFault::SubscribeAfterLoad,
        "1x2-cluster",
        "woken_device_learns_outcome",
    );
}

/// Notices over pub/sub instead of a stream: a reader that reconnects misses what was
/// published while it was away.
#[test]
fn notices_lost_to_a_pub_sub_reconnect_are_caught() {
    let length = assert_cluster_fault_caught(ClusterFault::PubSub);
    // REGISTER on the other node, reconnect before the notice is read.
    assert_eq!(length, 2);
}

#[test]
fn every_fault_has_a_test() {
    // `caught_by` is exhaustive over `Fault`; this keeps `Fault::ALL` honest too.
    let configurations: BTreeSet<_> = Fault::ALL.iter().map(|&f| caught_by(f).0).collect();
    assert!(configurations
        .iter()
        .chain(
            ClusterFault::ALL
                .map(|f| cluster_fault_caught_by(f).0)
                .iter()
        )
        .all(|c| ParkModel::configuration(c).is_some()));
    assert_eq!(
        Fault::ALL.iter().collect::<BTreeSet<_>>().len(),
        18,
        "a fault is listed twice or missing"
    );
}
