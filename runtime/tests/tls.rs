//! SIP over TLS (RFC 3261 §26, RFC 5630): phones on a `transport = "tls"` listener, checked
//! by a rustls client that trusts only the test authority, and the certificate renewed
//! while connections stay open (what SIGHUP does).

mod common;
mod ua;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pushpark::config::{Config, Listener, Transport as Listen};
use pushpark::server::Server;
use rsip::Method;
use ua::{Behaviour, Caller, Device, PushGateway, SipSocket, Transport, STEP};

/// A server with a UDP listener and a TLS one whose certificate is `<dir>/<name>.crt`.
fn config(dir: &Path, gateway: &PushGateway, name: &str) -> (Config, Vec<u8>) {
    let (certificate, key, der) = ua::tls::issue(dir, name);
    let mut config = common::loopback_config(dir, &[Listen::Udp], false);
    let mut tls = Listener::new(Listen::Tls, "127.0.0.1:0".parse().expect("an address"));
    tls.as_mut().certificate = Some(certificate);
    tls.as_mut().private_key = Some(key);
    config.listen.push(tls);
    config.auth.trusted_peers = vec!["127.0.0.1/32".parse().expect("a network")];
    common::route_pushes_to(&mut config, gateway.url());
    (config, der)
}

async fn tls_phone(aor: &str, token: &str, server: SocketAddr) -> Device {
    Device::builder(aor, server)
        .transport(Transport::Tls)
        .voip_app(token)
        .behaviour(Behaviour::Answer {
            ring_for: Duration::from_millis(100),
        })
        .start_registered()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_on_tls_is_woken_and_takes_the_parked_call_over_tls() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let gateway = PushGateway::start().await.expect("the push gateway");
    let (config, _) = config(dir.path(), &gateway, "sip");
    let server = Server::start(config).await.expect("the server starts");
    let udp = server.local_addr(Listen::Udp).expect("UDP");
    let tls = server.local_addr(Listen::Tls).expect("TLS");

    let bob = tls_phone("sip:bob@localhost", "bobtls", tls).await;
    bob.sleep().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    gateway.wake_on_push(&bob, Duration::from_millis(200));

    let alice = Caller::new("sip:alice@localhost", Transport::Udp)
        .await
        .expect("the caller starts");
    alice
        .invite("sip:bob@localhost", udp)
        .await
        .expect("INVITE sent");
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack_and_hang_up(&ok).await;
    assert_eq!(gateway.pushes_for("bobtls").len(), 1);

    // The INVITE came over the woken phone's TLS connection, with our Via for TLS and a
    // route back for each side: TLS toward the phone, UDP toward the caller (RFC 5658).
    let invite = bob.requests()[0].request.to_string();
    let via = invite
        .lines()
        .find(|l| l.starts_with("Via:"))
        .expect("a Via");
    assert!(via.starts_with("Via: SIP/2.0/TLS 127.0.0.1:"), "{invite}");
    let record_route: Vec<&str> = invite
        .lines()
        .filter(|l| l.starts_with("Record-Route:"))
        .flat_map(|l| l["Record-Route:".len()..].split(','))
        .map(str::trim)
        .collect();
    assert_eq!(record_route.len(), 2, "{invite}");
    assert!(
        record_route[0].ends_with(&format!("@{tls};transport=tls;lr>")),
        "{invite}"
    );
    assert!(
        record_route[1].ends_with(&format!("@{udp};lr>")),
        "{invite}"
    );
    assert_eq!(bob.count(Method::Bye), 1, "{:#?}", bob.requests());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_new_connections_while_open_ones_go_on() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let gateway = PushGateway::start().await.expect("the push gateway");
    let (config, first) = config(dir.path(), &gateway, "sip");
    let server = Server::start(config).await.expect("the server starts");
    let tls = server.local_addr(Listen::Tls).expect("TLS");

    let early = tls_phone("sip:bob@localhost", "early", tls).await;
    let socket = SipSocket::tls_connect(tls).await.expect("a handshake");
    assert_eq!(socket.server_certificate(), Some(&first[..]));

    // The operator renews the certificate in place and sends SIGHUP.
    let (renewed_cert, renewed_key, renewed) = ua::tls::issue(dir.path(), "renewed");
    std::fs::rename(renewed_cert, dir.path().join("sip.crt")).expect("renewed in place");
    std::fs::rename(renewed_key, dir.path().join("sip.key")).expect("renewed in place");
    server.reload_tls();
    let socket = SipSocket::tls_connect(tls).await.expect("a handshake");
    assert_eq!(socket.server_certificate(), Some(&renewed[..]));
    // The phone that connected before keeps its connection and its registration.
    let ok = early
        .register(600)
        .await
        .expect("REGISTER over the old connection");
    assert_eq!(ok.status_code.code(), 200, "{ok}");

    // A botched renewal (a key that does not match) leaves the working certificate in use.
    let (_, wrong_key, _) = ua::tls::issue(dir.path(), "other");
    std::fs::rename(wrong_key, dir.path().join("sip.key")).expect("replaced");
    server.reload_tls();
    let socket = SipSocket::tls_connect(tls).await.expect("a handshake");
    assert_eq!(socket.server_certificate(), Some(&renewed[..]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_cannot_be_read_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let gateway = PushGateway::start().await.expect("the push gateway");
    let (config, _) = config(dir.path(), &gateway, "sip");
    std::fs::write(dir.path().join("sip.crt"), "not a certificate\n").expect("written");
    let err = Server::start(config)
        .await
        .err()
        .expect("no start without a certificate")
        .to_string();
    assert!(err.contains("sip.crt"), "{err}");
}
