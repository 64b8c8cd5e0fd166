//! Error types of the SIP message layer.

use super::message::{MAX_LINE, MAX_MESSAGE};

/// A message could not be framed or its structure (start line, header lines) is broken.
///
/// A transport cannot answer such a message (it may not even know where it came from in SIP
/// terms): over UDP it drops the datagram, over a stream it closes the connection when
/// [`ParseError::is_fatal_for_stream`] says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but CR/LF octets (a UDP keep-alive): not an error, just nothing to parse.
    #[error("keep-alive (CR/LF octets only)")]
    KeepAlive,
    /// The input is empty.
    #[error("empty message")]
    Empty,
    /// The start line is neither a request line nor a status line.
    #[error("malformed start line")]
    BadStartLine,
    /// A header line has no `:`.
    #[error("header line without colon")]
    MissingColon,
    /// A header name is empty or holds non-token characters, or a continuation line
    /// appears before the first header.
    #[error("invalid header name")]
    BadHeaderName,
    /// The header section does not end (no empty line and the datagram ends mid-line).
    #[error("header section not terminated")]
    UnterminatedHead,
    /// One physical line is longer than [`MAX_LINE`] octets.
    #[error("line longer than {MAX_LINE} octets")]
    LineTooLong,
    /// The message (header section plus body) is longer than [`MAX_MESSAGE`] octets.
    #[error("message longer than {MAX_MESSAGE} octets")]
    MessageTooLarge,
    /// UDP: Content-Length announces more octets than the datagram holds (RFC 4475 clerr).
    #[error("Content-Length exceeds the datagram")]
    BodyTruncated,
    /// Stream: a message without Content-Length cannot be framed (RFC 3261 §18.3).
    #[error("missing Content-Length on a stream transport")]
    MissingContentLength,
    /// Stream: Content-Length is negative or not a number (RFC 4475 ncl).
    #[error("malformed Content-Length")]
    BadContentLength,
    /// Stream: more than one Content-Length header (RFC 4475 mcl01).
    #[error("multiple Content-Length headers")]
    MultipleContentLength,
}

impl ParseError {
    /// The status code a transport would use if it could answer: 513 for oversize input,
    /// 400 otherwise (0 for [`ParseError::KeepAlive`], which is not an error).
    pub fn status_code(&self) -> u16 {
        match self {
            ParseError::KeepAlive => 0,
            ParseError::LineTooLong | ParseError::MessageTooLarge => 513,
            _ => 400,
        }
    }

    /// On a stream transport the framing is lost after this error: close the connection.
    /// (Every structural error is fatal on a stream: there is no way to resynchronise.)
    pub fn is_fatal_for_stream(&self) -> bool {
        !matches!(self, ParseError::KeepAlive)
    }
}

/// A header value (or the Request-URI) does not match the grammar of its typed view.
///
/// The payload names the element (`"Via"`, `"CSeq"`, `"URI"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0}")]
pub struct SyntaxError(pub &'static str);
