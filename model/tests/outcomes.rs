//! The outcome table of the call-parking core, one test per row.
//!
//! A [`Driver`] plays the runtime around [`Core`]: it owns a fake clock, keeps the timers
//! the core arms and disarms, and fires them in time order. Every test asserts the exact
//! effects of each step, and that a finished call leaves neither a record nor a timer.

use std::collections::{BTreeMap, BTreeSet};

use pushpark_model::{
    AorId, AppReply, CallId, Callee, Config, Core, DeviceId, Effect, EndReason, Event, Flow,
    Millis, PushAnswer, Target, Timer, TokenUse,
};

const U1: AorId = AorId(1);
const U2: AorId = AorId(2);
const C1: CallId = CallId(1);
const C2: CallId = CallId(2);
const C3: CallId = CallId(3);
const D1: DeviceId = DeviceId(1);
const D2: DeviceId = DeviceId(2);
const D3: DeviceId = DeviceId(3);

/// No effect at all.
const NOTHING: [Effect; 0] = [];
/// No timer fired.
const NO_FIRING: [(Timer, Vec<Effect>); 0] = [];

/// The runtime around a core, with a fake clock.
struct Driver {
    core: Core,
    now: Millis,
    /// The timers armed by the core and not yet disarmed or fired, with their due time.
    timers: BTreeMap<Timer, Millis>,
    /// Every effect the core produced, in order.
    log: Vec<Effect>,
}

impl Driver {
    fn new() -> Self {
        Self::with_config(Config::default())
    }

    fn with_config(config: Config) -> Self {
        Self {
            core: Core::new(config),
            now: 0,
            timers: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    /// Feeds `event` at the current time and carries out the timer effects.
    fn send(&mut self, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        self.core.step(self.now, event, &mut out);
        for effect in &out {
            match *effect {
                Effect::ArmTimer { timer, at } => {
                    assert!(at >= self.now, "{timer:?} armed for {at}, in the past");
                    self.timers.insert(timer, at);
                }
                Effect::DisarmTimer { timer } => {
                    self.timers.remove(&timer);
                }
                _ => {}
            }
        }
        let armed: BTreeSet<Timer> = self.timers.keys().copied().collect();
        let needed: BTreeSet<Timer> = self.core.needed_timers().collect();
        assert_eq!(
            armed, needed,
            "armed timers are not the ones the core needs"
        );
        self.log.extend(out.iter().cloned());
        out
    }

    /// Moves the clock to `at`, firing the timers due before it in time order; those due
    /// exactly at `at` are left for [`fire_due`](Self::fire_due), so that an event can be
    /// fed at the same instant ahead of them.
    fn clock_to(&mut self, at: Millis) -> Vec<(Timer, Vec<Effect>)> {
        assert!(
            at >= self.now,
            "the clock goes back from {} to {at}",
            self.now
        );
        let fired = self.fire_while(|due| due < at);
        self.now = at;
        fired
    }

    /// Fires every timer due now, in time order.
    fn fire_due(&mut self) -> Vec<(Timer, Vec<Effect>)> {
        let now = self.now;
        self.fire_while(|due| due <= now)
    }

    /// Moves the clock to `at`, firing every timer due by then in time order.
    fn advance_to(&mut self, at: Millis) -> Vec<(Timer, Vec<Effect>)> {
        let mut fired = self.clock_to(at);
        fired.extend(self.fire_due());
        fired
    }

    fn fire_while(&mut self, due: impl Fn(Millis) -> bool) -> Vec<(Timer, Vec<Effect>)> {
        let mut fired = Vec::new();
        while let Some((at, timer)) = self
            .timers
            .iter()
            .map(|(&timer, &at)| (at, timer))
            .filter(|&(at, _)| due(at))
            .min()
        {
            self.timers.remove(&timer);
            self.now = self.now.max(at);
            let effects = self.send(Event::TimerFired(timer));
            fired.push((timer, effects));
        }
        fired
    }

    fn armed(&self) -> Vec<(Timer, Millis)> {
        self.timers
            .iter()
            .map(|(&timer, &at)| (timer, at))
            .collect()
    }

    /// Every final response given so far.
    fn responses(&self) -> Vec<Effect> {
        self.log
            .iter()
            .filter(|e| matches!(e, Effect::Respond { .. }))
            .cloned()
            .collect()
    }

    /// The core holds no call and no timer is armed.
    fn assert_idle(&self) {
        assert!(
            self.core.is_empty(),
            "the core still holds {} call(s)",
            self.core.len()
        );
        assert_eq!(self.core.calls_in_progress(), 0);
        assert!(
            self.timers.is_empty(),
            "timers still armed: {:?}",
            self.timers
        );
    }
}

fn arrival(call: CallId, aor: AorId, targets: &[Target]) -> Event {
    Event::CallArrived {
        call,
        aor,
        waking_limit: None,
        callee: Callee::Devices(targets.to_vec()),
    }
}

/// A device with a live flow and no push token.
fn online(device: DeviceId) -> Target {
    Target {
        device,
        flow: Flow::Connected,
        pushable: false,
    }
}

/// A device with a live flow and a push token.
fn online_pushable(device: DeviceId) -> Target {
    Target {
        device,
        flow: Flow::Connected,
        pushable: true,
    }
}

/// A device with a push token heard from on UDP at time 0: probably awake, so forwarded the
/// call at once and pushed beside it.
fn heard_on_udp(device: DeviceId) -> Target {
    Target {
        device,
        flow: Flow::Datagram {
            heard_at: 0,
            in_dialog: false,
        },
        pushable: true,
    }
}

/// A sleeping device with a push token.
fn sleeping(device: DeviceId) -> Target {
    Target {
        device,
        flow: Flow::Closed,
        pushable: true,
    }
}

fn registered(aor: AorId, device: DeviceId) -> Event {
    Event::DeviceRegistered { aor, device }
}

fn push_accepted(call: CallId, device: DeviceId) -> Event {
    Event::PushAccepted { call, device }
}

fn push_failed(call: CallId, device: DeviceId, permanent: bool) -> Event {
    Event::PushFailed {
        call,
        device,
        permanent,
    }
}

fn answered(call: CallId, device: DeviceId) -> Event {
    Event::BranchAnswered { call, device }
}

fn rejected(call: CallId, device: DeviceId, code: u16) -> Event {
    Event::BranchRejected { call, device, code }
}

fn respond(call: CallId, code: u16, relay: Option<DeviceId>) -> Effect {
    Effect::Respond { call, code, relay }
}

fn forward(call: CallId, device: DeviceId) -> Effect {
    Effect::Forward { call, device }
}

fn reroute(call: CallId, device: DeviceId) -> Effect {
    Effect::Reroute { call, device }
}

fn push(call: CallId, device: DeviceId) -> Effect {
    Effect::Push { call, device }
}

fn cancel_branch(call: CallId, device: DeviceId) -> Effect {
    Effect::CancelBranch { call, device }
}

fn told(call: CallId, device: DeviceId, reason: EndReason) -> Effect {
    Effect::TellEnded {
        call,
        device,
        reason,
    }
}

fn arm(timer: Timer, at: Millis) -> Effect {
    Effect::ArmTimer { timer, at }
}

fn disarm(timer: Timer) -> Effect {
    Effect::DisarmTimer { timer }
}

// Row 1.
#[test]
fn unknown_user_is_answered_like_a_known_user_without_a_phone_and_nothing_else() {
    let mut d = Driver::new();
    let effects = d.send(Event::CallArrived {
        call: C1,
        aor: U1,
        waking_limit: None,
        callee: Callee::Unknown,
    });
    assert_eq!(effects, [respond(C1, 480, None)]);
    d.assert_idle();
    let known = d.send(Event::CallArrived {
        call: C2,
        aor: U2,
        waking_limit: None,
        callee: Callee::Devices(Vec::new()),
    });
    assert_eq!(known, [respond(C2, 480, None)], "the same answer");
    d.assert_idle();
}

// Row 2.
#[test]
fn known_user_without_a_usable_device_gets_480_and_nothing_else() {
    let mut d = Driver::new();
    assert_eq!(d.send(arrival(C1, U1, &[])), [respond(C1, 480, None)]);
    d.assert_idle();

    let useless = |device| Target {
        device,
        flow: Flow::Closed,
        pushable: false,
    };
    let effects = d.send(arrival(C2, U1, &[useless(D1), useless(D2)]));
    assert_eq!(effects, [respond(C2, 480, None)]);
    d.assert_idle();
}

// Row 3.
#[test]
fn reachable_device_is_forwarded_at_once_and_its_answer_reaches_the_caller() {
    let mut d = Driver::new();
    // It has a push token too: being reachable, it must not be pushed.
    let effects = d.send(arrival(C1, U1, &[online_pushable(D1)]));
    assert_eq!(effects, [arm(Timer::Deadline(C1), 30_000), forward(C1, D1)]);
    assert_eq!(d.advance_to(2_000), NO_FIRING);

    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// Row 4.
#[test]
fn sleeping_device_is_pushed_then_forwarded_on_registering_and_its_answer_reaches_the_caller() {
    let mut d = Driver::new();
    d.clock_to(1_000);
    assert_eq!(
        d.send(arrival(C1, U1, &[sleeping(D1)])),
        [arm(Timer::Deadline(C1), 31_000), push(C1, D1)]
    );
    assert_eq!(d.armed(), [(Timer::Deadline(C1), 31_000)]);

    d.clock_to(1_500);
    assert_eq!(d.send(push_accepted(C1, D1)), NOTHING);
    d.clock_to(4_000);
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    assert_eq!(
        d.send(Event::BranchRang {
            call: C1,
            device: D1
        }),
        [Effect::RelayProvisional {
            call: C1,
            device: D1
        }]
    );
    assert_eq!(d.advance_to(6_000), NO_FIRING);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// Row 5.
#[test]
fn busy_from_the_only_device_reaches_the_caller_as_486() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1)]));
    assert_eq!(
        d.send(rejected(C1, D1, 486)),
        [respond(C1, 486, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// Row 5.
#[test]
fn decline_from_the_only_device_reaches_the_caller_as_603() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1)]));
    assert_eq!(
        d.send(rejected(C1, D1, 603)),
        [respond(C1, 603, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// Row 6.
#[test]
fn decline_from_one_device_is_relayed_at_once_and_cancels_the_other_branch() {
    let mut d = Driver::new();
    assert_eq!(
        d.send(arrival(C1, U1, &[online(D1), online(D2)])),
        [
            arm(Timer::Deadline(C1), 30_000),
            forward(C1, D1),
            forward(C1, D2)
        ]
    );
    assert_eq!(d.send(trying(C1, D1)), NOTHING);
    d.clock_to(3_000);
    assert_eq!(
        d.send(rejected(C1, D2, 603)),
        [
            respond(C1, 603, Some(D2)),
            disarm(Timer::Deadline(C1)),
            cancel_branch(C1, D1)
        ]
    );
    // The cancelled branch still owes its final response.
    assert_eq!(d.core.calls_in_progress(), 0);
    assert_eq!(d.core.len(), 1);

    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

// Row 6.
#[test]
fn device_woken_for_a_call_declined_elsewhere_is_told_so() {
    let mut d = Driver::new();
    assert_eq!(
        d.send(arrival(C1, U1, &[online(D1), sleeping(D2)])),
        [
            arm(Timer::Deadline(C1), 30_000),
            forward(C1, D1),
            push(C1, D2)
        ]
    );
    assert_eq!(d.send(push_accepted(C1, D2)), NOTHING);
    d.clock_to(3_000);
    assert_eq!(
        d.send(rejected(C1, D1, 603)),
        [
            respond(C1, 603, Some(D1)),
            disarm(Timer::Deadline(C1)),
            arm(Timer::Linger(C1), 33_000)
        ]
    );
    d.clock_to(10_000);
    assert_eq!(
        d.send(registered(U1, D2)),
        [
            told(C1, D2, EndReason::DeclinedElsewhere),
            disarm(Timer::Linger(C1))
        ]
    );
    // The notice rang and was cancelled: its branch ends with 487.
    assert_eq!(d.send(rejected(C1, D2, 487)), NOTHING);
    d.assert_idle();
}

// Row 7.
#[test]
fn busy_from_one_of_two_devices_waits_for_the_other_and_beats_its_480_or_408() {
    for other_code in [480, 408] {
        // Busy first, as the row says, and busy last: the order does not matter.
        for (busy, other) in [(D1, D2), (D2, D1)] {
            let mut d = Driver::new();
            d.send(arrival(C1, U1, &[online(D1), online(D2)]));
            assert_eq!(d.send(rejected(C1, busy, 486)), NOTHING);
            assert_eq!(d.core.calls_in_progress(), 1);
            assert_eq!(d.armed(), [(Timer::Deadline(C1), 30_000)]);
            assert_eq!(
                d.send(rejected(C1, other, other_code)),
                [respond(C1, 486, Some(busy)), disarm(Timer::Deadline(C1))],
                "486 from {busy} and {other_code} from {other}"
            );
            d.assert_idle();
        }
    }
}

// Row 7.
#[test]
fn lone_503_from_the_only_device_becomes_500_generated_here() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1)]));
    assert_eq!(
        d.send(rejected(C1, D1, 503)),
        [respond(C1, 500, None), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// Row 8.
#[test]
fn park_deadline_without_a_registration_gives_480_and_a_device_waking_within_the_window_is_told() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.clock_to(1_000);
    assert_eq!(d.send(push_accepted(C1, D1)), NOTHING);
    assert_eq!(d.advance_to(29_999), NO_FIRING);
    assert_eq!(
        d.advance_to(30_000),
        [(
            Timer::Deadline(C1),
            vec![respond(C1, 480, None), arm(Timer::Linger(C1), 60_000)]
        )]
    );
    assert_eq!(d.core.calls_in_progress(), 0);
    assert_eq!(d.armed(), [(Timer::Linger(C1), 60_000)]);

    assert_eq!(d.advance_to(59_999), NO_FIRING);
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::Unanswered),
            disarm(Timer::Linger(C1))
        ]
    );
    // The notice rang and was cancelled: its branch ends with 487.
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

