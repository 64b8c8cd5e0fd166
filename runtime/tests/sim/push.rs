//! The simulated push service (APNs, FCM): it accepts a push, or refuses it for now, or
//! says the token is dead; an accepted push reaches the phone a while later, or never, with
//! the answer token of a call's push (the app may answer from it, specs/parking.md §9).

use pushpark::node::PushTag;
use pushpark::push::{PushKind, PushOutcome, PushReport, PushRequest};

use super::net::{Happening, Ms, Net};
use super::phone::Phone;

/// What the push service does wrong, for one run.
#[derive(Clone, Copy, Debug)]
pub struct PushFaults {
    /// How long it takes to answer, between these.
    pub latency: (Ms, Ms),
    /// The chance of a transient refusal (429, 5xx, a time-out).
    pub transient: f64,
    /// The chance that the token turns out dead (APNs 410, FCM UNREGISTERED); it stays dead.
    pub permanent: f64,
    /// The chance that an accepted push never reaches the phone.
    pub lost: f64,
    /// How long an accepted push takes to reach the phone, between these.
    pub delivery: (Ms, Ms),
}

impl PushFaults {
    /// A push service that accepts and delivers everything at once.
    pub const PERFECT: PushFaults = PushFaults {
        latency: (20, 20),
        transient: 0.0,
        permanent: 0.0,
        lost: 0.0,
        delivery: (100, 100),
    };
}

/// A push the node handed out.
#[derive(Clone, Debug)]
pub struct Sent {
    pub at: Ms,
    pub kind: PushKind,
    pub call_id: String,
    /// The phone the token belongs to.
    pub phone: Option<usize>,
    pub outcome: Outcome,
    /// When the node learned the outcome.
    pub reported_at: Ms,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Lost,
    Transient,
    Dead,
}

pub struct PushService {
    faults: PushFaults,
    pub sent: Vec<Sent>,
}

impl PushService {
    pub fn new(faults: PushFaults) -> Self {
        PushService {
            faults,
            sent: Vec::new(),
        }
    }

    pub fn submit(
        &mut self,
        net: &mut Net,
        request: PushRequest,
        tag: PushTag,
        phone: Option<usize>,
        phones: &mut [Phone],
    ) {
        let dead = phone.is_none_or(|i| phones[i].token_dead);
        let outcome = if dead || net.chance(self.faults.permanent) {
            Outcome::Dead
        } else if net.chance(self.faults.transient) {
            Outcome::Transient
        } else if net.chance(self.faults.lost) {
            Outcome::Lost
        } else {
            Outcome::Delivered
        };
        let (low, high) = self.faults.latency;
        let latency = net.between(low, high);
        net.note(format!(
            "push {} for {:?} to phone {phone:?}: {outcome:?}",
            request.id, request.call_id
        ));
        if outcome == Outcome::Dead {
            if let Some(i) = phone {
                phones[i].token_dead = true;
            }
        }
        if let (Outcome::Delivered, Some(i)) = (outcome, phone) {
            let (low, high) = self.faults.delivery;
            let delivery = net.between(low, high);
            let (call_id, token) = if request.kind == PushKind::IncomingCall {
                (request.call_id.clone(), request.answer_token.clone())
            } else {
                (String::new(), None)
            };
            net.after(delivery, Happening::PushArrives(i, call_id, token));
        }
        self.sent.push(Sent {
            at: net.now,
            kind: request.kind,
            call_id: request.call_id.clone(),
            phone,
            outcome,
            reported_at: net.now + latency,
        });
        let outcome = match outcome {
            Outcome::Delivered | Outcome::Lost => PushOutcome::Accepted,
            Outcome::Transient => PushOutcome::Failed {
                permanent: false,
                reason: "http 503".to_owned(),
            },
            Outcome::Dead => PushOutcome::Failed {
                permanent: true,
                reason: "Unregistered".to_owned(),
            },
        };
        let report = PushReport {
            tag,
            push_id: request.id,
            pn_provider: request.pn_provider,
            provider: "sim".to_owned(),
            outcome,
        };
        net.after(latency, Happening::PushReport(report));
    }
}
