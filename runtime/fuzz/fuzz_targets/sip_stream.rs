//! A TCP/TLS byte stream, framed by `frame_stream` as a connection does: once whole, and
//! once as it arrives in pieces (the first octets of the input choose the piece sizes).
//!
//! Input: `n` (one octet, taken modulo 32), then `n` octets of piece sizes (0 stands for
//! 256), then the stream; whatever is left after the `n` pieces arrives as one last piece.
//!
//! The invariant: how the stream is cut into messages does not depend on how it arrived.
//! Both runs give the same messages (octets and parse), the same fatal error if any, and
//! consume the same octets. Only keep-alives may be cut differently: a CRLF at the end of
//! what has arrived is taken as a pong at once (`frame_stream(b"\r\n")`), where the whole
//! stream may have had a CRLFCRLF ping there. So runs of keep-alive frames are compared
//! by the octets they consumed, and a tail of CR/LF left unconsumed counts as keep-alive.
//!
//! What a framed message then goes through is `sip_datagram`'s business (a framed message
//! parses exactly as a datagram of its octets does: checked here too).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pushpark::sip::{frame_stream, parse_datagram, Frame, Message, ParseError};

/// What a connection makes of a stream, normalised for comparison.
#[derive(Debug, PartialEq)]
enum Event {
    /// A run of keep-alive frames (pings, pongs, stray line breaks): how many octets.
    KeepAlive(usize),
    /// A message and the octets it took.
    Message(usize, Message),
    /// The connection is closed on this error.
    Fatal(ParseError),
    /// Octets left waiting for more (not only CR/LF).
    Pending(usize),
}

#[derive(Default)]
struct Connection {
    buffer: Vec<u8>,
    events: Vec<Event>,
    closed: bool,
}

impl Connection {
    fn keep_alive(&mut self, n: usize) {
        if let Some(Event::KeepAlive(k)) = self.events.last_mut() {
            *k += n;
        } else {
            self.events.push(Event::KeepAlive(n));
        }
    }

    /// Some octets arrive: frame all that can be framed, as the transport does.
    fn receive(&mut self, piece: &[u8]) {
        if self.closed {
            return;
        }
        self.buffer.extend_from_slice(piece);
        loop {
            match frame_stream(&self.buffer) {
                Ok(None) => return,
                Ok(Some((consumed, frame))) => {
                    assert!(consumed > 0 && consumed <= self.buffer.len());
                    match frame {
                        Frame::Ping => {
                            assert_eq!(&self.buffer[..consumed], b"\r\n\r\n");
                            self.keep_alive(consumed);
                        }
                        Frame::Pong => {
                            assert!(self.buffer[..consumed]
                                .iter()
                                .all(|&b| b == b'\r' || b == b'\n'));
                            self.keep_alive(consumed);
                        }
                        Frame::Message(message) => {
                            assert_eq!(message.as_bytes(), &self.buffer[..consumed]);
                            assert_eq!(parse_datagram(message.as_bytes()).as_ref(), Ok(&message));
                            self.events.push(Event::Message(consumed, message));
                        }
                    }
                    self.buffer.drain(..consumed);
                }
                Err(e) => {
                    // Only the stream's own errors: never a datagram's verdict.
                    assert!(e.is_fatal_for_stream());
                    assert!(!matches!(
                        e,
                        ParseError::Empty
                            | ParseError::KeepAlive
                            | ParseError::UnterminatedHead
                            | ParseError::BodyTruncated
                    ));
                    self.events.push(Event::Fatal(e));
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// The stream ends: what was left over.
    fn finish(mut self) -> Vec<Event> {
        if !self.closed && !self.buffer.is_empty() {
            if self.buffer.iter().all(|&b| b == b'\r' || b == b'\n') {
                let n = self.buffer.len();
                self.keep_alive(n);
            } else {
                self.events.push(Event::Pending(self.buffer.len()));
            }
        }
        self.events
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 32).min(rest.len());
    let (sizes, stream) = rest.split_at(n);

    let mut whole = Connection::default();
    whole.receive(stream);
    let whole = whole.finish();

    let mut pieces = Connection::default();
    let mut at = 0;
    for &size in sizes {
        let size = if size == 0 { 256 } else { usize::from(size) };
        let end = (at + size).min(stream.len());
        pieces.receive(&stream[at..end]);
        at = end;
    }
    pieces.receive(&stream[at..]);
    let pieces = pieces.finish();

    assert_eq!(whole, pieces);
});
