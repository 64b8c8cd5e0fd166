//! The message model and the framers (UDP datagram, TCP/TLS stream).

use std::ops::Range;

use bytes::Bytes;

use super::error::{ParseError, SyntaxError};
use super::name::HeaderName;
use super::syntax::{is_token_char, trim_lws, CommaSplit};

/// Longest physical line accepted (start line or one header line; folded headers may span
/// several lines of this size). Longer → [`ParseError::LineTooLong`] (maps to 513).
pub const MAX_LINE: usize = 8 * 1024;
/// Longest message accepted (header section plus body; UDP cannot carry more anyway).
/// Longer → [`ParseError::MessageTooLarge`] (maps to 513).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A request method: the ones rsip knows (matched case-sensitively, as RFC 3261 requires)
/// or an extension token (RFC 4475 intmeth, esc02 `RE%47IST%45R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// A method known to rsip.
    Known(rsip::Method),
    /// Any other token.
    Extension(Box<str>),
}

const KNOWN_METHODS: [(&str, rsip::Method); 14] = [
    ("INVITE", rsip::Method::Invite),
    ("ACK", rsip::Method::Ack),
    ("BYE", rsip::Method::Bye),
    ("CANCEL", rsip::Method::Cancel),
    ("REGISTER", rsip::Method::Register),
    ("OPTIONS", rsip::Method::Options),
    ("INFO", rsip::Method::Info),
    ("MESSAGE", rsip::Method::Message),
    ("NOTIFY", rsip::Method::Notify),
    ("PRACK", rsip::Method::PRack),
    ("PUBLISH", rsip::Method::Publish),
    ("REFER", rsip::Method::Refer),
    ("SUBSCRIBE", rsip::Method::Subscribe),
    ("UPDATE", rsip::Method::Update),
];

impl Method {
    /// Classify a method token (case-sensitive).
    pub fn from_token(t: &str) -> Method {
        KNOWN_METHODS
            .iter()
            .find(|(s, _)| *s == t)
            .map(|(_, m)| Method::Known(*m))
            .unwrap_or_else(|| Method::Extension(t.into()))
    }

    /// The method as it goes on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Known(m) => KNOWN_METHODS
                .iter()
                .find(|(_, k)| k == m)
                .map(|(s, _)| *s)
                .unwrap_or(""),
            Method::Extension(s) => s,
        }
    }

    /// True for a method rsip knows.
    pub fn is_known(&self) -> bool {
        matches!(self, Method::Known(_))
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP-Version`.
    Request {
        /// The method.
        method: Method,
        /// Range of the Request-URI text (as received, possibly with stray LWS).
        uri: Range<usize>,
        /// Range of the version text.
        version: Range<usize>,
        /// The line had LWS beyond single SPs (RFC 4475 lwsstart, trws).
        extra_lws: bool,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`.
    Response {
        /// 100..=699.
        code: u16,
        /// Range of the version text.
        version: Range<usize>,
        /// Range of the reason phrase (may be empty).
        reason: Range<usize>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Span(Range<usize>),
    Unfolded(Box<[u8]>),
}

/// One header field (one line, possibly folded) as stored in a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) name: HeaderName,
    /// The raw line(s) including the terminating line break.
    pub(super) line: Range<usize>,
    name_len: usize,
    value: Value,
}

/// How the Content-Length header(s) looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentLength {
    /// No Content-Length header.
    Absent,
    /// Exactly one, numeric.
    Value(usize),
    /// Exactly one, not a non-negative decimal number (or absurdly large).
    Invalid,
    /// Several Content-Length headers.
    Multiple,
}

/// A parsed SIP message. Owns its bytes ([`bytes::Bytes`]); the start line and header
/// boundaries are indexed once, header values are parsed into typed views on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(super) raw: Bytes,
    pub(super) start: StartLine,
    pub(super) headers: Vec<Header>,
    pub(super) body: Range<usize>,
    pub(super) content_length: ContentLength,
}

