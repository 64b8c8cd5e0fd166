//! Self-tests of the test user agents in `ua/`: they talk to each other directly (no
//! pushpark server), to small fake registrars made here, and to the push gateway stand-in.

mod ua;

use std::net::SocketAddr;
use std::time::Duration;

use rsip::{Method, SipMessage};

use ua::digest::{self, Credentials, DigestAlgorithm};
use ua::sip::{build_response, param, split_list, uri_param};
use ua::{
    Behaviour, Caller, Device, Expect, GatewayRule, MessageExt, PushGateway, SipSocket, Transport,
    STEP,
};

const SHORT: Duration = Duration::from_millis(300);

/// An address nothing answers on (for devices that only act as UAS here).
fn nowhere() -> SocketAddr {
    "127.0.0.1:9".parse().expect("address")
}

async fn device(behaviour: Behaviour) -> Device {
    Device::builder("sip:bob@localhost", nowhere())
        .behaviour(behaviour)
        .start()
        .await
        .expect("device starts")
}

async fn caller() -> Caller {
    Caller::new("sip:alice@localhost", Transport::Udp)
        .await
        .expect("caller starts")
        .with_display_name("Alice")
}

#[tokio::test]
async fn invite_ringing_answer_ack_bye() {
    let bob = device(Behaviour::Answer {
        ring_for: Duration::from_millis(50),
    })
    .await;
    let alice = caller().await;
    let bob_addr = bob.local_addr().await.expect("awake");

    let call_id = alice
        .invite("sip:bob@localhost", bob_addr)
        .await
        .expect("INVITE sent");
    let ringing = alice.expect_response(180, STEP).await.expect("180");
    let ok = alice.expect_response(200, STEP).await.expect("200");
    assert_eq!(
        ringing.tag_of_to(),
        ok.tag_of_to(),
        "one To-tag for the dialog"
    );
    assert!(ok.tag_of_to().is_some());
    assert!(ok.body().starts_with(b"v=0"), "200 carries SDP");
    alice.ack(&ok).await.expect("ACK sent");

    let invite = bob
        .expect_request(Method::Invite, STEP)
        .await
        .expect("INVITE");
    assert_eq!(invite.call_id, call_id);
    let req = &invite.request;
    assert_eq!(req.header("Max-Forwards").as_deref(), Some("70"));
    let via = req.header("Via").expect("Via");
    assert!(param(&via, "branch")
        .expect("branch")
        .starts_with("z9hG4bK"));
    assert!(param(&via, "rport").is_some(), "rport asked for: {via}");
    assert!(req.tag_of_from().is_some());
    assert_eq!(
        req.header("From")
            .as_deref()
            .map(|f| f.starts_with("\"Alice\"")),
        Some(true)
    );
    assert_eq!(
        req.header("Content-Type").as_deref(),
        Some("application/sdp")
    );

    let ack = bob.expect_request(Method::Ack, STEP).await.expect("ACK");
    assert_ne!(
        ack.branch, invite.branch,
        "the ACK for a 2xx is a new transaction"
    );
    assert_eq!(ack.cseq, invite.cseq);
    assert_eq!(ack.request.tag_of_to(), ok.tag_of_to());

    alice.bye().await.expect("BYE sent");
    alice
        .expect_response_for(Method::Bye, 200, STEP)
        .await
        .expect("200 to BYE");
    let bye = bob.expect_request(Method::Bye, STEP).await.expect("BYE");
    assert!(bye.cseq > invite.cseq);
    assert_eq!(bob.count(Method::Invite), 1, "the INVITE arrived once");
}

#[tokio::test]
async fn callee_hangs_up_and_caller_answers_bye() {
    let bob = device(Behaviour::Answer {
        ring_for: Duration::ZERO,
    })
    .await;
    let alice = caller().await;
    let call_id = alice
        .invite("sip:bob@localhost", bob.local_addr().await.expect("awake"))
        .await
        .expect("INVITE sent");
    let ok = alice.expect_response(200, STEP).await.expect("200");
    alice.ack(&ok).await.expect("ACK sent");
    bob.expect_request(Method::Ack, STEP).await.expect("ACK");

    let answer = bob.hangup(&call_id).await.expect("BYE answered");
    assert_eq!(answer.status_code.code(), 200);
    alice.expect_request(Method::Bye, STEP).await.expect("BYE");
    assert!(alice.bye_received());
}

