//! The Redis backend: bindings shared by every node of a cluster (`[store] backend =
//! "redis"`), with the semantics of the SQLite one.
//!
//! # Keys
//!
//! Every key starts with the configured prefix `P` (`pushpark:` by default), so one Redis
//! database can hold other data, or several deployments:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P` `aor:` *aor* | hash | binding id → the binding (JSON), expired ones until swept |
//! | `P` `aors` | hash | binding id → its AOR: what `binding`, `remove` and `forget_push_token` find by |
//! | `P` `expiry` | sorted set | binding id, scored by when it expires: the sweep and the start |
//! | `P` `next_id` | counter | the last binding id handed out ([`super::BindingId`]s are never reused) |
//! | `P` `secret:` *name* | string | the node secret, made by the first node that asks |
//! | `P` `refresh:` *id* `:` *expiry* | string | which node sends that refresh push (expires) |
//! | `P` `registered` | stream | registration notices ([`super::notice`]), about 100,000 kept |
//!
//! # Atomicity
//!
//! A REGISTER is planned in Rust ([`super::plan`], shared with SQLite) between `WATCH` of
//! its AOR's hash and a `MULTI`/`EXEC` that writes the outcome to all three structures: if
//! another node changed the AOR meanwhile, `EXEC` does nothing and the REGISTER is planned
//! again from what is stored now. Every other write to an AOR's bindings goes the same
//! way, so two nodes never interleave their changes to one AOR. One Redis server (with
//! replicas and Sentinel for failover) is assumed, not Redis Cluster: the keys of a write
//! are not in one hash slot.
//!
//! # Durability
//!
//! A REGISTER's 200 OK waits for Redis's reply to its `EXEC`. That reply means durable only
//! when Redis writes and fsyncs its append-only file before it answers: `appendonly yes`
//! and `appendfsync always` (Redis then fsyncs once per event-loop turn, for every client's
//! writes of that turn: group commit on the server's side). With `require_fsync` on (the
//! default) pushpark checks both settings when it connects and refuses a Redis without
//! them; see the README's cluster section.
//!
//! # Failures
//!
//! The connection is made when first needed and again after any failure, with the
//! configured timeout for connecting, reading and writing. While Redis cannot be reached,
//! every operation fails at once with [`StoreError::Unavailable`] (a REGISTER gets 503 with
//! Retry-After); nothing is retried behind the caller's back.

use std::cell::RefCell;
use std::time::Duration;

use redis::{Commands, Connection, Pipeline, RedisError};

use super::notice::{self, Notice};
use super::plan::{self, Slot};
use super::{Applied, Binding, BindingId, Register, StoreError};

/// How often a write to one AOR is planned again when other nodes keep changing the AOR
/// under it, before it fails as unavailable (after a third of a second of back-off at most).
const MAX_ATTEMPTS: usize = 16;

/// How to reach Redis: `[store]` of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS, or
    /// `redis+unix:///path`.
    pub url: String,
    /// What every key starts with.
    pub prefix: String,
    /// For connecting, and for each reply.
    pub timeout: Duration,
    /// Refuse a Redis that does not fsync its append-only file before it answers.
    pub require_fsync: bool,
    /// This run of this node: what its registration notices are signed with, so that it
    /// skips its own.
    pub node: u64,
    /// For `rediss://`: the authority (PEM) Redis's certificate chains to, instead of the
    /// system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl RedisOptions {
    /// A client for these options (not connected yet).
    pub(super) fn client(&self) -> Result<redis::Client, String> {
        if self.url.starts_with("rediss://") {
            // rustls needs a process-wide provider when more than one is linked (a2 links
            // ring): the one the SIP listeners use. Another already installed is kept.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let Some(ca_file) = &self.ca_file else {
            return redis::Client::open(self.url.as_str())
                .map_err(|e| format!("not a Redis URL: {e}"));
        };
        let pem = std::fs::read(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        };
        redis::Client::build_with_tls(self.url.as_str(), certificates)
            .map_err(|e| format!("{}: {e}", ca_file.display()))
    }
}

/// The binding store on Redis. See the module documentation.
pub struct Redis {
    client: redis::Client,
    /// Made when first needed, and again after a failure.
    con: RefCell<Option<Connection>>,
    keys: Keys,
    node: u64,
    timeout: Duration,
    require_fsync: bool,
    /// The URL without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.shown).finish()
    }
}