/// A borrowed view of one header field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'a> {
    /// Normalised name.
    pub name: HeaderName,
    /// Name as written on the wire (`v`, `VIA`, `X-Custom`).
    pub wire_name: &'a str,
    /// Value, unfolded and LWS-trimmed (may hold any octet).
    pub value: &'a [u8],
    /// The raw line(s) as received, including the final line break.
    pub raw: &'a [u8],
}

impl HeaderField<'_> {
    /// The name to write: canonical long form for known headers, as received otherwise.
    pub fn display_name(&self) -> &str {
        self.name.canonical().unwrap_or(self.wire_name)
    }
}

/// What [`frame_stream`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message.
    Message(Message),
    /// CRLFCRLF: an RFC 5626 §4.4.1 keep-alive ping; answer with a single CRLF (pong).
    Ping,
    /// A lone CRLF: a keep-alive pong (or a stray line break between messages). Ignore.
    Pong,
}

/// Parse one UDP datagram as one message.
///
/// Leading CRLFs are skipped (RFC 3261 §7.5). Content-Length, when valid, frames the body:
/// more than the datagram holds is [`ParseError::BodyTruncated`] (RFC 4475 clerr); octets
/// after it are ignored (RFC 4475 dblreq). Without Content-Length the body is the rest of
/// the datagram. An invalid or repeated Content-Length does not fail here: the message
/// parses (body = rest of datagram) so that [`super::validate_request`] can answer 400.
/// A header section that ends with the datagram, right after a complete header line, is
/// accepted as if the empty line were there.
pub fn parse_datagram(datagram: &[u8]) -> Result<Message, ParseError> {
    parse_datagram_bytes(Bytes::copy_from_slice(datagram))
}

/// [`parse_datagram`] for a buffer already held in [`Bytes`] (no copy).
pub fn parse_datagram_bytes(buf: Bytes) -> Result<Message, ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    if buf.len() > MAX_MESSAGE {
        return Err(ParseError::MessageTooLarge);
    }
    let skip = buf.iter().position(|&b| b != b'\r' && b != b'\n');
    let Some(skip) = skip else {
        return Err(ParseError::KeepAlive);
    };
    let head = scan_head(&buf[skip..], true)?.ok_or(ParseError::UnterminatedHead)?;
    let avail = buf.len() - skip - head.head_len;
    let body_len = match head.content_length {
        ContentLength::Value(n) if n > avail => return Err(ParseError::BodyTruncated),
        ContentLength::Value(n) => n,
        _ => avail,
    };
    let end = skip + head.head_len + body_len;
    let raw = if skip == 0 && end == buf.len() {
        buf
    } else {
        buf.slice(skip..end)
    };
    Ok(head.into_message(raw, body_len))
}

/// Frame the next item from a stream buffer (TCP/TLS).
///
/// `Ok(None)`: need more data. `Ok(Some((consumed, frame)))`: drop `consumed` octets from
/// the front of the buffer. Errors are fatal for the connection (close it): the framing is
/// lost (missing/invalid/repeated Content-Length, oversize, garbage).
pub fn frame_stream(buf: &[u8]) -> Result<Option<(usize, Frame)>, ParseError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'\r' || buf[0] == b'\n' {
        if buf.starts_with(b"\r\n\r\n") {
            return Ok(Some((4, Frame::Ping)));
        }
        if buf.starts_with(b"\r\n") {
            // "\r\n\r" could still become a ping.
            if buf.len() == 3 && buf[2] == b'\r' {
                return Ok(None);
            }
            return Ok(Some((2, Frame::Pong)));
        }
        if buf == b"\r" {
            return Ok(None);
        }
        // A bare LF (or CR not followed by LF): skip it like a stray line break.
        return Ok(Some((1, Frame::Pong)));
    }
    let Some((total, head)) = stream_head_parts(buf)? else {
        return Ok(None);
    };
    if total > MAX_MESSAGE {
        return Err(ParseError::MessageTooLarge);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let raw = Bytes::copy_from_slice(&buf[..total]);
    let body_len = total - head.head_len;
    Ok(Some((
        total,
        Frame::Message(head.into_message(raw, body_len)),
    )))
}

