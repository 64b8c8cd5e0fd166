//! Tests of the digest module, on a fake clock (`now` is just a number).

use std::path::Path;

use super::*;

// ---- a tiny, independent test-side client (RFC 7616 §3.4.1) ----------------------

/// Hex `H(data)` computed straight from the hash crates, not via the module.
fn client_h(alg: &str, data: &str) -> String {
    use sha2::Digest as _;
    match alg {
        "MD5" => hex::encode(md5::Md5::digest(data.as_bytes())),
        "SHA-256" => hex::encode(sha2::Sha256::digest(data.as_bytes())),
        other => panic!("test client: no algorithm {other}"),
    }
}

/// What a phone computes for `qop=auth`:
/// `H(H(user:realm:pass):nonce:nc:cnonce:auth:H(method:uri))`.
#[allow(clippy::too_many_arguments)]
fn client_response(
    alg: &str,
    user: &str,
    realm: &str,
    pass: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
) -> String {
    let ha1 = client_h(alg, &format!("{user}:{realm}:{pass}"));
    let ha2 = client_h(alg, &format!("{method}:{uri}"));
    client_h(alg, &format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
}

/// A phone's `Authorization` header value for `qop=auth`.
#[allow(clippy::too_many_arguments)]
fn client_header(
    alg: &str,
    user: &str,
    realm: &str,
    pass: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: u32,
) -> String {
    let nc = format!("{nc:08x}");
    let cnonce = "0a4f113b";
    let response = client_response(alg, user, realm, pass, method, uri, nonce, &nc, cnonce);
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={alg}, cnonce=\"{cnonce}\", qop=auth, nc={nc}"
    )
}

/// Takes the nonce out of a challenge value the way a client would.
fn nonce_of(challenge: &str) -> String {
    let start = challenge.find("nonce=\"").expect("nonce in challenge") + 7;
    let len = challenge[start..].find('"').expect("closing quote");
    challenge[start..start + len].to_string()
}

const REALM: &str = "pushpark.example";
const T0: u64 = 1_700_000_000;
const URI: &str = "sip:pushpark.example";

/// Digest with both algorithms offered, SHA-256 first, and the legacy RFC 2069 form let in
/// (the defaults offer MD5 alone and refuse that form).
fn auth() -> DigestAuth {
    let mut config = DigestConfig::new(REALM, Secret::generate());
    config.algorithms = Algorithm::ALL.to_vec();
    config.allow_rfc2069 = true;
    DigestAuth::new(config)
}

fn stored_ha1(alg: Algorithm, pass: &str) -> String {
    ha1(alg, "alice", REALM, pass)
}

/// Parses and verifies a client header against alice's stored HA1 for `pass`.
fn check(a: &DigestAuth, header: &str, stored_pass: &str, uri: &str, now: u64) -> Verdict {
    let creds = parse_authorization(header).expect("client header parses");
    a.verify(
        &creds,
        "REGISTER",
        uri,
        &stored_ha1(creds.algorithm, stored_pass),
        now,
    )
}

fn ok() -> Verdict {
    Verdict::Authenticated {
        username: "alice".into(),
    }
}

// ---- verification -------------------------------------------------------------------

#[test]
fn real_client_md5_and_sha256_responses_with_qop_auth_are_accepted() {
    let a = auth();
    for (i, alg) in ["SHA-256", "MD5"].into_iter().enumerate() {
        let nonce = nonce_of(&a.challenges(T0, false)[i]);
        let h = client_header(alg, "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1);
        assert_eq!(check(&a, &h, "s3cret", URI, T0 + 10), ok(), "{alg}");
    }
}

#[test]
fn wrong_password_is_rejected() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    let h = client_header(
        "SHA-256", "alice", REALM, "guess", "REGISTER", URI, &nonce, 1,
    );
    assert_eq!(
        check(&a, &h, "s3cret", URI, T0),
        Verdict::Invalid(Rejection::WrongResponse)
    );
}

#[test]
fn altered_method_is_rejected() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    let h = client_header("MD5", "alice", REALM, "s3cret", "INVITE", URI, &nonce, 1);
    assert_eq!(
        check(&a, &h, "s3cret", URI, T0),
        Verdict::Invalid(Rejection::WrongResponse)
    );
}

