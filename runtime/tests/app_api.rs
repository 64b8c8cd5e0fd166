//! Busy or decline straight from the push (specs/parking.md §9), end to end: the real server
//! with its app API on HTTPS (a certificate of the test authority), a local push gateway,
//! in-repo phones that sleep, and the app's answer posted by an HTTPS client that trusts
//! only the test authority — as an app woken by its push would, without waking its SIP stack.

mod common;
mod harness;
mod ua;

use std::time::{Duration, Instant};

use harness::Harness;
use pushpark::config::Config;
use rsip::Method;
use serde_json::{json, Value};
use ua::{Behaviour, Caller, Device, Push, Transport, STEP};

/// The end-to-end harness with the app API on HTTPS (a certificate of the test
/// authority), and an HTTPS client trusting that authority alone: the app.
struct Api {
    h: Harness,
    https: reqwest::Client,
}

impl std::ops::Deref for Api {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

impl Api {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Self {
        let h = Harness::start(|config, dir| {
            let (certificate, key, _) = ua::tls::issue(dir, "api");
            let any_port = "127.0.0.1:0".parse().expect("an address");
            config.app_api.listen = Some(toml::Spanned::new(0..0, any_port));
            config.app_api.certificate = Some(certificate);
            config.app_api.private_key = Some(key);
            adjust(config);
        })
        .await;
        let https = reqwest::Client::builder()
            .use_preconfigured_tls((*ua::tls::client_config()).clone())
            .build()
            .expect("an HTTPS client");
        Self { h, https }
    }

    /// A phone of `aor` on TCP with push token `token`, registered, then asleep.
    async fn sleeping_phone(&self, aor: &str, token: &str) -> Device {
        let answer = Behaviour::Answer {
            ring_for: Duration::from_millis(100),
        };
        self.h.sleeping_phone(aor, token, answer).await
    }

    /// Alice calls bob; returns her and the push for `token`.
    async fn call(&self, token: &str) -> (Caller, Push) {
        let alice = Caller::new("sip:alice@localhost", Transport::Udp)
            .await
            .expect("the caller starts");
        let call_id = alice
            .invite("sip:bob@localhost", self.udp)
            .await
            .expect("INVITE sent");
        alice.expect_response(100, STEP).await.expect("100 Trying");
        let push = self.push_for(token, &call_id).await;
        (alice, push)
    }