// Row 8.
#[test]
fn device_waking_after_the_ended_notice_window_is_told_nothing() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    assert_eq!(
        d.advance_to(30_000),
        [(
            Timer::Deadline(C1),
            vec![respond(C1, 480, None), arm(Timer::Linger(C1), 60_000)]
        )]
    );
    assert_eq!(d.advance_to(60_000), [(Timer::Linger(C1), vec![])]);
    d.assert_idle();

    d.clock_to(60_001);
    assert_eq!(d.send(registered(U1, D1)), NOTHING);
    d.assert_idle();
}

// Row 9.
#[test]
fn deadline_during_a_ringing_branch_waits_for_its_answer_and_the_sleeper_is_told_later() {
    let mut d = Driver::new();
    assert_eq!(
        d.send(arrival(C1, U1, &[online(D1), sleeping(D2)])),
        [
            arm(Timer::Deadline(C1), 30_000),
            forward(C1, D1),
            push(C1, D2)
        ]
    );
    assert_eq!(d.send(push_accepted(C1, D2)), NOTHING);
    d.send(rang(C1, D1));
    assert_eq!(d.advance_to(30_000), [(Timer::Deadline(C1), vec![])]);
    assert_eq!(d.core.calls_in_progress(), 1);
    assert_eq!(d.responses(), NOTHING);

    d.clock_to(35_000);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), arm(Timer::Linger(C1), 65_000)]
    );
    d.clock_to(40_000);
    assert_eq!(
        d.send(registered(U1, D2)),
        [
            told(C1, D2, EndReason::AnsweredElsewhere),
            disarm(Timer::Linger(C1))
        ]
    );
    // The notice rang and was cancelled: its branch ends with 487.
    assert_eq!(d.send(rejected(C1, D2, 487)), NOTHING);
    d.assert_idle();
    assert_eq!(d.responses(), [respond(C1, 200, Some(D1))]);
}

// Row 10.
#[test]
fn caller_cancel_while_parked_gives_487_and_the_woken_device_is_told_not_called() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    d.clock_to(5_000);
    assert_eq!(
        d.send(Event::CallerCancelled { call: C1 }),
        [
            respond(C1, 487, None),
            disarm(Timer::Deadline(C1)),
            arm(Timer::Linger(C1), 35_000)
        ]
    );
    d.clock_to(6_000);
    let effects = d.send(registered(U1, D1));
    assert_eq!(
        effects,
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    assert!(!d.log.contains(&forward(C1, D1)));
    // The notice rang and was cancelled: its branch ends with 487.
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

// Graceful drain (§4).
#[test]
fn shutting_down_ends_every_call_with_503_and_refuses_new_ones() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    d.send(arrival(C2, U2, &[online(D2)]));
    d.send(trying(C2, D2));
    d.clock_to(5_000);
    assert_eq!(
        d.send(Event::ShuttingDown),
        [
            respond(C1, 503, None),
            disarm(Timer::Deadline(C1)),
            arm(Timer::Linger(C1), 35_000),
            respond(C2, 503, None),
            disarm(Timer::Deadline(C2)),
            cancel_branch(C2, D2)
        ]
    );
    assert_eq!(
        d.send(arrival(C3, U1, &[online(D1)])),
        [respond(C3, 503, None)],
        "no new call while shutting down"
    );
    // The phone woken for the parked call is told it is over, not rung.
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::Unanswered),
            disarm(Timer::Linger(C1))
        ]
    );
    assert_eq!(d.send(rejected(C2, D2, 487)), NOTHING);
    assert_eq!(
        d.send(Event::ShuttingDown),
        NOTHING,
        "twice changes nothing"
    );
}

// Row 11.
#[test]
fn caller_cancel_after_forwarding_cancels_the_branch_and_its_487_lets_the_call_go() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1)]));
    d.send(trying(C1, D1));
    d.clock_to(2_000);
    assert_eq!(
        d.send(Event::CallerCancelled { call: C1 }),
        [
            respond(C1, 487, None),
            disarm(Timer::Deadline(C1)),
            cancel_branch(C1, D1)
        ]
    );
    assert_eq!(d.core.len(), 1);
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

// Row 11.
#[test]
fn answer_that_races_the_caller_cancel_is_hung_up() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1)]));
    d.send(trying(C1, D1));
    d.send(Event::CallerCancelled { call: C1 });
    assert_eq!(
        d.send(answered(C1, D1)),
        [Effect::HangUpBranch {
            call: C1,
            device: D1
        }]
    );
    d.assert_idle();
    assert_eq!(d.responses(), [respond(C1, 487, None)]);
}

