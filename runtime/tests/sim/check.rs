//! The properties every simulated run keeps, judged on what the callers, the phones and
//! the push service saw (and when the node sent what), never on the node's insides. The
//! names are those of specs/parking.md's properties where they mean the same; the runtime
//! forms are stated here, with the slack a real network needs.

use std::time::Duration;

use pushpark::push::PushKind;

use super::net::Ms;
use super::push::Outcome;
use super::{Scenario, World};

/// Time for a message to cross the network a few times, with a loss or two on the way
/// (T1 retransmissions: 0.5 + 1 + 2 s) and a store commit.
const SLACK: Ms = 5_000;

/// How long past the deadline a ringing branch may keep a call: Timer C, then 64·T1 for the
/// CANCEL's answer.
const RINGING_KEEPS: Ms = 180_000 + 32_000;

fn ms(d: Duration) -> Ms {
    u64::try_from(d.as_millis()).expect("millis")
}

/// A property: what broke it, if anything did.
type Check = fn(&World) -> Result<(), String>;

/// The names of the properties `world` broke, each with what broke it.
pub fn all(world: &World, scenario: &Scenario) -> Vec<String> {
    let checks: [(&str, Check); 13] = [
        ("one_final_response_per_call", one_final_response_per_call),
        (
            "every_call_gets_a_final_response",
            every_call_gets_a_final_response,
        ),
        (
            "no_call_outlives_its_deadline",
            no_call_outlives_its_deadline,
        ),
        ("cancel_gets_487", cancel_gets_487),
        ("no_device_gets_a_call_twice", no_device_gets_a_call_twice),
        ("one_push_per_device_per_call", one_push_per_device_per_call),
        ("dead_tokens_forgotten", dead_tokens_forgotten),
        (
            "live_call_never_refused_for_an_ended_call",
            live_call_never_refused_for_an_ended_call,
        ),
        ("awake_device_gets_the_call", awake_device_gets_the_call),
        ("dead_flow_falls_back_to_push", dead_flow_falls_back_to_push),
        ("woken_device_learns_outcome", woken_device_learns_outcome),
        (
            "no_phone_rings_for_an_ended_call",
            no_phone_rings_for_an_ended_call,
        ),
        ("nothing_outlives_a_call", nothing_outlives_a_call),
    ];
    let _ = scenario;
    checks
        .iter()
        .filter_map(|(name, check)| check(world).err().map(|why| format!("{name}: {why}")))
        .collect()
}

/// When the node first sent the caller of `call_id` a final response.
fn final_sent(world: &World, call_id: &str) -> Option<Ms> {
    world
        .finals_sent
        .iter()
        .find(|(c, _, _)| c == call_id)
        .map(|&(_, _, at)| at)
}

/// When the caller's INVITE first reached the node.
fn arrived(world: &World, call_id: &str) -> Option<Ms> {
    world
        .invites_arrived
        .iter()
        .find(|(c, _)| c == call_id)
        .map(|&(_, at)| at)
}

/// A caller sees one final answer: retransmissions of it, but no second one.
fn one_final_response_per_call(world: &World) -> Result<(), String> {
    for caller in &world.callers {
        if caller.finals.len() > 1 {
            return Err(format!("{} got {:?}", caller.call_id, caller.finals));
        }
    }
    Ok(())
}

/// Every INVITE that reached the node gets a final response to its caller.
fn every_call_gets_a_final_response(world: &World) -> Result<(), String> {
    for caller in &world.callers {
        if arrived(world, &caller.call_id).is_some() && caller.finals.is_empty() {
            return Err(format!("{} has no final response", caller.call_id));
        }
    }
    Ok(())
}

/// A call ends by its park deadline (with slack), unless a phone rings for it: a ringing
/// phone keeps the call until it answers or gives up or, gone silent (an app killed on
/// UDP), until the proxy's Timer C (3 min) and the CANCEL's time-out (64·T1), as with any
/// proxy (RFC 3261 §16.8).
fn no_call_outlives_its_deadline(world: &World) -> Result<(), String> {
    let deadline = ms(world.config.parking.park_timeout);
    for caller in &world.callers {
        let Some(at) = arrived(world, &caller.call_id) else {
            continue;
        };
        // Timer C runs from a branch's last provisional.
        let last_ring = world
            .phones
            .iter()
            .flat_map(|p| &p.seen.rang)
            .filter(|(_, c)| *c == caller.call_id)
            .map(|&(t, _)| t)
            .max();
        let limit = match last_ring {
            Some(rang) => (at + deadline).max(rang) + RINGING_KEEPS + SLACK,
            None => at + deadline + SLACK,
        };
        match final_sent(world, &caller.call_id) {
            Some(sent) if sent <= limit => {}
            sent => {
                return Err(format!(
                    "{} arrived at {at} ms, final sent at {sent:?}, limit {limit}",
                    caller.call_id
                ))
            }
        }
    }
    Ok(())
}

