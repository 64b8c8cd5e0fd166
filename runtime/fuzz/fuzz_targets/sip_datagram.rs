//! A UDP datagram, as the server receives it: parsed, then read through every typed view
//! a server uses (validation, Via, CSeq, Contact, From/To/Route, the Request-URI), then
//! forwarded and answered. No input may panic; see `common` for the invariants checked.

#![no_main]

mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pushpark::sip::{parse_datagram, parse_datagram_bytes, Message};

fuzz_target!(|data: &[u8]| {
    let owned = parse_datagram_bytes(Bytes::copy_from_slice(data));
    // The copying and the zero-copy entry points agree.
    assert_eq!(owned, parse_datagram(data));
    assert_eq!(owned, Message::parse(data));
    let Ok(message) = owned else {
        return;
    };
    // A parsed message's own octets parse to the same message (leading CRLFs and octets
    // after the body are not part of them).
    assert_eq!(parse_datagram(message.as_bytes()).as_ref(), Ok(&message));
    common::exercise_message(&message);
});
