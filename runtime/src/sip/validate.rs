//! Checks a proxy applies to a received message before acting on it
//! (RFC 3261 §8.2, §16.3 "reasonable syntax check"; RFC 4475 / RFC 5118 verdicts).

use std::borrow::Cow;

use super::message::{ContentLength, Message, StartLine};
use super::name::HeaderName;
use super::uri::Uri;

/// Why a request is answered with an error instead of being processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Status code (400, 416, 501, 505).
    pub code: u16,
    /// Reason phrase naming the problem (`"Missing Call-ID"`, `"Malformed Via"`).
    pub reason: Cow<'static, str>,
}

impl Rejection {
    fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Rejection {
        Rejection {
            code,
            reason: reason.into(),
        }
    }

    /// The code as an rsip type.
    pub fn status_code(&self) -> rsip::StatusCode {
        rsip::StatusCode::from(self.code)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// Why a received response is dropped (a proxy never answers a response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropResponse(pub &'static str);

const SINGLE: [(HeaderName, &str); 7] = [
    (HeaderName::CallId, "Multiple Call-ID headers"),
    (HeaderName::CSeq, "Multiple CSeq headers"),
    (HeaderName::From, "Multiple From headers"),
    (HeaderName::To, "Multiple To headers"),
    (HeaderName::MaxForwards, "Multiple Max-Forwards headers"),
    (HeaderName::ContentType, "Multiple Content-Type headers"),
    (HeaderName::Expires, "Multiple Expires headers"),
];

fn bad(e: super::error::SyntaxError) -> Rejection {
    Rejection::new(400, format!("Malformed {}", e.0))
}

/// Validate a request received by the proxy. `Ok(())` means: structurally sound, forward
/// or process it. Role decisions (483 for Max-Forwards 0, 420 for Proxy-Require, registrar
/// checks, 415, loop detection, transaction matching) belong to the layers above.
pub fn validate_request(m: &Message) -> Result<(), Rejection> {
    let StartLine::Request {
        method,
        uri,
        extra_lws,
        ..
    } = m.start_line()
    else {
        return Err(Rejection::new(400, "Not a request"));
    };
    let version = m.version();
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        let v = &version[4.min(version.len())..];
        let ok = v.split(|&b| b == b'.').count() == 2
            && v.split(|&b| b == b'.')
                .all(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
        return Err(if ok {
            Rejection::new(505, "Version Not Supported")
        } else {
            Rejection::new(400, "Malformed Request-Line")
        });
    }
    let uri_raw = &m.as_bytes()[uri.clone()];
    if uri_raw.iter().any(|b| matches!(b, b' ' | b'\t')) {
        return Err(Rejection::new(400, "Malformed Request-URI"));
    }
    if *extra_lws {
        return Err(Rejection::new(400, "Malformed Request-Line"));
    }
    match m.content_length_state() {
        ContentLength::Multiple => {
            return Err(Rejection::new(400, "Multiple Content-Length headers"))
        }
        ContentLength::Invalid => return Err(Rejection::new(400, "Bad Content-Length")),
        _ => {}
    }
    match m.request_uri() {
        Some(Ok(Uri::Sip(u))) => {
            if u.headers.is_some() {
                return Err(Rejection::new(400, "Malformed Request-URI"));
            }
        }
        Some(Ok(Uri::Other { .. })) => return Err(Rejection::new(416, "Unsupported URI Scheme")),
        _ => return Err(Rejection::new(400, "Malformed Request-URI")),
    }
    for (name, missing) in [
        (HeaderName::CallId, "Missing Call-ID"),
        (HeaderName::CSeq, "Missing CSeq"),
        (HeaderName::From, "Missing From"),
        (HeaderName::To, "Missing To"),
        (HeaderName::Via, "Missing Via"),
    ] {
        if m.first(name).is_none() {
            return Err(Rejection::new(400, missing));
        }
    }
    for (name, dup) in SINGLE {
        if m.count(name) > 1 {
            return Err(Rejection::new(400, dup));
        }
    }
    let cseq = match m.cseq() {
        Some(Ok(c)) => c,
        _ => return Err(Rejection::new(400, "Bad CSeq")),
    };
    if cseq.method != method.as_str() {
        // RFC 4475 §3.1.2.18: an unknown method with a mismatching CSeq is best answered 501.
        return Err(if method.is_known() {
            Rejection::new(400, "CSeq method does not match")
        } else {
            Rejection::new(501, "Not Implemented")
        });
    }
    if let Some(Err(_)) = m.max_forwards() {
        return Err(Rejection::new(400, "Bad Max-Forwards"));
    }
    if let Some(Err(_)) = m.call_id() {
        return Err(Rejection::new(400, "Bad Call-ID"));
    }
    for v in m.vias() {
        v.map_err(|_| Rejection::new(400, "Malformed Via"))?;
    }
    if let Some(Err(e)) = m.from_header() {
        return Err(bad(e));
    }
    if let Some(Err(e)) = m.to_header() {
        return Err(bad(e));
    }
    for c in m.contacts() {
        c.map_err(bad)?;
    }
    for r in m.routes().chain(m.record_routes()) {
        r.map_err(bad)?;
    }
    for name in [
        HeaderName::Require,
        HeaderName::ProxyRequire,
        HeaderName::Supported,
    ] {
        m.option_tags(name).map_err(bad)?;
    }
    if let Some(Err(e)) = m.content_type() {
        return Err(bad(e));
    }
    Ok(())
}

/// Validate a received response. `Err` means: drop it silently (RFC 4475 scalarlg).
/// Matching it to a client transaction (and dropping it when none matches, RFC 4475 bcast)
/// is the transaction layer's job.
pub fn validate_response(m: &Message) -> Result<(), DropResponse> {
    if m.is_request() {
        return Err(DropResponse("not a response"));
    }
    if !m.version().eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(DropResponse("unsupported version"));
    }
    match m.top_via() {
        Some(Ok(_)) => {}
        Some(Err(_)) => return Err(DropResponse("malformed top Via")),
        None => return Err(DropResponse("missing Via")),
    }
    match m.cseq() {
        Some(Ok(_)) => {}
        _ => return Err(DropResponse("missing or malformed CSeq")),
    }
    match m.call_id() {
        Some(Ok(_)) => {}
        _ => return Err(DropResponse("missing or malformed Call-ID")),
    }
    if m.first(HeaderName::From).is_none() || m.first(HeaderName::To).is_none() {
        return Err(DropResponse("missing From or To"));
    }
    if !matches!(
        m.content_length_state(),
        ContentLength::Value(_) | ContentLength::Absent
    ) {
        return Err(DropResponse("bad Content-Length"));
    }
    Ok(())
}

/// The RFC reason phrase for a status code (RFC 3261 §21 and later RFCs: 430 RFC 5626,
/// 555 RFC 8599). rsip's `StatusCode` Display gives Rust variant names (`"NotFound"`), so
/// the phrases live here.
pub fn default_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        199 => "Early Dialog Terminated",
        200 => "OK",
        202 => "Accepted",
        204 => "No Notification",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        417 => "Unknown Resource-Priority",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        428 => "Use Identity Header",
        429 => "Provide Referrer Identity",
        430 => "Flow Failed",
        433 => "Anonymity Disallowed",
        439 => "First Hop Lacks Outbound Support",
        440 => "Max-Breadth Exceeded",
        469 => "Bad Info Package",
        470 => "Consent Needed",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        494 => "Security Agreement Required",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        555 => "Push Notification Service Not Supported",
        580 => "Precondition Failure",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        607 => "Unwanted",
        _ => match code / 100 {
            1 => "Session Progress",
            2 => "OK",
            3 => "Redirection",
            4 => "Bad Request",
            5 => "Server Internal Error",
            _ => "Global Failure",
        },
    }
}
