//! SIP transactions (RFC 3261 §17, with the RFC 6026 corrections) as a sans-IO state machine.
//!
//! [`Transactions`] owns every client and server transaction of one SIP element. It never
//! touches a socket or a clock: every input carries the current time (`now`, milliseconds on
//! any monotonic clock the caller likes), and every effect is an [`Output`] the caller drains
//! with [`Transactions::poll_output`]. The caller sleeps until [`Transactions::poll_timeout`]
//! and then calls [`Transactions::handle_timeout`].
//!
//! Messages are opaque: the table is generic over `M: Clone` and only learns the facts a
//! transaction needs — the [`Key`] (built by the caller from the top Via and CSeq, §17.1.3 /
//! §17.2.3), the [`Method`], the status code, and the [`Transport`] reliability. The one thing
//! the layer must *make* is the ACK for a non-2xx final response (§17.1.1.3); the caller
//! supplies that as a plain function `fn(&request, &response) -> ack` when building the table.
//!
//! Driver sketch:
//!
//! ```text
//! incoming request  -> key = Key::server(branch, sent_by, &method)?; handle_request(now, &key, method, transport, msg)
//! incoming response -> key = Key::client(branch, &cseq_method)?;   handle_response(now, &key, status, msg)
//! TU answers        -> send_response(now, &key, status, msg)
//! TU sends request  -> start_client(now, key, transport, msg)  (start_proxied_invite for Timer C)
//! then              -> while let Some(o) = poll_output() { Send -> transmit, ToTu -> core, Terminated -> forget }
//! sleep until       -> poll_timeout(); then handle_timeout(now)
//! ```
//!
//! `Output::Send` names only the transaction: the caller remembers where a transaction's
//! messages go (server: per the top Via, §18.2.2; client: where the request was sent, which is
//! also where the ACK for a non-2xx goes, §17.1.1.3).

mod key;
mod machine;
mod timer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};

use crate::Map;
use std::fmt;

use self::machine::{Ctx, Transaction};

pub use self::key::{Key, KeyError, Method, Role, MAGIC_COOKIE};
pub use self::timer::{Config, Timer};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// Whether the transport retransmits for us (RFC 3261 §17.1.1.2: TCP, TLS, SCTP are reliable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: the transaction layer retransmits and waits out stray retransmissions.
    Unreliable,
    /// TCP/TLS/SCTP: no retransmissions; Timers D, I, J, K are zero.
    Reliable,
}

/// A live transaction's state (RFC 3261 Figures 5–8 as amended by RFC 6026 Figures 5 and 7).
/// Terminated is never observable: a terminated transaction is destroyed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// INVITE client: request sent, nothing received.
    Calling,
    /// Non-INVITE client or server: nothing sent back / received yet.
    Trying,
    /// A provisional response was sent (server) or received (client); the INVITE server
    /// transaction starts here.
    Proceeding,
    /// A final response (3xx–6xx for INVITE; any for non-INVITE) was sent or received.
    Completed,
    /// INVITE server: the ACK for the non-2xx final arrived.
    Confirmed,
    /// INVITE, RFC 6026: a 2xx was sent (server) or received (client).
    Accepted,
}

/// Something the caller must do, drained with [`Transactions::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<M> {
    /// Transmit `msg` for transaction `key`: a first transmission, a retransmission of a stored
    /// message, or the ACK the INVITE client transaction built for a non-2xx final.
    Send {
        /// The transaction the message belongs to.
        key: Key,
        /// The message.
        msg: M,
    },
    /// Tell the transaction user (proxy/registrar core) something.
    ToTu(TuEvent),
    /// The transaction ended and was destroyed (after any `ToTu` that explains why).
    Terminated(Key),
}

