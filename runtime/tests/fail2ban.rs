//! The fail2ban filter we ship (runtime/fail2ban/pushpark.conf) bans what it should: the
//! server's own log lines for a wrong password, for a forged route token and for a source
//! the rate limiter blocks are matched, by the real `fail2ban-regex` (Debian package
//! fail2ban), with the source address.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use pushpark::config::Transport;
use tokio::net::UdpSocket;

/// The log, shared with the subscriber.
#[derive(Clone)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("the log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn register(auth: &str) -> String {
    format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKr{}\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a\r\nTo: <sip:alice@localhost>\r\n\
Call-ID: alice-reg@test\r\nCSeq: {} REGISTER\r\nContact: <sip:alice@127.0.0.1:9>\r\n{auth}\
Content-Length: 0\r\n\r\n",
        auth.len(),
        1 + auth.len() % 7
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_filter_bans_wrong_passwords_forged_routes_and_blocks_by_source() {
    if Command::new("fail2ban-regex")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("fail2ban-regex is needed: apt-get install fail2ban");
    }
    let log = Log(Arc::new(Mutex::new(Vec::new())));
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .with_env_filter("pushpark=warn")
        .init();

    let dir = tempfile::tempdir().expect("a temp dir");
    let users = dir.path().join("users");
    pushpark::auth::add_user(&users, "alice", "localhost", "secret").expect("a users file");
    let mut config = common::loopback_config(dir.path(), &[Transport::Udp], false);
    config.auth.users_file = Some(users);
    // The first wrong password blocks the source.
    config.rate_limit.max_auth_failures = 1;
    let (server, addr) = common::start_udp(config).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");

    // A BYE with a route token of our form and a made-up MAC.
    let bye =
        "BYE sip:bob@127.0.0.1:9 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbye\r\n\
Max-Forwards: 70\r\nRoute: <sip:pp-1-2-00000000000000000000@127.0.0.1;lr>\r\n\
From: <sip:a@localhost>;tag=1\r\nTo: <sip:b@localhost>;tag=2\r\nCall-ID: x@y\r\n\
CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let forbidden = common::final_response(&socket, addr, bye).await;
    assert!(forbidden.starts_with("SIP/2.0 403"), "{forbidden}");

    // A wrong password: the challenge's nonce, a made-up response.
    let challenge = common::final_response(&socket, addr, &register("")).await;
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a nonce");
    let wrong = format!(
        "Authorization: Digest username=\"alice\", realm=\"localhost\", nonce=\"{nonce}\", \
         uri=\"sip:localhost\", response=\"00000000000000000000000000000000\", \
         algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n"
    );
    let refused = common::final_response(&socket, addr, &register(&wrong)).await;
    assert!(refused.starts_with("SIP/2.0 401"), "{refused}");
    server.shutdown().await;

    let text = String::from_utf8(log.0.lock().expect("the log").clone()).expect("text");
    let file = dir.path().join("pushpark.log");
    std::fs::write(&file, &text).expect("the log file");
    let filter = Path::new(env!("CARGO_MANIFEST_DIR")).join("fail2ban/pushpark.conf");
    let out = Command::new("fail2ban-regex")
        .args(["--print-all-matched", "--print-no-missed"])
        .arg(&file)
        .arg(&filter)
        .output()
        .expect("fail2ban-regex runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each regular expression hit once, and nothing else in the log.
    for needle in [
        "Failregex: 3 total",
        "1) [1] ^.*\\bsecurity: auth failure from <HOST> user",
        "2) [1] ^.*\\bsecurity: route refused from <HOST>",
        "3) [1] ^.*\\bsecurity: blocked <HOST> for",
        "Lines: 3 lines, 0 ignored, 3 matched, 0 missed",
        "auth failure from 127.0.0.1 user \"alice\" (REGISTER)",
        "route refused from 127.0.0.1 (BYE)",
        "blocked 127.0.0.1 for 300s: too many failed credentials",
    ] {
        assert!(
            report.contains(needle),
            "{needle:?} not in:\n{report}\nlog:\n{text}"
        );
    }
}
