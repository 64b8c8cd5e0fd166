//! The properties every simulated run keeps, judged on what the callers, the phones and
//! the push service saw (and when the node sent what), never on the node's insides. The
//! names are those of specs/parking.md's properties where they mean the same; the runtime
//! forms are stated here, with the slack a real network needs.

use std::time::Duration;

use pushpark::node::AppAnswer;
use pushpark::push::PushKind;
use pushpark_model::{AppReply, PushAnswer};

use super::net::Ms;
use super::push::Outcome;
use super::{AppAnswered, Scenario, World};

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
    let checks: [(&str, Check); 20] = [
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
        (
            "device_refused_from_push_gets_no_invite",
            device_refused_from_push_gets_no_invite,
        ),
        (
            "decline_from_push_ends_the_call",
            decline_from_push_ends_the_call,
        ),
        (
            "sole_device_rejection_reaches_caller",
            sole_device_rejection_reaches_caller,
        ),
        (
            "answer_for_an_ended_call_changes_nothing",
            answer_for_an_ended_call_changes_nothing,
        ),
        (
            "call_over_only_for_an_ended_call",
            call_over_only_for_an_ended_call,
        ),
        (
            "conflict_only_after_the_invite",
            conflict_only_after_the_invite,
        ),
        ("one_ringback_per_call", one_ringback_per_call),
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
            // Its app refused the call from the push and the node took it: the device's
            // leg is over as if it had answered 486 or 603 over SIP, and the node sends it
            // neither the INVITE (`device_refused_from_push_gets_no_invite`, specs §9) nor
            // a notice, whether it registers anyway or for another call. It has nothing to
            // learn: its app ended the call's screen when it refused. A refusal lost on the way, or
            // answered `Conflict` or `CallOver`, exempts nothing: that device learns over
            // SIP like any woken one.
            let refused =
                taken_refusals(world).any(|a| a.phone == phone.index && a.call_id == *call_id);
            if !forgotten && !got && stayed && !stuck && !refused {
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

// ----- answers from the push (specs/parking.md §9) ----------------------------------------

fn taken(answer: &AppAnswered) -> bool {
    answer.reply == AppAnswer::Reply(AppReply::Taken)
}

/// Each busy or decline the node took, the first time it took it (an app that retries
/// after a lost reply is told `Taken` again).
fn taken_refusals(world: &World) -> impl Iterator<Item = &AppAnswered> {
    world.app_answers.iter().enumerate().filter_map(|(i, a)| {
        let first = !world.app_answers[..i].iter().any(|b| {
            taken(b) && (b.phone, &b.call_id, b.answer) == (a.phone, &a.call_id, a.answer)
        });
        (taken(a) && a.answer != PushAnswer::Ringing && first).then_some(a)
    })
}

/// Whether the node had sent the caller its final response before answer `a` reached it.
fn over_before(world: &World, a: &AppAnswered) -> bool {
    world.finals_sent[..a.finals_before]
        .iter()
        .any(|(c, _, _)| *c == a.call_id)
}

/// The code and time of the first final response the node sent the caller of `call_id`.
fn first_final(world: &World, call_id: &str) -> Option<(u16, Ms)> {
    world
        .finals_sent
        .iter()
        .find(|(c, _, _)| c == call_id)
        .map(|&(_, code, at)| (code, at))
}

/// A phone whose busy or decline from the push was taken is never sent that call's
/// INVITE (nor a retransmission or reroute of it), nor pushed again for it, whatever it
/// does next: its REGISTER (the app registers anyway), a retry of its answer.
fn device_refused_from_push_gets_no_invite(world: &World) -> Result<(), String> {
    for a in taken_refusals(world) {
        let invite = world.invites_to_phones[a.invites_before..]
            .iter()
            .find(|(p, c, _)| *p == a.phone && *c == a.call_id);
        if let Some((_, _, at)) = invite {
            return Err(format!(
                "phone {} refused {} from its push ({:?} taken at {}), sent the INVITE at {at}",
                a.phone, a.call_id, a.answer, a.at
            ));
        }
        let push = world.push.sent[a.pushes_before..].iter().find(|p| {
            p.phone == Some(a.phone) && p.call_id == a.call_id && p.kind == PushKind::IncomingCall
        });
        if let Some(push) = push {
            return Err(format!(
                "phone {} refused {} from its push ({:?} taken at {}), pushed again at {}",
                a.phone, a.call_id, a.answer, a.at, push.at
            ));
        }
    }
    Ok(())
}

/// A decline from the push that was taken ends the call: its caller's final response is
/// the node's 603, sent at once (in the same step; the slack only for form's sake), and
/// it is the one the caller takes.
fn decline_from_push_ends_the_call(world: &World) -> Result<(), String> {
    for a in taken_refusals(world).filter(|a| a.answer == PushAnswer::Decline) {
        let caller = world.callers.iter().find(|c| c.call_id == a.call_id);
        match (
            first_final(world, &a.call_id),
            caller.and_then(|c| c.answer()),
        ) {
            (Some((603, sent)), Some(603)) if sent >= a.at && sent <= a.at + SLACK => {}
            (sent, got) => {
                return Err(format!(
                    "phone {}'s decline of {} taken at {}: final sent {sent:?}, caller got {got:?}",
                    a.phone, a.call_id, a.at
                ))
            }
        }
    }
    Ok(())
}

/// The callee's only phone refused the call from its push, and the node took it: no other
/// device is left to wait for, so the caller gets that code (486 for busy, 603 for
/// decline) at once; or 487, if the caller's CANCEL reached the node before that final.
/// (The model's property covers a 486 or 603 over SIP too; here it is checked for the
/// answers from the push, for which the node makes the response itself.)
fn sole_device_rejection_reaches_caller(world: &World) -> Result<(), String> {
    for a in taken_refusals(world) {
        let user = &world.phones[a.phone].spec.user;
        if world.phones.iter().filter(|p| p.spec.user == *user).count() > 1 {
            continue;
        }
        let code = a.answer.code().expect("a refusal has a code");
        let cancelled_first = |sent: Ms| {
            world
                .cancels_arrived
                .iter()
                .any(|(c, at)| *c == a.call_id && *at <= sent)
        };
        match first_final(world, &a.call_id) {
            Some((got, sent)) if got == code && sent >= a.at && sent <= a.at + SLACK => {}
            Some((487, sent)) if cancelled_first(sent) => {}
            sent => {
                return Err(format!(
                    "phone {} (its callee's only one) refused {} {code} from its push, \
                     taken at {}: final sent {sent:?}",
                    a.phone, a.call_id, a.at
                ))
            }
        }
    }
    Ok(())
}

/// An answer from the push that reaches the node after it sent the call's final response
/// gets `CallOver` (or `Expired`, past the token's life) and changes nothing: the node
/// sends nothing on it, no response, CANCEL, INVITE or push.
fn answer_for_an_ended_call_changes_nothing(world: &World) -> Result<(), String> {
    for a in &world.app_answers {
        if !over_before(world, a) {
            continue;
        }
        let call_over = matches!(
            a.reply,
            AppAnswer::Reply(AppReply::CallOver) | AppAnswer::Expired
        );
        if !call_over || a.sent > 0 {
            return Err(format!(
                "phone {}'s {:?} for {} at {}, the call over: {:?}, {} sent",
                a.phone, a.answer, a.call_id, a.at, a.reply, a.sent
            ));
        }
    }
    Ok(())
}

/// The converse: `CallOver` (or `Expired`) only for a call whose final response the node
/// had sent: an answer for a call in progress counts, or conflicts with the device's SIP.
fn call_over_only_for_an_ended_call(world: &World) -> Result<(), String> {
    for a in &world.app_answers {
        let call_over = matches!(
            a.reply,
            AppAnswer::Reply(AppReply::CallOver) | AppAnswer::Expired
        );
        if call_over && !over_before(world, a) {
            return Err(format!(
                "phone {}'s {:?} for {} at {}: {:?}, the call going on",
                a.phone, a.answer, a.call_id, a.at, a.reply
            ));
        }
    }
    Ok(())
}

/// `Conflict` only for a device the node had sent that call's INVITE (it registered first,
/// or was taken to be awake): its answer over SIP is the one that counts.
fn conflict_only_after_the_invite(world: &World) -> Result<(), String> {
    for a in &world.app_answers {
        if a.reply != AppAnswer::Reply(AppReply::Conflict) {
            continue;
        }
        if world
            .invite_sent(a.phone, &a.call_id)
            .is_none_or(|at| at > a.at)
        {
            return Err(format!(
                "phone {}'s {:?} for {} at {}: Conflict, never sent the INVITE before",
                a.phone, a.answer, a.call_id, a.at
            ));
        }
    }
    Ok(())
}

/// A caller gets at most one 180 of the node's own, and none after its final response or
/// after a phone's 180 was relayed (even if that phone's branch failed since: the caller
/// heard it). Its form on the wire: a ringing answer that was taken
/// sends one such 180 exactly when no 180 was sent for the call before (a taken answer
/// finds the call in progress), and any other answer sends none; no such 180 is sent after
/// a final response or a phone's 180 (in an earlier millisecond: within one, the order of
/// steps is not seen here). A retransmitted INVITE gets the last provisional again, so a
/// retransmission of our 180 is one only while no phone's 180 came after it.
///
fn one_ringback_per_call(world: &World) -> Result<(), String> {
    for a in &world.app_answers {
        let ringback_before = world.rings_sent[..a.rings_before]
            .iter()
            .any(|(c, _, own)| *c == a.call_id && *own);
        let relayed_before = world.rings_sent[..a.rings_before]
            .iter()
            .any(|(c, _, own)| *c == a.call_id && !*own);
        let due =
            taken(a) && a.answer == PushAnswer::Ringing && !ringback_before && !relayed_before;
        if a.ringbacks != usize::from(due) {
            return Err(format!(
                "phone {}'s {:?} for {} at {} ({:?}) made {} ringbacks",
                a.phone, a.answer, a.call_id, a.at, a.reply, a.ringbacks
            ));
        }
    }
    for (call_id, at, _) in world.rings_sent.iter().filter(|(_, _, own)| *own) {
        let over = first_final(world, call_id).is_some_and(|(_, f)| f < *at);
        let phone_rang =
            (world.rings_sent.iter()).any(|(c, t, own)| c == call_id && t < at && !own);
        if over || phone_rang {
            return Err(format!(
                "{call_id}: our 180 at {at}, after its final or a phone's 180"
            ));
        }
    }
    Ok(())
}