#[test]
fn nonce_from_another_secret_is_rejected() {
    let a = auth();
    let other = auth();
    let nonce = other.new_nonce(T0);
    let h = client_header(
        "SHA-256", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1,
    );
    assert_eq!(
        check(&a, &h, "s3cret", URI, T0),
        Verdict::Invalid(Rejection::BadNonce)
    );
}

#[test]
fn nonce_for_another_realm_under_the_same_secret_is_rejected() {
    let secret = Secret::generate();
    let a = DigestAuth::new(DigestConfig::new(REALM, secret.clone()));
    let b = DigestAuth::new(DigestConfig::new("other.example", secret));
    let nonce = b.new_nonce(T0);
    let h = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1);
    assert_eq!(
        check(&a, &h, "s3cret", URI, T0),
        Verdict::Invalid(Rejection::BadNonce)
    );
}

#[test]
fn tampered_or_garbage_nonce_is_rejected() {
    let a = auth();
    let good = a.new_nonce(T0);
    // Flip one character of the timestamp part (e.g. to extend the nonce's life).
    let mut chars: Vec<char> = good.chars().collect();
    chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    for nonce in [
        tampered.as_str(),
        "",
        "abc",
        "!!!!",
        &good[..good.len() - 1],
    ] {
        let h = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, nonce, 1);
        assert_eq!(
            check(&a, &h, "s3cret", URI, T0),
            Verdict::Invalid(Rejection::BadNonce),
            "{nonce:?}"
        );
    }
}

#[test]
fn expired_nonce_with_right_password_is_stale() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    let h = client_header(
        "SHA-256", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1,
    );
    // Last second of the default 300 s lifetime: still good.
    assert_eq!(check(&a, &h, "s3cret", URI, T0 + 300), ok());
    let h2 = client_header(
        "SHA-256", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 2,
    );
    assert_eq!(check(&a, &h2, "s3cret", URI, T0 + 301), Verdict::Stale);
}

#[test]
fn expired_nonce_with_wrong_password_is_invalid_not_stale() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    let h = client_header(
        "SHA-256", "alice", REALM, "guess", "REGISTER", URI, &nonce, 1,
    );
    assert_eq!(
        check(&a, &h, "s3cret", URI, T0 + 10_000),
        Verdict::Invalid(Rejection::WrongResponse)
    );
}

#[test]
fn configured_lifetime_is_honoured() {
    let mut cfg = DigestConfig::new(REALM, Secret::generate());
    cfg.nonce_lifetime = 30;
    let a = DigestAuth::new(cfg);
    let nonce = a.new_nonce(T0);
    let h = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1);
    assert_eq!(check(&a, &h, "s3cret", URI, T0 + 31), Verdict::Stale);
}

#[test]
fn nonce_from_the_far_future_is_stale() {
    let a = auth();
    let nonce = a.new_nonce(T0 + 1000);
    let h = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1);
    assert_eq!(check(&a, &h, "s3cret", URI, T0), Verdict::Stale);
}

#[test]
fn replayed_or_lower_nc_is_rejected_and_increasing_nc_accepted() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    let h = |nc| {
        client_header(
            "SHA-256", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, nc,
        )
    };
    assert_eq!(check(&a, &h(1), "s3cret", URI, T0), ok());
    assert_eq!(
        check(&a, &h(1), "s3cret", URI, T0 + 1),
        Verdict::Invalid(Rejection::Replay)
    );
    assert_eq!(check(&a, &h(2), "s3cret", URI, T0 + 2), ok());
    assert_eq!(check(&a, &h(5), "s3cret", URI, T0 + 3), ok());
    assert_eq!(
        check(&a, &h(4), "s3cret", URI, T0 + 4),
        Verdict::Invalid(Rejection::Replay)
    );
    assert_eq!(
        check(&a, &h(5), "s3cret", URI, T0 + 5),
        Verdict::Invalid(Rejection::Replay)
    );
    // A second nonce has its own count.
    let other = a.new_nonce(T0);
    let h2 = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, &other, 1);
    assert_eq!(check(&a, &h2, "s3cret", URI, T0 + 6), ok());
}

#[test]
fn wrong_password_does_not_consume_an_nc() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    let bad = client_header("MD5", "alice", REALM, "guess", "REGISTER", URI, &nonce, 1);
    let good = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1);
    assert_eq!(
        check(&a, &bad, "s3cret", URI, T0),
        Verdict::Invalid(Rejection::WrongResponse)
    );
    assert_eq!(check(&a, &good, "s3cret", URI, T0), ok());
}

