//! The lexical layer on its own, on arbitrary text: URIs (SIP, SIPS, other schemes, IPv6
//! references), hosts, Via values, name-addrs, Contact, CSeq, Content-Type, parameter
//! lists, comma splitting, `%HH` unescaping and unquoting. No input may panic.
//!
//! Input: one selector octet (which entry point leads), then the text (lossy UTF-8, so
//! every input is exercised; a header value reaches these parsers as `&str` too).

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use pushpark::sip::{
    parse_decimal_u32, unescape, unquote, CSeq, CommaSplit, Contact, ContentType, Host, NameAddr,
    Params, SipUri, Uri, Via,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let s: &str = &text;

    // Every entry point sees every input; the selector only adds the one it names on each
    // comma-separated element, as a list header's values reach it.
    match Uri::parse(s) {
        Ok(uri) => {
            common::exercise_uri(&uri);
            // `SipUri::parse` is `Uri::parse` restricted to sip/sips.
            assert_eq!(SipUri::parse(s).ok().as_ref(), uri.as_sip());
        }
        Err(_) => assert!(SipUri::parse(s).is_err()),
    }
    for bare_v6 in [false, true] {
        if let Ok(host) = Host::parse(s, bare_v6) {
            let shown = host.to_string();
            // An address shows as an address that parses back to the same host.
            if let Some(ip) = host.ip() {
                assert_eq!(
                    Host::parse(&shown, false).ok().and_then(|h| h.ip()),
                    Some(ip)
                );
            }
        }
    }
    if let Ok(via) = Via::parse(s) {
        common::exercise_via(&via);
    }
    if let Ok(addr) = NameAddr::parse(s, "fuzz") {
        common::exercise_name_addr(&addr);
    }
    if let Ok(contact) = Contact::parse(s) {
        common::exercise_contact(&contact);
    }
    if let Ok(cseq) = CSeq::parse(s) {
        let _ = cseq.method();
    }
    if let Ok(ct) = ContentType::parse(s) {
        common::exercise_params(&ct.params);
    }
    if let Ok(params) = Params::parse(s, "fuzz") {
        common::exercise_params(&params);
    }
    let _ = parse_decimal_u32(s);
    let unescaped = unescape(s);
    // `%HH` becomes one octet; nothing else changes: never longer than the input.
    assert!(unescaped.len() <= s.len());
    if !s.contains('%') {
        assert_eq!(unescaped.as_ref(), s.as_bytes());
    }
    let unquoted = unquote(s);
    assert!(unquoted.len() == s.len() || unquoted.len() + 2 == s.len());

    for element in CommaSplit::new(s, "fuzz").flatten() {
        match selector % 6 {
            0 => {
                if let Ok(via) = Via::parse(element) {
                    common::exercise_via(&via);
                }
            }
            1 => {
                if let Ok(contact) = Contact::parse(element) {
                    common::exercise_contact(&contact);
                }
            }
            2 => {
                if let Ok(addr) = NameAddr::parse(element, "fuzz") {
                    common::exercise_name_addr(&addr);
                }
            }
            3 => {
                if let Ok(uri) = Uri::parse(element) {
                    common::exercise_uri(&uri);
                }
            }
            4 => {
                if let Ok(params) = Params::parse(element, "fuzz") {
                    common::exercise_params(&params);
                }
            }
            _ => {
                let _ = unescape(element);
            }
        }
    }
});
