//! `pushpark demo`: the real server on loopback, a simulated caller and a simulated phone
//! that sleeps, showing a call parked, pushed, delivered after the wake-up REGISTER, and
//! answered, with the time of each step. Nothing leaves 127.0.0.1.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::{Config, Listener, Transport};
use crate::push::{PushFuture, PushOutcome, PushProvider, PushRequest};
use crate::server::Server;
use crate::sip::{parse_datagram, HeaderName, Message};

/// How long the simulated push service takes to accept a push, and the phone to wake.
const PUSH_LATENCY: Duration = Duration::from_millis(150);
const WAKE_DELAY: Duration = Duration::from_millis(1200);

/// A push service that hands every push to the simulated phone.
struct DemoPushService {
    phone: mpsc::UnboundedSender<PushRequest>,
}

impl PushProvider for DemoPushService {
    fn name(&self) -> &str {
        "demo"
    }

    fn send<'a>(&'a self, request: &'a PushRequest) -> PushFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(PUSH_LATENCY).await;
            let _ = self.phone.send(request.clone());
            PushOutcome::Accepted
        })
    }
}

/// Prints timeline lines, each with the time since the demo began.
struct Timeline<W> {
    out: W,
    started: Instant,
}

impl<W: Write> Timeline<W> {
    fn say(&mut self, who: &str, what: &str) -> io::Result<()> {
        let t = self.started.elapsed().as_secs_f64();
        writeln!(self.out, "{t:>8.3} s  {who:<9} {what}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the server did not start: {0}")]
    Start(#[from] crate::server::StartError),
    #[error("{0}")]
    Step(String),
}

fn step(what: &str) -> DemoError {
    DemoError::Step(format!("the demo stopped: {what}"))
}

/// Waits for the next SIP message on `socket`.
async fn receive(socket: &UdpSocket) -> Result<Message, DemoError> {
    let mut buf = vec![0; 65_536];
    let (len, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .map_err(|_| step("no answer within 10 s"))??;
    parse_datagram(&buf[..len]).map_err(|e| step(&format!("unparseable message: {e}")))
}

/// Waits for a response of `code` (passing provisionals by).
async fn expect(socket: &UdpSocket, code: u16) -> Result<Message, DemoError> {
    loop {
        let message = receive(socket).await?;
        match message.status() {
            Some(c) if c == code => return Ok(message),
            Some(c) if c < 200 => continue,
            other => return Err(step(&format!("expected {code}, got {other:?}"))),
        }
    }
}

fn header(message: &Message, name: HeaderName) -> String {
    message
        .first(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn register(phone: SocketAddr, cseq: u32) -> String {
    format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bKdemo-reg{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=bob-phone\r\nTo: <sip:bob@localhost>\r\nCall-ID: demo-registration\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:bob@{phone};pn-provider=apns;pn-prid=demo-token;pn-param=ABCD1234.com.example.app.voip>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The phone's answer to `request`, carrying the dialog's Record-Route and its Contact.
fn answer(request: &Message, code: u16, phone: SocketAddr) -> Bytes {
    let mut response = request.response(code).to_tag("bob-phone-dialog");
    for rr in request.values(HeaderName::RecordRoute) {
        response = response.header("Record-Route", &String::from_utf8_lossy(rr));
    }
    response
        .header("Contact", &format!("<sip:bob@{phone}>"))
        .to_bytes()
        .into()
}

/// Runs the demo and prints its timeline to `out`.
pub async fn run(out: impl Write) -> Result<(), DemoError> {
    let mut line = Timeline {
        out,
        started: Instant::now(),
    };
    let dir = std::env::temp_dir().join(format!("pushpark-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut config = Config {
        listen: vec![Listener::new(
            Transport::Udp,
            "127.0.0.1:0".parse().expect("a literal address"),
        )],
        ..Config::default()
    };
    config.store.path = dir.join("bindings.db");
    for route in config.push.routes.values_mut() {
        *route = toml::Spanned::new(0..0, "demo".to_owned());
    }
    let (push_tx, mut pushes) = mpsc::unbounded_channel();
    let providers: HashMap<String, Arc<dyn PushProvider>> = HashMap::from([(
        "demo".to_owned(),
        Arc::new(DemoPushService { phone: push_tx }) as _,
    )]);
    let server = Server::start_with_providers(config, providers).await?;
    let result = play(&mut line, &server, &mut pushes).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn play<W: Write>(
    line: &mut Timeline<W>,
    server: &Server,
    pushes: &mut mpsc::UnboundedReceiver<PushRequest>,
) -> Result<(), DemoError> {
    let pushpark = server
        .local_addr(Transport::Udp)
        .ok_or_else(|| step("no UDP listener"))?;
    writeln!(
        line.out,
        "pushpark demo: a SIP server on {pushpark}, alice calling bob, whose phone sleeps\n"
    )?;

    // bob's phone registers with its push token, then the app is suspended.
    let phone = UdpSocket::bind("127.0.0.1:0").await?;
    let phone_addr = phone.local_addr()?;
    phone
        .send_to(register(phone_addr, 1).as_bytes(), pushpark)
        .await?;
    let ok = expect(&phone, 200).await?;
    line.say(
        "bob",
        "REGISTER with pn-provider=apns, pn-prid (the push token)",
    )?;
    line.say(
        "pushpark",
        &format!(
            "200 OK, Feature-Caps: {}",
            header(&ok, HeaderName::FeatureCaps)
        ),
    )?;
    drop(phone);
    line.say("bob", "the app is suspended: no socket, no keep-alive")?;

    // alice calls.
    let alice = UdpSocket::bind("127.0.0.1:0").await?;
    let alice_addr = alice.local_addr()?;
    let invite = format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {alice_addr};branch=z9hG4bKdemo-inv;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@localhost>;tag=alice\r\nTo: <sip:bob@localhost>\r\nCall-ID: demo-call\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{alice_addr}>\r\nContent-Length: 0\r\n\r\n"
    );
    alice.send_to(invite.as_bytes(), pushpark).await?;
    line.say("alice", "INVITE sip:bob@localhost")?;
    let trying = receive(&alice).await?;
    line.say(
        "pushpark",
        &format!(
            "{} Trying to alice: the call is parked",
            trying.status().unwrap_or(0)
        ),
    )?;
    let push = tokio::time::timeout(Duration::from_secs(5), pushes.recv())
        .await
        .ok()
        .flatten()
        .ok_or_else(|| step("no push was sent"))?;
    line.say(
        "pushpark",
        &format!(
            "VoIP push to token {} (caller {}, Call-ID {})",
            push.pn_prid, push.caller_uri, push.call_id
        ),
    )?;
    line.say("apns", "push accepted and delivered; the phone wakes")?;

    // The woken app registers again from a new socket and gets the parked INVITE.
    tokio::time::sleep(WAKE_DELAY).await;
    let phone = UdpSocket::bind("127.0.0.1:0").await?;
    let phone_addr = phone.local_addr()?;
    phone
        .send_to(register(phone_addr, 2).as_bytes(), pushpark)
        .await?;
    line.say("bob", "the woken app REGISTERs again (new address)")?;
    expect(&phone, 200).await?;
    let invite = loop {
        let message = receive(&phone).await?;
        if message.is_request() {
            break message;
        }
    };
    line.say(
        "pushpark",
        "the parked INVITE is delivered over the new flow",
    )?;
    phone
        .send_to(&answer(&invite, 180, phone_addr), pushpark)
        .await?;
    expect(&alice, 180).await?;
    line.say("alice", "hears 180 Ringing")?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    phone
        .send_to(&answer(&invite, 200, phone_addr), pushpark)
        .await?;
    let ok = expect(&alice, 200).await?;
    line.say("alice", "200 OK: bob answered")?;

    // alice acknowledges and hangs up, along the Record-Route.
    let route = header(&ok, HeaderName::RecordRoute);
    let to = header(&ok, HeaderName::To);
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:bob@{phone_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {alice_addr};branch=z9hG4bKdemo-{method};rport\r\nRoute: {route}\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@localhost>;tag=alice\r\nTo: {to}\r\nCall-ID: demo-call\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    alice
        .send_to(in_dialog("ACK", 1).as_bytes(), pushpark)
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice
        .send_to(in_dialog("BYE", 2).as_bytes(), pushpark)
        .await?;
    line.say("alice", "BYE")?;
    let bye = loop {
        let message = receive(&phone).await?;
        if message.method().is_some_and(|m| m.as_str() == "BYE") {
            break message;
        }
    };
    phone
        .send_to(&answer(&bye, 200, phone_addr), pushpark)
        .await?;
    expect(&alice, 200).await?;
    line.say("bob", "200 OK to the BYE: the call is over")?;
    writeln!(
        line.out,
        "\nparked for {:.1} s while the phone woke; run `pushpark run` to serve real phones",
        (PUSH_LATENCY + WAKE_DELAY).as_secs_f64()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_parks_pushes_delivers_and_ends_a_call() {
        let mut out = Vec::new();
        super::run(&mut out)
            .await
            .expect("the demo runs to the end");
        let text = String::from_utf8(out).expect("utf-8");
        for expected in [
            "100 Trying to alice: the call is parked",
            "VoIP push to token demo-token",
            "the parked INVITE is delivered over the new flow",
            "200 OK: bob answered",
            "200 OK to the BYE: the call is over",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