// Row 12.
#[test]
fn permanent_push_failure_forgets_the_token_and_the_call_goes_on_with_the_other_device() {
    let mut d = Driver::new();
    assert_eq!(
        d.send(arrival(C1, U1, &[sleeping(D1), sleeping(D2)])),
        [arm(Timer::Deadline(C1), 30_000), push(C1, D1), push(C1, D2)]
    );
    assert_eq!(
        d.send(push_failed(C1, D1, true)),
        [Effect::ForgetPushToken { device: D1 }]
    );
    assert_eq!(d.core.calls_in_progress(), 1);
    assert_eq!(d.armed(), [(Timer::Deadline(C1), 30_000)]);

    assert_eq!(d.send(push_accepted(C1, D2)), NOTHING);
    assert_eq!(d.send(registered(U1, D2)), [forward(C1, D2)]);
    assert_eq!(
        d.send(answered(C1, D2)),
        [respond(C1, 200, Some(D2)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// Row 12.
#[test]
fn permanent_push_failure_of_the_last_device_gives_480() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    assert_eq!(
        d.send(push_failed(C1, D1, true)),
        [
            Effect::ForgetPushToken { device: D1 },
            respond(C1, 480, None),
            disarm(Timer::Deadline(C1))
        ]
    );
    d.assert_idle();
}

// Row 13.
#[test]
fn transient_push_failures_are_retried_with_doubling_back_off_then_given_up() {
    let mut d = Driver::new();
    assert_eq!(d.core.config().push_attempts, 3);
    d.send(arrival(C1, U1, &[sleeping(D1)]));

    d.clock_to(100);
    assert_eq!(
        d.send(push_failed(C1, D1, false)),
        [arm(Timer::PushRetry(C1, D1), 600)]
    );
    assert_eq!(d.advance_to(599), NO_FIRING);
    assert_eq!(
        d.advance_to(600),
        [(Timer::PushRetry(C1, D1), vec![push(C1, D1)])]
    );

    d.clock_to(700);
    assert_eq!(
        d.send(push_failed(C1, D1, false)),
        [arm(Timer::PushRetry(C1, D1), 1_700)]
    );
    assert_eq!(d.advance_to(1_699), NO_FIRING);
    assert_eq!(
        d.advance_to(1_700),
        [(Timer::PushRetry(C1, D1), vec![push(C1, D1)])]
    );

    d.clock_to(1_800);
    assert_eq!(
        d.send(push_failed(C1, D1, false)),
        [respond(C1, 480, None), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
    assert!(!d
        .log
        .iter()
        .any(|e| matches!(e, Effect::ForgetPushToken { .. })));
}

// Row 13 (beyond the table: a retry must not outlive the wake-up it was for).
#[test]
fn device_waking_during_push_back_off_is_forwarded_and_not_pushed_again() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.clock_to(100);
    assert_eq!(
        d.send(push_failed(C1, D1, false)),
        [arm(Timer::PushRetry(C1, D1), 600)]
    );
    d.clock_to(300);
    assert_eq!(
        d.send(registered(U1, D1)),
        [disarm(Timer::PushRetry(C1, D1)), forward(C1, D1)]
    );
    assert_eq!(d.advance_to(1_000), NO_FIRING);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
    assert_eq!(
        d.log
            .iter()
            .filter(|e| matches!(e, Effect::Push { .. }))
            .count(),
        1
    );
}

// Row 13.
#[test]
fn push_retry_that_would_land_at_the_deadline_is_not_scheduled() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(arrival(C2, U2, &[sleeping(D2)]));

    // One millisecond earlier, the retry lands just before the deadline: scheduled.
    d.clock_to(29_499);
    assert_eq!(
        d.send(push_failed(C2, D2, false)),
        [arm(Timer::PushRetry(C2, D2), 29_999)]
    );
    // The retry would land exactly at the deadline: given up.
    d.clock_to(29_500);
    assert_eq!(
        d.send(push_failed(C1, D1, false)),
        [respond(C1, 480, None), disarm(Timer::Deadline(C1))]
    );

    assert_eq!(
        d.advance_to(30_000),
        [
            (Timer::PushRetry(C2, D2), vec![push(C2, D2)]),
            (
                Timer::Deadline(C2),
                vec![respond(C2, 480, None), arm(Timer::Linger(C2), 60_000)]
            )
        ]
    );
    assert_eq!(d.advance_to(60_000), [(Timer::Linger(C2), vec![])]);
    d.assert_idle();
}

// Row 14.
#[test]
fn refused_wake_up_register_of_the_only_pushed_device_gives_480() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    // A challenged REGISTER is not reported: the call stays parked meanwhile.
    assert_eq!(d.advance_to(10_000), NO_FIRING);
    assert_eq!(d.core.calls_in_progress(), 1);
    assert_eq!(d.armed(), [(Timer::Deadline(C1), 30_000)]);

    assert_eq!(
        d.send(Event::DeviceUnavailable {
            aor: U1,
            device: D1
        }),
        [respond(C1, 480, None), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// Row 15.
#[test]
fn call_beyond_the_per_callee_limit_gets_486() {
    let mut d = Driver::with_config(Config {
        max_calls_per_callee: 1,
        ..Config::default()
    });
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    assert_eq!(
        d.send(arrival(C2, U1, &[sleeping(D1)])),
        [respond(C2, 486, None)]
    );
    assert_eq!(d.core.len(), 1);
    assert_eq!(d.armed(), [(Timer::Deadline(C1), 30_000)]);

    // A call that has its final response no longer counts, even while it lingers.
    d.send(Event::CallerCancelled { call: C1 });
    assert_eq!(
        d.send(arrival(C3, U1, &[sleeping(D1)])),
        [arm(Timer::Deadline(C3), 30_000), push(C3, D1)]
    );
}

// Row 15.
#[test]
fn the_per_callee_limit_counts_calls_that_wake_a_device_not_calls_to_awake_ones() {
    let mut d = Driver::with_config(Config {
        max_calls_per_callee: 1,
        ..Config::default()
    });
    // Calls to a device on an open connection push nothing: never limited.
    for call in [C1, C2, C3] {
        assert_eq!(
            d.send(arrival(call, U1, &[online(D1)])),
            [arm(Timer::Deadline(call), 30_000), forward(call, D1)]
        );
    }
    // One call may wake the sleeping device; the next only rings the awake one.
    let mut d = Driver::with_config(Config {
        max_calls_per_callee: 1,
        ..Config::default()
    });
    assert_eq!(
        d.send(arrival(C1, U1, &[sleeping(D2)])),
        [arm(Timer::Deadline(C1), 30_000), push(C1, D2)]
    );
    assert_eq!(
        d.send(arrival(C2, U1, &[online(D1), sleeping(D2)])),
        [arm(Timer::Deadline(C2), 30_000), forward(C2, D1)]
    );
    // Once the woken device registered, its call waits for it no more.
    d.send(push_accepted(C1, D2));
    d.send(registered(U1, D2));
    assert_eq!(
        d.send(arrival(C3, U1, &[sleeping(D2)])),
        [arm(Timer::Deadline(C3), 30_000), push(C3, D2)]
    );
}

// Row 15.
#[test]
fn a_callee_s_own_limit_replaces_the_default() {
    let mut d = Driver::with_config(Config {
        max_calls_per_callee: 1,
        ..Config::default()
    });
    let with_limit = |call, limit| match arrival(call, U1, &[sleeping(D1)]) {
        Event::CallArrived {
            call, aor, callee, ..
        } => Event::CallArrived {
            call,
            aor,
            callee,
            waking_limit: Some(limit),
        },
        other => other,
    };
    for call in [C1, C2] {
        assert_eq!(
            d.send(with_limit(call, 2)),
            [arm(Timer::Deadline(call), 30_000), push(call, D1)]
        );
    }
    assert_eq!(d.send(with_limit(C3, 2)), [respond(C3, 486, None)]);
}

// Row 15.
#[test]
fn call_beyond_the_core_limit_gets_503() {
    let mut d = Driver::with_config(Config {
        max_calls: 1,
        ..Config::default()
    });
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    assert_eq!(
        d.send(arrival(C2, U2, &[sleeping(D2)])),
        [respond(C2, 503, None)]
    );
    assert_eq!(d.core.len(), 1);
    assert_eq!(d.armed(), [(Timer::Deadline(C1), 30_000)]);
}

// Row 16.
#[test]
fn one_registration_delivers_every_call_parked_for_the_device_in_arrival_order() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.clock_to(1_000);
    d.send(arrival(C2, U1, &[sleeping(D1)]));
    d.send(push_accepted(C2, D1));
    d.send(push_accepted(C1, D1));
    d.clock_to(2_000);
    assert_eq!(
        d.send(registered(U1, D1)),
        [forward(C1, D1), forward(C2, D1)]
    );
}

// Row 17.
#[test]
fn repeated_registration_does_not_forward_the_call_twice() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    // Not heard from yet: the same INVITE (a retransmission, never a second one) goes over
    // the flow of the latest REGISTER, in case the device slept through the first.
    assert_eq!(d.send(registered(U1, D1)), [reroute(C1, D1)]);
    d.send(Event::BranchRang {
        call: C1,
        device: D1,
    });
    d.clock_to(3_000);
    // Ringing, it still gets the same INVITE over the latest flow: one that holds it absorbs
    // it; an app started afresh there has lost it, and rings again.
    assert_eq!(d.send(registered(U1, D1)), [reroute(C1, D1)]);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    assert_eq!(d.send(registered(U1, D1)), NOTHING, "it has answered");
    d.assert_idle();
}

// Row 18 (a).
#[test]
fn register_at_the_deadline_instant_after_it_fired_is_told_the_call_ended() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    assert_eq!(d.clock_to(30_000), NO_FIRING);
    assert_eq!(
        d.fire_due(),
        [(
            Timer::Deadline(C1),
            vec![respond(C1, 480, None), arm(Timer::Linger(C1), 60_000)]
        )]
    );
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::Unanswered),
            disarm(Timer::Linger(C1))
        ]
    );
    // The notice rang and was cancelled: its branch ends with 487.
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
    assert_eq!(d.responses(), [respond(C1, 480, None)]);
}

