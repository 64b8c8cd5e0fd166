//! The stateright model: the real [`Core`] inside a nondeterministic environment.
//!
//! The environment is everything the server does not control: callers that invite and may
//! cancel; devices that are awake or asleep, wake when a push reaches them (or not), register
//! (sometimes twice), and answer, ring, refuse or lose their flow; a push service that
//! accepts, fails (transiently or for good) or silently loses a push; a registrar that finds
//! bindings about to expire (where the configuration lets them); timers that fire in any
//! order; in a cluster (where the configuration has one), a device that registers on
//! another node, whose registration notice the parking node reads late, twice, or through a
//! restart of its reader. Each [`Action`] is one such move. Applying it feeds the matching [`Event`] to
//! [`Core::step`] — the function the server runs — and folds the [`Effect`]s back into the
//! environment. Properties ([`properties`]) are named as in specs/parking.md.
//!
//! Time is abstract: any armed timer may fire at any moment, so the checker explores more
//! timer orders than real time allows (sound for safety). Every environment move consumes a
//! budget, so the state graph is finite and acyclic, which is what stateright's `eventually`
//! needs to be trusted.

mod properties;

use std::collections::BTreeSet;
use std::fmt;

use stateright::{Model, Property};

use crate::{
    AorId, AppReply, CallId, Callee, Config, Core, DeviceId, Effect, EndReason, Event, Fault, Flow,
    PushAnswer, Target, Timer, TokenUse,
};

pub use properties::{LIVENESS, SAFETY, SOMETIMES};

/// The one callee of the model; all its devices belong to it.
pub const CALLEE: AorId = AorId(0);

/// A (call, device) pair: a push, a branch, a notice.
pub type Pair = (CallId, DeviceId);

/// What a device may answer to an INVITE it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Answer {
    /// 200 OK.
    Accept,
    /// 486 Busy Here.
    Busy,
    /// 603 Decline.
    Decline,
    /// No answer: the proxy's Timer C ends the branch with 408.
    NoAnswer,
}

impl Answer {
    fn code(self) -> u16 {
        match self {
            Answer::Accept => 200,
            Answer::Busy => 486,
            Answer::Decline => 603,
            Answer::NoAnswer => 408,
        }
    }
}

/// How many times the environment may misbehave in one run; each move spends one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Pushes the push service refuses with a transient error (429, 5xx).
    pub transient_failures: u8,
    /// Pushes refused because the token is dead (APNs 410, FCM UNREGISTERED).
    pub permanent_failures: u8,
    /// Pushes accepted but never delivered to the device.
    pub lost_pushes: u8,
    /// Forwarded INVITEs whose flow turns out dead (the device fell asleep).
    pub flow_failures: u8,
    /// Times an awake device on UDP falls asleep without a word: the server still takes it
    /// to be awake (it was heard from lately), and what it sends there is lost.
    pub silent_sleeps: u8,
    /// Times the parking node's reader of the registration notices reconnects and reads
    /// again from the last id it acknowledged: the notices after it are read twice.
    pub reader_reconnects: u8,
    /// Times the parking node's reader loses its position and starts again: it must load
    /// the bindings and read the notices from a new position (as when a node starts).
    pub reader_restarts: u8,
}

/// A defect of the runtime's design around the core, in a cluster: the core is the same, the
/// environment the runtime makes of the cluster is not. For the fault tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterFault {
    /// A reader that starts loads the bindings first and then subscribes from "now" (`$`,
    /// or pub/sub): a REGISTER stored on another node between the two is neither in what it
    /// loaded nor in a notice it reads, and the parked call never learns that the device
    /// woke (Flexisip's bug: the push is sent, the device registers, the call is never
    /// delivered).
    SubscribeAfterLoad,
    /// The notices go over pub/sub instead of a stream: a reader that reconnects gets what
    /// is published from then on, and what was published while it was away is lost.
    PubSub,
}

impl ClusterFault {
    /// Every cluster fault, for tests that go through them all.
    pub const ALL: [ClusterFault; 2] = [ClusterFault::SubscribeAfterLoad, ClusterFault::PubSub];
}

/// A bounded configuration of the environment around the core.
#[derive(Clone, Debug)]
pub struct ParkModel {
    /// Calls the callers place, one after another (each may overlap the others).
    pub calls: u8,
    /// Devices of the one callee.
    pub devices: u8,
    /// The first `awake` devices start with a live flow; the others sleep.
    pub awake: u8,
    /// The first `udp` devices register over UDP, a flow without connection: the server
    /// cannot tell whether they still listen. The others use TCP, whose connection closes
    /// when the app sleeps.
    pub udp: u8,
    /// Devices take a second INVITE while ringing or in a call (call waiting). Without it a
    /// device is a single-line phone, as most apps are: it answers 486 to an INVITE that
    /// arrives while it rings or talks.
    pub call_waiting: bool,
    /// Whether callers may CANCEL. Without it, the server alone must end every call.
    pub callers_cancel: bool,
    /// What a device may answer to a forwarded INVITE (any of them, each time).
    pub answers: Vec<Answer>,
    /// Whether a device may send a provisional (180) before its final answer.
    pub ringing: bool,
    /// REGISTERs a device may send on its own (refresh, retransmission, app opened).
    pub extra_registers: u8,
    /// INVITEs take a while to arrive: the server may end a call, and drop or cancel a
    /// branch, while its INVITE is still on its way to an awake device.
    pub in_flight: bool,
    /// The first `calls_only` devices have a calls-only push token (APNs VoIP): it may carry
    /// only the push of a live call. The others' tokens may carry any push.
    pub calls_only: u8,
    /// The registrar may report, once per device, that its binding nears expiry
    /// (`Event::BindingExpiring`); a device that gets a refresh push may register once more.
    pub bindings_expire: bool,
    /// The server may be shut down (SIGTERM) once, at any moment (`Event::ShuttingDown`).
    pub shutdown: bool,
    /// An app the push reached may answer from the push, at any moment after (before or
    /// after its REGISTER, before or after the call ended): ringing, then busy or decline
    /// (`Event::PushAnswered`).
    pub push_answers: bool,
    /// The calls are parked on one node of a cluster (the server, whose core the model
    /// runs), and a device that wakes may register on another node: its REGISTER is stored
    /// there and a registration notice appended to the stream that the parking node reads
    /// (at any later moment: notices are delayed). A device awake on the other node is
    /// reached through it.
    pub cluster: bool,
    /// A deliberate defect of the runtime's design around the core (cluster only).
    pub cluster_fault: Option<ClusterFault>,
    /// The environment's misbehaviour.
    pub budget: Budget,
    /// The core's policy.
    pub config: Config,
    /// A deliberate defect in the core, for the fault tests.
    pub fault: Option<Fault>,
}

impl ParkModel {
    /// `calls` × `devices`, all asleep, callers that may cancel, devices that answer, are
    /// busy or decline, one fault of each kind from the push service, one extra REGISTER.
    pub fn new(calls: u8, devices: u8) -> Self {
        Self {
            calls,
            devices,
            awake: 0,
            udp: 0,
            call_waiting: false,
            callers_cancel: true,
            answers: vec![Answer::Accept, Answer::Busy, Answer::Decline],
            ringing: false,
            extra_registers: 1,
            in_flight: false,
            calls_only: 0,
            bindings_expire: false,
            shutdown: false,
            push_answers: false,
            cluster: false,
            cluster_fault: None,
            budget: Budget {
                transient_failures: 1,
                permanent_failures: 1,
                lost_pushes: 1,
                flow_failures: 0,
                silent_sleeps: 0,
                reader_reconnects: 0,
                reader_restarts: 0,
            },
            config: Config {
                push_attempts: 2,
                ..Config::default()
            },
            fault: None,
        }
    }

