//! The server's whole message path in process, without sockets: the sans-IO node
//! (`pushpark::node`), datagram bytes in, datagram bytes out, through parsing, transactions,
//! registrar, proxy, the call-parking core, its effects and serialisation.
//!
//! - `invite_to_push`: a caller's INVITE for a sleeping phone → 100 Trying out, the call
//!   parked and its push handed out;
//! - `register_to_invite`: the woken phone's REGISTER → its binding written (SQLite in
//!   memory, on the measuring thread) → 200 OK and the parked INVITE out;
//! - `relay_invite`: an INVITE for an awake phone → 100 Trying and the forwarded INVITE out.
//!
//! - `store/wake_up_refresh_in_memory`: the SQLite half of `register_to_invite` alone — a
//!   woken phone's REGISTER applied to the store (in memory, so no fsync), without the
//!   node around it.
//!
//! Only the step named is timed; each server is replaced after `CALLS_PER_SERVER` calls, so
//! no run measures an ever-growing server.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pushpark::store::{Change, ContactSpec, Register, Store, StoreOptions};
use pushpark_benches::pipeline::{phone, Fixture};

const CALLS_PER_SERVER: u64 = 2_000;

/// Times `iters` INVITEs' arrival at servers whose phones are `asleep` (each call parked
/// and pushed) or awake (each forwarded), checking each got its 100 Trying and, for an
/// awake phone, was forwarded.
fn time_invites(iters: u64, asleep: bool) -> Duration {
    let mut f = Fixture::new(asleep);
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        if f.calls() == CALLS_PER_SERVER {
            f = Fixture::new(asleep);
        }
        let invite = f.next_invite();
        let start = Instant::now();
        f.receive_invite(invite);
        spent += start.elapsed();
        let sent = f.take_sent();
        let to = |addr, start: &[u8]| sent.iter().any(|(a, b)| *a == addr && b.starts_with(start));
        assert!(to(Fixture::caller(), b"SIP/2.0 100"), "100 Trying");
        assert!(
            asleep || to(phone(f.last_callee()), b"INVITE "),
            "forwarded"
        );
    }
    spent
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.bench_function("invite_to_push", |b| {
        b.iter_custom(|iters| time_invites(iters, true))
    });
    group.bench_function("register_to_invite", |b| {
        b.iter_custom(|iters| {
            let mut f = Fixture::new(true);
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                if f.calls() == CALLS_PER_SERVER {
                    f = Fixture::new(true);
                }
                let invite = f.next_invite();
                f.receive_invite(invite);
                f.take_sent();
                let k = f.last_callee();
                let wake = f.next_register(k);
                let start = Instant::now();
                f.receive_register(k, wake);
                spent += start.elapsed();
                assert!(f.sent(phone(k), b"INVITE "), "the parked INVITE");
            }
            spent
        })
    });
    group.bench_function("relay_invite", |b| {
        b.iter_custom(|iters| time_invites(iters, false))
    });
    group.finish();
}

fn store(c: &mut Criterion) {
    let mut store = Store::open_in_memory(&StoreOptions::default()).expect("a store");
    let contact = ContactSpec::new(
        "sip:bob@192.0.2.20:40000;transport=udp;pn-provider=fcm;pn-prid=bob-token;pn-param=p1",
    )
    .instance("\"<urn:uuid:00000000-0000-1000-8000-00000000b0b0>\"");
    let mut cseq = 0;
    c.bench_function("store/wake_up_refresh_in_memory", |b| {
        b.iter(|| {
            cseq += 1;
            let register = Register {
                call_id: "reg-bob@192.0.2.20".into(),
                max_bindings: usize::MAX,
                cseq,
                changes: vec![Change::Upsert {
                    contact: contact.clone(),
                    expires_at: 1_000_000,
                }],
            };
            store
                .apply("sip:bob@127.0.0.1", &register, 1)
                .expect("applied")
                .bindings
                .len()
        })
    });
}

criterion_group!(benches, pipeline, store);
criterion_main!(benches);
