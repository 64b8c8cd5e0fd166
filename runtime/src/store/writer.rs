//! The store's own thread, which applies the server's store work in the order it was sent,
//! many jobs per commit (group commit).
//!
//! With `synchronous=FULL` every commit costs a WAL fsync (milliseconds on most disks), so
//! one commit per REGISTER would cap the registrar at a few hundred REGISTERs a second. The
//! writer instead takes every job waiting when it wakes, runs them all inside one
//! transaction, commits once and only then reports each job's result: a REGISTER is still
//! durable before its 200 OK, and a burst of wake-up REGISTERs shares one fsync.
//!
//! A job that fails rolls back only its own changes ([`Store::apply`] runs in a savepoint);
//! if the commit itself fails, every job of the batch is told so and none of it is kept.
//!
//! On Redis, where every job is a transaction of its own, the writer may run several
//! *lanes*, each a thread with its own connection. A job goes to the lane its key names (the
//! REGISTERs of one AOR to one lane, so they are applied in the order sent); while one lane
//! waits for its `EXEC` (and the fsync of the append-only file behind it), the others send
//! theirs, and Redis fsyncs once for all the writes of its event-loop turn.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{Store, StoreError};

/// The most jobs one commit carries, so one batch never delays the next for long.
const MAX_BATCH: usize = 512;

/// What a job hands back once its batch is committed (`Ok`) or lost (`Err`).
pub type Done<O> = Box<dyn FnOnce(Result<(), &StoreError>) -> O + Send>;
/// Work on the store, run inside a batch's transaction; it is told when its batch began
/// (how long it waited for the store is the node's measure of the store's load).
pub type Job<O> = Box<dyn FnOnce(&mut Store, Instant) -> Done<O> + Send>;

/// The handle to the store's threads. Dropping it (or [`close`](Self::close)) lets each
/// thread finish the jobs already sent and end.
pub struct Writer<O> {
    lanes: Vec<mpsc::Sender<Job<O>>>,
    threads: Vec<JoinHandle<()>>,
}

impl<O: Send + 'static> Writer<O> {
    /// Moves each of `stores` to a thread of its own, a lane; each job's outcome goes to
    /// `deliver`, in the order of its lane.
    pub fn start(
        stores: Vec<Store>,
        deliver: impl Fn(O) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let deliver = std::sync::Arc::new(deliver);
        let (mut lanes, mut threads) = (Vec::new(), Vec::new());
        for (n, mut store) in stores.into_iter().enumerate() {
            let (jobs, queue) = mpsc::channel::<Job<O>>();
            let deliver = std::sync::Arc::clone(&deliver);
            let thread = std::thread::Builder::new()
                .name(format!("pushpark-store-{n}"))
                .spawn(move || {
                    while let Ok(first) = queue.recv() {
                        let mut batch = vec![first];
                        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
                        let began = Instant::now();
                        store.run_batch_each(batch, began, |outcome| deliver(outcome));
                    }
                })?;
            lanes.push(jobs);
            threads.push(thread);
        }
        Ok(Self { lanes, threads })
    }

    /// Queues `work` on the first lane; once the commit it is part of has ended, `done`
    /// turns its result and the commit's into what is delivered.
    pub fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Store) -> T + Send + 'static,
        done: impl FnOnce(T, Result<(), &StoreError>) -> O + Send + 'static,
    ) {
        self.submit_job(
            0,
            Box::new(move |store, _| {
                let value = work(store);
                Box::new(move |committed| done(value, committed))
            }),
        );
    }

    /// Queues a job made elsewhere on the lane `key` names (jobs of one key keep their
    /// order).
    pub fn submit_job(&self, key: u64, job: Job<O>) {
        let Some(lane) = self
            .lanes
            .get((key % self.lanes.len().max(1) as u64) as usize)
        else {
            return;
        };
        // Only fails once the thread has ended, i.e. never before `close`.
        let _ = lane.send(job);
    }

    /// Stops taking jobs; the returned threads end once they have committed the queued ones.
    pub fn close(&mut self) -> Vec<JoinHandle<()>> {
        self.lanes.clear();
        std::mem::take(&mut self.threads)
    }
}

