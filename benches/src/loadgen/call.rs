//! One call's life, both ends of it, as one task.
//!
//! The task plays the caller (INVITE, ACK, BYE, or CANCEL in hold mode) and the called
//! device (wake-up REGISTER on its push, 180/200 or 486 or 603, 200 to the BYE), with
//! RFC 3261 retransmissions over UDP: the INVITE on Timer A until any response, REGISTER,
//! BYE and CANCEL on Timer E until a final one, the device's final response until its ACK.
//! With `--answer-from-push` the device does not wake: its app posts `busy` or `decline`
//! with the push's answer token to the push's answer URL (a small task of its own, whose
//! reply comes back through the router), and the call is over once the caller has the
//! server's 486 or 603 and the app API said `taken`.
//! A caller whose INVITE gets a `503` before anything else from the server is *shed*: it
//! ACKs the 503 (RFC 3261 §17.1.1.3) and notes its Retry-After, but does not retry.
//! It notes when each step happened, so the report can say what the server added, and
//! what was sent again and received again.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pushpark::config::Transport;
use pushpark::sip::Uri;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::device::WakeLink;
use super::link::{Link, Side};
use super::report::Outcome;
use super::router::{AppReplied, Event, Incoming, Mailbox, Pushed};
use super::sip::{self, Branch, Tag};
use super::{AnswerFromPush, Ctx, Mode};

/// RFC 3261 T1.
const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2.
const T2: Duration = Duration::from_secs(4);
/// After a CANCEL, how long the caller waits for the 200 and the 487 (64·T1).
const CANCEL_WAIT: Duration = Duration::from_secs(32);

/// How the called device answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// 180, then 200.
    Answer,
    /// 486 Busy Here.
    Busy,
    /// 180, then 603 Decline.
    Decline,
}

impl Behaviour {
    /// The behaviour of call `idx`: busy and decline at their ratios, spread evenly over
    /// the run by a hash of the call's index.
    pub fn pick(idx: u64, busy_ratio: f64, decline_ratio: f64) -> Behaviour {
        // splitmix64: a well-spread 64-bit hash.
        let mut z = idx.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        if u < busy_ratio {
            Behaviour::Busy
        } else if u < busy_ratio + decline_ratio {
            Behaviour::Decline
        } else {
            Behaviour::Answer
        }
    }

    /// The final response the caller should get.
    fn code(self) -> u16 {
        match self {
            Behaviour::Answer => 200,
            Behaviour::Busy => 486,
            Behaviour::Decline => 603,
        }
    }
}

/// A retransmission timer: T1, doubling up to `cap`.
#[derive(Debug, Clone, Copy)]
struct Retx {
    at: Instant,
    interval: Duration,
    cap: Duration,
}

impl Retx {
    /// Timer A (INVITE): doubling without a cap.
    fn invite(now: Instant) -> Retx {
        Retx {
            at: now + T1,
            interval: T1,
            cap: Duration::MAX,
        }
    }

    /// Timer E (non-INVITE) and a UAS's 2xx/final retransmissions: capped at T2.
    fn capped(now: Instant) -> Retx {
        Retx {
            at: now + T1,
            interval: T1,
            cap: T2,
        }
    }

    fn due(this: &Option<Retx>, now: Instant) -> bool {
        this.is_some_and(|r| r.at <= now)
    }

    fn fired(&mut self, now: Instant) {
        self.interval = self.interval.saturating_mul(2).min(self.cap);
        self.at = now + self.interval;
    }
}

/// Where the device's answer from the push stands (`--answer-from-push`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppAnswer {
    /// Not sent (yet, or ever: the device answers over SIP).
    NotSent,
    /// Posted; no reply yet.
    Pending,
    /// The app API said `taken`.
    Taken,
}

/// The device's side of the INVITE it got.
struct Uas {
    branch: String,
    link: Arc<Link>,
    to: SocketAddr,
    last: Bytes,
    retx: Option<Retx>,
}

