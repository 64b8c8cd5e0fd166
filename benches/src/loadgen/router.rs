//! The router: hands each arriving SIP message and each push to the call it belongs to.
//!
//! Each call in flight has a [`Mailbox`], registered here under the call's index while the
//! call's task runs; the table is sharded so that the link readers and the webhook rarely
//! meet on a lock. A mailbox is a queue and a [`Notify`]: a few dozen bytes while the
//! call waits, where a channel would hold a block of slots (hold mode keeps 100,000 calls). A message for a call that has already ended (a retransmission, a
//! straggler) is answered the way a user agent without that call would: a 2xx or a final
//! response to an INVITE is ACKed, a BYE gets 200, an INVITE or CANCEL 481.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pushpark::push::{PushKind, PushRequest};
use pushpark::sip::Message;
use tokio::sync::{mpsc, Notify};

use super::link::{Link, Side};
use super::sip::{self, Branch, Key, Tag};

const SHARDS: usize = 64;

/// One shard of the table of calls in flight: each call's mailbox by its index.
type Shard = Mutex<HashMap<u64, Arc<Mailbox>>>;

/// What is waiting for one call's task.
#[derive(Default)]
pub(crate) struct Mailbox {
    queue: Mutex<VecDeque<Event>>,
    notify: Notify,
}

impl Mailbox {
    fn post(&self, event: Event) {
        lock(&self.queue).push_back(event);
        // Stores a permit when the task is not waiting: no event is missed.
        self.notify.notify_one();
    }

    /// The next event, waiting for it if need be.
    pub async fn next(&self) -> Event {
        loop {
            if let Some(event) = lock(&self.queue).pop_front() {
                return event;
            }
            self.notify.notified().await;
        }
    }
}

/// A SIP message as it arrived.
pub(crate) struct Incoming {
    /// The message, parsed.
    pub message: Message,
    /// When the link's reader got it.
    pub at: Instant,
    /// The link it came over (answers go back over it).
    pub link: Arc<Link>,
    /// Its source address (the server's, for UDP).
    pub from: SocketAddr,
}

/// A push for a call, as the webhook got it.
pub(crate) struct Pushed {
    /// When it reached the webhook.
    pub at: Instant,
    /// The app API's answer token and URL it carried (with an app API).
    pub answer: Option<(String, String)>,
}

/// What the app API replied to a device's answer from the push.
pub(crate) struct AppReplied {
    /// The HTTP status, or why there was none.
    pub status: Result<u16, String>,
    /// The reply's body (what it says, for a failure's cause).
    pub body: String,
    /// When the reply was in.
    pub at: Instant,
}

/// What a call's task is told.
pub(crate) enum Event {
    /// A SIP message for the call.
    Sip(Box<Incoming>),
    /// A push for the call reached the webhook.
    Push(Box<Pushed>),
    /// The app API replied to the device's answer from the push.
    AppReplied(Box<AppReplied>),
}

/// What the router counted beside the calls' own messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Bytes from the server that are not a SIP message (or a TCP stream that lost framing).
    pub unparsable: u64,
    /// Messages for no call in flight (late retransmissions, other runs).
    pub stray: u64,
    /// Pushes that reached the webhook.
    pub pushes: u64,
    /// Pushes for no call in flight.
    pub unknown_pushes: u64,
    /// Binding-refresh pushes (RFC 8599 §5.5), not for a call.
    pub refresh_pushes: u64,
    /// Webhook requests that were not a push request.
    pub bad_pushes: u64,
    /// TCP connections the server closed.
    pub closed_by_server: u64,
}

#[derive(Default)]
struct Atomics {
    unparsable: AtomicU64,
    stray: AtomicU64,
    pushes: AtomicU64,
    unknown_pushes: AtomicU64,
    refresh_pushes: AtomicU64,
    bad_pushes: AtomicU64,
    closed_by_server: AtomicU64,
}

/// Routes messages and pushes to calls.
pub(crate) struct Router {
    run: AtomicU32,
    shards: Box<[Shard]>,
    registrations: Mutex<Option<mpsc::UnboundedSender<(u32, u16)>>>,
    counters: Atomics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    /// A router with no calls.
    pub fn new() -> Self {
        Self {
            run: AtomicU32::new(0),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            registrations: Mutex::new(None),
            counters: Atomics::default(),
        }
    }

    /// From now on, only identifiers of run `run` are ours.
    pub fn start_run(&self, run: u32) {
        self.run.store(run, Ordering::Relaxed);
    }

    fn shard(&self, idx: u64) -> &Shard {
        &self.shards[(idx % SHARDS as u64) as usize]
    }

