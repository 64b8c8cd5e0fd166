//! The little SIP the simulated phones and callers speak: reading what the node sent with
//! pushpark's own parser, and writing requests and responses as text.

use bytes::Bytes;
use pushpark::sip::{self, CommaSplit, Message};

/// A message the node sent, read.
pub struct Msg(pub Message);

impl Msg {
    pub fn parse(bytes: &Bytes) -> Option<Msg> {
        sip::parse_datagram_bytes(bytes.clone()).ok().map(Msg)
    }

    /// Every value of header `name`, list headers split at their commas.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .values_by_name(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| CommaSplit::new(v, "list").filter_map(Result::ok))
            .map(|v| v.trim().to_owned())
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> String {
        self.0
            .values_by_name(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    pub fn method(&self) -> Option<&str> {
        self.0.method().map(|m| m.as_str())
    }

    pub fn status(&self) -> Option<u16> {
        self.0.status()
    }

    pub fn call_id(&self) -> String {
        self.header("Call-ID")
    }

    /// The CSeq method.
    pub fn cseq_method(&self) -> String {
        let cseq = self.header("CSeq");
        cseq.split_whitespace().nth(1).unwrap_or("").to_owned()
    }

    /// The branch of the top Via.
    pub fn branch(&self) -> String {
        self.all("Via")
            .first()
            .and_then(|via| param(via, "branch"))
            .unwrap_or_default()
    }

    pub fn to_tag(&self) -> Option<String> {
        param(&self.header("To"), "tag")
    }

    /// The URI of the Contact header.
    pub fn contact_uri(&self) -> String {
        uri_of(&self.header("Contact"))
    }
}

/// Parameter `name` of a header value (after its URI, if in angle brackets).
pub fn param(value: &str, name: &str) -> Option<String> {
    let params = value.rsplit_once('>').map_or(value, |(_, rest)| rest);
    params.split(';').skip(1).find_map(|p| {
        let (key, v) = p.split_once('=').unwrap_or((p, ""));
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The URI of a name-addr (`"x" <sip:…>;p`) or of an addr-spec.
pub fn uri_of(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_owned(),
        _ => value.split(';').next().unwrap_or("").trim().to_owned(),
    }
}

/// A request as text; Max-Forwards and Content-Length are added.
pub fn request(method: &str, uri: &str, headers: &[(&str, String)], body: &str) -> Bytes {
    let mut text = format!("{method} {uri} SIP/2.0\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!(
        "Max-Forwards: 70\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    Bytes::from(text)
}

/// A response to `request` (RFC 3261 §8.2.6): its Vias, From, Call-ID and CSeq, its To with
/// `to_tag` added, its Record-Route on a dialog-making response, then `extra`.
pub fn response(request: &Msg, code: u16, to_tag: Option<&str>, extra: &[(&str, String)]) -> Bytes {
    let mut text = format!("SIP/2.0 {code} {}\r\n", reason(code));
    for via in request.0.values_by_name("Via") {
        text.push_str(&format!("Via: {}\r\n", String::from_utf8_lossy(via)));
    }
    let to = request.header("To");
    let to = match to_tag {
        Some(tag) if param(&to, "tag").is_none() => format!("{to};tag={tag}"),
        _ => to,
    };
    text.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n",
        request.header("From"),
        request.call_id(),
        request.header("CSeq")
    ));
    if (101..300).contains(&code) && code != 100 {
        for rr in request.0.values_by_name("Record-Route") {
            text.push_str(&format!(
                "Record-Route: {}\r\n",
                String::from_utf8_lossy(rr)
            ));
        }
    }
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    Bytes::from(text)
}

fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        603 => "Decline",
        _ => "Whatever",
    }
}
