//! The binding store: the registrar's bindings (RFC 3261 §10, RFC 5626, RFC 8599), kept in an
//! embedded SQLite database so that registrations survive a restart.
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
//! A binding's [`BindingId`] is the SQLite rowid (declared `AUTOINCREMENT`). It stays the same
//! across restarts and across re-registrations that replace the binding, and is never reused
//! after the binding is removed, so it can serve as the call-parking core's device id
//! (`DeviceId(id.0)`).
//!
//! # Durability: `synchronous=FULL` by default
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

mod schema;
mod uri;
mod writer;

pub use self::writer::{Done, Job, Writer};

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};

/// A binding's id: the SQLite rowid. Stable across restarts and replacements, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindingId(pub u64);

impl fmt::Display for BindingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// RFC 8599 push parameters of a Contact.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PushParams {
    /// `pn-provider`, e.g. `apns` or `fcm`.
    pub provider: String,
    /// `pn-prid`: the push resource id (device token), as written in the URI.
    pub prid: String,
    /// `pn-param`, when the provider needs one (e.g. the APNs topic).
    pub param: Option<String>,
}

/// A stored registration: one device of one address-of-record.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// `SELECT` of the columns of a [`Binding`], in the order [`binding_from_row`] reads them,
/// followed by the rest of the statement: a literal, so no statement text is built per call.
macro_rules! select_bindings {
    ($rest:literal) => {
        concat!(
            "SELECT id, aor, contact, instance, reg_id, pn_provider, pn_prid, pn_param, \
             pnsreg, q, call_id, cseq, expires_at, updated_at FROM bindings ",
            $rest
        )
    };
}

/// The binding store: one SQLite connection. See the module docs for durability and for how
/// to call it from async code.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: Option<PathBuf>,
}