impl Redis {
    /// Connects, and checks that Redis makes what it acknowledges durable (unless
    /// `require_fsync` is off). Errors name the URL (without its password).
    pub fn open(options: &RedisOptions) -> Result<Self, StoreError> {
        let shown = without_password(&options.url);
        let open_error = |problem: String| StoreError::OpenRedis {
            url: shown.clone(),
            problem,
        };
        let client = options.client().map_err(open_error)?;
        let redis = Redis {
            client,
            con: RefCell::new(None),
            keys: Keys(options.prefix.clone()),
            node: options.node,
            timeout: options.timeout,
            require_fsync: options.require_fsync,
            shown: shown.clone(),
        };
        match redis.run(|_, _| Ok(())) {
            Ok(()) => Ok(redis),
            Err(StoreError::Unavailable(problem)) => Err(open_error(problem)),
            Err(e) => Err(e),
        }
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Where the stream of registration notices ends now: a node takes it before it loads
    /// the bindings, and reads the notices from there, so that every REGISTER stored on
    /// another node is in what it loaded or in a notice it reads (at worst both).
    pub fn notices_end(&self) -> Result<String, StoreError> {
        self.run(|con, keys| {
            let newest =
                notice::edge(con, &keys.notices(), notice::Edge::Newest).map_err(failed)?;
            Ok(newest.unwrap_or_else(|| "0-0".to_owned()))
        })
    }

    /// A new connection, checked.
    fn connect(&self) -> Result<Connection, StoreError> {
        let unavailable = |e: RedisError| StoreError::Unavailable(e.to_string());
        let mut con = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(unavailable)?;
        con.set_read_timeout(Some(self.timeout))
            .map_err(unavailable)?;
        con.set_write_timeout(Some(self.timeout))
            .map_err(unavailable)?;
        if self.require_fsync {
            check_fsync(&mut con, &self.shown)?;
        }
        Ok(con)
    }

    /// Runs `f` on the connection, made first if there is none; a failure to reach Redis
    /// drops the connection (the next call makes a new one) and is
    /// [`StoreError::Unavailable`].
    fn run<T>(
        &self,
        f: impl FnOnce(&mut Connection, &Keys) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.con.borrow_mut();
        let con = match &mut *slot {
            Some(con) => con,
            None => slot.insert(self.connect()?),
        };
        let result = f(con, &self.keys);
        if matches!(result, Err(StoreError::Unavailable(_))) {
            *slot = None;
        }
        result
    }

    /// The secret called `name`: 32 random bytes made by the first node that asks, the same
    /// for every node since.
    pub fn secret(&mut self, name: &str) -> Result<Vec<u8>, StoreError> {
        let mut fresh = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut fresh);
        self.run(|con, keys| {
            let key = keys.secret(name);
            let _: bool = redis::cmd("SET")
                .arg(&key)
                .arg(&fresh)
                .arg("NX")
                .query(con)
                .map_err(failed)?;
            con.get(&key).map_err(failed)
        })
    }

    /// The unexpired bindings (`expires_at > now`) of `aor`, ordered by id.
    pub fn bindings(&self, aor: &str, now: u64) -> Result<Vec<Binding>, StoreError> {
        self.run(|con, keys| {
            let mut all = read_aor(con, &keys.aor(aor))?;
            all.retain(|b| b.expires_at > now);
            Ok(all)
        })
    }

    /// The binding with this id, expired or not, if it is still stored.
    pub fn binding(&self, id: BindingId) -> Result<Option<Binding>, StoreError> {
        self.run(|con, keys| {
            let Some(aor) = aor_of(con, keys, id)? else {
                return Ok(None);
            };
            let json: Option<Vec<u8>> = con.hget(keys.aor(&aor), id.0).map_err(failed)?;
            json.map(|j| decode(&j)).transpose()
        })
    }

