//! The SIP the load generator speaks, and the identifiers it hides in it.
//!
//! Every Call-ID and Via branch the load generator writes names the call (or, for the
//! first REGISTERs, the device) it belongs to and the run it comes from, so an arriving
//! message finds its call without a lookup table of strings: a request by its Call-ID, a
//! response by its top Via's branch (a proxy takes its own Via off on the way back).
//!
//! Messages are written straight into one buffer each; received ones are read with the
//! server's own parser ([`pushpark::sip`]).

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use pushpark::config::Transport;
use pushpark::sip::{default_reason, HeaderName, Message};

/// The caller's SDP offer.
const OFFER: &str = "v=0\r\no=loadgen 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";
/// The device's SDP answer.
const ANSWER: &str = "v=0\r\no=device 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// The `pn-provider` devices register with; the generated configuration routes it to the
/// load generator's webhook.
pub const PN_PROVIDER: &str = "fcm";

/// Where a message leaves from: a link's local address and transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Local {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl Local {
    /// `udp`, `tcp` or `tls`, as in a `transport=` URI parameter.
    fn param(&self) -> &'static str {
        match self.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// What a Call-ID or a branch of ours belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    /// A call, by its index in the run.
    Call(u64),
    /// A device's first REGISTER, by the device's index.
    Registration(u32),
}

/// Which transaction of a call a branch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// The INVITE (and its CANCEL and non-2xx ACK).
    Invite,
    /// The ACK of a 2xx.
    Ack,
    /// The caller's BYE.
    Bye,
    /// The device's wake-up REGISTER with this CSeq.
    Register(u32),
}

/// A Via branch of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Branch {
    /// A transaction of call `idx`.
    Call { idx: u64, run: u32, tag: Tag },
    /// A device's first REGISTER.
    Registration { dev: u32, run: u32, cseq: u32 },
}

impl fmt::Display for Branch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Branch::Call { idx, run, tag } => {
                write!(f, "z9hG4bKlg{idx}.{run:08x}.")?;
                match tag {
                    Tag::Invite => f.write_str("i"),
                    Tag::Ack => f.write_str("a"),
                    Tag::Bye => f.write_str("b"),
                    Tag::Register(cseq) => write!(f, "r{cseq}"),
                }
            }
            Branch::Registration { dev, run, cseq } => {
                write!(f, "z9hG4bKlgr{dev}.{run:08x}.{cseq}")
            }
        }
    }
}

/// `lg<idx>.<run>` or `lgr<dev>.<run>` (the `lg` already stripped) → the key, if the run
/// is `run`.
fn parse_key(s: &str, run: u32) -> Option<Key> {
    let (registration, rest) = match s.strip_prefix('r') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let dot = rest.find('.')?;
    let digits = &rest[..dot];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hex = rest.get(dot + 1..dot + 9)?;
    if u32::from_str_radix(hex, 16).ok()? != run {
        return None;
    }
    if !matches!(rest.as_bytes().get(dot + 9), None | Some(b'.' | b'@')) {
        return None;
    }
    if registration {
        digits.parse().ok().map(Key::Registration)
    } else {
        digits.parse().ok().map(Key::Call)
    }
}

/// The call a Call-ID of run `run` names.
pub(crate) fn key_of_call_id(call_id: &str, run: u32) -> Option<Key> {
    parse_key(call_id.strip_prefix("lg")?, run)
}

/// The call or device a branch of run `run` names.
pub(crate) fn key_of_branch(branch: &str, run: u32) -> Option<Key> {
    parse_key(branch.strip_prefix("z9hG4bKlg")?, run)
}

/// The key a received message is routed by: a request's Call-ID, a response's top branch.
pub(crate) fn key_of(message: &Message, run: u32) -> Option<Key> {
    if message.is_request() {
        key_of_call_id(message.call_id()?.ok()?, run)
    } else {
        let via = message.top_via()?.ok()?;
        key_of_branch(via.branch()?, run)
    }
}

/// Whether a message's CSeq method is `method` (no allocation).
pub(crate) fn cseq_is(message: &Message, method: &str) -> bool {
    matches!(message.cseq(), Some(Ok(c)) if c.method().as_str() == method)
}

/// The method of a request (`None` for a response).
pub(crate) fn method(message: &Message) -> Option<&str> {
    message.method().map(|m| m.as_str())
}

/// A response's Retry-After in seconds (RFC 3261 §20.33: delta-seconds, then maybe a
/// comment and parameters); `None` without one, or unreadable.
pub(crate) fn retry_after(message: &Message) -> Option<u32> {
    let value = message.first(HeaderName::RetryAfter)?;
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&value[..digits]).ok()?.parse().ok()
}