    /// The model's time: abstract, so always the same (see the module docs). Far enough from
    /// zero that a device last heard at [`STALE`](Self::STALE) is outside the awake window.
    const NOW: u64 = 1 << 40;
    /// When the server last heard from a device that has not registered in this run.
    const STALE: u64 = 0;

    /// The configuration called `name` (see [`CONFIGURATIONS`]).
    pub fn configuration(name: &str) -> Option<Self> {
        let full = |calls, devices| Self {
            ringing: true,
            answers: vec![
                Answer::Accept,
                Answer::Busy,
                Answer::Decline,
                Answer::NoAnswer,
            ],
            ..Self::new(calls, devices)
        };
        // Nobody but the server may end a call: callers never cancel and devices register
        // only when a push wakes them, so an optional move of theirs cannot rescue a call
        // the server forgot.
        let no_cancel = |calls, devices| Self {
            callers_cancel: false,
            extra_registers: 0,
            ..Self::new(calls, devices)
        };
        Some(match name {
            "1x1" => full(1, 1),
            "1x2" => Self::new(1, 2),
            "2x1" => Self::new(2, 1),
            "2x2" => Self {
                extra_registers: 0,
                budget: Budget {
                    permanent_failures: 1,
                    ..Budget::default()
                },
                ..Self::new(2, 2)
            },
            "3x1" => Self {
                extra_registers: 0,
                ..Self::new(3, 1)
            },
            "1x2-no-cancel" => no_cancel(1, 2),
            "2x2-no-cancel" => Self {
                budget: Budget {
                    transient_failures: 0,
                    ..Self::new(2, 2).budget
                },
                ..no_cancel(2, 2)
            },
            "1x2-flow" => Self {
                awake: 1,
                budget: Budget {
                    flow_failures: 1,
                    ..Self::new(1, 2).budget
                },
                ..Self::new(1, 2)
            },
            "1x2-flight" => Self {
                awake: 1,
                ringing: true,
                in_flight: true,
                extra_registers: 0,
                ..Self::new(1, 2)
            },
            "2x1-flight" => Self {
                in_flight: true,
                extra_registers: 0,
                ..Self::new(2, 1)
            },
            "1x2-refresh" => Self {
                calls_only: 1,
                bindings_expire: true,
                extra_registers: 0,
                ..Self::new(1, 2)
            },
            "2x1-drain" => Self {
                shutdown: true,
                ringing: true,
                extra_registers: 0,
                ..Self::new(2, 1)
            },
            "1x2-answer" => Self {
                push_answers: true,
                extra_registers: 0,
                ..Self::new(1, 2)
            },
            "2x1-answer" => Self {
                push_answers: true,
                extra_registers: 0,
                ..Self::new(2, 1)
            },
            "1x2-udp-answer" => Self {
                awake: 1,
                udp: 1,
                push_answers: true,
                extra_registers: 0,
                budget: Budget {
                    silent_sleeps: 1,
                    lost_pushes: 0,
                    ..Self::new(1, 2).budget
                },
                ..Self::new(1, 2)
            },
            "1x2-flow-answer" => Self {
                awake: 1,
                push_answers: true,
                ringing: true,
                extra_registers: 0,
                budget: Budget {
                    flow_failures: 1,
                    ..Budget::default()
                },
                ..Self::new(1, 2)
            },
            "2x1-udp" => Self::awake_on_udp(false),
            "2x1-udp-waiting" => Self::awake_on_udp(true),
            "1x1-cluster" => Self::in_a_cluster(Self {
                budget: Budget {
                    flow_failures: 1,
                    ..Self::new(1, 1).budget
                },
                ..full(1, 1)
            }),
            "1x2-cluster" => Self::in_a_cluster(Self {
                extra_registers: 0,
                ..Self::new(1, 2)
            }),
            "2x1-cluster" => Self::in_a_cluster(Self {
                extra_registers: 0,
                ..Self::new(2, 1)
            }),
            _ => return None,
        })
    }
}

impl ParkModel {
    /// Two calls for one device awake on UDP with a push token: the server heard from it
    /// lately and it may be in a call, but it may also have fallen asleep without a word;
    /// an awake app ignores pushes (it has no reason to register again).
    fn awake_on_udp(call_waiting: bool) -> Self {
        Self {
            awake: 1,
            udp: 1,
            call_waiting,
            extra_registers: 0,
            budget: Budget {
                silent_sleeps: 1,
                lost_pushes: 0,
                ..Self::new(2, 1).budget
            },
            ..Self::new(2, 1)
        }
    }

    /// `model` on a node of a cluster: devices may register on the other node, the
    /// parking node's reader may read notices twice (one reconnect) and start again once.
    fn in_a_cluster(model: Self) -> Self {
        Self {
            cluster: true,
            budget: Budget {
                reader_reconnects: 1,
                reader_restarts: 1,
                ..model.budget
            },
            ..model
        }
    }
}

/// The bounded configurations CI checks exhaustively, with what each is for.
pub const CONFIGURATIONS: [(&str, &str); 21] = [
    (
        "1x1",
        "one call, one sleeping device; it may ring, answer, be busy, decline or not answer",
    ),
    ("1x2", "one call, two sleeping devices"),
    ("2x1", "two calls parked for one sleeping device"),
    (
        "2x2",
        "two calls, two sleeping devices; one dead token, no other push fault",
    ),
    ("3x1", "three calls parked for one sleeping device"),
    (
        "1x2-no-cancel",
        "one call, two devices; only the server may end the call",
    ),
    (
        "2x2-no-cancel",
        "two calls, two devices; only the server may end the calls",
    ),
    (
        "1x2-flow",
        "one call, one awake device whose flow may be dead, one sleeping device",
    ),
    (
        "1x2-flight",
        "one call, one awake and one sleeping device; INVITEs take a while to arrive, so a \
         branch may be dropped or cancelled while its INVITE is on its way",
    ),
    (
        "2x1-flight",
        "two calls, one sleeping single-line device; an INVITE of a call already over may \
         still arrive after it woke",
    ),
    (
        "1x2-refresh",
        "one call, two sleeping devices, one with a calls-only (APNs VoIP) token; each binding \
         may near expiry once, and a device registers on its own only after a refresh push",
    ),
    (
        "2x1-drain",
        "two calls, one sleeping device that may ring; the server may shut down at any moment",
    ),
    (
        "1x2-answer",
        "one call, two sleeping devices whose apps may answer from the push (ringing, busy, \
         decline), before or after registering",
    ),
    (
        "2x1-answer",
        "two calls, one sleeping device whose app may answer each call from its push, also \
         after that call ended",
    ),
    (
        "1x2-udp-answer",
        "one call, a device awake on UDP that may fall asleep unseen (its INVITE then lost) and a \
         sleeping one; apps answer from the push, also while their INVITE is on its way",
    ),
    (
        "1x2-flow-answer",
        "one call, one device awake on TCP that may ring and then lose its flow, one sleeping; \
         apps answer from the push",
    ),
    (
        "2x1-udp",
        "two calls, one single-line device awake on UDP that may fall asleep unseen",
    ),
    (
        "2x1-udp-waiting",
        "as 2x1-udp, with a device that takes a second call while in one (call waiting)",
    ),
    (
        "1x1-cluster",
        "as 1x1 with one flow failure, on a node of a cluster: the device may register on the \
         other node, whose notice the parking node reads late, twice, or through a restart of \
         its reader",
    ),
    (
        "1x2-cluster",
        "as 1x2, on a node of a cluster (see 1x1-cluster)",
    ),
    (
        "2x1-cluster",
        "as 2x1, on a node of a cluster (see 1x1-cluster)",
    ),
];

