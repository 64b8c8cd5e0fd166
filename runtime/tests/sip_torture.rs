//! Runs every file of the RFC 4475 and RFC 5118 torture corpora (tests/torture/, see its
//! README for the expected handling) through the framers and the proxy validator.
//!
//! In /work/main this file imports `pushpark::sip`; in the scratch crate `pp_sip`.

use pushpark::sip::{
    frame_stream, parse_datagram, validate_request, validate_response, Frame, HeaderName, Host,
    Message, ParseError,
};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/torture");

fn load(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{ROOT}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Parses as a datagram and passes proxy validation.
    Accept,
    /// Parses and passes proxy validation; a higher layer (named in the table) decides.
    Role(&'static str),
    /// Parses; validation answers this code and reason.
    Reject(u16, &'static str),
    /// Datagram framing fails with this error (cannot be answered: drop).
    Unparseable(ParseError),
    /// A response that parses and passes response validation (transaction layer decides).
    Response,
    /// A response to drop: unparseable or failing response validation.
    DropResponse,
}
use Expect::*;

const TABLE: &[(&str, Expect)] = &[
    // RFC 4475 §3.1.1 valid
    ("rfc4475/valid/wsinv.dat", Accept),
    (
        "rfc4475/valid/intmeth.dat",
        Role("routing: forward or 404 by R-URI; a UAS answers 501"),
    ),
    ("rfc4475/valid/esc01.dat", Accept),
    (
        "rfc4475/valid/escnull.dat",
        Role("registrar: 200 with two bindings"),
    ),
    (
        "rfc4475/valid/esc02.dat",
        Role("routing: unknown method RE%47IST%45R is not REGISTER; forward or 404"),
    ),
    ("rfc4475/valid/lwsdisp.dat", Accept),
    ("rfc4475/valid/longreq.dat", Accept),
    ("rfc4475/valid/dblreq.dat", Accept),
    ("rfc4475/valid/semiuri.dat", Accept),
    ("rfc4475/valid/transports.dat", Accept),
    ("rfc4475/valid/mpart01.dat", Accept),
    ("rfc4475/valid/unreason.dat", Response),
    ("rfc4475/valid/noreason.dat", Response),
    // RFC 4475 §3.1.2 invalid
    ("rfc4475/invalid/badinv01.dat", Reject(400, "Malformed Via")),
    (
        "rfc4475/invalid/clerr.dat",
        Unparseable(ParseError::BodyTruncated),
    ),
    ("rfc4475/invalid/ncl.dat", Reject(400, "Bad Content-Length")),
    ("rfc4475/invalid/scalar02.dat", Reject(400, "Bad CSeq")),
    ("rfc4475/invalid/scalarlg.dat", DropResponse),
    ("rfc4475/invalid/quotbal.dat", Reject(400, "Malformed To")),
    (
        "rfc4475/invalid/ltgtruri.dat",
        Reject(400, "Malformed Request-URI"),
    ),
    (
        "rfc4475/invalid/lwsruri.dat",
        Reject(400, "Malformed Request-URI"),
    ),
    (
        "rfc4475/invalid/lwsstart.dat",
        Reject(400, "Malformed Request-URI"),
    ),
    (
        "rfc4475/invalid/trws.dat",
        Reject(400, "Malformed Request-Line"),
    ),
    (
        "rfc4475/invalid/escruri.dat",
        Reject(400, "Malformed Request-URI"),
    ),
    (
        "rfc4475/invalid/baddate.dat",
        Role("proxy ignores Date and forwards it; a UAS using Date may 400"),
    ),
    (
        "rfc4475/invalid/regbadct.dat",
        Role("registrar: 400 (Contact URI with ?headers not in <>); NameAddr::bracketed is false"),
    ),
    ("rfc4475/invalid/badaspec.dat", Reject(400, "Malformed To")),
    ("rfc4475/invalid/baddn.dat", Reject(400, "Malformed From")),
    (
        "rfc4475/invalid/badvers.dat",
        Reject(505, "Version Not Supported"),
    ),
    (
        "rfc4475/invalid/mismatch01.dat",
        Reject(400, "CSeq method does not match"),
    ),
    (
        "rfc4475/invalid/mismatch02.dat",
        Reject(501, "Not Implemented"),
    ),
    ("rfc4475/invalid/bigcode.dat", DropResponse),
    // RFC 4475 §3.2-3.4
    (
        "rfc4475/other/badbranch.dat",
        Role("transaction layer: branch is only the magic cookie, fall back to RFC 2543 matching"),
    ),
    ("rfc4475/other/insuf.dat", Reject(400, "Missing Call-ID")),
    (
        "rfc4475/other/unkscm.dat",
        Reject(416, "Unsupported URI Scheme"),
    ),
    (
        "rfc4475/other/novelsc.dat",
        Reject(416, "Unsupported URI Scheme"),
    ),
    (
        "rfc4475/other/unksm2.dat",
        Role("registrar: 400, To is not a SIP AOR; proxy forwards"),
    ),
    (
        "rfc4475/other/bext01.dat",
        Role("proxy core: 420 Bad Extension with Unsupported: Proxy-Require tokens"),
    ),
    ("rfc4475/other/invut.dat", Role("UAS: 415; proxy forwards")),
    (
        "rfc4475/other/regaut01.dat",
        Role("registrar/authentication: unknown scheme, 200 or 401"),
    ),
    (
        "rfc4475/other/multi01.dat",
        Reject(400, "Multiple Call-ID headers"),
    ),
    (
        "rfc4475/other/mcl01.dat",
        Reject(400, "Multiple Content-Length headers"),
    ),
    ("rfc4475/other/bcast.dat", Response),
    (
        "rfc4475/other/zeromf.dat",
        Role("proxy core: 483 Too Many Hops (Max-Forwards 0)"),
    ),
    (
        "rfc4475/other/cparam01.dat",
        Role("registrar: 200, unknownparam is a Contact header param"),
    ),
    (
        "rfc4475/other/cparam02.dat",
        Role("registrar: 200, unknownparam is a URI param"),
    ),
    (
        "rfc4475/other/regescrt.dat",
        Role("registrar: 200, keeps ?Route=... in the binding"),
    ),
    ("rfc4475/other/sdp01.dat", Role("UAS: 406; proxy forwards")),
    ("rfc4475/other/inv2543.dat", Accept),
    (
        "rfc4475/other/test.dat",
        Unparseable(ParseError::BadStartLine),
    ),
    // RFC 5118
    ("rfc5118/ipv6-good.dat", Accept),
    ("rfc5118/ipv6-bad.dat", Reject(400, "Malformed Request-URI")),
    ("rfc5118/port-ambiguous.dat", Accept),
    ("rfc5118/port-unambiguous.dat", Accept),
    ("rfc5118/via-received-param-with-delim.dat", Accept),
    ("rfc5118/via-received-param-no-delim.dat", Accept),
    ("rfc5118/ipv6-in-sdp.dat", Accept),
    ("rfc5118/mult-ip-in-header.dat", Accept),
    ("rfc5118/mult-ip-in-sdp.dat", Accept),
    ("rfc5118/ipv4-mapped-ipv6.dat", Accept),
    ("rfc5118/ipv6-bug-abnf-3-colons.dat", Accept),
    ("rfc5118/ipv6-correct-abnf-2-colons.dat", Accept),
];

fn check(rel: &str, expect: Expect) {
    let bytes = load(rel);
    let parsed = parse_datagram(&bytes);
    match expect {
        Accept | Role(_) => {
            let layer = if let Role(layer) = expect {
                layer
            } else {
                "proxy"
            };
            let m = parsed.unwrap_or_else(|e| panic!("{rel}: parse error {e:?}"));
            assert_eq!(validate_request(&m), Ok(()), "{rel} (decided by: {layer})");
            // Everything a proxy touches parses.
            assert!(m.vias().all(|v| v.is_ok()), "{rel}");
            // A forwarded copy parses again and validates the same way.
            let fwd = m
                .forward()
                .push_via("SIP/2.0/UDP [2001:db8::99]:5060;branch=z9hG4bKfwd")
                .max_forwards(69)
                .to_bytes();
            let m2 = parse_datagram(&fwd).unwrap_or_else(|e| panic!("{rel}: reparse {e:?}"));
            assert_eq!(validate_request(&m2), Ok(()), "{rel} (forwarded)");
            assert_eq!(m2.body(), m.body(), "{rel}");
        }
        Reject(code, reason) => {
            let m = parsed.unwrap_or_else(|e| panic!("{rel}: parse error {e:?}"));
            let r = validate_request(&m).expect_err(rel);
            assert_eq!((r.code, &*r.reason), (code, reason), "{rel}");
            // The answer can be built from what was parsed.
            let resp = m.response(r.code).reason(&r.reason).to_bytes();
            let resp = parse_datagram(&resp).unwrap_or_else(|e| panic!("{rel}: response {e:?}"));
            assert_eq!(resp.status(), Some(code));
        }
        Unparseable(e) => assert_eq!(parsed.err(), Some(e), "{rel}"),
        Response => {
            let m = parsed.unwrap_or_else(|e| panic!("{rel}: parse error {e:?}"));
            assert!(!m.is_request());
            assert_eq!(validate_response(&m), Ok(()), "{rel}");
            let out = m.forward().pop_via().to_bytes();
            parse_datagram(&out).unwrap();
        }
        DropResponse => {
            if let Ok(m) = parsed {
                assert!(validate_response(&m).is_err(), "{rel}");
            }
        }
    }
}

#[test]
fn every_corpus_file_has_a_verdict() {
    let mut files = Vec::new();
    for dir in [
        "rfc4475/valid",
        "rfc4475/invalid",
        "rfc4475/other",
        "rfc5118",
    ] {
        for e in std::fs::read_dir(format!("{ROOT}/{dir}")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "dat") {
                files.push(format!(
                    "{dir}/{}",
                    p.file_name().unwrap().to_str().unwrap()
                ));
            }
        }
    }
    files.sort();
    let mut listed: Vec<String> = TABLE.iter().map(|(f, _)| f.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
    assert_eq!(files.len(), 62);
}

#[test]
fn torture_verdicts() {
    for (rel, expect) in TABLE {
        check(rel, *expect);
    }
}

/// The RFC 5118 archive originals (bare LF, original Content-Lengths): must not break.
#[test]
fn rfc5118_archive_originals() {
    for e in std::fs::read_dir(format!("{ROOT}/rfc5118/archive")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        let b = std::fs::read(&p).unwrap();
        match parse_datagram(&b) {
            // The RFC's values (268, 181) exceed the LF bodies (242, 180 octets).
            Err(ParseError::BodyTruncated) => {
                assert!(name == "ipv6-in-sdp" || name == "mult-ip-in-sdp", "{name}")
            }
            Err(e) => panic!("{name}: {e:?}"),
            Ok(m) if name == "ipv6-bad" => assert_eq!(validate_request(&m).unwrap_err().code, 400),
            Ok(m) => assert_eq!(validate_request(&m), Ok(()), "{name}"),
        }
    }
}

fn stream_all(mut buf: &[u8]) -> (Vec<Frame>, Result<(), ParseError>, usize) {
    let mut frames = Vec::new();
    loop {
        match frame_stream(buf) {
            Ok(Some((n, f))) => {
                frames.push(f);
                buf = &buf[n..];
            }
            Ok(None) => return (frames, Ok(()), buf.len()),
            Err(e) => return (frames, Err(e), buf.len()),
        }
    }
}

#[test]
fn datagram_vs_stream() {
    // clerr: UDP error; stream waits for the rest (transport closes on its own timeout).
    let clerr = load("rfc4475/invalid/clerr.dat");
    assert_eq!(
        parse_datagram(&clerr).unwrap_err(),
        ParseError::BodyTruncated
    );
    assert_eq!(frame_stream(&clerr), Ok(None));
    // ncl: UDP 400; stream fatal.
    let ncl = load("rfc4475/invalid/ncl.dat");
    assert_eq!(
        validate_request(&parse_datagram(&ncl).unwrap())
            .unwrap_err()
            .code,
        400
    );
    assert_eq!(frame_stream(&ncl), Err(ParseError::BadContentLength));
    assert!(ParseError::BadContentLength.is_fatal_for_stream());
    let five = String::from_utf8(ncl.clone())
        .unwrap()
        .replace("Content-Length: -999", "Content-Length: five");
    assert_eq!(
        frame_stream(five.as_bytes()),
        Err(ParseError::BadContentLength)
    );
    // mcl01: UDP 400; stream fatal.
    let mcl = load("rfc4475/other/mcl01.dat");
    assert_eq!(frame_stream(&mcl), Err(ParseError::MultipleContentLength));
    // dblreq: UDP = the REGISTER only, trailing INVITE ignored and not forwarded.
    let dbl = load("rfc4475/valid/dblreq.dat");
    let m = parse_datagram(&dbl).unwrap();
    assert_eq!(m.method().unwrap().as_str(), "REGISTER");
    assert!(m.body().is_empty());
    let fwd = m.forward().to_bytes();
    assert!(!fwd.windows(6).any(|w| w == b"INVITE"));
    // ... stream: REGISTER, the stray CRLF, then the INVITE as the next message; its body
    // is 155 octets but it announces 150, so the last 5 octets ("C\r\n\r\n") are garbage
    // and the connection would be closed (the RFC says: send this test as a datagram).
    let (frames, res, left) = stream_all(&dbl);
    assert_eq!(res, Err(ParseError::BadStartLine));
    assert_eq!(left, 5);
    let methods: Vec<_> = frames
        .iter()
        .map(|f| match f {
            Frame::Message(m) => m.method().unwrap().as_str().to_owned(),
            Frame::Ping => "ping".into(),
            Frame::Pong => "crlf".into(),
        })
        .collect();
    assert_eq!(methods, ["REGISTER", "crlf", "INVITE"]);
    // inv2543 has no Content-Length: fine over UDP, fatal on a stream.
    let inv = load("rfc4475/other/inv2543.dat");
    assert!(parse_datagram(&inv).unwrap().body().starts_with(b"v=0"));
    assert_eq!(frame_stream(&inv), Err(ParseError::MissingContentLength));
    // Keep-alive ping between messages, byte-by-byte delivery.
    let reg = load("rfc5118/ipv6-good.dat");
    let mut s = b"\r\n\r\n".to_vec();
    s.extend_from_slice(&reg);
    s.extend_from_slice(b"\r\n\r\n");
    let (frames, res, _) = stream_all(&s);
    assert_eq!(res, Ok(()));
    assert!(matches!(
        &frames[..],
        [Frame::Ping, Frame::Message(_), Frame::Ping]
    ));
    for i in 0..reg.len() {
        assert_eq!(frame_stream(&reg[..i]), Ok(None), "prefix {i}");
    }
}

#[test]
fn typed_views_on_corpus() {
    let m = parse_datagram(&load("rfc4475/valid/wsinv.dat")).unwrap();
    assert_eq!(m.max_forwards(), Some(Ok(68)));
    assert_eq!(m.cseq().unwrap().unwrap().seq, 9);
    let vias: Vec<_> = m.vias().map(|v| v.unwrap().host_raw).collect();
    assert_eq!(
        vias,
        ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    );
    assert_eq!(m.to_header().unwrap().unwrap().tag(), Some("1918181833n"));
    assert_eq!(m.from_header().unwrap().unwrap().tag(), Some("98asjd8"));
    assert_eq!(m.first(HeaderName::Subject), Some(&b""[..]));
    assert_eq!(
        m.values_by_name("UnknownHeaderWithUnusualValue").next(),
        Some(&b";;,,;;,;"[..])
    );
    let c = m.contacts().next().unwrap().unwrap();
    assert_eq!(c.q(), Some(330));
    assert_eq!(c.addr().unwrap().param("newparam"), Some(Some("newvalue")));
    // unknown headers are forwarded byte-for-byte
    let fwd = m.forward().to_bytes();
    let folded: &[u8] = b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\nUnknownHeaderWithUnusualValue: ;;,,;;,;\r\n";
    assert!(fwd.windows(folded.len()).any(|w| w == folded));

    let m = parse_datagram(&load("rfc4475/valid/longreq.dat")).unwrap();
    assert_eq!(m.vias().count(), 34);

    let m = parse_datagram(&load("rfc4475/valid/esc02.dat")).unwrap();
    assert!(!m.method().unwrap().is_known());
    assert_eq!(m.contacts().count(), 2);

    let m = parse_datagram(&load("rfc4475/valid/mpart01.dat")).unwrap();
    assert_eq!(m.body().len(), 553);
    assert!(m.content_type().unwrap().unwrap().is("multipart", "mixed"));

    let m = parse_datagram(&load("rfc5118/port-ambiguous.dat")).unwrap();
    let u = m.request_uri().unwrap().unwrap();
    let u = u.as_sip().unwrap();
    assert_eq!(u.host, Host::V6("2001:db8::10:5070".parse().unwrap()));
    assert_eq!(u.port, None);

    let m = parse_datagram(&load("rfc5118/port-unambiguous.dat")).unwrap();
    let u = m.request_uri().unwrap().unwrap();
    assert_eq!(u.as_sip().unwrap().port, Some(5070));

    let m = parse_datagram(&load("rfc5118/via-received-param-with-delim.dat")).unwrap();
    assert_eq!(
        m.top_via().unwrap().unwrap().received(),
        Some("2001:db8::9:255".parse().unwrap())
    );
    let m = parse_datagram(&load("rfc5118/mult-ip-in-header.dat")).unwrap();
    let v: Vec<_> = m.vias().map(|v| v.unwrap()).collect();
    assert_eq!(v[0].port, Some(6050));
    assert_eq!(v[2].received(), Some("192.0.2.200".parse().unwrap()));

    let m = parse_datagram(&load("rfc4475/other/cparam01.dat")).unwrap();
    let c = m.contacts().next().unwrap().unwrap();
    assert!(c.addr().unwrap().params.contains("unknownparam"));
    assert!(c.addr().unwrap().uri.as_sip().unwrap().params.is_empty());
    let m = parse_datagram(&load("rfc4475/invalid/regbadct.dat")).unwrap();
    let c = m.contacts().next().unwrap().unwrap();
    assert!(!c.addr().unwrap().bracketed);
    assert!(c.addr().unwrap().uri.as_sip().unwrap().headers.is_some());
    let m = parse_datagram(&load("rfc4475/other/bext01.dat")).unwrap();
    assert_eq!(
        m.option_tags(HeaderName::ProxyRequire).unwrap(),
        ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    );
    let m = parse_datagram(&load("rfc4475/other/zeromf.dat")).unwrap();
    assert_eq!(m.max_forwards_or_default(), Ok(0));
    let m = parse_datagram(&load("rfc4475/other/inv2543.dat")).unwrap();
    assert_eq!(m.max_forwards_or_default(), Ok(70));
}

/// A Linphone-style REGISTER: compact forms, IPv6, +sip.instance, pn-* URI params.
#[test]
fn mobile_register() {
    let reg = b"REGISTER sip:sip.example.org SIP/2.0\r\n\
v: SIP/2.0/TLS [2001:db8::5]:49152;branch=z9hG4bK.Ab12;rport\r\n\
f: <sip:alice@sip.example.org>;tag=x7\r\n\
t: sip:alice@sip.example.org\r\n\
i: reg-1@[2001:db8::5]\r\n\
CSeq: 20 REGISTER\r\n\
m: <sip:alice@[2001:db8::5]:49152;transport=tls;pn-provider=apns.dev;pn-param=ABCD1234.org.example.phone.voip&remote;pn-prid=00fc13adff78512;pn-timeout=0;pn-silent=1>;+sip.instance=\"<urn:uuid:3f8b1c2e-0000-4000-8000-000000000001>\";reg-id=1;+sip.pnsreg;expires=3600\r\n\
k: outbound, path, gruu\r\n\
Authorization: Digest username=\"alice\", realm=\"sip.example.org\", nonce=\"abc\", uri=\"sip:sip.example.org\", response=\"0123\", algorithm=SHA-256\r\n\
User-Agent: LinphoneiOS/5.2\r\n\
l: 0\r\n\r\n";
    let m: Message = parse_datagram(reg).unwrap();
    assert_eq!(validate_request(&m), Ok(()));
    let c = m.contacts().next().unwrap().unwrap();
    assert_eq!(
        c.sip_instance(),
        Some("<urn:uuid:3f8b1c2e-0000-4000-8000-000000000001>")
    );
    assert_eq!(c.reg_id(), Some(1));
    assert_eq!(c.expires(), Some(3600));
    let u = c.addr().unwrap().uri.as_sip().unwrap().clone();
    assert_eq!(u.pn_provider(), Some(Some("apns.dev")));
    assert_eq!(u.pn_prid(), Some("00fc13adff78512"));
    assert_eq!(u.pn_param(), Some("ABCD1234.org.example.phone.voip&remote"));
    assert_eq!(
        m.option_tags(HeaderName::Supported).unwrap(),
        ["outbound", "path", "gruu"]
    );
    assert_eq!(m.call_id(), Some(Ok("reg-1@[2001:db8::5]")));
    assert_eq!(m.top_via().unwrap().unwrap().rport(), Some(None));
    assert!(m
        .first(HeaderName::Authorization)
        .unwrap()
        .ends_with(b"SHA-256"));
}
