//! Fast teeth for `cargo mutants` over `model/src/core.rs` (see `.cargo/mutants.toml`).
//!
//! The small configurations of the checker take a second or two each: checked here for every
//! safety and liveness property, and for every reachability property somewhere, without
//! pinning their sizes (tests/checker.rs does that, and the big configurations, in about a
//! minute). A mutant of the core that breaks a property on a small configuration fails here.
//! Below them, the deliberate defects of `Fault` are held to their documentation. The
//! mutants that tests/outcomes.rs did not kill have their tests at its end.
//!
//! # Mutants that survive, and why no test can kill them
//!
//! Six of the core's mutants (measured on the core of commit 48730c2), each equivalent: no
//! sequence of events makes the mutated core emit other effects or answer its accessors
//! otherwise. Measured again for the functions the answers from the push changed
//! (`push_answered`, `best_response`, `heard`, `answered`, `rejected`, `unreachable`,
//! `registered_for`: `cargo mutants -j 2 --re '...'`, 112 mutants): 106 caught, 2 unviable,
//! and the four of the six below that lie in them survive, for the same reasons (in
//! `rejected` the arm reads `(LegState::Telling | LegState::NoticeDue, _)` now). They rest on four invariants of `Core`, each kept by every transition:
//!
//! - (I1) A call holds a `Forwarded` (or `Queued`) leg only while it is pending: legs become
//!   `Forwarded` only on arrival, on a REGISTER in the `Parking | Overdue` arm of
//!   `registered_for`, or from `Queued`, and `Queued` only from those or from a `Forwarded`
//!   leg; `end` turns every `Forwarded` and `Queued` leg into something else.
//! - (I2) A `Backoff` leg exists only while the call is `Parking`: `push_failed` makes one only
//!   then, and the deadline and `end` turn every one into `Done(Unavailable)`.
//! - (I3) `Telling` legs exist only in ended calls (`serve_line` makes them, for
//!   `Phase::Ended` calls only); so do `Cancelling` and `Dropped` legs, but for those of a
//!   device that refused the call from its push (`refusal` set, `push_answered`), which
//!   never become `Telling` or `NoticeDue`.
//! - (I4) `by_aor` lists exactly the calls `calls` holds, and has no empty list: `arrive`
//!   inserts in both, `settle_ended` removes from both.
//!
//! The survivors:
//!
//! - `replace && with || in Core::is_empty`: by (I4), `calls` and `by_aor` are empty together.
//! - `replace match guard pending with true in Core::answered` and `... in Core::rejected`:
//!   the guard is on a `Forwarded` leg, so it is always true (I1).
//! - `replace match guard pending with true in Core::timer` (`PushRetry`): the guard is on a
//!   `Backoff` leg, so it is always true (I2).
//! - `delete match arm LegState::Telling | LegState::NoticeDue in Core::answered` and `... in
//!   Core::rejected` (`Done(Told)` becomes `Done(Answered)` or `Done(Rejected(code))` on a
//!   leg that was `Telling` or `NoticeDue`; measured again on the core of this session's
//!   simulation fixes): those legs exist only in ended calls (I3, and `NoticeDue` likewise),
//!   and the outcome of a `Done` leg is read only while a call is pending (`best_response`
//!   from `settle`, the `Done(Unavailable)` match in `registered_for`'s pending arm). Only
//!   `Core`'s derived `Eq`/`Hash` see the difference.
//!
//! tests/faults.rs is left out of the per-mutant run (`.cargo/mutants.toml`): a mutant that
//! hides a fault, or merely slows the model, makes it deepen its search to depth 40 on every
//! configuration, minutes, and cargo runs it before the other tests. The fault tests below
//! pin what each fault does in milliseconds instead.

use std::collections::BTreeSet;

use pushpark_model::checker::{ParkModel, LIVENESS, SAFETY, SOMETIMES};
use pushpark_model::{
    AorId, AppReply, CallId, Callee, Config, Core, DeviceId, Effect, EndReason, Event, Fault, Flow,
    Millis, PushAnswer, Target, Timer, TokenUse,
};
use stateright::{Checker, HasDiscoveries, Model};

/// The configurations each checked in under two seconds.
const SMALL: [&str; 12] = [
    "1x1",
    "1x2",
    "2x1",
    "1x2-flow",
    "1x2-refresh",
    "2x1-udp",
    "2x1-udp-waiting",
    "1x2-no-cancel",
    "1x2-flight",
    "1x2-answer",
    "1x2-udp-answer",
    "1x1-cluster",
];