/// The head of the stream message at the front of `buf`, once its header section is
/// complete: the message's whole length (head and the body its Content-Length declares)
/// and the head alone as a message without body — enough to answer a message that is too
/// large to wait for (513), or to know how many octets to wait for. `Ok(None)`: the header
/// section is not complete yet. Errors as for [`frame_stream`], except that a declared length
/// beyond [`MAX_MESSAGE`] is returned, not refused; `buf` must not start with a line break
/// (those are keep-alives, framed by [`frame_stream`]).
pub fn stream_head(buf: &[u8]) -> Result<Option<(usize, Message)>, ParseError> {
    Ok(stream_head_parts(buf)?.map(|(total, head)| {
        let raw = Bytes::copy_from_slice(&buf[..head.head_len]);
        (total, head.into_message(raw, 0))
    }))
}

fn stream_head_parts(buf: &[u8]) -> Result<Option<(usize, Head)>, ParseError> {
    let Some(head) = scan_head(buf, false)? else {
        return Ok(None);
    };
    let n = match head.content_length {
        ContentLength::Value(n) => n,
        ContentLength::Absent => return Err(ParseError::MissingContentLength),
        ContentLength::Invalid => return Err(ParseError::BadContentLength),
        ContentLength::Multiple => return Err(ParseError::MultipleContentLength),
    };
    Ok(Some((head.head_len.saturating_add(n), head)))
}

struct Head {
    start: StartLine,
    headers: Vec<Header>,
    head_len: usize,
    content_length: ContentLength,
}

impl Head {
    fn into_message(self, raw: Bytes, body_len: usize) -> Message {
        Message {
            raw,
            start: self.start,
            headers: self.headers,
            body: self.head_len..self.head_len + body_len,
            content_length: self.content_length,
        }
    }
}

/// Find the next line starting at `pos`: (end of content, start of next line).
#[inline]
fn next_line(buf: &[u8], pos: usize) -> Result<Option<(usize, usize)>, ParseError> {
    match memchr::memchr(b'\n', &buf[pos..]) {
        Some(i) => {
            if i > MAX_LINE {
                return Err(ParseError::LineTooLong);
            }
            let nl = pos + i;
            let end = if nl > pos && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            Ok(Some((end, nl + 1)))
        }
        None => {
            if buf.len() - pos > MAX_LINE {
                return Err(ParseError::LineTooLong);
            }
            Ok(None)
        }
    }
}

/// Scan the start line and header section. `Ok(None)` = incomplete (stream only).
fn scan_head(buf: &[u8], datagram: bool) -> Result<Option<Head>, ParseError> {
    let incomplete = |buf: &[u8]| {
        if datagram {
            Err(ParseError::UnterminatedHead)
        } else if buf.len() > MAX_MESSAGE {
            Err(ParseError::MessageTooLarge)
        } else {
            Ok(None)
        }
    };
    let Some((sl_end, mut pos)) = next_line(buf, 0)? else {
        return incomplete(buf);
    };
    let start = parse_start_line(buf, sl_end)?;
    let mut headers: Vec<Header> = Vec::with_capacity(16);
    let mut folded = false;
    let head_len;
    loop {
        if pos > MAX_MESSAGE {
            return Err(ParseError::MessageTooLarge);
        }
        let (end, next) = match next_line(buf, pos)? {
            Some(l) => l,
            None if datagram && pos == buf.len() => {
                head_len = pos; // datagram ended right after a header line
                break;
            }
            None => return incomplete(buf),
        };
        if end == pos {
            head_len = next;
            break;
        }
        let first = buf[pos];
        if first == b' ' || first == b'\t' {
            let last = headers.last_mut().ok_or(ParseError::BadHeaderName)?;
            last.line.end = next;
            if let Value::Span(r) = &mut last.value {
                r.end = end;
            }
            folded = true;
        } else {
            let line = &buf[pos..end];
            let colon = memchr::memchr(b':', line).ok_or(ParseError::MissingColon)?;
            let mut name_len = colon;
            while name_len > 0 && matches!(line[name_len - 1], b' ' | b'\t') {
                name_len -= 1;
            }
            let name = &line[..name_len];
            if name.is_empty() || !name.iter().all(|&b| is_token_char(b)) {
                return Err(ParseError::BadHeaderName);
            }
            headers.push(Header {
                name: HeaderName::from_bytes(name),
                line: pos..next,
                name_len,
                value: Value::Span(pos + colon + 1..end),
            });
        }
        pos = next;
    }
    let mut content_length = ContentLength::Absent;
    for h in headers.iter_mut() {
        if let Value::Span(r) = &h.value {
            let v = &buf[r.clone()];
            if folded && memchr::memchr(b'\n', v).is_some() {
                h.value = Value::Unfolded(unfold(v).into_boxed_slice());
            } else {
                let (a, b) = trim_range(v);
                h.value = Value::Span(r.start + a..r.start + b);
            }
        }
        if h.name == HeaderName::ContentLength {
            content_length = match content_length {
                ContentLength::Absent => parse_content_length(value_of(buf, h)),
                _ => ContentLength::Multiple,
            };
        }
    }
    Ok(Some(Head {
        start,
        headers,
        head_len,
        content_length,
    }))
}

