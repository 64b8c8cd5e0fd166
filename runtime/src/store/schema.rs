//! The database schema and its migrations.
//!
//! `schema_version` holds one row per migration that has been applied. Opening a store applies
//! the missing ones, in order, in one transaction, so a crash half-way leaves the database at
//! the old version. A database written by a newer build (a version this build does not know)
//! is refused rather than guessed at.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// Migrations in order: `(version, SQL)`. Versions start at 1 and have no gaps. Never edit a
/// migration that has shipped; add the next one.
pub(super) const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        // AUTOINCREMENT: a removed binding's id is never handed out again, so a device id that the
        // call-parking core still remembers can never come to name a different phone.
        "CREATE TABLE bindings (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        aor         TEXT NOT NULL,
        contact     TEXT NOT NULL,
        contact_key TEXT NOT NULL,
        instance    TEXT,
        reg_id      INTEGER CHECK (reg_id >= 0),
        pn_provider TEXT,
        pn_prid     TEXT,
        pn_param    TEXT,
        pnsreg      INTEGER NOT NULL CHECK (pnsreg IN (0, 1)),
        q           INTEGER CHECK (q BETWEEN 0 AND 1000),
        call_id     TEXT NOT NULL,
        cseq        INTEGER NOT NULL CHECK (cseq >= 0),
        expires_at  INTEGER NOT NULL CHECK (expires_at >= 0),
        updated_at  INTEGER NOT NULL CHECK (updated_at >= 0),
        CHECK ((pn_provider IS NULL) = (pn_prid IS NULL)),
        CHECK (pn_param IS NULL OR pn_prid IS NOT NULL)
    ) STRICT;
    CREATE INDEX bindings_by_aor ON bindings (aor);
    CREATE INDEX bindings_by_expiry ON bindings (expires_at);
    -- One binding per device and AOR: the replacement rules keep these true; the indexes make
    -- a bug in them fail loudly instead of leaving duplicate bindings behind.
    CREATE UNIQUE INDEX bindings_one_per_instance
        ON bindings (aor, instance, ifnull(reg_id, -1)) WHERE instance IS NOT NULL;
    CREATE UNIQUE INDEX bindings_one_per_push_token
        ON bindings (aor, pn_provider, pn_prid, ifnull(pn_param, '')) WHERE pn_prid IS NOT NULL;",
    ),
    (
        2,
        // The node's keys, made once: the route tokens in dialogs up at a restart must still
        // verify after it.
        "CREATE TABLE secrets (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL CHECK (length(value) >= 32)
    ) STRICT;",
    ),
    (
        3,
        // RFC 3327 Path: the node of a cluster that holds the device's flow.
        "ALTER TABLE bindings ADD COLUMN path TEXT;",
    ),
];

/// The schema version this build writes.
pub(super) fn latest() -> u32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// What [`migrate`] found wrong, before it is given the store's path.
pub(super) enum MigrateError {
    /// The database is at a version this build does not know.
    TooNew { found: u32 },
    /// SQLite failed.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sqlite(e)
    }
}

/// Bring the database up to [`latest`], applying each missing migration once. Returns the
/// number of migrations applied.
pub(super) fn migrate(conn: &mut Connection, now: u64) -> Result<usize, MigrateError> {
    // IMMEDIATE: two processes opening a fresh file at once must not both apply v1.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version    INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        ) STRICT;",
    )?;
    let current: u32 = tx
        .query_row("SELECT max(version) FROM schema_version", [], |r| {
            r.get::<_, Option<u32>>(0)
        })
        .optional()?
        .flatten()
        .unwrap_or(0);
    if current > latest() {
        return Err(MigrateError::TooNew { found: current });
    }
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let mut applied = 0;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            (version, now),
        )?;
        applied += 1;
    }
    tx.commit()?;
    Ok(applied)
}