/// The top Via's branch.
pub(crate) fn top_branch(message: &Message) -> Option<&str> {
    message.top_via()?.ok()?.branch()
}

fn call_id(out: &mut Vec<u8>, key: Key, run: u32) {
    let _ = match key {
        Key::Call(idx) => write!(out, "Call-ID: lg{idx}.{run:08x}@127.0.0.1\r\n"),
        Key::Registration(dev) => write!(out, "Call-ID: lgr{dev}.{run:08x}@127.0.0.1\r\n"),
    };
}

fn via(out: &mut Vec<u8>, local: Local, branch: Branch) {
    let _ = write!(
        out,
        "Via: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n",
        local.transport, local.addr
    );
}

fn finish(mut out: Vec<u8>, body: &str) -> Bytes {
    let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
    Bytes::from(out)
}

/// The start of call `idx`'s INVITE or CANCEL to device `dev`: what RFC 3261 §9.1 has
/// them share (Request-URI, top Via, From, To, Call-ID), then the CSeq.
fn invite_or_cancel(method: &str, local: Local, run: u32, idx: u64, dev: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(640);
    let _ = write!(out, "{method} sip:dev{dev}@127.0.0.1 SIP/2.0\r\n");
    via(
        &mut out,
        local,
        Branch::Call {
            idx,
            run,
            tag: Tag::Invite,
        },
    );
    let _ = write!(
        out,
        "From: <sip:caller@127.0.0.1>;tag=lg{idx}\r\nTo: <sip:dev{dev}@127.0.0.1>\r\n"
    );
    call_id(&mut out, Key::Call(idx), run);
    let _ = write!(out, "CSeq: 1 {method}\r\n");
    out
}

/// The INVITE of call `idx` to device `dev`.
pub(crate) fn invite(local: Local, run: u32, idx: u64, dev: u32) -> Bytes {
    let mut out = invite_or_cancel("INVITE", local, run, idx, dev);
    let _ = write!(
        out,
        "Contact: <sip:caller@{};transport={}>\r\n\
         Allow: INVITE, ACK, CANCEL, BYE\r\nContent-Type: application/sdp\r\n",
        local.addr,
        local.param()
    );
    finish(out, OFFER)
}

/// The CANCEL of call `idx`'s INVITE.
pub(crate) fn cancel(local: Local, run: u32, idx: u64, dev: u32) -> Bytes {
    finish(invite_or_cancel("CANCEL", local, run, idx, dev), "")
}

/// A header's first value as text, or what is wrong.
fn text<'a>(
    message: &'a Message,
    name: HeaderName,
    what: &'static str,
) -> Result<&'a str, &'static str> {
    match message.first_str(name) {
        Some(Ok(value)) => Ok(value),
        _ => Err(what),
    }
}

fn cseq_number(message: &Message) -> Result<u32, &'static str> {
    match message.cseq() {
        Some(Ok(cseq)) => Ok(cseq.seq),
        _ => Err("response without a readable CSeq"),
    }
}

/// The ACK of a 3xx–6xx final response to an INVITE (RFC 3261 §17.1.1.3), built from the
/// response alone: the INVITE's Request-URI is its To URI here, the top Via is the
/// INVITE's (the proxy added only `received`/`rport`).
pub(crate) fn ack_non_2xx(response: &Message) -> Result<Bytes, &'static str> {
    let to = match response.to_header() {
        Some(Ok(to)) => to,
        _ => return Err("final response without a readable To"),
    };
    let top_via = match response.elements(HeaderName::Via).next() {
        Some(Ok(via)) => via,
        _ => return Err("final response without a Via"),
    };
    let mut out = Vec::with_capacity(400);
    let _ = write!(
        out,
        "ACK {} SIP/2.0\r\nVia: {top_via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
         Call-ID: {}\r\nCSeq: {} ACK\r\n",
        to.uri_raw,
        text(response, HeaderName::From, "final response without From")?,
        text(response, HeaderName::To, "final response without To")?,
        text(
            response,
            HeaderName::CallId,
            "final response without Call-ID"
        )?,
        cseq_number(response)?,
    );
    Ok(finish(out, ""))
}