fn value_of<'a>(buf: &'a [u8], h: &'a Header) -> &'a [u8] {
    match &h.value {
        Value::Span(r) => &buf[r.clone()],
        Value::Unfolded(b) => b,
    }
}

fn parse_content_length(v: &[u8]) -> ContentLength {
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return ContentLength::Invalid;
    }
    ContentLength::Value(v.iter().fold(0usize, |a, &d| a * 10 + (d - b'0') as usize))
}

fn trim_range(v: &[u8]) -> (usize, usize) {
    let is_ws = |b: &u8| matches!(*b, b' ' | b'\t' | b'\r' | b'\n');
    let a = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let b = v
        .iter()
        .rposition(|b| !is_ws(b))
        .map(|i| i + 1)
        .unwrap_or(a);
    (a, b.max(a))
}

/// Replace each `[WS] CRLF WS+` by one SP, then trim.
fn unfold(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\r' || v[i] == b'\n' {
            while out.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
                out.pop();
            }
            while i < v.len() && matches!(v[i], b'\r' | b'\n' | b' ' | b'\t') {
                i += 1;
            }
            out.push(b' ');
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    let (a, b) = trim_range(&out);
    out.truncate(b);
    out.drain(..a);
    out
}

fn parse_start_line(buf: &[u8], end: usize) -> Result<StartLine, ParseError> {
    let line = &buf[..end];
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        let sp = memchr::memchr(b' ', line).ok_or(ParseError::BadStartLine)?;
        let rest = &line[sp + 1..];
        if rest.len() < 3
            || !rest[..3].iter().all(u8::is_ascii_digit)
            || (rest.len() > 3 && rest[3] != b' ')
        {
            return Err(ParseError::BadStartLine);
        }
        let code = rest[..3]
            .iter()
            .fold(0u16, |a, &d| a * 10 + (d - b'0') as u16);
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStartLine);
        }
        let r0 = (sp + 5).min(end);
        return Ok(StartLine::Response {
            code,
            version: 0..sp,
            reason: r0..end,
        });
    }
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::BadStartLine)?;
    let method = &line[..sp1];
    if method.is_empty() || !method.iter().all(|&b| is_token_char(b)) {
        return Err(ParseError::BadStartLine);
    }
    let mut tend = end;
    while tend > sp1 && matches!(line[tend - 1], b' ' | b'\t') {
        tend -= 1;
    }
    let sp2 = memchr::memrchr(b' ', &line[..tend]).ok_or(ParseError::BadStartLine)?;
    if sp2 <= sp1 {
        return Err(ParseError::BadStartLine);
    }
    let version = &line[sp2 + 1..tend];
    if version.len() < 4 || !version[..4].eq_ignore_ascii_case(b"SIP/") {
        return Err(ParseError::BadStartLine);
    }
    let uri = &line[sp1 + 1..sp2];
    let (a, b) = trim_range(uri);
    if a == b {
        return Err(ParseError::BadStartLine);
    }
    let extra_lws = tend != end || a != 0 || b != uri.len();
    let method =
        Method::from_token(std::str::from_utf8(method).map_err(|_| ParseError::BadStartLine)?);
    Ok(StartLine::Request {
        method,
        uri: sp1 + 1..sp2,
        version: sp2 + 1..tend,
        extra_lws,
    })
}