    /// [`super::Store::apply`]: planned against the AOR's bindings as stored, written in one
    /// `MULTI`/`EXEC` that happens only if nobody changed them meanwhile.
    pub fn apply(
        &mut self,
        aor: &str,
        register: &Register,
        now: u64,
    ) -> Result<Applied, StoreError> {
        plan::validate(aor, register)?;
        self.run(|con, keys| {
            let key = keys.aor(aor);
            let read = redis::cmd("HGETALL").arg(&key).to_owned();
            watched(con, &key, &read, |con, stored, pipe| {
                let mut plan = plan::plan(aor, register, now, decode_all(stored)?)?;
                for id in &plan.removed {
                    unlink(pipe, keys, &key, *id);
                }
                let mut written = Vec::new();
                for entry in plan.entries.iter_mut().filter(|e| e.written) {
                    if let Slot::New(_) = entry.slot {
                        // Handed out before the transaction: one lost to a conflict is
                        // never used, which is all ids need.
                        let id: u64 = con.incr(keys.next_id(), 1).map_err(failed)?;
                        entry.binding.id = BindingId(id);
                    }
                    link(pipe, keys, &key, &entry.binding)?;
                    written.push(entry.binding.id);
                }
                let applied = Applied {
                    bindings: plan.bindings(now),
                    removed: plan.removed,
                    version: None,
                };
                // The other nodes learn of it in the same transaction: never a binding
                // without its notice, nor a notice of a binding not stored.
                let notice = Notice {
                    id: String::new(),
                    origin: self.node,
                    aor: aor.to_owned(),
                    bindings: applied.bindings.clone(),
                    removed: applied.removed.clone(),
                    written,
                };
                notice.append(pipe, &keys.notices())?;
                Ok(applied)
            })
            .map(|(mut applied, replies)| {
                // The notice's id: the AOR's version, which notices older than it lose to.
                applied.version = match replies.first() {
                    Some(redis::Value::BulkString(id)) => String::from_utf8(id.clone()).ok(),
                    Some(redis::Value::SimpleString(id)) => Some(id.clone()),
                    _ => None,
                };
                applied
            })
        })
    }

    /// Removes the binding with this id. Returns whether there was one.
    pub fn remove(&mut self, id: BindingId) -> Result<bool, StoreError> {
        self.change(id, |_| None)
    }

    /// Clears the push parameters of binding `id`, but only if its `pn-prid` is still `prid`.
    /// Returns whether anything was cleared.
    pub fn forget_push_token(&mut self, id: BindingId, prid: &str) -> Result<bool, StoreError> {
        self.change(id, |binding| {
            let same = binding.push.as_ref().is_some_and(|p| p.prid == prid);
            same.then(|| {
                Some(Binding {
                    push: None,
                    ..binding.clone()
                })
            })
        })
    }

    /// Deletes every binding that has expired (`expires_at <= now`). Returns how many.
    pub fn sweep_expired(&mut self, now: u64) -> Result<usize, StoreError> {
        let due: Vec<u64> = self.run(|con, keys| {
            con.zrangebyscore(keys.expiry(), "-inf", now)
                .map_err(failed)
        })?;
        let mut swept = 0;
        for id in due {
            // Another node may have refreshed it since: only what is still expired goes.
            let gone = self.change(BindingId(id), |b| (b.expires_at <= now).then_some(None))?;
            swept += usize::from(gone);
        }
        Ok(swept)
    }

    /// Bindings with `from <= expires_at < to`, ordered by expiry then id.
    pub fn expiring_between(&self, from: u64, to: u64) -> Result<Vec<Binding>, StoreError> {
        self.run(|con, keys| {
            let ids: Vec<u64> = con
                .zrangebyscore(keys.expiry(), from, format!("({to}"))
                .map_err(failed)?;
            let mut found = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(512) {
                let aors: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg(keys.aors())
                    .arg(chunk)
                    .query(con)
                    .map_err(failed)?;
                let mut pipe = redis::pipe();
                for (id, aor) in chunk.iter().zip(&aors) {
                    if let Some(aor) = aor {
                        pipe.hget(keys.aor(aor), id);
                    }
                }
                let jsons: Vec<Option<Vec<u8>>> = pipe.query(con).map_err(failed)?;
                for json in jsons.into_iter().flatten() {
                    found.push(decode(&json)?);
                }
            }
            found.retain(|b| b.expires_at >= from && b.expires_at < to);
            found.sort_by_key(|b| (b.expires_at, b.id));
            Ok(found)
        })
    }