    /// The push for the call `call_id` to the phone with `token`, once it has come.
    async fn push_for(&self, token: &str, call_id: &str) -> Push {
        let started = Instant::now();
        loop {
            let pushes = self.gateway.pushes_for(token);
            if let Some(push) = pushes.into_iter().find(|p| p.body.call_id == call_id) {
                return push;
            }
            assert!(
                started.elapsed() < STEP,
                "no push for {token} and {call_id}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Posts `body` to the answer URL `push` carries, as its app: the status and the JSON.
    async fn post(&self, push: &Push, body: Value) -> (u16, Value) {
        let url = push.body.answer_url.as_deref().expect("an answer URL");
        self.post_to(url, body).await
    }

    async fn post_to(&self, url: &str, body: Value) -> (u16, Value) {
        let response = self
            .https
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("the app API answers");
        let status = response.status().as_u16();
        let json = response.json().await.unwrap_or(Value::Null);
        (status, json)
    }

    /// Answers `answer` from `push`, with the token it carries.
    async fn answer(&self, push: &Push, answer: &str) -> (u16, Value) {
        let token = push.body.answer_token.clone().expect("an answer token");
        self.post(push, json!({"token": token, "answer": answer}))
            .await
    }

    async fn metric(&self, answer: &str, result: &str) -> u64 {
        let server = self.server();
        let series =
            format!("pushpark_app_answers_total{{answer=\"{answer}\",result=\"{result}\"}}");
        common::counter(server, &series).await
    }

    async fn stop(self) {
        self.h.stop().await;
    }
}

fn taken() -> (u16, Value) {
    (200, json!({"result": "taken"}))
}

fn refused(status: u16, error: &str) -> (u16, Value) {
    (status, json!({"error": error}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_from_the_push_gives_the_caller_486_at_once_and_the_phone_never_registers() {
    let h = Api::start(|c| c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let bob = h.sleeping_phone("sip:bob@localhost", "bobbusy").await;
    let (alice, push) = h.call("bobbusy").await;
    assert_eq!(push.json["answer_url"], json!(push.body.answer_url));
    let url = push.body.answer_url.clone().expect("an answer URL");
    assert!(
        url.starts_with("https://127.0.0.1:") && url.ends_with("/v1/calls/answer"),
        "{url}"
    );
    let posted = Instant::now();
    assert_eq!(h.answer(&push, "busy").await, taken());
    let busy = alice.expect_final(STEP).await.expect("a final response");
    let took = posted.elapsed();
    assert_eq!(busy.status_code.code(), 486, "{busy}");
    assert!(
        !busy.to_string().contains("pn-"),
        "no push token reaches the caller"
    );
    println!("POST busy → caller's 486: {took:?}");
    alice.ack(&busy).await.expect("ACK sent");
    assert_eq!(bob.wakes(), 0, "the phone was never woken");
    assert_eq!(bob.count(Method::Invite), 0, "and got no INVITE");
    assert_eq!(h.gateway.pushes_for("bobbusy").len(), 1, "one push");
    assert_eq!(h.metric("busy", "taken").await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_phones_a_busy_waits_for_the_other_and_a_decline_ends_the_call() {
    let h = Api::start(|_| {}).await;
    let one = h.sleeping_phone("sip:bob@localhost", "bobone").await;
    let two = h.sleeping_phone("sip:bob@localhost", "bobtwo").await;
    // Busy on one phone: the other may still take the call; it wakes and answers.
    h.gateway.wake_on_push(&two, Duration::from_millis(300));
    let (alice, push_one) = h.call("bobone").await;
    assert_eq!(h.answer(&push_one, "busy").await, taken());
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack_and_hang_up(&ok).await;
    assert_eq!(one.count(Method::Invite), 0, "the busy phone is not rung");
    assert_eq!(two.count(Method::Invite), 1);
    // A retry of that answer, once the call is over, changes nothing.
    assert_eq!(h.answer(&push_one, "busy").await, refused(410, "call_over"));

    // Decline on one phone: the call ends 603 at once; the other, woken meanwhile by its
    // push, is told the call ended instead of ringing.
    two.sleep().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (carol, push_one) = h.call("bobone").await;
    let push_two = h.push_for("bobtwo", &push_one.body.call_id).await;
    assert_ne!(push_one.body.answer_token, push_two.body.answer_token);
    assert_eq!(h.answer(&push_one, "decline").await, taken());
    let declined = carol.expect_final(STEP).await.expect("a final response");
    assert_eq!(declined.status_code.code(), 603, "{declined}");
    carol.ack(&declined).await.expect("ACK sent");
    assert_eq!(
        h.answer(&push_two, "busy").await,
        refused(410, "call_over"),
        "the other phone's answer comes too late"
    );
    assert_eq!(one.count(Method::Invite), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringing_from_the_push_gets_the_caller_a_180_before_the_phone_registers() {
    let h = Api::start(|_| {}).await;
    let bob = h.sleeping_phone("sip:bob@localhost", "bobring").await;
    let (alice, push) = h.call("bobring").await;
    assert_eq!(h.answer(&push, "ringing").await, taken());
    let ringing = alice.expect_response(180, STEP).await.expect("ringback");
    assert!(
        ringing.to_string().contains("To: <sip:bob@localhost>;tag="),
        "{ringing}"
    );
    // Then the app wakes, registers, and takes the call as usual.
    bob.wake().await.expect("the wake-up REGISTER is answered");
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack(&ok).await.expect("ACK sent");
    assert_eq!(bob.count(Method::Invite), 1);
    // Its SIP stack has the call now: an answer from the push is refused.
    assert_eq!(
        h.answer(&push, "decline").await,
        refused(410, "call_over"),
        "answered, the call is over"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_the_push_after_the_phone_rang_over_sip_is_refused_409() {
    let h = Api::start(|_| {}).await;
    let bob = h.sleeping_phone("sip:bob@localhost", "bobrace").await;
    bob.set_behaviour(Behaviour::RingOnly);
    let (alice, push) = h.call("bobrace").await;
    bob.wake().await.expect("the wake-up REGISTER is answered");
    alice
        .expect_response(180, STEP)
        .await
        .expect("the woken phone rings for the parked call");
    assert_eq!(
        h.answer(&push, "busy").await,
        refused(409, "answer_over_sip"),
        "the phone answers over SIP, where it has the INVITE"
    );
    alice
        .cancel()
        .await
        .expect("the caller gives up; CANCEL sent");
    let cancelled = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(cancelled.status_code.code(), 487, "{cancelled}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_earlier_run_tokens_are_refused() {
    let mut h = Api::start(|_| {}).await;
    let _bob = h.sleeping_phone("sip:bob@localhost", "bobforge").await;
    let (alice, push) = h.call("bobforge").await;
    let token = push.body.answer_token.clone().expect("an answer token");
    // Forged: another device's answer to this call, another call, a made-up MAC.
    let mut fields: Vec<String> = token.split('.').map(str::to_owned).collect();
    fields[3] = (fields[3].parse::<u64>().expect("a device") + 1).to_string();
    let other_device = fields.join(".");
    for forged in [
        other_device.as_str(),
        &token.replacen("pa1.", "pa1.0", 1),
        &format!("{}{}", &token[..token.len() - 4], "beef"),
        "pa1.0000000000000001.1.1.4000000000.00000000000000000000000000000000",
    ] {
        assert_eq!(
            h.post(&push, json!({"token": forged, "answer": "busy"}))
                .await,
            refused(403, "invalid_token"),
            "{forged}"
        );
    }
    // The real one is taken; replayed once the call is over, it changes nothing.
    assert_eq!(h.answer(&push, "busy").await, taken());
    let busy = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(busy.status_code.code(), 486);
    alice.ack(&busy).await.expect("ACK sent");
    assert_eq!(h.answer(&push, "busy").await, refused(410, "call_over"));
    assert_eq!(h.answer(&push, "decline").await, refused(410, "call_over"));
    // A token of an earlier run of the server: its call ended with that run.
    h.h.restart().await;
    let api = h.server().app_api_addr().expect("the app API");
    let url = format!("https://{api}/v1/calls/answer");
    let body = json!({"token": token, "answer": "busy"});
    assert_eq!(h.post_to(&url, body).await, refused(410, "token_expired"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_an_answer_gets_a_clear_4xx_and_a_token_guesser_is_blocked() {
    let h = Api::start(|c| {
        // The test's client is 127.0.0.1, trusted for SIP; the app API counts it anyway.
        c.auth.trusted_peers = Vec::new();
        c.rate_limit.max_auth_failures = 3;
    })
    .await;
    let _bob = h.sleeping_phone("sip:bob@localhost", "bobhttp").await;
    let (_alice, push) = h.call("bobhttp").await;
    let url = push.body.answer_url.clone().expect("an answer URL");
    let token = push.body.answer_token.clone().expect("a token");
    let (status, body) = h
        .post(&push, json!({"token": token, "answer": "maybe"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_request", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("busy, decline or ringing")),
        "{body}"
    );
    let get = h.https.get(&url).send().await.expect("an answer");
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    let elsewhere = url.replace("/v1/calls/answer", "/v1/calls");
    let other = h.https.post(&elsewhere).send().await.expect("an answer");
    assert_eq!(other.status().as_u16(), 404);
    let big = h
        .https
        .post(&url)
        .body(vec![b' '; 8 * 1024])
        .send()
        .await
        .expect("an answer");
    assert_eq!(big.status().as_u16(), 413);
    // Three forged tokens: the third blocks the address; then even a good one waits.
    for _ in 0..3 {
        let forged = format!("{}{}", &token[..token.len() - 4], "beef");
        assert_eq!(
            h.post(&push, json!({"token": forged, "answer": "busy"}))
                .await,
            refused(403, "invalid_token")
        );
    }
    let blocked = h
        .https
        .post(&url)
        .json(&json!({"token": token, "answer": "busy"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(blocked.status().as_u16(), 429);
    assert!(blocked.headers().contains_key("retry-after"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_app_api_pushes_carry_no_token() {
    let h = Harness::start(|_, _| {}).await;
    assert_eq!(h.server().app_api_addr(), None);
    let answer = Behaviour::Answer {
        ring_for: Duration::from_millis(100),
    };
    let _bob = h
        .sleeping_phone("sip:bob@localhost", "bobplain", answer)
        .await;
    let alice = h.caller().await;
    alice
        .invite("sip:bob@localhost", h.udp)
        .await
        .expect("sent");
    let push = h
        .gateway
        .wait_for_push(STEP)
        .await
        .expect("the call is pushed");
    assert_eq!(push.json["answer_token"], Value::Null);
    assert_eq!(push.json["answer_url"], Value::Null);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_the_app_api_are_limited_per_address() {
    use tokio::io::AsyncReadExt;
    let h = Api::start(|c| {
        c.auth.trusted_peers = Vec::new();
        c.connections.max_per_ip = 2;
    })
    .await;
    let api = h.server().app_api_addr().expect("the app API");
    let connect = || tokio::net::TcpStream::connect(api);
    let (first, _second) = (connect().await, connect().await);
    let mut third = connect().await.expect("accepted by the kernel");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(STEP, third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the third connection is closed at once: {read:?}"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = connect().await.expect("accepted by the kernel");
    let waiting = tokio::time::timeout(Duration::from_millis(300), fourth.read(&mut buf)).await;
    assert!(
        waiting.is_err(),
        "a place was given back: the server waits for the handshake"
    );
    h.stop().await;
}