#[tokio::test]
async fn busy_gets_486_and_the_caller_acks_it() {
    let bob = device(Behaviour::Busy).await;
    let alice = caller().await;
    alice
        .invite("sip:bob@localhost", bob.local_addr().await.expect("awake"))
        .await
        .expect("INVITE sent");
    let busy = alice.expect_final(STEP).await.expect("final");
    assert_eq!(busy.status_code.code(), 486);

    let invite = bob
        .expect_request(Method::Invite, STEP)
        .await
        .expect("INVITE");
    let ack = bob
        .expect_request(Method::Ack, STEP)
        .await
        .expect("automatic ACK");
    assert_eq!(
        ack.branch, invite.branch,
        "the non-2xx ACK is in the INVITE transaction"
    );
    assert_eq!(ack.request.tag_of_to(), busy.tag_of_to());
    assert_eq!(ack.request.uri.to_string(), invite.request.uri.to_string());
    // No 180 before a busy.
    assert!(alice.expect_response(180, SHORT).await.is_err());
}

#[tokio::test]
async fn decline_rings_then_603() {
    let bob = device(Behaviour::Decline).await;
    let alice = caller().await;
    alice
        .invite("sip:bob@localhost", bob.local_addr().await.expect("awake"))
        .await
        .expect("INVITE sent");
    alice.expect_response(180, STEP).await.expect("180");
    let err = alice
        .expect_response(200, STEP)
        .await
        .expect_err("not a 200");
    assert!(err.to_string().contains("603"), "{err}");
    bob.expect_request(Method::Ack, STEP)
        .await
        .expect("ACK of 603");
}

#[tokio::test]
async fn cancel_while_ringing_gets_200_and_487() {
    let bob = device(Behaviour::RingOnly).await;
    let alice = caller().await;
    alice
        .invite("sip:bob@localhost", bob.local_addr().await.expect("awake"))
        .await
        .expect("INVITE sent");
    alice.expect_response(180, STEP).await.expect("180");
    alice
        .cancel_with(&[("Reason", "SIP;cause=487;text=\"Cancelled\"".into())])
        .await
        .expect("CANCEL sent");
    alice
        .expect_response_for(Method::Cancel, 200, STEP)
        .await
        .expect("200 to CANCEL");
    let terminated = alice.expect_final(STEP).await.expect("final");
    assert_eq!(terminated.status_code.code(), 487);

    let invite = bob
        .expect_request(Method::Invite, STEP)
        .await
        .expect("INVITE");
    let cancel = bob
        .expect_request(Method::Cancel, STEP)
        .await
        .expect("CANCEL");
    assert_eq!(cancel.branch, invite.branch);
    assert_eq!(cancel.call_id, invite.call_id);
    assert_eq!(cancel.cseq, invite.cseq);
    assert_eq!(cancel.request.header("To"), invite.request.header("To"));
    assert_eq!(cancel.request.header("From"), invite.request.header("From"));
    assert_eq!(cancel.reason_cause(), Some(487));
    assert!(cancel.at >= invite.at);
    bob.expect_request(Method::Ack, STEP)
        .await
        .expect("ACK of 487");
}

#[tokio::test]
async fn ignoring_device_sends_nothing() {
    let bob = device(Behaviour::Ignore).await;
    let alice = caller().await;
    alice
        .invite("sip:bob@localhost", bob.local_addr().await.expect("awake"))
        .await
        .expect("INVITE sent");
    let err = alice
        .expect_response(Expect::Any, SHORT)
        .await
        .expect_err("silence");
    assert!(matches!(err, ua::UaError::Timeout(_)), "{err}");
    assert_eq!(bob.count(Method::Invite), 1);
}

