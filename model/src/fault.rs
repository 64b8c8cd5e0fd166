//! Deliberate defects, one per bug the checker must catch. Only the checker's fault tests
//! and the runtime's whole-node simulation build a core with one (`Core::with_fault`,
//! behind the `faults` feature); the server's core never has one.

/// A way to break the core on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The park deadline stays armed after the call is answered.
    KeepDeadlineOnAnswer,
    /// A device that registers after its caller cancelled gets the INVITE anyway.
    ForwardAfterCancel,
    /// A device is pushed a second time as soon as its first push is accepted.
    PushTwice,
    /// A device that wakes during a push back-off keeps its retry timer, and the retry
    /// pushes it although it already has the call.
    PushAfterWake,
    /// Busy and decline answers are forgotten when choosing the caller's response.
    LoseBusyCode,
    /// A cancelled branch's final response does not let the ended call go.
    LeakFinishedCall,
    /// A CANCEL is ignored while no branch has been forwarded yet.
    IgnoreCancelWhileParked,
    /// No park deadline is ever armed.
    NoDeadline,
    /// A woken device is told of its ended calls at once on registering, ahead of or beside
    /// its live calls, and live calls are not held back while a notice rings (the order the
    /// runtime used before the core decided it).
    NoticeBeforeLiveCall,
    /// A device on a connectionless flow is taken to be asleep however recently it was
    /// heard from, even in a call: it is only pushed, and an awake app does not register
    /// for a push.
    AwakeDeviceTakenAsleep,
    /// A forwarded branch whose flow died ends the device's leg instead of pushing it.
    NoFallbackPush,
    /// A device that registers while its INVITE has had no provisional is not sent that
    /// INVITE over its fresh flow.
    NoReroute,
    /// A call that ends keeps retransmitting the INVITE a device never answered, to cancel
    /// it once it rings (instead of stopping it).
    KeepProbing,
    /// A binding-refresh push goes to a calls-only (APNs VoIP) token as to any other, so an
    /// iOS app gets a VoIP push for no call.
    RefreshCallsOnlyToken,
    /// A shutdown refuses new calls but leaves the calls in progress to their deadlines:
    /// their callers wait on a server that is going away.
    ShutdownLeavesCalls,
    /// A device that answered busy from its push still gets the INVITE when it registers.
    RegisterAfterBusyDelivers,
    /// An answer from the push for a call that has ended is taken (the app is told it
    /// counted, and the device's leg closed) instead of changing nothing.
    StaleAnswerTaken,
    /// Whether the caller heard ringing is judged from the legs that rang, which forget it
    /// when their branch fails: an app ringing from its push then gets the caller a 180 of
    /// ours after a device's own (found by the whole-node simulation).
    RingbackAfterRelayedRing,
}

impl Fault {
    /// Every fault, for tests that go through them all.
    pub const ALL: [Fault; 18] = [
        Fault::KeepDeadlineOnAnswer,
        Fault::ForwardAfterCancel,
        Fault::PushTwice,
        Fault::PushAfterWake,
        Fault::LoseBusyCode,
        Fault::LeakFinishedCall,
        Fault::IgnoreCancelWhileParked,
        Fault::NoDeadline,
        Fault::NoticeBeforeLiveCall,
        Fault::AwakeDeviceTakenAsleep,
        Fault::NoFallbackPush,
        Fault::NoReroute,
        Fault::KeepProbing,
        Fault::RefreshCallsOnlyToken,
        Fault::ShutdownLeavesCalls,
        Fault::RegisterAfterBusyDelivers,
        Fault::StaleAnswerTaken,
        Fault::RingbackAfterRelayedRing,
    ];
}