    /// How many bindings are stored, including expired ones not swept yet.
    pub fn count(&self) -> Result<usize, StoreError> {
        self.run(|con, keys| con.hlen(keys.aors()).map_err(failed))
    }

    /// Whether this node is the one to send the refresh push of binding `id` for its expiry
    /// `expires_at`: the first node to ask is, until `ttl` has passed.
    pub fn claim_refresh(
        &mut self,
        id: BindingId,
        expires_at: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.run(|con, keys| {
            let claimed: Option<String> = redis::cmd("SET")
                .arg(keys.refresh(id, expires_at))
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .query(con)
                .map_err(failed)?;
            Ok(claimed.is_some())
        })
    }

    /// Changes binding `id` as `f` says: `None` leaves it, `Some(None)` removes it,
    /// `Some(Some(b))` writes `b`. Returns whether it changed.
    fn change(
        &mut self,
        id: BindingId,
        f: impl Fn(&Binding) -> Option<Option<Binding>>,
    ) -> Result<bool, StoreError> {
        self.run(|con, keys| {
            let Some(aor) = aor_of(con, keys, id)? else {
                // Only the index entry may be left of it: clear that too.
                let _: () = redis::pipe()
                    .zrem(keys.expiry(), id.0)
                    .ignore()
                    .query(con)
                    .map_err(failed)?;
                return Ok(false);
            };
            let key = keys.aor(&aor);
            let read = redis::cmd("HGET").arg(&key).arg(id.0).to_owned();
            watched(con, &key, &read, |_, json: Option<Vec<u8>>, pipe| {
                let Some(binding) = json.map(|j| decode(&j)).transpose()? else {
                    unlink(pipe, keys, &key, id);
                    return Ok(false);
                };
                match f(&binding) {
                    None => Ok(false),
                    Some(None) => {
                        unlink(pipe, keys, &key, id);
                        Ok(true)
                    }
                    Some(Some(changed)) => {
                        link(pipe, keys, &key, &changed)?;
                        Ok(true)
                    }
                }
            })
            .map(|(changed, _)| changed)
        })
    }
}

/// The keys, with their prefix.
pub(super) struct Keys(pub(super) String);

impl Keys {
    fn aor(&self, aor: &str) -> String {
        format!("{}aor:{aor}", self.0)
    }
    fn aors(&self) -> String {
        format!("{}aors", self.0)
    }
    fn expiry(&self) -> String {
        format!("{}expiry", self.0)
    }
    fn next_id(&self) -> String {
        format!("{}next_id", self.0)
    }
    fn secret(&self, name: &str) -> String {
        format!("{}secret:{name}", self.0)
    }
    fn refresh(&self, id: BindingId, expires_at: u64) -> String {
        format!("{}refresh:{}:{expires_at}", self.0, id.0)
    }
    pub(super) fn notices(&self) -> String {
        format!("{}registered", self.0)
    }
}

/// Runs `f`, given the reply to `read`, between `WATCH key` and the `EXEC` of the pipeline
/// it fills, and returns what it returned with the replies of the commands it did not
/// ignore; reads and plans again when another client changed `key` in between. An error of
/// `f` writes nothing.
fn watched<R: redis::FromRedisValue, T>(
    con: &mut Connection,
    key: &str,
    read: &redis::Cmd,
    mut f: impl FnMut(&mut Connection, R, &mut Pipeline) -> Result<T, StoreError>,
) -> Result<(T, Vec<redis::Value>), StoreError> {
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            // Another node wrote the AOR first: let it finish (a random back-off, doubling,
            // so that two nodes writing one AOR do not keep undoing each other).
            let cap = 500u64 << attempt.min(6);
            std::thread::sleep(Duration::from_micros(rand::random_range(0..=cap)));
        }
        // WATCH and what `f` reads, in one round trip.
        let (read,): (R,) = redis::pipe()
            .cmd("WATCH")
            .arg(key)
            .ignore()
            .add_command(read.clone())
            .query(con)
            .map_err(failed)?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let value = match f(con, read, &mut pipe) {
            Ok(value) => value,
            Err(e) => {
                let _: Result<(), _> = redis::cmd("UNWATCH").query(con);
                return Err(e);
            }
        };
        // The replies of the commands not ignored; none when `key` changed meanwhile.
        let done: Option<Vec<redis::Value>> = pipe.query(con).map_err(failed)?;
        if let Some(replies) = done {
            return Ok((value, replies));
        }
    }
    Err(StoreError::Unavailable(format!(
        "{key} kept changing under {MAX_ATTEMPTS} attempts to write it"
    )))
}

