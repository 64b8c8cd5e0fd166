//! What the SIP targets do with a message that parsed: every typed view the server reads,
//! the validators, the serialisers, and the invariants the server relies on.

// Each target uses a part of this module.
#![allow(dead_code)]

use pushpark::sip::{
    default_reason, parse_datagram, unescape, unquote, validate_request, validate_response, CSeq,
    CommaSplit, Contact, ContentType, HeaderName, Message, NameAddr, Params, SipUri, Uri, Via,
};

/// Every header the server treats as a list of option tags.
const OPTION_TAG_HEADERS: [HeaderName; 4] = [
    HeaderName::Require,
    HeaderName::ProxyRequire,
    HeaderName::Supported,
    HeaderName::Unsupported,
];

/// A top Via as the server writes it (`received` and `rport` added, RFC 3581).
const EDITED_VIA: &str =
    "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfuzz;received=198.51.100.7;rport=40000";

/// Exercise a parsed message the way the server does, and check what it relies on.
pub fn exercise_message(m: &Message) {
    // The plain accessors.
    let _ = (m.start_line(), m.is_request(), m.method(), m.version());
    let _ = (
        m.status(),
        m.status_code(),
        m.reason(),
        m.body(),
        m.body_bytes(),
    );
    let _ = (
        m.content_length_state(),
        m.content_length(),
        m.header_count(),
    );
    if let Some(method) = m.method() {
        let _ = (method.as_str(), method.is_known(), method.to_string());
    }
    if let Some(code) = m.status() {
        let _ = default_reason(code);
    }
    assert_eq!(m.bytes().as_ref(), m.as_bytes());
    for (i, field) in m.headers().enumerate() {
        let _ = field.display_name();
        // Looking each name up again is quadratic in the header count: the first few do.
        if i < 16 {
            assert!(m.values_by_name(field.wire_name).count() >= 1);
            assert!(m.count(field.name) >= 1);
        }
        if let Ok(text) = std::str::from_utf8(field.value) {
            exercise_header_value(field.name, text);
        }
    }

    // The typed views, as the transaction layer, registrar and proxy read them.
    for via in m.vias().flatten() {
        exercise_via(&via);
    }
    let _ = m.top_via();
    for addr in [m.from_header(), m.to_header()]
        .into_iter()
        .flatten()
        .flatten()
    {
        exercise_name_addr(&addr);
    }
    let _ = m.call_id();
    if let Some(Ok(cseq)) = m.cseq() {
        let _ = cseq.method();
    }
    let _ = (m.max_forwards(), m.max_forwards_or_default(), m.expires());
    for contact in m.contacts().flatten() {
        exercise_contact(&contact);
    }
    for route in m.routes().chain(m.record_routes()).flatten() {
        exercise_name_addr(&route);
    }
    for name in OPTION_TAG_HEADERS {
        let _ = m.option_tags(name);
        let _ = m.elements(name).count();
    }
    if let Some(Ok(ct)) = m.content_type() {
        let _ = ct.is("application", "sdp");
    }
    if let Some(Ok(uri)) = m.request_uri() {
        exercise_uri(&uri);
    }

    // The validators, and what their `Ok` promises to the layers above.
    match validate_request(m) {
        Ok(()) => {
            assert!(m.is_request());
            assert!(matches!(m.request_uri(), Some(Ok(Uri::Sip(_)))));
            assert!(matches!(m.cseq(), Some(Ok(_))));
            assert!(matches!(m.call_id(), Some(Ok(_))));
            assert!(matches!(m.top_via(), Some(Ok(_))));
            assert!(matches!(m.from_header(), Some(Ok(_))));
            assert!(matches!(m.to_header(), Some(Ok(_))));
            assert!(m.max_forwards_or_default().is_ok());
            assert!(m.vias().all(|v| v.is_ok()));
            assert!(m.contacts().all(|c| c.is_ok()));
        }
        Err(rejection) => {
            assert!(
                matches!(rejection.code, 400 | 416 | 501 | 505),
                "{rejection}"
            );
            let _ = (rejection.status_code(), rejection.to_string());
        }
    }
    match validate_response(m) {
        Ok(()) => {
            assert!(!m.is_request());
            assert!(matches!(m.top_via(), Some(Ok(_))));
            assert!(matches!(m.cseq(), Some(Ok(_))));
            assert!(matches!(m.call_id(), Some(Ok(_))));
        }
        Err(drop) => assert!(!drop.0.is_empty()),
    }

    // The serialisers: a proxy forwarding, a UAS answering.
    let _ = m
        .forward()
        .request_uri("sip:bob@192.0.2.2:5060")
        .push_via("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKfwd")
        .pop_route()
        .max_forwards(69)
        .record_route("<sip:192.0.2.1;lr>")
        .remove_header("Proxy-Authorization")
        .add_header("X-Fuzz", "1")
        .content_length(true)
        .to_bytes();
    let _ = m.forward().pop_via().to_bytes();
    if m.is_request() {
        let _ = m
            .response(401)
            .to_tag("fuzz")
            .header("WWW-Authenticate", "Digest realm=\"x\", nonce=\"y\"")
            .to_bytes();
        let _ = m
            .response(200)
            .body("application/sdp", b"v=0\r\n")
            .to_bytes();
    }

    // The in-place top-Via edit gives exactly what parsing the edited octets gives: the
    // server relies on it to skip a second parse.
    if let Some(edited) = m.with_top_via(EDITED_VIA) {
        let reparsed = parse_datagram(edited.as_bytes());
        assert_eq!(reparsed.as_ref(), Ok(&edited));
        assert_eq!(edited.first(HeaderName::Via), Some(EDITED_VIA.as_bytes()));
        assert_eq!(edited.body(), m.body());
        assert_eq!(edited.header_count(), m.header_count());
    }
}