/// Hold mode: what a held call waits for, and holds until then.
pub(crate) struct Hold {
    /// Turns true when the calls are to be released.
    pub release: watch::Receiver<bool>,
    /// Given back once the call is parked (100 Trying and push) or over.
    pub until_parked: OwnedSemaphorePermit,
    /// Turns to cancel: a released call waits for one, so that not every CANCEL goes out
    /// at once.
    pub cancelling: Arc<Semaphore>,
}

/// What a held call waits for to be released.
struct Release {
    released: watch::Receiver<bool>,
    turns: Arc<Semaphore>,
}

/// Plays call `idx` to device `dev` to its end, then frees the device and records the
/// outcome; `permit` is given back last. In hold mode the call stays parked until
/// released, and is then cancelled.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    idx: u64,
    dev: u32,
    events: Arc<Mailbox>,
    hold: Option<Hold>,
    permit: OwnedSemaphorePermit,
) {
    let caller = Arc::clone(&ctx.callers[idx as usize % ctx.callers.len()]);
    let mut call = Call::new(&ctx, idx, dev, caller);
    let release = hold.map(|hold| {
        call.until_parked = Some(hold.until_parked);
        Release {
            released: hold.release,
            turns: hold.cancelling,
        }
    });
    call.play(&events, release).await;
    ctx.router.close(idx);
    if ctx.mode != Mode::Hold {
        ctx.devices.release(dev, call.woken_over.take());
    }
    let outcome = std::mem::take(&mut call.outcome);
    drop(call);
    ctx.stats.record(outcome);
    drop(permit);
}

struct Call<'a> {
    ctx: &'a Ctx,
    idx: u64,
    dev: u32,
    behaviour: Behaviour,
    caller: Arc<Link>,
    udp: bool,
    start: Instant,
    deadline: Instant,
    invite: Bytes,
    invite_retx: Option<Retx>,
    provisional: bool,
    final_code: Option<u16>,
    ack: Option<Bytes>,
    bye: Option<Bytes>,
    bye_retx: Option<Retx>,
    cancel: Option<Bytes>,
    cancel_retx: Option<Retx>,
    cancel_answered: bool,
    pushes: u32,
    pushed_at: Option<Instant>,
    /// The push's answer token and URL, until the app posts them.
    answer: Option<(String, String)>,
    app_answer: AppAnswer,
    app_sent: Option<Instant>,
    wake_at: Option<Instant>,
    register: Option<(Bytes, Arc<Link>)>,
    register_retx: Option<Retx>,
    register_sent: Option<Instant>,
    woken_over: Option<Arc<WakeLink>>,
    uas: Option<Uas>,
    until_parked: Option<OwnedSemaphorePermit>,
    cancel_turn: Option<OwnedSemaphorePermit>,
    outcome: Outcome,
    done: bool,
}

/// Waits for the release, then for a turn to cancel.
async fn released(release: &mut Option<Release>) -> Option<OwnedSemaphorePermit> {
    match release {
        Some(release) => {
            // An error means the sender is gone: release too.
            let _ = release.released.wait_for(|released| *released).await;
            Arc::clone(&release.turns).acquire_owned().await.ok()
        }
        None => std::future::pending().await,
    }
}

