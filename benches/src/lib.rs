//! Fixtures shared by pushpark's benches: scripted call lives driven through the core.

use pushpark_model::{AorId, CallId, Callee, Core, DeviceId, Effect, Event, Millis, Target};

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
            callee: Callee::Devices(vec![Target {
                device: PHONE,
                reachable: false,
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
                callee: Callee::Devices(vec![Target {
                    device: DeviceId(i),
                    reachable: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use pushpark_model::Config;

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
