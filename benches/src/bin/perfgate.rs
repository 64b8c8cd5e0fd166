//! The workloads of the CI perf gate (`.ci/perfgate`), run under callgrind, which counts
//! instructions rather than seconds: the same binary and input give the same count on a
//! noisy shared machine.
//!
//! perfgate SCENARIO N — runs SCENARIO N times (N = 0 measures the start-up to subtract).

use std::hint::black_box;
use std::process::ExitCode;

use pushpark::sip::parse_datagram;
use pushpark_benches::pipeline::Fixture;
use pushpark_benches::udp::UdpFixture;
use pushpark_benches::{invite_1k, parked_call_life};
use pushpark_model::{CallId, Config, Core};

const SCENARIOS: [&str; 9] = [
    "core_parked_call_life",
    "sip_parse_invite",
    "sip_forward_invite",
    "pipeline_invite_to_push",
    "pipeline_relay_invite",
    "pipeline_invite_shed",
    "pipeline_wakeup_register",
    "udp_receive_batch",
    "udp_send_batch",
];

/// Calls one pipeline server takes before a fresh one replaces it.
const CALLS_PER_SERVER: u64 = 2_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(scenario), Some(Ok(n))) = (args.first(), args.get(1).map(|n| n.parse::<u64>()))
    else {
        eprintln!(
            "usage: perfgate SCENARIO N   (scenarios: {})",
            SCENARIOS.join(", ")
        );
        return ExitCode::from(2);
    };
    if !SCENARIOS.contains(&scenario.as_str()) {
        eprintln!("unknown scenario {scenario}");
        return ExitCode::from(2);
    }
    let invite = invite_1k();
    let message = parse_datagram(&invite).expect("the fixture parses");
    let mut core = Core::new(Config::default());
    let mut out = Vec::with_capacity(16);
    let mut sink = 0usize;
    // The UDP scenarios: N datagrams (the INVITE) read, or sent, in batches over loopback.
    match scenario.as_str() {
        "udp_receive_batch" => {
            let mut fixture = UdpFixture::new();
            black_box(fixture.receive(&invite, usize::try_from(n).expect("a count")));
            return ExitCode::SUCCESS;
        }
        "udp_send_batch" => {
            let mut fixture = UdpFixture::new();
            let datagram = bytes::Bytes::from(invite.clone());
            fixture.send(&datagram, usize::try_from(n).expect("a count"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    // The pipeline's: N INVITEs through the node, for a sleeping phone (parked and pushed),
    // an awake one (relayed), or while the node is overloaded (shed with a 503).
    // A parked call's wake-up REGISTER: its write to the store (in memory), the 200 OK and
    // the parked INVITE delivered. Only the REGISTER is counted, not the INVITE that parks.
    if scenario == "pipeline_wakeup_register" {
        let mut fixture = Fixture::new(true);
        for _ in 0..n {
            if fixture.calls() == CALLS_PER_SERVER {
                fixture = Fixture::new(true);
            }
            let invite = fixture.next_invite();
            fixture.receive_invite(invite);
            let callee = fixture.last_callee();
            let register = fixture.next_register(callee);
            fixture.receive_register(callee, register);
            sink += fixture.take_sent().len();
        }
        black_box(sink);
        return ExitCode::SUCCESS;
    }
    let fresh: Option<fn() -> Fixture> = match scenario.as_str() {
        "pipeline_invite_to_push" => Some(|| Fixture::new(true)),
        "pipeline_relay_invite" => Some(|| Fixture::new(false)),
        "pipeline_invite_shed" => Some(|| Fixture::overloaded(true)),
        _ => None,
    };
    if let Some(fresh) = fresh {
        let mut fixture = fresh();
        for _ in 0..n {
            if fixture.calls() == CALLS_PER_SERVER {
                fixture = fresh();
            }
            let invite = fixture.next_invite();
            fixture.receive_invite(invite);
            sink += fixture.take_sent().len();
        }
        black_box(sink);
        return ExitCode::SUCCESS;
    }
    for i in 0..n {
        sink += match scenario.as_str() {
            "core_parked_call_life" => parked_call_life(&mut core, CallId(i), i, &mut out),
            "sip_parse_invite" => {
                parse_datagram(black_box(&invite)).map_or(0, |m| m.header_count())
            }
            _ => message
                .forward()
                .push_via("SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKpp1")
                .max_forwards(69)
                .to_bytes()
                .len(),
        };
    }
    black_box(sink);
    ExitCode::SUCCESS
}