/// A caller and what it has received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Caller {
    /// Final responses received (the property says: at most one).
    pub finals: u8,
    /// The first final response: code, and the device it came from if relayed.
    pub response: Option<(u16, Option<DeviceId>)>,
    /// A CANCEL was sent.
    pub cancelled: bool,
    /// The CANCEL reached the server before any final response was given.
    pub cancelled_in_time: bool,
    /// The park deadline fired.
    pub deadline_fired: bool,
    /// The first busy/decline a branch answered (or an app from its push) while the call
    /// was in progress.
    pub first_rejection: Option<u16>,
    /// 180s of the server's own it received.
    pub ringbacks: u8,
    /// A device's provisional was relayed to it.
    pub heard_ringing: bool,
}

/// A device and what it went through.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Device {
    /// The app runs and its flow works: what is sent to it arrives.
    pub awake: bool,
    /// Registers over UDP (else TCP).
    pub udp: bool,
    /// The server heard from it in this run (a REGISTER, an answer): on UDP, the server
    /// takes it to be awake, rightly or not.
    pub heard: bool,
    /// INVITEs it holds and has not answered with a final response: live calls and notices.
    pub line: BTreeSet<CallId>,
    /// Calls it answered and is in.
    pub in_call: BTreeSet<CallId>,
    /// Calls whose push reached it and that it has not registered for yet.
    pub woken_for: BTreeSet<CallId>,
    /// Unsolicited REGISTERs left.
    pub registers_left: u8,
    /// The server forgot its push token.
    pub token_forgotten: bool,
    /// The push service said its token is dead.
    pub token_dead: bool,
    /// The registrar reported that its binding nears expiry.
    pub expiry_reported: bool,
    /// Its last REGISTER went to the other node of the cluster: its flow, if it is awake,
    /// ends there.
    pub on_other: bool,
    /// Its REGISTERs stored in the shared store (cluster only): the last one's number.
    pub stored: u8,
    /// The number of its last REGISTER the parking node knows of: one it took itself,
    /// loaded, or read in a notice (cluster only).
    pub known: u8,
    /// The parking node's binding index: the device's last REGISTER it knows of went to the
    /// other node, so it reaches the device through that node.
    pub known_on_other: bool,
}

/// What happened so far, for the properties. Grows only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct History {
    pub pushed: BTreeSet<Pair>,
    /// Pairs whose last push failed transiently: one more push is allowed.
    pub may_retry: BTreeSet<Pair>,
    pub retried: BTreeSet<Pair>,
    pub woken: BTreeSet<Pair>,
    /// INVITEs that reached the device (a forward over a dead flow does not count).
    pub forwarded: BTreeSet<Pair>,
    pub answered: BTreeSet<Pair>,
    pub hung_up: BTreeSet<Pair>,
    pub told: BTreeSet<(CallId, DeviceId, EndReason)>,
    pub push_failed_for_good: BTreeSet<Pair>,
    /// A device registered after being woken for the call, within its notice window, and
    /// its flow has stayed up since.
    pub registered_after_wake: BTreeSet<Pair>,
    /// Calls whose ended-notice window closed.
    pub lingered: BTreeSet<CallId>,
    /// Pairs whose last push the push service accepted (delivered or lost).
    pub push_accepted: BTreeSet<Pair>,
    /// The server sent (or rerouted) a live INVITE to a device whose line held only INVITEs
    /// of calls that had ended (notices, cancelled branches): a single-line phone refuses it.
    pub sent_beside_ended: bool,
    /// Live INVITEs forwarded at once to a device awake on UDP, and delivered.
    pub reached_awake: BTreeSet<Pair>,
    /// INVITEs lost to a silently sleeping device that a REGISTER's reroute delivered.
    pub rerouted: BTreeSet<Pair>,
    /// Devices pushed again at once after a forwarded INVITE was found undeliverable.
    pub fallback_pushed: BTreeSet<Pair>,
    /// A device answered a live call after it was told of an ended one.
    pub answered_after_notice: bool,
    /// A retransmission of an ended call's INVITE (not a notice) reached a woken device.
    pub stale_invite_arrived: bool,
    /// Branches the server dropped (`DropBranch`).
    pub dropped: BTreeSet<Pair>,
    /// A dropped INVITE turned out to have reached its device, and was cancelled.
    pub dropped_then_cancelled: bool,
    /// Calls in progress when the device registered: for them it is awake, and a dead flow
    /// calls for a fresh INVITE, not a push.
    pub registered_during: BTreeSet<Pair>,
    pub forward_after_final: bool,
    pub forwarded_twice: bool,
    pub bad_push: bool,
    pub push_after_deadline: bool,
    /// A call arrived for a device known to be awake and was not forwarded to it at once.
    pub awake_not_forwarded: bool,
    /// A forwarded INVITE was undeliverable while the call was parking, the device's token
    /// alive, and no push for the call was on its way or accepted afterwards.
    pub dead_flow_not_pushed: bool,
    /// Devices that got a binding-refresh push.
    pub refresh_pushed: BTreeSet<DeviceId>,
    /// A device with a calls-only token got a push that was not for a live call: a refresh
    /// push, or a push for a call whose caller already had its final response.
    pub calls_only_pushed_for_no_call: bool,
    /// Busy or decline answers from the push the server took.
    pub refused_from_push: BTreeSet<Pair>,
    /// Calls an app declined from its push, and the server took it.
    pub declined_from_push: BTreeSet<CallId>,
    /// A device that refused a call from its push was later pushed or sent its INVITE.
    pub invite_after_refusal: bool,
    /// An answer from the push for a call whose caller had its final response did more than
    /// get `CallOver`.
    pub stale_answer_acted: bool,
    /// An answer from the push got no reply, or more than one.
    pub reply_missing: bool,
    /// An answer from the push was refused because the device had the call over SIP.
    pub answer_conflicted: bool,
    /// A 180 of the server's own reached a caller that had its final response, or had
    /// heard a device ring.
    pub ringback_after_final: bool,
    /// A busy or decline from the push was taken while the INVITE sent to the device had
    /// had no answer, and that INVITE was stopped (`DropBranch`).
    pub refusal_dropped_invite: bool,
    /// Devices that registered on the other node after being woken for the call, whose
    /// notice the parking node has not read yet (they join `registered_after_wake` then).
    pub registered_elsewhere: BTreeSet<Pair>,
    /// Live INVITEs delivered through the other node, to a device registered there.
    pub reached_via_other: BTreeSet<Pair>,
}

