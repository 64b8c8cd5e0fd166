//! The binding store: the registrar's bindings (RFC 3261 §10, RFC 5626, RFC 8599), kept so
//! that registrations survive a restart: in an embedded SQLite database ([`Sqlite`], the
//! default for one node) or in Redis ([`Redis`], shared by the nodes of a cluster). Both
//! run the same replacement rules ([`plan`]); [`Store`] is either.
//!
//! # What is stored
//!
//! One [`Binding`] per device and address-of-record: the Contact URI verbatim, its
//! `+sip.instance` / `reg-id`, the RFC 8599 push parameters (`pn-provider`, `pn-prid`,
//! `pn-param`), whether the UA advertised `+sip.pnsreg`, q, the Call-ID and CSeq of the last
//! REGISTER that touched it, and when it expires. The live flow (the connection the REGISTER
//! came on) is deliberately **not** stored: after a restart every binding is push-only until the
//! phone registers again.
//!
//! A binding's [`BindingId`] is the SQLite rowid (declared `AUTOINCREMENT`), or on Redis a
//! counter every node shares. It stays the same across restarts and across re-registrations
//! that replace the binding, and is never reused after the binding is removed, so it can
//! serve as the call-parking core's device id (`DeviceId(id.0)`).
//!
//! # Durability: `synchronous=FULL` by default (Redis: see [`Redis`])
//!
//! The database runs in WAL mode. [`Synchronous::Full`] (the default) fsyncs the WAL on every
//! commit: once [`Store::apply`] has returned `Ok`, the binding survives a process crash, an OS
//! crash and a power loss, so a 200 OK to a REGISTER is never a lie.
//!
//! [`Synchronous::Normal`] skips that fsync and syncs the WAL only at checkpoints. In WAL mode
//! that is still crash-consistent (the database is never corrupted) and every committed
//! transaction survives a *process* crash, because the WAL write has reached the OS before
//! `commit` returns; but an OS crash or power loss may roll back the transactions committed
//! since the last checkpoint (up to ~1000 pages of WAL, i.e. possibly many REGISTERs).
//!
//! FULL is the default because of who registers here: a sleeping iOS/Android app does not
//! re-register on its own; it wakes when pushed. A binding lost after a 200 OK makes the phone
//! silently unreachable (no pushes, no RFC 8599 §5.5 refresh push either) until the user next
//! opens the app. One WAL fsync per commit, shared by every REGISTER waiting ([`Writer`]), is a small price. Choose
//! NORMAL with [`StoreOptions::synchronous`] where throughput matters more than that window.
//!
//! # Calling it from tokio
//!
//! [`Store`] is synchronous and every call blocks on disk I/O (an fsync per write with FULL).
//! Never call it directly on an async worker thread. [`Writer`] moves it to a thread of its
//! own that serves jobs from a channel: SQLite allows only one writer at a time anyway, the
//! thread keeps the prepared-statement cache warm, jobs are applied in the order the SIP
//! layer sent them, and the jobs waiting when the thread wakes share one commit (group
//! commit), so with FULL a burst of REGISTERs pays one fsync, not one each. `Store` is
//! `Send` but not `Sync`.
//!
//! # Time
//!
//! Every time is unix seconds, passed in by the caller (`now`); the store never reads the
//! clock except to stamp when a schema migration ran.

mod notice;
mod plan;
mod redis;
mod schema;
mod sqlite;
mod uri;
mod writer;

pub use self::notice::{Follower, Notice, Version};
pub use self::redis::{Redis, RedisOptions};
pub use self::sqlite::Sqlite;
pub use self::writer::{Done, Job, Writer};

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A binding's id: the SQLite rowid, or the Redis counter's number. Stable across restarts
/// and replacements, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BindingId(pub u64);

impl fmt::Display for BindingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// RFC 8599 push parameters of a Contact.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PushParams {
    /// `pn-provider`, e.g. `apns` or `fcm`.
    pub provider: String,
    /// `pn-prid`: the push resource id (device token), as written in the URI.
    pub prid: String,
    /// `pn-param`, when the provider needs one (e.g. the APNs topic).
    pub param: Option<String>,
}