/// An event for the transaction user that is not the direct result of an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TuEvent {
    /// INVITE server transaction: the TU has not answered within [`Config::trying_delay`], or the
    /// INVITE was retransmitted before any answer; send 100 Trying now with
    /// [`Transactions::send_response`] (RFC 3261 §17.2.1, §16.2).
    SendTrying {
        /// The INVITE server transaction.
        key: Key,
    },
    /// A timer ended the transaction. Client (B, F, C without provisional, CancelWait): act as if
    /// a 408 was received (§8.1.3.1, §16.7 step 6, §16.8, §9.1). Server (H): the ACK never came,
    /// a transaction failure (§17.2.1); the proxy core has nothing more to forward.
    Timeout {
        /// The transaction, now destroyed.
        key: Key,
        /// Which timer fired.
        timer: Timer,
    },
    /// Proxy Timer C fired after a provisional response: CANCEL this branch (§16.8, §9.1). The
    /// INVITE client transaction stays to receive the 487 and is given up 64·T1 later if none
    /// comes (reported as `Timeout { timer: Timer::CancelWait }`).
    CancelNeeded {
        /// The INVITE client transaction.
        key: Key,
    },
    /// The caller reported a transport failure (§17.1.4, §17.2.4): a client should treat it as
    /// a 503 (§8.1.3.1, §16.9). INVITE server transactions stay alive (RFC 6026 §7.1); all
    /// others are terminated.
    TransportError {
        /// The transaction.
        key: Key,
    },
}

/// What [`Transactions::handle_request`] did with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOutcome<M> {
    /// A new server transaction was created; the TU must process the request. For an INVITE,
    /// send 100 Trying promptly (a [`TuEvent::SendTrying`] reminder follows after 200 ms).
    New(M),
    /// A retransmission or an ACK for a non-2xx final, absorbed by the transaction layer; any
    /// response it re-sends is in the output queue.
    Absorbed,
    /// An ACK the transaction layer does not consume; pass it to the TU. `matched` is true when
    /// it matched an INVITE server transaction in Accepted (RFC 6026 §7.1), false when it matched
    /// none (the usual ACK for a 2xx, which has its own branch, §17.1.1.3; a proxy forwards it).
    Ack {
        /// The ACK.
        msg: M,
        /// Whether it matched a transaction in Accepted.
        matched: bool,
    },
}

/// What [`Transactions::handle_response`] did with a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOutcome<M> {
    /// Pass the response to the TU (including 100, which a proxy then must not forward, §16.7).
    Deliver(M),
    /// A retransmission absorbed by the transaction layer (an ACK re-send may be queued).
    Absorbed,
    /// No client transaction matches: drop it; a stateful proxy MUST NOT forward it
    /// (RFC 6026 §7.3). Returned for logging.
    Stray(M),
}

/// Misuse of the table by the caller. No state changes when an error is returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No live transaction has this key.
    NoTransaction,
    /// A client key was used where a server key is needed, or the other way round.
    WrongRole,
    /// The method passed with the request does not match the key's method.
    KeyMismatch,
    /// A status code outside 100–699.
    InvalidStatus(u16),
    /// The transaction's state does not allow this (e.g. a second final response).
    InvalidState {
        /// The state the transaction is in.
        state: State,
    },
    /// A transaction with this key already exists.
    AlreadyExists,
    /// The operation applies to INVITE client transactions only.
    NotInvite,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoTransaction => f.write_str("no such transaction"),
            Error::WrongRole => f.write_str("key has the wrong role (client/server)"),
            Error::KeyMismatch => f.write_str("method does not match the transaction key"),
            Error::InvalidStatus(code) => write!(f, "invalid status code {code}"),
            Error::InvalidState { state } => write!(f, "not allowed in state {state:?}"),
            Error::AlreadyExists => f.write_str("transaction already exists"),
            Error::NotInvite => f.write_str("only valid for INVITE client transactions"),
        }
    }
}

impl std::error::Error for Error {}

fn check_status(status: u16) -> Result<(), Error> {
    if (100..=699).contains(&status) {
        Ok(())
    } else {
        Err(Error::InvalidStatus(status))
    }
}

