//! Building and reading SIP messages: header access by name, parameter and URI helpers,
//! random identifiers, and what a test expects of a response.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rsip::{Method, Request, Response, SipMessage};

use super::{UaError, UaResult};

/// The RFC 3261 magic cookie every branch starts with.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// `n` random lowercase hex characters.
pub fn random_hex(n: usize) -> String {
    let mut s = String::with_capacity(n + 16);
    while s.len() < n {
        s.push_str(&format!("{:016x}", rand::random::<u64>()));
    }
    s.truncate(n);
    s
}

/// A fresh Via branch (`z9hG4bK` + 16 hex).
pub fn new_branch() -> String {
    format!("{MAGIC_COOKIE}{}", random_hex(16))
}

/// A fresh From/To tag.
pub fn new_tag() -> String {
    random_hex(10)
}

/// A fresh Call-ID on 127.0.0.1.
pub fn new_call_id() -> String {
    format!("{}@127.0.0.1", random_hex(20))
}

/// A minimal SDP offer or answer for a UA on 127.0.0.1.
pub fn sdp(session: &str, rtp_port: u16) -> String {
    // RFC 4566 §5.2: sess-id is digits (linphonec answers 488 to anything else).
    let id = session
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!(
        "v=0\r\no=- {id} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    )
}

/// Builds a request from its parts; `Content-Length` is added from `body`.
pub fn build_request(
    method: Method,
    uri: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> UaResult<Request> {
    let mut text = format!("{method} {uri} SIP/2.0\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    Request::try_from(bytes.as_slice())
        .map_err(|e| UaError::Parse(format!("built {method} does not parse: {e}")))
}

/// Builds a response to `request`: copies Via, From, Call-ID, CSeq and (RFC 3261 §12.1.1)
/// Record-Route, copies To and adds `to_tag` if To has no tag yet, then appends `extra`
/// headers, the `Content-Length` and the body.
pub fn build_response(
    request: &Request,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &[(&str, String)],
    body: &[u8],
) -> UaResult<Response> {
    let mut text = format!("SIP/2.0 {code} {reason}\r\n");
    for via in request.header_values("Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    for name in ["From", "Call-ID", "CSeq"] {
        let value = request
            .header(name)
            .ok_or_else(|| UaError::Parse(format!("request has no {name}")))?;
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut to = request
        .header("To")
        .ok_or_else(|| UaError::Parse("request has no To".into()))?;
    if let Some(tag) = to_tag {
        if param(&to, "tag").is_none() {
            to = format!("{to};tag={tag}");
        }
    }
    text.push_str(&format!("To: {to}\r\n"));
    for rr in request.header_values("Record-Route") {
        text.push_str(&format!("Record-Route: {rr}\r\n"));
    }
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    Response::try_from(bytes.as_slice())
        .map_err(|e| UaError::Parse(format!("built {code} response does not parse: {e}")))
}

/// The bytes to put on the wire for a message.
pub fn to_wire(message: &SipMessage) -> Vec<u8> {
    message.to_string().into_bytes()
}

/// Read access to headers by name (case-insensitive, full names as rsip keeps them).
pub trait MessageExt {
    /// The headers of the message, rendered `Name: value`.
    fn rendered_headers(&self) -> Vec<String>;

    /// Every value of header `name`, in order, one per header line (a line holding a
    /// comma-separated list stays one value: see [`split_list`]).
    fn header_values(&self, name: &str) -> Vec<String> {
        self.rendered_headers()
            .into_iter()
            .filter_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .collect()
    }

    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<String> {
        self.header_values(name).into_iter().next()
    }

    /// The Call-ID, or "" when absent.
    fn call_id(&self) -> String {
        self.header("Call-ID").unwrap_or_default()
    }

    /// The CSeq number and method (`(0, "")` when absent or malformed).
    fn cseq(&self) -> (u32, String) {
        let value = self.header("CSeq").unwrap_or_default();
        let mut parts = value.split_whitespace();
        let number = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let method = parts.next().unwrap_or("").to_ascii_uppercase();
        (number, method)
    }

    /// Whether the CSeq method is `method`.
    fn cseq_is(&self, method: Method) -> bool {
        self.cseq().1 == method.to_string()
    }

    /// The branch parameter of the top Via.
    fn top_branch(&self) -> Option<String> {
        let via = self.header("Via")?;
        let first = split_list(&via).into_iter().next()?;
        param(&first, "branch")
    }

    /// The tag parameter of To.
    fn tag_of_to(&self) -> Option<String> {
        param(&self.header("To")?, "tag")
    }

    /// The tag parameter of From.
    fn tag_of_from(&self) -> Option<String> {
        param(&self.header("From")?, "tag")
    }

    /// Every Record-Route entry in order (lists split, each `<uri;params>`).
    fn record_routes(&self) -> Vec<String> {
        self.header_values("Record-Route")
            .iter()
            .flat_map(|v| split_list(v))
            .collect()
    }

    /// The URI of the first Contact, without angle brackets or header parameters.
    fn contact_uri(&self) -> Option<String> {
        let contact = self.header("Contact")?;
        let first = split_list(&contact).into_iter().next()?;
        Some(name_addr_uri(&first))
    }
}

impl MessageExt for Request {
    fn rendered_headers(&self) -> Vec<String> {
        self.headers.iter().map(|h| h.to_string()).collect()
    }
}

impl MessageExt for Response {
    fn rendered_headers(&self) -> Vec<String> {
        self.headers.iter().map(|h| h.to_string()).collect()
    }
}

impl MessageExt for SipMessage {
    fn rendered_headers(&self) -> Vec<String> {
        match self {
            SipMessage::Request(r) => r.rendered_headers(),
            SipMessage::Response(r) => r.rendered_headers(),
        }
    }
}

/// Splits a header value at commas outside quotes and angle brackets.
pub fn split_list(value: &str) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut quoted, mut angle) = (false, false);
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// The value of parameter `name` in a header value such as `<sip:a@b>;tag=x;expires=60` or
/// `SIP/2.0/UDP h;branch=z`: parameters after the name-addr (outside `<>`) only. A parameter
/// without a value gives `Some("")`. Quotes around the value are removed.
pub fn param(value: &str, name: &str) -> Option<String> {
    // The parameters start after the `>` closing the first `<` outside quotes, if any.
    let mut quoted = false;
    let mut start = 0;
    let mut open = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' if !open => quoted = !quoted,
            '<' if !quoted && !open => open = true,
            '>' if open => {
                start = i + 1;
                break;
            }
            _ => {}
        }
    }
    // Split at semicolons outside quotes.
    let (mut parts, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in value[start..].chars() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts.into_iter().skip(1).find_map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((&p, ""));
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// The URI of a name-addr (`"Bob" <sip:bob@h;transport=tcp>;tag=1` → `sip:bob@h;transport=tcp`)
/// or of an addr-spec (`sip:bob@h;tag=1` → `sip:bob@h`).
pub fn name_addr_uri(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(start), Some(end)) if start < end => value[start + 1..end].to_owned(),
        _ => value.split(';').next().unwrap_or("").trim().to_owned(),
    }
}

/// The parameter `name` of a SIP URI (`sip:bob@h:5;transport=tcp` → `transport` → `tcp`).
pub fn uri_param(uri: &str, name: &str) -> Option<String> {
    let uri = uri.split('?').next().unwrap_or(uri);
    uri.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        n.eq_ignore_ascii_case(name).then(|| v.to_owned())
    })
}

/// The socket address a SIP URI points at: its host (an IPv4 literal, or `localhost`) and
/// port (5060 by default). `None` for other host names.
pub fn uri_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri.split_once(':')?.1;
    let hostport = rest.split([';', '?']).next()?;
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 5060),
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().ok()?
    };
    Some(SocketAddr::new(ip, port))
}

/// What a test expects of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this status code.
    Code(u16),
    /// Any code of this class: 1 for 1xx … 6 for 6xx.
    Class(u16),
    /// Any final response (200–699).
    Final,
    /// Any response.
    Any,
}

impl Expect {
    /// Whether a response with status `code` matches.
    pub fn matches(self, code: u16) -> bool {
        match self {
            Expect::Code(c) => c == code,
            Expect::Class(class) => code / 100 == class,
            Expect::Final => code >= 200,
            Expect::Any => true,
        }
    }
}

impl From<u16> for Expect {
    /// `100..=699` is a code; `1..=6` a class.
    fn from(n: u16) -> Self {
        if n < 10 {
            Expect::Class(n)
        } else {
            Expect::Code(n)
        }
    }
}

/// The status code of a response.
pub fn status(response: &Response) -> u16 {
    response.status_code.code()
}