impl Store {
    /// Runs `batch`, begun at `now`, in one transaction and returns each job's outcome
    /// after the commit: what a caller without the store's thread (the benches, the
    /// simulation) does itself.
    pub fn run_batch<O>(&mut self, batch: Vec<Job<O>>, now: Instant) -> Vec<O> {
        let mut outcomes = Vec::with_capacity(batch.len());
        self.run_batch_each(batch, now, |outcome| outcomes.push(outcome));
        outcomes
    }

    /// Runs `batch`, begun at `now`, and hands each job's outcome to `deliver`, in order, as soon as what
    /// the job wrote is durable: on SQLite after the batch's one commit; on Redis after the
    /// job itself, whose writes were one `MULTI`/`EXEC` of their own, durable at its reply.
    /// (Holding a Redis job's outcome until the rest of the batch had run, one round trip
    /// and fsync after another, delayed a REGISTER's 200 OK by up to the whole batch: after
    /// the other nodes had read its registration notice and sent their calls through.)
    pub fn run_batch_each<O>(
        &mut self,
        batch: Vec<Job<O>>,
        now: Instant,
        mut deliver: impl FnMut(O),
    ) {
        let began = match self {
            Store::Redis(_) => {
                for job in batch {
                    let done = job(self, now);
                    deliver(done(Ok(())));
                }
                return;
            }
            // One transaction; if it cannot even begin (the file locked by another process
            // past the busy timeout), each job runs on its own and its own result tells how
            // it went.
            Store::Sqlite(s) => s.begin(),
        };
        let dones: Vec<Done<O>> = batch.into_iter().map(|job| job(self, now)).collect();
        let committed = match self {
            Store::Sqlite(s) if began => s.commit(),
            _ => Ok(()),
        };
        for done in dones {
            deliver(done(committed.as_ref().map(|_| ())));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;
    use crate::store::{Change, ContactSpec, Register, StoreOptions};

    fn register(user: &str, cseq: u32) -> Register {
        Register {
            max_bindings: usize::MAX,
            call_id: format!("reg-{user}"),
            cseq,
            changes: vec![Change::Upsert {
                contact: ContactSpec::new(format!("sip:{user}@192.0.2.1:5060")),
                expires_at: 10_000,
            }],
        }
    }

    #[test]
    fn jobs_are_applied_in_order_and_reported_after_their_commit() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("b.db");
        let store = Store::open(&path, &StoreOptions::default()).expect("the store opens");
        let (tx, rx) = channel();
        let mut writer = Writer::start(vec![store], move |o| {
            let _ = tx.send(o);
        })
        .expect("the thread starts");
        for cseq in 1..=200 {
            writer.submit(
                move |s| s.apply("sip:alice@example.com", &register("alice", cseq), 1),
                move |r, committed| (cseq, committed.is_ok() && r.is_ok()),
            );
        }
        // An out-of-order REGISTER fails alone; the batch around it is kept.
        writer.submit(
            |s| s.apply("sip:alice@example.com", &register("alice", 5), 1),
            |r, _| (0, matches!(r, Err(StoreError::OutOfOrder { .. }))),
        );
        writer.submit(
            |s| s.apply("sip:bob@example.com", &register("bob", 1), 1),
            |r, committed| (1000, committed.is_ok() && r.is_ok()),
        );
        let outcomes: Vec<(u32, bool)> = (0..202)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("an outcome")
            })
            .collect();
        let mut expected: Vec<(u32, bool)> = (1..=200).map(|c| (c, true)).collect();
        expected.extend([(0, true), (1000, true)]);
        assert_eq!(outcomes, expected);
        for thread in writer.close() {
            thread.join().expect("the thread ends");
        }
        let store = Store::open(&path, &StoreOptions::default()).expect("reopens");
        let alice = store.bindings("sip:alice@example.com", 1).expect("reads");
        assert_eq!(alice.len(), 1);
        assert_eq!(alice[0].cseq, 200);
        assert_eq!(
            store
                .bindings("sip:bob@example.com", 1)
                .expect("reads")
                .len(),
            1
        );
    }
}
