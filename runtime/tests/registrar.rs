//! The registrar over real UDP: expiry bounds, RFC 8599 push parameters and Feature-Caps,
//! capability queries, RFC 5626 outbound, `Contact: *`, ordering, IPv6, the digest
//! challenge of an INVITE from the local domain, and who may call at all.

mod common;

use std::net::SocketAddr;

use pushpark::config::{Config, Transport};
use pushpark::server::Server;
use tokio::net::UdpSocket;

async fn start(
    v6: bool,
    adjust: impl FnOnce(&mut Config),
) -> (Server, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = common::loopback_config(dir.path(), &[Transport::Udp], v6);
    adjust(&mut config);
    let (server, addr) = common::start_udp(config).await;
    (server, addr, dir)
}

/// A REGISTER for bob with these Contact / extra header lines.
fn register(cseq: u32, lines: &str) -> String {
    format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKr{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=b\r\nTo: <sip:bob@localhost>\r\nCall-ID: bob-reg@test\r\nCSeq: {cseq} REGISTER\r\n{lines}Content-Length: 0\r\n\r\n"
    )
}

/// Sends `text` and returns the final response.
async fn exchange(server: SocketAddr, text: &str) -> String {
    let local = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = UdpSocket::bind(local).await.expect("a socket");
    common::final_response(&socket, server, text).await
}

fn status(response: &str) -> u16 {
    response[8..11].parse().expect("a status code")
}

fn headers<'a>(response: &'a str, name: &str) -> Vec<&'a str> {
    response
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

#[tokio::test]
async fn too_short_an_expiry_gets_423_with_min_expires() {
    let (server, addr, _dir) = start(false, |_| {}).await;
    let response = exchange(
        addr,
        &register(1, "Contact: <sip:bob@127.0.0.1:9>\r\nExpires: 10\r\n"),
    )
    .await;
    server.shutdown().await;
    assert_eq!(status(&response), 423, "{response}");
    assert_eq!(headers(&response, "Min-Expires"), ["60"]);
}

#[tokio::test]
async fn an_unsupported_push_provider_gets_555() {
    let (server, addr, _dir) = start(false, |_| {}).await;
    let contact =
        "Contact: <sip:bob@127.0.0.1:9;pn-provider=pigeon;pn-prid=p1>\r\nExpires: 600\r\n";
    let response = exchange(addr, &register(1, contact)).await;
    server.shutdown().await;
    assert_eq!(status(&response), 555, "{response}");
}

#[tokio::test]
async fn a_capability_query_lists_every_provider_served() {
    let (server, addr, _dir) = start(false, |_| {}).await;
    let contact = "Contact: <sip:bob@127.0.0.1:9;pn-provider>\r\nExpires: 600\r\n";
    let response = exchange(addr, &register(1, contact)).await;
    server.shutdown().await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(
        headers(&response, "Feature-Caps"),
        [
            r#"*;+sip.pns="apns""#,
            r#"*;+sip.pns="fcm""#,
            r#"*;+sip.pns="webpush""#
        ]
    );
}

