//! The four RFC 3261 §17 state machines (with the RFC 6026 Accepted states), as one data type
//! whose `kind` selects the machine. Everything here is driven by [`Transactions`]
//! (super::Transactions); effects are pushed onto the output queue.

use std::collections::VecDeque;

use super::timer::Timers;
use super::{
    Config, Error, Key, Millis, Output, RequestOutcome, ResponseOutcome, State, Timer, Transport,
    TuEvent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// RFC 3261 §17.2.1 + RFC 6026 §7.1 (Figure 7 as replaced).
    InviteServer,
    /// RFC 3261 §17.2.2 (Figure 8).
    NonInviteServer,
    /// RFC 3261 §17.1.1 + RFC 6026 §7.2 (Figure 5 as replaced).
    InviteClient,
    /// RFC 3261 §17.1.2 (Figure 6).
    NonInviteClient,
}

/// What a machine needs from the table while it runs.
pub(super) struct Ctx<'a, M> {
    pub(super) config: &'a Config,
    pub(super) key: &'a Key,
    pub(super) out: &'a mut VecDeque<Output<M>>,
}

impl<M> Ctx<'_, M> {
    fn send(&mut self, msg: M) {
        self.out.push_back(Output::Send {
            key: self.key.clone(),
            msg,
        });
    }

    fn tell_tu(&mut self, event: TuEvent) {
        self.out.push_back(Output::ToTu(event));
    }

    fn timeout(&mut self, timer: Timer) {
        self.tell_tu(TuEvent::Timeout {
            key: self.key.clone(),
            timer,
        });
    }
}

#[derive(Debug)]
pub(super) struct Transaction<M> {
    pub(super) kind: Kind,
    pub(super) state: State,
    /// Set when the machine reaches Terminated; the table then destroys it at once.
    pub(super) terminated: bool,
    pub(super) transport: Transport,
    pub(super) timers: Timers,
    /// The deadline under which the table currently schedules this transaction.
    pub(super) scheduled: Option<Millis>,
    /// Current interval of the retransmit timer (A, E or G).
    interval: Millis,
    /// Server: the last provisional or final response the TU sent (what a retransmitted request
    /// gets back). Client: the request (what Timers A and E re-send).
    stored: Option<M>,
    /// INVITE client: the ACK for the non-2xx final, re-sent on final retransmissions.
    ack: Option<M>,
    /// INVITE server: the TU has been asked to send 100 Trying (or sent a response).
    trying_requested: bool,
    /// INVITE client: a provisional response has been received (decides Timer C's action).
    provisional_received: bool,
    /// INVITE client: this is a proxied INVITE with Timer C armed (§16.6 step 11).
    timer_c: bool,
}

fn at(now: Millis, delay: Millis) -> Millis {
    now.saturating_add(delay)
}

/// Next deadline of a retransmit timer: at least 1 ms ahead so that a zero T1/T2
/// configuration cannot make `handle_timeout` spin.
fn retransmit_at(now: Millis, interval: Millis) -> Millis {
    at(now, interval.max(1))
}

impl<M: Clone> Transaction<M> {
    fn new(kind: Kind, state: State, transport: Transport, stored: Option<M>) -> Self {
        Transaction {
            kind,
            state,
            terminated: false,
            transport,
            timers: Timers::default(),
            scheduled: None,
            interval: 0,
            stored,
            ack: None,
            trying_requested: false,
            provisional_received: false,
            timer_c: false,
        }
    }

    fn terminate(&mut self) {
        self.terminated = true;
        self.timers = Timers::default();
    }

    /// Enter a "wait" state whose timer may be zero on reliable transports: zero means the
    /// machine goes straight to Terminated (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
    fn wait_then_terminate(&mut self, now: Millis, timer: Timer, delay: Millis) {
        if delay == 0 {
            self.terminate();
        } else {
            self.timers.set(timer, at(now, delay));
        }
    }