/// Checks `name` exhaustively; panics with the counterexample of a broken property, and
/// returns the reachability properties it reached.
fn reached_in(name: &str) -> BTreeSet<&'static str> {
    let model = ParkModel::configuration(name).expect("a known configuration");
    let checker = model
        .clone()
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    for property in SAFETY.iter().chain(&LIVENESS) {
        if let Some(path) = checker.discovery(property) {
            panic!(
                "{name}: `{property}` violated by\n{}",
                path.into_actions()
                    .iter()
                    .map(|a| format!("  {a}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    SOMETIMES
        .iter()
        .copied()
        .filter(|p| checker.discovery(p).is_some())
        .collect()
}

#[test]
fn small_configurations_keep_every_property_and_reach_every_path() {
    let mut reached = BTreeSet::new();
    for name in SMALL {
        reached.extend(reached_in(name));
    }
    let unreached: Vec<&str> = SOMETIMES
        .iter()
        .copied()
        .filter(|p| !reached.contains(p))
        .collect();
    assert!(
        unreached.is_empty(),
        "no small configuration reaches {unreached:?}"
    );
}

// The deliberate defects of `Fault` do what their documentation says, and no more: the fault
// tests (tests/faults.rs) only show that a property catches each of them, which a defect
// that went wider, or narrower but still caught, would pass just as well.

const U1: AorId = AorId(1);
const C1: CallId = CallId(1);
const C2: CallId = CallId(2);
const D1: DeviceId = DeviceId(1);

/// A core with `fault`, and the time of every step.
struct Faulty {
    core: Core,
    now: Millis,
}

impl Faulty {
    fn new(fault: Fault) -> Self {
        Self {
            core: Core::with_fault(Config::default(), Some(fault)),
            now: 0,
        }
    }

    fn send(&mut self, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        self.core.step(self.now, event, &mut out);
        out
    }
}

fn arrival(call: CallId, target: Target) -> Event {
    Event::CallArrived {
        call,
        aor: U1,
        waking_limit: None,
        callee: Callee::Devices(vec![target]),
    }
}

fn target(flow: Flow, pushable: bool) -> Target {
    Target {
        device: D1,
        flow,
        pushable,
    }
}

fn respond(call: CallId, code: u16) -> Effect {
    Effect::Respond {
        call,
        code,
        relay: None,
    }
}

fn disarm(timer: Timer) -> Effect {
    Effect::DisarmTimer { timer }
}

fn push(call: CallId) -> Effect {
    Effect::Push { call, device: D1 }
}

fn forward(call: CallId) -> Effect {
    Effect::Forward { call, device: D1 }
}

fn told(call: CallId, reason: EndReason) -> Effect {
    Effect::TellEnded {
        call,
        device: D1,
        reason,
    }
}

#[test]
fn ignore_cancel_while_parked_ignores_it_only_while_no_branch_is_forwarded() {
    let mut f = Faulty::new(Fault::IgnoreCancelWhileParked);
    f.send(arrival(C1, target(Flow::Closed, true)));
    assert_eq!(f.send(Event::CallerCancelled { call: C1 }), []);

    f.send(arrival(C2, target(Flow::Connected, false)));
    f.send(Event::BranchTrying {
        call: C2,
        device: D1,
    });
    assert_eq!(
        f.send(Event::CallerCancelled { call: C2 }),
        [
            respond(C2, 487),
            disarm(Timer::Deadline(C2)),
            Effect::CancelBranch {
                call: C2,
                device: D1
            }
        ]
    );
}

#[test]
fn forward_after_cancel_forwards_only_calls_the_caller_cancelled() {
    let mut f = Faulty::new(Fault::ForwardAfterCancel);
    f.send(arrival(C1, target(Flow::Closed, true)));
    f.send(Event::CallerCancelled { call: C1 });
    let registered = Event::DeviceRegistered {
        aor: U1,
        device: D1,
    };
    assert_eq!(
        f.send(registered.clone()),
        [forward(C1), disarm(Timer::Linger(C1))]
    );

    let mut f = Faulty::new(Fault::ForwardAfterCancel);
    f.send(arrival(C1, target(Flow::Closed, true)));
    f.now = 30_000;
    assert_eq!(
        f.send(Event::TimerFired(Timer::Deadline(C1))),
        [
            respond(C1, 480),
            Effect::ArmTimer {
                timer: Timer::Linger(C1),
                at: 60_000
            }
        ]
    );
    assert_eq!(
        f.send(registered),
        [told(C1, EndReason::Unanswered), disarm(Timer::Linger(C1))]
    );
}

#[test]
fn notice_before_live_call_tells_a_woken_device_at_once_beside_its_live_call() {
    let mut f = Faulty::new(Fault::NoticeBeforeLiveCall);
    f.send(arrival(C1, target(Flow::Closed, true)));
    f.send(Event::CallerCancelled { call: C1 });
    f.send(arrival(C2, target(Flow::Closed, true)));
    assert_eq!(
        f.send(Event::DeviceRegistered {
            aor: U1,
            device: D1
        }),
        [
            told(C1, EndReason::CallerCancelled),
            forward(C2),
            disarm(Timer::Linger(C1))
        ]
    );
}

#[test]
fn push_twice_pushes_again_only_a_device_still_parked() {
    let mut f = Faulty::new(Fault::PushTwice);
    f.send(arrival(C1, target(Flow::Closed, true)));
    assert_eq!(
        f.send(Event::PushAccepted {
            call: C1,
            device: D1
        }),
        [push(C1)]
    );

    let mut f = Faulty::new(Fault::PushTwice);
    let awake_on_udp = Flow::Datagram {
        heard_at: 0,
        in_dialog: true,
    };
    assert_eq!(
        f.send(arrival(C1, target(awake_on_udp, true))),
        [
            Effect::ArmTimer {
                timer: Timer::Deadline(C1),
                at: 30_000
            },
            push(C1),
            forward(C1)
        ]
    );
    assert_eq!(
        f.send(Event::PushAccepted {
            call: C1,
            device: D1
        }),
        []
    );
}

#[test]
fn keep_deadline_on_answer_keeps_it_only_on_an_answer() {
    let mut f = Faulty::new(Fault::KeepDeadlineOnAnswer);
    f.send(arrival(C1, target(Flow::Connected, false)));
    assert_eq!(
        f.send(Event::BranchAnswered {
            call: C1,
            device: D1
        }),
        [Effect::Respond {
            call: C1,
            code: 200,
            relay: Some(D1)
        }]
    );

    f.send(arrival(C2, target(Flow::Connected, false)));
    assert_eq!(
        f.send(Event::BranchRejected {
            call: C2,
            device: D1,
            code: 486
        }),
        [
            Effect::Respond {
                call: C2,
                code: 486,
                relay: Some(D1)
            },
            disarm(Timer::Deadline(C2))
        ]
    );
}

fn deadline(call: CallId) -> Effect {
    Effect::ArmTimer {
        timer: Timer::Deadline(call),
        at: 30_000,
    }
}

fn registered() -> Event {
    Event::DeviceRegistered {
        aor: U1,
        device: D1,
    }
}

#[test]
fn push_after_wake_keeps_the_retry_of_a_device_that_woke_and_pushes_it_again() {
    let mut f = Faulty::new(Fault::PushAfterWake);
    f.send(arrival(C1, target(Flow::Closed, true)));
    assert_eq!(
        f.send(Event::PushFailed {
            call: C1,
            device: D1,
            permanent: false
        }),
        [Effect::ArmTimer {
            timer: Timer::PushRetry(C1, D1),
            at: 500
        }]
    );
    assert_eq!(f.send(registered()), [forward(C1)], "the retry stays armed");
    f.now = 500;
    assert_eq!(
        f.send(Event::TimerFired(Timer::PushRetry(C1, D1))),
        [push(C1)]
    );
}

#[test]
fn lose_busy_code_answers_480_for_a_busy_device() {
    let mut f = Faulty::new(Fault::LoseBusyCode);
    f.send(arrival(C1, target(Flow::Connected, false)));
    assert_eq!(
        f.send(Event::BranchRejected {
            call: C1,
            device: D1,
            code: 486
        }),
        [respond(C1, 480), disarm(Timer::Deadline(C1))]
    );
}

#[test]
fn leak_finished_call_keeps_a_call_whose_cancelled_branch_ended() {
    let mut f = Faulty::new(Fault::LeakFinishedCall);
    f.send(arrival(C1, target(Flow::Connected, false)));
    f.send(Event::BranchTrying {
        call: C1,
        device: D1,
    });
    f.send(Event::CallerCancelled { call: C1 });
    assert_eq!(
        f.send(Event::BranchRejected {
            call: C1,
            device: D1,
            code: 487
        }),
        []
    );
    assert!(f.core.holds(C1));
}

#[test]
fn no_deadline_arms_no_park_deadline() {
    let mut f = Faulty::new(Fault::NoDeadline);
    assert_eq!(f.send(arrival(C1, target(Flow::Closed, true))), [push(C1)]);
}

#[test]
fn awake_device_taken_asleep_only_pushes_a_device_awake_on_udp() {
    for in_dialog in [false, true] {
        let mut f = Faulty::new(Fault::AwakeDeviceTakenAsleep);
        let heard_now = Flow::Datagram {
            heard_at: 0,
            in_dialog,
        };
        assert_eq!(
            f.send(arrival(C1, target(heard_now, true))),
            [deadline(C1), push(C1)],
            "in a dialog: {in_dialog}"
        );
    }
}

#[test]
fn no_fallback_push_gives_up_a_device_whose_flow_died() {
    let mut f = Faulty::new(Fault::NoFallbackPush);
    f.send(arrival(C1, target(Flow::Connected, true)));
    assert_eq!(
        f.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        [respond(C1, 480), disarm(Timer::Deadline(C1))]
    );
}

#[test]
fn no_reroute_sends_nothing_to_a_device_registering_again_before_it_rang() {
    let mut f = Faulty::new(Fault::NoReroute);
    f.send(arrival(C1, target(Flow::Closed, true)));
    assert_eq!(f.send(registered()), [forward(C1)]);
    assert_eq!(f.send(registered()), []);
}

#[test]
fn keep_probing_cancels_an_invite_the_device_never_answered() {
    let mut f = Faulty::new(Fault::KeepProbing);
    f.send(arrival(C1, target(Flow::Connected, false)));
    assert_eq!(
        f.send(Event::CallerCancelled { call: C1 }),
        [
            respond(C1, 487),
            disarm(Timer::Deadline(C1)),
            Effect::CancelBranch {
                call: C1,
                device: D1
            }
        ]
    );
}

#[test]
fn refresh_calls_only_token_refreshes_a_calls_only_token_but_not_a_device_a_call_wakes() {
    let expiring = |token| Event::BindingExpiring {
        aor: U1,
        device: D1,
        token,
    };
    let mut f = Faulty::new(Fault::RefreshCallsOnlyToken);
    for token in [TokenUse::CallsOnly, TokenUse::Any] {
        assert_eq!(
            f.send(expiring(token)),
            [Effect::RefreshPush { device: D1 }],
            "{token:?}"
        );
    }
    f.send(arrival(C1, target(Flow::Closed, true)));
    assert_eq!(f.send(expiring(TokenUse::CallsOnly)), []);
}

#[test]
fn shutdown_leaves_calls_refuses_new_calls_but_ends_none_in_progress() {
    let mut f = Faulty::new(Fault::ShutdownLeavesCalls);
    f.send(arrival(C1, target(Flow::Closed, true)));
    assert_eq!(f.send(Event::ShuttingDown), []);
    assert_eq!(
        f.send(arrival(C2, target(Flow::Closed, true))),
        [Effect::Respond {
            call: C2,
            code: 503,
            relay: None
        }]
    );
}

fn busy_from_push(call: CallId, device: DeviceId) -> Event {
    Event::PushAnswered {
        call,
        device,
        answer: PushAnswer::Busy,
    }
}

fn reply(call: CallId, device: DeviceId, reply: AppReply) -> Effect {
    Effect::ReplyToApp {
        call,
        device,
        reply,
    }
}

#[test]
fn register_after_busy_delivers_forwards_the_call_to_the_device_that_answered_busy() {
    let d2 = DeviceId(2);
    let mut f = Faulty::new(Fault::RegisterAfterBusyDelivers);
    f.send(Event::CallArrived {
        call: C1,
        aor: U1,
        waking_limit: None,
        callee: Callee::Devices(vec![
            target(Flow::Closed, true),
            Target {
                device: d2,
                ..target(Flow::Closed, true)
            },
        ]),
    });
    assert_eq!(
        f.send(busy_from_push(C1, D1)),
        [reply(C1, D1, AppReply::Taken)],
        "taken as without the fault: the other device may still answer"
    );
    assert_eq!(
        f.send(Event::DeviceRegistered {
            aor: U1,
            device: D1
        }),
        [forward(C1)]
    );
}

#[test]
fn stale_answer_taken_closes_the_leg_of_an_ended_call_and_says_taken() {
    let mut f = Faulty::new(Fault::StaleAnswerTaken);
    f.send(arrival(C1, target(Flow::Closed, true)));
    f.send(Event::CallerCancelled { call: C1 });
    assert_eq!(
        f.send(busy_from_push(C1, D1)),
        [reply(C1, D1, AppReply::Taken), disarm(Timer::Linger(C1))]
    );
    assert!(f.core.is_empty(), "the woken device will not be told");
    assert_eq!(
        f.send(busy_from_push(C2, D1)),
        [reply(C2, D1, AppReply::CallOver)],
        "a call the core never held is over"
    );
    // Only a device still owed its notice is taken so; one whose INVITE is being cancelled
    // answers over SIP, as without the fault.
    f.send(arrival(C2, target(Flow::Connected, true)));
    f.send(Event::BranchTrying {
        call: C2,
        device: D1,
    });
    f.send(Event::CallerCancelled { call: C2 });
    assert_eq!(
        f.send(busy_from_push(C2, D1)),
        [reply(C2, D1, AppReply::Conflict)]
    );
}

#[test]
fn ringback_after_relayed_ring_rings_back_once_the_ringing_branch_failed() {
    let d2 = DeviceId(2);
    let ringing = |f: &mut Faulty, device| {
        f.send(Event::PushAnswered {
            call: C1,
            device,
            answer: PushAnswer::Ringing,
        })
    };
    let mut f = Faulty::new(Fault::RingbackAfterRelayedRing);
    f.send(Event::CallArrived {
        call: C1,
        aor: U1,
        waking_limit: None,
        callee: Callee::Devices(vec![
            target(Flow::Connected, true),
            Target {
                device: d2,
                ..target(Flow::Closed, true)
            },
        ]),
    });
    f.send(Event::BranchRang {
        call: C1,
        device: D1,
    });
    assert_eq!(
        ringing(&mut f, d2),
        [reply(C1, d2, AppReply::Taken)],
        "as without the fault while D1's branch rings"
    );
    f.send(Event::BranchUnreachable {
        call: C1,
        device: D1,
    });
    assert_eq!(
        ringing(&mut f, d2),
        [
            reply(C1, d2, AppReply::Taken),
            Effect::Ringback { call: C1 }
        ]
    );
}

/// The test above that pins `fault`: a new fault fails to compile here until it has one.
fn pinned_by(fault: Fault) -> fn() {
    match fault {
        Fault::KeepDeadlineOnAnswer => keep_deadline_on_answer_keeps_it_only_on_an_answer,
        Fault::ForwardAfterCancel => forward_after_cancel_forwards_only_calls_the_caller_cancelled,
        Fault::PushTwice => push_twice_pushes_again_only_a_device_still_parked,
        Fault::PushAfterWake => {
            push_after_wake_keeps_the_retry_of_a_device_that_woke_and_pushes_it_again
        }
        Fault::LoseBusyCode => lose_busy_code_answers_480_for_a_busy_device,
        Fault::LeakFinishedCall => leak_finished_call_keeps_a_call_whose_cancelled_branch_ended,
        Fault::IgnoreCancelWhileParked => {
            ignore_cancel_while_parked_ignores_it_only_while_no_branch_is_forwarded
        }
        Fault::NoDeadline => no_deadline_arms_no_park_deadline,
        Fault::NoticeBeforeLiveCall => {
            notice_before_live_call_tells_a_woken_device_at_once_beside_its_live_call
        }
        Fault::AwakeDeviceTakenAsleep => {
            awake_device_taken_asleep_only_pushes_a_device_awake_on_udp
        }
        Fault::NoFallbackPush => no_fallback_push_gives_up_a_device_whose_flow_died,
        Fault::NoReroute => no_reroute_sends_nothing_to_a_device_registering_again_before_it_rang,
        Fault::KeepProbing => keep_probing_cancels_an_invite_the_device_never_answered,
        Fault::RefreshCallsOnlyToken => {
            refresh_calls_only_token_refreshes_a_calls_only_token_but_not_a_device_a_call_wakes
        }
        Fault::ShutdownLeavesCalls => {
            shutdown_leaves_calls_refuses_new_calls_but_ends_none_in_progress
        }
        Fault::RegisterAfterBusyDelivers => {
            register_after_busy_delivers_forwards_the_call_to_the_device_that_answered_busy
        }
        Fault::StaleAnswerTaken => {
            stale_answer_taken_closes_the_leg_of_an_ended_call_and_says_taken
        }
        Fault::RingbackAfterRelayedRing => {
            ringback_after_relayed_ring_rings_back_once_the_ringing_branch_failed
        }
    }
}

#[test]
fn every_fault_is_pinned_by_a_test() {
    for fault in Fault::ALL {
        pinned_by(fault)();
    }
}