impl Store {
    /// Opens (creating if needed, with its parent directories) the database at `path`, turns on
    /// WAL mode and the chosen durability, and applies any missing schema migrations.
    ///
    /// Errors name `path`: [`StoreError::CreateDir`], [`StoreError::Open`] (unwritable, not a
    /// database, locked…), [`StoreError::NoWal`], [`StoreError::SchemaTooNew`].
    pub fn open(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // Push tokens and contacts are nobody else's business: a new database is readable by
        // its owner only, and SQLite gives its WAL and shared-memory files the same mode.
        create_private(&path).map_err(|source| StoreError::CreateDir {
            path: path.clone(),
            source,
        })?;
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(options.busy_timeout).map_err(open_err)?;
        // The first statement that reads the file: a non-database file fails here.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path, mode });
        }
        conn.pragma_update(None, "synchronous", options.synchronous.pragma_value())
            .map_err(open_err)?;
        Store::finish_open(conn, Some(path))
    }

    /// Opens a fresh database that lives in memory only (for tests). `options` are accepted for
    /// symmetry; durability and WAL do not apply.
    pub fn open_in_memory(options: &StoreOptions) -> Result<Store, StoreError> {
        let memory = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: memory.clone(),
            source,
        })?;
        conn.busy_timeout(options.busy_timeout)?;
        Store::finish_open(conn, None)
    }

    fn finish_open(mut conn: Connection, path: Option<PathBuf>) -> Result<Store, StoreError> {
        let shown = path.clone().unwrap_or_else(|| PathBuf::from(":memory:"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match schema::migrate(&mut conn, now) {
            Ok(_) => Ok(Store { conn, path }),
            Err(schema::MigrateError::TooNew { found }) => Err(StoreError::SchemaTooNew {
                path: shown,
                found,
                supported: schema::latest(),
            }),
            Err(schema::MigrateError::Sqlite(source)) => Err(StoreError::Open {
                path: shown,
                source,
            }),
        }
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| {
                r.get::<_, Option<u32>>(0)
            })?
            .unwrap_or(0))
    }

    /// The secret called `name`: 32 random bytes made the first time it is asked for, kept
    /// since (two processes asking at once get the same one).
    pub fn secret(&mut self, name: &str) -> Result<Vec<u8>, StoreError> {
        let mut fresh = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut fresh);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
            params![name, fresh],
        )?;
        let value: Vec<u8> =
            tx.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })?;
        tx.commit()?;
        Ok(value)
    }

    /// The unexpired bindings (`expires_at > now`) of `aor`, ordered by id.
    pub fn bindings(&self, aor: &str, now: u64) -> Result<Vec<Binding>, StoreError> {
        bindings_of(&self.conn, aor, now)
    }

    /// The binding with this id, expired or not, if it is still stored.
    pub fn binding(&self, id: BindingId) -> Result<Option<Binding>, StoreError> {
        let Some(id) = sql_id(id) else {
            return Ok(None);
        };
        let sql = select_bindings!("WHERE id = ?1");
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row([id], binding_from_row)
            .optional()?)
    }

    /// Applies a whole REGISTER for `aor` in one transaction: all of it or (on any error)
    /// nothing.
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
        validate(aor, register)?;
        // A savepoint: its own transaction when called alone, or one part of the writer's
        // batch (see `writer`), rolled back alone if this REGISTER fails. Its statements
        // are prepared once, like every other: parsing SQL per REGISTER shows in profiles.
        run_cached(&self.conn, "SAVEPOINT apply")?;
        match apply_changes(&self.conn, aor, register, now) {
            Ok(applied) => {
                run_cached(&self.conn, "RELEASE apply")?;
                Ok(applied)
            }
            Err(e) => {
                // What failed is the error to report; SQLite may have rolled back already.
                let _ = run_cached(&self.conn, "ROLLBACK TO apply");
                let _ = run_cached(&self.conn, "RELEASE apply");
                Err(e)
            }
        }
    }

    /// Removes the binding with this id. Returns whether there was one.
    pub fn remove(&mut self, id: BindingId) -> Result<bool, StoreError> {
        let Some(id) = sql_id(id) else {
            return Ok(false);
        };
        Ok(delete(&self.conn, id)? > 0)
    }

    /// Clears the push parameters of binding `id`, but only if its `pn-prid` is still `prid`:
    /// the push service rejected that token, and the phone may have registered a new one
    /// meanwhile, which must be kept. Returns whether anything was cleared.
    pub fn forget_push_token(&mut self, id: BindingId, prid: &str) -> Result<bool, StoreError> {
        let Some(id) = sql_id(id) else {
            return Ok(false);
        };
        let n = self
            .conn
            .prepare_cached(
                "UPDATE bindings SET pn_provider = NULL, pn_prid = NULL, pn_param = NULL \
             WHERE id = ?1 AND pn_prid = ?2",
            )?
            .execute(params![id, prid])?;
        Ok(n > 0)
    }

    /// Deletes every binding that has expired (`expires_at <= now`). Returns how many.
    pub fn sweep_expired(&mut self, now: u64) -> Result<usize, StoreError> {
        let now = to_sql_u64(now, "now")?;
        Ok(self
            .conn
            .prepare_cached("DELETE FROM bindings WHERE expires_at <= ?1")?
            .execute([now])?)
    }

    /// Bindings with `from <= expires_at < to`, ordered by expiry then id: candidates for an
    /// RFC 8599 §5.5 binding-refresh push. The caller filters on `pnsreg` / `push`.
    pub fn expiring_between(&self, from: u64, to: u64) -> Result<Vec<Binding>, StoreError> {
        let from = to_sql_u64(from, "from")?;
        let to = to_sql_u64(to, "to")?;
        let sql =
            select_bindings!("WHERE expires_at >= ?1 AND expires_at < ?2 ORDER BY expires_at, id");
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([from, to], binding_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many bindings are stored, including expired ones not swept yet.
    pub fn count(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM bindings", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Checks a REGISTER before touching the database.
fn validate(aor: &str, register: &Register) -> Result<(), StoreError> {
    let invalid = |m: &str| Err(StoreError::Invalid(m.to_owned()));
    if aor.is_empty() {
        return invalid("empty AOR");
    }
    if register.call_id.is_empty() {
        return invalid("empty Call-ID");
    }
    if register.changes.len() > 1 && register.changes.contains(&Change::RemoveAll) {
        return invalid("Contact: * must be the only Contact (RFC 3261 §10.3 step 6)");
    }
    for change in &register.changes {
        let spec = match change {
            Change::Upsert { contact, .. } | Change::Remove(contact) => contact,
            Change::RemoveAll => continue,
        };
        if spec.contact.is_empty() {
            return invalid("empty Contact URI");
        }
        if spec.q.is_some_and(|q| q > 1000) {
            return invalid("q above 1000 thousandths");
        }
        if spec
            .push
            .as_ref()
            .is_some_and(|p| p.prid.is_empty() || p.provider.is_empty())
        {
            return invalid("empty pn-provider or pn-prid");
        }
    }
    Ok(())
}

/// What matching needs of an existing binding.
struct MatchRow {
    id: i64,
    call_id: String,
    cseq: u32,
    expires_at: i64,
}

impl MatchRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<MatchRow> {
        Ok(MatchRow {
            id: r.get(0)?,
            call_id: r.get(1)?,
            cseq: r.get(2)?,
            expires_at: r.get(3)?,
        })
    }

    fn binding_id(&self) -> Result<BindingId, StoreError> {
        to_binding_id(self.id)
    }

    /// RFC 3261 §10.3 step 7. An expired binding no longer exists as far as the RFC is
    /// concerned, and one this request already wrote is not out of order with it.
    fn check_order(
        &self,
        register: &Register,
        now: i64,
        touched: &HashSet<i64>,
    ) -> Result<(), StoreError> {
        if self.expires_at > now
            && !touched.contains(&self.id)
            && self.call_id == register.call_id
            && self.cseq >= register.cseq
        {
            return Err(StoreError::OutOfOrder {
                id: self.binding_id()?,
                call_id: self.call_id.clone(),
                stored_cseq: self.cseq,
                cseq: register.cseq,
            });
        }
        Ok(())
    }
}

/// What [`Store::apply`] does inside its savepoint.
fn apply_changes(
    tx: &Connection,
    aor: &str,
    register: &Register,
    now: u64,
) -> Result<Applied, StoreError> {
    let now_sql = to_sql_u64(now, "now")?;
    let mut removed = Vec::new();
    // Bindings this request already wrote: its own Call-ID/CSeq on them is not "out of order".
    let mut touched = HashSet::new();
    for change in &register.changes {
        match change {
            Change::RemoveAll => {
                let rows = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT id, call_id, cseq, expires_at FROM bindings WHERE aor = ?1",
                    )?;
                    let rows = stmt
                        .query_map([aor], MatchRow::from_row)?
                        .collect::<Result<Vec<_>, _>>()?;
                    rows
                };
                for row in rows {
                    row.check_order(register, now_sql, &touched)?;
                    delete(tx, row.id)?;
                    removed.push(row.binding_id()?);
                }
            }
            Change::Remove(spec) => {
                if let Some(row) = find_match(tx, aor, spec)? {
                    row.check_order(register, now_sql, &touched)?;
                    delete(tx, row.id)?;
                    removed.push(row.binding_id()?);
                }
            }
            Change::Upsert {
                contact,
                expires_at,
            } => {
                let expires_sql = to_sql_u64(*expires_at, "expires_at")?;
                let found = find_match(tx, aor, contact)?;
                if let Some(row) = &found {
                    row.check_order(register, now_sql, &touched)?;
                }
                if expires_sql <= now_sql {
                    if let Some(row) = found {
                        delete(tx, row.id)?;
                        removed.push(row.binding_id()?);
                    }
                    continue;
                }
                let keep = found.as_ref().map(|r| r.id);
                for dup in push_duplicates(tx, aor, contact, keep)? {
                    delete(tx, dup)?;
                    removed.push(to_binding_id(dup)?);
                }
                let id = write_binding(tx, keep, aor, contact, register, expires_sql, now_sql)?;
                touched.insert(id);
            }
        }
    }
    let bindings = bindings_of(tx, aor, now)?;
    if bindings.len() > register.max_bindings {
        return Err(StoreError::TooManyBindings {
            aor: aor.to_owned(),
            max: register.max_bindings,
        });
    }
    Ok(Applied { bindings, removed })
}