    // ----- server side -------------------------------------------------------------------

    /// A new server transaction for a received non-ACK request (RFC 3261 §17.2).
    pub(super) fn new_server(now: Millis, invite: bool, transport: Transport, c: &Config) -> Self {
        if invite {
            let mut tx = Transaction::new(Kind::InviteServer, State::Proceeding, transport, None);
            match c.trying_delay {
                Some(delay) => tx.timers.set(Timer::Trying, at(now, delay)),
                None => tx.trying_requested = true,
            }
            tx
        } else {
            Transaction::new(Kind::NonInviteServer, State::Trying, transport, None)
        }
    }

    /// A request matched this server transaction: a retransmission, or an ACK (§17.2.1–2).
    pub(super) fn on_request(
        &mut self,
        now: Millis,
        is_ack: bool,
        msg: M,
        ctx: &mut Ctx<'_, M>,
    ) -> RequestOutcome<M> {
        match (self.kind, self.state, is_ack) {
            // RFC 6026 §7.1: ACKs in Accepted are passed to the TU, not absorbed.
            (Kind::InviteServer, State::Accepted, true) => {
                RequestOutcome::Ack { msg, matched: true }
            }
            // §17.2.1: ACK in Completed -> Confirmed; Timer G stops, Timer I starts.
            (Kind::InviteServer, State::Completed, true) => {
                self.state = State::Confirmed;
                self.timers.clear(Timer::G);
                self.timers.clear(Timer::H);
                let delay = ctx.config.t4_unless_reliable(self.transport);
                self.wait_then_terminate(now, Timer::I, delay);
                RequestOutcome::Absorbed
            }
            // Confirmed absorbs ACKs; an ACK before any final response is meaningless.
            (_, _, true) => RequestOutcome::Absorbed,
            // INVITE retransmission in Proceeding: re-send the last provisional (§17.2.1). If the
            // TU has not said anything yet, ask it for the 100 now rather than after 200 ms.
            (Kind::InviteServer, State::Proceeding, false) => {
                if let Some(last) = &self.stored {
                    ctx.send(last.clone());
                } else if !self.trying_requested {
                    self.trying_requested = true;
                    self.timers.clear(Timer::Trying);
                    ctx.tell_tu(TuEvent::SendTrying {
                        key: ctx.key.clone(),
                    });
                }
                RequestOutcome::Absorbed
            }
            // Completed: re-send the final response (§17.2.1, §17.2.2). Non-INVITE Proceeding:
            // re-send the last provisional (§17.2.2).
            (Kind::InviteServer, State::Completed, false)
            | (Kind::NonInviteServer, State::Proceeding | State::Completed, false) => {
                if let Some(last) = &self.stored {
                    ctx.send(last.clone());
                }
                RequestOutcome::Absorbed
            }
            // Non-INVITE Trying discards retransmissions (§17.2.2); Confirmed and Accepted
            // absorb INVITE retransmissions (§17.2.1, RFC 6026 §7.1).
            _ => RequestOutcome::Absorbed,
        }
    }

