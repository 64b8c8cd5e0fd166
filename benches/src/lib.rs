//! Fixtures shared by pushpark's benches: scripted call lives driven through the core.

pub mod loadgen;
pub mod pipeline;
pub mod udp;

use pushpark_model::{AorId, CallId, Callee, Core, DeviceId, Effect, Event, Flow, Millis, Target};

/// The one callee of the benches and its sleeping phone.
pub const CALLEE: AorId = AorId(1);
pub const PHONE: DeviceId = DeviceId(1);

/// Drives one parked call's whole life through `core`: the INVITE arrives for a sleeping
/// device, the push is accepted, the device registers, rings and answers. Returns the
/// number of effects, so the work cannot be optimised away.
pub fn parked_call_life(
    core: &mut Core,
    call: CallId,
    now: Millis,
    out: &mut Vec<Effect>,
) -> usize {
    out.clear();
    let events = [
        Event::CallArrived {
            call,
            aor: CALLEE,
            waking_limit: None,
            callee: Callee::Devices(vec![Target {
                device: PHONE,
                flow: Flow::Closed,
                pushable: true,
            }]),
        },
        Event::PushAccepted {
            call,
            device: PHONE,
        },
        Event::DeviceRegistered {
            aor: CALLEE,
            device: PHONE,
        },
        Event::BranchRang {
            call,
            device: PHONE,
        },
        Event::BranchAnswered {
            call,
            device: PHONE,
        },
    ];
    for (i, event) in events.into_iter().enumerate() {
        core.step(now + i as Millis * 100, event, out);
    }
    out.len()
}

/// Parks `calls` calls for `calls` different sleeping callees, then wakes each callee's
/// phone, which answers: the burst a busy shard sees. Returns the number of effects.
pub fn burst(core: &mut Core, first: u64, calls: u64, out: &mut Vec<Effect>) -> usize {
    out.clear();
    let now = first;
    for i in first..first + calls {
        core.step(
            now,
            Event::CallArrived {
                call: CallId(i),
                aor: AorId(i),
                waking_limit: None,
                callee: Callee::Devices(vec![Target {
                    device: DeviceId(i),
                    flow: Flow::Closed,
                    pushable: true,
                }]),
            },
            out,
        );
    }
    for i in first..first + calls {
        let (call, aor, device) = (CallId(i), AorId(i), DeviceId(i));
        core.step(now + 1, Event::PushAccepted { call, device }, out);
        core.step(now + 2, Event::DeviceRegistered { aor, device }, out);
        core.step(now + 3, Event::BranchAnswered { call, device }, out);
    }
    out.len()
}

/// A 1,149-byte INVITE as a phone sends it: SDP, pn-* in the Request-URI,
/// `+sip.instance`, an IPv6 Via.
pub fn invite_1k() -> Vec<u8> {
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

/// A REGISTER as a woken iPhone app sends it: RFC 8599 pn-* parameters, `+sip.pnsreg`,
/// `+sip.instance` and `reg-id` on the Contact.
pub fn register_pn() -> Vec<u8> {
    b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.20:40000;branch=z9hG4bKreg7731;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:bob@example.com>;tag=reg-bob\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: 3c26700857e2-reg@192.0.2.20\r\n\
CSeq: 42 REGISTER\r\n\
Contact: <sip:bob@192.0.2.20:40000;transport=udp;pn-provider=apns;pn-param=ABCD1234.com.example.app.voip;pn-prid=00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0>;+sip.pnsreg;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1;expires=3600\r\n\
Supported: outbound, path, gruu\r\n\
User-Agent: LinphoneiOS/5.2.0 (iPhone) LinphoneSDK/5.2.0\r\n\
Content-Length: 0\r\n\r\n"
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpark_model::Config;

    #[test]
    fn rsip_parses_the_invite_fixture_so_its_bench_measures_a_whole_parse() {
        let invite = invite_1k();
        let parsed = rsip::SipMessage::try_from(&invite[..]);
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn the_register_fixture_parses_with_its_push_parameters() {
        let register = pushpark::sip::parse_datagram(&register_pn()).expect("parses");
        assert!(matches!(register.contacts().next(), Some(Ok(_))));
        assert!(pushpark::sip::validate_request(&register).is_ok());
    }

    #[test]
    fn a_parked_call_life_ends_answered_and_leaves_nothing() {
        let mut core = Core::new(Config::default());
        let mut out = Vec::new();
        parked_call_life(&mut core, CallId(7), 0, &mut out);
        assert!(out.contains(&Effect::Forward {
            call: CallId(7),
            device: PHONE
        }));
        assert!(out.contains(&Effect::Respond {
            call: CallId(7),
            code: 200,
            relay: Some(PHONE)
        }));
        assert!(core.is_empty());
    }

    #[test]
    fn a_burst_delivers_every_call_and_leaves_nothing() {
        let mut core = Core::new(Config::default());
        let mut out = Vec::new();
        burst(&mut core, 0, 1000, &mut out);
        let answered = out
            .iter()
            .filter(|e| matches!(e, Effect::Respond { code: 200, .. }))
            .count();
        assert_eq!(answered, 1000);
        assert!(core.is_empty());
    }
}