// Row 18 (b).
#[test]
fn register_at_the_deadline_instant_before_it_fired_gets_the_invite_then_the_end() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    assert_eq!(d.clock_to(30_000), NO_FIRING);
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    // Not ringing at the deadline: the call ends, and the device, awake on the flow it
    // just registered, is told at once.
    assert_eq!(
        d.fire_due(),
        [(
            Timer::Deadline(C1),
            vec![
                respond(C1, 480, None),
                Effect::DropBranch {
                    call: C1,
                    device: D1
                },
                told(C1, D1, EndReason::Unanswered)
            ]
        )]
    );
    d.clock_to(31_000);
    assert_eq!(d.send(trying(C1, D1)), NOTHING);
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
    assert_eq!(d.responses(), [respond(C1, 480, None)]);
}

// Row 19.
#[test]
fn undeliverable_forward_to_a_pushable_device_falls_back_to_a_push() {
    let mut d = Driver::new();
    assert_eq!(
        d.send(arrival(C1, U1, &[online_pushable(D1)])),
        [arm(Timer::Deadline(C1), 30_000), forward(C1, D1)]
    );
    d.clock_to(500);
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        [push(C1, D1)]
    );
    assert_eq!(d.send(push_accepted(C1, D1)), NOTHING);
    d.clock_to(3_000);
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// Row 19.
#[test]
fn undeliverable_forward_to_the_only_unpushable_device_gives_480() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1)]));
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        [respond(C1, 480, None), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// Row 20.
#[test]
fn second_phone_registering_while_the_call_is_parked_also_gets_it() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    d.clock_to(2_000);
    assert_eq!(d.send(registered(U1, D3)), [forward(C1, D3)]);
    d.clock_to(4_000);
    assert_eq!(
        d.send(answered(C1, D3)),
        [
            respond(C1, 200, Some(D3)),
            disarm(Timer::Deadline(C1)),
            arm(Timer::Linger(C1), 34_000)
        ]
    );
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::AnsweredElsewhere),
            disarm(Timer::Linger(C1))
        ]
    );
    // The notice rang and was cancelled: its branch ends with 487.
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

// Row 21.
#[test]
fn stale_events_have_no_effect() {
    let mut d = Driver::new();
    assert_eq!(d.send(push_accepted(CallId(9), D1)), NOTHING);
    d.assert_idle();

    // A call still held (D2 may yet register) but over for the caller.
    d.send(arrival(C1, U1, &[online(D1), sleeping(D2)]));
    assert_eq!(
        d.send(answered(C1, D1)),
        [
            respond(C1, 200, Some(D1)),
            disarm(Timer::Deadline(C1)),
            arm(Timer::Linger(C1), 30_000)
        ]
    );
    assert_eq!(d.send(answered(C1, D1)), NOTHING);
    assert_eq!(d.send(Event::TimerFired(Timer::Deadline(C1))), NOTHING);
    assert_eq!(d.send(rejected(C1, D1, 486)), NOTHING);
    assert_eq!(d.core.len(), 1);

    // A call gone altogether.
    assert_eq!(
        d.send(Event::DeviceUnavailable {
            aor: U1,
            device: D2
        }),
        [disarm(Timer::Linger(C1))]
    );
    d.assert_idle();
    for event in [
        answered(C1, D1),
        Event::TimerFired(Timer::Deadline(C1)),
        Event::TimerFired(Timer::Linger(C1)),
        Event::TimerFired(Timer::PushRetry(C1, D2)),
        push_accepted(C1, D2),
        registered(U1, D2),
    ] {
        assert_eq!(d.send(event.clone()), NOTHING, "{event:?}");
    }
    d.assert_idle();
}

/// A device on UDP with a push token, last heard from at `heard_at`.
fn on_udp(device: DeviceId, heard_at: Millis, in_dialog: bool) -> Target {
    Target {
        device,
        flow: Flow::Datagram {
            heard_at,
            in_dialog,
        },
        pushable: true,
    }
}

fn rang(call: CallId, device: DeviceId) -> Event {
    Event::BranchRang { call, device }
}

/// The device's 100 Trying: it holds the INVITE.
fn trying(call: CallId, device: DeviceId) -> Event {
    Event::BranchTrying { call, device }
}

// Race 1 of the real phones: a woken device gets its live call first; the notice of the
// call that ended while it slept waits until the live call is settled.
#[test]
fn woken_device_gets_the_live_call_before_the_notice_of_an_ended_one() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(Event::CallerCancelled { call: C1 });
    d.clock_to(1_000);
    d.send(arrival(C2, U1, &[sleeping(D1)]));
    assert_eq!(
        d.send(registered(U1, D1)),
        [forward(C2, D1), disarm(Timer::Linger(C1))],
        "the live call only; the device is owed its notice, whatever the window"
    );
    assert_eq!(
        d.send(rang(C2, D1)),
        [Effect::RelayProvisional {
            call: C2,
            device: D1
        }]
    );
    // Answered: the line is free of live INVITEs, so the notice goes now.
    assert_eq!(
        d.send(answered(C2, D1)),
        [
            respond(C2, 200, Some(D1)),
            disarm(Timer::Deadline(C2)),
            told(C1, D1, EndReason::CallerCancelled)
        ]
    );
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

// Race 1, the other order: a live call for a device on which a notice rings waits for the
// notice to end, so that a single-line phone does not answer it busy.
#[test]
fn live_call_for_a_device_hearing_a_notice_waits_for_the_notice_to_end() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(Event::CallerCancelled { call: C1 });
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    d.clock_to(500);
    assert_eq!(
        d.send(arrival(C2, U1, &[online(D1)])),
        [arm(Timer::Deadline(C2), 30_500)]
    );
    assert_eq!(
        d.send(rang(C1, D1)),
        NOTHING,
        "a notice's ringing is not relayed"
    );
    assert_eq!(d.send(rejected(C1, D1, 487)), [forward(C2, D1)]);
    assert_eq!(
        d.send(rejected(C2, D1, 486)),
        [respond(C2, 486, Some(D1)), disarm(Timer::Deadline(C2))]
    );
    d.assert_idle();
}

// Race 2: a device heard from on UDP within the awake window, or in a dialog through us,
// is forwarded the call at once, with a push in parallel; one silent for longer is pushed.
#[test]
fn device_awake_on_udp_is_forwarded_at_once_with_a_push_beside() {
    let mut d = Driver::new();
    d.clock_to(200_000);
    let window = Config::default().awake_window;
    assert_eq!(
        d.send(arrival(C1, U1, &[on_udp(D1, 200_000 - window, false)])),
        [
            arm(Timer::Deadline(C1), 230_000),
            push(C1, D1),
            forward(C1, D1)
        ]
    );
    assert_eq!(
        d.send(arrival(C2, U2, &[on_udp(D2, 0, true)])),
        [
            arm(Timer::Deadline(C2), 230_000),
            push(C2, D2),
            forward(C2, D2)
        ],
        "in a call: awake, however long ago it was heard"
    );
    assert_eq!(
        d.send(arrival(C3, U2, &[on_udp(D3, 200_000 - window - 1, false)])),
        [arm(Timer::Deadline(C3), 230_000), push(C3, D3)],
        "silent for longer than the window: asleep"
    );
    let unpushable = Target {
        pushable: false,
        ..on_udp(D1, 0, false)
    };
    assert_eq!(
        d.send(arrival(CallId(4), AorId(3), &[unpushable])),
        [
            arm(Timer::Deadline(CallId(4)), 230_000),
            forward(CallId(4), D1)
        ],
        "no token: the flow is all there is"
    );
    // The awake device answers busy (it is in a call): the caller hears it at once.
    d.send(push_accepted(C2, D2));
    assert_eq!(
        d.send(rejected(C2, D2, 486)),
        [respond(C2, 486, Some(D2)), disarm(Timer::Deadline(C2))]
    );
}

// Race 2, the device had fallen asleep: the push wakes it, and its REGISTER brings the same
// INVITE over the new flow; a dead flow after a failed push pushes again at once.
#[test]
fn device_asleep_after_all_gets_the_invite_rerouted_or_pushed_again() {
    let mut d = Driver::new();
    d.clock_to(10_000);
    d.send(arrival(C1, U1, &[on_udp(D1, 9_000, false)]));
    d.send(push_accepted(C1, D1));
    assert_eq!(d.send(registered(U1, D1)), [reroute(C1, D1)]);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();

    d.send(arrival(C2, U1, &[on_udp(D1, 9_000, false)]));
    assert_eq!(d.send(push_failed(C2, D1, false)), NOTHING);
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C2,
            device: D1
        }),
        [push(C2, D1)],
        "no push on its way: the dead flow falls back to one at once"
    );
    d.send(push_accepted(C2, D1));
    assert_eq!(d.send(registered(U1, D1)), [forward(C2, D1)]);
}

