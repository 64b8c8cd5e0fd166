//! `pushpark demo`: the call-parking core driven through four scripted calls on a simulated
//! clock, printing what the server decides and when. The same core, the same driver as the
//! server; only the network and the clock are played by the script.

use std::io::{self, Write};

use pushpark_model::{
    AorId, CallId, Callee, Config, DeviceId, Effect, Event, Millis, Target, Timer,
};

use crate::driver::Driver;

const BOB: AorId = AorId(1);
const IPHONE: DeviceId = DeviceId(1);
const ANDROID: DeviceId = DeviceId(2);

fn device(d: DeviceId) -> &'static str {
    match d {
        IPHONE => "bob's iPhone",
        ANDROID => "bob's Android",
        _ => "a device",
    }
}

struct Scenario {
    title: &'static str,
    devices: Vec<Target>,
    /// What the world does, at what time (ms after the INVITE).
    script: Vec<(Millis, &'static str, Event)>,
}

const CALL: CallId = CallId(1);

fn scenarios() -> Vec<Scenario> {
    let sleeping_iphone = Target {
        device: IPHONE,
        reachable: false,
        pushable: true,
    };
    let awake_android = Target {
        device: ANDROID,
        reachable: true,
        pushable: true,
    };
    let pushed = |at| {
        (
            at,
            "APNs accepts the push",
            Event::PushAccepted {
                call: CALL,
                device: IPHONE,
            },
        )
    };
    let wakes = |at| {
        (
            at,
            "the iPhone wakes and REGISTERs (200 OK)",
            Event::DeviceRegistered {
                aor: BOB,
                device: IPHONE,
            },
        )
    };
    vec![
        Scenario {
            title: "bob's iPhone sleeps: the call is parked, pushed, delivered and answered",
            devices: vec![sleeping_iphone],
            script: vec![
                pushed(180),
                wakes(2_100),
                (
                    2_160,
                    "the iPhone rings (180)",
                    Event::BranchRang {
                        call: CALL,
                        device: IPHONE,
                    },
                ),
                (
                    6_000,
                    "bob answers (200)",
                    Event::BranchAnswered {
                        call: CALL,
                        device: IPHONE,
                    },
                ),
            ],
        },
        Scenario {
            title: "alice hangs up while the iPhone is waking",
            devices: vec![sleeping_iphone],
            script: vec![
                pushed(150),
                (
                    1_200,
                    "alice sends CANCEL",
                    Event::CallerCancelled { call: CALL },
                ),
                wakes(1_900),
            ],
        },
        Scenario {
            title: "the iPhone never wakes (phone off, no network)",
            devices: vec![sleeping_iphone],
            script: vec![pushed(200)],
        },
        Scenario {
            title:
                "two phones: the Android is awake and rings at once, the iPhone wakes and answers",
            devices: vec![sleeping_iphone, awake_android],
            script: vec![
                (
                    40,
                    "the Android rings (180)",
                    Event::BranchRang {
                        call: CALL,
                        device: ANDROID,
                    },
                ),
                pushed(170),
                wakes(2_300),
                (
                    4_000,
                    "bob answers on the iPhone (200)",
                    Event::BranchAnswered {
                        call: CALL,
                        device: IPHONE,
                    },
                ),
                (
                    4_050,
                    "the Android confirms the cancel (487)",
                    Event::BranchRejected {
                        call: CALL,
                        device: ANDROID,
                        code: 487,
                    },
                ),
            ],
        },
    ]
}

fn describe(effect: &Effect) -> Option<String> {
    Some(match *effect {
        Effect::Push { device: d, .. } => format!("send a VoIP push to {}", device(d)),
        Effect::Forward { device: d, .. } => format!("forward the INVITE to {}", device(d)),
        Effect::CancelBranch { device: d, .. } => format!("CANCEL the branch to {}", device(d)),
        Effect::HangUpBranch { device: d, .. } => {
            format!("ACK and BYE the late answer of {}", device(d))
        }
        Effect::RelayProvisional { device: d, .. } => format!("relay {}'s 180 to alice", device(d)),
        Effect::Respond {
            code,
            relay: Some(d),
            ..
        } => format!("relay {}'s {code} to alice", device(d)),
        Effect::Respond {
            code, relay: None, ..
        } => format!("answer alice {code}"),
        Effect::ForgetPushToken { device: d } => format!("forget {}'s dead push token", device(d)),
        Effect::TellEnded {
            device: d, reason, ..
        } => {
            format!(
                "tell {} the call is over ({reason:?}): INVITE + CANCEL with a Reason",
                device(d)
            )
        }
        Effect::ArmTimer { .. } | Effect::DisarmTimer { .. } => return None,
    })
}

fn print_effects(out: &mut impl Write, effects: &[Effect]) -> io::Result<()> {
    for line in effects.iter().filter_map(describe) {
        writeln!(out, "{:>12}  -> {line}", "")?;
    }
    Ok(())
}

/// Plays every scenario and prints its timeline.
pub fn run(out: &mut impl Write) -> io::Result<()> {
    let config = Config::default();
    writeln!(
        out,
        "pushpark demo: the call-parking core on a simulated clock (park deadline {} s)\n",
        config.park_timeout / 1000
    )?;
    for scenario in scenarios() {
        writeln!(out, "== {}", scenario.title)?;
        let mut driver = Driver::new(config.clone());
        writeln!(out, "{:>9} ms  alice's INVITE for bob arrives", 0)?;
        let effects = driver.handle(
            0,
            Event::CallArrived {
                call: CALL,
                aor: BOB,
                callee: Callee::Devices(scenario.devices),
            },
        );
        print_effects(out, &effects)?;
        for (at, what, event) in scenario.script {
            fire_timers(out, &mut driver, at)?;
            writeln!(out, "{at:>9} ms  {what}")?;
            print_effects(out, &driver.handle(at, event))?;
        }
        fire_timers(out, &mut driver, Millis::MAX)?;
        writeln!(
            out,
            "{:>12}  call state left in the core: {}\n",
            "",
            driver.core().len()
        )?;
    }
    Ok(())
}

fn fire_timers(out: &mut impl Write, driver: &mut Driver, until: Millis) -> io::Result<()> {
    while let Some((at, timer)) = driver.next_timer().filter(|&(at, _)| at <= until) {
        let what = match timer {
            Timer::Deadline(_) => "the park deadline falls due",
            Timer::PushRetry(..) => "the push back-off is over",
            Timer::Linger(_) => "the ended-notice window closes",
        };
        writeln!(out, "{at:>9} ms  {what}")?;
        print_effects(out, &driver.fire_due(at))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_shows_every_outcome_and_leaves_no_call_behind() {
        let mut out = Vec::new();
        super::run(&mut out).expect("writing to a Vec");
        let text = String::from_utf8(out).expect("utf-8");
        for expected in [
            "relay bob's iPhone's 200 to alice",
            "answer alice 487",
            "tell bob's iPhone the call is over (CallerCancelled)",
            "answer alice 480",
            "CANCEL the branch to bob's Android",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(text.matches("call state left in the core: 0").count(), 4);
    }
}