impl Message {
    /// Parse one datagram: see [`parse_datagram`].
    pub fn parse(datagram: &[u8]) -> Result<Message, ParseError> {
        parse_datagram(datagram)
    }

    /// The message bytes as received (leading CRLFs and trailing junk excluded).
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The message bytes as [`Bytes`] (cheap clone).
    pub fn bytes(&self) -> Bytes {
        self.raw.clone()
    }

    /// The start line.
    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method (`None` for a response).
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI text as received (`None` for a response). Parse it with
    /// [`super::Uri::parse`] or [`Message::request_uri`].
    pub fn request_uri_str(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => std::str::from_utf8(&self.raw[uri.clone()])
                .ok()
                .or(Some("")),
            StartLine::Response { .. } => None,
        }
    }

    /// The SIP version text of the start line (`"SIP/2.0"`).
    pub fn version(&self) -> &[u8] {
        match &self.start {
            StartLine::Request { version, .. } | StartLine::Response { version, .. } => {
                &self.raw[version.clone()]
            }
        }
    }

    /// The status code (`None` for a request).
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The status code as an rsip type.
    pub fn status_code(&self) -> Option<rsip::StatusCode> {
        self.status().map(rsip::StatusCode::from)
    }

    /// The reason phrase as received (may be empty, may be any UTF-8).
    pub fn reason(&self) -> Option<&[u8]> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(&self.raw[reason.clone()]),
            StartLine::Request { .. } => None,
        }
    }

    /// The body (may hold NUL, CR, LF).
    pub fn body(&self) -> &[u8] {
        &self.raw[self.body.clone()]
    }

    /// The body as [`Bytes`] (no copy).
    pub fn body_bytes(&self) -> Bytes {
        self.raw.slice(self.body.clone())
    }

    /// What the Content-Length header(s) said.
    pub fn content_length_state(&self) -> ContentLength {
        self.content_length
    }

    fn field<'a>(&'a self, h: &'a Header) -> HeaderField<'a> {
        let line = &self.raw[h.line.clone()];
        HeaderField {
            name: h.name,
            wire_name: std::str::from_utf8(&line[..h.name_len]).unwrap_or(""),
            value: value_of(&self.raw, h),
            raw: line,
        }
    }

    /// All header fields in order.
    pub fn headers(&self) -> impl Iterator<Item = HeaderField<'_>> + '_ {
        self.headers.iter().map(move |h| self.field(h))
    }

    /// Number of header lines.
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// Values of every header line with this (known) name, in order.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(move |h| value_of(&self.raw, h))
    }

    /// Values of every header line whose name matches `name` (any spelling, compact forms
    /// folded; extension names compared case-insensitively).
    pub fn values_by_name<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let kind = HeaderName::from_str(name);
        self.headers()
            .filter(move |f| {
                f.name == kind
                    && (kind != HeaderName::Other || f.wire_name.eq_ignore_ascii_case(name))
            })
            .map(|f| f.value)
    }

    /// The first value of a header, if present.
    pub fn first(&self, name: HeaderName) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// How many header lines have this name.
    pub fn count(&self, name: HeaderName) -> usize {
        self.headers.iter().filter(|h| h.name == name).count()
    }

    /// The first value of a header as text (`Err` if not UTF-8).
    pub fn first_str(&self, name: HeaderName) -> Option<Result<&str, SyntaxError>> {
        self.first(name).map(|v| as_text(v, name))
    }

    /// Every comma-separated element of every line of a list header (Via, Contact, Route,
    /// Require, ...), in order. Splitting respects quotes and `<>`.
    /// This message with its top Via replaced by `value` (a proxy adding `received` and
    /// `rport`, RFC 3581), edited in place: the octets are spliced and the index shifted,
    /// nothing is parsed again. `None` when the top Via shares its line with others or
    /// was folded; then the caller re-serialises instead.
    pub fn with_top_via(&self, value: &str) -> Option<Message> {
        let index = self
            .headers
            .iter()
            .position(|h| h.name == HeaderName::Via)?;
        let header = &self.headers[index];
        let Value::Span(old) = &header.value else {
            return None;
        };
        if memchr::memchr(b',', &self.raw[old.clone()]).is_some() {
            return None; // several Vias on one line (or a comma in a quoted param)
        }
        let line = header.line.clone();
        let mut raw = Vec::with_capacity(self.raw.len() + value.len());
        raw.extend_from_slice(&self.raw[..line.start]);
        raw.extend_from_slice(b"Via: ");
        let value_start = raw.len();
        raw.extend_from_slice(value.as_bytes());
        let value_end = raw.len();
        raw.extend_from_slice(b"\r\n");
        let line_end = raw.len();
        raw.extend_from_slice(&self.raw[line.end..]);
        let shift = |at: usize| at + line_end - line.end;
        let mut headers = self.headers.clone();
        headers[index] = Header {
            name: HeaderName::Via,
            line: line.start..line_end,
            name_len: 3,
            value: Value::Span(value_start..value_end),
        };
        for h in &mut headers[index + 1..] {
            h.line = shift(h.line.start)..shift(h.line.end);
            if let Value::Span(r) = &mut h.value {
                *r = shift(r.start)..shift(r.end);
            }
        }
        Some(Message {
            raw: Bytes::from(raw),
            start: self.start.clone(),
            headers,
            body: shift(self.body.start)..shift(self.body.end),
            content_length: self.content_length,
        })
    }

    pub fn elements(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<&str, SyntaxError>> + '_ {
        let what = name.canonical().unwrap_or("header");
        self.values(name).flat_map(move |v| {
            let (first, split) = match as_text(v, name) {
                Ok(s) => (None, Some(CommaSplit::new(s, what))),
                Err(e) => (Some(Err(e)), None),
            };
            first.into_iter().chain(split.into_iter().flatten())
        })
    }
}

