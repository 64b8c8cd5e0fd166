//! Registration notices: how the nodes of a cluster learn of each other's REGISTERs.
//!
//! A node that stores a REGISTER on Redis appends, in the same `MULTI`/`EXEC`, a [`Notice`]
//! to the stream `P` `registered`: the AOR's bindings after the write, the ids it wrote
//! and removed, and which node wrote it. Every node reads that stream on a thread of its
//! own ([`Follower`]) and hands each notice of another node to its loop, which updates its
//! copy of the bindings and tells its core of the devices that registered elsewhere (a
//! call parked here is then delivered through the node that holds the device's flow, by
//! the binding's RFC 3327 Path).
//!
//! # Why a stream, not publish/subscribe
//!
//! A message published on a channel while a subscriber is not connected is lost to it, and
//! a subscriber reconnects after every network blip or Redis restart: the parked call whose
//! device registered on another node during that gap would never be delivered (Flexisip's
//! changelog records exactly this bug). A stream keeps its entries: a reader that
//! reconnects goes on from the last id it read, and at worst reads a notice twice, which
//! changes nothing (a notice carries the AOR's whole state, and a second `DeviceRegistered`
//! for a device is what a REGISTER's retransmission gives the core anyway).
//!
//! # No notice falls between loading and reading
//!
//! A node takes the stream's end ([`super::Redis::notices_end`]) *before* it loads the
//! bindings at start, and reads from there: a REGISTER stored before that point is in what
//! it loaded, one stored after is in a notice it reads. Reading from "now" after loading
//! (`$`, or subscribing after the load) would leave a gap in which a REGISTER is in neither:
//! the SUBSCRIBE race the model checks against (specs/parking.md).
//!
//! The stream is trimmed to about [`KEPT`] notices. A node that stays away from Redis for
//! longer than it takes the cluster to store that many REGISTERs misses some: it says so
//! in its log when it is back (the oldest notice kept is newer than the last it read), and
//! those devices are reached by push until they register again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{Commands, Pipeline};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{Binding, BindingId, RedisOptions, StoreError};

/// About how many notices the stream keeps (`XADD … MAXLEN ~`).
const KEPT: usize = 100_000;

/// How long one read waits for a notice before it looks whether it should stop.
const BLOCK: Duration = Duration::from_secs(1);

/// The most notices one read returns.
const BATCH: usize = 256;

/// One stored REGISTER, as the other nodes learn of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Its id in the stream, as Redis gave it (`<ms>-<seq>`): the version of the AOR it
    /// brings (see [`Version`]). Not part of what is stored.
    #[serde(skip)]
    pub id: String,
    /// The run of the node that stored it.
    pub origin: u64,
    /// The AOR.
    pub aor: String,
    /// Every unexpired binding of the AOR after it, ordered by id.
    pub bindings: Vec<Binding>,
    /// Bindings it removed.
    pub removed: Vec<BindingId>,
    /// Bindings it wrote: the devices that registered.
    pub written: Vec<BindingId>,
}

impl Notice {
    /// Adds to `pipe` the command that appends this notice to the stream `key`; its reply
    /// is the notice's id.
    pub(super) fn append(&self, pipe: &mut Pipeline, key: &str) -> Result<(), StoreError> {
        let json = serde_json::to_vec(self).map_err(|e| StoreError::Invalid(e.to_string()))?;
        pipe.cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(KEPT)
            .arg("*")
            .arg("notice")
            .arg(json);
        Ok(())
    }
}

