//! The named properties of specs/parking.md, as the checker evaluates them.

use stateright::{Model, Property};

use super::{ParkModel, State};
use crate::{CallId, EndReason};

/// Invariants: no reachable state may break them.
pub const SAFETY: [&str; 24] = [
    "one_final_response_per_call",
    "nothing_forwarded_after_final",
    "no_device_gets_a_call_twice",
    "one_push_per_device_per_call",
    "sole_device_rejection_reaches_caller",
    "cancel_gets_487",
    "no_call_outlives_its_deadline",
    "timers_match_state",
    "dead_tokens_forgotten",
    "late_answer_is_hung_up",
    "quiescent_means_resolved",
    "woken_device_learns_outcome",
    "live_call_never_sent_beside_an_ended_call",
    "awake_device_gets_the_call",
    "dead_flow_falls_back_to_push",
    "no_stale_invite_after_the_call_ended",
    "calls_only_token_gets_only_call_pushes",
    "shutdown_answers_every_caller",
    "every_push_answer_gets_one_reply",
    "device_refused_from_push_gets_no_invite",
    "decline_from_push_ends_the_call",
    "answer_for_an_ended_call_changes_nothing",
    "one_ringback_per_call",
    "every_registration_reaches_the_parking_node",
];

/// Liveness: on every path.
pub const LIVENESS: [&str; 1] = ["every_call_gets_a_final_response"];

/// Reachability: proof that the interesting paths exist, so no invariant holds vacuously.
pub const SOMETIMES: [&str; 20] = [
    "call_delivered_after_push",
    "call_timed_out",
    "busy_reaches_caller",
    "decline_reaches_caller",
    "cancel_races_register",
    "push_failure_while_other_device_answers",
    "push_retried_after_transient_failure",
    "late_answer_hung_up",
    "live_call_answered_after_a_notice",
    "awake_device_answers_without_registering",
    "push_after_dead_flow",
    "lost_invite_rerouted",
    "dropped_invite_that_arrived_is_cancelled",
    "refresh_push_sent",
    "busy_from_push_reaches_caller",
    "decline_from_push_reaches_caller",
    "ringback_from_push",
    "push_answer_races_register",
    "refusal_from_push_stops_an_unanswered_invite",
    "delivered_after_register_on_another_node",
];

fn calls(s: &State) -> impl Iterator<Item = CallId> {
    (0..u64::from(s.invited)).map(CallId)
}

/// No move of the environment is left: the system has come to rest.
fn quiescent(m: &ParkModel, s: &State) -> bool {
    let mut actions = Vec::new();
    m.actions(s, &mut actions);
    actions.is_empty()
}

fn all_answered(m: &ParkModel, s: &State) -> bool {
    s.invited == m.calls && s.callers.iter().all(|c| c.response.is_some())
}

fn some_response(s: &State, wanted: impl Fn(CallId, u16, Option<crate::DeviceId>) -> bool) -> bool {
    calls(s).any(|c| {
        s.caller(c)
            .response
            .is_some_and(|(code, relay)| wanted(c, code, relay))
    })
}