/// A stored registration: one device of one address-of-record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The id the call-parking core uses for this device.
    pub id: BindingId,
    /// The address-of-record, normalised `sip:user@domain`.
    pub aor: String,
    /// The Contact URI, verbatim (including its `pn-*` parameters).
    pub contact: String,
    /// `+sip.instance` (RFC 5626 / RFC 5627), if the UA sent one.
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626), if the UA sent one.
    pub reg_id: Option<u32>,
    /// The push parameters, if the Contact had `pn-provider` and `pn-prid`.
    pub push: Option<PushParams>,
    /// Whether the UA advertised `+sip.pnsreg` (it wants RFC 8599 §5.5 refresh pushes).
    pub pnsreg: bool,
    /// q in thousandths (`q=0.5` is 500), if given.
    pub q: Option<u16>,
    /// Call-ID of the last REGISTER that created or refreshed this binding.
    pub call_id: String,
    /// CSeq number of that REGISTER.
    pub cseq: u32,
    /// When the binding expires, unix seconds. Unexpired means `expires_at > now`.
    pub expires_at: u64,
    /// When the binding was last written, unix seconds.
    pub updated_at: u64,
    /// RFC 3327 Path: in a cluster, the node that holds the device's flow, as a route to
    /// that flow (`<sip:pp-…@node;transport=tcp;lr>`); other nodes send the device's
    /// INVITEs through it. `None` on a single node.
    #[serde(default)]
    pub path: Option<String>,
}

/// One Contact of a REGISTER, as the SIP layer parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactSpec {
    /// The Contact URI, verbatim, without the `<>`.
    pub contact: String,
    /// `+sip.instance` header parameter, as sent (e.g. `"<urn:uuid:…>"` unquoted or not, but the
    /// same way every time).
    pub instance: Option<String>,
    /// `reg-id` header parameter.
    pub reg_id: Option<u32>,
    /// The push parameters; [`ContactSpec::new`] fills them from the URI.
    pub push: Option<PushParams>,
    /// Whether `+sip.pnsreg` was present.
    pub pnsreg: bool,
    /// q in thousandths, 0..=1000.
    pub q: Option<u16>,
    /// The route to the device's flow through the node that took the REGISTER (see
    /// [`Binding::path`]).
    pub path: Option<String>,
}

impl ContactSpec {
    /// A Contact with no header parameters; `push` is read from the URI's `pn-provider`,
    /// `pn-prid` and `pn-param` parameters (both of the first two are needed).
    pub fn new(contact: impl Into<String>) -> Self {
        let contact = contact.into();
        let push = uri::push_params(&contact);
        ContactSpec {
            contact,
            instance: None,
            reg_id: None,
            push,
            pnsreg: false,
            q: None,
            path: None,
        }
    }

    /// Sets `+sip.instance`.
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Sets `reg-id`.
    pub fn reg_id(mut self, reg_id: u32) -> Self {
        self.reg_id = Some(reg_id);
        self
    }

    /// Sets whether `+sip.pnsreg` was present.
    pub fn pnsreg(mut self, pnsreg: bool) -> Self {
        self.pnsreg = pnsreg;
        self
    }

    /// Sets the route to the device's flow (RFC 3327 Path).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets q, in thousandths.
    pub fn q(mut self, q: u16) -> Self {
        self.q = Some(q);
        self
    }
}

/// One change that a REGISTER asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add the Contact, or replace the binding it matches (see [`Store::apply`]), until
    /// `expires_at`. An `expires_at` not after `now` removes it instead, like `expires=0`.
    Upsert {
        /// The Contact.
        contact: ContactSpec,
        /// Unix seconds.
        expires_at: u64,
    },
    /// Remove the binding this Contact matches (`expires=0`), if there is one.
    Remove(ContactSpec),
    /// `Contact: *` with `Expires: 0`: remove every binding of the AOR. Must be the only change.
    RemoveAll,
}

/// A whole REGISTER request, applied atomically by [`Store::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Register {
    /// The request's Call-ID.
    pub call_id: String,
    /// The request's CSeq number.
    pub cseq: u32,
    /// Its Contacts, in order.
    pub changes: Vec<Change>,
    /// The bindings the AOR may hold once it is applied: beyond, the REGISTER fails with
    /// [`StoreError::TooManyBindings`] and changes nothing.
    pub max_bindings: usize,
}

/// What [`Store::apply`] left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Every unexpired binding of the AOR after the REGISTER, ordered by id: what the 200 OK
    /// lists in its Contact header.
    pub bindings: Vec<Binding>,
    /// Ids of bindings that this REGISTER removed (explicitly, by `*`, or as stale duplicates of
    /// the same push token). The runtime should tell the core these devices are gone.
    pub removed: Vec<BindingId>,
    /// On Redis, the id of the registration notice this REGISTER appended: the AOR's
    /// [`Version`] now. `None` on SQLite.
    pub version: Option<String>,
}