/// All transactions of one SIP element, keyed per RFC 3261 §17.1.3 / §17.2.3.
pub struct Transactions<M> {
    config: Config,
    build_ack: fn(&M, &M) -> M,
    /// Boxed: a server holds tens of thousands (each lingers 32 s after its final
    /// response), and growing a table of ~600-byte entries in place stalls the loop for
    /// tens of milliseconds while it moves them.
    txs: Map<Key, Box<Transaction<M>>>,
    /// (deadline, key) of every transaction with an armed timer; one entry per transaction.
    schedule: BTreeSet<(Millis, Key)>,
    out: VecDeque<Output<M>>,
}

impl<M> fmt::Debug for Transactions<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactions")
            .field("config", &self.config)
            .field("transactions", &self.txs.len())
            .field("next_timeout", &self.schedule.first().map(|(at, _)| *at))
            .field("queued_outputs", &self.out.len())
            .finish()
    }
}

impl<M: Clone> Transactions<M> {
    /// An empty table. `build_ack(invite, response)` builds the ACK for a 3xx–6xx response to
    /// `invite` (RFC 3261 §17.1.1.3: Request-URI, Call-ID, From, CSeq number and the single top
    /// Via of the INVITE, To of the response, CSeq method ACK, the INVITE's Route headers).
    pub fn new(config: Config, build_ack: fn(&M, &M) -> M) -> Self {
        Transactions {
            config,
            build_ack,
            txs: Map::default(),
            schedule: BTreeSet::new(),
            out: VecDeque::new(),
        }
    }

    /// The timer configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Whether every live transaction has finished its exchange and only absorbs
    /// retransmissions now: none waits for a response, and no INVITE server transaction
    /// still retransmits a non-2xx final waiting for its ACK.
    pub fn settled(&self) -> bool {
        self.txs.iter().all(|(key, tx)| match tx.state {
            State::Confirmed | State::Accepted => true,
            State::Completed => !(key.role() == Role::Server && *key.method() == Method::Invite),
            State::Calling | State::Trying | State::Proceeding => false,
        })
    }

    /// The state of a live transaction, `None` if there is none with this key.
    pub fn state(&self, key: &Key) -> Option<State> {
        self.txs.get(key).map(|tx| tx.state)
    }

    /// A received request (RFC 3261 §17.2.3 matching). `key` from [`Key::server`] with the same
    /// `method`; `transport` is the one the request arrived on.
    pub fn handle_request(
        &mut self,
        now: Millis,
        key: &Key,
        method: &Method,
        transport: Transport,
        msg: M,
    ) -> Result<RequestOutcome<M>, Error> {
        if key.role() != Role::Server {
            return Err(Error::WrongRole);
        }
        let is_ack = *method == Method::Ack;
        let expected = if is_ack { &Method::Invite } else { method };
        if key.method() != expected {
            return Err(Error::KeyMismatch);
        }
        let outcome = match self.txs.get_mut(key) {
            Some(tx) => {
                let mut ctx = Ctx {
                    config: &self.config,
                    key,
                    out: &mut self.out,
                };
                tx.on_request(now, is_ack, msg, &mut ctx)
            }
            // ACK never creates a transaction (§17.2.3).
            None if is_ack => {
                return Ok(RequestOutcome::Ack {
                    msg,
                    matched: false,
                })
            }
            None => {
                let invite = *method == Method::Invite;
                let tx = Transaction::new_server(now, invite, transport, &self.config);
                self.txs.insert(key.clone(), Box::new(tx));
                RequestOutcome::New(msg)
            }
        };
        self.settle(key);
        Ok(outcome)
    }