// A device woken by the push for a call cancelled while it slept through the INVITE: that
// INVITE is stopped, never cancelled (no CANCEL may follow an INVITE without a provisional)
// and never retransmitted to the woken phone; the device is told by a notice instead.
#[test]
fn invite_slept_through_is_stopped_when_the_call_ends_and_the_woken_device_told() {
    let mut d = Driver::new();
    d.clock_to(10_000);
    d.send(arrival(C1, U1, &[on_udp(D1, 9_000, false)]));
    d.send(push_accepted(C1, D1));
    assert_eq!(
        d.send(Event::CallerCancelled { call: C1 }),
        [
            respond(C1, 487, None),
            disarm(Timer::Deadline(C1)),
            Effect::DropBranch {
                call: C1,
                device: D1
            },
        ]
    );
    // Timer B: it never arrived. The push may still wake the device.
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        [arm(Timer::Linger(C1), 40_000)]
    );
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

// A device taken to be awake on UDP that stays silent through the whole park (it slept
// through the INVITE and its push never woke it) does not hold the caller past the
// deadline; one that rang does.
#[test]
fn silent_branch_to_a_device_only_probably_awake_ends_at_the_deadline() {
    let mut d = Driver::new();
    d.clock_to(10_000);
    d.send(arrival(C1, U1, &[on_udp(D1, 9_000, false)]));
    d.send(push_accepted(C1, D1));
    assert_eq!(
        d.advance_to(40_000),
        [(
            Timer::Deadline(C1),
            vec![
                respond(C1, 480, None),
                Effect::DropBranch {
                    call: C1,
                    device: D1
                },
            ]
        )]
    );
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        [arm(Timer::Linger(C1), 70_000)]
    );

    d.send(arrival(C2, U1, &[on_udp(D2, 39_000, false)]));
    d.send(rang(C2, D2));
    assert_eq!(
        d.advance_to(70_000),
        [(Timer::Deadline(C2), vec![]), (Timer::Linger(C1), vec![])]
    );
    assert_eq!(
        d.send(answered(C2, D2)),
        [respond(C2, 200, Some(D2))],
        "it rang: the call waited for its answer"
    );
}

// Beyond the table: behaviour the tests above left unpinned, found by `cargo mutants` over
// model/src/core.rs (see model/tests/mutants.rs). One test per decision.

#[test]
fn codes_the_caller_can_act_on_beat_busy_from_another_device() {
    for code in [401, 407, 415, 420, 484] {
        let mut d = Driver::new();
        d.send(arrival(C1, U1, &[online(D1), online(D2)]));
        assert_eq!(d.send(rejected(C1, D1, 486)), NOTHING);
        assert_eq!(
            d.send(rejected(C1, D2, code)),
            [respond(C1, code, Some(D2)), disarm(Timer::Deadline(C1))],
            "{code} against 486"
        );
        d.assert_idle();
    }
}

#[test]
fn dead_flow_after_a_permanent_push_failure_is_not_pushed_again() {
    let mut d = Driver::new();
    d.clock_to(10_000);
    assert_eq!(
        d.send(arrival(C1, U1, &[on_udp(D1, 9_000, false)])),
        [
            arm(Timer::Deadline(C1), 40_000),
            push(C1, D1),
            forward(C1, D1)
        ]
    );
    assert_eq!(
        d.send(push_failed(C1, D1, true)),
        [Effect::ForgetPushToken { device: D1 }]
    );
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        [respond(C1, 480, None), disarm(Timer::Deadline(C1))],
        "the token is dead: no fallback push"
    );
    d.assert_idle();
}

#[test]
fn dead_flow_after_the_last_push_attempt_failed_is_not_pushed_again() {
    let mut d = Driver::with_config(Config {
        push_attempts: 1,
        ..Config::default()
    });
    d.clock_to(10_000);
    d.send(arrival(C1, U1, &[on_udp(D1, 9_000, false)]));
    assert_eq!(d.send(push_failed(C1, D1, false)), NOTHING);
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        [respond(C1, 480, None), disarm(Timer::Deadline(C1))],
        "its one attempt is spent"
    );
    d.assert_idle();
}

#[test]
fn fallback_push_after_a_dead_flow_counts_as_an_attempt() {
    let mut d = Driver::with_config(Config {
        push_attempts: 1,
        ..Config::default()
    });
    d.send(arrival(C1, U1, &[online_pushable(D1)]));
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        [push(C1, D1)]
    );
    d.clock_to(100);
    assert_eq!(
        d.send(push_failed(C1, D1, false)),
        [respond(C1, 480, None), disarm(Timer::Deadline(C1))],
        "no retry: the fallback push was the one attempt"
    );
    d.assert_idle();
}

#[test]
fn pushed_device_whose_invite_is_lost_waits_parked_for_its_push_without_a_second_one() {
    let mut d = Driver::new();
    d.clock_to(10_000);
    d.send(arrival(C1, U1, &[on_udp(D1, 9_000, false)]));
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        NOTHING,
        "its push is still on its way"
    );
    assert_eq!(d.core.calls_in_progress(), 1);
    assert_eq!(d.send(push_accepted(C1, D1)), NOTHING);
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

#[test]
fn cancelled_branch_whose_flow_dies_tells_a_device_pushed_for_the_call_when_it_registers() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    assert_eq!(d.send(trying(C1, D1)), NOTHING);
    d.clock_to(10_000);
    assert_eq!(
        d.send(Event::CallerCancelled { call: C1 }),
        [
            respond(C1, 487, None),
            disarm(Timer::Deadline(C1)),
            cancel_branch(C1, D1)
        ]
    );
    d.clock_to(12_000);
    let unreachable = Event::BranchUnreachable {
        call: C1,
        device: D1,
    };
    assert_eq!(
        d.send(unreachable.clone()),
        [told(C1, D1, EndReason::CallerCancelled)],
        "the CANCEL may not have reached it: it registered during the call, so it is told"
    );
    assert_eq!(
        d.send(unreachable),
        [arm(Timer::Linger(C1), 42_000)],
        "its flow is gone: the push may wake it again"
    );
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

#[test]
fn cancelled_branch_whose_flow_dies_is_told_later_only_if_it_held_the_invite_or_was_woken() {
    let unreachable = Event::BranchUnreachable {
        call: C1,
        device: D1,
    };
    let cancelled = [
        respond(C1, 487, None),
        disarm(Timer::Deadline(C1)),
        cancel_branch(C1, D1),
    ];
    // Never pushed, but it held the INVITE: its app may ring on and come back on a new flow,
    // so it is told if it registers inside the notice window.
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1)]));
    d.send(trying(C1, D1));
    assert_eq!(d.send(Event::CallerCancelled { call: C1 }), cancelled);
    assert_eq!(
        d.send(unreachable.clone()),
        [arm(Timer::Linger(C1), 30_000)]
    );
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();

    // Pushed, but the push failed after the device had registered on its own: it is told
    // once, over the flow it registered on; if that is gone, nothing more.
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    assert_eq!(d.send(push_failed(C1, D1, false)), NOTHING);
    d.send(trying(C1, D1));
    assert_eq!(d.send(Event::CallerCancelled { call: C1 }), cancelled);
    assert_eq!(
        d.send(unreachable.clone()),
        [told(C1, D1, EndReason::CallerCancelled)]
    );
    assert_eq!(d.send(unreachable), NOTHING);
    d.assert_idle();
}

#[test]
fn notice_that_never_arrives_is_owed_until_the_next_register_or_the_window_ends() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    d.send(Event::CallerCancelled { call: C1 });
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    let lost = Event::BranchUnreachable {
        call: C1,
        device: D1,
    };
    assert_eq!(d.send(lost.clone()), [arm(Timer::Linger(C1), 30_000)]);
    d.clock_to(10_000);
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    assert_eq!(d.send(lost), [arm(Timer::Linger(C1), 40_000)]);
    assert_eq!(d.advance_to(40_000), [(Timer::Linger(C1), vec![])]);
    d.assert_idle();
}

#[test]
fn device_unavailable_during_push_back_off_disarms_the_retry_and_gives_480() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.clock_to(100);
    assert_eq!(
        d.send(push_failed(C1, D1, false)),
        [arm(Timer::PushRetry(C1, D1), 600)]
    );
    assert_eq!(
        d.send(Event::DeviceUnavailable {
            aor: U1,
            device: D1
        }),
        [
            disarm(Timer::PushRetry(C1, D1)),
            respond(C1, 480, None),
            disarm(Timer::Deadline(C1))
        ]
    );
    d.assert_idle();
}

#[test]
fn push_failing_after_the_call_ended_lets_the_call_go_before_the_window_closes() {
    for permanent in [false, true] {
        let mut d = Driver::new();
        d.send(arrival(C1, U1, &[sleeping(D1)]));
        d.clock_to(1_000);
        assert_eq!(
            d.send(Event::CallerCancelled { call: C1 }),
            [
                respond(C1, 487, None),
                disarm(Timer::Deadline(C1)),
                arm(Timer::Linger(C1), 31_000)
            ]
        );
        d.clock_to(2_000);
        let forget = permanent.then_some(Effect::ForgetPushToken { device: D1 });
        let expected: Vec<Effect> = forget
            .into_iter()
            .chain([disarm(Timer::Linger(C1))])
            .collect();
        assert_eq!(
            d.send(push_failed(C1, D1, permanent)),
            expected,
            "permanent: {permanent}"
        );
        d.assert_idle();
    }
}