/// A request inside the dialog a 2xx to our INVITE set up (RFC 3261 §12.2.1.1, §13.2.2.4):
/// to the 2xx's Contact through its Record-Route, reversed. `ACK` takes the INVITE's
/// CSeq number, `BYE` the next one.
pub(crate) fn in_dialog(
    method: &str,
    local: Local,
    branch: Branch,
    ok: &Message,
) -> Result<Bytes, &'static str> {
    let target = match ok.contacts().next() {
        Some(Ok(contact)) => match contact.addr() {
            Some(addr) => addr.uri_raw,
            None => return Err("2xx with Contact: *"),
        },
        _ => return Err("2xx without a readable Contact"),
    };
    let invite_seq = cseq_number(ok)?;
    let seq = if method == "ACK" {
        invite_seq
    } else {
        invite_seq + 1
    };
    let mut routes: Vec<&str> = Vec::with_capacity(2);
    for route in ok.elements(HeaderName::RecordRoute) {
        routes.push(route.map_err(|_| "2xx with an unreadable Record-Route")?);
    }
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "{method} {target} SIP/2.0\r\n");
    via(&mut out, local, branch);
    for route in routes.iter().rev() {
        let _ = write!(out, "Route: {route}\r\n");
    }
    let _ = write!(
        out,
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {seq} {method}\r\n",
        text(ok, HeaderName::From, "2xx without From")?,
        text(ok, HeaderName::To, "2xx without To")?,
        text(ok, HeaderName::CallId, "2xx without Call-ID")?,
    );
    Ok(finish(out, ""))
}

/// A device's REGISTER for an hour: with the RFC 8599 push parameters when `push`, and
/// always with a `+sip.instance`, so a woken device replaces its own binding.
pub(crate) fn register(
    local: Local,
    run: u32,
    dev: u32,
    cseq: u32,
    push: bool,
    branch: Branch,
) -> Bytes {
    let mut out = Vec::with_capacity(600);
    out.extend_from_slice(b"REGISTER sip:127.0.0.1 SIP/2.0\r\n");
    via(&mut out, local, branch);
    let _ = write!(
        out,
        "From: <sip:dev{dev}@127.0.0.1>;tag=r{dev}\r\nTo: <sip:dev{dev}@127.0.0.1>\r\n"
    );
    call_id(&mut out, Key::Registration(dev), run);
    let _ = write!(
        out,
        "CSeq: {cseq} REGISTER\r\nContact: <sip:dev{dev}@{};transport={}",
        local.addr,
        local.param()
    );
    if push {
        let _ = write!(
            out,
            ";pn-provider={PN_PROVIDER};pn-prid=tok{dev};pn-param=loadgen"
        );
    }
    let _ = write!(
        out,
        ">;+sip.instance=\"<urn:uuid:00000000-0000-4000-8000-{dev:012x}>\"\r\nExpires: 3600\r\n"
    );
    finish(out, "")
}

/// The device `dev` as the UAS of call `idx`: what its responses to the INVITE add.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Uas {
    pub idx: u64,
    pub dev: u32,
    pub local: Local,
}

