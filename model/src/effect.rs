//! What to do: the outputs of [`Core::step`](crate::Core::step), executed by the runtime
//! (and by the model's environment) in the order given.

use crate::{CallId, DeviceId, Millis};

/// One instruction of the core.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Send a VoIP push to `device` for `call`; answer with `PushAccepted` or `PushFailed`.
    Push { call: CallId, device: DeviceId },
    /// Send the caller's INVITE to `device` over its live flow (a new client transaction).
    Forward { call: CallId, device: DeviceId },
    /// The device registered again while the INVITE forwarded to it has had no provisional:
    /// send that same INVITE (the same client transaction, a retransmission) over the
    /// device's fresh flow. A device that already holds it absorbs it as a retransmission
    /// (RFC 3261 §17.2.1); one that never got it (it slept) gets it now, once.
    Reroute { call: CallId, device: DeviceId },
    /// The call ended while the INVITE forwarded to the device has had no response at all
    /// (the device never got it): stop that INVITE's client transaction without a CANCEL (none may
    /// follow an INVITE without a provisional, RFC 3261 §9.1) and without retransmitting it,
    /// as if it had ended 487 (Kamailio's `cancel_b_method = 0`). Nothing more comes back
    /// to the core about it; a 2xx the device may still send on it is hung up by the
    /// runtime.
    DropBranch { call: CallId, device: DeviceId },
    /// Send a CANCEL on the branch forwarded to `device`. Its final response still comes
    /// back as `BranchRejected` (487), `BranchAnswered` (a 2xx that won the race) or
    /// `BranchUnreachable`.
    CancelBranch { call: CallId, device: DeviceId },
    /// The branch to `device` answered 2xx after the call was over: acknowledge that 2xx and
    /// send BYE, so the device does not stay in a call nobody is on.
    HangUpBranch { call: CallId, device: DeviceId },
    /// Relay the provisional response the device just sent to the caller.
    RelayProvisional { call: CallId, device: DeviceId },
    /// The caller's final response. `relay`: send the response that device sent (200,
    /// 486, 603, 408...); `None`: generate `code` here (404, 480, 486, 487, 500, 503).
    Respond {
        call: CallId,
        code: u16,
        relay: Option<DeviceId>,
    },
    /// Arm `timer` to fire at `at` (re-arming moves it).
    ArmTimer { timer: Timer, at: Millis },
    /// Disarm `timer`; a late `TimerFired` for it is ignored anyway.
    DisarmTimer { timer: Timer },
    /// The push service says this device's token is dead: drop the token from its binding.
    ForgetPushToken { device: DeviceId },
    /// Send the device a binding-refresh push (RFC 8599 §5.5), for no call: its binding
    /// expires soon and the app should register again. Nothing comes back to the core; a
    /// dead token in the push service's answer is forgotten by the runtime. The core emits
    /// it only for a token that may carry any push, and not while a push for a call is on
    /// its way to the device or the core waits for the device to wake from one
    /// (specs/parking.md §7).
    RefreshPush { device: DeviceId },
    /// The device registered after the call it was pushed for had ended: tell it, so the
    /// app can close its CallKit screen. The runtime sends the INVITE and, as soon as RFC
    /// 3261 §9.1 allows, a CANCEL with this reason (specs/parking.md §6). The branch's end
    /// comes back like any other: `BranchRejected` (487), `BranchAnswered` (hung up) or
    /// `BranchUnreachable`. The core never sends a notice while the device has another
    /// INVITE of this server in progress, and holds live INVITEs back while a notice is.
    TellEnded {
        call: CallId,
        device: DeviceId,
        reason: EndReason,
    },

    /// Send the caller a `180 Ringing` of the server's own (an app showed the call from its
    /// push and will register): at most once per call, and not once a device's own
    /// ringing was relayed (specs/parking.md §9).
    Ringback { call: CallId },
    /// The core's answer to an app that answered from the push ([`Event::PushAnswered`]):
    /// what the app API tells the app.
    ///
    /// [`Event::PushAnswered`]: crate::Event::PushAnswered
    ReplyToApp {
        call: CallId,
        device: DeviceId,
        reply: AppReply,
    },
}

/// What became of an answer from the push.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AppReply {
    /// Taken, now or by an earlier identical answer: the call goes on as if the device had
    /// answered so over SIP.
    Taken,
    /// The call is over (or unknown): the answer changes nothing.
    CallOver,
    /// The device has the call over SIP already (its INVITE was sent), or answered
    /// otherwise before: the answer changes nothing; the app answers over SIP.
    Conflict,
}

/// The timers of the protocol; each names what it guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// The park deadline of a call.
    Deadline(CallId),
    /// The back-off before pushing `device` again after a transient failure.
    PushRetry(CallId, DeviceId),
    /// The end of the ended-notice window of a finished call.
    Linger(CallId),
}

/// Why a call that woke a device ended without it, as told to that device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndReason {
    /// Another device answered.
    AnsweredElsewhere,
    /// Another device declined (6xx).
    DeclinedElsewhere,
    /// The caller cancelled.
    CallerCancelled,
    /// The call ended otherwise: park deadline, busy elsewhere, nobody reachable.
    Unanswered,
}