    /// The TU passes a response to this server transaction (§17.2.1, §17.2.2, RFC 6026 §7.1).
    pub(super) fn send_response(
        &mut self,
        now: Millis,
        status: u16,
        msg: M,
        ctx: &mut Ctx<'_, M>,
    ) -> Result<(), Error> {
        let c = ctx.config;
        match (self.kind, self.state) {
            (Kind::InviteServer, State::Proceeding) => {
                self.trying_requested = true;
                self.timers.clear(Timer::Trying);
                match status {
                    100..=199 => {
                        self.stored = Some(msg.clone());
                    }
                    200..=299 => {
                        // RFC 6026 §7.1: Accepted; the TU (not us) retransmits the 2xx.
                        self.state = State::Accepted;
                        self.stored = None;
                        self.timers.set(Timer::L, at(now, c.t1_x64()));
                    }
                    _ => {
                        self.state = State::Completed;
                        self.stored = Some(msg.clone());
                        if self.transport == Transport::Unreliable {
                            self.interval = c.t1;
                            self.timers.set(Timer::G, retransmit_at(now, c.t1));
                        }
                        self.timers.set(Timer::H, at(now, c.t1_x64()));
                    }
                }
                ctx.send(msg);
                Ok(())
            }
            // RFC 6026 §7.1: 2xx retransmissions from the TU in Accepted go to the transport.
            (Kind::InviteServer, State::Accepted) if (200..=299).contains(&status) => {
                ctx.send(msg);
                Ok(())
            }
            (Kind::NonInviteServer, State::Trying | State::Proceeding) => {
                self.stored = Some(msg.clone());
                ctx.send(msg);
                if status < 200 {
                    self.state = State::Proceeding;
                } else {
                    self.state = State::Completed;
                    self.wait_then_terminate(now, Timer::J, c.timer_j(self.transport));
                }
                Ok(())
            }
            (_, state) => Err(Error::InvalidState { state }),
        }
    }

    // ----- client side -------------------------------------------------------------------

    /// Start a client transaction: the request is sent now (§17.1.1.2, §17.1.2.2).
    pub(super) fn new_client(
        now: Millis,
        invite: bool,
        transport: Transport,
        timer_c: bool,
        request: M,
        ctx: &mut Ctx<'_, M>,
    ) -> Self {
        let c = ctx.config;
        ctx.send(request.clone());
        let unreliable = transport == Transport::Unreliable;
        if invite {
            let mut tx =
                Transaction::new(Kind::InviteClient, State::Calling, transport, Some(request));
            if unreliable {
                tx.interval = c.t1;
                tx.timers.set(Timer::A, retransmit_at(now, c.t1));
            }
            tx.timers.set(Timer::B, at(now, c.t1_x64()));
            if timer_c {
                tx.timer_c = true;
                tx.timers.set(Timer::C, at(now, c.timer_c));
            }
            tx
        } else {
            let mut tx = Transaction::new(
                Kind::NonInviteClient,
                State::Trying,
                transport,
                Some(request),
            );
            if unreliable {
                tx.interval = c.t1;
                tx.timers.set(Timer::E, retransmit_at(now, c.t1));
            }
            tx.timers.set(Timer::F, at(now, c.t1_x64()));
            tx
        }
    }

    /// A response matched this client transaction (§17.1.1.2, §17.1.2.2, RFC 6026 §7.2).
    pub(super) fn on_response(
        &mut self,
        now: Millis,
        status: u16,
        msg: M,
        build_ack: fn(&M, &M) -> M,
        ctx: &mut Ctx<'_, M>,
    ) -> ResponseOutcome<M> {
        let c = ctx.config;
        match (self.kind, self.state) {
            (Kind::InviteClient, State::Calling | State::Proceeding) => match status {
                100..=199 => {
                    self.state = State::Proceeding;
                    self.provisional_received = true;
                    self.timers.clear(Timer::A);
                    self.timers.clear(Timer::B);
                    // §16.7 step 2: Timer C is reset by 101–199, not by 100.
                    if self.timer_c && status > 100 {
                        self.timers.set(Timer::C, at(now, c.timer_c));
                    }
                    ResponseOutcome::Deliver(msg)
                }
                200..=299 => {
                    // RFC 6026 §7.2: Accepted, Timer M; the TU sends the ACK for the 2xx.
                    self.state = State::Accepted;
                    self.timers = Timers::default();
                    self.timers.set(Timer::M, at(now, c.t1_x64()));
                    ResponseOutcome::Deliver(msg)
                }
                _ => {
                    // §17.1.1.3 / RFC 6026 §8.4: ACK even on reliable transports, then Timer D.
                    self.state = State::Completed;
                    self.timers = Timers::default();
                    if let Some(request) = &self.stored {
                        let ack = build_ack(request, &msg);
                        ctx.send(ack.clone());
                        self.ack = Some(ack);
                    }
                    self.stored = None;
                    self.wait_then_terminate(now, Timer::D, c.timer_d(self.transport));
                    ResponseOutcome::Deliver(msg)
                }
            },
            (Kind::InviteClient, State::Completed) => {
                // Retransmitted 3xx–6xx: re-send the ACK, do not pass up (RFC 6026 §8.4).
                if status >= 300 {
                    if let Some(ack) = &self.ack {
                        ctx.send(ack.clone());
                    }
                }
                ResponseOutcome::Absorbed
            }
            // RFC 6026 §7.2: every 2xx in Accepted goes to the TU; nothing else is expected.
            (Kind::InviteClient, State::Accepted) if (200..=299).contains(&status) => {
                ResponseOutcome::Deliver(msg)
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding) => {
                if status < 200 {
                    self.state = State::Proceeding;
                } else {
                    self.state = State::Completed;
                    self.timers = Timers::default();
                    self.stored = None;
                    self.wait_then_terminate(now, Timer::K, c.t4_unless_reliable(self.transport));
                }
                ResponseOutcome::Deliver(msg)
            }
            _ => ResponseOutcome::Absorbed,
        }
    }