#[tokio::test]
async fn a_push_registration_is_answered_with_its_provider_and_pnsreg_when_asked() {
    let (server, addr, _dir) = start(false, |_| {}).await;
    let contact = "Contact: <sip:bob@127.0.0.1:9;pn-provider=fcm;pn-prid=f1;pn-param=proj>;+sip.pnsreg\r\nExpires: 600\r\n";
    let response = exchange(addr, &register(1, contact)).await;
    server.shutdown().await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(
        headers(&response, "Feature-Caps"),
        [r#"*;+sip.pns="fcm";+sip.pnsreg="130""#]
    );
}

#[tokio::test]
async fn an_outbound_flow_registration_gets_require_outbound() {
    let (server, addr, _dir) = start(false, |_| {}).await;
    let contact = "Supported: outbound, path\r\nContact: <sip:bob@127.0.0.1:9>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1\r\nExpires: 600\r\n";
    let response = exchange(addr, &register(1, contact)).await;
    server.shutdown().await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(headers(&response, "Require"), ["outbound"]);
    assert!(
        response.contains("+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\""),
        "{response}"
    );
}

#[tokio::test]
async fn contact_star_removes_every_binding_and_needs_expires_zero() {
    let (server, addr, _dir) = start(false, |_| {}).await;
    let two = "Contact: <sip:bob@127.0.0.1:9>, <sip:bob@127.0.0.1:10>\r\nExpires: 600\r\n";
    let added = exchange(addr, &register(1, two)).await;
    let refused = exchange(addr, &register(2, "Contact: *\r\n")).await;
    let removed = exchange(addr, &register(3, "Contact: *\r\nExpires: 0\r\n")).await;
    let fetched = exchange(addr, &register(4, "")).await;
    server.shutdown().await;
    assert_eq!(headers(&added, "Contact").len(), 2, "{added}");
    assert_eq!(status(&refused), 400, "{refused}");
    assert_eq!(status(&removed), 200, "{removed}");
    assert!(headers(&fetched, "Contact").is_empty(), "{fetched}");
}

#[tokio::test]
async fn an_out_of_order_register_is_refused() {
    let (server, addr, _dir) = start(false, |_| {}).await;
    let contact = "Contact: <sip:bob@127.0.0.1:9>\r\nExpires: 600\r\n";
    let first = exchange(addr, &register(5, contact)).await;
    let stale = exchange(
        addr,
        &register(4, contact).replace("z9hG4bKr4", "z9hG4bKstale"),
    )
    .await;
    server.shutdown().await;
    assert_eq!(status(&first), 200, "{first}");
    assert_eq!(status(&stale), 500, "{stale}");
}

#[tokio::test]
async fn ipv6_registrations_are_served() {
    let (server, addr, _dir) = start(true, |c| c.domains.push("::1".into())).await;
    let text = "REGISTER sip:[::1] SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:9;branch=z9hG4bKv6;rport\r\nMax-Forwards: 70\r\nFrom: <sip:bob@[::1]>;tag=b\r\nTo: <sip:bob@[::1]>\r\nCall-ID: v6@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@[::1]:9;pn-provider=apns;pn-prid=v6>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n";
    let response = exchange(addr, text).await;
    server.shutdown().await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(
        response.contains("<sip:bob@[::1]:9;pn-provider=apns;pn-prid=v6>"),
        "{response}"
    );
    assert!(
        headers(&response, "Via")[0].contains("rport="),
        "rport filled in: {response}"
    );
}

#[tokio::test]
async fn an_invite_from_a_local_user_is_challenged_unless_the_peer_is_trusted() {
    let users = tempfile::NamedTempFile::new().expect("a users file");
    pushpark::auth::add_user(users.path(), "alice", "localhost", "secret").expect("a user");
    let path = users.path().to_owned();
    let invite = "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKi1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a\r\nTo: <sip:bob@localhost>\r\nCall-ID: inv@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let (server, addr, _dir) = start(false, |c| c.auth.users_file = Some(path.clone())).await;
    let challenged = exchange(addr, invite).await;
    server.shutdown().await;
    let (server, addr, _dir) = start(false, |c| {
        c.auth.users_file = Some(path);
        c.auth.trusted_peers = vec!["127.0.0.0/8".parse().expect("a network")];
    })
    .await;
    let trusted = exchange(addr, invite).await;
    server.shutdown().await;
    assert_eq!(status(&challenged), 407, "{challenged}");
    let offers = headers(&challenged, "Proxy-Authenticate");
    assert!(
        offers.len() == 1 && offers[0].contains("algorithm=MD5"),
        "by default MD5 alone, which real clients answer: {challenged}"
    );
    assert_eq!(
        status(&trusted),
        480,
        "bob is no user of this server, answered as one without a phone: {trusted}"
    );
}

#[tokio::test]
async fn a_caller_from_another_domain_is_refused_unless_the_operator_opens_the_server() {
    let users = tempfile::NamedTempFile::new().expect("a users file");
    pushpark::auth::add_user(users.path(), "bob", "localhost", "secret").expect("a user");
    let path = users.path().to_owned();
    let invite = "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKf1\r\nMax-Forwards: 70\r\nFrom: \"Your Bank\" <sip:mallory@attacker.example>;tag=m\r\nTo: <sip:bob@localhost>\r\nCall-ID: foreign@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let (server, addr, _dir) = start(false, |c| c.auth.users_file = Some(path.clone())).await;
    let refused = exchange(addr, invite).await;
    server.shutdown().await;
    let (server, addr, _dir) = start(false, |c| {
        c.auth.users_file = Some(path);
        c.auth.accept_foreign_callers = true;
    })
    .await;
    let opened = exchange(addr, invite).await;
    server.shutdown().await;
    assert_eq!(status(&refused), 403, "{refused}");
    assert_eq!(
        status(&opened),
        480,
        "let in, and bob has no phone registered: {opened}"
    );
}

#[tokio::test]
async fn a_register_with_more_contacts_than_allowed_gets_403_and_changes_nothing() {
    let (server, addr, _dir) = start(false, |c| c.registrar.max_contacts_per_register = 3).await;
    let many: String = (0..4)
        .map(|i| format!("Contact: <sip:bob@127.0.0.1:{}>\r\n", 9000 + i))
        .collect();
    let refused = exchange(addr, &register(1, &format!("{many}Expires: 600\r\n"))).await;
    let three: String = (0..3)
        .map(|i| format!("Contact: <sip:bob@127.0.0.1:{}>\r\n", 9000 + i))
        .collect();
    let accepted = exchange(addr, &register(2, &format!("{three}Expires: 600\r\n"))).await;
    server.shutdown().await;
    assert_eq!(status(&refused), 403, "{refused}");
    assert!(refused.contains("Too many contacts"), "{refused}");
    assert_eq!(status(&accepted), 200, "{accepted}");
    assert_eq!(
        headers(&accepted, "Contact").len(),
        3,
        "only the three of the second REGISTER: {accepted}"
    );
}

#[tokio::test]
async fn an_address_holds_at_most_its_bindings_and_a_register_beyond_changes_nothing() {
    let (server, addr, _dir) = start(false, |c| c.registrar.max_bindings_per_aor = 2).await;
    let contact = |i: u32| {
        format!(
            "Contact: <sip:bob@127.0.0.1:{}>\r\nExpires: 600\r\n",
            9000 + i
        )
    };
    let first = exchange(addr, &register(1, &contact(0))).await;
    let second = exchange(addr, &register(2, &contact(1))).await;
    let third = exchange(addr, &register(3, &contact(2))).await;
    let again = exchange(addr, &register(4, &contact(1))).await;
    server.shutdown().await;
    assert_eq!(status(&first), 200, "{first}");
    assert_eq!(status(&second), 200, "{second}");
    assert_eq!(status(&third), 403, "a third phone: {third}");
    assert!(third.contains("Too many registered contacts"), "{third}");
    assert_eq!(
        status(&again),
        200,
        "refreshing one it holds is fine: {again}"
    );
    assert_eq!(headers(&again, "Contact").len(), 2, "{again}");
}