#[test]
fn replay_map_stays_bounded_and_evicted_nonce_is_stale_never_accepted() {
    let mut cfg = DigestConfig::new(REALM, Secret::generate());
    cfg.max_tracked_nonces = 3;
    let a = DigestAuth::new(cfg);
    let first = a.new_nonce(T0);
    let use_nonce = |nonce: &str, nc, now| {
        let h = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, nonce, nc);
        check(&a, &h, "s3cret", URI, now)
    };
    assert_eq!(use_nonce(&first, 1, T0), ok());
    for i in 1..=5 {
        let n = a.new_nonce(T0 + i);
        assert_eq!(use_nonce(&n, 1, T0 + i), ok());
        assert!(a.tracked_nonces() <= 3);
    }
    // `first` was evicted: a replay of nc=1 must not be accepted, nor a higher nc.
    assert_eq!(use_nonce(&first, 1, T0 + 6), Verdict::Stale);
    assert_eq!(use_nonce(&first, 2, T0 + 6), Verdict::Stale);
}

#[test]
fn expired_nonces_are_dropped_from_the_replay_map() {
    let a = auth();
    for i in 0..10 {
        let n = a.new_nonce(T0 + i);
        let h = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, &n, 1);
        assert_eq!(check(&a, &h, "s3cret", URI, T0 + i), ok());
    }
    assert_eq!(a.tracked_nonces(), 10);
    let n = a.new_nonce(T0 + 1000);
    let h = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, &n, 1);
    assert_eq!(check(&a, &h, "s3cret", URI, T0 + 1000), ok());
    assert_eq!(a.tracked_nonces(), 1);
}

#[test]
fn uri_differing_from_request_uri_is_rejected() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    let h = client_header(
        "SHA-256", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1,
    );
    assert_eq!(
        check(&a, &h, "s3cret", "sip:other.example", T0),
        Verdict::Invalid(Rejection::UriMismatch)
    );
    // String comparison: an equivalent but differently written URI does not match.
    assert_eq!(
        check(&a, &h, "s3cret", "sip:PUSHPARK.example", T0),
        Verdict::Invalid(Rejection::UriMismatch)
    );
}

#[test]
fn realm_mismatch_is_rejected() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    let h = client_header(
        "MD5",
        "alice",
        "evil.example",
        "s3cret",
        "REGISTER",
        URI,
        &nonce,
        1,
    );
    assert_eq!(
        check(&a, &h, "s3cret", URI, T0),
        Verdict::Invalid(Rejection::RealmMismatch)
    );
}

#[test]
fn configured_opaque_is_sent_and_required() {
    let mut cfg = DigestConfig::new(REALM, Secret::generate());
    cfg.opaque = Some("op4que".into());
    let a = DigestAuth::new(cfg);
    let ch = &a.challenges(T0, false)[0];
    assert!(ch.contains(", opaque=\"op4que\""), "{ch}");
    let nonce = nonce_of(ch);
    let h = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1);
    assert_eq!(
        check(&a, &h, "s3cret", URI, T0),
        Verdict::Invalid(Rejection::OpaqueMismatch)
    );
    let with = format!("{h}, opaque=\"op4que\"");
    assert_eq!(check(&a, &with, "s3cret", URI, T0), ok());
}

/// RFC 2069 form: `response = H(HA1:nonce:H(method:uri))`, no qop, nc or cnonce.
fn legacy_header(nonce: &str, pass: &str) -> String {
    let ha1 = client_h("MD5", &format!("alice:{REALM}:{pass}"));
    let ha2 = client_h("MD5", &format!("REGISTER:{URI}"));
    let response = client_h("MD5", &format!("{ha1}:{nonce}:{ha2}"));
    format!(
        "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", response=\"{response}\""
    )
}

#[test]
fn legacy_rfc2069_form_is_accepted_only_when_allowed() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    assert_eq!(
        check(&a, &legacy_header(&nonce, "s3cret"), "s3cret", URI, T0),
        ok()
    );
    assert_eq!(
        check(&a, &legacy_header(&nonce, "guess"), "s3cret", URI, T0),
        Verdict::Invalid(Rejection::WrongResponse)
    );
    assert_eq!(
        check(
            &a,
            &legacy_header(&nonce, "s3cret"),
            "s3cret",
            URI,
            T0 + 301
        ),
        Verdict::Stale
    );
    let mut cfg = DigestConfig::new(REALM, Secret::generate());
    cfg.algorithms = Algorithm::ALL.to_vec();
    let strict = DigestAuth::new(cfg);
    let nonce = strict.new_nonce(T0);
    assert_eq!(
        check(&strict, &legacy_header(&nonce, "s3cret"), "s3cret", URI, T0),
        Verdict::Invalid(Rejection::QopRequired),
        "refused by default"
    );
}

