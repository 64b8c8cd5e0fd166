//! Serialisation: forwarding a received message with edits, and building responses.

use std::io::Write as _;

use super::message::{HeaderField, Message, StartLine};
use super::name::HeaderName;
use super::syntax::{top_comma, trim_lws};
use super::validate::default_reason;

/// A forwarded copy of a received message, described as edits (RFC 3261 §16.6 for
/// requests, §16.7 step 3 for responses). Headers not touched by an edit are copied
/// byte-for-byte (spelling, compact form and folding kept); the body is copied untouched.
#[derive(Debug, Clone)]
pub struct Forward<'m> {
    msg: &'m Message,
    request_uri: Option<String>,
    push_via: Option<String>,
    pop_via: bool,
    max_forwards: Option<u8>,
    record_route: Option<String>,
    pop_routes: usize,
    remove: Vec<(HeaderName, String)>,
    add: Vec<(String, String)>,
    content_length: bool,
}

impl Message {
    /// Start describing a forwarded copy of this message.
    pub fn forward(&self) -> Forward<'_> {
        Forward {
            msg: self,
            request_uri: None,
            push_via: None,
            pop_via: false,
            max_forwards: None,
            record_route: None,
            pop_routes: 0,
            remove: Vec::new(),
            add: Vec::new(),
            content_length: true,
        }
    }

    /// Start building a response to this request (see [`ResponseBuilder`]).
    pub fn response(&self, code: u16) -> ResponseBuilder<'_> {
        ResponseBuilder {
            req: self,
            code,
            reason: None,
            to_tag: None,
            headers: Vec::new(),
            body: None,
        }
    }
}

