//! Nobody can make the proxy send a request or a response where it should not (issue 10,
//! part 1): a forged route token, a token of another dialog, a route through the server
//! itself, a Request-URI inside the operator's network and a forged response to a request
//! forwarded statelessly are each refused, and nothing at all is sent for them. The node
//! is driven sans-IO, so "nothing sent" is exact.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushpark::auth::Secret;
use pushpark::config::{Config, Transport};
use pushpark::metrics::Metrics;
use pushpark::node::{Destination, Node, NodeOptions, Transmit};
use pushpark::sip;
use pushpark::store::{Store, StoreOptions};
use pushpark::transport::{Flow, FlowId, Inbound};

const SERVER: &str = "198.51.100.1:5060";
const CALLER: &str = "203.0.113.10:5060";
const PHONE: &str = "203.0.113.20:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

/// A node on a public address with one user, `bob`, whose phone is connected over TCP, and
/// a call from the caller to bob that bob answered: the dialog is up.
struct Dialog {
    node: Node,
    start: Instant,
    phone: Flow,
    /// The route token of the dialog, as in our Record-Route.
    token: String,
    call_id: String,
}

fn udp(peer: &str) -> Flow {
    Flow::udp(addr(SERVER), addr(peer))
}

impl Dialog {
    fn up() -> Dialog {
        let start = Instant::now();
        let mut node = Node::new(
            Config::default(),
            start,
            NodeOptions {
                listeners: vec![
                    (Transport::Udp, addr(SERVER)),
                    (Transport::Tcp, addr(SERVER)),
                ],
                bindings: Vec::new(),
                users: None,
                secret: Secret::from_bytes(&[5; 32]).expect("a key"),
                boot: 1,
                unix_time: 1_800_000_000,
                metrics: Arc::new(Metrics::default()),
            },
        );
        let phone = Flow {
            id: FlowId(1),
            transport: Transport::Tcp,
            local: addr(SERVER),
            peer: addr(PHONE),
        };
        let mut store = Store::open_in_memory(&StoreOptions::default()).expect("a store");
        let register = format!(
            "REGISTER sip:198.51.100.1 SIP/2.0\r\n\
Via: SIP/2.0/TCP {PHONE};branch=z9hG4bKreg1\r\n\
Max-Forwards: 70\r\n\
From: <sip:bob@198.51.100.1>;tag=r1\r\n\
To: <sip:bob@198.51.100.1>\r\n\
Call-ID: reg@phone\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:bob@{PHONE};transport=tcp>\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n"
        );
        feed(&mut node, start, &phone, &register);
        while let Some(job) = node.poll_store() {
            for done in store.run_batch(vec![job.into_job()], start) {
                node.handle_store_done(start, done);
            }
        }
        sent(&mut node);
        let call_id = "call-1@caller".to_owned();
        let invite = format!(
            "INVITE sip:bob@198.51.100.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@203.0.113.10>;tag=a1\r\n\
To: <sip:bob@198.51.100.1>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@{CALLER}>\r\n\
Content-Length: 0\r\n\r\n"
        );
        feed(&mut node, start, &udp(CALLER), &invite);
        let forwarded = sent(&mut node)
            .into_iter()
            .find(|t| t.bytes.starts_with(b"INVITE"))
            .expect("the INVITE goes to the phone");
        let invite = sip::parse_datagram_bytes(forwarded.bytes).expect("it parses");
        let record_route = String::from_utf8_lossy(
            invite
                .values_by_name("Record-Route")
                .next()
                .expect("a Record-Route"),
        )
        .into_owned();
        let token = record_route
            .trim_start_matches("<sip:")
            .split('@')
            .next()
            .expect("a user part")
            .to_owned();
        Dialog {
            node,
            start,
            phone,
            token,
            call_id,
        }
    }

    /// A BYE from the caller's side with this Route and Request-URI.
    fn bye(&self, route: &str, uri: &str, call_id: &str) -> String {
        format!(
            "BYE {uri} SIP/2.0\r\n\
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKbye1;rport\r\n\
Max-Forwards: 70\r\n\
Route: {route}\r\n\
From: <sip:alice@203.0.113.10>;tag=a1\r\n\
To: <sip:bob@198.51.100.1>;tag=b1\r\n\
Call-ID: {call_id}\r\n\
CSeq: 2 BYE\r\n\
Content-Length: 0\r\n\r\n"
        )
    }