pub(super) fn all() -> Vec<Property<ParkModel>> {
    vec![
        // Safety. The order is the order of specs/parking.md.
        Property::<ParkModel>::always("one_final_response_per_call", |_, s| {
            s.callers.iter().all(|c| c.finals <= 1)
        }),
        Property::<ParkModel>::always("nothing_forwarded_after_final", |_, s| {
            !s.history.forward_after_final
        }),
        Property::<ParkModel>::always("no_device_gets_a_call_twice", |_, s| {
            !s.history.forwarded_twice
        }),
        Property::<ParkModel>::always("one_push_per_device_per_call", |_, s| !s.history.bad_push),
        Property::<ParkModel>::always("sole_device_rejection_reaches_caller", |m, s| {
            m.devices != 1
                || s.callers
                    .iter()
                    .all(|c| match (c.first_rejection, c.response) {
                        (Some(rejection), Some((code, _))) => code == rejection,
                        _ => true,
                    })
        }),
        Property::<ParkModel>::always("cancel_gets_487", |_, s| {
            s.callers
                .iter()
                .all(|c| !c.cancelled_in_time || c.response.is_some_and(|(code, _)| code == 487))
        }),
        Property::<ParkModel>::always("no_call_outlives_its_deadline", |_, s| {
            !s.history.push_after_deadline
                && calls(s).all(|c| {
                    let caller = s.caller(c);
                    !caller.deadline_fired
                        || caller.response.is_some()
                        || s.branches
                            .iter()
                            .chain(&s.lost)
                            .chain(&s.flight)
                            .any(|&(call, _)| call == c)
                        || !s.cancelling.is_empty()
                })
        }),
        Property::<ParkModel>::always("timers_match_state", |_, s| {
            s.timers.iter().all(|&t| s.core.needs_timer(t))
                && s.core.needed_timers().all(|t| s.timers.contains(&t))
        }),
        Property::<ParkModel>::always("dead_tokens_forgotten", |_, s| {
            s.devices.iter().all(|d| !d.token_dead || d.token_forgotten)
        }),
        Property::<ParkModel>::always("late_answer_is_hung_up", |_, s| {
            s.history.answered.iter().all(|&(c, d)| {
                s.caller(c).response == Some((200, Some(d))) || s.history.hung_up.contains(&(c, d))
            })
        }),
        Property::<ParkModel>::always("quiescent_means_resolved", |m, s| {
            !quiescent(m, s)
                || (all_answered(m, s)
                    && s.core.is_empty()
                    && s.timers.is_empty()
                    && s.branches.is_empty()
                    && s.pushes.is_empty())
        }),
        // A device that registered on another node counts once the parking node learns it
        // (a notice read after the call's notice window closed does not count); at rest every
        // notice has been read, so one still in `registered_elsewhere` is a REGISTER the
        // parking node never learned, and counts.
        Property::<ParkModel>::always("woken_device_learns_outcome", |m, s| {
            !quiescent(m, s)
                || (s.history.registered_after_wake.iter())
                    .chain(&s.history.registered_elsewhere)
                    .all(|&(c, d)| {
                        s.history.forwarded.contains(&(c, d))
                            || s.history.refused_from_push.contains(&(c, d))
                            || s.history.told.iter().any(|&(tc, td, _)| (tc, td) == (c, d))
                    })
        }),
        Property::<ParkModel>::always("live_call_never_sent_beside_an_ended_call", |_, s| {
            !s.history.sent_beside_ended
        }),
        Property::<ParkModel>::always("awake_device_gets_the_call", |_, s| {
            !s.history.awake_not_forwarded
        }),
        Property::<ParkModel>::always("dead_flow_falls_back_to_push", |_, s| {
            !s.history.dead_flow_not_pushed
        }),
        Property::<ParkModel>::always("no_stale_invite_after_the_call_ended", |_, s| {
            !s.history.stale_invite_arrived
        }),
        Property::<ParkModel>::always("calls_only_token_gets_only_call_pushes", |_, s| {
            !s.history.calls_only_pushed_for_no_call
        }),
        Property::<ParkModel>::always("shutdown_answers_every_caller", |_, s| {
            !s.shut_down || calls(s).all(|c| s.caller(c).response.is_some())
        }),
        Property::<ParkModel>::always("every_push_answer_gets_one_reply", |_, s| {
            !s.history.reply_missing
        }),
        Property::<ParkModel>::always("device_refused_from_push_gets_no_invite", |_, s| {
            !s.history.invite_after_refusal
        }),
        Property::<ParkModel>::always("decline_from_push_ends_the_call", |_, s| {
            (s.history.declined_from_push.iter())
                .all(|&c| s.caller(c).response == Some((603, None)))
        }),
        Property::<ParkModel>::always("answer_for_an_ended_call_changes_nothing", |_, s| {
            !s.history.stale_answer_acted
        }),
        // A ringback after a device's relayed ring counts as after the final (see `apply`).
        Property::<ParkModel>::always("one_ringback_per_call", |_, s| {
            !s.history.ringback_after_final && s.callers.iter().all(|c| c.ringbacks <= 1)
        }),
        // Judged while the reader reads: halfway through a start, it has yet to load or to
        // subscribe.
        Property::<ParkModel>::always("every_registration_reaches_the_parking_node", |_, s| {
            s.reader.restart.is_some()
                || s.devices.iter().enumerate().all(|(i, d)| {
                    let unread = &s.stream[usize::from(s.reader.next)..];
                    d.stored <= d.known || unread.contains(&(crate::DeviceId(i as u64), d.stored))
                })
        }),
        // Liveness.
        Property::<ParkModel>::eventually("every_call_gets_a_final_response", all_answered),
        // Reachability.
        Property::<ParkModel>::sometimes("call_delivered_after_push", |_, s| {
            some_response(s, |c, code, relay| {
                code == 200 && relay.is_some_and(|d| s.history.woken.contains(&(c, d)))
            })
        }),
        Property::<ParkModel>::sometimes("call_timed_out", |_, s| {
            some_response(s, |c, code, relay| {
                code == 480 && relay.is_none() && s.caller(c).deadline_fired
            })
        }),
        Property::<ParkModel>::sometimes("busy_reaches_caller", |_, s| {
            some_response(s, |_, code, relay| code == 486 && relay.is_some())
        }),
        Property::<ParkModel>::sometimes("decline_reaches_caller", |_, s| {
            some_response(s, |_, code, relay| code == 603 && relay.is_some())
        }),
        Property::<ParkModel>::sometimes("cancel_races_register", |_, s| {
            s.history
                .told
                .iter()
                .any(|&(_, _, reason)| reason == EndReason::CallerCancelled)
        }),
        Property::<ParkModel>::sometimes("push_failure_while_other_device_answers", |_, s| {
            some_response(s, |c, code, relay| {
                code == 200
                    && s.history
                        .push_failed_for_good
                        .iter()
                        .any(|&(fc, fd)| fc == c && Some(fd) != relay)
            })
        }),
        Property::<ParkModel>::sometimes("push_retried_after_transient_failure", |_, s| {
            !s.history.retried.is_empty()
        }),
        Property::<ParkModel>::sometimes("late_answer_hung_up", |_, s| {
            !s.history.hung_up.is_empty()
        }),
        Property::<ParkModel>::sometimes("live_call_answered_after_a_notice", |_, s| {
            s.history.answered_after_notice
        }),
        Property::<ParkModel>::sometimes("awake_device_answers_without_registering", |_, s| {
            some_response(s, |c, _, relay| {
                relay.is_some_and(|d| s.history.reached_awake.contains(&(c, d)))
            })
        }),
        Property::<ParkModel>::sometimes("push_after_dead_flow", |_, s| {
            !s.history.fallback_pushed.is_empty()
        }),
        Property::<ParkModel>::sometimes("lost_invite_rerouted", |_, s| {
            !s.history.rerouted.is_empty()
        }),
        Property::<ParkModel>::sometimes("dropped_invite_that_arrived_is_cancelled", |_, s| {
            s.history.dropped_then_cancelled
        }),
        Property::<ParkModel>::sometimes("refresh_push_sent", |_, s| {
            !s.history.refresh_pushed.is_empty()
        }),
        Property::<ParkModel>::sometimes("busy_from_push_reaches_caller", |_, s| {
            some_response(s, |c, code, relay| {
                code == 486
                    && relay.is_none()
                    && (s.history.refused_from_push.iter()).any(|&(rc, _)| rc == c)
            })
        }),
        Property::<ParkModel>::sometimes("decline_from_push_reaches_caller", |_, s| {
            !s.history.declined_from_push.is_empty()
        }),
        Property::<ParkModel>::sometimes("ringback_from_push", |_, s| {
            s.callers.iter().any(|c| c.ringbacks > 0)
        }),
        Property::<ParkModel>::sometimes("push_answer_races_register", |_, s| {
            s.history.answer_conflicted
        }),
        Property::<ParkModel>::sometimes("refusal_from_push_stops_an_unanswered_invite", |_, s| {
            s.history.refusal_dropped_invite
        }),
        Property::<ParkModel>::sometimes("delivered_after_register_on_another_node", |_, s| {
            some_response(s, |c, code, relay| {
                code == 200 && relay.is_some_and(|d| s.history.reached_via_other.contains(&(c, d)))
            })
        }),
    ]
}
