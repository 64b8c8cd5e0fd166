//! The SIP message layer of pushpark: framing, a zero-copy message model, typed header
//! views, request validation for a proxy, and serialisation of forwarded messages and
//! generated responses.
//!
//! # Why an own wire parser next to rsip
//!
//! The project uses rsip 0.4, and this module uses it where it is right: [`rsip::Method`]
//! for the known methods ([`Method::Known`]) and [`rsip::StatusCode`] for status codes
//! ([`Message::status_code`], [`Rejection::status_code`]). The wire parser is our own,
//! because rsip 0.4.0, measured on this project's machine, cannot carry a push proxy:
//!
//! * an IPv6 Request-URI (`sip:bob@[::1]:5060`) makes `SipMessage::try_from` fail for the
//!   **whole message**, and typed Via / Contact with IPv6 fail (RFC 5118 corpus);
//! * compact header names (`v:`, `i:`, `f:`, `m:`, `l:`) parse, but `via_header()` /
//!   `call_id_header()` then report the header missing (RFC 3261 §7.3.3, RFC 4475 wsinv);
//! * a Contact with `+sip.instance="<urn:uuid:...>"` (every Linphone / iOS / Android
//!   REGISTER, RFC 5626) fails to tokenize;
//! * `Authorization: Digest ... algorithm=SHA-256` (RFC 8760) fails;
//! * its `Method` parser is case-insensitive (`invite` would be INVITE; RFC 3261 methods
//!   are case-sensitive), and `StatusCode`'s Display gives variant names (`"404 NotFound"`),
//!   so reason phrases come from [`default_reason`];
//! * it parses every header into owned values up front (~3 µs for a 0.5 KB INVITE); a
//!   proxy needs only a few headers of each message, once.
//!
//! # Design
//!
//! [`parse_datagram`] / [`frame_stream`] index the start line and header lines once
//! (memchr over lines, header names classified into [`HeaderName`] with compact forms and
//! case folded, folded lines unfolded). The message keeps its bytes in [`bytes::Bytes`];
//! typed views ([`Via`], [`NameAddr`], [`Contact`], [`CSeq`], [`SipUri`], ...) borrow from
//! it and are parsed only when asked for. [`validate_request`] turns the RFC 3261 §8.2 /
//! §16.3 checks and the RFC 4475 / RFC 5118 verdicts into a status code and a reason
//! phrase; [`validate_response`] says which responses to drop. [`Message::forward`]
//! re-serialises with proxy edits and copies untouched headers byte-for-byte;
//! [`Message::response`] builds a response to a request.
//!
//! Limits: one physical line ≤ [`MAX_LINE`] (8 KiB), one message ≤ [`MAX_MESSAGE`]
//! (64 KiB); beyond that the error maps to 513 Message Too Large.
//!
//! Nothing here panics on any input (see the fuzz-style tests).

mod error;
mod message;
mod name;
mod serialize;
mod syntax;
mod typed;
mod uri;
mod validate;

pub use self::error::{ParseError, SyntaxError};
pub use self::message::{
    frame_stream, parse_datagram, parse_datagram_bytes, stream_head, ContentLength, Frame,
    HeaderField, Message, Method, StartLine, MAX_LINE, MAX_MESSAGE,
};
pub use self::name::HeaderName;
pub use self::serialize::{Forward, RequestBuilder, ResponseBuilder};
pub use self::syntax::{unescape, unquote, CommaSplit, Param, Params};
pub use self::typed::{parse_decimal_u32, CSeq, Contact, ContentType, NameAddr, Via};
pub use self::uri::{Host, SipUri, Uri};
pub use self::validate::{
    default_reason, validate_request, validate_response, DropResponse, Rejection,
};

#[cfg(test)]
mod fuzz_tests;