/// A header value as text.
pub(super) fn as_text(v: &[u8], name: HeaderName) -> Result<&str, SyntaxError> {
    std::str::from_utf8(v)
        .map(trim_lws)
        .map_err(|_| SyntaxError(name.canonical().unwrap_or("header")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edited_top_via_is_what_parsing_the_edited_octets_gives() {
        let raw = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK1;rport\r\n\
Via: SIP/2.0/UDP edge.example.com;branch=z9hG4bKe\r\n\
v: SIP/2.0/UDP far.example.com;branch=z9hG4bKf\r\n\
To: <sip:bob@example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\nCall-ID: c1\r\n\
CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 4\r\n\r\nbody";
        let message = parse_datagram(raw).expect("parses");
        let value = "SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK1;received=192.0.2.9;rport=4000";
        let edited = message.with_top_via(value).expect("a single-Via line");
        assert_eq!(edited, parse_datagram(edited.as_bytes()).expect("parses"));
        assert_eq!(
            edited.values(HeaderName::Via).next(),
            Some(value.as_bytes())
        );
        assert_eq!(edited.values(HeaderName::Via).count(), 3);
        assert_eq!(edited.body(), b"body");
        // Several Vias on the top line: left to the caller.
        let combined = parse_datagram(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\nContent-Length: 0\r\n\r\n")
            .expect("parses");
        assert!(combined.with_top_via(value).is_none());
    }

    const INV: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\nv: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\nX-Folded: one\r\n  two\r\n\tthree\r\nl: 4\r\n\r\nbody";

    #[test]
    fn basic_parse_and_folding() {
        let m = parse_datagram(INV).unwrap();
        assert!(m.is_request());
        assert_eq!(m.method().unwrap().as_str(), "INVITE");
        assert_eq!(m.request_uri_str(), Some("sip:bob@example.com"));
        assert_eq!(
            m.first(HeaderName::Via),
            Some(&b"SIP/2.0/UDP a.example.com;branch=z9hG4bK1"[..])
        );
        let f: Vec<_> = m.headers().collect();
        assert_eq!(f[1].wire_name, "X-Folded");
        assert_eq!(f[1].value, b"one two three");
        assert_eq!(f[1].raw, b"X-Folded: one\r\n  two\r\n\tthree\r\n");
        assert_eq!(m.values_by_name("x-folded").count(), 1);
        assert_eq!(m.body(), b"body");
        assert_eq!(m.content_length_state(), ContentLength::Value(4));
    }

    #[test]
    fn methods_case_sensitive() {
        assert_eq!(
            Method::from_token("INVITE"),
            Method::Known(rsip::Method::Invite)
        );
        assert_eq!(
            Method::from_token("invite"),
            Method::Extension("invite".into())
        );
        assert_eq!(Method::from_token("PRACK").as_str(), "PRACK");
    }

    #[test]
    fn stream_framing() {
        assert_eq!(frame_stream(b"\r\n\r\n").unwrap(), Some((4, Frame::Ping)));
        assert_eq!(frame_stream(b"\r\n").unwrap(), Some((2, Frame::Pong)));
        assert_eq!(frame_stream(b"\r\n\r").unwrap(), None);
        assert_eq!(frame_stream(&INV[..20]).unwrap(), None);
        assert_eq!(frame_stream(&INV[..INV.len() - 1]).unwrap(), None);
        let (n, f) = frame_stream(INV).unwrap().unwrap();
        assert_eq!(n, INV.len());
        assert!(matches!(f, Frame::Message(m) if m.body() == b"body"));
        let mut two = INV.to_vec();
        two.extend_from_slice(INV);
        let (n, _) = frame_stream(&two).unwrap().unwrap();
        assert_eq!(n, INV.len());
        let no_cl = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n";
        assert_eq!(frame_stream(no_cl), Err(ParseError::MissingContentLength));
    }

    #[test]
    fn limits_and_junk() {
        let mut long = b"OPTIONS sip:a@b SIP/2.0\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_datagram(&long), Err(ParseError::LineTooLong));
        assert_eq!(parse_datagram(&long).unwrap_err().status_code(), 513);
        assert_eq!(
            frame_stream(&long[..MAX_LINE + 40]),
            Err(ParseError::LineTooLong)
        );
        let mut big = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for i in 0..2000 {
            big.extend_from_slice(
                format!("X-H{i}: 0123456789012345678901234567890123456789\r\n").as_bytes(),
            );
        }
        assert_eq!(parse_datagram(&big), Err(ParseError::MessageTooLarge));
        assert_eq!(frame_stream(&big), Err(ParseError::MessageTooLarge));
        assert_eq!(
            parse_datagram(b"\x00\x01\x02\xff"),
            Err(ParseError::UnterminatedHead)
        );
        assert_eq!(
            parse_datagram(b"\x00\x01\x02\xff\r\n\r\n"),
            Err(ParseError::BadStartLine)
        );
        assert_eq!(
            parse_datagram(b"OPTIONS sip:a@b SIP/2.0\r\nNoColonHere\r\n\r\n"),
            Err(ParseError::MissingColon)
        );
        assert_eq!(
            parse_datagram(b"OPTIONS sip:a@b SIP/2.0\r\n : x\r\n\r\n"),
            Err(ParseError::BadHeaderName)
        );
        assert_eq!(
            parse_datagram(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x"),
            Err(ParseError::UnterminatedHead)
        );
        assert_eq!(parse_datagram(b"\r\n\r\n"), Err(ParseError::KeepAlive));
        assert_eq!(parse_datagram(b""), Err(ParseError::Empty));
        assert_eq!(
            parse_datagram(b"SIP/2.0 4294967301 big\r\n\r\n"),
            Err(ParseError::BadStartLine)
        );
        assert_eq!(
            parse_datagram(b"SIP/2.0 099 low\r\n\r\n"),
            Err(ParseError::BadStartLine)
        );
    }
}