#[test]
fn late_push_retry_timer_after_the_device_woke_pushes_nothing() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.clock_to(100);
    d.send(push_failed(C1, D1, false));
    d.clock_to(300);
    assert_eq!(
        d.send(registered(U1, D1)),
        [disarm(Timer::PushRetry(C1, D1)), forward(C1, D1)]
    );
    // The runtime lost the race to disarm it: the timer fires all the same.
    d.clock_to(600);
    assert_eq!(d.send(Event::TimerFired(Timer::PushRetry(C1, D1))), NOTHING);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

#[test]
fn call_ending_while_its_invite_waits_for_a_notice_is_told_only_to_a_device_pushed_for_it() {
    // A notice of C1 rings on D1.
    let notice_rings = || {
        let mut d = Driver::new();
        d.clock_to(10_000);
        d.send(arrival(C1, U1, &[sleeping(D1)]));
        d.send(Event::CallerCancelled { call: C1 });
        assert_eq!(
            d.send(registered(U1, D1)),
            [
                told(C1, D1, EndReason::CallerCancelled),
                disarm(Timer::Linger(C1))
            ]
        );
        d
    };
    let cancelled = [respond(C2, 487, None), disarm(Timer::Deadline(C2))];

    // Reachable and never pushed for C2: nothing to tell once C1's notice is over.
    let mut d = notice_rings();
    assert_eq!(
        d.send(arrival(C2, U1, &[online(D1)])),
        [arm(Timer::Deadline(C2), 40_000)]
    );
    assert_eq!(d.send(Event::CallerCancelled { call: C2 }), cancelled);
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();

    // Probably awake on UDP, so pushed for C2 as well: told of C2 once C1's notice is over.
    let mut d = notice_rings();
    assert_eq!(
        d.send(arrival(C2, U1, &[on_udp(D1, 10_000, false)])),
        [arm(Timer::Deadline(C2), 40_000), push(C2, D1)]
    );
    assert_eq!(d.send(Event::CallerCancelled { call: C2 }), cancelled);
    assert_eq!(
        d.send(rejected(C1, D1, 487)),
        [told(C2, D1, EndReason::CallerCancelled)]
    );
    assert_eq!(d.send(rejected(C2, D1, 487)), NOTHING);
    d.assert_idle();
}

#[test]
fn awake_window_of_zero_trusts_only_dialogs() {
    let mut d = Driver::with_config(Config {
        awake_window: 0,
        ..Config::default()
    });
    d.clock_to(10_000);
    assert_eq!(
        d.send(arrival(C1, U1, &[on_udp(D1, 10_000, false)])),
        [arm(Timer::Deadline(C1), 40_000), push(C1, D1)],
        "heard from this very instant, but not in a dialog: asleep"
    );
    assert_eq!(
        d.send(arrival(C2, U2, &[on_udp(D2, 0, true)])),
        [
            arm(Timer::Deadline(C2), 40_000),
            push(C2, D2),
            forward(C2, D2)
        ]
    );
}

#[test]
fn config_is_the_one_the_core_was_made_with() {
    let config = Config {
        park_timeout: 1,
        ended_notice_window: 2,
        push_attempts: 4,
        push_retry_base: 5,
        awake_window: 6,
        max_calls: 7,
        max_calls_per_callee: 8,
    };
    assert_eq!(Core::new(config.clone()).config(), &config);
}

#[test]
fn core_holds_a_call_from_its_arrival_until_it_leaves_no_trace() {
    let mut d = Driver::new();
    assert!(!d.core.holds(C1));
    d.send(arrival(C1, U1, &[online(D1), sleeping(D2)]));
    assert!(d.core.holds(C1));
    d.send(answered(C1, D1));
    assert!(d.core.holds(C1), "D2 may still register and be told");
    assert!(!d.core.holds(C2));
    d.advance_to(30_000);
    assert!(!d.core.holds(C1));
    d.assert_idle();
}

#[test]
fn len_counts_calls_in_progress_and_ended_calls_still_held() {
    let mut d = Driver::new();
    assert_eq!(d.core.len(), 0);
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(arrival(C2, U2, &[sleeping(D2)]));
    d.send(Event::CallerCancelled { call: C2 });
    assert_eq!(d.core.len(), 2);
    assert_eq!(d.core.calls_in_progress(), 1);
    assert!(!d.core.is_empty());
}

#[test]
fn needs_timer_holds_for_exactly_the_timers_the_core_needs() {
    let mut d = Driver::new();
    let timers = [
        Timer::Deadline(C1),
        Timer::PushRetry(C1, D1),
        Timer::PushRetry(C1, D2),
        Timer::Linger(C1),
    ];
    let needed_now = |d: &Driver| -> Vec<Timer> {
        timers
            .iter()
            .copied()
            .filter(|&t| d.core.needs_timer(t))
            .collect()
    };
    assert_eq!(needed_now(&d), []);
    d.send(arrival(C1, U1, &[sleeping(D1), sleeping(D2)]));
    assert_eq!(needed_now(&d), [Timer::Deadline(C1)]);
    d.send(push_accepted(C1, D2));
    d.clock_to(100);
    d.send(push_failed(C1, D1, false));
    assert_eq!(
        needed_now(&d),
        [Timer::Deadline(C1), Timer::PushRetry(C1, D1)]
    );
    d.clock_to(29_900);
    d.send(push_failed(C1, D1, false));
    d.advance_to(30_000);
    assert_eq!(needed_now(&d), [Timer::Linger(C1)]);
    d.advance_to(60_000);
    assert_eq!(needed_now(&d), []);
    d.assert_idle();
}

#[test]
fn live_call_queued_behind_a_notice_ends_at_its_deadline_like_any_call_that_never_rang() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(Event::CallerCancelled { call: C1 });
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    d.clock_to(500);
    assert_eq!(
        d.send(arrival(C2, U1, &[online(D1)])),
        [arm(Timer::Deadline(C2), 30_500)]
    );
    assert_eq!(
        d.advance_to(30_500),
        [(Timer::Deadline(C2), vec![respond(C2, 480, None)])]
    );
    d.clock_to(31_000);
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

#[test]
fn branch_to_a_device_probably_awake_keeps_the_call_while_parking() {
    let mut d = Driver::new();
    d.clock_to(10_000);
    assert_eq!(
        d.send(arrival(C1, U1, &[on_udp(D1, 9_000, false), sleeping(D2)])),
        [
            arm(Timer::Deadline(C1), 40_000),
            push(C1, D1),
            forward(C1, D1),
            push(C1, D2)
        ]
    );
    assert_eq!(
        d.send(push_failed(C1, D2, true)),
        [Effect::ForgetPushToken { device: D2 }],
        "D1 may still answer"
    );
    assert_eq!(d.core.calls_in_progress(), 1);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

/// D1 holds C1's INVITE (it sent 100 Trying) and has been sent C2's, unanswered yet; C1's
/// caller cancels, so an ended call's INVITE is in progress on D1; then D1 registers again.
fn registered_while_a_cancelled_branch_rings() -> Driver {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1)]));
    assert_eq!(d.send(trying(C1, D1)), NOTHING);
    assert_eq!(
        d.send(arrival(C2, U1, &[online(D1)])),
        [arm(Timer::Deadline(C2), 30_000), forward(C2, D1)]
    );
    assert_eq!(
        d.send(Event::CallerCancelled { call: C1 }),
        [
            respond(C1, 487, None),
            disarm(Timer::Deadline(C1)),
            cancel_branch(C1, D1)
        ]
    );
    assert_eq!(
        d.send(registered(U1, D1)),
        [reroute(C1, D1)],
        "C1's CANCEL follows it to the flow it registered; C2's INVITE may have been slept \
         through, but waits while C1's still rings"
    );
    d
}

#[test]
fn reroute_for_a_device_registering_while_an_ended_calls_invite_rings_waits_until_it_is_over() {
    let mut d = registered_while_a_cancelled_branch_rings();
    assert_eq!(d.send(rejected(C1, D1, 487)), [reroute(C2, D1)]);
    assert_eq!(
        d.send(answered(C2, D1)),
        [respond(C2, 200, Some(D1)), disarm(Timer::Deadline(C2))]
    );
    d.assert_idle();
}

#[test]
fn invite_lost_while_its_reroute_waits_goes_afresh_once_the_ended_calls_invite_is_over() {
    let mut d = registered_while_a_cancelled_branch_rings();
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C2,
            device: D1
        }),
        NOTHING,
        "the device registered since: it is there, and gets the INVITE anew"
    );
    assert_eq!(d.core.calls_in_progress(), 1);
    assert_eq!(d.send(rejected(C1, D1, 487)), [forward(C2, D1)]);
    assert_eq!(
        d.send(answered(C2, D1)),
        [respond(C2, 200, Some(D1)), disarm(Timer::Deadline(C2))]
    );
    d.assert_idle();
}

// §7: binding-refresh pushes. The core decides which binding about to expire gets one: only
// through a token that may carry any push, and only while no push for a call wakes the device
// anyway. One test per branch of the rule.

fn expiring(device: DeviceId, token: TokenUse) -> Event {
    Event::BindingExpiring {
        aor: U1,
        device,
        token,
    }
}

fn refresh(device: DeviceId) -> Effect {
    Effect::RefreshPush { device }
}