    /// The TU sent a CANCEL for this INVITE client transaction: give the INVITE 64·T1 to end
    /// with a final response, then destroy it (§9.1).
    pub(super) fn cancel_sent(&mut self, now: Millis, config: &Config) -> Result<(), Error> {
        match (self.kind, self.state) {
            // §9.1: a CANCEL must not be sent before a provisional response.
            (Kind::InviteClient, State::Calling) => Err(Error::InvalidState { state: self.state }),
            (Kind::InviteClient, State::Proceeding) => {
                if self.timers.get(Timer::CancelWait).is_none() {
                    self.timers.set(Timer::CancelWait, at(now, config.t1_x64()));
                }
                Ok(())
            }
            // A final response already arrived: the CANCEL has no effect on us.
            (Kind::InviteClient, _) => Ok(()),
            _ => Err(Error::NotInvite),
        }
    }

    /// The TU replaces this transaction by a new one with its key: it ends, silently.
    pub(super) fn discard(&mut self) {
        self.terminate();
    }

    /// Client: the TU gives up a request that has had no response, but wants what may still
    /// come back on it: it is no longer retransmitted, and ends at Timer B or F as usual.
    pub(super) fn silence(&mut self) {
        if matches!(self.kind, Kind::InviteClient | Kind::NonInviteClient)
            && matches!(self.state, State::Calling | State::Trying)
        {
            self.timers.clear(Timer::A);
            self.timers.clear(Timer::E);
        }
    }

    /// Client: the request goes over another flow from now on (the device registered again
    /// on a new one). Sent there at once; its retransmissions follow it, and stop if the new
    /// transport is reliable (§17.1.1.2). A request that has had a response stays put.
    pub(super) fn reroute(
        &mut self,
        now: Millis,
        transport: Transport,
        msg: M,
        ctx: &mut Ctx<'_, M>,
    ) {
        let waiting = matches!(self.state, State::Calling | State::Trying);
        // An INVITE that has had a provisional goes once more, and is not retransmitted: a
        // device that holds it absorbs it, one that lost it (its app started afresh on the
        // new flow) gets it.
        let proceeding = self.kind == Kind::InviteClient && self.state == State::Proceeding;
        if self.kind == Kind::InviteServer
            || self.kind == Kind::NonInviteServer
            || !(waiting || proceeding)
        {
            return;
        }
        ctx.send(msg.clone());
        self.stored = Some(msg);
        self.transport = transport;
        if transport == Transport::Reliable {
            self.timers.clear(Timer::A);
            self.timers.clear(Timer::E);
        } else if self.kind == Kind::InviteClient && waiting {
            // A device that just woke there gets the next copy soon, not after the
            // interval its sleep had grown to (Timer B still counts from the start).
            self.interval = ctx.config.t1;
            self.timers.set(Timer::A, retransmit_at(now, self.interval));
        }
    }