/// The thread that reads the notices of the other nodes. Dropping it stops the thread
/// within a second; it does not wait for it.
pub struct Follower {
    stop: Arc<AtomicBool>,
    _thread: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Follower {
    /// Reads the stream of `options` from after the entry `from` (see
    /// [`super::Redis::notices_end`]) and hands every notice another node wrote to
    /// `deliver`, in order. While Redis cannot be reached it tries again every second, from
    /// where it was.
    pub fn start(
        options: &RedisOptions,
        from: String,
        mut deliver: impl FnMut(Notice) + Send + 'static,
    ) -> std::io::Result<Self> {
        let client = options.client().map_err(std::io::Error::other)?;
        let key = super::redis::Keys(options.prefix.clone()).notices();
        let (node, timeout) = (options.node, options.timeout);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("pushpark-notices".into())
            .spawn(move || {
                let mut last = from;
                let mut con = None;
                while !stopped.load(Ordering::Relaxed) {
                    let read = match &mut con {
                        Some(con) => read(con, &key, &last),
                        None => connect(&client, timeout, &key, &last).map(|c| {
                            con = Some(c);
                            Vec::new()
                        }),
                    };
                    match read {
                        Ok(entries) => {
                            for (id, notice) in entries {
                                last = id;
                                match notice {
                                    Some(n) if n.origin != node => deliver(Notice {
                                        id: last.clone(),
                                        ..n
                                    }),
                                    Some(_) => {}
                                    None => warn!("registration notice {last}: not one of ours"),
                                }
                            }
                        }
                        Err(e) => {
                            debug!("registration notices: {e}; again in a second");
                            con = None;
                            std::thread::sleep(BLOCK);
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            _thread: thread,
        })
    }
}

/// A connection to read `key` on, and a warning if notices after `last` were trimmed away.
fn connect(
    client: &redis::Client,
    timeout: Duration,
    key: &str,
    last: &str,
) -> redis::RedisResult<redis::Connection> {
    let mut con = client.get_connection_with_timeout(timeout)?;
    // A read waits up to BLOCK for a notice, then for the reply itself.
    con.set_read_timeout(Some(BLOCK + timeout))?;
    con.set_write_timeout(Some(timeout))?;
    if let Some(first) = edge(&mut con, key, Edge::Oldest)? {
        if Version::of(&first) > Version::of(last).map(|v| Version(v.0, v.1 + 1)) {
            warn!(
                "registration notices after {last} were trimmed before this node read them: \
                 devices that registered on other nodes meanwhile are reached by push until \
                 they register again"
            );
        }
    }
    Ok(con)
}

/// Which end of the stream.
pub(super) enum Edge {
    Oldest,
    Newest,
}

/// The id of the oldest or the newest notice the stream `key` keeps.
pub(super) fn edge(
    con: &mut redis::Connection,
    key: &str,
    which: Edge,
) -> redis::RedisResult<Option<String>> {
    let reply: StreamRangeReply = match which {
        Edge::Oldest => con.xrange_count(key, "-", "+", 1)?,
        Edge::Newest => con.xrevrange_count(key, "+", "-", 1)?,
    };
    Ok(reply.ids.into_iter().next().map(|entry| entry.id))
}

/// An AOR's version in the cluster: the stream id of the notice its last write appended
/// (`<ms>-<seq>`, as numbers). Every write of an AOR appends one in the same transaction, so
/// versions order an AOR's writes; a notice no newer than the version a node knows brings
/// an older state than it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u64, u64);

impl Version {
    /// The version a stream id names; `None` if it is not one.
    pub fn of(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Version(ms.parse().ok()?, seq.parse().ok()?))
    }
}
/// The notices after `last`, with their ids; `None` for an entry that is not a notice.
fn read(
    con: &mut redis::Connection,
    key: &str,
    last: &str,
) -> redis::RedisResult<Vec<(String, Option<Notice>)>> {
    let options = StreamReadOptions::default()
        .block(BLOCK.as_millis() as usize)
        .count(BATCH);
    let reply: Option<StreamReadReply> = con.xread_options(&[key], &[last], &options)?;
    let entries = reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|entry| {
            let notice = match entry.map.get("notice") {
                Some(redis::Value::BulkString(json)) => serde_json::from_slice(json).ok(),
                _ => None,
            };
            (entry.id, notice)
        })
        .collect();
    Ok(entries)
}