#[test]
fn expiring_binding_gets_a_refresh_push_through_a_token_for_any_push_and_never_a_calls_only_one() {
    let mut d = Driver::new();
    assert_eq!(d.send(expiring(D1, TokenUse::Any)), [refresh(D1)]);
    assert_eq!(d.send(expiring(D1, TokenUse::CallsOnly)), NOTHING);
    d.assert_idle();

    // A calls-only token gets none while the device is in a call either: only that call's
    // push, which it reports as the call.
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(registered(U1, D1));
    assert_eq!(d.send(push_accepted(C1, D1)), NOTHING);
    assert_eq!(d.send(expiring(D1, TokenUse::CallsOnly)), NOTHING);
    assert_eq!(
        d.send(expiring(D1, TokenUse::Any)),
        [refresh(D1)],
        "awake in the call, no push of it outstanding"
    );
}

#[test]
fn no_refresh_push_while_the_device_is_parked_for_a_call_whose_push_wakes_it() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1), online(D2)]));
    assert_eq!(
        d.send(expiring(D1, TokenUse::Any)),
        NOTHING,
        "the call's push is on its way"
    );
    assert_eq!(d.send(push_accepted(C1, D1)), NOTHING);
    assert_eq!(
        d.send(expiring(D1, TokenUse::Any)),
        NOTHING,
        "the call's push was accepted: its REGISTER is awaited"
    );
    assert_eq!(
        d.send(expiring(D2, TokenUse::Any)),
        [refresh(D2)],
        "another device, forwarded the call and never pushed, is not held back"
    );
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    assert_eq!(
        d.send(expiring(D1, TokenUse::Any)),
        [refresh(D1)],
        "it woke"
    );
}

#[test]
fn no_refresh_push_while_a_push_for_a_call_waits_out_its_back_off() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.clock_to(100);
    assert_eq!(
        d.send(push_failed(C1, D1, false)),
        [arm(Timer::PushRetry(C1, D1), 600)]
    );
    assert_eq!(d.send(expiring(D1, TokenUse::Any)), NOTHING);
    assert_eq!(
        d.advance_to(600),
        [(Timer::PushRetry(C1, D1), vec![push(C1, D1)])]
    );
    assert_eq!(d.send(expiring(D1, TokenUse::Any)), NOTHING);
}

#[test]
fn no_refresh_push_while_an_ended_call_waits_for_the_device_its_push_woke() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    assert_eq!(d.send(push_accepted(C1, D1)), NOTHING);
    d.send(Event::CallerCancelled { call: C1 });
    assert_eq!(d.armed(), [(Timer::Linger(C1), 30_000)]);
    assert_eq!(
        d.send(expiring(D1, TokenUse::Any)),
        NOTHING,
        "it may still register and be told"
    );
    assert_eq!(d.advance_to(30_000), [(Timer::Linger(C1), vec![])]);
    d.assert_idle();
    assert_eq!(d.send(expiring(D1, TokenUse::Any)), [refresh(D1)]);
}

#[test]
fn no_refresh_push_while_a_push_for_a_call_is_on_its_way_to_a_device_forwarded_the_call() {
    let mut d = Driver::new();
    d.clock_to(10_000);
    assert_eq!(
        d.send(arrival(C1, U1, &[on_udp(D1, 9_000, false)])),
        [
            arm(Timer::Deadline(C1), 40_000),
            push(C1, D1),
            forward(C1, D1)
        ]
    );
    assert_eq!(d.send(expiring(D1, TokenUse::Any)), NOTHING);
    assert_eq!(d.send(push_accepted(C1, D1)), NOTHING);
    assert_eq!(
        d.send(expiring(D1, TokenUse::Any)),
        [refresh(D1)],
        "probably awake and forwarded the call; the push no longer on its way"
    );
}

// A device that held the INVITE when its flow died may still be ringing, its app alive on
// a new flow: a fallback push that fails does not give it up, and it gets the call when it
// comes back.
#[test]
fn device_that_held_the_invite_is_not_given_up_when_its_fallback_push_fails() {
    let mut d = Driver::new();
    assert_eq!(
        d.send(arrival(C1, U1, &[online_pushable(D1)])),
        [arm(Timer::Deadline(C1), 30_000), forward(C1, D1)]
    );
    assert_eq!(d.send(trying(C1, D1)), NOTHING);
    let lost = Event::BranchUnreachable {
        call: C1,
        device: D1,
    };
    assert_eq!(d.send(lost), [push(C1, D1)]);
    assert_eq!(
        d.send(push_failed(C1, D1, true)),
        [Effect::ForgetPushToken { device: D1 }]
    );
    assert_eq!(d.core.calls_in_progress(), 1, "it may come back on its own");
    d.clock_to(2_000);
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    assert_eq!(
        d.send(answered(C1, D1)),
        [respond(C1, 200, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

// A notice that never arrives says the device is gone again: its other notices are not
// sent after it, but wait for its next REGISTER, inside their own notice windows.
#[test]
fn a_notice_that_never_arrives_holds_the_devices_other_notices_until_it_registers() {
    let mut d = Driver::new();
    for call in [C1, C2] {
        d.send(arrival(call, U1, &[sleeping(D1)]));
        d.send(push_accepted(call, D1));
        d.send(Event::CallerCancelled { call });
    }
    let told_first = d.send(registered(U1, D1));
    assert_eq!(
        told_first
            .iter()
            .filter(|e| matches!(e, Effect::TellEnded { .. }))
            .count(),
        1,
        "one notice at a time: {told_first:?}"
    );
    d.clock_to(5_000);
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        [
            arm(Timer::Linger(C1), 35_000),
            arm(Timer::Linger(C2), 35_000)
        ]
    );
    d.clock_to(6_000);
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1)),
            disarm(Timer::Linger(C2))
        ]
    );
    assert_eq!(
        d.send(rejected(C1, D1, 487)),
        [told(C2, D1, EndReason::CallerCancelled)]
    );
    assert_eq!(d.send(rejected(C2, D1, 487)), NOTHING);
    d.assert_idle();
}

// A device registers again while its notice, unanswered, is on its way to its old flow (the
// app was restarted on a new one): the notice follows it there.
#[test]
fn notice_unanswered_when_the_device_registers_again_follows_it_to_its_new_flow() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    d.send(Event::CallerCancelled { call: C1 });
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    assert_eq!(d.send(registered(U1, D1)), [reroute(C1, D1)]);
    assert_eq!(d.send(trying(C1, D1)), NOTHING);
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

// A device that held the INVITE, whose flow died and whose fallback push then failed after
// the call had ended, is still owed the end of the call at its next REGISTER.
#[test]
fn held_device_whose_fallback_push_fails_after_the_call_is_still_told_when_it_registers() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online_pushable(D1)]));
    d.send(trying(C1, D1));
    let lost = Event::BranchUnreachable {
        call: C1,
        device: D1,
    };
    assert_eq!(d.send(lost), [push(C1, D1)]);
    assert_eq!(
        d.send(Event::CallerCancelled { call: C1 }),
        [
            respond(C1, 487, None),
            disarm(Timer::Deadline(C1)),
            arm(Timer::Linger(C1), 30_000)
        ]
    );
    assert_eq!(
        d.send(push_failed(C1, D1, true)),
        [Effect::ForgetPushToken { device: D1 }],
        "it may still come back on its own"
    );
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    d.assert_idle();
}

// An INVITE dropped at the end of its call whose device was never pushed, never answered and
// never registered during the call: when Timer B says it never arrived, nobody is owed
// anything, and the call leaves no trace.
#[test]
fn dropped_invite_of_a_device_never_pushed_nor_heard_leaves_nothing_behind() {
    let mut d = Driver::new();
    assert_eq!(
        d.send(arrival(C1, U1, &[online(D1)])),
        [arm(Timer::Deadline(C1), 30_000), forward(C1, D1)]
    );
    assert_eq!(
        d.send(Event::CallerCancelled { call: C1 }),
        [
            respond(C1, 487, None),
            disarm(Timer::Deadline(C1)),
            Effect::DropBranch {
                call: C1,
                device: D1
            }
        ]
    );
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        NOTHING
    );
    d.assert_idle();
}

// A device never pushed that registered during the call (so it is told at once when the call
// ends before it answered) but whose notice never arrives: no push woke it for this call, so
// nothing more is owed.
#[test]
fn failed_notice_to_a_device_never_pushed_owes_nothing_more() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1)]));
    assert_eq!(d.send(registered(U1, D1)), [reroute(C1, D1)]);
    assert_eq!(
        d.send(Event::CallerCancelled { call: C1 }),
        [
            respond(C1, 487, None),
            disarm(Timer::Deadline(C1)),
            Effect::DropBranch {
                call: C1,
                device: D1
            },
            told(C1, D1, EndReason::CallerCancelled)
        ]
    );
    assert_eq!(
        d.send(Event::BranchUnreachable {
            call: C1,
            device: D1
        }),
        NOTHING
    );
    d.assert_idle();
}

// The runtime forgets a callee's id once the core holds no call of it.
#[test]
fn the_core_says_whose_calls_it_holds() {
    let mut d = Driver::new();
    assert!(!d.core.holds_callee(U1));
    d.send(arrival(C1, U1, &[online(D1)]));
    assert!(d.core.holds_callee(U1));
    assert!(!d.core.holds_callee(U2));
    d.send(answered(C1, D1));
    assert!(!d.core.holds_callee(U1), "answered and gone");
    d.send(arrival(C2, U2, &[]));
    assert!(!d.core.holds_callee(U2), "refused at once: no record");
}

// Answers from the push (specs/parking.md §9).

