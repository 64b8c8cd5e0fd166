//! Every RFC 4475 and RFC 5118 torture message sent to the running server over UDP, with
//! the answer a registrar and proxy owes it (tests/torture/README.md gives the verdicts;
//! where the RFC leaves a choice, the choice is named here); and the whole corpus in a row,
//! after which the server still answers.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pushpark::config::Transport;
use pushpark::server::Server;
use tokio::net::UdpSocket;

/// File, and the status code the server answers it with (`None`: dropped, no answer).
const VERDICTS: &[(&str, Option<u16>)] = &[
    // RFC 4475 §3.1.1: valid messages, processed.
    ("rfc4475/valid/wsinv.dat", Some(481)), // a To tag: a dialog this server is not in
    ("rfc4475/valid/intmeth.dat", Some(501)), // an extension method this server does not proxy
    ("rfc4475/valid/esc01.dat", Some(480)), // a user of ours with no binding
    ("rfc4475/valid/escnull.dat", Some(200)), // registrar: both bindings stored
    ("rfc4475/valid/dblreq.dat", Some(200)), // the REGISTER; the trailing octets ignored
    ("rfc4475/valid/esc02.dat", Some(501)), // RE%47IST%45R is not REGISTER
    ("rfc4475/valid/lwsdisp.dat", Some(405)), // OPTIONS for a user: not proxied
    ("rfc4475/valid/longreq.dat", Some(480)),
    ("rfc4475/valid/semiuri.dat", Some(405)),
    ("rfc4475/valid/transports.dat", Some(405)),
    ("rfc4475/valid/mpart01.dat", Some(405)), // MESSAGE is not proxied yet
    ("rfc4475/valid/unreason.dat", None),     // responses to no transaction of ours
    ("rfc4475/valid/noreason.dat", None),
    // RFC 4475 §3.1.2: invalid messages.
    ("rfc4475/invalid/badinv01.dat", Some(400)),
    ("rfc4475/invalid/clerr.dat", None), // Content-Length beyond the datagram: dropped
    ("rfc4475/invalid/ncl.dat", Some(400)),
    ("rfc4475/invalid/scalar02.dat", Some(400)),
    ("rfc4475/invalid/scalarlg.dat", None),
    ("rfc4475/invalid/quotbal.dat", Some(400)),
    ("rfc4475/invalid/ltgtruri.dat", Some(400)),
    ("rfc4475/invalid/lwsruri.dat", Some(400)),
    ("rfc4475/invalid/lwsstart.dat", Some(400)),
    ("rfc4475/invalid/trws.dat", Some(400)),
    ("rfc4475/invalid/escruri.dat", Some(400)),
    ("rfc4475/invalid/baddate.dat", Some(480)), // Date is not used: routed as any INVITE
    ("rfc4475/invalid/regbadct.dat", Some(400)),
    ("rfc4475/invalid/badaspec.dat", Some(400)),
    ("rfc4475/invalid/baddn.dat", Some(400)),
    ("rfc4475/invalid/badvers.dat", Some(505)),
    ("rfc4475/invalid/mismatch01.dat", Some(400)),
    ("rfc4475/invalid/mismatch02.dat", Some(501)),
    ("rfc4475/invalid/bigcode.dat", None),
    // RFC 4475 §3.2–3.4.
    ("rfc4475/other/badbranch.dat", Some(405)), // a bare magic cookie is a branch too
    ("rfc4475/other/insuf.dat", Some(400)),
    ("rfc4475/other/unkscm.dat", Some(416)),
    ("rfc4475/other/novelsc.dat", Some(416)),
    ("rfc4475/other/unksm2.dat", Some(400)), // registrar: To must be a SIP AOR
    ("rfc4475/other/bext01.dat", Some(420)),
    ("rfc4475/other/invut.dat", Some(480)), // a proxy does not care about the body type
    ("rfc4475/other/regaut01.dat", Some(200)), // no users file: the header is ignored
    ("rfc4475/other/multi01.dat", Some(400)),
    ("rfc4475/other/mcl01.dat", Some(400)),
    ("rfc4475/other/bcast.dat", None),
    ("rfc4475/other/zeromf.dat", Some(483)),
    ("rfc4475/other/cparam01.dat", Some(200)),
    ("rfc4475/other/cparam02.dat", Some(200)),
    ("rfc4475/other/regescrt.dat", Some(200)),
    ("rfc4475/other/sdp01.dat", Some(480)),
    ("rfc4475/other/inv2543.dat", Some(480)), // RFC 2543 transaction matching
    ("rfc4475/other/test.dat", None),
    // RFC 5118.
    ("rfc5118/ipv6-good.dat", Some(200)),
    ("rfc5118/ipv6-bad.dat", Some(400)),
    ("rfc5118/port-ambiguous.dat", Some(200)), // parsed as host 2001:db8::10:5070; To is ours
    ("rfc5118/port-unambiguous.dat", Some(200)),
    ("rfc5118/via-received-param-with-delim.dat", Some(481)), // a BYE of no dialog here
    ("rfc5118/via-received-param-no-delim.dat", Some(200)),   // OPTIONS to this server
    ("rfc5118/ipv6-in-sdp.dat", Some(480)),
    ("rfc5118/mult-ip-in-header.dat", Some(481)),
    ("rfc5118/mult-ip-in-sdp.dat", Some(480)),
    ("rfc5118/ipv4-mapped-ipv6.dat", Some(480)),
    ("rfc5118/ipv6-bug-abnf-3-colons.dat", Some(405)),
    ("rfc5118/ipv6-correct-abnf-2-colons.dat", Some(405)),
];

