//! What happened: the inputs of [`Core::step`](crate::Core::step).

use crate::{AorId, CallId, DeviceId, Timer};

/// Something the runtime observed. Each carries only what the decision needs; the SIP
/// messages themselves stay in the runtime, keyed by the same ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A caller's INVITE for a local address-of-record passed the proxy's checks.
    CallArrived {
        call: CallId,
        aor: AorId,
        callee: Callee,
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
    /// The device sent a provisional response (180/183) on the forwarded INVITE.
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
    /// The forwarded INVITE could not be sent, or its flow failed before any response
    /// (connection closed, 430 Flow Failed): the device is asleep after all.
    BranchUnreachable { call: CallId, device: DeviceId },
    /// A timer the core armed has fired.
    TimerFired(Timer),
}

/// Who the INVITE is for, as the registrar knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Callee {
    /// No such user in the domain.
    Unknown,
    /// A known user and its devices (possibly none).
    Devices(Vec<Target>),
}

/// One device of the callee when the call arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub device: DeviceId,
    /// It has a live flow: the INVITE can be sent now.
    pub reachable: bool,
    /// It registered a push token (RFC 8599 pn-provider and pn-prid).
    pub pushable: bool,
}