    /// A transport error while sending on this transaction (§17.1.4, §17.2.4, RFC 6026 §7.1).
    pub(super) fn transport_error(&mut self, ctx: &mut Ctx<'_, M>) {
        ctx.tell_tu(TuEvent::TransportError {
            key: ctx.key.clone(),
        });
        // RFC 6026 §7.1: an INVITE server transaction keeps its state so retransmitted INVITEs
        // are still absorbed; every other machine terminates.
        if self.kind != Kind::InviteServer {
            self.terminate();
        }
    }

    // ----- timers ------------------------------------------------------------------------

    /// Fire every timer due at `now`, earliest first, until none is due or the machine ends.
    /// Each timer fires at most once per call, so a deadline that saturates at `Millis::MAX`
    /// cannot make this loop forever.
    pub(super) fn fire_due(&mut self, now: Millis, ctx: &mut Ctx<'_, M>) {
        let mut fired = Timers::default();
        while let Some((timer, deadline)) = self.timers.next_excluding(&fired) {
            if deadline > now || self.terminated {
                break;
            }
            fired.set(timer, deadline);
            self.timers.clear(timer);
            self.fire(timer, now, ctx);
        }
    }

    fn resend_stored(&self, ctx: &mut Ctx<'_, M>) {
        if let Some(msg) = &self.stored {
            ctx.send(msg.clone());
        }
    }

    fn fire(&mut self, timer: Timer, now: Millis, ctx: &mut Ctx<'_, M>) {
        let c = ctx.config;
        match timer {
            Timer::Trying => {
                self.trying_requested = true;
                ctx.tell_tu(TuEvent::SendTrying {
                    key: ctx.key.clone(),
                });
            }
            // §17.1.1.2: Timer A doubles without a cap (Timer B ends it).
            Timer::A => {
                self.resend_stored(ctx);
                self.interval = self.interval.saturating_mul(2);
                self.timers.set(Timer::A, retransmit_at(now, self.interval));
            }
            // §17.1.2.2: Timer E doubles up to T2 in Trying and is T2 in Proceeding.
            Timer::E => {
                self.resend_stored(ctx);
                self.interval = if self.state == State::Proceeding {
                    c.t2
                } else {
                    self.interval.saturating_mul(2).min(c.t2)
                };
                self.timers.set(Timer::E, retransmit_at(now, self.interval));
            }
            // §17.2.1: Timer G doubles up to T2.
            Timer::G => {
                self.resend_stored(ctx);
                self.interval = self.interval.saturating_mul(2).min(c.t2);
                self.timers.set(Timer::G, retransmit_at(now, self.interval));
            }
            // B, F: act as if 408 was received (§17.1.1.2, §17.1.2.2, §8.1.3.1). H: ACK never
            // came, a transaction failure (§17.2.1). CancelWait: §9.1.
            Timer::B | Timer::F | Timer::H | Timer::CancelWait => {
                ctx.timeout(timer);
                self.terminate();
            }
            // §16.8: CANCEL if a provisional came, otherwise act as if 408 was received.
            Timer::C => {
                if self.provisional_received {
                    ctx.tell_tu(TuEvent::CancelNeeded {
                        key: ctx.key.clone(),
                    });
                    if self.timers.get(Timer::CancelWait).is_none() {
                        self.timers.set(Timer::CancelWait, at(now, c.t1_x64()));
                    }
                } else {
                    ctx.timeout(Timer::C);
                    self.terminate();
                }
            }
            Timer::D | Timer::I | Timer::J | Timer::K | Timer::L | Timer::M => self.terminate(),
        }
    }
}