fn strip_crlf(s: &str) -> String {
    if memchr::memchr2(b'\r', b'\n', s.as_bytes()).is_none() {
        return s.to_owned(); // nearly always: a value we built ourselves
    }
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

impl<'m> Forward<'m> {
    /// Replace the Request-URI (requests only). The start line is always re-written with
    /// single SPs and `SIP/2.0`.
    pub fn request_uri(mut self, uri: &str) -> Self {
        self.request_uri = Some(strip_crlf(uri));
        self
    }

    /// Insert a new top Via (the value, e.g. `SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK..`).
    pub fn push_via(mut self, value: &str) -> Self {
        self.push_via = Some(strip_crlf(value));
        self
    }

    /// Remove the top Via value (responses, RFC 3261 §16.7 step 3). If the first Via line
    /// holds several values only the first is removed.
    pub fn pop_via(mut self) -> Self {
        self.pop_via = true;
        self
    }

    /// Set Max-Forwards (replacing any, or adding one).
    pub fn max_forwards(mut self, n: u8) -> Self {
        self.max_forwards = Some(n);
        self
    }

    /// Insert a Record-Route value on top (e.g. `<sip:proxy.example.com;lr>`).
    pub fn record_route(mut self, value: &str) -> Self {
        self.record_route = Some(strip_crlf(value));
        self
    }

    /// Remove the top Route value (loose routing, RFC 3261 §16.4).
    pub fn pop_route(self) -> Self {
        self.pop_routes(1)
    }

    /// Remove the top `n` Route values, wherever the lines split them: a proxy that
    /// record-routed twice (RFC 5658) finds itself twice on top.
    pub fn pop_routes(mut self, n: usize) -> Self {
        self.pop_routes = n;
        self
    }

    /// Remove every header with this name (any spelling; compact forms included).
    pub fn remove_header(mut self, name: &str) -> Self {
        self.remove
            .push((HeaderName::from_str(name), name.to_owned()));
        self
    }

    /// Append a header at the end of the header section.
    pub fn add_header(mut self, name: &str, value: &str) -> Self {
        self.add.push((strip_crlf(name), strip_crlf(value)));
        self
    }

    /// Re-write Content-Length from the body (default `true`: every Content-Length is
    /// replaced by one correct value, which stream transports need, RFC 3261 §16.6 step 9).
    /// `false` copies the received Content-Length header(s) untouched.
    pub fn content_length(mut self, rewrite: bool) -> Self {
        self.content_length = rewrite;
        self
    }

    fn removed(&self, f: &HeaderField<'_>) -> bool {
        self.remove.iter().any(|(k, n)| {
            if *k == HeaderName::Other {
                f.name == HeaderName::Other && f.wire_name.eq_ignore_ascii_case(n)
            } else {
                f.name == *k
            }
        })
    }

    /// Write the forwarded message.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let m = self.msg;
        match m.start_line() {
            StartLine::Request { method, uri, .. } => {
                out.extend_from_slice(method.as_str().as_bytes());
                out.push(b' ');
                match &self.request_uri {
                    Some(u) => out.extend_from_slice(u.as_bytes()),
                    None => out.extend_from_slice(trim_bytes(&m.as_bytes()[uri.clone()])),
                }
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { code, .. } => {
                let _ = write!(out, "SIP/2.0 {code} ");
                out.extend_from_slice(m.reason().unwrap_or_default());
                out.extend_from_slice(b"\r\n");
            }
        }
        if let Some(v) = &self.push_via {
            line(out, "Via", v);
        }
        // Our Record-Route goes on top of the existing ones or, with none, right after the
        // Vias, so that every header's rows stay together.
        let record_route_at = self.record_route.as_ref().map(|_| {
            let headers = || m.headers().enumerate();
            let first_rr = headers().find(|(_, f)| f.name == HeaderName::RecordRoute);
            let after_vias = headers()
                .filter(|(_, f)| f.name == HeaderName::Via)
                .last()
                .map_or(0, |(i, _)| i + 1);
            first_rr.map_or(after_vias, |(i, _)| i)
        });
        let mut via_done = !self.pop_via;
        let mut routes_to_pop = self.pop_routes;
        let (mut mf_done, mut cl_done) = (false, false);
        for (i, f) in m.headers().enumerate() {
            if record_route_at == Some(i) {
                if let Some(v) = &self.record_route {
                    line(out, "Record-Route", v);
                }
            }
            if self.removed(&f) {
                continue;
            }
            match f.name {
                HeaderName::Via if !via_done => {
                    via_done = true;
                    write_rest(out, &f, 1);
                }
                HeaderName::Route if routes_to_pop > 0 => {
                    routes_to_pop -= write_rest(out, &f, routes_to_pop);
                }
                HeaderName::MaxForwards if self.max_forwards.is_some() => {
                    if !mf_done {
                        let _ =
                            write!(out, "Max-Forwards: {}\r\n", self.max_forwards.unwrap_or(70));
                        mf_done = true;
                    }
                }
                HeaderName::ContentLength if self.content_length => {
                    if !cl_done {
                        let _ = write!(out, "Content-Length: {}\r\n", m.body().len());
                        cl_done = true;
                    }
                }
                _ => {
                    out.extend_from_slice(f.raw);
                    if !f.raw.ends_with(b"\r\n") {
                        // received with a bare LF: send CRLF
                        out.pop();
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
        if record_route_at.is_some_and(|at| at >= m.header_count()) {
            if let Some(v) = &self.record_route {
                line(out, "Record-Route", v);
            }
        }
        if let (Some(n), false) = (self.max_forwards, mf_done) {
            let _ = write!(out, "Max-Forwards: {n}\r\n");
        }
        for (n, v) in &self.add {
            line(out, n, v);
        }
        if self.content_length && !cl_done {
            let _ = write!(out, "Content-Length: {}\r\n", m.body().len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(m.body());
    }

    /// The forwarded message as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.msg.as_bytes().len() + 256);
        self.write_to(&mut out);
        out
    }
}

fn trim_bytes(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(s, |i| i + 1);
    &b[s..e.max(s)]
}

fn line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Write a list header without its first `n` (at least one) elements, nothing if it had
/// no more; returns how many it dropped (a line that is not text counts as one).
fn write_rest(out: &mut Vec<u8>, f: &HeaderField<'_>, n: usize) -> usize {
    let Ok(mut rest) = std::str::from_utf8(f.value) else {
        return 1;
    };
    let mut dropped = 0;
    while dropped < n.max(1) && !rest.is_empty() {
        dropped += 1;
        rest = match top_comma(rest) {
            Ok(Some(i)) => trim_lws(&rest[i + 1..]),
            _ => "",
        };
    }
    if !rest.is_empty() {
        line(out, f.display_name(), rest);
    }
    dropped.max(1)
}

/// A response to a received request (RFC 3261 §8.2.6): Via list, From, To (with a To-tag
/// if given and none is there), Call-ID and CSeq copied; status line, extra headers and
/// body added. Content-Length is always written.
#[derive(Debug, Clone)]
pub struct ResponseBuilder<'m> {
    req: &'m Message,
    code: u16,
    reason: Option<String>,
    to_tag: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<(String, Vec<u8>)>,
}

impl ResponseBuilder<'_> {
    /// Reason phrase (default: the RFC phrase for the code).
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(strip_crlf(reason));
        self
    }

    /// Add `;tag=...` to To (unless the request's To already has a tag).
    pub fn to_tag(mut self, tag: &str) -> Self {
        self.to_tag = Some(strip_crlf(tag));
        self
    }

    /// Add a header (after the copied ones).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((strip_crlf(name), strip_crlf(value)));
        self
    }

    /// Set a body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: &[u8]) -> Self {
        self.body = Some((strip_crlf(content_type), body.to_vec()));
        self
    }

    /// Write the response.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let reason = self
            .reason
            .as_deref()
            .unwrap_or_else(|| default_reason(self.code));
        let _ = write!(out, "SIP/2.0 {} {}\r\n", self.code, reason);
        let has_tag = matches!(self.req.to_header(), Some(Ok(t)) if t.tag().is_some());
        for f in self.req.headers() {
            let name = match f.name {
                HeaderName::Via
                | HeaderName::From
                | HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::To => f.display_name(),
                _ => continue,
            };
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(f.value);
            if let (HeaderName::To, Some(tag), false) = (f.name, &self.to_tag, has_tag) {
                out.extend_from_slice(b";tag=");
                out.extend_from_slice(tag.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        for (n, v) in &self.headers {
            line(out, n, v);
        }
        let body: &[u8] = match &self.body {
            Some((ct, b)) => {
                line(out, "Content-Type", ct);
                b
            }
            None => &[],
        };
        let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
        out.extend_from_slice(body);
    }

    /// The response as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.write_to(&mut out);
        out
    }
}

/// A body-less request this server originates within a transaction or dialog it already
/// has — the CANCEL of a branch, the ACK of a non-2xx, the ACK and BYE of a 2xx nobody is on
/// the line for: request line, the headers in the order given, `Content-Length: 0`.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
}

impl RequestBuilder {
    pub fn new(method: &str, uri: &str) -> Self {
        Self {
            method: strip_crlf(method),
            uri: strip_crlf(uri),
            headers: Vec::new(),
        }
    }

    /// Add a header (line breaks in what a peer sent cannot start another one).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((strip_crlf(name), strip_crlf(value)));
        self
    }

    /// The request as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let _ = write!(out, "{} {} SIP/2.0\r\n", self.method, self.uri);
        for (n, v) in &self.headers {
            line(&mut out, n, v);
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::message::parse_datagram;

    #[test]
    fn a_built_request_parses_and_no_value_can_inject_a_header() {
        let bytes = super::RequestBuilder::new("CANCEL", "sip:bob@192.0.2.7")
            .header("Via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKppc1")
            .header("To", "<sip:bob@x>\r\nEvil: yes")
            .header("CSeq", "1 CANCEL")
            .to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("text");
        assert!(
            text.starts_with("CANCEL sip:bob@192.0.2.7 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
        assert!(!text.contains("\r\nEvil:"), "{text}");
        assert!(parse_datagram(&bytes).is_ok());
    }

    const REQ: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
v: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Route: <sip:p3.example.com;lr>\r\n\
Max-Forwards: 70\r\n\
X-Odd:   kept\r\n  folded\r\n\
f: <sip:alice@example.com>;tag=1\r\n\
t: <sip:bob@example.com>\r\n\
i: abc@x\r\n\
CSeq: 1 INVITE\r\n\
l: 4\r\n\r\nbody";

    #[test]
    fn record_route_goes_on_top_of_the_existing_ones() {
        let m = parse_datagram(
            b"INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nTo: <sip:b@x>\r\n\
Record-Route: <sip:old.example.com;lr>\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let out = m
            .forward()
            .record_route("<sip:new.example.com;lr>")
            .to_bytes();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Record-Route: <sip:new.example.com;lr>\r\nRecord-Route: <sip:old"),
            "{text}"
        );
    }

    #[test]
    fn popping_routes_crosses_lines_and_values() {
        let m = parse_datagram(REQ).unwrap();
        let routes = |n| {
            let text = String::from_utf8(m.forward().pop_routes(n).to_bytes()).unwrap();
            text.lines()
                .filter(|l| l.starts_with("Route:"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            routes(1),
            [
                "Route: <sip:p2.example.com;lr>",
                "Route: <sip:p3.example.com;lr>"
            ]
        );
        assert_eq!(routes(2), ["Route: <sip:p3.example.com;lr>"]);
        assert!(routes(3).is_empty());
        assert!(routes(9).is_empty());
    }

    #[test]
    fn forward_request_edits() {
        let m = parse_datagram(REQ).unwrap();
        let out = m
            .forward()
            .request_uri("sip:bob@[2001:db8::1]:5070;transport=tcp")
            .push_via("SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp")
            .record_route("<sip:proxy.example.com;lr>")
            .pop_route()
            .max_forwards(69)
            .remove_header("x-ODD")
            .add_header("X-New", "1")
            .to_bytes();
        let expect = "INVITE sip:bob@[2001:db8::1]:5070;transport=tcp SIP/2.0\r\n\
Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp\r\n\
v: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n\
Record-Route: <sip:proxy.example.com;lr>\r\n\
Route: <sip:p2.example.com;lr>\r\n\
Route: <sip:p3.example.com;lr>\r\n\
Max-Forwards: 69\r\n\
f: <sip:alice@example.com>;tag=1\r\n\
t: <sip:bob@example.com>\r\n\
i: abc@x\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 4\r\n\
X-New: 1\r\n\r\nbody";
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expect);
        let again = parse_datagram(&out).unwrap();
        assert_eq!(again.vias().count(), 3);
        // unchanged headers are byte-for-byte, including folding
        let plain = m.forward().to_bytes();
        assert!(plain
            .windows(24)
            .any(|w| w == b"X-Odd:   kept\r\n  folded\r"));
    }

    #[test]
    fn forward_response_pops_via() {
        let r = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP p.example.com;branch=z9hG4bKp\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = parse_datagram(r).unwrap();
        let out = m.forward().pop_via().to_bytes();
        let m2 = parse_datagram(&out).unwrap();
        assert_eq!(m2.vias().count(), 1);
        assert_eq!(m2.top_via().unwrap().unwrap().host_raw, "a.example.com");
        assert_eq!(m2.status(), Some(180));
        let two = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP p;branch=z9hG4bKp , SIP/2.0/UDP a;branch=z9hG4bK1\r\nl: 0\r\n\r\n";
        let out = parse_datagram(two).unwrap().forward().pop_via().to_bytes();
        assert_eq!(
            out,
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn build_response() {
        let m = parse_datagram(REQ).unwrap();
        let out = m
            .response(180)
            .to_tag("xyz")
            .header("Server", "pushpark")
            .to_bytes();
        let expect = "SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n\
From: <sip:alice@example.com>;tag=1\r\n\
To: <sip:bob@example.com>;tag=xyz\r\n\
Call-ID: abc@x\r\n\
CSeq: 1 INVITE\r\n\
Server: pushpark\r\n\
Content-Length: 0\r\n\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), expect);
        let out = m
            .response(400)
            .reason("Missing\r\nCall-ID")
            .body("text/plain", b"x")
            .to_bytes();
        assert!(out.starts_with(b"SIP/2.0 400 MissingCall-ID\r\n"));
        assert!(out.ends_with(b"Content-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"));
    }
}