#[test]
fn credentials_in_an_algorithm_not_offered_are_refused() {
    let md5_only = DigestAuth::new(DigestConfig::new(REALM, Secret::generate()));
    let nonce = md5_only.new_nonce(T0);
    let sha = client_header(
        "SHA-256", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1,
    );
    assert_eq!(
        check(&md5_only, &sha, "s3cret", URI, T0),
        Verdict::Invalid(Rejection::AlgorithmNotOffered)
    );
    let md5 = client_header("MD5", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1);
    assert_eq!(check(&md5_only, &md5, "s3cret", URI, T0), ok());
}

#[test]
fn malformed_stored_ha1_is_rejected_not_panicking() {
    let a = auth();
    let nonce = a.new_nonce(T0);
    let h = client_header(
        "SHA-256", "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1,
    );
    let creds = parse_authorization(&h).unwrap();
    // An MD5-length HA1 given for SHA-256 credentials.
    let md5 = stored_ha1(Algorithm::Md5, "s3cret");
    assert_eq!(
        a.verify(&creds, "REGISTER", URI, &md5, T0),
        Verdict::Invalid(Rejection::BadStoredHa1)
    );
}

// ---- RFC 7616 §3.9.1 published example -------------------------------------------------

const RFC_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
const RFC_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

#[test]
fn rfc7616_example_md5_response_matches_published_value() {
    let ha1 = ha1(
        Algorithm::Md5,
        "Mufasa",
        "http-auth@example.org",
        "Circle of Life",
    );
    let r = Algorithm::Md5.response(
        &ha1,
        RFC_NONCE,
        Some(("00000001", RFC_CNONCE)),
        "GET",
        "/dir/index.html",
    );
    assert_eq!(r, "8ca523f5e9506fed4657c9700eebdbec");
    // The test client agrees.
    let c = client_response(
        "MD5",
        "Mufasa",
        "http-auth@example.org",
        "Circle of Life",
        "GET",
        "/dir/index.html",
        RFC_NONCE,
        "00000001",
        RFC_CNONCE,
    );
    assert_eq!(c, r);
}