/// SQLite's `synchronous` setting for a file database (WAL mode). See the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync the WAL at checkpoints only: survives a process crash, may lose the last commits
    /// on an OS crash or power loss.
    Normal,
    /// fsync the WAL on every commit: nothing acknowledged is lost, even on power loss.
    #[default]
    Full,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// How to open a [`Store`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Durability of commits; [`Synchronous::Full`] by default.
    pub synchronous: Synchronous,
    /// How long to wait for a lock held by another connection before failing with
    /// `SQLITE_BUSY`; 5 s by default.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::default(),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory for the database file could not be created.
    #[error("cannot create directory {} for the binding store: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be opened, configured or migrated (unwritable, not a database…).
    #[error("cannot open binding store {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// WAL mode could not be turned on (e.g. a file system without shared memory support).
    #[error("binding store {}: cannot enable WAL journal mode (SQLite kept {mode:?})", path.display())]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite reported instead.
        mode: String,
    },
    /// The database was written by a newer build.
    #[error("binding store {}: schema version {found} is newer than this build supports ({supported})", path.display())]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The REGISTER would leave the AOR more bindings than it may hold. Nothing of it was
    /// applied.
    #[error("{aor} would hold more than {max} bindings")]
    TooManyBindings {
        /// The AOR.
        aor: String,
        /// What it may hold.
        max: usize,
    },
    /// RFC 3261 §10.3 step 7: same Call-ID as the stored binding and a CSeq not greater.
    /// Nothing of the REGISTER was applied; answer it with an error (RFC 3261 says 500).
    #[error("out-of-order REGISTER: binding {id} was last written by Call-ID {call_id:?} CSeq {stored_cseq}, request has CSeq {cseq}")]
    OutOfOrder {
        /// The binding that is newer than the request.
        id: BindingId,
        /// The shared Call-ID.
        call_id: String,
        /// The stored CSeq.
        stored_cseq: u32,
        /// The request's CSeq.
        cseq: u32,
    },
    /// The caller passed something the store cannot hold. Nothing was applied.
    #[error("invalid binding change: {0}")]
    Invalid(String),
    /// The write was applied in a batch whose commit failed; none of the batch was kept.
    #[error("binding store: commit failed: {0}")]
    NotCommitted(String),
    /// Any other SQLite failure. The transaction was rolled back.
    #[error("binding store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Redis could not be used at start (a bad URL, unreachable, refused the password…).
    #[error("cannot use Redis {url} as the binding store: {problem}")]
    OpenRedis {
        /// The URL, without its password.
        url: String,
        /// Why.
        problem: String,
    },
    /// Redis would not make what it acknowledges durable (see [`Redis`]).
    #[error("Redis {url} cannot be the binding store: {problem}")]
    NotDurable {
        /// The URL, without its password.
        url: String,
        /// What it lacks.
        problem: String,
    },
    /// The store cannot serve now (Redis unreachable, timed out, loading…): nothing was
    /// changed; the same request may succeed later.
    #[error("binding store unavailable: {0}")]
    Unavailable(String),
    /// Redis refused a command for another reason. Nothing was changed.
    #[error("binding store: Redis: {0}")]
    Redis(String),
    /// Something stored is not what pushpark wrote there.
    #[error("binding store: {0}")]
    Corrupt(String),
}

/// The binding store, on either backend. See the module docs for durability and for how to
/// call it from async code.
#[derive(Debug)]
pub enum Store {
    /// One SQLite file: the default, for one node.
    Sqlite(Sqlite),
    /// Redis, shared by the nodes of a cluster.
    Redis(Box<Redis>),
}

/// Calls the same method on whichever backend `$store` is.
macro_rules! either {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Sqlite($s) => $call,
            Store::Redis($s) => $call,
        }
    };
}