/// A registrar on `socket` that answers every REGISTER with 200 (echoing the Contact with
/// an expires), or first with a digest challenge when `challenge` is set. Returns the
/// REGISTERs it saw through the join handle once `n` were answered with 200.
fn fake_registrar(
    socket: SipSocket,
    n: usize,
    challenge: Option<(&'static str, Credentials)>,
) -> tokio::task::JoinHandle<Vec<(rsip::Request, SocketAddr)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut ok = 0;
        while ok < n {
            let (msg, from) = socket.recv_from(STEP).await.expect("a REGISTER");
            let SipMessage::Request(req) = msg else {
                panic!("expected a request, got {msg}");
            };
            assert_eq!(req.method, Method::Register);
            seen.push((req.clone(), from));
            let contact = format!("{};expires=3600", req.header("Contact").expect("Contact"));
            let (code, extra) = match (&challenge, req.header("Authorization")) {
                (Some((realm, _)), None) => (
                    401,
                    vec![
                        (
                            "WWW-Authenticate",
                            format!("Digest realm=\"{realm}\", nonce=\"n0nce\", algorithm=SHA-256, qop=\"auth\", opaque=\"op\""),
                        ),
                        (
                            "WWW-Authenticate",
                            format!("Digest realm=\"{realm}\", nonce=\"n0nce\", algorithm=MD5, qop=\"auth\", opaque=\"op\""),
                        ),
                    ],
                ),
                (Some((realm, creds)), Some(auth)) => {
                    let get = |name: &str| {
                        split_list(auth.trim_start_matches("Digest "))
                            .iter()
                            .find_map(|kv| {
                                let (k, v) = kv.split_once('=')?;
                                (k.trim() == name).then(|| v.trim_matches('"').to_owned())
                            })
                            .unwrap_or_else(|| panic!("no {name} in {auth}"))
                    };
                    assert_eq!(get("algorithm"), "SHA-256", "the stronger algorithm is chosen");
                    assert_eq!(get("opaque"), "op");
                    assert_eq!(get("uri"), "sip:localhost");
                    let (nc, cnonce) = (get("nc"), get("cnonce"));
                    let expected = digest::response(
                        DigestAlgorithm::Sha256,
                        creds,
                        realm,
                        "n0nce",
                        "REGISTER",
                        "sip:localhost",
                        Some((&nc, &cnonce)),
                    );
                    let code = if get("response") == expected { 200 } else { 403 };
                    (code, vec![("Contact", contact)])
                }
                (None, _) => (200, vec![("Contact", contact)]),
            };
            if code == 200 {
                ok += 1;
            }
            let reason = if code == 200 { "OK" } else { "Unauthorized" };
            let response = build_response(&req, code, reason, Some("reg"), &extra, b"")
                .expect("response builds");
            socket.send_to(response, from).await.expect("response sent");
        }
        seen
    })
}