/// Parse one header value with the view its name calls for, and with the generic ones.
pub fn exercise_header_value(name: HeaderName, text: &str) {
    match name {
        HeaderName::Via => {
            for element in CommaSplit::new(text, "Via").flatten() {
                if let Ok(via) = Via::parse(element) {
                    exercise_via(&via);
                }
            }
        }
        HeaderName::Contact => {
            for element in CommaSplit::new(text, "Contact").flatten() {
                if let Ok(contact) = Contact::parse(element) {
                    exercise_contact(&contact);
                }
            }
        }
        HeaderName::From
        | HeaderName::To
        | HeaderName::Route
        | HeaderName::RecordRoute
        | HeaderName::Path => {
            for element in CommaSplit::new(text, "name-addr").flatten() {
                if let Ok(addr) = NameAddr::parse(element, "name-addr") {
                    exercise_name_addr(&addr);
                }
            }
        }
        HeaderName::CSeq => {
            if let Ok(cseq) = CSeq::parse(text) {
                let _ = cseq.method().as_str().len();
            }
        }
        HeaderName::ContentType => {
            if let Ok(ct) = ContentType::parse(text) {
                let _ = ct.params.iter().count();
            }
        }
        HeaderName::Authorization | HeaderName::ProxyAuthorization => {
            let _ = pushpark::auth::parse_authorization(text);
        }
        _ => {}
    }
}

/// Everything a server asks of a Via.
pub fn exercise_via(via: &Via<'_>) {
    let _ = (via.branch(), via.has_rfc3261_branch(), via.received());
    let _ = (via.rport(), via.maddr(), via.ttl(), via.host.ip());
    let _ = via.host.to_string();
    exercise_params(&via.params);
}

/// Everything a registrar asks of a Contact.
pub fn exercise_contact(contact: &Contact<'_>) {
    let _ = (contact.q(), contact.expires(), contact.sip_instance());
    let _ = contact.reg_id();
    if let Some(q) = contact.q() {
        assert!(q <= 1000);
    }
    if let Some(addr) = contact.addr() {
        exercise_name_addr(addr);
    }
}

/// Everything a proxy asks of a name-addr (From, To, Route, Contact).
pub fn exercise_name_addr(addr: &NameAddr<'_>) {
    let _ = (addr.tag(), addr.param("expires"), addr.display_name);
    exercise_params(&addr.params);
    exercise_uri(&addr.uri);
    // The URI text it kept parses to the same URI.
    assert_eq!(Uri::parse(addr.uri_raw).as_ref(), Ok(&addr.uri));
}

/// Everything a server asks of a URI (RFC 8599 push parameters included).
pub fn exercise_uri(uri: &Uri<'_>) {
    if let Some(sip) = uri.as_sip() {
        exercise_sip_uri(sip);
    }
}

/// Everything a server asks of a SIP URI.
pub fn exercise_sip_uri(u: &SipUri<'_>) {
    let _ = (
        u.user_unescaped(),
        u.pn_provider(),
        u.pn_prid(),
        u.pn_param(),
    );
    let _ = (u.pn_purr(), u.transport(), u.lr(), u.host.ip(), u.port);
    let _ = u.host.to_string();
    if let Some(user) = u.user {
        let _ = unescape(user);
    }
    exercise_params(&u.params);
}

/// A validated parameter list: iterate and look up.
pub fn exercise_params(params: &Params<'_>) {
    for p in params.iter() {
        let _ = p.value();
        assert!(params.contains(p.name));
        if let Some(v) = p.raw_value {
            let _ = unquote(v);
        }
    }
    let _ = (params.as_str(), params.is_empty(), params.get("tag"));
}
