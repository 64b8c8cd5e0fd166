//! Time and identifiers. All of them come in from outside: the runtime reads the clock and
//! numbers calls, devices and callees; the model hands in small, dense values.

use std::fmt;

/// Milliseconds since an epoch chosen by the caller of [`Core::step`](crate::Core::step).
/// Only differences matter; the core never reads a clock.
pub type Millis = u64;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id!(
    /// One INVITE transaction from a caller: the call the core parks, forwards and ends.
    /// Never reused while the core may still hear of it.
    CallId,
    "c"
);
id!(
    /// One device of a callee: a binding (a Contact, or a `+sip.instance`) in the registrar.
    DeviceId,
    "d"
);
id!(
    /// A callee: an address-of-record in the local domain.
    AorId,
    "u"
);