/// Creates `path` empty with mode 0600 if it does not exist; leaves an existing file alone.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs a statement without parameters, prepared once per connection.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute([])
}

/// The existing binding of `aor` that `spec` replaces, by the rules of [`Store::apply`].
fn find_match(
    tx: &Connection,
    aor: &str,
    spec: &ContactSpec,
) -> Result<Option<MatchRow>, StoreError> {
    const SELECT: &str = "SELECT id, call_id, cseq, expires_at FROM bindings WHERE aor = ?1 AND ";
    if let Some(instance) = &spec.instance {
        let sql = format!("{SELECT} instance = ?2 AND reg_id IS ?3");
        let row = tx
            .prepare_cached(&sql)?
            .query_row(params![aor, instance, spec.reg_id], MatchRow::from_row)
            .optional()?;
        if row.is_some() {
            return Ok(row);
        }
    }
    if let Some(push) = &spec.push {
        let sql = format!("{SELECT} pn_provider = ?2 AND pn_prid = ?3 AND pn_param IS ?4");
        let row = tx
            .prepare_cached(&sql)?
            .query_row(
                params![aor, push.provider, push.prid, push.param],
                MatchRow::from_row,
            )
            .optional()?;
        if row.is_some() {
            return Ok(row);
        }
    }
    let sql = format!(
        "{SELECT} contact_key = ?2 AND (instance IS NULL OR ?3 IS NULL OR instance = ?3) \
         ORDER BY id LIMIT 1"
    );
    Ok(tx
        .prepare_cached(&sql)?
        .query_row(
            params![aor, uri::contact_key(&spec.contact), spec.instance],
            MatchRow::from_row,
        )
        .optional()?)
}

