//! SIP syntax on the hot path: parsing a typical 1 KB INVITE, validating it as a proxy
//! must, and serialising the forwarded copy; parsing a REGISTER with RFC 8599 pn-*
//! parameters and serialising its 200 OK; and, for comparison, rsip 0.4 parsing the same
//! INVITE (pushpark parses with its own parser; rsip 0.4 rejects IPv6 references, compact
//! headers and other valid input, and is slower, as this bench shows).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pushpark::sip::{parse_datagram, validate_request};
use pushpark_benches::{invite_1k, register_pn};

fn sip(c: &mut Criterion) {
    let invite = invite_1k();
    let mut group = c.benchmark_group("sip");
    group.throughput(Throughput::Bytes(invite.len() as u64));
    group.bench_function("parse_invite_1k", |b| {
        b.iter(|| parse_datagram(black_box(&invite)).map(|m| m.header_count()))
    });
    let message = parse_datagram(&invite).expect("the fixture parses");
    group.bench_function("validate_invite_1k", |b| {
        b.iter(|| validate_request(black_box(&message)).is_ok())
    });
    group.bench_function("forward_invite_1k", |b| {
        b.iter(|| {
            let max_forwards = message.max_forwards_or_default().unwrap_or(70);
            message
                .forward()
                .push_via("SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKpp1")
                .max_forwards(max_forwards.saturating_sub(1))
                .to_bytes()
                .len()
        })
    });
    group.bench_function("rsip_parse_invite_1k", |b| {
        b.iter(|| rsip::SipMessage::try_from(black_box(&invite[..])).is_ok())
    });
    let register = register_pn();
    group.throughput(Throughput::Bytes(register.len() as u64));
    group.bench_function("parse_register_pn", |b| {
        b.iter(|| parse_datagram(black_box(&register)).map(|m| m.header_count()))
    });
    let message = parse_datagram(&register).expect("the fixture parses");
    group.bench_function("serialise_register_ok", |b| {
        b.iter(|| {
            message
                .response(200)
                .to_tag("reg-tag")
                .header(
                    "Contact",
                    "<sip:bob@192.0.2.20:40000;transport=udp;pn-provider=apns;pn-param=ABCD1234.com.example.app.voip;pn-prid=00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0>;expires=3600",
                )
                .header("Feature-Caps", "*;+sip.pns=\"apns\";+sip.pnsreg=\"130\"")
                .to_bytes()
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, sip);
criterion_main!(benches);