#[test]
fn rfc7616_example_sha256_response_matches_published_value() {
    let ha1 = ha1(
        Algorithm::Sha256,
        "Mufasa",
        "http-auth@example.org",
        "Circle of Life",
    );
    let r = Algorithm::Sha256.response(
        &ha1,
        RFC_NONCE,
        Some(("00000001", RFC_CNONCE)),
        "GET",
        "/dir/index.html",
    );
    assert_eq!(
        r,
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
}

#[test]
fn rfc7616_example_authorization_header_parses_to_its_values() {
    // The SHA-256 Authorization header of RFC 7616 §3.9.1, folded as printed.
    let value = "Digest username=\"Mufasa\",\r\n       realm=\"http-auth@example.org\",\r\n       \
        uri=\"/dir/index.html\",\r\n       algorithm=SHA-256,\r\n       \
        nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n       nc=00000001,\r\n       \
        cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\",\r\n       qop=auth,\r\n       \
        response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\",\r\n       \
        opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
    let c = parse_authorization(value).unwrap();
    assert_eq!(c.username, "Mufasa");
    assert_eq!(c.realm, "http-auth@example.org");
    assert_eq!(c.uri, "/dir/index.html");
    assert_eq!(c.algorithm, Algorithm::Sha256);
    assert_eq!(c.nonce, RFC_NONCE);
    assert_eq!(
        c.qop,
        Some(QopAuth {
            nc: "00000001".into(),
            nc_value: 1,
            cnonce: RFC_CNONCE.into()
        })
    );
    assert_eq!(
        c.opaque.as_deref(),
        Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
    );
    let ha1 = ha1(
        Algorithm::Sha256,
        "Mufasa",
        "http-auth@example.org",
        "Circle of Life",
    );
    let q = c.qop.as_ref().unwrap();
    let r = c
        .algorithm
        .response(&ha1, &c.nonce, Some((&q.nc, &q.cnonce)), "GET", &c.uri);
    assert_eq!(r, c.response);
}

// ---- parsing -------------------------------------------------------------------------

#[test]
fn parser_tolerates_order_case_spacing_and_token_values() {
    let value = "  digest   RESPONSE=abc,NC=0000000A ,  Qop=\"auth\",cnonce=xyz,\
        uri = \"sip:a@b\" ,, nonce=n1, Realm=r, UserName=\"bob\", ALGORITHM=sha-256, foo=\"bar\"  ";
    let c = parse_authorization(value).unwrap();
    assert_eq!(c.username, "bob");
    assert_eq!(c.realm, "r");
    assert_eq!(c.nonce, "n1");
    assert_eq!(c.uri, "sip:a@b");
    assert_eq!(c.response, "abc");
    assert_eq!(c.algorithm, Algorithm::Sha256);
    let q = c.qop.unwrap();
    assert_eq!(
        (q.nc.as_str(), q.nc_value, q.cnonce.as_str()),
        ("0000000A", 10, "xyz")
    );
}

#[test]
fn parser_defaults_to_md5_and_reads_legacy_form() {
    let c = parse_authorization(
        "Digest username=\"bob\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", response=\"x\"",
    )
    .unwrap();
    assert_eq!(c.algorithm, Algorithm::Md5);
    assert_eq!(c.qop, None);
    assert_eq!(c.opaque, None);
    let md5 = parse_authorization(
        "Digest username=bob, realm=r, nonce=n, uri=sip:r, response=x, algorithm=md5",
    )
    .unwrap();
    assert_eq!(md5.algorithm, Algorithm::Md5);
}

#[test]
fn parser_unescapes_quoted_pairs() {
    let c = parse_authorization(
        r#"Digest username="bo\"b\\", realm="r", nonce="n", uri="sip:r", response="x""#,
    )
    .unwrap();
    assert_eq!(c.username, "bo\"b\\");
}

#[test]
fn unknown_scheme_is_a_distinct_error() {
    // RFC 4475 §3.1.2.1 (regaut01).
    assert_eq!(
        parse_authorization("NoOneKnowsThisScheme opaque-data=here"),
        Err(ParseError::UnknownScheme("NoOneKnowsThisScheme".into()))
    );
    assert_eq!(
        parse_authorization("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        Err(ParseError::UnknownScheme("Basic".into()))
    );
}

#[test]
fn parser_reports_missing_duplicate_and_unsupported() {
    let base = "Digest username=\"bob\", realm=\"r\", nonce=\"n\", uri=\"sip:r\"";
    assert_eq!(
        parse_authorization(base),
        Err(ParseError::MissingParameter("response"))
    );
    assert_eq!(
        parse_authorization(&format!("{base}, response=x, realm=\"s\"")),
        Err(ParseError::DuplicateParameter("realm".into()))
    );
    assert_eq!(
        parse_authorization(&format!("{base}, response=x, algorithm=MD5-sess")),
        Err(ParseError::UnsupportedAlgorithm("MD5-sess".into()))
    );
    assert_eq!(
        parse_authorization(&format!("{base}, response=x, qop=auth-int, nc=1, cnonce=c")),
        Err(ParseError::UnsupportedQop("auth-int".into()))
    );
    assert_eq!(
        parse_authorization(&format!("{base}, response=x, qop=auth, cnonce=c")),
        Err(ParseError::MissingParameter("nc"))
    );
    for nc in ["00000000", "123456789", "zz", "\"\""] {
        assert!(
            matches!(
                parse_authorization(&format!("{base}, response=x, qop=auth, cnonce=c, nc={nc}")),
                Err(ParseError::BadNonceCount(_))
            ),
            "{nc}"
        );
    }
    assert_eq!(parse_authorization("   "), Err(ParseError::Empty));
    assert!(matches!(
        parse_authorization(&format!("{base}, response=\"x")),
        Err(ParseError::Malformed(_))
    ));
}

#[test]
fn parser_never_panics_on_truncations_mutations_and_noise() {
    let good = "Digest username=\"b\u{e9}b\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", \
        response=\"x\", qop=auth, nc=00000001, cnonce=\"c\\\"\", algorithm=SHA-256";
    for (i, _) in good.char_indices() {
        let _ = parse_authorization(&good[..i]);
        let _ = parse_authorization(&good[i..]);
    }
    let specials = ['"', '\\', ',', '=', ' ', '\r', '\n', '\u{0}', '\u{e9}', 'x'];
    for (i, _) in good.char_indices() {
        for s in specials {
            let mut m = good.to_string();
            m.insert(i, s);
            let _ = parse_authorization(&m);
        }
    }
    // Pseudo-random noise from a fixed LCG (deterministic).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"Digest =,\"\\abcnqou01rt\r\n\t";
    for _ in 0..2000 {
        let mut s = String::new();
        for _ in 0..(x % 64) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push(alphabet[(x >> 33) as usize % alphabet.len()] as char);
        }
        let _ = parse_authorization(&s);
    }
}

#[test]
fn verify_never_panics_on_odd_credentials() {
    let a = auth();
    let odd = Credentials {
        username: "\u{0}".into(),
        realm: REALM.into(),
        nonce: "\u{1F600}".repeat(40),
        uri: URI.into(),
        response: "ZZ".into(),
        algorithm: Algorithm::Sha256,
        qop: None,
        opaque: None,
    };
    assert_eq!(
        a.verify(&odd, "REGISTER", URI, "not hex", u64::MAX),
        Verdict::Invalid(Rejection::BadNonce)
    );
    let nonce = a.new_nonce(u64::MAX);
    let odd = Credentials { nonce, ..odd };
    let h = stored_ha1(Algorithm::Sha256, "x");
    assert_eq!(
        a.verify(&odd, "REGISTER", URI, &h, 0),
        Verdict::Invalid(Rejection::WrongResponse)
    );
}

// ---- challenges ------------------------------------------------------------------------

#[test]
fn challenge_header_text_is_exact() {
    assert_eq!(
        challenge::format_challenge("atlanta.com", "abc", Algorithm::Sha256, None, false),
        "Digest realm=\"atlanta.com\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth\""
    );
    assert_eq!(
        challenge::format_challenge("atl\"a\\nta", "abc", Algorithm::Md5, Some("o"), true),
        "Digest realm=\"atl\\\"a\\\\nta\", nonce=\"abc\", algorithm=MD5, qop=\"auth\", \
         opaque=\"o\", stale=true"
    );
}

#[test]
fn challenges_offer_sha256_then_md5_with_one_fresh_verifiable_nonce() {
    let a = auth();
    let ch = a.challenges(T0, false);
    assert_eq!(ch.len(), 2);
    let nonce = nonce_of(&ch[0]);
    assert_eq!(
        ch[0],
        format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=SHA-256, qop=\"auth\"")
    );
    assert_eq!(
        ch[1],
        format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"")
    );
    // By default MD5 alone: real clients fail on any other (Algorithm::DEFAULT).
    let default = DigestAuth::new(DigestConfig::new(REALM, Secret::generate()));
    let only = default.challenges(T0, false);
    assert_eq!(only.len(), 1);
    assert!(only[0].contains("algorithm=MD5"), "{only:?}");
    assert_ne!(
        nonce,
        nonce_of(&a.challenges(T0, false)[0]),
        "nonces are fresh"
    );
    let stale = a.challenges(T0, true);
    assert!(
        stale.iter().all(|c| c.ends_with(", stale=true")),
        "{stale:?}"
    );
    assert_eq!(ChallengeKind::Www.challenge_header(), "WWW-Authenticate");
    assert_eq!(
        ChallengeKind::Proxy.challenge_header(),
        "Proxy-Authenticate"
    );
    assert_eq!(ChallengeKind::Proxy.status_code(), 407);
    assert_eq!(
        ChallengeKind::Proxy.credentials_header(),
        "Proxy-Authorization"
    );
}

