//! Deliberate defects, one per bug the checker must catch. Only the checker's fault tests
//! build a core with one (`Core::with_fault`, behind the `checker` feature); the server's
//! core never has one.

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
}

impl Fault {
    /// Every fault, for tests that go through them all.
    pub const ALL: [Fault; 8] = [
        Fault::KeepDeadlineOnAnswer,
        Fault::ForwardAfterCancel,
        Fault::PushTwice,
        Fault::PushAfterWake,
        Fault::LoseBusyCode,
        Fault::LeakFinishedCall,
        Fault::IgnoreCancelWhileParked,
        Fault::NoDeadline,
    ];
}