/// A CANCEL that reaches the node before any final response was sent ends the call 487.
fn cancel_gets_487(world: &World) -> Result<(), String> {
    for (call_id, at) in &world.cancels_arrived {
        let first = world.finals_sent.iter().find(|(c, _, _)| c == call_id);
        if let Some((_, code, sent)) = first {
            if sent > at && *code != 487 {
                return Err(format!(
                    "{call_id}: cancelled at {at}, answered {code} at {sent}"
                ));
            }
        }
    }
    Ok(())
}

/// A phone gets at most one INVITE transaction per call (a rerouted INVITE is the same
/// transaction).
fn no_device_gets_a_call_twice(world: &World) -> Result<(), String> {
    for phone in &world.phones {
        for (i, (_, call_id, branch)) in phone.seen.invites.iter().enumerate() {
            let twice = phone.seen.invites[..i]
                .iter()
                .any(|(_, c, b)| c == call_id && b != branch);
            if twice {
                return Err(format!(
                    "phone {} got {call_id} twice: {:?}",
                    phone.index, phone.seen.invites
                ));
            }
        }
    }
    Ok(())
}

/// A phone is pushed again for a call only after the push before failed for now.
fn one_push_per_device_per_call(world: &World) -> Result<(), String> {
    let calls = world
        .push
        .sent
        .iter()
        .filter(|p| p.kind == PushKind::IncomingCall);
    for (i, push) in calls.clone().enumerate() {
        let earlier = calls
            .clone()
            .take(i)
            .filter(|p| p.call_id == push.call_id && p.phone == push.phone)
            .last();
        if let Some(earlier) = earlier {
            let retry = earlier.outcome == Outcome::Transient && earlier.reported_at <= push.at;
            if !retry {
                return Err(format!(
                    "phone {:?} pushed for {} at {} after {:?}",
                    push.phone, push.call_id, push.at, earlier
                ));
            }
        }
    }
    Ok(())
}

/// Once the push service said a token is dead, it gets no more pushes.
fn dead_tokens_forgotten(world: &World) -> Result<(), String> {
    for dead in world
        .push
        .sent
        .iter()
        .filter(|p| p.outcome == Outcome::Dead)
    {
        let later = world
            .push
            .sent
            .iter()
            .find(|p| p.phone == dead.phone && p.at > dead.reported_at);
        if let Some(later) = later {
            return Err(format!("{later:?} after {dead:?}"));
        }
    }
    Ok(())
}

/// Race 1: a phone refuses a live call busy only for another call that was live when the
/// node sent it the INVITE — never because an INVITE of a call already over (an ended-call
/// notice, a branch not yet cancelled) still holds its line.
fn live_call_never_refused_for_an_ended_call(world: &World) -> Result<(), String> {
    for phone in &world.phones {
        for (at, refused, holder) in &phone.seen.refused_busy {
            let Some(sent) = world.invite_sent(phone.index, refused) else {
                continue;
            };
            if final_sent(world, refused).is_some_and(|f| f <= sent) {
                // Not a live call: the notice of one over.
                continue;
            }
            let holder_over = final_sent(world, holder).is_some_and(|f| f < sent);
            let in_call = phone.dialogs.contains_key(holder);
            if holder_over && !in_call {
                return Err(format!(
                    "phone {} refused {refused} at {at} for {holder}, over before {sent}",
                    phone.index
                ));
            }
        }
    }
    Ok(())
}

/// Race 2: a phone the node knows to be awake — connected over TCP, or heard from over UDP
/// within the awake window — gets the INVITE without being woken, if it stays awake on
/// that flow until the call ends (late enough for retransmissions to get through).
fn awake_device_gets_the_call(world: &World) -> Result<(), String> {
    let window = ms(world.config.parking.awake_window);
    for caller in &world.callers {
        let Some(at) = arrived(world, &caller.call_id) else {
            continue;
        };
        let end = final_sent(world, &caller.call_id).unwrap_or(Ms::MAX);
        if end < at + SLACK {
            continue;
        }
        for phone in world
            .phones
            .iter()
            .filter(|p| p.spec.user == caller.spec.callee)
        {
            let awake = phone.seen.flows.iter().any(|&(opened, closed, addr)| {
                let registered = phone
                    .seen
                    .registered
                    .iter()
                    .any(|&r| r >= opened && r + SLACK <= at);
                let heard = phone.spec.tcp
                    || world.heard[phone.index]
                        .iter()
                        .any(|&(t, from)| from == addr && t <= at && t + window > at);
                registered && heard && closed.is_none_or(|c| c >= end)
            });
            let got = phone
                .seen
                .invites
                .iter()
                .any(|(_, c, _)| *c == caller.call_id);
            if awake && !got {
                return Err(format!(
                    "phone {} was awake from before {at} to {end} and never got {}",
                    phone.index, caller.call_id
                ));
            }
        }
    }
    Ok(())
}