    /// `text` arrives over `flow`, `secs` after the dialog began.
    fn feed(&mut self, secs: u64, flow: &Flow, text: &str) {
        let now = self.start + Duration::from_secs(secs);
        feed(&mut self.node, now, flow, text);
    }
}

fn feed(node: &mut Node, now: Instant, flow: &Flow, text: &str) {
    let message = sip::parse_datagram(text.as_bytes()).expect("the message parses");
    node.handle_inbound(
        now,
        Inbound::Message {
            flow: flow.clone(),
            message,
        },
    );
}

fn sent(node: &mut Node) -> Vec<Transmit> {
    std::iter::from_fn(|| node.poll_transmit()).collect()
}

fn to(t: &Transmit) -> SocketAddr {
    match &t.destination {
        Destination::Flow(flow) => flow.peer,
        Destination::Address(_, addr) => *addr,
    }
}

/// Only a 403 back to the caller, nothing else anywhere.
fn refused(out: &[Transmit]) {
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(to(&out[0]), addr(CALLER));
    assert!(
        out[0].bytes.starts_with(b"SIP/2.0 403"),
        "{:?}",
        out[0].bytes
    );
}

#[test]
fn the_dialogs_own_token_routes_its_bye_to_the_phone() {
    let mut d = Dialog::up();
    let route = format!("<sip:{}@198.51.100.1;lr>", d.token);
    let bye = d.bye(
        &route,
        &format!("sip:bob@{PHONE};transport=tcp"),
        &d.call_id,
    );
    let flow = udp(CALLER);
    d.feed(1, &flow, &bye);
    let out = sent(&mut d.node);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].destination, Destination::Flow(d.phone.clone()));
    assert!(out[0].bytes.starts_with(b"BYE"));
}

#[test]
fn a_forged_route_token_gets_403_and_nothing_is_sent() {
    let mut d = Dialog::up();
    // The flows of the real dialog, the MAC made up; and a token with no MAC at all, as the
    // server issued them before.
    let parts: Vec<&str> = d.token.split('-').collect();
    for token in [
        format!("pp-{}-{}-00000000000000000000", parts[1], parts[2]),
        format!("pp-{}-{}", parts[1], parts[2]),
    ] {
        let route = format!("<sip:{token}@198.51.100.1;lr>");
        let bye = d.bye(
            &route,
            &format!("sip:bob@{PHONE};transport=tcp"),
            &d.call_id,
        );
        d.feed(1, &udp(CALLER), &bye);
        refused(&sent(&mut d.node));
    }
}

#[test]
fn a_forged_path_token_on_an_initial_invite_gets_403_and_nothing_is_sent() {
    // What a node of a cluster sends another to reach a phone whose flow that node holds
    // (RFC 3327 Path): a stranger guessing one, with the phone's flow and a made-up MAC,
    // must not get an INVITE onto the phone's connection.
    let mut d = Dialog::up();
    let flow = d.phone.id.0;
    for token in [
        format!("pp-f{flow}.1-00000000000000000000"),
        format!("pp-f{flow}.1"),
        format!("pp-f{flow}.2-00000000000000000000"),
    ] {
        let invite = format!(
            "INVITE sip:bob@{PHONE};transport=tcp SIP/2.0\r\n\
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKpath1;rport\r\n\
Max-Forwards: 70\r\n\
Route: <sip:{token}@198.51.100.1;transport=tcp;lr>\r\n\
From: <sip:mallory@203.0.113.10>;tag=m1\r\n\
To: <sip:bob@198.51.100.1>\r\n\
Call-ID: path-forgery@203.0.113.10\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n"
        );
        d.feed(1, &udp(CALLER), &invite);
        refused(&sent(&mut d.node));
    }
}

#[test]
fn a_token_of_another_dialog_gets_403_and_nothing_is_sent() {
    let mut d = Dialog::up();
    let route = format!("<sip:{}@198.51.100.1;lr>", d.token);
    let bye = d.bye(
        &route,
        &format!("sip:bob@{PHONE};transport=tcp"),
        "other@attacker",
    );
    d.feed(1, &udp("192.0.2.66:5060"), &bye);
    let out = sent(&mut d.node);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].bytes.starts_with(b"SIP/2.0 403"));
}