#[tokio::test]
async fn push_gateway_records_a_push_and_wakes_the_device() {
    let registrar = SipSocket::tcp_listen().await.expect("registrar");
    let registrar_addr = registrar.local_addr();
    let seen = fake_registrar(registrar, 2, None);

    let bob = Device::builder("sip:bob@localhost", registrar_addr)
        .transport(Transport::Tcp)
        .push("apns", "tok-bob-1", Some("TEAM.com.example.app.voip"))
        .instance("6f3c0f8e-94a3-4d4a-9d9d-3b4c8c5c9b21")
        .start()
        .await
        .expect("device starts");
    let first = bob.register(600).await.expect("REGISTER answered");
    assert_eq!(first.status_code.code(), 200);
    bob.sleep().await;
    assert!(!bob.is_awake().await);

    let gateway = PushGateway::start().await.expect("gateway");
    gateway.wake_on_push(&bob, Duration::from_millis(50));
    let body = serde_json::json!({
        "id": "push-1",
        "kind": "incoming_call",
        "callee_aor": "sip:bob@localhost",
        "pn_provider": "apns",
        "pn_prid": "tok-bob-1",
        "pn_param": "TEAM.com.example.app.voip",
        "caller_uri": "sip:alice@localhost",
        "caller_display_name": "Alice",
        "call_id": "c1@127.0.0.1",
        "deadline_unix_ms": 4_000_000_000_000u64,
    });
    let answer = reqwest::Client::new()
        .post(gateway.url())
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status().as_u16(), 200);

    let push = gateway.wait_for_push(STEP).await.expect("push recorded");
    assert_eq!(push.body.pn_prid, "tok-bob-1");
    assert_eq!(push.body.call_id, "c1@127.0.0.1");
    assert_eq!(push.body.caller_display_name.as_deref(), Some("Alice"));
    assert_eq!(push.json, body);
    assert_eq!(push.path, "/push");
    assert_eq!(push.authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(push.answered, 200);

    gateway.wait_for_wakes(1, STEP).await.expect("device woken");
    assert_eq!(gateway.wakes()[0], ("tok-bob-1".to_owned(), Ok(200)));
    assert!(bob.is_awake().await);
    assert_eq!(bob.wakes(), 1);

    let registers = seen.await.expect("registrar task");
    let ((r1, from1), (r2, from2)) = (&registers[0], &registers[1]);
    assert_ne!(
        from1, from2,
        "the woken app registers over a new connection"
    );
    assert_eq!(r1.call_id(), r2.call_id());
    assert!(r2.cseq().0 > r1.cseq().0);
    assert_eq!(r2.header("Expires").as_deref(), Some("600"));
    for (r, from) in [(r1, from1), (r2, from2)] {
        let contact = r.header("Contact").expect("Contact");
        let uri = r.contact_uri().expect("Contact URI");
        assert_eq!(uri_param(&uri, "pn-provider").as_deref(), Some("apns"));
        assert_eq!(uri_param(&uri, "pn-prid").as_deref(), Some("tok-bob-1"));
        assert_eq!(
            uri_param(&uri, "pn-param").as_deref(),
            Some("TEAM.com.example.app.voip")
        );
        assert_eq!(uri_param(&uri, "transport").as_deref(), Some("tcp"));
        assert!(
            uri.contains(&from.to_string()),
            "{uri} names the connection's port"
        );
        assert_eq!(
            param(&contact, "+sip.instance").as_deref(),
            Some("<urn:uuid:6f3c0f8e-94a3-4d4a-9d9d-3b4c8c5c9b21>")
        );
        assert_eq!(r.uri.to_string(), "sip:localhost");
    }
}

#[tokio::test]
async fn push_gateway_rules_per_token() {
    let gateway = PushGateway::start().await.expect("gateway");
    gateway.set_rule("dead", GatewayRule::gone());
    gateway.set_rules(
        "flaky",
        vec![GatewayRule::transient(), GatewayRule::accept()],
    );
    gateway.set_rule(
        "slow",
        GatewayRule::accept().after(Duration::from_millis(200)),
    );
    let client = reqwest::Client::new();
    let post = |token: &str| {
        let body = serde_json::json!({
            "id": format!("p-{token}"), "kind": "incoming_call",
            "callee_aor": "sip:bob@localhost", "pn_provider": "fcm", "pn_prid": token,
            "pn_param": null, "caller_uri": "sip:alice@localhost",
            "caller_display_name": null, "call_id": "c@h", "deadline_unix_ms": 1u64,
        });
        client.post(gateway.url()).json(&body).send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(post("dead").await.expect("POST")), 410);
    assert_eq!(status(post("flaky").await.expect("POST")), 500);
    assert_eq!(status(post("flaky").await.expect("POST")), 200);
    assert_eq!(status(post("flaky").await.expect("POST")), 200);
    let start = std::time::Instant::now();
    assert_eq!(status(post("slow").await.expect("POST")), 200);
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(status(post("other").await.expect("POST")), 200);
    assert_eq!(gateway.pushes().len(), 6);
    assert_eq!(gateway.pushes_for("flaky").len(), 3);
    assert_eq!(gateway.pushes()[0].body.pn_param, None);

    let bad = client
        .post(gateway.url())
        .body("{\"id\": 1}")
        .send()
        .await
        .expect("POST");
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(gateway.malformed().len(), 1);
}