/// The whole system: the core and its environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub core: Core,
    /// Calls invited so far: `CallId(0)` to `CallId(invited - 1)`.
    pub invited: u8,
    pub callers: Vec<Caller>,
    pub devices: Vec<Device>,
    pub budget: Budget,
    /// Push requests the push service has not answered.
    pub pushes: BTreeSet<Pair>,
    /// INVITEs (live calls and notices) the device holds, without its final response.
    pub branches: BTreeSet<Pair>,
    /// INVITEs sent to a device that was not there (asleep on UDP, or its connection
    /// closed): undelivered, until a reroute delivers them or the runtime reports them
    /// undeliverable.
    pub lost: BTreeSet<Pair>,
    /// Branches that carry a notice of an ended call (delivered or lost).
    pub notices: BTreeSet<Pair>,
    /// Branches a single-line device holds while busy: its only answer is 486.
    pub busy: BTreeSet<Pair>,
    /// INVITEs on their way to a device (with `in_flight`): they arrive, or are lost if the
    /// device fell asleep meanwhile.
    pub flight: BTreeSet<Pair>,
    /// INVITEs the server gave up without a CANCEL (`DropBranch`) while lost or on their
    /// way: no longer retransmitted.
    pub silenced: BTreeSet<Pair>,
    /// Branches that sent a provisional.
    pub rang: BTreeSet<Pair>,
    /// Branches the server sent a CANCEL on.
    pub cancelling: BTreeSet<Pair>,
    /// Timers armed and not disarmed.
    pub timers: BTreeSet<Timer>,
    /// The server was shut down.
    pub shut_down: bool,
    /// Answers apps sent from their pushes.
    pub push_answers: BTreeSet<(CallId, DeviceId, PushAnswer)>,
    /// The registration notices of the other node, in the order the shared store appended
    /// them: the device and the number of its REGISTER (cluster only).
    pub stream: Vec<(DeviceId, u8)>,
    /// The parking node's reader of the notices.
    pub reader: Reader,
    pub history: History,
}

/// The parking node's reader of the registration notices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Reader {
    /// The index in the stream of the next notice it reads.
    pub next: u8,
    /// The earliest index a reconnect may go back to: it re-reads from the last id it
    /// acknowledged, which is never before where it (re)started.
    pub floor: u8,
    /// A start of the reader is half done: it recorded where to read from and has yet to
    /// load the bindings (`Recorded`, the design), or it loaded the bindings and has yet
    /// to subscribe (`Loaded`, [`ClusterFault::SubscribeAfterLoad`]).
    pub restart: Option<Restart>,
}

/// The first half of a start of the reader (see [`Reader::restart`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Restart {
    Recorded,
    Loaded,
}

impl State {
    fn caller(&self, call: CallId) -> &Caller {
        &self.callers[call.0 as usize]
    }
}

/// One move of the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The next caller sends its INVITE.
    Invite,
    /// A caller sends CANCEL.
    Cancel(CallId),
    /// The push service accepts the push and it reaches the device.
    PushDelivered(CallId, DeviceId),
    /// The push service accepts the push, but it never reaches the device.
    PushLost(CallId, DeviceId),
    /// The push service refuses the push.
    PushFailed(CallId, DeviceId, bool),
    /// The device's REGISTER is accepted.
    Register(DeviceId),
    /// The device sends 180 Ringing.
    Ring(CallId, DeviceId),
    /// The device sends its final response (code).
    Respond(CallId, DeviceId, u16),
    /// The branch's flow is dead: the INVITE never reached the device.
    FlowFails(CallId, DeviceId),
    /// An INVITE sent where the device no longer was is reported undeliverable (Timer B
    /// without any response on UDP, a send failure on TCP).
    Undeliverable(CallId, DeviceId),
    /// An awake device on UDP falls asleep; the server does not notice.
    Sleep(DeviceId),
    /// The push reaches an awake app, which has no reason to register again.
    PushIgnored(CallId, DeviceId),
    /// A retransmission of an INVITE sent while the device slept reaches it now that it
    /// listens again on its address (UDP).
    Retransmitted(CallId, DeviceId),
    /// An INVITE on its way reaches the device (with `in_flight`).
    Arrive(CallId, DeviceId),
    /// The registrar finds the device's binding about to expire.
    BindingExpiring(DeviceId),
    /// A timer fires.
    Fire(Timer),
    /// The server is shut down (SIGTERM).
    Shutdown,
    /// The app answers from the push for the call, over the app API.
    PushAnswer(CallId, DeviceId, PushAnswer),
    /// The device's REGISTER is accepted by the other node of the cluster, which stores it
    /// and appends a registration notice to the stream, in one transaction.
    RegisterElsewhere(DeviceId),
    /// The parking node's reader reads the next notice.
    ReadNotice,
    /// The reader reconnects and reads again from the notice at this index (the last it
    /// acknowledged).
    ReaderReconnect(u8),
    /// The reader starts again (it lost its position): the first half of its start.
    ReaderRestart,
    /// The second half of the reader's start.
    ReaderResume,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Action::Invite => write!(f, "caller → server: INVITE"),
            Action::Cancel(c) => write!(f, "caller → server: CANCEL {c}"),
            Action::PushDelivered(c, d) => write!(f, "push service: {c} push delivered to {d}"),
            Action::PushLost(c, d) => write!(f, "push service: {c} push to {d} accepted, lost"),
            Action::PushFailed(c, d, true) => {
                write!(f, "push service: {c} push to {d} failed, token dead")
            }
            Action::PushFailed(c, d, false) => {
                write!(f, "push service: {c} push to {d} failed, transient")
            }
            Action::Register(d) => write!(f, "{d} → server: REGISTER"),
            Action::Ring(c, d) => write!(f, "{d} → server: 180 Ringing ({c})"),
            Action::Respond(c, d, code) => write!(f, "{d} → server: {code} ({c})"),
            Action::FlowFails(c, d) => write!(f, "{d}: flow dead, INVITE {c} undeliverable"),
            Action::Undeliverable(c, d) => {
                write!(f, "{d}: INVITE {c} never arrived (Timer B / send failed)")
            }
            Action::Sleep(d) => write!(f, "{d}: falls asleep unseen"),
            Action::PushIgnored(c, d) => {
                write!(f, "push service: {c} push delivered to {d}, awake, ignored")
            }
            Action::Retransmitted(c, d) => {
                write!(f, "{d}: a retransmission of INVITE {c} arrives")
            }
            Action::Arrive(c, d) => write!(f, "{d}: INVITE {c} arrives"),
            Action::BindingExpiring(d) => write!(f, "registrar: {d}'s binding nears expiry"),
            Action::Shutdown => write!(f, "operator → server: SIGTERM"),
            Action::PushAnswer(c, d, a) => write!(f, "{d} app → server: {a:?} from the push ({c})"),
            Action::Fire(t) => write!(f, "timer {t:?} fires"),
            Action::RegisterElsewhere(d) => {
                write!(f, "{d} → other node: REGISTER (stored, notice appended)")
            }
            Action::ReadNotice => write!(f, "server's reader: reads the next notice"),
            Action::ReaderReconnect(i) => {
                write!(
                    f,
                    "server's reader: reconnects, reads again from notice {i}"
                )
            }
            Action::ReaderRestart => write!(f, "server's reader: starts again (first half)"),
            Action::ReaderResume => write!(f, "server's reader: starts again (second half)"),
        }
    }
}

impl ParkModel {
    fn device_ids(&self) -> impl Iterator<Item = DeviceId> {
        (0..u64::from(self.devices)).map(DeviceId)
    }

    /// What `device`'s push token may carry: the fact the runtime reports.
    fn token_use(&self, device: DeviceId) -> TokenUse {
        if device.0 < u64::from(self.calls_only) {
            TokenUse::CallsOnly
        } else {
            TokenUse::Any
        }
    }