fn from_push(call: CallId, device: DeviceId, answer: PushAnswer) -> Event {
    Event::PushAnswered {
        call,
        device,
        answer,
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
fn busy_from_the_push_of_the_only_device_gives_the_caller_486_at_once_and_no_invite_later() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    d.clock_to(800);
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Busy)),
        [
            reply(C1, D1, AppReply::Taken),
            respond(C1, 486, None),
            disarm(Timer::Deadline(C1)),
        ]
    );
    d.assert_idle();
    // The app registers anyway: nothing is delivered, and a retry of its answer finds the
    // call over.
    assert_eq!(d.send(registered(U1, D1)), NOTHING);
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Busy)),
        [reply(C1, D1, AppReply::CallOver)]
    );
    d.assert_idle();
}

#[test]
fn busy_from_the_push_waits_for_the_other_devices_and_is_the_best_response_at_the_deadline() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1), sleeping(D2)]));
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Busy)),
        [reply(C1, D1, AppReply::Taken)],
        "the other device may still answer"
    );
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Busy)),
        [reply(C1, D1, AppReply::Taken)],
        "a retry of the same answer is taken again, and changes nothing"
    );
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Decline)),
        [reply(C1, D1, AppReply::Conflict)],
        "the first answer stands"
    );
    assert_eq!(d.send(registered(U1, D1)), NOTHING, "no INVITE for D1");
    let fired = d.advance_to(30_000);
    assert_eq!(
        fired,
        [(
            Timer::Deadline(C1),
            vec![respond(C1, 486, None), arm(Timer::Linger(C1), 60_000)]
        )],
        "D2 never woke: the busy beats the 480"
    );
    d.advance_to(60_000);
    d.assert_idle();
}

#[test]
fn busy_from_the_push_then_another_device_answers() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1), sleeping(D2)]));
    d.send(from_push(C1, D1, PushAnswer::Busy));
    assert_eq!(d.send(registered(U1, D2)), [forward(C1, D2)]);
    assert_eq!(
        d.send(answered(C1, D2)),
        [respond(C1, 200, Some(D2)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

#[test]
fn decline_from_the_push_ends_the_call_with_603_and_the_other_devices_are_told() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1), online(D2)]));
    d.send(Event::BranchTrying {
        call: C1,
        device: D2,
    });
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Decline)),
        [
            reply(C1, D1, AppReply::Taken),
            respond(C1, 603, None),
            disarm(Timer::Deadline(C1)),
            cancel_branch(C1, D2),
        ]
    );
    assert_eq!(d.send(rejected(C1, D2, 487)), NOTHING);
    d.assert_idle();
}

#[test]
fn busy_from_the_push_during_a_push_back_off_drops_the_retry() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1), sleeping(D2)]));
    d.send(push_failed(C1, D1, false));
    assert!(d.core.needs_timer(Timer::PushRetry(C1, D1)));
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Busy)),
        [
            disarm(Timer::PushRetry(C1, D1)),
            reply(C1, D1, AppReply::Taken)
        ]
    );
    assert_eq!(d.advance_to(10_000), NO_FIRING, "no retry");
}

#[test]
fn ringing_from_the_push_gets_the_caller_one_ringback_and_the_call_goes_on() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1), sleeping(D2)]));
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Ringing)),
        [
            reply(C1, D1, AppReply::Taken),
            Effect::Ringback { call: C1 }
        ]
    );
    assert_eq!(
        d.send(from_push(C1, D2, PushAnswer::Ringing)),
        [reply(C1, D2, AppReply::Taken)],
        "one ringback per call"
    );
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Decline)),
        [
            reply(C1, D1, AppReply::Taken),
            respond(C1, 603, None),
            disarm(Timer::Deadline(C1)),
            arm(Timer::Linger(C1), 30_000),
        ],
        "the user declined on the lock screen after all"
    );
    assert_eq!(
        d.send(registered(U1, D2)),
        [
            told(C1, D2, EndReason::DeclinedElsewhere),
            disarm(Timer::Linger(C1))
        ]
    );
}

#[test]
fn no_ringback_once_a_device_rang_over_sip() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[online(D1), sleeping(D2)]));
    d.send(Event::BranchRang {
        call: C1,
        device: D1,
    });
    assert_eq!(
        d.send(from_push(C1, D2, PushAnswer::Ringing)),
        [reply(C1, D2, AppReply::Taken)]
    );
}

#[test]
fn an_answer_from_the_push_after_the_invite_was_sent_is_a_conflict_and_changes_nothing() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    assert_eq!(d.send(registered(U1, D1)), [forward(C1, D1)]);
    // Its 100 Trying: its SIP stack holds the INVITE.
    d.send(Event::BranchTrying {
        call: C1,
        device: D1,
    });
    for answer in [PushAnswer::Busy, PushAnswer::Decline, PushAnswer::Ringing] {
        assert_eq!(
            d.send(from_push(C1, D1, answer)),
            [reply(C1, D1, AppReply::Conflict)],
            "{answer:?}: the device answers over SIP"
        );
    }
    assert_eq!(
        d.send(rejected(C1, D1, 486)),
        [respond(C1, 486, Some(D1)), disarm(Timer::Deadline(C1))]
    );
    d.assert_idle();
}

#[test]
fn an_answer_from_the_push_for_an_ended_call_changes_nothing_and_the_device_is_still_told() {
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[sleeping(D1)]));
    d.send(push_accepted(C1, D1));
    d.send(Event::CallerCancelled { call: C1 });
    for answer in [PushAnswer::Busy, PushAnswer::Decline, PushAnswer::Ringing] {
        assert_eq!(
            d.send(from_push(C1, D1, answer)),
            [reply(C1, D1, AppReply::CallOver)]
        );
    }
    assert_eq!(
        d.send(registered(U1, D1)),
        [
            told(C1, D1, EndReason::CallerCancelled),
            disarm(Timer::Linger(C1))
        ]
    );
    assert_eq!(
        d.send(from_push(C3, D1, PushAnswer::Busy)),
        [reply(C3, D1, AppReply::CallOver)],
        "a call the core never held"
    );
}

#[test]
fn busy_from_the_push_of_a_device_that_never_answered_its_invite_stops_that_invite() {
    // D1 is awake on UDP as far as the server knows: forwarded at once and pushed. It slept
    // after all; its app, woken by the push, answers busy without its SIP stack.
    let heard = heard_on_udp(D1);
    let mut d = Driver::new();
    assert_eq!(
        d.send(arrival(C1, U1, &[heard, sleeping(D2)])),
        [
            arm(Timer::Deadline(C1), 30_000),
            push(C1, D1),
            forward(C1, D1),
            push(C1, D2),
        ]
    );
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Busy)),
        [
            Effect::DropBranch {
                call: C1,
                device: D1
            },
            reply(C1, D1, AppReply::Taken),
        ],
        "no CANCEL before a provisional; D2 may still answer"
    );
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Busy)),
        [reply(C1, D1, AppReply::Taken)],
        "the same answer again"
    );
    // The INVITE reached its SIP stack after all: it is cancelled, and its 487 ends the leg
    // as the busy it answered.
    assert_eq!(
        d.send(Event::BranchTrying {
            call: C1,
            device: D1
        }),
        [cancel_branch(C1, D1)]
    );
    assert_eq!(d.send(rejected(C1, D1, 487)), NOTHING);
    assert_eq!(d.send(registered(U1, D1)), NOTHING, "no INVITE for D1");
    let fired = d.advance_to(30_000);
    assert_eq!(
        fired,
        [(
            Timer::Deadline(C1),
            vec![respond(C1, 486, None), arm(Timer::Linger(C1), 60_000)]
        )],
        "D2 never woke: D1's busy is the answer"
    );
    d.advance_to(60_000);
    d.assert_idle();
}

#[test]
fn a_device_that_refused_from_its_push_and_answers_its_invite_anyway_is_hung_up() {
    let heard = heard_on_udp(D1);
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[heard]));
    assert_eq!(
        d.send(from_push(C1, D1, PushAnswer::Decline)),
        [
            Effect::DropBranch {
                call: C1,
                device: D1
            },
            reply(C1, D1, AppReply::Taken),
            respond(C1, 603, None),
            disarm(Timer::Deadline(C1)),
        ]
    );
    assert!(d.core.holds(C1), "until the dropped INVITE is over");
    assert_eq!(
        d.send(answered(C1, D1)),
        [Effect::HangUpBranch {
            call: C1,
            device: D1
        }]
    );
    d.assert_idle();
}

#[test]
fn the_cancel_of_an_invite_refused_from_the_push_follows_the_device_to_its_new_flow() {
    let heard = heard_on_udp(D1);
    let mut d = Driver::new();
    d.send(arrival(C1, U1, &[heard, sleeping(D2)]));
    d.send(from_push(C1, D1, PushAnswer::Busy));
    assert_eq!(
        d.send(Event::BranchTrying {
            call: C1,
            device: D1
        }),
        [cancel_branch(C1, D1)]
    );
    assert_eq!(
        d.send(registered(U1, D1)),
        [reroute(C1, D1)],
        "the CANCEL goes again over the new flow; no INVITE for D1"
    );
    assert_eq!(
        d.send(answered(C1, D1)),
        [Effect::HangUpBranch {
            call: C1,
            device: D1
        }],
        "answered after all: hung up, D2 may still answer"
    );
    assert_eq!(d.send(registered(U1, D2)), [forward(C1, D2)]);
}