#[tokio::test]
async fn device_answers_a_digest_challenge() {
    let registrar = SipSocket::udp().await.expect("registrar");
    let addr = registrar.local_addr();
    let creds = Credentials::new("bob", "pa55word");
    let seen = fake_registrar(registrar, 1, Some(("localhost", creds)));
    let bob = Device::builder("sip:bob@localhost", addr)
        .push("fcm", "tok-fcm", None)
        .credentials("bob", "pa55word")
        .start()
        .await
        .expect("device starts");
    let answer = bob.register(3600).await.expect("REGISTER answered");
    assert_eq!(
        answer.status_code.code(),
        200,
        "digest response accepted: {answer}"
    );
    let registers = seen.await.expect("registrar task");
    assert_eq!(registers.len(), 2);
    assert_eq!(registers[1].0.cseq().0, registers[0].0.cseq().0 + 1);
}

#[test]
fn digest_matches_rfc_7616_examples() {
    // RFC 7616 §3.9.1 (an HTTP example; the computation is the same for SIP).
    let creds = Credentials::new("Mufasa", "Circle of Life");
    let (realm, nonce) = (
        "http-auth@example.org",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    );
    let qop = Some(("00000001", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"));
    let md5 = digest::response(
        DigestAlgorithm::Md5,
        &creds,
        realm,
        nonce,
        "GET",
        "/dir/index.html",
        qop,
    );
    assert_eq!(md5, "8ca523f5e9506fed4657c9700eebdbec");
    let sha = digest::response(
        DigestAlgorithm::Sha256,
        &creds,
        realm,
        nonce,
        "GET",
        "/dir/index.html",
        qop,
    );
    assert_eq!(
        sha,
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
}

#[tokio::test]
async fn tcp_framing_and_keepalive_pings() {
    let server = SipSocket::tcp_listen().await.expect("listener");
    let client = SipSocket::tcp_connect(server.local_addr())
        .await
        .expect("connect");

    // A ping from the client is answered with a pong by the listener side, and back.
    client.ping(server.local_addr()).await.expect("ping");
    let peer = {
        let bob = Device::builder("sip:bob@localhost", server.local_addr())
            .transport(Transport::Tcp)
            .start()
            .await
            .expect("device");
        // Register so the server learns the device's connection.
        let answer = tokio::join!(bob.register(60), async {
            let (msg, from) = server.recv_from(STEP).await.expect("REGISTER");
            let SipMessage::Request(req) = msg else {
                panic!("expected REGISTER");
            };
            // The 200 goes out in three pieces, the last with the next message glued on.
            let ok = build_response(&req, 200, "OK", Some("t"), &[], b"").expect("200");
            let bytes = ok.to_string().into_bytes();
            let options = "OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKopt\r\nMax-Forwards: 70\r\nFrom: <sip:s@localhost>;tag=1\r\nTo: <sip:bob@localhost>\r\nCall-ID: opt@h\r\nCSeq: 1 OPTIONS\r\nContent-Length: 4\r\n\r\nabcd";
            server
                .send_raw_to(&bytes[..10], from)
                .await
                .expect("piece 1");
            tokio::time::sleep(Duration::from_millis(20)).await;
            server
                .send_raw_to(&bytes[10..bytes.len() - 3], from)
                .await
                .expect("piece 2");
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut rest = bytes[bytes.len() - 3..].to_vec();
            rest.extend_from_slice(options.as_bytes());
            server.send_raw_to(&rest, from).await.expect("piece 3");
            from
        });
        assert_eq!(answer.0.expect("REGISTER answered").status_code.code(), 200);
        let from = answer.1;
        let options = bob
            .expect_request(Method::Options, STEP)
            .await
            .expect("OPTIONS");
        assert_eq!(options.request.body(), b"abcd");
        let (reply, _) = server.recv_from(STEP).await.expect("200 to OPTIONS");
        assert!(matches!(reply, SipMessage::Response(r) if r.status_code.code() == 200));

        // The listener pings the device's connection: the device answers CRLF.
        let pongs = server.pongs_received();
        server.ping(from).await.expect("ping device");
        wait_until(|| server.pongs_received() > pongs).await;

        // Asleep, the device's connection is gone.
        bob.sleep().await;
        wait_until(|| !server.is_connected_to(from)).await;
        from
    };
    assert!(!server.is_connected_to(peer));
    wait_until(|| server.pings_answered() >= 1 && client.pongs_received() >= 1).await;
}

async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..400 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not met within 2 s");
}
