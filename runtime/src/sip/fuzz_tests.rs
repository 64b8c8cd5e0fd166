//! No input may panic: every prefix of some torture messages and pseudo-random mutations.

use super::*;

const SEEDS: [&[u8]; 5] = [
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/torture/rfc4475/valid/wsinv.dat"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/torture/rfc4475/valid/intmeth.dat"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/torture/rfc4475/valid/mpart01.dat"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/torture/rfc5118/ipv4-mapped-ipv6.dat"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/torture/rfc4475/valid/unreason.dat"
    )),
];

fn exercise(b: &[u8]) {
    for m in [
        parse_datagram(b).ok(),
        frame_stream(b).ok().flatten().and_then(|(_, f)| {
            if let Frame::Message(m) = f {
                Some(m)
            } else {
                None
            }
        }),
    ]
    .into_iter()
    .flatten()
    {
        let _ = validate_request(&m);
        let _ = validate_response(&m);
        let _ = m.vias().count();
        let _ = m.contacts().count();
        let _ = m.routes().count();
        let _ = m.from_header();
        let _ = m.to_header();
        let _ = m.cseq();
        let _ = m.request_uri();
        let _ = m.content_type();
        let _ = m.expires();
        let _ = m.forward().pop_via().pop_route().max_forwards(1).to_bytes();
        let _ = m.response(400).to_tag("t").to_bytes();
        for c in m.contacts().flatten() {
            let _ = (c.q(), c.expires(), c.sip_instance(), c.reg_id());
        }
        for v in m.vias().flatten() {
            let _ = (v.received(), v.rport(), v.ttl());
        }
    }
}

#[test]
fn every_prefix() {
    for seed in SEEDS {
        for i in 0..=seed.len() {
            exercise(&seed[..i]);
        }
    }
}

#[test]
fn random_mutations() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const INTERESTING: &[u8] = b"\r\n :;,<>\"\\[]@%=/?*\0\xff\t0123456789";
    for round in 0..4000 {
        let seed = SEEDS[round % SEEDS.len()];
        let mut b = seed.to_vec();
        for _ in 0..(1 + rnd() % 8) {
            let pos = (rnd() as usize) % (b.len() + 1);
            match rnd() % 4 {
                0 if pos < b.len() => b[pos] = INTERESTING[(rnd() as usize) % INTERESTING.len()],
                1 => b.insert(pos, INTERESTING[(rnd() as usize) % INTERESTING.len()]),
                2 if pos < b.len() => {
                    b.remove(pos);
                }
                _ if pos < b.len() => b[pos] = rnd() as u8,
                _ => {}
            }
        }
        exercise(&b);
    }
}
