//! Test user agents for pushpark's end-to-end tests: they talk to a real server over real
//! sockets on 127.0.0.1 (UDP or TCP), built on `rsip` 0.4 and `tokio`.
//!
//! * [`SipSocket`]: one UDP socket, a set of TCP connections (Content-Length framing,
//!   CRLFCRLF keep-alive pings answered with CRLF), or one TLS connection whose certificate
//!   is checked against the test authority ([`tls`]), bound on 127.0.0.1:0.
//! * [`Caller`]: a UAC placing one call at a time: INVITE, CANCEL, ACK, BYE; answers BYE.
//! * [`Device`]: a phone app with RFC 8599 push parameters that REGISTERs (with digest auth),
//!   sleeps (keeps no socket), wakes (new socket, REGISTER again) and answers INVITEs per a
//!   [`Behaviour`], recording every request it receives.
//! * [`PushGateway`]: an HTTP server standing in for the push service that the server's
//!   `webhook` provider POSTs to; it records pushes, answers per token, and wakes devices.
//!
//! Every receive takes a timeout and fails with [`UaError::Timeout`] when it runs out, so a
//! test can never hang on a missing message.
//!
//! Include with `mod ua;` from a file in `runtime/tests/`.

// Each test file that says `mod ua;` compiles its own copy of this module and uses only part
// of it, so items (and re-exports) unused by that one file would be reported as dead code.
#![allow(dead_code, unused_imports)]

mod caller;
mod device;
pub mod digest;
mod gateway;
mod log;
pub mod sip;
mod socket;
pub mod tls;

use std::fmt;
use std::time::Duration;

pub use caller::Caller;
pub use device::{Behaviour, Device};
pub use digest::{Credentials, DigestAlgorithm};
pub use gateway::{GatewayRule, Push, PushBody, PushGateway};
pub use log::ReceivedRequest;
pub use sip::{Expect, MessageExt};
pub use socket::{SipSocket, Transport};

/// A receive timeout that suits most steps against a server on loopback.
pub const STEP: Duration = Duration::from_secs(5);

/// Why a UA operation failed.
#[derive(Debug)]
pub enum UaError {
    /// Nothing matching arrived in time; the text says what was awaited.
    Timeout(String),
    /// A socket failed.
    Io(std::io::Error),
    /// Bytes that are not a SIP message, or a message missing what the UA needs.
    Parse(String),
    /// A message arrived, but not the one expected (e.g. a 486 while waiting for a 200).
    Unexpected(String),
    /// The UA is not in a state that allows the operation (e.g. `bye()` with no dialog).
    State(String),
}

impl fmt::Display for UaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UaError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            UaError::Io(e) => write!(f, "socket error: {e}"),
            UaError::Parse(what) => write!(f, "parse error: {what}"),
            UaError::Unexpected(what) => write!(f, "unexpected: {what}"),
            UaError::State(what) => write!(f, "wrong state: {what}"),
        }
    }
}

impl std::error::Error for UaError {}

impl From<std::io::Error> for UaError {
    fn from(e: std::io::Error) -> Self {
        UaError::Io(e)
    }
}

/// Result of a UA operation.
pub type UaResult<T> = Result<T, UaError>;
