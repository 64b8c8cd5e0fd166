//! The limits of `[connections]` and `sip.max_message_size`, met over real TCP connections
//! on loopback as an attacker meets them: silent and slowloris connections cut while a
//! phone still registers, connection floods capped per source address and in all, a
//! message over the size limit answered 513 on a connection that stays usable, and a peer
//! that never reads dropped once its queue is full. Each limit hit shows in `/metrics`.
//!
//! The timeouts here are configured short (a second or two) so the tests take seconds;
//! the defaults are in the README's Security section.

mod common;
mod ua;

use std::net::SocketAddr;
use std::time::Duration;

use pushpark::config::{Config, Transport as Listen};
use pushpark::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use ua::{Behaviour, Device, Transport};

struct Running {
    server: Server,
    tcp: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(adjust: impl FnOnce(&mut Config)) -> Running {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = common::loopback_config(dir.path(), &[Listen::Tcp], false);
    config.admin.listen = Some("127.0.0.1:0".parse().expect("an address"));
    adjust(&mut config);
    let server = Server::start(config).await.expect("the server starts");
    let tcp = server.local_addr(Listen::Tcp).expect("TCP");
    Running {
        server,
        tcp,
        _dir: dir,
    }
}

impl Running {
    /// How often `limit` was hit, from the admin listener's `/metrics`.
    async fn hits(&self, limit: &str) -> u64 {
        common::limit_hits(&self.server, limit).await
    }
}

/// An OPTIONS to the server with `vias` Via rows in all (a response copies them).
fn options(call: usize, vias: usize) -> String {
    let mut text = String::from("OPTIONS sip:127.0.0.1 SIP/2.0\r\n");
    for hop in 0..vias {
        text.push_str(&format!(
            "Via: SIP/2.0/TCP 192.0.2.{}:5060;branch=z9hG4bK-{call}-{hop}\r\n",
            hop % 250 + 1
        ));
    }
    text.push_str(&format!(
        "Max-Forwards: 70\r\nTo: <sip:127.0.0.1>\r\nFrom: <sip:probe@127.0.0.1>;tag=p{call}\r\n\
         Call-ID: limits-{call}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ));
    text
}

/// Reads what arrives until `within` passes; `Some(text)` once the peer closed (or reset)
/// the connection, `None` while it is still open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `request` and reads until a whole response with `status` has arrived.
async fn exchange(stream: &mut TcpStream, request: &str, status: &str) -> String {
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(status) && text.ends_with("\r\n\r\n") {
            return text;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {status} in time; got:\n{text}"))
            .expect("readable");
        assert!(n > 0, "closed before {status}; got:\n{text}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// `n` connections, each shown to be served by an OPTIONS answered.
async fn open_connections(server: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for call in 0..n {
        let mut stream = TcpStream::connect(server).await.expect("connected");
        exchange(&mut stream, &options(call, 1), "SIP/2.0 200").await;
        held.push(stream);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_cut_while_a_phone_still_registers() {
    let r = start(|c| {
        c.connections.message_timeout = Duration::from_secs(1);
        c.connections.idle_timeout = Duration::from_secs(2);
    })
    .await;

    // Connects and says nothing.
    let mut silent = TcpStream::connect(r.tcp).await.expect("connected");
    // Slowloris: a header section an octet at a time, ten a second.
    let drip = tokio::spawn({
        let mut slow_writer = TcpStream::connect(r.tcp).await.expect("connected");
        async move {
            for octet in options(0, 1).bytes().take(200) {
                if slow_writer.write_all(&[octet]).await.is_err() {
                    return slow_writer;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            slow_writer
        }
    });
    // A phone registering over TCP meanwhile.
    let phone = Device::builder("sip:bob@localhost", r.tcp)
        .transport(Transport::Tcp)
        .push("apns", "bobtoken", Some("ABCD1234.com.example.app.voip"))
        .behaviour(Behaviour::Answer {
            ring_for: Duration::from_millis(100),
        })
        .start()
        .await
        .expect("the phone connects");
    let ok = phone.register(600).await.expect("REGISTER answered");
    assert_eq!(ok.status_code.code(), 200, "{ok}");

    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a connection that never sends a message is closed"
    );
    let mut dripper = drip.await.expect("the drip task");
    assert!(
        closed_within(&mut dripper, Duration::from_secs(5))
            .await
            .is_some(),
        "a message dripping in an octet at a time is cut off at message_timeout"
    );

    // A connection that has said something, then nothing: closed at idle_timeout, not at
    // message_timeout.
    let mut idle = TcpStream::connect(r.tcp).await.expect("connected");
    exchange(&mut idle, &options(1, 1), "SIP/2.0 200").await;
    assert!(
        closed_within(&mut idle, Duration::from_millis(1_300))
            .await
            .is_none(),
        "a connection between messages is not cut at message_timeout"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .is_some(),
        "an idle connection is closed"
    );
    assert_eq!(r.hits("message_timeout").await, 2);
    assert!(r.hits("idle_timeout").await >= 1);
    // The phone's registration went through the limits untouched and still works.
    let ok = phone.register(600).await.expect("REGISTER answered");
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_per_source_address_and_in_all() {
    let r = start(|c| c.connections.max_per_ip = 3).await;
    let mut held = open_connections(r.tcp, 3).await;
    let mut fourth = TcpStream::connect(r.tcp).await.expect("the kernel accepts");
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2))
            .await
            .is_some(),
        "a fourth connection from one address is closed at once"
    );
    assert_eq!(r.hits("connections_per_ip").await, 1);
    // One closes: there is room again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = TcpStream::connect(r.tcp).await.expect("connected");
    exchange(&mut again, &options(9, 1), "SIP/2.0 200").await;
    r.server.shutdown().await;

    // Trusted peers (an SBC, another node) pass the per-address cap, not the total one.
    let r = start(|c| {
        c.connections.max_per_ip = 1;
        c.connections.max = 3;
        c.auth.trusted_peers = vec!["127.0.0.1/32".parse().expect("a network")];
    })
    .await;
    let _held = open_connections(r.tcp, 3).await;
    let mut over = TcpStream::connect(r.tcp).await.expect("the kernel accepts");
    assert!(closed_within(&mut over, Duration::from_secs(2))
        .await
        .is_some());
    assert_eq!(r.hits("connections").await, 1);
    assert_eq!(r.hits("connections_per_ip").await, 0);
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_gets_513_and_the_connection_goes_on() {
    let r = start(|c| c.sip.max_message_size = 2_000).await;
    let mut stream = TcpStream::connect(r.tcp).await.expect("connected");
    let body = "v=0\r\n".repeat(1_000);
    let big = options(1, 1).replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    let answer = exchange(&mut stream, &big, "SIP/2.0 513").await;
    assert!(answer.contains("Call-ID: limits-1"), "{answer}");
    // The body was skipped, not taken for the next message: the connection still frames.
    let answer = exchange(&mut stream, &options(2, 1), "SIP/2.0 200").await;
    assert!(answer.contains("Call-ID: limits-2"), "{answer}");
    assert_eq!(r.hits("max_message_size").await, 1);
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_is_dropped_when_its_queue_is_full() {
    // Many cheap requests from one address: the rate limiter would block the source long
    // before its queue fills, so it is lifted here; the queue limit is what is tested.
    let r = start(|c| {
        c.connections.max_write_queue = 64 * 1024;
        c.rate_limit.max_requests = u32::MAX;
    })
    .await;
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut stream = socket.connect(r.tcp).await.expect("connected");
    // Requests whose answers (each copying 20 Vias) pile up unread: far more than the
    // kernel's buffers and the 64 KiB queue hold.
    let mut sent = 0;
    for call in 0..8_000 {
        if stream
            .write_all(options(call, 20).as_bytes())
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    assert!(
        closed_within(&mut stream, Duration::from_secs(10))
            .await
            .is_some(),
        "the connection of a peer that does not read is closed ({sent} requests sent)"
    );
    assert_eq!(r.hits("write_queue").await, 1);
    r.server.shutdown().await;
}
