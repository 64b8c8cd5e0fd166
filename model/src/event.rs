//! What happened: the inputs of [`Core::step`](crate::Core::step).

use crate::{AorId, CallId, DeviceId, Millis, Timer};

/// Something the runtime observed. Each carries only what the decision needs; the SIP
/// messages themselves stay in the runtime, keyed by the same ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A caller's INVITE for a local address-of-record passed the proxy's checks.
    CallArrived {
        call: CallId,
        aor: AorId,
        callee: Callee,
        /// The callee's own limit of calls waking its devices at once, where the operator
        /// set one (a call centre's number), instead of `Config::max_calls_per_callee`.
        waking_limit: Option<usize>,
    },
    /// The caller sent a CANCEL for the INVITE.
    CallerCancelled { call: CallId },
    /// A device of `aor` registered and was answered 200: it is reachable over a live flow
    /// now. Sent again for every further accepted REGISTER (refresh, retransmission).
    DeviceRegistered { aor: AorId, device: DeviceId },
    /// A device of `aor` will not take parked calls: it de-registered, its binding expired,
    /// or its wake-up REGISTER was refused (anything but a digest challenge).
    DeviceUnavailable { aor: AorId, device: DeviceId },
    /// The push service accepted the push for (`call`, `device`).
    PushAccepted { call: CallId, device: DeviceId },
    /// The push service refused the push. `permanent`: the token is dead (APNs 410,
    /// FCM UNREGISTERED); otherwise it may succeed later (429, 5xx, time-out).
    PushFailed {
        call: CallId,
        device: DeviceId,
        permanent: bool,
    },
    /// The device answered an INVITE forwarded to it with 100 Trying: it holds the INVITE
    /// (a UA sends it at once, RFC 3261 §17.2.1), but does not ring yet.
    BranchTrying { call: CallId, device: DeviceId },
    /// The device sent a provisional response (180/183) on the INVITE forwarded to it: it
    /// holds the INVITE, and rings.
    BranchRang { call: CallId, device: DeviceId },
    /// The device answered the forwarded INVITE with a 2xx (first one only).
    BranchAnswered { call: CallId, device: DeviceId },
    /// The forwarded INVITE ended with a final response `code` (300–699), from the device
    /// or from the client transaction (408 on Timer B/C).
    BranchRejected {
        call: CallId,
        device: DeviceId,
        code: u16,
    },
    /// The forwarded INVITE never reached the device: it could not be sent, its connection
    /// closed before a final response, the device's edge answered 430 Flow Failed (RFC 5626
    /// §7), or no response at all came back before Timer B (RFC 3261 §17.1.1.2). The device
    /// is asleep after all.
    BranchUnreachable { call: CallId, device: DeviceId },
    /// A timer the core armed has fired.
    TimerFired(Timer),
    /// The binding of `device` (a binding of `aor` with a push token) expires before the
    /// registrar's next sweep plus its refresh margin, and no binding-refresh push went out
    /// for this expiry yet (RFC 8599 §5.5). `token` is what the device's push token may
    /// carry. Whether it gets a refresh push is the core's decision
    /// ([`Effect::RefreshPush`](crate::Effect::RefreshPush), specs/parking.md §7).
    BindingExpiring {
        aor: AorId,
        device: DeviceId,
        token: TokenUse,
    },
    /// The server is shutting down (SIGTERM): every call in progress ends now, and a call
    /// arriving from now on is refused (specs/parking.md §4, graceful drain).
    ShuttingDown,
    /// The app of `device`, woken by the push for `call`, answered from the push itself,
    /// over the app API and without starting its SIP stack (specs/parking.md §9). The
    /// runtime has checked the answer token: only the pushed device can answer, and only for
    /// that call. The core answers with [`Effect::ReplyToApp`](crate::Effect::ReplyToApp).
    PushAnswered {
        call: CallId,
        device: DeviceId,
        answer: PushAnswer,
    },
}

/// What an app may answer from the push, before (or instead of) registering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PushAnswer {
    /// The user is busy (on another call, "do not disturb"): as a SIP 486 Busy Here from
    /// the device, it waits for the other devices of the callee.
    Busy,
    /// The user declined the call: as a SIP 603 Decline from the device, it ends the call.
    Decline,
    /// The app shows the call and will register to take it: the caller may hear ringback
    /// now instead of after the wake-up.
    Ringing,
}

impl PushAnswer {
    /// The SIP final response the answer stands for; `None` for [`PushAnswer::Ringing`].
    pub fn code(self) -> Option<u16> {
        match self {
            PushAnswer::Busy => Some(486),
            PushAnswer::Decline => Some(603),
            PushAnswer::Ringing => None,
        }
    }
}

/// What a device's push token may carry: a fact of its push service, which the runtime
/// knows from the binding's RFC 8599 `pn-provider`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenUse {
    /// Only pushes for a call the app reports as one: an APNs VoIP (PushKit) token
    /// (`pn-provider` `apns` or `apns.dev`). iOS 13 and later kill an app that receives a
    /// VoIP push it does not report to CallKit as an incoming call, and stop delivering its
    /// VoIP pushes after repeated offences, so such a token never carries anything but the
    /// push of a live call.
    CallsOnly,
    /// Any push, the app decides what it shows: FCM data messages, a webhook gateway, the
    /// log provider.
    Any,
}

/// Who the INVITE is for, as the registrar knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Callee {
    /// No such user in the domain. Answered like a known user with no usable binding
    /// (480), so that nobody can list the users.
    Unknown,
    /// A known user and its devices (possibly none).
    Devices(Vec<Target>),
}

/// One device of the callee when the call arrives: the facts the runtime has about it. The
/// core judges from them whether the device is awake (see [`Flow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub device: DeviceId,
    /// The flow the device last registered over, as the runtime sees it now.
    pub flow: Flow,
    /// It registered a push token (RFC 8599 pn-provider and pn-prid).
    pub pushable: bool,
}

/// What the runtime knows of a device's flow. The runtime reports facts; whether the device
/// counts as awake is the core's judgement (`Config::awake_window`, specs/parking.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flow {
    /// No flow is open: the device is asleep, or gone.
    Closed,
    /// A connection (TCP, TLS) that is open: a request sent over it reaches the app, or the
    /// runtime learns that it did not (the connection closes, a send fails).
    Connected,
    /// A connectionless flow (UDP): nothing says whether the app still listens on it.
    Datagram {
        /// When a message last came from the flow.
        heard_at: Millis,
        /// A dialog record-routed through this server is up on the flow: the app is in a
        /// call.
        in_dialog: bool,
    },
}