/// Race 3: a TCP phone whose app dies with the INVITE ringing is pushed at once, if the
/// call is still going, its token lives, no push for the call reached it before and its
/// push attempts for the call are not used up.
fn dead_flow_falls_back_to_push(world: &World) -> Result<(), String> {
    let deadline = ms(world.config.parking.park_timeout);
    for phone in world.phones.iter().filter(|p| p.spec.tcp) {
        for (died, call_id) in &phone.seen.killed_with {
            let Some(at) = arrived(world, call_id) else {
                continue;
            };
            // Going on at its death, and not ended by another device at once after.
            let window = died + 1_000;
            let end = world.finals_sent.iter().find(|(c, _, _)| c == call_id);
            let going = end.is_none_or(|&(_, code, at)| at > window || (at > *died && code == 480));
            let dead_token = world
                .push
                .sent
                .iter()
                .any(|p| p.phone == Some(phone.index) && p.outcome == Outcome::Dead);
            if !going || window > at + deadline || dead_token {
                continue;
            }
            // Pushed for this call before and woken: that push is spent (one push per
            // device per call, unless it failed).
            let pushed_before = world.push.sent.iter().any(|p| {
                p.phone == Some(phone.index)
                    && p.call_id == *call_id
                    && p.at < *died
                    && matches!(p.outcome, Outcome::Delivered | Outcome::Lost)
            });
            // Its push attempts for the call are used up (each failed for now).
            let attempts = world
                .push
                .sent
                .iter()
                .filter(|p| p.phone == Some(phone.index) && p.call_id == *call_id && p.at < *died)
                .count();
            let spent = attempts >= usize::from(world.config.parking.push_attempts);
            let pushed = pushed_before
                || spent
                || world.push.sent.iter().any(|p| {
                    p.phone == Some(phone.index) && p.call_id == *call_id && p.at >= *died
                });
            if !pushed {
                return Err(format!(
                    "phone {} died at {died} with {call_id} ringing and was not pushed",
                    phone.index
                ));
            }
        }
    }
    Ok(())
}

/// A phone woken by a call's push that registers gets that call's INVITE: the live call, or
/// the notice that it ended (unless the call was over and forgotten long before).
fn woken_device_learns_outcome(world: &World) -> Result<(), String> {
    let linger = ms(world.config.parking.ended_notice_window);
    for phone in &world.phones {
        for (pushed, call_id, asleep) in &phone.seen.pushes {
            if !asleep || call_id.is_empty() {
                continue;
            }
            let registered = phone
                .seen
                .registered
                .iter()
                .find(|&&r| r > *pushed)
                .copied();
            let Some(registered) = registered else {
                continue;
            };
            // Late enough that the call is long over and forgotten: nothing to tell.
            let forgotten = final_sent(world, call_id).is_some_and(|f| f + linger < registered);
            let got = phone.seen.invites.iter().any(|(_, c, _)| c == call_id);
            let stayed = phone
                .seen
                .flows
                .iter()
                .any(|&(o, c, _)| o <= registered && c.is_none_or(|c| c > registered + SLACK));
            // An app killed on UDP while a call rang leaves that branch alive until Timer
            // C (nothing tells the node it died): notices to the device wait behind it.
            let stuck = !phone.spec.tcp
                && phone.seen.killed_with.iter().any(|(k, c)| {
                    *k < registered && final_sent(world, c).is_none_or(|f| f > registered)
                });
            if !forgotten && !got && stayed && !stuck {
                return Err(format!(
                    "phone {} woken for {call_id} at {pushed}, registered at {registered}, \
                     never got it",
                    phone.index
                ));
            }
        }
    }
    Ok(())
}

/// A phone never rings on until it gives up for a call that was over long before.
fn no_phone_rings_for_an_ended_call(world: &World) -> Result<(), String> {
    for phone in &world.phones {
        for (at, call_id) in &phone.seen.ring_timeouts {
            if final_sent(world, call_id).is_some_and(|f| f + SLACK < *at) {
                return Err(format!(
                    "phone {} rang for {call_id} until its time-out at {at}",
                    phone.index
                ));
            }
        }
    }
    Ok(())
}

/// Once every call is over, the node holds nothing of them: no call, no parked call, no
/// transaction.
fn nothing_outlives_a_call(world: &World) -> Result<(), String> {
    let gauges = world.gauges_at_end.as_ref().expect("the run ended");
    if gauges.core_calls + gauges.proxy_calls + gauges.parked_calls + gauges.transactions > 0 {
        return Err(format!("{gauges:?}"));
    }
    let unacknowledged: Vec<_> = world
        .phones
        .iter()
        .flat_map(|p| &p.seen.unacknowledged)
        .collect();
    if !unacknowledged.is_empty() {
        return Err(format!("2xx never acknowledged: {unacknowledged:?}"));
    }
    Ok(())
}