async fn start(dir: &Path) -> (Server, SocketAddr) {
    let mut config = common::loopback_config(dir, &[Transport::Udp], false);
    config.domains = [
        "example.com",
        "example.org",
        "example.net",
        "company.com",
        "registrar.example.com",
        "2001:db8::10",
    ]
    .map(String::from)
    .to_vec();
    common::start_udp(config).await
}

/// The status code of the final response (or of the last provisional) that arrives within
/// a moment, if any.
async fn answer(socket: &UdpSocket) -> Option<u16> {
    let mut buf = vec![0; 65_536];
    let mut last = None;
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(400), socket.recv_from(&mut buf)).await
    {
        let text = String::from_utf8_lossy(&buf[..len]);
        let code: Option<u16> = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|t| t.get(..3)?.parse().ok());
        last = code;
        if code.is_some_and(|c| c >= 200) {
            break;
        }
    }
    last
}

async fn send_and_listen(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    socket.send_to(bytes, addr).await.expect("sent");
    answer(&socket).await
}

fn corpus(file: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/torture")
        .join(file);
    std::fs::read(path).expect("a corpus file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_torture_message_gets_the_answer_it_is_owed() {
    let mut wrong = Vec::new();
    for (file, expected) in VERDICTS {
        // A server each: several messages of the corpus share a Via branch, and a second
        // one would rightly be taken for a retransmission of the first.
        let dir = tempfile::tempdir().expect("a temp dir");
        let (server, addr) = start(dir.path()).await;
        let got = send_and_listen(addr, &corpus(file)).await;
        server.shutdown().await;
        if got != *expected {
            wrong.push(format!("{file}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} verdicts differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_corpus_in_a_row_leaves_the_server_answering() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, addr) = start(dir.path()).await;
    for (file, _) in VERDICTS {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
        socket.send_to(&corpus(file), addr).await.expect("sent");
    }
    let ping = "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKping\r\nFrom: <sip:t@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ping\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let alive = send_and_listen(addr, ping.as_bytes()).await;
    server.shutdown().await;
    assert_eq!(alive, Some(200), "the server stopped answering");
}

#[test]
fn every_corpus_file_has_a_verdict() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torture");
    let mut files = Vec::new();
    for dir in [
        "rfc4475/valid",
        "rfc4475/invalid",
        "rfc4475/other",
        "rfc5118",
    ] {
        for entry in std::fs::read_dir(corpus.join(dir))
            .expect("a corpus folder")
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".dat") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    let mut listed: Vec<String> = VERDICTS.iter().map(|(f, _)| f.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
}