// ---- users file ------------------------------------------------------------------------

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn users_file_add_replace_remove_list_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    assert_eq!(list_users(&path).unwrap(), vec![]);
    assert!(!add_user(&path, "alice", REALM, "one").unwrap());
    assert!(!add_user(&path, "bob", REALM, "two").unwrap());
    assert_eq!(
        list_users(&path).unwrap(),
        vec![("alice".into(), REALM.into()), ("bob".into(), REALM.into())]
    );
    let db = UserDb::load(&path).unwrap();
    assert_eq!(
        db.ha1("alice", REALM, Algorithm::Md5),
        Some(ha1(Algorithm::Md5, "alice", REALM, "one").as_str())
    );
    assert_eq!(
        db.ha1("alice", REALM, Algorithm::Sha256),
        Some(ha1(Algorithm::Sha256, "alice", REALM, "one").as_str())
    );
    assert!(!read(&path).contains("one"), "no plaintext password stored");

    // Replace alice's password: still one line for her, in place.
    assert!(add_user(&path, "alice", REALM, "three").unwrap());
    assert_eq!(list_users(&path).unwrap().len(), 2);
    let db = UserDb::load(&path).unwrap();
    assert_eq!(
        db.ha1("alice", REALM, Algorithm::Sha256),
        Some(ha1(Algorithm::Sha256, "alice", REALM, "three").as_str())
    );
    assert!(read(&path).starts_with("alice "));

    assert!(remove_user(&path, "alice").unwrap());
    assert!(!remove_user(&path, "alice").unwrap());
    assert_eq!(
        list_users(&path).unwrap(),
        vec![("bob".into(), REALM.into())]
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind");
}