/// With the phone's connection gone, the request would go by address: never to the server
/// itself, nor into the operator's network.
#[test]
fn a_route_through_the_server_itself_or_into_its_network_is_refused() {
    let mut d = Dialog::up();
    d.node.handle_inbound(
        d.start + Duration::from_secs(1),
        Inbound::Closed(d.phone.id),
    );
    // The call ends (its only phone is gone): the caller's 480.
    let ended = sent(&mut d.node);
    assert!(ended.iter().all(|t| to(t) == addr(CALLER)), "{ended:?}");
    let route = format!("<sip:{}@198.51.100.1;lr>", d.token);
    for uri in [
        "sip:198.51.100.1:5060",
        "sip:bob@127.0.0.1:6379",
        "sip:bob@10.0.0.5:5060",
        "sip:bob@[::1]:22",
        "sip:bob@0.0.0.0:5060",
    ] {
        let bye = d.bye(&route, uri, &d.call_id);
        d.feed(2, &udp(CALLER), &bye);
        let out = sent(&mut d.node);
        assert_eq!(out.len(), 1, "{uri}: {out:?}");
        assert!(out[0].bytes.starts_with(b"SIP/2.0 403"), "{uri}");
        assert_eq!(to(&out[0]), addr(CALLER), "{uri}");
    }
    // A second Route naming the server itself, the loop of a datagram with many Routes.
    let bye = d
        .bye(&route, "sip:bob@203.0.113.99:5060", &d.call_id)
        .replace(
            "Route: ",
            "Route: <sip:pp-1-2-00000000000000000000@198.51.100.1;lr>\r\nX-Was: ",
        );
    d.feed(3, &udp(CALLER), &bye);
    refused(&sent(&mut d.node));
    let looped = d.bye(
        &format!("{route}, <sip:198.51.100.1:5060;lr>"),
        "sip:bob@203.0.113.99:5060",
        &d.call_id,
    );
    d.feed(4, &udp(CALLER), &looped);
    refused(&sent(&mut d.node));
}

#[test]
fn a_response_with_a_forged_stateless_branch_is_dropped() {
    let mut d = Dialog::up();
    // A response claiming to answer a request we forwarded statelessly, to send on to an
    // internal service.
    let response = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKpps0123456789abcdef0123\r\n\
Via: SIP/2.0/UDP 127.0.0.1:6379;branch=z9hG4bKvictim\r\n\
From: <sip:a@x>;tag=1\r\n\
To: <sip:b@y>;tag=2\r\n\
Call-ID: forged@attacker\r\n\
CSeq: 1 BYE\r\n\
Content-Length: 0\r\n\r\n";
    d.feed(1, &udp("192.0.2.66:5060"), response);
    assert!(sent(&mut d.node).is_empty());
}

#[test]
fn a_response_to_a_bye_we_forwarded_goes_back_to_the_caller_only() {
    let mut d = Dialog::up();
    let route = format!("<sip:{}@198.51.100.1;lr>", d.token);
    let bye = d.bye(
        &route,
        &format!("sip:bob@{PHONE};transport=tcp"),
        &d.call_id,
    );
    d.feed(1, &udp(CALLER), &bye);
    let forwarded = sent(&mut d.node).remove(0);
    let bye = sip::parse_datagram_bytes(forwarded.bytes).expect("it parses");
    let vias: Vec<String> = bye
        .values_by_name("Via")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let ok = format!(
        "SIP/2.0 200 OK\r\n{}\r\nFrom: <sip:alice@203.0.113.10>;tag=a1\r\n\
To: <sip:bob@198.51.100.1>;tag=b1\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        vias.iter()
            .map(|v| format!("Via: {v}"))
            .collect::<Vec<_>>()
            .join("\r\n"),
        d.call_id
    );
    let phone = d.phone.clone();
    d.feed(1, &phone, &ok);
    let out = sent(&mut d.node);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(to(&out[0]), addr(CALLER));
    // The same response with the caller's Via pointed elsewhere: dropped.
    assert!(ok.contains("received=203.0.113.10"), "{ok}");
    let moved = ok.replace("received=203.0.113.10", "received=127.0.0.1");
    d.feed(2, &phone, &moved);
    assert!(sent(&mut d.node).is_empty());
}