/// A response to `request` (RFC 3261 §8.2.6): Via, From, Call-ID and CSeq copied, To with
/// a tag added. As the UAS of an INVITE (`uas`), 1xx and 2xx also copy Record-Route and
/// carry a Contact (§12.1.1), and a 2xx carries the SDP answer.
pub(crate) fn response(request: &Message, code: u16, uas: Option<Uas>) -> Bytes {
    let dialog = uas.filter(|_| (101..300).contains(&code));
    let mut out = Vec::with_capacity(768);
    let _ = write!(out, "SIP/2.0 {code} {}\r\n", default_reason(code));
    let tagged = matches!(request.to_header(), Some(Ok(to)) if to.tag().is_some());
    for field in request.headers() {
        let copy = match field.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => true,
            HeaderName::To => true,
            HeaderName::RecordRoute => dialog.is_some(),
            _ => false,
        };
        if !copy {
            continue;
        }
        out.extend_from_slice(field.display_name().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(field.value);
        if field.name == HeaderName::To && !tagged && code > 100 {
            let _ = match uas {
                Some(uas) => write!(out, ";tag=d{}", uas.idx),
                None => write!(out, ";tag=lgs"),
            };
        }
        out.extend_from_slice(b"\r\n");
    }
    let mut body = "";
    if let Some(uas) = dialog {
        let _ = write!(
            out,
            "Contact: <sip:dev{}@{};transport={}>\r\n",
            uas.dev,
            uas.local.addr,
            uas.local.param()
        );
        if (200..300).contains(&code) {
            out.extend_from_slice(b"Content-Type: application/sdp\r\n");
            body = ANSWER;
        }
    }
    finish(out, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpark::sip::{parse_datagram, validate_request};

    fn local() -> Local {
        Local {
            addr: "127.0.0.1:5070".parse().expect("an address"),
            transport: Transport::Udp,
        }
    }

    #[test]
    fn keys_round_trip_through_call_ids_and_branches() {
        let run = 0xdead_beef;
        let invite = parse_datagram(&invite(local(), run, 42, 7)).expect("parses");
        assert_eq!(key_of(&invite, run), Some(Key::Call(42)));
        assert_eq!(key_of(&invite, run + 1), None);
        let branch = Branch::Registration {
            dev: 9,
            run,
            cseq: 3,
        }
        .to_string();
        assert_eq!(key_of_branch(&branch, run), Some(Key::Registration(9)));
        let branch = Branch::Call {
            idx: 5,
            run,
            tag: Tag::Register(2),
        }
        .to_string();
        assert_eq!(key_of_branch(&branch, run), Some(Key::Call(5)));
        assert_eq!(key_of_branch("z9hG4bKlg12.zzzzzzzz.i", run), None);
        assert_eq!(key_of_call_id("lg.deadbeef@x", run), None);
        assert_eq!(key_of_call_id("lg1.deadbeefff@x", run), None);
    }

    #[test]
    fn built_requests_pass_the_servers_own_checks() {
        let run = 1;
        let requests = [
            invite(local(), run, 1, 2),
            cancel(local(), run, 1, 2),
            register(
                local(),
                run,
                2,
                1,
                true,
                Branch::Registration {
                    dev: 2,
                    run,
                    cseq: 1,
                },
            ),
        ];
        for bytes in requests {
            let message = parse_datagram(&bytes).expect("parses");
            assert!(validate_request(&message).is_ok(), "{bytes:?}");
        }
    }

    #[test]
    fn a_2xx_gives_an_ack_and_a_bye_through_the_reversed_route_set() {
        let ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKlg1.00000001.i\r\n\
Record-Route: <sip:pp-1-2@127.0.0.1:5060;lr>, <sip:edge@127.0.0.1;lr>\r\n\
From: <sip:caller@127.0.0.1>;tag=lg1\r\nTo: <sip:dev2@127.0.0.1>;tag=d1\r\n\
Call-ID: lg1.00000001@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:dev2@127.0.0.1:6000;transport=udp>\r\n\
Content-Length: 0\r\n\r\n";
        let ok = parse_datagram(ok).expect("parses");
        let branch = Branch::Call {
            idx: 1,
            run: 1,
            tag: Tag::Bye,
        };
        let bye = in_dialog("BYE", local(), branch, &ok).expect("a BYE");
        let bye = parse_datagram(&bye).expect("parses");
        assert_eq!(
            bye.request_uri_str(),
            Some("sip:dev2@127.0.0.1:6000;transport=udp")
        );
        let routes: Vec<_> = bye.elements(HeaderName::Route).flatten().collect();
        assert_eq!(
            routes,
            ["<sip:edge@127.0.0.1;lr>", "<sip:pp-1-2@127.0.0.1:5060;lr>"]
        );
        assert_eq!(bye.cseq().and_then(Result::ok).map(|c| c.seq), Some(2));
        assert!(validate_request(&bye).is_ok());
    }

    #[test]
    fn a_uas_2xx_copies_record_route_and_tags_to() {
        let invite = parse_datagram(&invite(local(), 1, 3, 4)).expect("parses");
        let uas = Uas {
            idx: 3,
            dev: 4,
            local: local(),
        };
        let ok = parse_datagram(&response(&invite, 200, Some(uas))).expect("parses");
        assert_eq!(ok.status(), Some(200));
        assert_eq!(
            ok.to_header().and_then(Result::ok).and_then(|t| t.tag()),
            Some("d3")
        );
        assert!(ok.contacts().next().is_some());
        assert!(!ok.body().is_empty());
        let busy = parse_datagram(&response(&invite, 486, Some(uas))).expect("parses");
        assert!(busy.contacts().next().is_none());
        assert!(busy.body().is_empty());
    }

    #[test]
    fn a_non_2xx_ack_reuses_the_invites_via() {
        let invite = parse_datagram(&invite(local(), 1, 3, 4)).expect("parses");
        let busy = parse_datagram(&response(&invite, 486, None)).expect("parses");
        let ack = parse_datagram(&ack_non_2xx(&busy).expect("an ACK")).expect("parses");
        assert_eq!(top_branch(&ack), top_branch(&invite));
        assert_eq!(ack.request_uri_str(), Some("sip:dev4@127.0.0.1"));
        assert!(validate_request(&ack).is_ok());
    }
}
