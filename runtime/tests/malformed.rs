//! Malformed input over UDP and TCP: the answer RFC 3261 prescribes where one is possible,
//! a drop (or, on TCP, a closed connection) where it is not; the server stays up, and a
//! binding accepted before keeps working.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use pushpark::config::Transport;
use pushpark::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

async fn start(dir: &std::path::Path) -> (Server, SocketAddr, SocketAddr) {
    let config = common::loopback_config(dir, &[Transport::Udp, Transport::Tcp], false);
    let (server, udp) = common::start_udp(config).await;
    let tcp = server.local_addr(Transport::Tcp).expect("TCP");
    (server, udp, tcp)
}

fn request(method: &str, branch: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a\r\nTo: <sip:bob@localhost>\r\nCall-ID: {branch}@test\r\nCSeq: 1 {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The status line's code of the first answer within a moment.
async fn udp_answer(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    socket.send_to(bytes, addr).await.expect("sent");
    let mut buf = vec![0; 65_536];
    let (len, _) = tokio::time::timeout(Duration::from_millis(400), socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf[..len])
        .strip_prefix("SIP/2.0 ")?
        .get(..3)?
        .parse()
        .ok()
}

/// A REGISTER for bob over UDP, answered 200.
async fn register_bob(udp: SocketAddr) {
    let register = "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKreg\r\nMax-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=b\r\nTo: <sip:bob@localhost>\r\nCall-ID: reg@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@127.0.0.1:9;pn-provider=apns;pn-prid=bob-token>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(udp_answer(udp, register.as_bytes()).await, Some(200));
}

/// bob's binding still leads to a push: the INVITE is parked (100), not refused (480).
async fn bob_is_still_reachable(udp: SocketAddr) -> Option<u16> {
    udp_answer(udp, request("INVITE", "after", "", "").as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_get_400_or_are_dropped_and_change_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, udp, _) = start(dir.path()).await;
    register_bob(udp).await;
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("binary junk", (0u8..=255).cycle().take(700).collect(), None),
        (
            // No Via to route by: the 400 goes back to the source address.
            "a start line alone",
            b"INVITE sip:bob@localhost SIP/2.0\r\n".to_vec(),
            Some(400),
        ),
        (
            "no Call-ID",
            request("INVITE", "nocid", "", "")
                .replace("Call-ID: nocid@test\r\n", "")
                .into_bytes(),
            Some(400),
        ),
        (
            "no Via",
            request("INVITE", "novia", "", "")
                .replace("Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKnovia\r\n", "")
                .into_bytes(),
            Some(400),
        ),
        (
            "a negative Content-Length",
            request("INVITE", "ncl", "", "")
                .replace("Content-Length: 0", "Content-Length: -5")
                .into_bytes(),
            Some(400),
        ),
        (
            "a Content-Length beyond the datagram",
            request("INVITE", "cl", "", "")
                .replace("Content-Length: 0", "Content-Length: 900")
                .into_bytes(),
            None,
        ),
        (
            "a bad Request-URI",
            request("INVITE", "uri", "", "")
                .replace("INVITE sip:bob@localhost", "INVITE sip:bob@[::1")
                .into_bytes(),
            Some(400),
        ),
        (
            "an unknown method",
            request("FROB", "frob", "", "").into_bytes(),
            Some(501),
        ),
        (
            "Max-Forwards 0",
            request("INVITE", "mf0", "", "")
                .replace("Max-Forwards: 70", "Max-Forwards: 0")
                .into_bytes(),
            Some(483),
        ),
        (
            "a header line of 9 KiB",
            request(
                "INVITE",
                "long",
                &format!("X-Long: {}\r\n", "a".repeat(9 * 1024)),
                "",
            )
            .into_bytes(),
            None,
        ),
        (
            "SIP/3.0",
            request("INVITE", "v3", "", "")
                .replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1)
                .into_bytes(),
            Some(505),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, bytes, expected) in cases {
        let got = udp_answer(udp, &bytes).await;
        if got != expected {
            wrong.push(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    }
    let after = bob_is_still_reachable(udp).await;
    server.shutdown().await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(after, Some(100), "bob's binding was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_framing_is_lost_is_closed_and_others_carry_on() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, udp, tcp) = start(dir.path()).await;
    register_bob(udp).await;
    for junk in [
        request("OPTIONS", "tcp1", "", "").replace("Content-Length: 0", "Content-Length: five"),
        request("OPTIONS", "tcp2", "Content-Length: 0\r\n", ""),
        "\u{1}\u{2}\u{3} definitely not SIP\r\n\r\n".to_owned(),
    ] {
        let mut stream = TcpStream::connect(tcp).await.expect("connected");
        stream.write_all(junk.as_bytes()).await.expect("written");
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .unwrap_or(false);
        assert!(closed, "the connection stayed open after {junk:?}");
    }
    // A keep-alive ping on a healthy connection gets its pong (RFC 5626 §4.4.1).
    let mut stream = TcpStream::connect(tcp).await.expect("connected");
    stream.write_all(b"\r\n\r\n").await.expect("written");
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut pong))
        .await
        .expect("a pong in time")
        .expect("a pong");
    assert_eq!(&pong, b"\r\n");
    let after = bob_is_still_reachable(udp).await;
    server.shutdown().await;
    assert_eq!(after, Some(100), "bob's binding was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_size_limit_gets_513_and_a_response_is_dropped() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = common::loopback_config(dir.path(), &[Transport::Udp], false);
    config.sip.max_message_size = 1_000;
    let (server, udp) = common::start_udp(config).await;
    let body = "v=0\r\n".repeat(200);
    let invite = request("INVITE", "big", "Content-Type: application/sdp\r\n", &body);
    assert!(invite.len() > 1_000);
    assert_eq!(udp_answer(udp, invite.as_bytes()).await, Some(513));
    let small = request("INVITE", "small", "", "");
    assert_eq!(
        udp_answer(udp, small.as_bytes()).await,
        Some(100),
        "the limit applies to the big one only"
    );
    let response = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\nFrom: <sip:a@localhost>;tag=a\r\nTo: <sip:b@localhost>;tag=b\r\nCall-ID: r@test\r\nCSeq: 1 INVITE\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(udp_answer(udp, response.as_bytes()).await, None);
    server.shutdown().await;
}