impl Store {
    /// A SQLite store: see [`Sqlite::open`].
    pub fn open(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Store, StoreError> {
        Sqlite::open(path, options).map(Store::Sqlite)
    }

    /// A SQLite store in memory only (for tests): see [`Sqlite::open_in_memory`].
    pub fn open_in_memory(options: &StoreOptions) -> Result<Store, StoreError> {
        Sqlite::open_in_memory(options).map(Store::Sqlite)
    }

    /// A Redis store: see [`Redis::open`].
    pub fn open_redis(options: &RedisOptions) -> Result<Store, StoreError> {
        Redis::open(options).map(|r| Store::Redis(Box::new(r)))
    }

    /// Where the stream of registration notices ends now, on Redis: see
    /// [`Redis::notices_end`]. A SQLite store has none.
    pub fn notices_end(&self) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Redis(r) => r.notices_end().map(Some),
        }
    }

    /// The SQLite database file; `None` for one in memory, or on Redis.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Store::Sqlite(s) => s.path(),
            Store::Redis(_) => None,
        }
    }

    /// The secret called `name`: 32 random bytes made the first time it is asked for (by
    /// any node sharing the store), kept since.
    pub fn secret(&mut self, name: &str) -> Result<Vec<u8>, StoreError> {
        either!(self, s => s.secret(name))
    }

    /// The unexpired bindings (`expires_at > now`) of `aor`, ordered by id.
    pub fn bindings(&self, aor: &str, now: u64) -> Result<Vec<Binding>, StoreError> {
        either!(self, s => s.bindings(aor, now))
    }

    /// The binding with this id, expired or not, if it is still stored.
    pub fn binding(&self, id: BindingId) -> Result<Option<Binding>, StoreError> {
        either!(self, s => s.binding(id))
    }

    /// Applies a whole REGISTER for `aor` atomically: all of it or (on any error) nothing.
    ///
    /// Each Contact is matched to at most one existing binding of the AOR, by the first rule
    /// that finds one:
    /// 1. the same `+sip.instance` and the same `reg-id` (both absent counts as the same);
    /// 2. the same `pn-provider` + `pn-prid` (+ `pn-param`): the phone woke on a new address;
    /// 3. the same Contact URI without its `pn-*` parameters (the phone got a new token), unless
    ///    both carry different `+sip.instance`s (then they are different devices).
    ///
    /// A matched binding is updated in place and keeps its id. Any *other* binding of the AOR
    /// with the same push token is a stale duplicate of the same phone and is removed.
    ///
    /// RFC 3261 §10.3 step 7: if a matched (unexpired) binding was last written with the same
    /// Call-ID and a CSeq not lower than the request's, nothing is applied and
    /// [`StoreError::OutOfOrder`] is returned. [`Change::RemoveAll`] applies the same check to
    /// every binding it removes.
    pub fn apply(
        &mut self,
        aor: &str,
        register: &Register,
        now: u64,
    ) -> Result<Applied, StoreError> {
        either!(self, s => s.apply(aor, register, now))
    }

    /// Removes the binding with this id. Returns whether there was one.
    pub fn remove(&mut self, id: BindingId) -> Result<bool, StoreError> {
        either!(self, s => s.remove(id))
    }

    /// Clears the push parameters of binding `id`, but only if its `pn-prid` is still `prid`:
    /// the push service rejected that token, and the phone may have registered a new one
    /// meanwhile, which must be kept. Returns whether anything was cleared.
    pub fn forget_push_token(&mut self, id: BindingId, prid: &str) -> Result<bool, StoreError> {
        either!(self, s => s.forget_push_token(id, prid))
    }

    /// Deletes every binding that has expired (`expires_at <= now`). Returns how many.
    pub fn sweep_expired(&mut self, now: u64) -> Result<usize, StoreError> {
        either!(self, s => s.sweep_expired(now))
    }

    /// Bindings with `from <= expires_at < to`, ordered by expiry then id: candidates for an
    /// RFC 8599 §5.5 binding-refresh push. The caller filters on `pnsreg` / `push`.
    pub fn expiring_between(&self, from: u64, to: u64) -> Result<Vec<Binding>, StoreError> {
        either!(self, s => s.expiring_between(from, to))
    }

    /// How many bindings are stored, including expired ones not swept yet.
    pub fn count(&self) -> Result<usize, StoreError> {
        either!(self, s => s.count())
    }

    /// Whether this node is the one to send the refresh push of binding `id` for its expiry
    /// `expires_at`: on Redis the first node of the cluster to ask is, until `ttl` has
    /// passed; a SQLite file has one node.
    pub fn claim_refresh(
        &mut self,
        id: BindingId,
        expires_at: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(true),
            Store::Redis(s) => s.claim_refresh(id, expires_at, ttl),
        }
    }
}