    /// Opens call `idx`'s mailbox.
    pub fn open(&self, idx: u64) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::default());
        lock(self.shard(idx)).insert(idx, Arc::clone(&mailbox));
        mailbox
    }

    /// Closes call `idx`'s mailbox: what comes later is a straggler.
    pub fn close(&self, idx: u64) {
        lock(self.shard(idx)).remove(&idx);
    }

    /// Final responses to first REGISTERs go to `sink` as (device, code) while it is set.
    pub fn set_registrations(&self, sink: Option<mpsc::UnboundedSender<(u32, u16)>>) {
        *lock(&self.registrations) = sink;
    }

    fn deliver(&self, idx: u64, event: Event) -> Result<(), Event> {
        match lock(self.shard(idx)).get(&idx) {
            Some(mailbox) => {
                mailbox.post(event);
                Ok(())
            }
            None => Err(event),
        }
    }

    /// A message arrived.
    pub fn receive(&self, incoming: Incoming) {
        let run = self.run.load(Ordering::Relaxed);
        let key = sip::key_of(&incoming.message, run);
        let incoming = match key {
            Some(Key::Call(idx)) => match self.deliver(idx, Event::Sip(Box::new(incoming))) {
                Ok(()) => return,
                Err(Event::Sip(incoming)) => *incoming,
                Err(_) => return,
            },
            Some(Key::Registration(dev)) => {
                if let Some(code) = incoming.message.status().filter(|&c| c >= 200) {
                    if let Some(sink) = lock(&self.registrations).as_ref() {
                        let _ = sink.send((dev, code));
                        return;
                    }
                }
                incoming
            }
            None => incoming,
        };
        self.counters.stray.fetch_add(1, Ordering::Relaxed);
        let idx = match key {
            Some(Key::Call(idx)) => idx,
            _ => 0,
        };
        if let Some(reply) = stateless_reply(&incoming, run, idx) {
            incoming.link.send(&reply, incoming.from);
        }
    }

    /// A push reached the webhook at `at`.
    pub fn push(&self, push: PushRequest, at: Instant) {
        self.counters.pushes.fetch_add(1, Ordering::Relaxed);
        if push.kind != PushKind::IncomingCall {
            self.counters.refresh_pushes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let run = self.run.load(Ordering::Relaxed);
        let delivered = match sip::key_of_call_id(&push.call_id, run) {
            Some(Key::Call(idx)) => {
                let answer = push.answer_token.zip(push.answer_url);
                let pushed = Pushed { at, answer };
                self.deliver(idx, Event::Push(Box::new(pushed))).is_ok()
            }
            _ => false,
        };
        if !delivered {
            self.counters.unknown_pushes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The app API replied to call `idx`'s answer from the push (dropped if the call is over).
    pub fn app_replied(&self, idx: u64, replied: AppReplied) {
        let _ = self.deliver(idx, Event::AppReplied(Box::new(replied)));
    }

    /// The webhook got a request that is not a push.
    pub fn bad_push(&self) {
        self.counters.bad_pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// A link got bytes that are not SIP.
    pub fn unparsable(&self) {
        self.counters.unparsable.fetch_add(1, Ordering::Relaxed);
    }

    /// The server closed a TCP connection.
    pub fn closed_by_server(&self) {
        self.counters
            .closed_by_server
            .fetch_add(1, Ordering::Relaxed);
    }

    /// What was counted so far (compare two snapshots for one run).
    pub fn counters(&self) -> Counters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            unparsable: get(&c.unparsable),
            stray: get(&c.stray),
            pushes: get(&c.pushes),
            unknown_pushes: get(&c.unknown_pushes),
            refresh_pushes: get(&c.refresh_pushes),
            bad_pushes: get(&c.bad_pushes),
            closed_by_server: get(&c.closed_by_server),
        }
    }
}

impl Counters {
    /// What was counted between `before` and `self`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            unparsable: self.unparsable - before.unparsable,
            stray: self.stray - before.stray,
            pushes: self.pushes - before.pushes,
            unknown_pushes: self.unknown_pushes - before.unknown_pushes,
            refresh_pushes: self.refresh_pushes - before.refresh_pushes,
            bad_pushes: self.bad_pushes - before.bad_pushes,
            closed_by_server: self.closed_by_server - before.closed_by_server,
        }
    }
}

/// What a user agent without the call answers to a straggler.
fn stateless_reply(incoming: &Incoming, run: u32, idx: u64) -> Option<bytes::Bytes> {
    let message = &incoming.message;
    if let Some(method) = sip::method(message) {
        return match method {
            "BYE" => Some(sip::response(message, 200, None)),
            "INVITE" | "CANCEL" => Some(sip::response(message, 481, None)),
            _ => None,
        };
    }
    let code = message.status()?;
    if incoming.link.side() != Side::Caller || code < 200 || !sip::cseq_is(message, "INVITE") {
        return None;
    }
    if code < 300 {
        let branch = Branch::Call {
            idx,
            run,
            tag: Tag::Ack,
        };
        sip::in_dialog("ACK", incoming.link.local(), branch, message).ok()
    } else {
        sip::ack_non_2xx(message).ok()
    }
}