    /// The TU sends a response on a server transaction (§17.2.1, §17.2.2; RFC 6026 §7.1). The
    /// message is queued as `Output::Send`. For INVITE, 100 Trying goes through here too.
    pub fn send_response(
        &mut self,
        now: Millis,
        key: &Key,
        status: u16,
        msg: M,
    ) -> Result<(), Error> {
        check_status(status)?;
        if key.role() != Role::Server {
            return Err(Error::WrongRole);
        }
        let tx = self.txs.get_mut(key).ok_or(Error::NoTransaction)?;
        let mut ctx = Ctx {
            config: &self.config,
            key,
            out: &mut self.out,
        };
        tx.send_response(now, status, msg, &mut ctx)?;
        self.settle(key);
        Ok(())
    }

    /// The TU sends a request: creates the client transaction and queues the first
    /// transmission (§17.1.1.2, §17.1.2.2). `key` from [`Key::client`].
    pub fn start_client(
        &mut self,
        now: Millis,
        key: Key,
        transport: Transport,
        msg: M,
    ) -> Result<(), Error> {
        self.start(now, key, transport, msg, false)
    }

    /// Like [`start_client`](Self::start_client) for an INVITE a proxy forwards: also arms
    /// proxy Timer C ([`Config::timer_c`], RFC 3261 §16.6 step 11), reset by each 101–199
    /// response (§16.7 step 2). On expiry the TU gets [`TuEvent::CancelNeeded`] if a provisional
    /// came, else [`TuEvent::Timeout`] with [`Timer::C`] (§16.8).
    pub fn start_proxied_invite(
        &mut self,
        now: Millis,
        key: Key,
        transport: Transport,
        msg: M,
    ) -> Result<(), Error> {
        if *key.method() != Method::Invite {
            return Err(Error::NotInvite);
        }
        self.start(now, key, transport, msg, true)
    }

    fn start(
        &mut self,
        now: Millis,
        key: Key,
        transport: Transport,
        msg: M,
        timer_c: bool,
    ) -> Result<(), Error> {
        if key.role() != Role::Client {
            return Err(Error::WrongRole);
        }
        if self.txs.contains_key(&key) {
            return Err(Error::AlreadyExists);
        }
        let invite = *key.method() == Method::Invite;
        let mut ctx = Ctx {
            config: &self.config,
            key: &key,
            out: &mut self.out,
        };
        let tx = Transaction::new_client(now, invite, transport, timer_c, msg, &mut ctx);
        self.txs.insert(key.clone(), Box::new(tx));
        self.settle(&key);
        Ok(())
    }

    /// A received response (§17.1.3 matching: `key` from [`Key::client`] with the top Via
    /// branch and the CSeq method).
    pub fn handle_response(
        &mut self,
        now: Millis,
        key: &Key,
        status: u16,
        msg: M,
    ) -> Result<ResponseOutcome<M>, Error> {
        check_status(status)?;
        if key.role() != Role::Client {
            return Err(Error::WrongRole);
        }
        let Some(tx) = self.txs.get_mut(key) else {
            return Ok(ResponseOutcome::Stray(msg));
        };
        let mut ctx = Ctx {
            config: &self.config,
            key,
            out: &mut self.out,
        };
        let outcome = tx.on_response(now, status, msg, self.build_ack, &mut ctx);
        self.settle(key);
        Ok(outcome)
    }

    /// The TU sent a CANCEL for this INVITE client transaction (for example because the caller
    /// cancelled, or another branch answered): if no final response arrives within 64·T1 the
    /// transaction is given up with `Timeout { timer: Timer::CancelWait }` (§9.1). Not allowed
    /// before a provisional response (§9.1).
    pub fn cancel_sent(&mut self, now: Millis, key: &Key) -> Result<(), Error> {
        let tx = self.txs.get_mut(key).ok_or(Error::NoTransaction)?;
        tx.cancel_sent(now, &self.config)?;
        self.settle(key);
        Ok(())
    }

    /// The TU sends a new request with the key of a client transaction it has done with (a
    /// CANCEL again, an INVITE again to a device that restarted): the old one ends at once,
    /// whatever its state, without a word to the TU.
    pub fn discard(&mut self, key: &Key) {
        if let Some(tx) = self.txs.get_mut(key) {
            tx.discard();
            self.settle(key);
        }
    }