/// Other bindings of `aor` (not `keep`) holding the same push token as `spec`.
fn push_duplicates(
    tx: &Connection,
    aor: &str,
    spec: &ContactSpec,
    keep: Option<i64>,
) -> Result<Vec<i64>, StoreError> {
    let Some(push) = &spec.push else {
        return Ok(Vec::new());
    };
    let mut stmt = tx.prepare_cached(
        "SELECT id FROM bindings WHERE aor = ?1 AND pn_provider = ?2 AND pn_prid = ?3 \
         AND pn_param IS ?4 AND id IS NOT ?5",
    )?;
    let ids = stmt
        .query_map(
            params![aor, push.provider, push.prid, push.param, keep],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Inserts a binding, or overwrites binding `id` keeping its id. Returns the id.
fn write_binding(
    tx: &Connection,
    id: Option<i64>,
    aor: &str,
    spec: &ContactSpec,
    register: &Register,
    expires_at: i64,
    now: i64,
) -> Result<i64, StoreError> {
    let push = spec.push.as_ref();
    let values = params![
        id,
        aor,
        spec.contact,
        uri::contact_key(&spec.contact),
        spec.instance,
        spec.reg_id,
        push.map(|p| &p.provider),
        push.map(|p| &p.prid),
        push.and_then(|p| p.param.as_ref()),
        spec.pnsreg,
        spec.q,
        register.call_id,
        register.cseq,
        expires_at,
        now,
    ];
    let sql = "INSERT INTO bindings (id, aor, contact, contact_key, instance, reg_id, \
               pn_provider, pn_prid, pn_param, pnsreg, q, call_id, cseq, expires_at, updated_at) \
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
               ON CONFLICT (id) DO UPDATE SET contact = excluded.contact, \
               contact_key = excluded.contact_key, instance = excluded.instance, \
               reg_id = excluded.reg_id, pn_provider = excluded.pn_provider, \
               pn_prid = excluded.pn_prid, pn_param = excluded.pn_param, \
               pnsreg = excluded.pnsreg, q = excluded.q, call_id = excluded.call_id, \
               cseq = excluded.cseq, expires_at = excluded.expires_at, \
               updated_at = excluded.updated_at \
               RETURNING id";
    Ok(tx.prepare_cached(sql)?.query_row(values, |r| r.get(0))?)
}

fn delete(conn: &Connection, id: i64) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM bindings WHERE id = ?1")?
        .execute([id])?)
}

fn bindings_of(conn: &Connection, aor: &str, now: u64) -> Result<Vec<Binding>, StoreError> {
    // Expiry is filtered here, not in SQL: with the range in the statement, SQLite's STAT4
    // planner re-prepares it on every call.
    let mut stmt = conn.prepare_cached(select_bindings!("WHERE aor = ?1 ORDER BY id"))?;
    let rows = stmt.query_map([aor], binding_from_row)?;
    let mut bindings = Vec::new();
    for binding in rows {
        let binding = binding?;
        if binding.expires_at > now {
            bindings.push(binding);
        }
    }
    Ok(bindings)
}

/// Reads a [`Binding`] from a row selected with [`select_bindings`]. Values outside the Rust types'
/// ranges come back as SQLite conversion errors rather than panics.
fn binding_from_row(r: &Row<'_>) -> rusqlite::Result<Binding> {
    let provider: Option<String> = r.get(5)?;
    let prid: Option<String> = r.get(6)?;
    let push = match (provider, prid) {
        (Some(provider), Some(prid)) => Some(PushParams {
            provider,
            prid,
            param: r.get(7)?,
        }),
        _ => None,
    };
    Ok(Binding {
        id: BindingId(get_u64(r, 0)?),
        aor: r.get(1)?,
        contact: r.get(2)?,
        instance: r.get(3)?,
        reg_id: r.get(4)?,
        push,
        pnsreg: r.get(8)?,
        q: r.get(9)?,
        call_id: r.get(10)?,
        cseq: r.get(11)?,
        expires_at: get_u64(r, 12)?,
        updated_at: get_u64(r, 13)?,
    })
}

fn get_u64(r: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

fn to_sql_u64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Invalid(format!("{what} = {v} does not fit in SQLite")))
}

fn to_binding_id(id: i64) -> Result<BindingId, StoreError> {
    u64::try_from(id)
        .map(BindingId)
        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, id).into())
}

/// The rowid for `id`; `None` when no row can have it.
fn sql_id(id: BindingId) -> Option<i64> {
    i64::try_from(id.0).ok()
}
