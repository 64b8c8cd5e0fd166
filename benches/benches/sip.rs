//! SIP syntax on the hot path: parsing a typical 1 KB INVITE, validating it as a proxy
//! must, and serialising the forwarded copy.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pushpark::sip::{parse_datagram, validate_request};

/// A 1,149-byte INVITE as a phone sends it: SDP, pn-* in the Request-URI,
/// `+sip.instance`, an IPv6 Via.
fn invite_1k() -> Vec<u8> {
    let body = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 97 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:97 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n";
    let head = format!(
        "INVITE sip:bob@192.0.2.20:5071;transport=tcp;pn-provider=apns;pn-param=ABCD1234.com.example.app.voip;pn-prid=00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0 SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKnashds8;received=192.0.2.1\r\n\
Max-Forwards: 70\r\n\
Record-Route: <sip:edge.example.com;lr>\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.10:5060;transport=tcp>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, UPDATE\r\n\
Supported: replaces, outbound, gruu\r\n\
User-Agent: LinphoneAndroid/5.2.0 (SM-G991B) LinphoneSDK/5.2.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut v = head.into_bytes();
    v.extend_from_slice(body.as_bytes());
    v
}

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
    group.finish();
}

criterion_group!(benches, sip);
criterion_main!(benches);