#[test]
fn users_file_keeps_comments_and_rejects_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    std::fs::write(&path, "# pushpark users\n\n").unwrap();
    add_user(&path, "alice", REALM, "pw").unwrap();
    assert!(read(&path).starts_with("# pushpark users\n\nalice "));
    for bad in ["", "a b", "#x", "a\tb", "a\nb"] {
        assert!(
            matches!(
                add_user(&path, bad, REALM, "pw"),
                Err(UsersError::InvalidField {
                    what: "username",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
}

#[cfg(unix)]
#[test]
fn users_file_is_written_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    add_user(&path, "alice", REALM, "pw").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn users_file_bad_line_is_reported_with_file_and_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    let good = format!(
        "alice {REALM} {} {}",
        ha1(Algorithm::Md5, "alice", REALM, "pw"),
        ha1(Algorithm::Sha256, "alice", REALM, "pw")
    );
    std::fs::write(&path, format!("# c\n{good}\nbob {REALM} 1234\n")).unwrap();
    let err = UserDb::load(&path).unwrap_err();
    assert!(matches!(err, UsersError::Parse { line: 3, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("line 3"),
        "{msg}"
    );
    // A rewrite refuses to touch a file it cannot read, rather than dropping the line.
    assert!(matches!(
        add_user(&path, "carol", REALM, "pw"),
        Err(UsersError::Parse { line: 3, .. })
    ));
    // Duplicates and non-hex hashes are errors too.
    std::fs::write(&path, format!("{good}\n{good}\n")).unwrap();
    assert!(matches!(
        UserDb::load(&path),
        Err(UsersError::Parse { line: 2, .. })
    ));
    let bad_hex = good.replacen(
        &ha1(Algorithm::Md5, "alice", REALM, "pw"),
        &"g".repeat(32),
        1,
    );
    std::fs::write(&path, format!("\n{bad_hex}\n")).unwrap();
    assert!(matches!(
        UserDb::load(&path),
        Err(UsersError::Parse { line: 2, .. })
    ));
    let missing = dir.path().join("nope");
    assert!(matches!(UserDb::load(&missing), Err(UsersError::Io { .. })));
}

#[test]
fn client_authenticates_against_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    add_user(&path, "alice", REALM, "s3cret").unwrap();
    let users = UserDb::load(&path).unwrap();
    let a = auth();
    for alg in ["SHA-256", "MD5"] {
        let nonce = a.new_nonce(T0);
        let h = client_header(alg, "alice", REALM, "s3cret", "REGISTER", URI, &nonce, 1);
        let creds = parse_authorization(&h).unwrap();
        assert_eq!(
            a.verify_user(&creds, "REGISTER", URI, &users, T0),
            ok(),
            "{alg}"
        );
        let h = client_header(alg, "mallory", REALM, "s3cret", "REGISTER", URI, &nonce, 2);
        let creds = parse_authorization(&h).unwrap();
        assert_eq!(
            a.verify_user(&creds, "REGISTER", URI, &users, T0),
            Verdict::Invalid(Rejection::UnknownUser)
        );
    }
}

#[test]
fn documented_users_line_is_alice_with_password_secret() {
    let line = "alice example.com b1726872c344b6dc8365b774f8fd6412 \
        ed8925b20f9a77b8f8f8d5f8e4467fe32b866f7208ab9e4b20595e9821a0fdee";
    let db = UserDb::parse(line, Path::new("doc")).unwrap();
    for alg in Algorithm::ALL {
        assert_eq!(
            db.ha1("alice", "example.com", alg),
            Some(ha1(alg, "alice", "example.com", "secret").as_str())
        );
    }
}
