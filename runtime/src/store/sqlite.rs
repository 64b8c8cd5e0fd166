//! The SQLite backend: one embedded database file, the default for a single node. See the
//! module documentation of [`super`] for durability and for how to call it from tokio.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::plan::{self, Slot};
use super::{schema, uri, Applied, Binding, BindingId, PushParams, Register};
use super::{StoreError, StoreOptions};

/// `SELECT` of the columns of a [`Binding`], in the order [`binding_from_row`] reads them,
/// followed by the rest of the statement: a literal, so no statement text is built per call.
macro_rules! select_bindings {
    ($rest:literal) => {
        concat!(
            "SELECT id, aor, contact, instance, reg_id, pn_provider, pn_prid, pn_param, \
             pnsreg, q, call_id, cseq, expires_at, updated_at, path FROM bindings ",
            $rest
        )
    };
}

/// The binding store: one SQLite connection. See the module docs for durability and for how
/// to call it from async code.
#[derive(Debug)]
pub struct Sqlite {
    pub(super) conn: Connection,
    path: Option<PathBuf>,
}

impl Sqlite {
    /// Opens (creating if needed, with its parent directories) the database at `path`, turns on
    /// WAL mode and the chosen durability, and applies any missing schema migrations.
    ///
    /// Errors name `path`: [`StoreError::CreateDir`], [`StoreError::Open`] (unwritable, not a
    /// database, locked…), [`StoreError::NoWal`], [`StoreError::SchemaTooNew`].
    pub fn open(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Self, StoreError> {
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
        Self::finish_open(conn, Some(path))
    }

    /// Opens a fresh database that lives in memory only (for tests). `options` are accepted for
    /// symmetry; durability and WAL do not apply.
    pub fn open_in_memory(options: &StoreOptions) -> Result<Self, StoreError> {
        let memory = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: memory.clone(),
            source,
        })?;
        conn.busy_timeout(options.busy_timeout)?;
        Self::finish_open(conn, None)
    }

    fn finish_open(mut conn: Connection, path: Option<PathBuf>) -> Result<Self, StoreError> {
        let shown = path.clone().unwrap_or_else(|| PathBuf::from(":memory:"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match schema::migrate(&mut conn, now) {
            Ok(_) => Ok(Self { conn, path }),
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

    /// Begins the transaction of a writer's batch; whether it began.
    pub(super) fn begin(&self) -> bool {
        run_cached(&self.conn, "BEGIN IMMEDIATE").is_ok()
    }

    /// Commits the batch's transaction, or rolls it back when the commit fails.
    pub(super) fn commit(&self) -> Result<(), StoreError> {
        run_cached(&self.conn, "COMMIT").map(drop).map_err(|e| {
            let _ = run_cached(&self.conn, "ROLLBACK");
            StoreError::NotCommitted(e.to_string())
        })
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

    /// [`super::Store::apply`], in one savepoint: its own transaction when called alone, or
    /// one part of the writer's batch (see `writer`), rolled back alone if this REGISTER
    /// fails. Its statements are prepared once, like every other: parsing SQL per REGISTER
    /// shows in profiles.
    pub fn apply(
        &mut self,
        aor: &str,
        register: &Register,
        now: u64,
    ) -> Result<Applied, StoreError> {
        plan::validate(aor, register)?;
        run_cached(&self.conn, "SAVEPOINT apply")?;
        match apply_plan(&self.conn, aor, register, now) {
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

/// What [`Sqlite::apply`] does inside its savepoint: reads every binding of the AOR, plans,
/// then deletes what the plan removes and writes what it wrote.
fn apply_plan(
    conn: &Connection,
    aor: &str,
    register: &Register,
    now: u64,
) -> Result<Applied, StoreError> {
    let stored = {
        let mut stmt = conn.prepare_cached(select_bindings!("WHERE aor = ?1 ORDER BY id"))?;
        let rows = stmt.query_map([aor], binding_from_row)?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let mut plan = plan::plan(aor, register, now, stored)?;
    for id in &plan.removed {
        if let Some(id) = sql_id(*id) {
            delete(conn, id)?;
        }
    }
    for entry in plan.entries.iter_mut().filter(|e| e.written) {
        let id = match entry.slot {
            Slot::Stored(id) => sql_id(id),
            Slot::New(_) => None,
        };
        entry.binding.id = to_binding_id(write_binding(conn, id, &entry.binding)?)?;
    }
    Ok(Applied {
        bindings: plan.bindings(now),
        removed: plan.removed,
        version: None,
    })
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

/// Inserts `binding` (its `id` ignored), or overwrites binding `id` keeping its id. Returns
/// the id.
fn write_binding(conn: &Connection, id: Option<i64>, binding: &Binding) -> Result<i64, StoreError> {
    let push = binding.push.as_ref();
    let values = params![
        id,
        binding.aor,
        binding.contact,
        uri::contact_key(&binding.contact),
        binding.instance,
        binding.reg_id,
        push.map(|p| &p.provider),
        push.map(|p| &p.prid),
        push.and_then(|p| p.param.as_ref()),
        binding.pnsreg,
        binding.q,
        binding.call_id,
        binding.cseq,
        to_sql_u64(binding.expires_at, "expires_at")?,
        to_sql_u64(binding.updated_at, "now")?,
        binding.path,
    ];
    let sql = "INSERT INTO bindings (id, aor, contact, contact_key, instance, reg_id, \
               pn_provider, pn_prid, pn_param, pnsreg, q, call_id, cseq, expires_at, updated_at, \
               path) \
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
               ON CONFLICT (id) DO UPDATE SET contact = excluded.contact, \
               contact_key = excluded.contact_key, instance = excluded.instance, \
               reg_id = excluded.reg_id, pn_provider = excluded.pn_provider, \
               pn_prid = excluded.pn_prid, pn_param = excluded.pn_param, \
               pnsreg = excluded.pnsreg, q = excluded.q, call_id = excluded.call_id, \
               cseq = excluded.cseq, expires_at = excluded.expires_at, \
               updated_at = excluded.updated_at, path = excluded.path \
               RETURNING id";
    Ok(conn.prepare_cached(sql)?.query_row(values, |r| r.get(0))?)
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
        path: r.get(14)?,
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