    /// What the server knows of `device`'s flow: the facts the runtime reports in a
    /// [`Target`].
    fn flow(device: &Device) -> Flow {
        if device.known_on_other {
            // Registered on another node: reported as a UDP flow heard when the notice was
            // read (the parking node cannot see the device's flow on the other node).
            return Flow::Datagram {
                heard_at: Self::NOW,
                in_dialog: false,
            };
        }
        // Its connection to this node, if any: one to the other node is not seen here.
        match (device.udp, device.awake && !device.on_other) {
            (false, true) => Flow::Connected,
            (false, false) => Flow::Closed,
            (true, _) => Flow::Datagram {
                heard_at: if device.heard { Self::NOW } else { Self::STALE },
                in_dialog: !device.in_call.is_empty(),
            },
        }
    }

    /// An INVITE (a live call's, or a notice) arrives at the device, which answers 100
    /// Trying at once (RFC 3261 §17.2.1): the pair is added to `trying`.
    fn deliver(&self, s: &mut State, pair: Pair, notice: bool, trying: &mut Vec<Pair>) {
        trying.push(pair);
        let (call, device) = pair;
        let d = &mut s.devices[device.0 as usize];
        if d.known_on_other && !notice {
            s.history.reached_via_other.insert(pair);
        }
        let taken = !d.line.is_empty() || !d.in_call.is_empty();
        if taken && !self.call_waiting {
            s.busy.insert(pair);
        }
        d.line.insert(call);
        s.branches.insert(pair);
        if !notice && !s.history.forwarded.insert(pair) {
            s.history.forwarded_twice = true;
        }
    }

    /// Sends an INVITE: delivered if the device is there (or on its way, with
    /// `in_flight`), lost otherwise. An earlier INVITE of the call to the device, given up
    /// and lost, is replaced by it (the runtime sends both with one branch).
    fn send_invite(&self, s: &mut State, pair: Pair, notice: bool, trying: &mut Vec<Pair>) {
        if s.silenced.remove(&pair) {
            s.lost.remove(&pair);
        }
        if !Self::reachable(&s.devices[pair.1 .0 as usize]) {
            s.lost.insert(pair);
        } else if self.in_flight {
            s.flight.insert(pair);
        } else {
            self.deliver(s, pair, notice, trying);
        }
    }

    /// What the server sends to the device reaches it: it is awake, and the server sends
    /// it through the node its flow ends on (in a cluster, the node of its last REGISTER
    /// the server knows of: through the other node, which relays it over the device's
    /// flow or answers 430 if that flow is gone).
    fn reachable(device: &Device) -> bool {
        device.awake && device.on_other == device.known_on_other
    }

    /// The parking node learns that `device` registered (its own REGISTER, a notice, a
    /// load): for the calls in progress it is awake, and the calls whose push woke it
    /// before it registered elsewhere now count as registered after the wake, as long as
    /// their notice window is open.
    fn learn(s: &mut State, device: DeviceId) {
        for (i, caller) in s.callers.iter().enumerate().take(usize::from(s.invited)) {
            if caller.response.is_none() {
                s.history
                    .registered_during
                    .insert((CallId(i as u64), device));
            }
        }
        let elsewhere: Vec<Pair> = (s.history.registered_elsewhere.iter())
            .filter(|&&(_, d)| d == device)
            .copied()
            .collect();
        for pair in elsewhere {
            s.history.registered_elsewhere.remove(&pair);
            if !s.history.lingered.contains(&pair.0) {
                s.history.registered_after_wake.insert(pair);
            }
        }
    }

    /// The reader loads the bindings from the shared store: every device whose last
    /// REGISTER it did not know of is registered on the other node, and its core is told.
    fn load(&self, s: &mut State) {
        for d in self.device_ids() {
            let device = &mut s.devices[d.0 as usize];
            if device.stored <= device.known {
                continue;
            }
            device.known = device.stored;
            device.known_on_other = device.on_other;
            Self::learn(s, d);
            self.feed(
                s,
                Event::DeviceRegistered {
                    aor: CALLEE,
                    device: d,
                },
            );
        }
    }

    /// Feeds `event` to the core and applies its effects, and the 100 Trying of every
    /// INVITE that arrives.
    fn feed(&self, s: &mut State, event: Event) {
        let mut effects = Vec::new();
        s.core.step(Self::NOW, event, &mut effects);
        let trying = self.apply(s, effects);
        self.settle(s, trying);
    }

    /// Every INVITE that arrived is answered 100 Trying, which may send more.
    fn settle(&self, s: &mut State, mut trying: Vec<Pair>) {
        while let Some((call, device)) = trying.pop() {
            let mut effects = Vec::new();
            s.core.step(
                Self::NOW,
                Event::BranchTrying { call, device },
                &mut effects,
            );
            trying.extend(self.apply(s, effects));
        }
    }

    /// `call`'s INVITE is about to be sent to `device`: if the call is live, notes whether
    /// the device's line holds only INVITEs of calls that have ended, which a single-line
    /// phone would make it refuse.
    fn check_line(s: &mut State, (call, device): Pair) {
        if s.callers[call.0 as usize].response.is_some() {
            return;
        }
        let d = &s.devices[device.0 as usize];
        let only_ended = !d.line.is_empty()
            && d.in_call.is_empty()
            && d.line
                .iter()
                .all(|&other| s.callers[other.0 as usize].response.is_some());
        if only_ended {
            s.history.sent_beside_ended = true;
        }
    }

    /// The branch is over for the device: it holds the INVITE no more.
    fn close_branch(s: &mut State, (call, device): Pair) {
        s.branches.remove(&(call, device));
        s.lost.remove(&(call, device));
        s.cancelling.remove(&(call, device));
        s.busy.remove(&(call, device));
        s.notices.remove(&(call, device));
        s.silenced.remove(&(call, device));
        s.devices[device.0 as usize].line.remove(&call);
    }