    /// The TU gives up a client transaction that has had no response but still wants its
    /// answers (see `Transaction::silence`): no more retransmissions.
    pub fn silence(&mut self, key: &Key) -> Result<(), Error> {
        let tx = self.txs.get_mut(key).ok_or(Error::NoTransaction)?;
        tx.silence();
        self.settle(key);
        Ok(())
    }

    /// A client transaction's request is sent over another flow from now on (see
    /// `Transaction::reroute`): sent there at once, retransmitted there after, from T1 again.
    pub fn reroute(
        &mut self,
        now: Millis,
        key: &Key,
        transport: Transport,
        msg: M,
    ) -> Result<(), Error> {
        let tx = self.txs.get_mut(key).ok_or(Error::NoTransaction)?;
        let mut ctx = Ctx {
            config: &self.config,
            key,
            out: &mut self.out,
        };
        tx.reroute(now, transport, msg, &mut ctx);
        self.settle(key);
        Ok(())
    }

    /// The transport failed to deliver a message of this transaction (§17.1.4, §17.2.4).
    /// Reports [`TuEvent::TransportError`]; terminates all but INVITE server transactions
    /// (RFC 6026 §7.1).
    pub fn transport_error(&mut self, key: &Key) -> Result<(), Error> {
        let tx = self.txs.get_mut(key).ok_or(Error::NoTransaction)?;
        let mut ctx = Ctx {
            config: &self.config,
            key,
            out: &mut self.out,
        };
        tx.transport_error(&mut ctx);
        self.settle(key);
        Ok(())
    }

    /// The earliest deadline of any armed timer, for the driver's single sleep.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.schedule.first().map(|(at, _)| *at)
    }

    /// Fire every timer due at or before `now`, in deadline order. Each due transaction runs
    /// once per call (it fires all of its own due timers), so this always returns.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.handle_timeout_at_most(now, usize::MAX);
    }

    /// Like [`handle_timeout`](Self::handle_timeout), for at most `limit` transactions, the
    /// earliest due first: a caller that bounds the work of one call (and what it outputs)
    /// comes back for the rest, which [`poll_timeout`](Self::poll_timeout) shows still due.
    pub fn handle_timeout_at_most(&mut self, now: Millis, limit: usize) {
        let due: Vec<(Millis, Key)> = self
            .schedule
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(limit)
            .cloned()
            .collect();
        for (deadline, key) in due {
            self.schedule.remove(&(deadline, key.clone()));
            if let Some(tx) = self.txs.get_mut(&key) {
                tx.scheduled = None;
                let mut ctx = Ctx {
                    config: &self.config,
                    key: &key,
                    out: &mut self.out,
                };
                tx.fire_due(now, &mut ctx);
            }
            self.settle(&key);
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output<M>> {
        self.out.pop_front()
    }

    /// After a transaction ran: destroy it if it terminated, else reschedule its deadline.
    fn settle(&mut self, key: &Key) {
        let Some(tx) = self.txs.get_mut(key) else {
            return;
        };
        let next = if tx.terminated {
            None
        } else {
            tx.timers.next().map(|(_, at)| at)
        };
        if next != tx.scheduled {
            if let Some(old) = tx.scheduled {
                self.schedule.remove(&(old, key.clone()));
            }
            if let Some(new) = next {
                self.schedule.insert((new, key.clone()));
            }
            tx.scheduled = next;
        }
        if tx.terminated {
            self.txs.remove(key);
            self.out.push_back(Output::Terminated(key.clone()));
        }
    }

    #[cfg(test)]
    fn earliest_timer_brute_force(&self) -> Option<Millis> {
        self.txs
            .values()
            .filter_map(|tx| tx.timers.next().map(|(_, at)| at))
            .min()
    }
}
