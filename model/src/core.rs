//! The call-parking protocol as one pure transition function.
//!
//! specs/parking.md is the prose this code follows: its leg states, call phases and outcome
//! table are the ones below.

use std::collections::BTreeMap;

use crate::fault::Fault;
use crate::{
    AorId, AppReply, CallId, Callee, Config, DeviceId, Effect, EndReason, Event, Flow, Millis,
    PushAnswer, Target, Timer, TokenUse,
};

/// The decisions of the call-parking server for the callees it owns. Sans-IO: every input
/// carries the time, every output is an instruction. `Clone + Eq + Hash` so the model
/// checker can store and compare it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Core {
    config: Config,
    calls: BTreeMap<CallId, Call>,
    /// Every call record of a callee, oldest first: parked calls are delivered in order.
    by_aor: BTreeMap<AorId, Vec<CallId>>,
    /// Shutting down: no new call is taken.
    draining: bool,
    fault: Option<Fault>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Call {
    aor: AorId,
    deadline: Millis,
    phase: Phase,
    /// Armed only while the call has ended and devices pushed for it have not registered.
    linger: bool,
    /// The caller was sent a ringing provisional: a device's, relayed, or the server's own
    /// for an app ringing from its push. Kept when that device's branch fails later (its leg
    /// forgets it rang): the caller heard it.
    ringing: bool,
    legs: Vec<Leg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    /// Waiting for devices; parked legs may still be delivered.
    Parking,
    /// The park deadline passed while a forwarded branch was still in progress: the call
    /// lives on that branch (and any device that still wakes), but pushes no more.
    Overdue,
    /// The caller has its final response; what is left is cancelling branches and telling
    /// late wakers.
    Ended(EndReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Leg {
    device: DeviceId,
    /// The device has a push token.
    pushable: bool,
    /// Pushes sent to the device for this call: one, plus the retries of transient
    /// failures.
    pushes: u8,
    /// What became of the last push.
    push: PushState,
    /// The device answered the INVITE forwarded to it with a provisional (100, 180, 183):
    /// it holds the INVITE.
    heard: bool,
    /// The device rings for the INVITE (180, 183): its user sees the call. Past the
    /// deadline only a ringing branch keeps the call; one that said no more than 100 Trying
    /// (an app killed with the INVITE in hand) or nothing at all does not.
    rang: bool,
    /// The device registered while the call was in progress: it is awake for this call,
    /// and if the INVITE it was sent then never reached it, it is owed a notice.
    woke: bool,
    /// The device answered an INVITE of this call (a provisional at least): should its flow
    /// die, its app may live on and come back on a new one, still holding the call. It is
    /// not given up for a failed push, and is owed the end of the call when it registers.
    held: bool,
    /// The device registered again while an ended call's INVITE was in progress on it: the
    /// reroute of this branch waits until that is over.
    reroute_due: bool,
    /// The app refused the call from its push (486, 603) while the INVITE sent to the
    /// device had had no response at all: the branch was dropped (`Dropped`, or
    /// `Cancelling` once the device turns out to hold it), and ends as this refusal.
    refusal: Option<u16>,
    state: LegState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PushState {
    /// No push was sent for this call.
    None,
    /// The push service has not answered the last push yet.
    Outstanding,
    /// The push service accepted the last push.
    Accepted,
    /// The push service refused the last push.
    Failed,
}

/// How awake a device is, judged from what the runtime knows of its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awake {
    /// A request sent now reaches it (an open connection; or UDP and no way to push it).
    Surely,
    /// Heard from on UDP within the awake window, or in a dialog through us: forward, and
    /// push in parallel in case it fell asleep since.
    Probably,
    /// Asleep: only a push can bring it.
    No,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LegState {
    /// Pushed (the push outstanding or accepted); waiting for the device to register.
    Parked,
    /// The last push failed transiently; the retry timer is armed.
    Backoff,
    /// The INVITE was sent to the device; no final response yet.
    Forwarded,
    /// The device is reachable, but an ended call's INVITE (a notice, a cancelled branch)
    /// is in progress on it: the INVITE waits until that is over, so that a single-line phone
    /// does not answer it busy.
    Queued,
    /// The call ended and the branch was cancelled; waiting for its final response.
    Cancelling,
    /// The call ended while the INVITE sent to the device had had no response at all: no
    /// CANCEL may go yet (RFC 3261 §9.1), and it is no longer retransmitted. The device may
    /// still hold it (the INVITE was on its way, its 100 Trying was lost); its answers still
    /// come, until its transaction times out (`BranchUnreachable`).
    Dropped,
    /// The call ended before the pushed device registered; it is told when it does.
    Abandoned,
    /// The call ended, the pushed device has registered, and its notice waits until no other
    /// INVITE of this server is in progress on the device.
    NoticeDue,
    /// The notice (the INVITE, then a CANCEL with the reason) is on its way; waiting for the
    /// branch's final response.
    Telling,
    /// Nothing more will happen on this leg.
    Done(Outcome),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Outcome {
    Answered,
    Rejected(u16),
    /// Refused with this code (486, 603) by the app from its push, before it had the INVITE:
    /// there is no response of the device's to relay.
    Refused(u16),
    /// Could not be reached: push failed or gave up, device went away, flow failed.
    Unavailable,
    /// Registered after the call ended and was told.
    Told,
}

impl Leg {
    /// Still able to produce a call for the caller (in the given phase). Past the deadline
    /// only a ringing branch keeps the call: a user sees it and may still answer. A device
    /// that said nothing, or no more than 100 Trying, or never got the INVITE, does not.
    fn is_live(&self, phase: Phase) -> bool {
        match self.state {
            LegState::Forwarded => phase == Phase::Parking || self.rang,
            LegState::Queued | LegState::Parked | LegState::Backoff => phase == Phase::Parking,
            _ => false,
        }
    }
}

impl Phase {
    fn is_pending(self) -> bool {
        !matches!(self, Phase::Ended(_))
    }
}

impl Call {
    fn leg(&mut self, device: DeviceId) -> Option<&mut Leg> {
        self.legs.iter_mut().find(|l| l.device == device)
    }

    fn is_pending(&self) -> bool {
        self.phase.is_pending()
    }

    /// In progress, and a device of it is being woken: what `max_calls_per_callee` counts.
    fn waits_for_wake(&self) -> bool {
        self.is_pending()
            && (self.legs.iter()).any(|l| matches!(l.state, LegState::Parked | LegState::Backoff))
    }
}

/// The final response a call gets when every branch is over and none answered
/// (RFC 3261 §16.7 step 6): a device's own response beats the 480 the server makes up for
/// devices it could not reach; 6xx first, then the lowest class, then the codes the
/// caller can act on, then busy.
fn best_response(legs: &[Leg], fault: Option<Fault>) -> (u16, Option<DeviceId>) {
    let rank = |code: u16| {
        let class = match code / 100 {
            6 => 0,
            c => c,
        };
        let preference = match code {
            401 | 407 | 415 | 420 | 484 => 0,
            486 => 1,
            _ => 2,
        };
        (class, preference, code)
    };
    let best = legs
        .iter()
        .filter_map(|l| match l.state {
            LegState::Done(Outcome::Rejected(code)) => Some((rank(code), code, Some(l.device))),
            // Answered from the push: the server makes the response up.
            LegState::Done(Outcome::Refused(code)) => Some((rank(code), code, None)),
            _ => l.refusal.map(|code| (rank(code), code, None)),
        })
        .filter(|_| fault != Some(Fault::LoseBusyCode))
        .min();
    match best {
        // A proxy does not pass a 503 upstream: the caller would take it for this server's
        // overload (RFC 3261 §16.7 step 6).
        Some((_, 503, _)) => (500, None),
        Some((_, code, relay)) => (code, relay),
        None => (480, None),
    }
}

/// The phase and deadline of `call`, and its leg to `device`.
fn leg_of(
    calls: &mut BTreeMap<CallId, Call>,
    call: CallId,
    device: DeviceId,
) -> Option<(Phase, Millis, &mut Leg)> {
    let c = calls.get_mut(&call)?;
    let (phase, deadline) = (c.phase, c.deadline);
    c.leg(device).map(|leg| (phase, deadline, leg))
}

impl Core {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            calls: BTreeMap::new(),
            by_aor: BTreeMap::new(),
            draining: false,
            fault: None,
        }
    }

    /// A core with a deliberate defect, for the checker's fault tests and the runtime's
    /// whole-node simulation.
    #[cfg(feature = "faults")]
    pub fn with_fault(config: Config, fault: Option<Fault>) -> Self {
        Self {
            fault,
            ..Self::new(config)
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Call records held: calls in progress plus ended calls still waiting for branches to
    /// finish or for pushed devices to register.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Holds no call at all: every call has left no trace.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.by_aor.is_empty()
    }

    /// Whether the core holds a call of `aor` (in progress or lingering).
    pub fn holds_callee(&self, aor: AorId) -> bool {
        self.by_aor.contains_key(&aor)
    }

    /// Whether the core still holds `call`: once it does not, no effect will name it again.
    pub fn holds(&self, call: CallId) -> bool {
        self.calls.contains_key(&call)
    }

    /// Calls whose caller has no final response yet.
    pub fn calls_in_progress(&self) -> usize {
        self.calls.values().filter(|c| c.is_pending()).count()
    }

    /// Whether the state of the core needs `timer` armed now. Every timer the core arms
    /// and has not disarmed satisfies this, and every timer it needs is armed: the
    /// checker holds the core to it.
    pub fn needs_timer(&self, timer: Timer) -> bool {
        match timer {
            Timer::Deadline(call) => self
                .calls
                .get(&call)
                .is_some_and(|c| c.phase == Phase::Parking),
            Timer::PushRetry(call, device) => self.calls.get(&call).is_some_and(|c| {
                c.legs
                    .iter()
                    .any(|l| l.device == device && l.state == LegState::Backoff)
            }),
            Timer::Linger(call) => self.calls.get(&call).is_some_and(|c| c.linger),
        }
    }

    /// Every timer [`needs_timer`](Self::needs_timer) holds for.
    pub fn needed_timers(&self) -> impl Iterator<Item = Timer> + '_ {
        self.calls.iter().flat_map(|(&id, c)| {
            let deadline = (c.phase == Phase::Parking).then_some(Timer::Deadline(id));
            let linger = c.linger.then_some(Timer::Linger(id));
            let retries = c.legs.iter().filter_map(move |l| {
                (l.state == LegState::Backoff).then_some(Timer::PushRetry(id, l.device))
            });
            deadline.into_iter().chain(linger).chain(retries)
        })
    }

    /// Feeds one event at time `now`, appending the instructions to carry out to `out`.
    /// Events about calls or legs the core no longer holds are ignored: late timers,
    /// duplicated responses and retransmitted REGISTERs are harmless.
    pub fn step(&mut self, now: Millis, event: Event, out: &mut Vec<Effect>) {
        match event {
            Event::CallArrived {
                call,
                aor,
                callee,
                waking_limit,
            } => self.arrive(now, call, (aor, callee, waking_limit), out),
            Event::CallerCancelled { call } => {
                let ignore = self.fault == Some(Fault::IgnoreCancelWhileParked)
                    && self
                        .calls
                        .get(&call)
                        .is_some_and(|c| c.legs.iter().all(|l| l.state != LegState::Forwarded));
                if !ignore && self.calls.get(&call).is_some_and(Call::is_pending) {
                    self.end(now, call, 487, None, EndReason::CallerCancelled, out);
                }
            }
            Event::DeviceRegistered { aor, device } => self.registered(aor, device, out),
            Event::DeviceUnavailable { aor, device } => {
                for call in self.calls_of(aor) {
                    self.leg_unavailable(now, call, device, out);
                }
            }
            Event::PushAccepted { call, device } => self.push_accepted(call, device, out),
            Event::PushFailed {
                call,
                device,
                permanent,
            } => self.push_failed(now, call, device, permanent, out),
            Event::BranchTrying { call, device } => self.heard(call, device, false, out),
            Event::BranchRang { call, device } => self.heard(call, device, true, out),
            Event::BranchAnswered { call, device } => self.answered(now, call, device, out),
            Event::BranchRejected { call, device, code } => {
                self.rejected(now, call, device, code, out)
            }
            Event::BranchUnreachable { call, device } => self.unreachable(now, call, device, out),
            Event::TimerFired(timer) => self.timer(now, timer, out),
            Event::ShuttingDown => self.shut_down(now, out),
            Event::BindingExpiring { aor, device, token } => {
                self.binding_expiring(aor, device, token, out)
            }
            Event::PushAnswered {
                call,
                device,
                answer,
            } => self.push_answered(now, (call, device), answer, out),
        }
    }

    /// The app of `device` answered from its push for `call` (specs/parking.md §9). It is
    /// taken only while the call is in progress and the device has not been sent its INVITE
    /// (it was pushed, waits for a retry, or is held back by a notice): from then on the
    /// device answers over SIP, so the push answer and a SIP answer never both count. A busy
    /// or a decline then counts as the device's 486 or 603 would (a 486 waits for the other
    /// devices, a 603 ends the call), and the device's later REGISTER does not deliver the
    /// call. A ringing app gets the caller a 180 of the server's own, once per call. The
    /// same answer again is taken again and changes nothing (the app may retry); anything
    /// for a call that is over changes nothing.
    fn push_answered(
        &mut self,
        now: Millis,
        (call, device): (CallId, DeviceId),
        answer: PushAnswer,
        out: &mut Vec<Effect>,
    ) {
        let fault = self.fault;
        let reply = |reply| Effect::ReplyToApp {
            call,
            device,
            reply,
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return out.push(reply(AppReply::CallOver));
        };
        let pending = c.is_pending() || fault == Some(Fault::StaleAnswerTaken);
        let rang = match fault {
            Some(Fault::RingbackAfterRelayedRing) => c.legs.iter().any(|l| l.rang),
            _ => c.ringing,
        };
        let Some(leg) = c.leg(device).filter(|_| pending) else {
            return out.push(reply(AppReply::CallOver));
        };
        let before_invite = matches!(
            leg.state,
            LegState::Parked
                | LegState::Backoff
                | LegState::Queued
                | LegState::Done(Outcome::Unavailable)
        ) || (fault == Some(Fault::StaleAnswerTaken)
            && leg.state == LegState::Abandoned);
        // Sent the INVITE, the device has not answered it at all: its SIP stack does not
        // hold it, as far as anyone can tell (it slept through it on UDP), and the app is
        // the one answering.
        let unheard = leg.state == LegState::Forwarded && !leg.heard;
        let Some(code) = answer.code() else {
            if !(before_invite || unheard) {
                return out.push(reply(AppReply::Conflict));
            }
            out.push(reply(AppReply::Taken));
            if !rang {
                c.ringing = true;
                out.push(Effect::Ringback { call });
            }
            return;
        };
        if leg.state == LegState::Done(Outcome::Refused(code)) || leg.refusal == Some(code) {
            return out.push(reply(AppReply::Taken));
        }
        if unheard {
            // Its INVITE is stopped like that of an ended call (no CANCEL may go before a
            // provisional, RFC 3261 §9.1): should the device turn out to hold it, it is
            // cancelled then, or hung up if it answered (`heard`, `answered`).
            leg.refusal = Some(code);
            leg.reroute_due = false;
            leg.state = LegState::Dropped;
            out.push(Effect::DropBranch { call, device });
        } else if before_invite {
            if leg.state == LegState::Backoff {
                out.push(Effect::DisarmTimer {
                    timer: Timer::PushRetry(call, device),
                });
            }
            leg.state = LegState::Done(Outcome::Refused(code));
        } else {
            return out.push(reply(AppReply::Conflict));
        }
        out.push(reply(AppReply::Taken));
        if !c.is_pending() {
            return self.settle_ended(call, out);
        }
        if (600..700).contains(&code) {
            // A 6xx ends the call: no other device will take it (RFC 3261 §16.7).
            self.end(now, call, code, None, EndReason::DeclinedElsewhere, out);
        } else {
            self.settle(now, call, out);
        }
    }

    /// RFC 8599 §5.5: a binding about to expire gets a push that makes the app register
    /// again (specs/parking.md §7). Never through a calls-only token: an iOS app that gets a
    /// VoIP push it does not report as a call is killed. Nor while a push for a call wakes
    /// the device anyway: that push is on its way, due after a back-off, or was accepted and
    /// the device's REGISTER is awaited (the runtime asks again on a later sweep while the
    /// binding is still due). The decision keeps no state: the runtime asks at most once per
    /// binding and sweep, and no more for an expiry once a refresh push went out for it.
    fn binding_expiring(
        &self,
        aor: AorId,
        device: DeviceId,
        token: TokenUse,
        out: &mut Vec<Effect>,
    ) {
        let calls_only =
            token == TokenUse::CallsOnly && self.fault != Some(Fault::RefreshCallsOnlyToken);
        if calls_only || self.woken_by_a_call(aor, device) {
            return;
        }
        out.push(Effect::RefreshPush { device });
    }

    /// A push for a call of `aor` wakes `device` anyway: one is outstanding, or the device
    /// is awaited to register after one (`Parked`, `Abandoned`) or is about to get another
    /// (`Backoff`).
    fn woken_by_a_call(&self, aor: AorId, device: DeviceId) -> bool {
        self.legs_of_device(aor, device).any(|l| {
            l.push == PushState::Outstanding
                || matches!(
                    l.state,
                    LegState::Parked | LegState::Backoff | LegState::Abandoned
                )
        })
    }

    /// The device answered its INVITE with a provisional (`rang`: 180 or 183): it holds it.
    /// A ringing device's provisional goes on to a caller still waiting. A device that turns
    /// out to hold the INVITE of a call already over (dropped, or sent before it woke again)
    /// is sent the CANCEL now that one may go.
    fn heard(&mut self, call: CallId, device: DeviceId, rang: bool, out: &mut Vec<Effect>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let live = c.is_pending();
        let mut relayed = false;
        let Some(leg) = c.leg(device) else {
            return;
        };
        match leg.state {
            LegState::Forwarded | LegState::Cancelling | LegState::Telling => {
                leg.heard = true;
                leg.held = true;
                leg.rang |= rang;
                if rang && live && leg.state == LegState::Forwarded {
                    relayed = true;
                    out.push(Effect::RelayProvisional { call, device });
                }
            }
            LegState::Dropped | LegState::NoticeDue => {
                leg.heard = true;
                leg.held = true;
                leg.state = LegState::Cancelling;
                out.push(Effect::CancelBranch { call, device });
            }
            _ => {}
        }
        c.ringing |= relayed;
    }

    fn calls_of(&self, aor: AorId) -> Vec<CallId> {
        self.by_aor.get(&aor).cloned().unwrap_or_default()
    }

    /// `device`'s legs in every call of `aor`.
    fn legs_of_device(&self, aor: AorId, device: DeviceId) -> impl Iterator<Item = &Leg> + '_ {
        self.by_aor
            .get(&aor)
            .into_iter()
            .flatten()
            .filter_map(move |id| self.calls.get(id)?.legs.iter().find(|l| l.device == device))
    }

    /// The states of `device`'s legs in every call of `aor`.
    fn legs_of(&self, aor: AorId, device: DeviceId) -> impl Iterator<Item = LegState> + '_ {
        self.legs_of_device(aor, device).map(|l| l.state)
    }

    /// An INVITE of an ended call is in progress on `device`: a notice, or a cancelled
    /// branch still waiting for its final response. A live INVITE waits until it is over.
    fn ended_call_rings(&self, aor: AorId, device: DeviceId) -> bool {
        self.fault != Some(Fault::NoticeBeforeLiveCall)
            && self
                .legs_of(aor, device)
                .any(|s| matches!(s, LegState::Telling | LegState::Cancelling))
    }

    /// The core's judgement of whether a device is awake, from what the runtime knows of
    /// its flow (specs/parking.md §3).
    fn awake(&self, now: Millis, target: &Target) -> Awake {
        match target.flow {
            Flow::Connected => Awake::Surely,
            Flow::Datagram { .. } if !target.pushable => Awake::Surely,
            Flow::Datagram {
                heard_at,
                in_dialog,
            } if self.fault != Some(Fault::AwakeDeviceTakenAsleep)
                && (in_dialog || self.heard_lately(now, heard_at)) =>
            {
                Awake::Probably
            }
            Flow::Datagram { .. } | Flow::Closed => Awake::No,
        }
    }

    /// Heard from within the awake window; a window of zero trusts only dialogs.
    fn heard_lately(&self, now: Millis, heard_at: Millis) -> bool {
        let window = self.config.awake_window;
        window > 0 && now.saturating_sub(heard_at) <= window
    }

    /// Every call in progress gets its final response, 503 (the server is going away; the
    /// runtime adds Retry-After), as if its deadline had come at once: ringing branches are
    /// cancelled, devices still being woken are told when they register. New calls get 503.
    fn shut_down(&mut self, now: Millis, out: &mut Vec<Effect>) {
        self.draining = true;
        if self.fault == Some(Fault::ShutdownLeavesCalls) {
            return;
        }
        let pending: Vec<CallId> = (self.calls.iter())
            .filter(|(_, c)| c.is_pending())
            .map(|(&id, _)| id)
            .collect();
        for call in pending {
            self.end(now, call, 503, None, EndReason::Unanswered, out);
        }
    }

    fn arrive(
        &mut self,
        now: Millis,
        call: CallId,
        (aor, callee, waking_limit): (AorId, Callee, Option<usize>),
        out: &mut Vec<Effect>,
    ) {
        if self.calls.contains_key(&call) {
            return; // the runtime never reuses an id; a replay changes nothing
        }
        let respond = |code| Effect::Respond {
            call,
            code,
            relay: None,
        };
        if self.draining {
            return out.push(respond(503));
        }
        let targets = match callee {
            // Answered exactly as a known user with no usable binding: no response tells a
            // scan which users exist.
            Callee::Unknown => return out.push(respond(480)),
            Callee::Devices(targets) => targets,
        };
        if self.calls.len() >= self.config.max_calls {
            return out.push(respond(503));
        }
        // Only calls that wake a device count against the callee's limit: pushes are what a
        // flood of calls could abuse. Beyond it a new call pushes no device; it still rings
        // the devices that are awake (a PBX registered as one address takes its traffic).
        let waking = self.by_aor.get(&aor).map_or(0, |calls| {
            calls
                .iter()
                .filter(|id| self.calls.get(id).is_some_and(Call::waits_for_wake))
                .count()
        });
        let may_push = waking < waking_limit.unwrap_or(self.config.max_calls_per_callee);
        let mut legs: Vec<Leg> = Vec::with_capacity(targets.len());
        for target in &targets {
            if legs.iter().any(|l| l.device == target.device) {
                continue;
            }
            let awake = self.awake(now, target);
            let pushed = may_push && awake != Awake::Surely && target.pushable;
            if awake == Awake::No && !pushed {
                continue;
            }
            let state = match awake {
                Awake::No => LegState::Parked,
                _ if self.ended_call_rings(aor, target.device) => LegState::Queued,
                _ => LegState::Forwarded,
            };
            legs.push(Leg {
                device: target.device,
                pushable: target.pushable,
                pushes: u8::from(pushed),
                push: if pushed {
                    PushState::Outstanding
                } else {
                    PushState::None
                },
                heard: false,
                rang: false,
                woke: false,
                held: false,
                reroute_due: false,
                refusal: None,
                state,
            });
        }
        if legs.is_empty() {
            return out.push(respond(if may_push { 480 } else { 486 }));
        }
        let deadline = now + self.config.park_timeout;
        if self.fault != Some(Fault::NoDeadline) {
            out.push(Effect::ArmTimer {
                timer: Timer::Deadline(call),
                at: deadline,
            });
        }
        for leg in &legs {
            // A device that is probably awake is pushed first and forwarded at once: should
            // it have fallen asleep, the push brings it back to register.
            if leg.pushes > 0 {
                out.push(Effect::Push {
                    call,
                    device: leg.device,
                });
            }
            if leg.state == LegState::Forwarded {
                out.push(Effect::Forward {
                    call,
                    device: leg.device,
                });
            }
        }
        self.calls.insert(
            call,
            Call {
                aor,
                deadline,
                phase: Phase::Parking,
                linger: false,
                ringing: false,
                legs,
            },
        );
        self.by_aor.entry(aor).or_default().push(call);
    }

    /// A device of `aor` registered: every call of the callee in turn, oldest first, then
    /// what its line can take now.
    fn registered(&mut self, aor: AorId, device: DeviceId, out: &mut Vec<Effect>) {
        let held = self.ended_call_rings(aor, device);
        let calls = self.calls_of(aor);
        for &call in &calls {
            self.registered_for(call, device, held, out);
        }
        self.serve_line(aor, device, out);
        // A device told (or due to be told) waits no more inside the notice window.
        for call in calls {
            if self.calls.get(&call).is_some_and(|c| !c.is_pending()) {
                self.settle_ended(call, out);
            }
        }
    }

    fn registered_for(
        &mut self,
        call: CallId,
        device: DeviceId,
        held: bool,
        out: &mut Vec<Effect>,
    ) {
        let fault = self.fault;
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        match c.phase {
            Phase::Parking | Phase::Overdue => {
                if c.leg(device).is_none() {
                    // A device the call did not know of (a second phone) registered: it
                    // is reachable now, so it gets the call too.
                    c.legs.push(Leg {
                        device,
                        pushable: false,
                        pushes: 0,
                        push: PushState::None,
                        heard: false,
                        rang: false,
                        woke: false,
                        held: false,
                        reroute_due: false,
                        refusal: None,
                        state: LegState::Done(Outcome::Unavailable),
                    });
                }
                let Some(leg) = c.leg(device) else { return };
                leg.woke = true;
                match leg.state {
                    LegState::Backoff => {
                        if fault != Some(Fault::PushAfterWake) {
                            out.push(Effect::DisarmTimer {
                                timer: Timer::PushRetry(call, device),
                            });
                        }
                    }
                    LegState::Parked | LegState::Done(Outcome::Unavailable) => {}
                    LegState::Done(Outcome::Refused(_))
                        if fault == Some(Fault::RegisterAfterBusyDelivers) => {}
                    // Refused from the push while its INVITE rings on: the CANCEL follows the
                    // device to its new flow, as for an ended call.
                    LegState::Cancelling => return out.push(Effect::Reroute { call, device }),
                    // Forwarded: it may have slept through the INVITE, or lost it with an app
                    // started afresh, and come back on a new flow. The same INVITE goes
                    // there; a device that holds it absorbs it.
                    LegState::Forwarded if fault != Some(Fault::NoReroute) => {
                        if held {
                            // An ended call's INVITE rings on the device: the reroute waits.
                            leg.reroute_due = true;
                        } else {
                            out.push(Effect::Reroute { call, device });
                        }
                        return;
                    }
                    // Already has the call, or has given its answer: a second REGISTER
                    // changes nothing.
                    _ => return,
                }
                if held {
                    leg.state = LegState::Queued;
                } else {
                    leg.state = LegState::Forwarded;
                    out.push(Effect::Forward { call, device });
                }
            }
            Phase::Ended(reason) => {
                let Some(leg) = c.leg(device) else { return };
                match leg.state {
                    // It refused the call from its push: nothing to tell.
                    LegState::Dropped if leg.refusal.is_some() => return,
                    LegState::Dropped => {
                        // Awake on a new flow, it may never have had the INVITE dropped at
                        // the end of the call: it is told, like a device that slept through it.
                        leg.state = LegState::NoticeDue;
                        return;
                    }
                    // It holds the INVITE (a branch is cancelled only once the device
                    // answered it) and is being told the call is over: the CANCEL follows it to
                    // its new flow (an app started afresh answers it 481 and gets the notice).
                    // A notice it has not answered yet goes there too.
                    LegState::Cancelling | LegState::Telling => {
                        return out.push(Effect::Reroute { call, device });
                    }
                    _ => {}
                }
                if leg.state != LegState::Abandoned {
                    return;
                }
                match fault {
                    Some(Fault::ForwardAfterCancel) if reason == EndReason::CallerCancelled => {
                        leg.state = LegState::Done(Outcome::Told);
                        out.push(Effect::Forward { call, device });
                        self.settle_ended(call, out);
                    }
                    Some(Fault::NoticeBeforeLiveCall) => {
                        leg.state = LegState::Telling;
                        out.push(Effect::TellEnded {
                            call,
                            device,
                            reason,
                        });
                    }
                    _ => leg.state = LegState::NoticeDue,
                }
            }
        }
    }

    /// What `device` can take now that something on it changed: live INVITEs held back by
    /// an ended call's INVITE go once none is in progress; the oldest notice due goes once no
    /// other INVITE of ours is in progress on the device. One INVITE per call, and never a
    /// live INVITE beside an ended call's, so a single-line phone never answers a live call
    /// busy because of a call that is over (specs/parking.md §6).
    fn serve_line(&mut self, aor: AorId, device: DeviceId, out: &mut Vec<Effect>) {
        // One look at the line first: most of the time nothing waits on it.
        let mut waiting = false;
        let mut due = false;
        for state in self.legs_of(aor, device) {
            match state {
                LegState::Queued => waiting = true,
                LegState::NoticeDue => due = true,
                _ => {}
            }
        }
        let reroutes = self.legs_of_device(aor, device).any(|l| l.reroute_due);
        if !(waiting || due || reroutes) || self.ended_call_rings(aor, device) {
            return;
        }
        let calls = self.calls_of(aor);
        for &call in &calls {
            if let Some(leg) = self.calls.get_mut(&call).and_then(|c| c.leg(device)) {
                if leg.state == LegState::Queued {
                    leg.state = LegState::Forwarded;
                    out.push(Effect::Forward { call, device });
                } else if leg.state == LegState::Forwarded && leg.reroute_due {
                    leg.reroute_due = false;
                    out.push(Effect::Reroute { call, device });
                }
            }
        }
        let busy = self.legs_of(aor, device).any(|s| {
            matches!(
                s,
                LegState::Forwarded | LegState::Queued | LegState::Cancelling
            )
        });
        if busy || !due {
            return;
        }
        for call in calls {
            let Some(c) = self.calls.get_mut(&call) else {
                continue;
            };
            let Phase::Ended(reason) = c.phase else {
                continue;
            };
            if let Some(leg) = c.leg(device).filter(|l| l.state == LegState::NoticeDue) {
                leg.state = LegState::Telling;
                return out.push(Effect::TellEnded {
                    call,
                    device,
                    reason,
                });
            }
        }
    }

    fn leg_unavailable(
        &mut self,
        now: Millis,
        call: CallId,
        device: DeviceId,
        out: &mut Vec<Effect>,
    ) {
        let Some((_, _, leg)) = leg_of(&mut self.calls, call, device) else {
            return;
        };
        match leg.state {
            LegState::Backoff => out.push(Effect::DisarmTimer {
                timer: Timer::PushRetry(call, device),
            }),
            LegState::Parked | LegState::Abandoned | LegState::Queued | LegState::NoticeDue => {}
            _ => return,
        }
        leg.state = LegState::Done(Outcome::Unavailable);
        self.settle(now, call, out);
    }

    fn push_accepted(&mut self, call: CallId, device: DeviceId, out: &mut Vec<Effect>) {
        let fault = self.fault;
        let Some((_, _, leg)) = leg_of(&mut self.calls, call, device) else {
            return;
        };
        if leg.push != PushState::Outstanding {
            return;
        }
        leg.push = PushState::Accepted;
        if fault == Some(Fault::PushTwice) && leg.state == LegState::Parked {
            out.push(Effect::Push { call, device });
        }
    }

    fn push_failed(
        &mut self,
        now: Millis,
        call: CallId,
        device: DeviceId,
        permanent: bool,
        out: &mut Vec<Effect>,
    ) {
        if permanent {
            // A token the push service calls dead is forgotten, whatever became of the call.
            out.push(Effect::ForgetPushToken { device });
        }
        let config = &self.config;
        let Some((phase, deadline, leg)) = leg_of(&mut self.calls, call, device) else {
            return;
        };
        if leg.push != PushState::Outstanding {
            return;
        }
        leg.push = PushState::Failed;
        leg.pushable &= !permanent;
        match leg.state {
            LegState::Parked => {
                let retry_at = now + config.retry_delay(leg.pushes);
                if !permanent
                    && phase == Phase::Parking
                    && leg.pushes < config.push_attempts
                    && retry_at < deadline
                {
                    leg.state = LegState::Backoff;
                    out.push(Effect::ArmTimer {
                        timer: Timer::PushRetry(call, device),
                        at: retry_at,
                    });
                    return;
                }
                if leg.held {
                    // The push was a fallback for a flow that died under an INVITE the
                    // device held: its app may still come back on its own.
                    return;
                }
            }
            LegState::Abandoned if leg.held => return,
            LegState::Abandoned => {}
            // The device registered on its own meanwhile, or was forwarded the call at once
            // as probably awake: the push no longer matters, unless that INVITE turns out
            // undeliverable (see `unreachable`).
            _ => return,
        }
        leg.state = LegState::Done(Outcome::Unavailable);
        self.settle(now, call, out);
    }

    fn answered(&mut self, now: Millis, call: CallId, device: DeviceId, out: &mut Vec<Effect>) {
        let Some(aor) = self.aor_of(call) else {
            return;
        };
        let Some((phase, _, leg)) = leg_of(&mut self.calls, call, device) else {
            return;
        };
        let pending = phase.is_pending();
        match leg.state {
            LegState::Forwarded if pending => {
                leg.state = LegState::Done(Outcome::Answered);
                self.end(
                    now,
                    call,
                    200,
                    Some(device),
                    EndReason::AnsweredElsewhere,
                    out,
                );
            }
            // The 2xx won the race against our CANCEL, the user answered a notice, or a
            // dropped INVITE reached the device after all: the caller already has its final
            // response (or the app refused this call from its push: the leg keeps its
            // `refusal`, which is what `best_response` reads), so the device's dialog must
            // be closed.
            LegState::Cancelling | LegState::Telling | LegState::Dropped | LegState::NoticeDue => {
                leg.state = LegState::Done(match leg.state {
                    LegState::Telling | LegState::NoticeDue => Outcome::Told,
                    _ => Outcome::Answered,
                });
                out.push(Effect::HangUpBranch { call, device });
                self.settle(now, call, out);
            }
            _ => return,
        }
        self.serve_line(aor, device, out);
    }

    fn rejected(
        &mut self,
        now: Millis,
        call: CallId,
        device: DeviceId,
        code: u16,
        out: &mut Vec<Effect>,
    ) {
        let Some(aor) = self.aor_of(call) else {
            return;
        };
        let Some((phase, _, leg)) = leg_of(&mut self.calls, call, device) else {
            return;
        };
        let pending = phase.is_pending();
        match leg.state {
            LegState::Forwarded if pending => {
                leg.state = LegState::Done(Outcome::Rejected(code));
                if (600..700).contains(&code) {
                    // A 6xx ends the call: no other device will take it (RFC 3261 §16.7).
                    self.end(
                        now,
                        call,
                        code,
                        Some(device),
                        EndReason::DeclinedElsewhere,
                        out,
                    );
                } else {
                    self.settle(now, call, out);
                }
            }
            LegState::Cancelling | LegState::Telling | LegState::Dropped | LegState::NoticeDue => {
                leg.state = LegState::Done(match (leg.state, leg.refusal) {
                    (LegState::Telling | LegState::NoticeDue, _) => Outcome::Told,
                    (_, Some(refusal)) => Outcome::Refused(refusal),
                    _ => Outcome::Rejected(code),
                });
                if self.fault != Some(Fault::LeakFinishedCall) {
                    self.settle(now, call, out);
                }
            }
            _ => return,
        }
        self.serve_line(aor, device, out);
    }

    fn unreachable(&mut self, now: Millis, call: CallId, device: DeviceId, out: &mut Vec<Effect>) {
        let Some(aor) = self.aor_of(call) else {
            return;
        };
        let fault = self.fault;
        let attempts = self.config.push_attempts;
        let Some((phase, _, leg)) = leg_of(&mut self.calls, call, device) else {
            return;
        };
        match leg.state {
            LegState::Forwarded => {
                let may_push = phase == Phase::Parking
                    && leg.pushable
                    && matches!(leg.push, PushState::None | PushState::Failed)
                    && leg.pushes < attempts
                    && fault != Some(Fault::NoFallbackPush);
                leg.heard = false;
                leg.rang = false;
                leg.state = if std::mem::take(&mut leg.reroute_due) {
                    // It registered since, and waits only for an ended call's INVITE to be
                    // over: the INVITE that never arrived goes afresh over its new flow then.
                    LegState::Queued
                } else if may_push {
                    // Its flow died while it slept: wake it the RFC 8599 way.
                    leg.pushes += 1;
                    leg.push = PushState::Outstanding;
                    out.push(Effect::Push { call, device });
                    LegState::Parked
                } else if (leg.pushes > 0 && leg.push != PushState::Failed) || leg.held {
                    // A pushed device is parked again: the push (on its way, or delivered
                    // while the INVITE was lost) may bring it back to register; so is one
                    // that held the INVITE (its app may ring on, on a new flow).
                    LegState::Parked
                } else {
                    LegState::Done(Outcome::Unavailable)
                };
                self.settle(now, call, out);
            }
            LegState::Cancelling | LegState::Dropped => {
                // Ended before it arrived: if a push for this call woke the device, it is
                // told when it registers, as if the call had ended while it slept; so is a
                // device that held the INVITE (its app may ring on, on a new flow). A device
                // whose app refused the call from its push needs no telling.
                let woken = (leg.pushes > 0 && leg.push != PushState::Failed) || leg.held;
                leg.reroute_due = false;
                leg.state = if let Some(refusal) = leg.refusal {
                    LegState::Done(Outcome::Refused(refusal))
                } else if leg.woke {
                    // It registered during the call: it is owed its notice now.
                    LegState::NoticeDue
                } else if woken {
                    LegState::Abandoned
                } else {
                    LegState::Done(Outcome::Unavailable)
                };
                if leg.state == LegState::Abandoned {
                    self.linger(now, call, out);
                }
                self.settle(now, call, out);
            }
            // The notice did not arrive: the device is gone again. Woken by a push for this
            // call, it is still owed the notice when it registers, within the notice window.
            LegState::Telling => {
                let woken = leg.pushes > 0 && leg.push != PushState::Failed;
                leg.state = if woken {
                    LegState::Abandoned
                } else {
                    LegState::Done(Outcome::Unavailable)
                };
                if woken {
                    self.linger(now, call, out);
                }
                self.settle_ended(call, out);
                // Its other notices would not arrive either: they wait for its next
                // REGISTER, inside their own notice window.
                for other in self.calls_of(aor) {
                    let Some(c) = self.calls.get_mut(&other) else {
                        continue;
                    };
                    let Some(leg) = c.leg(device).filter(|l| l.state == LegState::NoticeDue) else {
                        continue;
                    };
                    leg.state = LegState::Abandoned;
                    self.linger(now, other, out);
                }
            }
            _ => return,
        }
        self.serve_line(aor, device, out);
    }

    /// Arms the ended-notice window of `call`, unless it is armed already.
    fn linger(&mut self, now: Millis, call: CallId, out: &mut Vec<Effect>) {
        let window = self.config.ended_notice_window;
        if let Some(c) = self.calls.get_mut(&call).filter(|c| !c.linger) {
            c.linger = true;
            out.push(Effect::ArmTimer {
                timer: Timer::Linger(call),
                at: now + window,
            });
        }
    }

    /// The callee of `call`, if the core holds it.
    fn aor_of(&self, call: CallId) -> Option<AorId> {
        self.calls.get(&call).map(|c| c.aor)
    }

    fn timer(&mut self, now: Millis, timer: Timer, out: &mut Vec<Effect>) {
        match timer {
            Timer::Deadline(call) => {
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                if c.phase != Phase::Parking {
                    return;
                }
                c.phase = Phase::Overdue;
                for leg in c.legs.iter_mut() {
                    if leg.state == LegState::Backoff {
                        leg.state = LegState::Done(Outcome::Unavailable);
                        out.push(Effect::DisarmTimer {
                            timer: Timer::PushRetry(call, leg.device),
                        });
                    }
                }
                self.settle(now, call, out);
            }
            Timer::PushRetry(call, device) => {
                let Some((phase, _, leg)) = leg_of(&mut self.calls, call, device) else {
                    return;
                };
                let pending = phase.is_pending();
                match leg.state {
                    LegState::Backoff if pending => {
                        leg.state = LegState::Parked;
                        leg.pushes += 1;
                        leg.push = PushState::Outstanding;
                        out.push(Effect::Push { call, device });
                    }
                    LegState::Forwarded if pending && self.fault == Some(Fault::PushAfterWake) => {
                        out.push(Effect::Push { call, device });
                    }
                    _ => {}
                }
            }
            Timer::Linger(call) => {
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                if !c.linger {
                    return;
                }
                c.linger = false;
                for leg in c.legs.iter_mut() {
                    if leg.state == LegState::Abandoned {
                        leg.state = LegState::Done(Outcome::Unavailable);
                    }
                }
                self.settle_ended(call, out);
            }
        }
    }

    /// After a leg of a call in progress is over: end the call when no leg can still
    /// produce an answer. Also tidies an ended call.
    fn settle(&mut self, now: Millis, call: CallId, out: &mut Vec<Effect>) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        if !c.is_pending() {
            return self.settle_ended(call, out);
        }
        if c.legs.iter().any(|l| l.is_live(c.phase)) {
            return;
        }
        let (code, relay) = best_response(&c.legs, self.fault);
        self.end(now, call, code, relay, EndReason::Unanswered, out);
    }

    /// Gives the caller its final response and winds the call down: forwarded branches are
    /// cancelled, pushed devices that have not registered will be told when they do, and
    /// pushed devices that have are told once their line is free.
    fn end(
        &mut self,
        now: Millis,
        call: CallId,
        code: u16,
        relay: Option<DeviceId>,
        reason: EndReason,
        out: &mut Vec<Effect>,
    ) {
        let fault = self.fault;
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        out.push(Effect::Respond { call, code, relay });
        let keep_deadline = fault == Some(Fault::KeepDeadlineOnAnswer) && code == 200;
        if c.phase == Phase::Parking && !keep_deadline {
            out.push(Effect::DisarmTimer {
                timer: Timer::Deadline(call),
            });
        }
        c.phase = Phase::Ended(reason);
        let aor = c.aor;
        let mut owed = Vec::new();
        for leg in c.legs.iter_mut() {
            leg.state = match leg.state {
                // Never answered at all: no CANCEL may follow an INVITE without a provisional
                // (RFC 3261 §9.1), and its retransmissions must not reach the device once it
                // wakes, beside the live calls it is woken for. Stopped; if the device holds
                // it after all, what it answers says so. A device awake on a fresh flow is
                // told at once that the call is over, like one that slept through it.
                LegState::Forwarded if !leg.heard && fault != Some(Fault::KeepProbing) => {
                    out.push(Effect::DropBranch {
                        call,
                        device: leg.device,
                    });
                    if leg.woke {
                        owed.push(leg.device);
                        LegState::NoticeDue
                    } else {
                        LegState::Dropped
                    }
                }
                LegState::Forwarded => {
                    out.push(Effect::CancelBranch {
                        call,
                        device: leg.device,
                    });
                    LegState::Cancelling
                }
                LegState::Parked => LegState::Abandoned,
                // Held back by a notice, it never got the INVITE; if a push for this call
                // woke it, it is told like any other woken device.
                LegState::Queued if leg.pushes > 0 => LegState::NoticeDue,
                LegState::Queued => LegState::Done(Outcome::Unavailable),
                LegState::Backoff => {
                    out.push(Effect::DisarmTimer {
                        timer: Timer::PushRetry(call, leg.device),
                    });
                    LegState::Done(Outcome::Unavailable)
                }
                other => other,
            };
        }
        if c.legs.iter().any(|l| l.state == LegState::Abandoned) {
            self.linger(now, call, out);
        }
        self.settle_ended(call, out);
        for device in owed {
            self.serve_line(aor, device, out);
        }
    }

    /// An ended call leaves no trace once no branch awaits its final response and no
    /// pushed device may still register for it or wait to be told.
    fn settle_ended(&mut self, call: CallId, out: &mut Vec<Effect>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let awaiting = |l: &Leg| l.state == LegState::Abandoned;
        if c.linger && !c.legs.iter().any(awaiting) {
            c.linger = false;
            out.push(Effect::DisarmTimer {
                timer: Timer::Linger(call),
            });
        }
        let busy = |l: &Leg| {
            matches!(
                l.state,
                LegState::Abandoned
                    | LegState::NoticeDue
                    | LegState::Telling
                    | LegState::Cancelling
                    | LegState::Dropped
            )
        };
        if c.legs.iter().any(busy) {
            return;
        }
        let aor = c.aor;
        self.calls.remove(&call);
        if let Some(calls) = self.by_aor.get_mut(&aor) {
            calls.retain(|&id| id != call);
            if calls.is_empty() {
                self.by_aor.remove(&aor);
            }
        }
    }
}