    /// Applies the core's effects to the environment, recording what the properties check;
    /// returns the INVITEs that arrived, each of which the device answers with 100 Trying.
    fn apply(&self, s: &mut State, effects: Vec<Effect>) -> Vec<Pair> {
        let mut trying = Vec::new();
        for effect in effects {
            match effect {
                Effect::Push { call, device } => {
                    let pair = (call, device);
                    if s.history.refused_from_push.contains(&pair) {
                        s.history.invite_after_refusal = true;
                    }
                    if self.token_use(device) == TokenUse::CallsOnly
                        && s.callers[call.0 as usize].response.is_some()
                    {
                        s.history.calls_only_pushed_for_no_call = true;
                    }
                    let h = &mut s.history;
                    let repeat = h.pushed.contains(&pair);
                    if s.pushes.contains(&pair)
                        || h.forwarded.contains(&pair)
                        || (repeat && !h.may_retry.contains(&pair))
                    {
                        h.bad_push = true;
                    }
                    if repeat {
                        h.retried.insert(pair);
                    }
                    if s.callers[call.0 as usize].deadline_fired {
                        h.push_after_deadline = true;
                    }
                    h.may_retry.remove(&pair);
                    h.push_accepted.remove(&pair);
                    h.pushed.insert(pair);
                    s.pushes.insert(pair);
                }
                Effect::Forward { call, device } => {
                    if s.callers[call.0 as usize].response.is_some() {
                        s.history.forward_after_final = true;
                    }
                    if s.history.refused_from_push.contains(&(call, device)) {
                        s.history.invite_after_refusal = true;
                    }
                    Self::check_line(s, (call, device));
                    self.send_invite(s, (call, device), false, &mut trying);
                }
                Effect::Reroute { call, device } => {
                    let pair = (call, device);
                    let notice = s.notices.contains(&pair);
                    if !notice {
                        Self::check_line(s, pair);
                    }
                    if Self::reachable(&s.devices[device.0 as usize]) && s.lost.remove(&pair) {
                        s.history.rerouted.insert(pair);
                        self.deliver(s, pair, notice, &mut trying);
                    }
                }
                Effect::CancelBranch { call, device } => {
                    if s.history.dropped.contains(&(call, device)) {
                        s.history.dropped_then_cancelled = true;
                    }
                    s.cancelling.insert((call, device));
                }
                Effect::DropBranch { call, device } => {
                    let pair = (call, device);
                    s.history.dropped.insert(pair);
                    // Lost, it is no longer retransmitted; on its way, it still arrives; held,
                    // the device's answers still reach the server.
                    if s.lost.contains(&pair) || s.flight.contains(&pair) {
                        s.silenced.insert(pair);
                    }
                }
                Effect::HangUpBranch { call, device } => {
                    s.history.hung_up.insert((call, device));
                    s.devices[device.0 as usize].in_call.remove(&call);
                }
                Effect::RelayProvisional { call, .. } => {
                    s.callers[call.0 as usize].heard_ringing = true;
                }
                Effect::Ringback { call } => {
                    let caller = &mut s.callers[call.0 as usize];
                    caller.ringbacks = caller.ringbacks.saturating_add(1);
                    if caller.response.is_some() || caller.heard_ringing {
                        s.history.ringback_after_final = true;
                    }
                }
                // Judged in `next_state`, on the step that asked.
                Effect::ReplyToApp { .. } => {}
                Effect::Respond { call, code, relay } => {
                    let caller = &mut s.callers[call.0 as usize];
                    caller.finals = caller.finals.saturating_add(1);
                    caller.response.get_or_insert((code, relay));
                }
                Effect::ArmTimer { timer, .. } => {
                    s.timers.insert(timer);
                }
                Effect::DisarmTimer { timer } => {
                    s.timers.remove(&timer);
                }
                Effect::ForgetPushToken { device } => {
                    s.devices[device.0 as usize].token_forgotten = true;
                }
                Effect::RefreshPush { device } => {
                    if self.token_use(device) == TokenUse::CallsOnly {
                        s.history.calls_only_pushed_for_no_call = true;
                    }
                    s.history.refresh_pushed.insert(device);
                    // What the push is for: the app may register again.
                    let dev = &mut s.devices[device.0 as usize];
                    dev.registers_left = dev.registers_left.saturating_add(1);
                }
                Effect::TellEnded {
                    call,
                    device,
                    reason,
                } => {
                    let pair = (call, device);
                    if s.history.refused_from_push.contains(&pair) {
                        s.history.invite_after_refusal = true;
                    }
                    s.history.told.insert((call, device, reason));
                    // The INVITE, and a CANCEL as soon as it rings: the device answers 487,
                    // or 200 if the user was quicker.
                    s.notices.insert(pair);
                    s.cancelling.insert(pair);
                    self.send_invite(s, pair, true, &mut trying);
                }
            }
        }
        trying
    }
}

impl ParkModel {
    /// Records what the core made of an answer from the push, before its effects are
    /// applied: one reply to the app; for a call already answered, nothing else.
    fn judge_reply(s: &mut State, pair: Pair, answer: PushAnswer, effects: &[Effect]) {
        let (call, device) = pair;
        let replies: Vec<AppReply> = effects
            .iter()
            .filter_map(|e| match *e {
                Effect::ReplyToApp {
                    call: c,
                    device: d,
                    reply,
                } if (c, d) == pair => Some(reply),
                _ => None,
            })
            .collect();
        let [reply] = replies[..] else {
            s.history.reply_missing = true;
            return;
        };
        let caller = &mut s.callers[call.0 as usize];
        if caller.response.is_some() {
            let only_the_reply = effects
                == [Effect::ReplyToApp {
                    call,
                    device,
                    reply: AppReply::CallOver,
                }];
            if !only_the_reply {
                s.history.stale_answer_acted = true;
            }
            return;
        }
        match (reply, answer.code()) {
            (AppReply::Taken, Some(code)) => {
                caller.first_rejection.get_or_insert(code);
                if effects.contains(&Effect::DropBranch { call, device }) {
                    s.history.refusal_dropped_invite = true;
                }
                s.history.refused_from_push.insert(pair);
                if answer == PushAnswer::Decline {
                    s.history.declined_from_push.insert(call);
                }
            }
            (AppReply::Conflict, _) => s.history.answer_conflicted = true,
            _ => {}
        }
    }
}