/// Adds to `pipe` the writes that store `binding` under its id.
fn link(pipe: &mut Pipeline, keys: &Keys, key: &str, binding: &Binding) -> Result<(), StoreError> {
    let json = serde_json::to_vec(binding).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let id = binding.id.0;
    pipe.hset(key, id, json)
        .ignore()
        .hset(keys.aors(), id, &binding.aor)
        .ignore()
        .zadd(keys.expiry(), id, binding.expires_at)
        .ignore();
    Ok(())
}

/// Adds to `pipe` the writes that remove binding `id` of the AOR stored at `key`.
fn unlink(pipe: &mut Pipeline, keys: &Keys, key: &str, id: BindingId) {
    pipe.hdel(key, id.0)
        .ignore()
        .hdel(keys.aors(), id.0)
        .ignore()
        .zrem(keys.expiry(), id.0)
        .ignore();
}

/// Every binding stored for the AOR at `key`, expired ones too, ordered by id.
fn read_aor(con: &mut Connection, key: &str) -> Result<Vec<Binding>, StoreError> {
    decode_all(con.hgetall(key).map_err(failed)?)
}

/// The bindings of an AOR's hash (`HGETALL`), ordered by id.
fn decode_all(all: Vec<(u64, Vec<u8>)>) -> Result<Vec<Binding>, StoreError> {
    let mut bindings = all
        .iter()
        .map(|(_, json)| decode(json))
        .collect::<Result<Vec<_>, _>>()?;
    bindings.sort_by_key(|b| b.id);
    Ok(bindings)
}

/// The AOR binding `id` belongs to, if it is stored.
fn aor_of(con: &mut Connection, keys: &Keys, id: BindingId) -> Result<Option<String>, StoreError> {
    con.hget(keys.aors(), id.0).map_err(failed)
}

fn decode(json: &[u8]) -> Result<Binding, StoreError> {
    serde_json::from_slice(json)
        .map_err(|e| StoreError::Corrupt(format!("a binding that is not one: {e}")))
}

/// A Redis error as the store's: [`StoreError::Unavailable`] when Redis cannot serve now
/// (unreachable, timed out, loading, a replica, out of disk for its AOF…), else
/// [`StoreError::Redis`].
fn failed(e: RedisError) -> StoreError {
    const NOT_NOW: &[&str] = &[
        "LOADING",
        "MASTERDOWN",
        "READONLY",
        "MISCONF",
        "BUSY",
        "TRYAGAIN",
        "NOREPLICAS",
    ];
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.code().is_some_and(|c| NOT_NOW.contains(&c))
    {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Redis(e.to_string())
    }
}

/// Refuses a Redis that may acknowledge a write it then loses: `appendonly yes` and
/// `appendfsync always` are needed.
fn check_fsync(con: &mut Connection, shown: &str) -> Result<(), StoreError> {
    let mut setting = |name: &str| -> Result<String, StoreError> {
        let pair: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query(con)
            .map_err(|e| StoreError::NotDurable {
                url: shown.to_owned(),
                problem: format!(
                    "cannot read its {name} setting ({e}); allow CONFIG GET, or set \
                     store.require_fsync = false once its persistence is known to be safe"
                ),
            })?;
        Ok(pair.get(1).cloned().unwrap_or_default())
    };
    let appendonly = setting("appendonly")?;
    let appendfsync = setting("appendfsync")?;
    if appendonly != "yes" || appendfsync != "always" {
        return Err(StoreError::NotDurable {
            url: shown.to_owned(),
            problem: format!(
                "it runs with appendonly {appendonly} and appendfsync {appendfsync}, so a \
                 REGISTER it acknowledges may be lost; run it with appendonly yes and \
                 appendfsync always, or set store.require_fsync = false to accept that"
            ),
        });
    }
    Ok(())
}

/// `url` with any password replaced by `***`.
fn without_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            without_password("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            without_password("rediss://node:s3cret@redis.example/2"),
            "rediss://node:***@redis.example/2"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