impl<'a> Call<'a> {
    fn new(ctx: &'a Ctx, idx: u64, dev: u32, caller: Arc<Link>) -> Call<'a> {
        let start = Instant::now();
        let behaviour = match (ctx.mode, ctx.answer_from_push) {
            (Mode::Hold, _) => Behaviour::Answer,
            (_, Some(AnswerFromPush::Busy)) => Behaviour::Busy,
            (_, Some(AnswerFromPush::Decline)) => Behaviour::Decline,
            (_, None) => {
                Behaviour::pick(idx ^ u64::from(ctx.run), ctx.busy_ratio, ctx.decline_ratio)
            }
        };
        let invite = sip::invite(caller.local(), ctx.run, idx, dev);
        let udp = ctx.transport == Transport::Udp;
        Call {
            ctx,
            idx,
            dev,
            behaviour,
            caller,
            udp,
            start,
            deadline: start + ctx.call_timeout,
            invite,
            invite_retx: udp.then(|| Retx::invite(start)),
            provisional: false,
            final_code: None,
            ack: None,
            bye: None,
            bye_retx: None,
            cancel: None,
            cancel_retx: None,
            cancel_answered: false,
            pushes: 0,
            pushed_at: None,
            answer: None,
            app_answer: AppAnswer::NotSent,
            app_sent: None,
            wake_at: None,
            register: None,
            register_retx: None,
            register_sent: None,
            woken_over: None,
            uas: None,
            until_parked: None,
            cancel_turn: None,
            outcome: Outcome {
                rejected_with: (behaviour != Behaviour::Answer).then(|| behaviour.code()),
                started: Some(start),
                ..Outcome::default()
            },
            done: false,
        }
    }

    /// Runs the call to its end. Everything but a wake-up over TCP (which may connect) is
    /// done without waiting, so that the task stays small while it waits: hold mode keeps
    /// 100,000 of them.
    async fn play(&mut self, events: &Mailbox, mut release: Option<Release>) {
        let invite = self.invite.clone();
        self.send_caller(&invite);
        let sleep = tokio::time::sleep_until(self.deadline.into());
        tokio::pin!(sleep);
        let mut was_released = false;
        while !self.done {
            sleep.as_mut().reset(self.next_timer().into());
            tokio::select! {
                biased;
                event = events.next() => match event {
                    Event::Sip(incoming) => self.on_sip(*incoming),
                    Event::Push(pushed) => self.on_push(*pushed),
                    Event::AppReplied(replied) => self.on_app_replied(*replied),
                },
                turn = released(&mut release), if !was_released => {
                    was_released = true;
                    self.cancel_turn = turn;
                    self.release();
                }
                () = &mut sleep => self.on_timer(),
            }
            if !self.done && self.wake_at.is_some_and(|at| at <= Instant::now()) {
                self.wake_at = None;
                match self.ctx.answer_from_push {
                    Some(answer) => self.answer_from_push(answer),
                    None => Box::pin(self.wake()).await,
                }
            }
        }
        self.outcome.final_code = self.final_code;
        self.outcome.pushes = self.pushes;
    }

    fn next_timer(&self) -> Instant {
        let mut next = self.deadline;
        let retx = [
            self.invite_retx,
            self.bye_retx,
            self.cancel_retx,
            self.register_retx,
            self.uas.as_ref().and_then(|u| u.retx),
        ];
        for r in retx.into_iter().flatten() {
            next = next.min(r.at);
        }
        if let Some(at) = self.wake_at {
            next = next.min(at);
        }
        next
    }

    /// Hold mode: once the server has the call (100 Trying) and pushed for it, the call is
    /// parked, and the next one may start.
    fn check_parked(&mut self) {
        if self.provisional && self.pushes > 0 {
            self.until_parked = None;
        }
    }

    /// The call ended as expected (unless a failure was noted on the way).
    fn succeed(&mut self) {
        self.done = true;
    }

    /// The caller has the final response the device's behaviour asked for: the call is
    /// over, once the app API took the answer from the push when the device answers so.
    fn expected_final(&mut self, code: u16) {
        match (self.ctx.answer_from_push.is_some(), self.app_answer) {
            (false, _) | (true, AppAnswer::Taken) => self.succeed(),
            (true, AppAnswer::Pending) => {} // ends on the app API's reply
            (true, AppAnswer::NotSent) => {
                self.fail(format!("final {code} before the answer from the push"));
            }
        }
    }

    /// The caller got its (first) final response at `at`: how long after the push.
    fn note_final(&mut self, code: u16, at: Instant) {
        self.final_code = Some(code);
        if self.ctx.mode == Mode::Park {
            if let Some(pushed) = self.pushed_at {
                self.outcome.push_to_final = Some(at.saturating_duration_since(pushed));
            }
        }
    }

    /// The call failed for `cause` (the first cause noted wins) and ends.
    fn fail(&mut self, cause: String) {
        self.note_failure(cause);
        self.done = true;
    }

    /// Notes a failure but lets the call go on (to hang up cleanly).
    fn note_failure(&mut self, cause: String) {
        self.outcome.failure.get_or_insert(cause);
    }

    fn send_caller(&mut self, bytes: &Bytes) {
        if !self.caller.send(bytes, self.ctx.server) {
            self.note_failure("cannot send to the server".to_owned());
        }
    }

    fn on_sip(&mut self, incoming: Incoming) {
        match incoming.link.side() {
            Side::Caller => self.on_caller(incoming),
            Side::Device => self.on_device(incoming),
        }
    }

    fn on_caller(&mut self, incoming: Incoming) {
        let message = &incoming.message;
        if sip::method(message).is_some() {
            // The server sends a caller nothing but responses, unless the callee hangs up.
            if sip::method(message) == Some("BYE") {
                let ok = sip::response(message, 200, None);
                incoming.link.send(&ok, incoming.from);
            }
            return;
        }
        let Some(code) = message.status() else {
            return;
        };
        if sip::cseq_is(message, "INVITE") {
            self.on_invite_response(code, &incoming);
        } else if sip::cseq_is(message, "BYE") {
            if code < 200 {
                if let Some(retx) = &mut self.bye_retx {
                    retx.interval = T2;
                }
            } else if self.bye.is_some() {
                self.bye_retx = None;
                if (200..300).contains(&code) {
                    self.succeed();
                } else {
                    self.fail(format!("BYE answered {code}"));
                }
            }
        } else if sip::cseq_is(message, "CANCEL") && code >= 200 && self.cancel.is_some() {
            self.cancel_retx = None;
            self.cancel_answered = true;
            if code != 200 {
                self.fail(format!("CANCEL answered {code}"));
            } else if self.final_code == Some(487) {
                self.succeed();
            }
        }
    }

    fn on_invite_response(&mut self, code: u16, incoming: &Incoming) {
        // Answered: the INVITE is not sent again.
        self.invite_retx = None;
        self.invite = Bytes::new();
        if code == 503 && !self.outcome.accepted {
            return self.on_shed(incoming);
        }
        self.outcome.accepted = true;
        if code < 200 {
            if !self.provisional {
                self.provisional = true;
                if self.ctx.mode == Mode::Hold {
                    self.ctx.stats.trying.fetch_add(1, Ordering::Relaxed);
                }
                self.check_parked();
            }
            return;
        }
        if code < 300 {
            return self.on_2xx(incoming);
        }
        match sip::ack_non_2xx(&incoming.message) {
            Ok(ack) => self.send_caller(&ack),
            Err(what) => return self.fail(format!("bad {code}: {what}")),
        }
        if self.final_code.is_some() {
            // A retransmission, ACKed again.
            self.outcome.retransmissions.finals_again += 1;
            return;
        }
        self.note_final(code, incoming.at);
        if self.ctx.mode == Mode::Hold {
            if self.cancel.is_none() || code != 487 {
                self.fail(format!("final {code} while held"));
            } else if self.cancel_answered {
                self.succeed();
            }
        } else if code == self.behaviour.code() {
            self.expected_final(code);
        } else {
            self.fail(format!("final {code}"));
        }
    }

    /// The server refused the call with a 503 before anything else: the call is shed.
    /// ACKed (each time it comes, the first time and any retransmission), not retried.
    fn on_shed(&mut self, incoming: &Incoming) {
        match sip::ack_non_2xx(&incoming.message) {
            Ok(ack) => self.send_caller(&ack),
            Err(what) => return self.fail(format!("bad 503: {what}")),
        }
        if self.final_code.is_some() {
            self.outcome.retransmissions.finals_again += 1;
            return;
        }
        self.note_final(503, incoming.at);
        self.outcome.shed = true;
        self.outcome.retry_after = sip::retry_after(&incoming.message);
        self.succeed();
    }

    fn on_2xx(&mut self, incoming: &Incoming) {
        if let Some(ack) = self.ack.clone() {
            // The 2xx again: our ACK was lost.
            self.outcome.retransmissions.finals_again += 1;
            return self.send_caller(&ack);
        }
        if self.final_code.is_some() {
            return;
        }
        let code = incoming.message.status().unwrap_or(200);
        self.note_final(code, incoming.at);
        self.outcome.latency = Some(incoming.at.saturating_duration_since(self.start));
        if self.ctx.mode == Mode::Hold {
            self.note_failure(format!("final {code} while held"));
        } else if self.behaviour != Behaviour::Answer {
            self.note_failure(format!("final {code}"));
        }
        let local = self.caller.local();
        let (run, idx) = (self.ctx.run, self.idx);
        let branch = |tag| Branch::Call { idx, run, tag };
        let requests =
            sip::in_dialog("ACK", local, branch(Tag::Ack), &incoming.message).and_then(|ack| {
                Ok((
                    ack,
                    sip::in_dialog("BYE", local, branch(Tag::Bye), &incoming.message)?,
                ))
            });
        let (ack, bye) = match requests {
            Ok(requests) => requests,
            Err(what) => return self.fail(format!("bad {code}: {what}")),
        };
        self.send_caller(&ack);
        self.send_caller(&bye);
        self.ack = Some(ack);
        self.bye = Some(bye);
        self.bye_retx = self.udp.then(|| Retx::capped(Instant::now()));
    }

    fn on_device(&mut self, incoming: Incoming) {
        let message = &incoming.message;
        match sip::method(message) {
            None => {
                let code = message.status().unwrap_or(0);
                if code >= 200 && sip::cseq_is(message, "REGISTER") && self.register.is_some() {
                    self.register_retx = None;
                    if code == 503 {
                        // A wake-up REGISTER for a parked call must never be shed.
                        self.fail("wake-up REGISTER shed (503)".to_owned());
                    } else if code != 200 {
                        self.fail(format!("wake-up REGISTER answered {code}"));
                    }
                }
            }
            Some("INVITE") => self.on_device_invite(incoming),
            Some("ACK") => {
                if let Some(uas) = &mut self.uas {
                    uas.retx = None;
                }
            }
            Some("BYE") | Some("CANCEL") => {
                // Our device answers at once, so a CANCEL always comes after the final
                // response: it has no effect but matches (RFC 3261 §9.2).
                let code = if self.uas.is_some() { 200 } else { 481 };
                let reply = sip::response(message, code, None);
                incoming.link.send(&reply, incoming.from);
            }
            Some(_) => {}
        }
    }

    fn on_device_invite(&mut self, incoming: Incoming) {
        let message = &incoming.message;
        let branch = sip::top_branch(message).unwrap_or_default();
        if let Some(uas) = &self.uas {
            if uas.branch == branch {
                // A retransmitted INVITE: the last response again.
                uas.link.send(&uas.last, uas.to);
                self.outcome.retransmissions.invites_again += 1;
                return;
            }
        }
        let for_us = match message.request_uri() {
            Some(Ok(Uri::Sip(uri))) => {
                uri.user
                    .and_then(|u| u.strip_prefix("dev"))
                    .and_then(|n| n.parse::<u32>().ok())
                    == Some(self.dev)
            }
            _ => false,
        };
        self.outcome.accepted = true;
        if !for_us {
            let reply = sip::response(message, 404, None);
            incoming.link.send(&reply, incoming.from);
            return self.fail("INVITE for another device".to_owned());
        }
        if self.ctx.answer_from_push.is_some() {
            // It answers all the same (below), but the answer from the push was to spare
            // it the INVITE: the server must not send one.
            self.note_failure("INVITE at a device that answers from its push".to_owned());
        }
        if self.uas.is_none() {
            if let Some(sent) = self.register_sent {
                self.outcome.wake_overhead = Some(incoming.at.saturating_duration_since(sent));
            }
        }
        let uas = sip::Uas {
            idx: self.idx,
            dev: self.dev,
            local: incoming.link.local(),
        };
        let codes: &[u16] = match self.behaviour {
            Behaviour::Answer => &[180, 200],
            Behaviour::Busy => &[486],
            Behaviour::Decline => &[180, 603],
        };
        let mut last = Bytes::new();
        for &code in codes {
            last = sip::response(message, code, Some(uas));
            incoming.link.send(&last, incoming.from);
        }
        self.uas = Some(Uas {
            branch: branch.to_owned(),
            link: Arc::clone(&incoming.link),
            to: incoming.from,
            last,
            retx: self.udp.then(|| Retx::capped(Instant::now())),
        });
    }

    fn on_push(&mut self, pushed: Pushed) {
        let at = pushed.at;
        self.pushes += 1;
        self.outcome.accepted = true;
        if self.pushes > 1 {
            return;
        }
        self.pushed_at = Some(at);
        self.answer = pushed.answer;
        self.outcome.push_overhead = Some(at.saturating_duration_since(self.start));
        self.ctx.stats.pushed.fetch_add(1, Ordering::Relaxed);
        self.check_parked();
        if self.ctx.mode == Mode::Park {
            // Woken by the loop in `play` when due (at once without a delay).
            self.wake_at = Some(at + self.ctx.wake_delay);
        }
    }

    /// The app answers from its push: posts the push's answer token with `answer` to the
    /// push's answer URL, from a task of its own (the call goes on meanwhile: the caller's
    /// final response may come before the HTTP reply).
    fn answer_from_push(&mut self, answer: AnswerFromPush) {
        let Some((token, url)) = self.answer.take() else {
            return self.fail(
                "push without answer_token and answer_url (is the server's [app_api] on?)"
                    .to_owned(),
            );
        };
        let body = serde_json::json!({ "token": token, "answer": answer.as_str() }).to_string();
        let request = self
            .ctx
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(self.ctx.call_timeout);
        let router = Arc::clone(&self.ctx.router);
        let idx = self.idx;
        self.app_answer = AppAnswer::Pending;
        self.app_sent = Some(Instant::now());
        self.outcome.answered_from_push = true;
        tokio::spawn(async move {
            let replied = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // Read to the end, so the connection goes back to the pool.
                    let body = response.text().await.unwrap_or_default();
                    AppReplied {
                        status: Ok(status),
                        body,
                        at: Instant::now(),
                    }
                }
                Err(e) => AppReplied {
                    status: Err(error_chain(&e)),
                    body: String::new(),
                    at: Instant::now(),
                },
            };
            router.app_replied(idx, replied);
        });
    }

    /// The app API replied to the answer from the push.
    fn on_app_replied(&mut self, replied: AppReplied) {
        if self.app_answer != AppAnswer::Pending {
            return;
        }
        if let Some(sent) = self.app_sent {
            self.outcome.app_round_trip = Some(replied.at.saturating_duration_since(sent));
        }
        let said = |key: &str| {
            serde_json::from_str::<serde_json::Value>(&replied.body)
                .ok()
                .and_then(|v| v.get(key)?.as_str().map(str::to_owned))
        };
        match replied.status {
            Ok(200) if said("result").as_deref() == Some("taken") => {
                self.app_answer = AppAnswer::Taken;
                if self.final_code == Some(self.behaviour.code()) {
                    self.succeed();
                }
            }
            Ok(status) => {
                let error = said("error").or_else(|| said("result"));
                let error = error.map_or_else(String::new, |e| format!(" {e}"));
                self.fail(format!("app API answered {status}{error}"));
            }
            Err(e) => self.fail(format!("app API request failed: {e}")),
        }
    }

    /// The device wakes: REGISTERs again (same Call-ID, next CSeq) from the link it wakes
    /// on.
    async fn wake(&mut self) {
        let devices = &self.ctx.devices;
        let (link, woken_over) = match devices.wake_link(self.dev).await {
            Ok(found) => found,
            Err(e) => return self.fail(format!("cannot open a wake-up connection: {e}")),
        };
        self.woken_over = woken_over;
        let cseq = devices.next_cseq(self.dev);
        let branch = Branch::Call {
            idx: self.idx,
            run: self.ctx.run,
            tag: Tag::Register(cseq),
        };
        let bytes = sip::register(
            link.local(),
            self.ctx.run,
            self.dev,
            cseq,
            devices.push(),
            branch,
        );
        let now = Instant::now();
        self.register_sent = Some(now);
        self.outcome.woke = true;
        if !link.send(&bytes, devices.server()) {
            self.note_failure("cannot send to the server".to_owned());
        }
        self.register_retx = self.udp.then(|| Retx::capped(now));
        self.register = Some((bytes, link));
    }

    /// Hold mode: the caller gives up (CANCEL).
    fn release(&mut self) {
        self.deadline = self.deadline.min(Instant::now() + CANCEL_WAIT);
        if self.final_code.is_some() {
            return;
        }
        let cancel = sip::cancel(self.caller.local(), self.ctx.run, self.idx, self.dev);
        self.send_caller(&cancel);
        self.cancel = Some(cancel);
        self.cancel_retx = self.udp.then(|| Retx::capped(Instant::now()));
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if now >= self.deadline {
            let cause = self.timeout_cause();
            return self.fail(cause);
        }
        let again = &mut self.outcome.retransmissions;
        again.invites += u64::from(Retx::due(&self.invite_retx, now));
        again.requests += [self.register_retx, self.bye_retx, self.cancel_retx]
            .iter()
            .filter(|r| Retx::due(r, now))
            .count() as u64;
        again.responses += u64::from(Retx::due(&self.uas.as_ref().and_then(|u| u.retx), now));
        if Retx::due(&self.invite_retx, now) {
            let invite = self.invite.clone();
            self.send_caller(&invite);
            if let Some(r) = &mut self.invite_retx {
                r.fired(now);
            }
        }
        if Retx::due(&self.register_retx, now) {
            if let Some((bytes, link)) = &self.register {
                link.send(bytes, self.ctx.devices.server());
            }
            if let Some(r) = &mut self.register_retx {
                r.fired(now);
            }
        }
        if let Some(uas) = &mut self.uas {
            if Retx::due(&uas.retx, now) {
                uas.link.send(&uas.last, uas.to);
                if let Some(r) = &mut uas.retx {
                    r.fired(now);
                }
            }
        }
        if Retx::due(&self.bye_retx, now) {
            if let Some(bye) = self.bye.clone() {
                self.send_caller(&bye);
            }
            if let Some(r) = &mut self.bye_retx {
                r.fired(now);
            }
        }
        if Retx::due(&self.cancel_retx, now) {
            if let Some(cancel) = self.cancel.clone() {
                self.send_caller(&cancel);
            }
            if let Some(r) = &mut self.cancel_retx {
                r.fired(now);
            }
        }
    }

    fn timeout_cause(&self) -> String {
        let park = self.ctx.mode == Mode::Park;
        let cause = if self.bye.is_some() {
            "timeout: BYE unanswered"
        } else if self.cancel.is_some() {
            "timeout: CANCEL or INVITE unanswered"
        } else if self.app_answer == AppAnswer::Pending {
            "timeout: the app API did not reply to the answer from the push"
        } else if self.final_code.is_some() {
            "timeout"
        } else if park && self.pushes == 0 {
            "timeout: never pushed"
        } else if self.app_answer == AppAnswer::Taken {
            "timeout: no final response after the answer from the push"
        } else if park && self.uas.is_none() {
            "timeout: no INVITE after the wake-up"
        } else if !self.provisional {
            "timeout: no response to the INVITE"
        } else {
            "timeout: no final response"
        };
        cause.to_owned()
    }
}

/// An error and its causes, `: `-separated (reqwest's own message names only the URL).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