impl Model for ParkModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let devices = (0..self.devices)
            .map(|i| Device {
                awake: i < self.awake,
                udp: i < self.udp,
                heard: i < self.awake,
                registers_left: self.extra_registers,
                ..Device::default()
            })
            .collect();
        vec![State {
            core: Core::with_fault(self.config.clone(), self.fault),
            invited: 0,
            callers: vec![Caller::default(); usize::from(self.calls)],
            devices,
            budget: self.budget,
            pushes: BTreeSet::new(),
            branches: BTreeSet::new(),
            lost: BTreeSet::new(),
            notices: BTreeSet::new(),
            busy: BTreeSet::new(),
            flight: BTreeSet::new(),
            silenced: BTreeSet::new(),
            rang: BTreeSet::new(),
            cancelling: BTreeSet::new(),
            timers: BTreeSet::new(),
            shut_down: false,
            push_answers: BTreeSet::new(),
            stream: Vec::new(),
            reader: Reader::default(),
            history: History::default(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.invited < self.calls {
            actions.push(Action::Invite);
        }
        if self.shutdown && !s.shut_down {
            actions.push(Action::Shutdown);
        }
        if self.callers_cancel {
            for (i, caller) in s.callers.iter().enumerate().take(usize::from(s.invited)) {
                if !caller.cancelled && caller.response.is_none() {
                    actions.push(Action::Cancel(CallId(i as u64)));
                }
            }
        }
        for &(c, d) in &s.pushes {
            let device = &s.devices[d.0 as usize];
            actions.push(Action::PushDelivered(c, d));
            if device.awake && device.udp {
                actions.push(Action::PushIgnored(c, d));
            }
            if s.budget.lost_pushes > 0 {
                actions.push(Action::PushLost(c, d));
            }
            if s.budget.permanent_failures > 0 {
                actions.push(Action::PushFailed(c, d, true));
            }
            if s.budget.transient_failures > 0 {
                actions.push(Action::PushFailed(c, d, false));
            }
        }
        for d in self.device_ids() {
            let device = &s.devices[d.0 as usize];
            if !device.woken_for.is_empty() || device.registers_left > 0 {
                // A device awake refreshes over its flow; one that wakes may pick any node.
                if !self.cluster || !device.awake || !device.on_other {
                    actions.push(Action::Register(d));
                }
                if self.cluster && (!device.awake || device.on_other) {
                    actions.push(Action::RegisterElsewhere(d));
                }
            }
            if self.bindings_expire && !device.expiry_reported && !device.token_forgotten {
                actions.push(Action::BindingExpiring(d));
            }
            if s.budget.silent_sleeps > 0
                && device.udp
                && device.awake
                && device.line.is_empty()
                && device.in_call.is_empty()
            {
                actions.push(Action::Sleep(d));
            }
        }
        for &(c, d) in &s.branches {
            if s.busy.contains(&(c, d)) {
                // A single-line phone refuses what arrives while it rings or talks.
                actions.push(Action::Respond(c, d, 486));
                continue;
            }
            if s.cancelling.contains(&(c, d)) {
                // The CANCEL races the device's answer.
                actions.push(Action::Respond(c, d, 487));
                actions.push(Action::Respond(c, d, 200));
                continue;
            }
            if self.ringing && !s.rang.contains(&(c, d)) {
                actions.push(Action::Ring(c, d));
            }
            for answer in &self.answers {
                actions.push(Action::Respond(c, d, answer.code()));
            }
            if s.budget.flow_failures > 0 {
                actions.push(Action::FlowFails(c, d));
            }
        }
        for &(c, d) in &s.flight {
            actions.push(Action::Arrive(c, d));
        }
        for &(c, d) in &s.lost {
            actions.push(Action::Undeliverable(c, d));
            let device = &s.devices[d.0 as usize];
            if device.udp && device.awake && !s.silenced.contains(&(c, d)) {
                actions.push(Action::Retransmitted(c, d));
            }
        }
        for &timer in &s.timers {
            actions.push(Action::Fire(timer));
        }
        if self.cluster {
            let reader = s.reader;
            if reader.restart.is_some() {
                actions.push(Action::ReaderResume);
            } else {
                if usize::from(reader.next) < s.stream.len() {
                    actions.push(Action::ReadNotice);
                }
                if s.budget.reader_reconnects > 0 {
                    if self.cluster_fault == Some(ClusterFault::PubSub) {
                        // Nothing to read again: it hears what is published from now on.
                        actions.push(Action::ReaderReconnect(s.stream.len() as u8));
                    } else {
                        for i in reader.floor..reader.next {
                            actions.push(Action::ReaderReconnect(i));
                        }
                    }
                }
                if s.budget.reader_restarts > 0 {
                    actions.push(Action::ReaderRestart);
                }
            }
        }
        if self.push_answers {
            for &(c, d) in &s.history.woken {
                let sent = |a| s.push_answers.contains(&(c, d, a));
                if sent(PushAnswer::Busy) || sent(PushAnswer::Decline) {
                    continue;
                }
                if !sent(PushAnswer::Ringing) {
                    actions.push(Action::PushAnswer(c, d, PushAnswer::Ringing));
                }
                actions.push(Action::PushAnswer(c, d, PushAnswer::Busy));
                actions.push(Action::PushAnswer(c, d, PushAnswer::Decline));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        // Checks made on the effects of this very step.
        let mut awake_at_arrival: Vec<DeviceId> = Vec::new();
        let mut undeliverable: Option<Pair> = None;
        let event = match action {
            Action::Invite => {
                let call = CallId(u64::from(s.invited));
                s.invited += 1;
                let targets = self
                    .device_ids()
                    .map(|d| {
                        let device = &s.devices[d.0 as usize];
                        let flow = Self::flow(device);
                        let known_awake = match flow {
                            Flow::Connected => true,
                            Flow::Datagram { heard_at, .. } => heard_at == Self::NOW,
                            Flow::Closed => false,
                        };
                        let ended_rings = s.cancelling.iter().any(|&(_, nd)| nd == d);
                        if known_awake && !ended_rings {
                            awake_at_arrival.push(d);
                        }
                        Target {
                            device: d,
                            flow,
                            pushable: !device.token_forgotten,
                        }
                    })
                    .collect();
                Event::CallArrived {
                    call,
                    aor: CALLEE,
                    waking_limit: None,
                    callee: Callee::Devices(targets),
                }
            }
            Action::Cancel(call) => {
                let caller = &mut s.callers[call.0 as usize];
                caller.cancelled = true;
                caller.cancelled_in_time = caller.response.is_none();
                Event::CallerCancelled { call }
            }
            Action::PushDelivered(call, device) => {
                s.pushes.remove(&(call, device));
                s.history.push_accepted.insert((call, device));
                s.history.woken.insert((call, device));
                let dev = &mut s.devices[device.0 as usize];
                dev.woken_for.insert(call);
                // A woken app listens again on its UDP address before it registers.
                dev.awake |= dev.udp;
                Event::PushAccepted { call, device }
            }
            Action::PushIgnored(call, device) => {
                s.pushes.remove(&(call, device));
                s.history.push_accepted.insert((call, device));
                Event::PushAccepted { call, device }
            }
            Action::PushLost(call, device) => {
                s.pushes.remove(&(call, device));
                s.history.push_accepted.insert((call, device));
                s.budget.lost_pushes -= 1;
                Event::PushAccepted { call, device }
            }
            Action::PushFailed(call, device, permanent) => {
                s.pushes.remove(&(call, device));
                if permanent {
                    s.budget.permanent_failures -= 1;
                    s.history.push_failed_for_good.insert((call, device));
                    s.devices[device.0 as usize].token_dead = true;
                } else {
                    s.budget.transient_failures -= 1;
                    s.history.may_retry.insert((call, device));
                }
                Event::PushFailed {
                    call,
                    device,
                    permanent,
                }
            }
            Action::Register(device) => {
                let dev = &mut s.devices[device.0 as usize];
                if dev.woken_for.is_empty() {
                    dev.registers_left -= 1;
                }
                dev.awake = true;
                dev.heard = true;
                for (i, caller) in s.callers.iter().enumerate().take(usize::from(s.invited)) {
                    if caller.response.is_none() {
                        s.history
                            .registered_during
                            .insert((CallId(i as u64), device));
                    }
                }
                for call in std::mem::take(&mut dev.woken_for) {
                    if !s.history.lingered.contains(&call) {
                        s.history.registered_after_wake.insert((call, device));
                    }
                }
                if self.cluster {
                    // Stored, and known to this node at once: its own REGISTER.
                    let dev = &mut s.devices[device.0 as usize];
                    dev.on_other = false;
                    dev.stored += 1;
                    dev.known = dev.stored;
                    dev.known_on_other = false;
                    Self::learn(&mut s, device);
                }
                Event::DeviceRegistered {
                    aor: CALLEE,
                    device,
                }
            }
            Action::RegisterElsewhere(device) => {
                let dev = &mut s.devices[device.0 as usize];
                if dev.woken_for.is_empty() {
                    dev.registers_left -= 1;
                }
                dev.awake = true;
                dev.on_other = true;
                dev.stored += 1;
                let number = dev.stored;
                for call in std::mem::take(&mut dev.woken_for) {
                    if !s.history.lingered.contains(&call) {
                        s.history.registered_elsewhere.insert((call, device));
                    }
                }
                // The binding and its notice, in one transaction: nothing reaches the core
                // until the parking node reads the notice (or loads the bindings).
                s.stream.push((device, number));
                return Some(s);
            }
            Action::ReadNotice => {
                let (device, number) = s.stream[usize::from(s.reader.next)];
                s.reader.next += 1;
                let dev = &mut s.devices[device.0 as usize];
                if number < dev.known {
                    // A later REGISTER of the device is known: the notice is stale.
                    return Some(s);
                }
                // The last REGISTER it knows of, or again (a notice read twice).
                dev.known = number;
                dev.known_on_other = true;
                Self::learn(&mut s, device);
                Event::DeviceRegistered {
                    aor: CALLEE,
                    device,
                }
            }
            Action::ReaderReconnect(index) => {
                s.budget.reader_reconnects -= 1;
                s.reader.next = index;
                s.reader.floor = index;
                return Some(s);
            }
            Action::ReaderRestart => {
                s.budget.reader_restarts -= 1;
                match self.cluster_fault {
                    // The design: record the stream's last id, then load (with pub/sub:
                    // subscribe, then load).
                    None | Some(ClusterFault::PubSub) => {
                        s.reader.next = s.stream.len() as u8;
                        s.reader.floor = s.reader.next;
                        s.reader.restart = Some(Restart::Recorded);
                    }
                    // Load, then subscribe from "now".
                    Some(ClusterFault::SubscribeAfterLoad) => {
                        self.load(&mut s);
                        s.reader.restart = Some(Restart::Loaded);
                    }
                }
                return Some(s);
            }
            Action::ReaderResume => {
                match s.reader.restart.take() {
                    Some(Restart::Recorded) => self.load(&mut s),
                    Some(Restart::Loaded) => {
                        s.reader.next = s.stream.len() as u8;
                        s.reader.floor = s.reader.next;
                    }
                    None => return None,
                }
                return Some(s);
            }
            Action::Sleep(device) => {
                s.budget.silent_sleeps -= 1;
                s.devices[device.0 as usize].awake = false;
                s.history.registered_elsewhere.retain(|&(_, d)| d != device);
                // Asleep, it can no longer learn anything until it registers again.
                s.history
                    .registered_after_wake
                    .retain(|&(_, d)| d != device);
                return Some(s);
            }
            Action::Retransmitted(call, device) => {
                s.lost.remove(&(call, device));
                if s.caller(call).response.is_some() && !s.notices.contains(&(call, device)) {
                    s.history.stale_invite_arrived = true;
                }
                let notice = s.notices.contains(&(call, device));
                self.deliver(&mut s, (call, device), notice, &mut Vec::new());
                Event::BranchTrying { call, device }
            }
            Action::Ring(call, device) => {
                s.rang.insert((call, device));
                Event::BranchRang { call, device }
            }
            Action::Arrive(call, device) => {
                let pair = (call, device);
                s.flight.remove(&pair);
                if !s.devices[device.0 as usize].awake {
                    // It fell asleep meanwhile: the INVITE is lost.
                    s.lost.insert(pair);
                    return Some(s);
                }
                s.silenced.remove(&pair);
                let notice = s.notices.contains(&pair);
                self.deliver(&mut s, pair, notice, &mut Vec::new());
                Event::BranchTrying { call, device }
            }
            Action::Respond(call, device, code) => {
                let notice = s.notices.contains(&(call, device));
                Self::close_branch(&mut s, (call, device));
                if code < 300 {
                    s.history.answered.insert((call, device));
                    let told_before = s
                        .history
                        .told
                        .iter()
                        .any(|&(c, d, _)| d == device && c != call);
                    if !notice && told_before {
                        s.history.answered_after_notice = true;
                    }
                    let dev = &mut s.devices[device.0 as usize];
                    dev.in_call.insert(call);
                    dev.heard = true;
                    Event::BranchAnswered { call, device }
                } else {
                    let caller = &mut s.callers[call.0 as usize];
                    if !notice && caller.response.is_none() && matches!(code, 486 | 603) {
                        caller.first_rejection.get_or_insert(code);
                    }
                    Event::BranchRejected { call, device, code }
                }
            }
            Action::FlowFails(call, device) => {
                // The INVITE never reached the device: it has not received the call, and
                // with its flow gone nothing more can reach it until it registers again.
                s.history.forwarded.remove(&(call, device));
                s.history
                    .registered_after_wake
                    .retain(|&(_, d)| d != device);
                s.history.registered_elsewhere.retain(|&(_, d)| d != device);
                Self::close_branch(&mut s, (call, device));
                s.budget.flow_failures -= 1;
                s.devices[device.0 as usize].awake = false;
                undeliverable = Some((call, device));
                Event::BranchUnreachable { call, device }
            }
            Action::Undeliverable(call, device) => {
                Self::close_branch(&mut s, (call, device));
                undeliverable = Some((call, device));
                Event::BranchUnreachable { call, device }
            }
            Action::Shutdown => {
                s.shut_down = true;
                Event::ShuttingDown
            }
            Action::PushAnswer(call, device, answer) => {
                s.push_answers.insert((call, device, answer));
                Event::PushAnswered {
                    call,
                    device,
                    answer,
                }
            }
            Action::BindingExpiring(device) => {
                s.devices[device.0 as usize].expiry_reported = true;
                Event::BindingExpiring {
                    aor: CALLEE,
                    device,
                    token: self.token_use(device),
                }
            }
            Action::Fire(timer) => {
                s.timers.remove(&timer);
                match timer {
                    Timer::Deadline(call) => s.callers[call.0 as usize].deadline_fired = true,
                    Timer::Linger(call) => {
                        s.history.lingered.insert(call);
                    }
                    Timer::PushRetry(..) => {}
                }
                Event::TimerFired(timer)
            }
        };
        // What a fallback push must look like, judged before the step.
        let fallback_due = undeliverable.filter(|&(c, d)| {
            let caller = s.caller(c);
            let device = &s.devices[d.0 as usize];
            caller.response.is_none()
                && !caller.deadline_fired
                && !device.token_dead
                && !device.token_forgotten
                && !s.history.registered_during.contains(&(c, d))
                && !last.cancelling.contains(&(c, d))
                && !last.notices.contains(&(c, d))
        });
        let mut effects = Vec::new();
        s.core.step(Self::NOW, event, &mut effects);
        for &d in &awake_at_arrival {
            let call = CallId(u64::from(s.invited) - 1);
            let forwarded = effects.contains(&Effect::Forward { call, device: d });
            let refused = effects.iter().any(|e| matches!(e, Effect::Respond { .. }));
            if !forwarded && !refused {
                s.history.awake_not_forwarded = true;
            }
        }
        if let Action::PushAnswer(call, device, answer) = action {
            Self::judge_reply(&mut s, (call, device), answer, &effects);
        }
        if let Some((c, d)) = undeliverable {
            if effects.contains(&Effect::Push { call: c, device: d }) {
                s.history.fallback_pushed.insert((c, d));
            }
        }
        if let Action::Invite = action {
            let call = CallId(u64::from(s.invited) - 1);
            for d in self.device_ids() {
                let device = &s.devices[d.0 as usize];
                let forward = Effect::Forward { call, device: d };
                if device.udp && device.awake && effects.contains(&forward) {
                    s.history.reached_awake.insert((call, d));
                }
            }
        }
        let trying = self.apply(&mut s, effects);
        self.settle(&mut s, trying);
        if let Some(pair) = fallback_due {
            if !s.pushes.contains(&pair) && !s.history.push_accepted.contains(&pair) {
                s.history.dead_flow_not_pushed = true;
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }

    fn format_action(&self, action: &Action) -> String {
        let fault = self.cluster_fault;
        let first = fault != Some(ClusterFault::SubscribeAfterLoad);
        match action {
            Action::ReaderReconnect(_) if fault == Some(ClusterFault::PubSub) => {
                "server's reader: reconnects, subscribes again (pub/sub)".into()
            }
            Action::ReaderRestart if first => {
                "server's reader: starts again, records the stream's last id".into()
            }
            Action::ReaderRestart => "server's reader: starts again, loads the bindings".into(),
            Action::ReaderResume if first => "server's reader: loads the bindings".into(),
            Action::ReaderResume => "server's reader: subscribes from now ($)".into(),
            _ => action.to_string(),
        }
    }
}
