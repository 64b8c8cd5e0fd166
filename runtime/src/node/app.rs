//! Answers from the push, over the app API (specs/parking.md §9): the node checks the
//! answer token and the sender's rate, and the core decides what the answer does
//! (`Event::PushAnswered`) and what the app is told (`Effect::ReplyToApp`).

use std::net::IpAddr;
use std::time::Instant;

use pushpark_model::{AppReply, CallId, DeviceId, Event, PushAnswer};
use tracing::info;

use super::registrar::security_failure;
use super::Node;
use crate::app_api::token::Verified;

/// What the node makes of an answer from the push: the HTTP reply follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppAnswer {
    /// The core's reply: taken, the call is over, or the device answers over SIP.
    Reply(AppReply),
    /// The token is ours but expired, or from an earlier run of the node: its call is over.
    Expired,
    /// The token is not ours (forged, altered, malformed); counted as refused credentials.
    InvalidToken,
    /// The sender's address is blocked by the rate limiter.
    Blocked,
}

impl AppAnswer {
    /// The label of `pushpark_app_answers_total{result}`.
    pub fn label(self) -> &'static str {
        match self {
            AppAnswer::Reply(AppReply::Taken) => "taken",
            AppAnswer::Reply(AppReply::CallOver) => "call_over",
            AppAnswer::Reply(AppReply::Conflict) => "conflict",
            AppAnswer::Expired => "expired",
            AppAnswer::InvalidToken => "invalid_token",
            AppAnswer::Blocked => "blocked",
        }
    }
}

impl Node {
    /// An app answered from its push: `token` as the push carried it, from `peer`.
    pub fn handle_app_answer(
        &mut self,
        now: Instant,
        peer: IpAddr,
        token: &str,
        answer: PushAnswer,
    ) -> AppAnswer {
        self.advance(now);
        let result = self.app_answer(peer, token, answer);
        self.metrics.app_answer(answer, result.label());
        result
    }

    fn app_answer(&mut self, peer: IpAddr, token: &str, answer: PushAnswer) -> AppAnswer {
        let now = self.instant();
        if !self.admit(now, peer) {
            return AppAnswer::Blocked;
        }
        let (call, device) = match self.answer_key.verify(token, self.unix_now()) {
            Verified::Good(call, device) => (call, device),
            Verified::Expired | Verified::EarlierRun => return AppAnswer::Expired,
            Verified::Invalid => {
                let failure = (peer, "", "app answer", "invalid answer token");
                security_failure(&mut self.pike, &self.metrics, now, failure);
                return AppAnswer::InvalidToken;
            }
        };
        self.feed(Event::PushAnswered {
            call,
            device,
            answer,
        });
        let reply = self.app_reply.take().unwrap_or(AppReply::CallOver);
        info!("call {call}: {device} answered {answer:?} from its push: {reply:?}");
        AppAnswer::Reply(reply)
    }

    /// The answer token of the push for (`call`, `device`), when the app API is on: good
    /// until the call is surely over (its park deadline and its ended-notice window).
    pub(crate) fn answer_token(&self, call: CallId, device: DeviceId) -> Option<String> {
        self.answer_url.as_ref()?;
        let core = self.driver.core().config();
        let lifetime = (core.park_timeout + core.ended_notice_window).div_ceil(1000);
        Some(
            self.answer_key
                .mint(call, device, self.unix_now() + lifetime),
        )
    }
}
