//! Tests of the binding store, on real SQLite files in a temp dir and in memory.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::*;

const AOR: &str = "sip:alice@example.com";
const T0: u64 = 1_700_000_000;

fn mem() -> Store {
    Store::open_in_memory(&StoreOptions::default()).expect("in-memory store")
}

impl Store {
    /// The SQLite backend, for the tests of what only it does.
    fn sqlite(&mut self) -> &mut Sqlite {
        match self {
            Store::Sqlite(s) => s,
            Store::Redis(_) => panic!("a SQLite store was expected"),
        }
    }
}

/// The tests' `redis-server` (Debian package `redis-server`): one per test process, on a
/// free loopback port, with an append-only file fsynced on every write (what the store
/// requires) in a directory of its own. It ends with the test process: its shell reads its
/// stdin, which closes when the process ends, and then stops it.
fn redis_url() -> &'static str {
    static SERVER: OnceLock<(String, Child, tempfile::TempDir)> = OnceLock::new();
    let (url, _, _) = SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // It is never waited for: it outlives every test, and ends with the process.
        #[expect(clippy::zombie_processes, reason = "the server ends with the process")]
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                "redis-server --port \"$1\" --bind 127.0.0.1 --dir \"$2\" --save '' \
                 --appendonly yes --appendfsync always >/dev/null & pid=$!; \
                 read _ignored; kill $pid",
            )
            .args(["sh", &port.to_string(), &dir.path().display().to_string()])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let url = format!("redis://127.0.0.1:{port}");
        let client = ::redis::Client::open(url.as_str()).expect("a URL");
        for _ in 0..200 {
            if let Ok(mut con) = client.get_connection() {
                if ::redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    return (url, child, dir);
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on port {port}: is it installed (apt-get install redis-server)?");
    });
    url
}

/// A key prefix no other test uses.
fn fresh_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("test{}:", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A Redis store whose keys start with `prefix`: what one node of a cluster opens.
fn redis_node(prefix: &str) -> Store {
    let options = RedisOptions {
        url: redis_url().to_owned(),
        prefix: prefix.to_owned(),
        timeout: Duration::from_secs(5),
        require_fsync: true,
        node: rand::random(),
        ca_file: None,
    };
    Store::open_redis(&options).expect("the Redis store opens")
}

/// A Redis store of its own.
fn redis_store() -> Store {
    redis_node(&fresh_prefix())
}

#[test]
fn nodes_on_one_redis_share_bindings_and_one_claims_each_refresh_push() {
    let prefix = fresh_prefix();
    let (mut a, mut b) = (redis_node(&prefix), redis_node(&prefix));
    let written = add(&mut a, "c1", apns("tok1", "h1"));
    assert_eq!(
        b.bindings(AOR, T0).expect("bindings"),
        vec![written.clone()]
    );
    // The phone's next REGISTER lands on the other node: the same binding, refreshed.
    let refreshed = add(&mut b, "c1b", apns("tok1", "h2"));
    assert_eq!(refreshed.id, written.id);
    assert_eq!(
        a.binding(written.id).expect("binding"),
        Some(refreshed.clone())
    );
    let ttl = Duration::from_secs(60);
    let expiry = refreshed.expires_at;
    assert!(a.claim_refresh(written.id, expiry, ttl).expect("claim"));
    assert!(!b.claim_refresh(written.id, expiry, ttl).expect("claim"));
    assert!(
        !a.claim_refresh(written.id, expiry, ttl).expect("claim"),
        "claimed once"
    );
    assert!(b
        .claim_refresh(written.id, expiry + 3600, ttl)
        .expect("the next expiry's"));
    // Another deployment on the same Redis sees none of it.
    assert_eq!(redis_store().bindings(AOR, T0).expect("bindings"), vec![]);
}

#[test]
fn a_register_stored_after_a_node_took_the_streams_end_reaches_it_as_a_notice() {
    let prefix = fresh_prefix();
    let options = |node| RedisOptions {
        url: redis_url().to_owned(),
        prefix: prefix.clone(),
        timeout: Duration::from_secs(5),
        require_fsync: true,
        node,
        ca_file: None,
    };
    let (mut a, b) = (
        Store::open_redis(&options(1)).expect("node a"),
        Store::open_redis(&options(2)).expect("node b"),
    );
    let before = add(&mut a, "c0", ContactSpec::new("sip:alice@h0"));
    // Node b starts: the stream's end first, then the bindings (which hold `before`).
    let from = b.notices_end().expect("the end").expect("a stream");
    assert_eq!(b.bindings(AOR, T0).expect("loaded"), vec![before.clone()]);
    // Node a stores a REGISTER before b reads a single notice: b still learns of it.
    let applied = a
        .apply(
            AOR,
            &register(
                "c1",
                1,
                vec![upsert(
                    apns("tok1", "h1").path("<sip:pp-f1.a-x@10.0.0.1;lr>"),
                    T0 + 3600,
                )],
            ),
            T0,
        )
        .expect("apply");
    let written = applied.bindings[1].clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let _follower = Follower::start(&options(2), from.clone(), move |n| {
        let _ = tx.send(n);
    })
    .expect("the follower starts");
    let notice = rx.recv_timeout(Duration::from_secs(5)).expect("a notice");
    assert_eq!(notice.origin, 1);
    assert_eq!(
        Some(&notice.id),
        applied.version.as_ref(),
        "the write's version"
    );
    assert!(Version::of(&notice.id) > Version::of(&from));
    assert_eq!(notice.aor, AOR);
    assert_eq!(notice.written, vec![written.id]);
    assert_eq!(notice.bindings, vec![before, written.clone()]);
    assert_eq!(
        notice.bindings[1].path.as_deref(),
        Some("<sip:pp-f1.a-x@10.0.0.1;lr>")
    );
    // Its own notices a node skips.
    let mut b = b;
    add(&mut b, "c2", ContactSpec::new("sip:alice@h2"));
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "b's own"
    );
}

#[test]
fn on_redis_lanes_keep_the_order_of_each_aors_registers() {
    let prefix = fresh_prefix();
    let (tx, rx) = std::sync::mpsc::channel();
    let lanes = vec![
        redis_node(&prefix),
        redis_node(&prefix),
        redis_node(&prefix),
    ];
    let mut writer = Writer::start(lanes, move |outcome| {
        let _ = tx.send(outcome);
    })
    .expect("the lanes start");
    let users = ["alice", "bob", "carol", "dave"];
    for cseq in 1..=30 {
        for (key, user) in users.iter().enumerate() {
            let aor = format!("sip:{user}@example.com");
            let register = register(
                &format!("reg-{user}"),
                cseq,
                vec![upsert(ContactSpec::new(format!("sip:{user}@h")), T0 + 60)],
            );
            writer.submit_job(
                key as u64,
                Box::new(move |store, _| {
                    let result = store.apply(&aor, &register, T0).map(drop);
                    Box::new(move |_| (key, cseq, result.is_ok()))
                }),
            );
        }
    }
    let mut seen = vec![0; users.len()];
    for _ in 0..30 * users.len() {
        let (key, cseq, ok) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("an outcome");
        assert!(ok, "CSeq {cseq} of {} applied in order", users[key]);
        assert_eq!(cseq, seen[key] + 1, "in the order sent");
        seen[key] = cseq;
    }
    for thread in writer.close() {
        thread.join().expect("a lane ends");
    }
}

#[test]
fn registers_of_one_aor_on_two_nodes_at_once_all_land() {
    let prefix = fresh_prefix();
    let threads: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|node| {
            let mut store = redis_node(&prefix);
            std::thread::spawn(move || {
                for n in 0..40 {
                    add(
                        &mut store,
                        &format!("{node}{n}"),
                        ContactSpec::new(format!("sip:alice@{node}{n}")),
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("the node's REGISTERs all succeed");
    }
    let store = redis_node(&prefix);
    let all = store.bindings(AOR, T0).expect("bindings");
    assert_eq!(all.len(), 80, "none lost to the other node's writes");
    let mut ids: Vec<_> = all.iter().map(|b| b.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 80, "ids are unique and ordered");
    assert_eq!(store.count().expect("count"), 80);
    assert_eq!(
        store
            .expiring_between(T0, T0 + 3601)
            .expect("expiring")
            .len(),
        80
    );
}

/// Runs a batch of three REGISTERs on `store` and tells, in order, when each job ran and
/// when its outcome was delivered.
fn batch_order(store: &mut Store) -> Vec<String> {
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = |event: String, events: &std::sync::Mutex<Vec<String>>| {
        events.lock().expect("not poisoned").push(event);
    };
    let batch: Vec<writer::Job<u32>> = (1..=3)
        .map(|n| {
            let events = std::sync::Arc::clone(&events);
            let job: writer::Job<u32> = Box::new(move |store: &mut Store, _| {
                let contact = ContactSpec::new(format!("sip:alice@h{n}"));
                let reg = register(&format!("batch{n}"), 1, vec![upsert(contact, T0 + 3600)]);
                store.apply(AOR, &reg, T0).expect("stored");
                log(format!("ran {n}"), &events);
                Box::new(move |committed| {
                    assert!(committed.is_ok());
                    n
                })
            });
            job
        })
        .collect();
    store.run_batch_each(batch, std::time::Instant::now(), |n| {
        log(format!("delivered {n}"), &events)
    });
    let order = events.lock().expect("not poisoned").clone();
    order
}

#[test]
fn on_redis_a_jobs_outcome_is_delivered_before_the_next_job_of_its_batch_runs() {
    // Each job is a MULTI/EXEC of its own, durable at its reply: a REGISTER's 200 OK must
    // not wait for the batch's other round trips (the other nodes have read its notice).
    assert_eq!(
        batch_order(&mut redis_store()),
        [
            "ran 1",
            "delivered 1",
            "ran 2",
            "delivered 2",
            "ran 3",
            "delivered 3"
        ]
    );
    // On SQLite the batch is one transaction: every outcome after its one commit.
    assert_eq!(
        batch_order(&mut mem()),
        [
            "ran 1",
            "ran 2",
            "ran 3",
            "delivered 1",
            "delivered 2",
            "delivered 3"
        ]
    );
}

fn register(call_id: &str, cseq: u32, changes: Vec<Change>) -> Register {
    Register {
        max_bindings: usize::MAX,
        call_id: call_id.to_owned(),
        cseq,
        changes,
    }
}

fn upsert(contact: ContactSpec, expires_at: u64) -> Change {
    Change::Upsert {
        contact,
        expires_at,
    }
}

/// One REGISTER with one Contact, from its own Call-ID, valid for an hour.
fn add(store: &mut Store, call_id: &str, contact: ContactSpec) -> Binding {
    let applied = store
        .apply(
            AOR,
            &register(call_id, 1, vec![upsert(contact.clone(), T0 + 3600)]),
            T0,
        )
        .expect("apply");
    applied
        .bindings
        .into_iter()
        .find(|b| b.contact == contact.contact)
        .expect("binding in result")
}

fn apns(prid: &str, host: &str) -> ContactSpec {
    ContactSpec::new(format!(
        "sip:alice@{host};transport=tcp;pn-provider=apns;pn-prid={prid};pn-param=ABCD.com.example.voip"
    ))
}

#[test]
fn binding_written_then_store_reopened_is_still_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/dir/bindings.sqlite");
    let contact = apns("tok1", "10.0.0.1:5060")
        .instance("<urn:uuid:00000000-0000-0000-0000-000000000001>")
        .reg_id(1)
        .pnsreg(true)
        .q(500);
    let written = {
        let mut store = Store::open(&path, &StoreOptions::default()).expect("open");
        add(&mut store, "call-1", contact)
    };
    let store = Store::open(&path, &StoreOptions::default()).expect("reopen");
    assert_eq!(
        store.bindings(AOR, T0).expect("bindings"),
        vec![written.clone()]
    );
    assert_eq!(
        store.binding(written.id).expect("binding"),
        Some(written.clone())
    );
    let push = written.push.expect("push params stored");
    assert_eq!(
        (
            push.provider.as_str(),
            push.prid.as_str(),
            push.param.as_deref()
        ),
        ("apns", "tok1", Some("ABCD.com.example.voip"))
    );
    assert!(
        written.contact.contains(";pn-prid=tok1;"),
        "contact kept verbatim"
    );
    assert_eq!(
        (written.reg_id, written.q, written.pnsreg),
        (Some(1), Some(500), true)
    );
    assert_eq!(
        (written.cseq, written.expires_at, written.updated_at),
        (1, T0 + 3600, T0)
    );
}

#[test]
fn file_store_runs_in_wal_mode_with_the_chosen_synchronous() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (sync, expected) in [(Synchronous::Full, 2), (Synchronous::Normal, 1)] {
        let options = StoreOptions {
            synchronous: sync,
            ..StoreOptions::default()
        };
        let mut store = Store::open(dir.path().join("b.sqlite"), &options).expect("open");
        let mode: String = store
            .sqlite()
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        let level: i64 = store
            .sqlite()
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("synchronous");
        assert_eq!((mode.as_str(), level), ("wal", expected), "{sync:?}");
    }
}

#[test]
fn ids_stay_stable_across_reopen_and_are_not_reused_after_removal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.sqlite");
    let (a, b) = {
        let mut store = Store::open(&path, &StoreOptions::default()).expect("open");
        let a = add(&mut store, "c-a", ContactSpec::new("sip:alice@a.example"));
        let b = add(&mut store, "c-b", ContactSpec::new("sip:alice@b.example"));
        (a.id, b.id)
    };
    let mut store = Store::open(&path, &StoreOptions::default()).expect("reopen");
    let ids: Vec<_> = store
        .bindings(AOR, T0)
        .expect("bindings")
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, vec![a, b]);
    // A refresh after the restart keeps the id.
    let refreshed = add(&mut store, "c-b2", ContactSpec::new("sip:alice@b.example"));
    assert_eq!(refreshed.id, b);
    // Removing the newest binding must not free its id for the next device.
    assert!(store.remove(b).expect("remove"));
    drop(store);
    let mut store = Store::open(&path, &StoreOptions::default()).expect("reopen again");
    let c = add(&mut store, "c-c", ContactSpec::new("sip:alice@c.example"));
    assert!(c.id > b, "new id {} must be above removed {}", c.id, b);
}

#[test]
fn same_contact_uri_with_different_instances_stays_two_devices() {
    // Two phones behind different NATs can both claim sip:alice@192.168.1.5:5060.
    let mut store = mem();
    let uri = "sip:alice@192.168.1.5:5060";
    add(
        &mut store,
        "c1",
        ContactSpec::new(uri).instance("<urn:uuid:a>"),
    );
    add(
        &mut store,
        "c2",
        ContactSpec::new(uri).instance("<urn:uuid:b>"),
    );
    let all = store.bindings(AOR, T0).expect("bindings");
    let instances: Vec<_> = all.iter().map(|b| b.instance.as_deref()).collect();
    assert_eq!(instances, vec![Some("<urn:uuid:a>"), Some("<urn:uuid:b>")]);
}

#[test]
fn migrations_run_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.sqlite");
    let versions = |store: &mut Store| -> Vec<(u32, i64)> {
        let mut stmt = store
            .sqlite()
            .conn
            .prepare("SELECT version, applied_at FROM schema_version ORDER BY version")
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    };
    let first = {
        let mut store = Store::open(&path, &StoreOptions::default()).expect("open");
        add(&mut store, "c1", ContactSpec::new("sip:alice@h1"));
        assert_eq!(
            store.sqlite().schema_version().expect("version"),
            schema::latest()
        );
        versions(&mut store)
    };
    assert_eq!(first.iter().map(|v| v.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    std::thread::sleep(Duration::from_millis(1100)); // a rerun would stamp a later applied_at
    let mut store = Store::open(&path, &StoreOptions::default()).expect("reopen");
    assert_eq!(versions(&mut store), first);
    assert_eq!(
        store.count().expect("count"),
        1,
        "reopening did not recreate the table"
    );
    let mut again = store;
    assert_eq!(schema::migrate(&mut again.sqlite().conn, T0).ok(), Some(0));
}

#[test]
fn a_database_of_an_earlier_version_is_migrated_keeping_its_bindings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.sqlite");
    {
        // What the build before RFC 3327 Path wrote: schema 2.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
        )
        .expect("versions");
        for (version, sql) in &schema::MIGRATIONS[..2] {
            conn.execute_batch(sql).expect("a migration");
            conn.execute("INSERT INTO schema_version VALUES (?1, 0)", [version])
                .expect("stamped");
        }
        conn.execute(
            "INSERT INTO bindings (aor, contact, contact_key, pnsreg, call_id, cseq, expires_at, \
             updated_at) VALUES (?1, 'sip:alice@h1', 'sip:alice@h1', 0, 'c1', 1, ?2, ?3)",
            rusqlite::params![AOR, (T0 + 60) as i64, T0 as i64],
        )
        .expect("a binding");
    }
    let mut store = Store::open(&path, &StoreOptions::default()).expect("migrated");
    assert_eq!(store.sqlite().schema_version().expect("version"), 3);
    let kept = store.bindings(AOR, T0).expect("bindings");
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].contact.as_str(), kept[0].path.as_deref()),
        ("sip:alice@h1", None)
    );
}

#[test]
fn newer_schema_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.sqlite");
    drop(Store::open(&path, &StoreOptions::default()).expect("open"));
    rusqlite::Connection::open(&path)
        .and_then(|c| c.execute("INSERT INTO schema_version VALUES (99, 0)", []))
        .expect("bump version");
    let err = Store::open(&path, &StoreOptions::default()).expect_err("too new");
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn corrupted_file_gives_an_open_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bindings.sqlite");
    std::fs::write(&path, vec![0x5a_u8; 8192]).expect("write garbage");
    let err = Store::open(&path, &StoreOptions::default()).expect_err("not a database");
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a database"), "{msg}");
}

#[test]
fn unwritable_path_gives_an_error_naming_the_path() {
    // Root ignores permission bits, so make the parent "directory" a regular file instead.
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").expect("write file");
    let err = Store::open(blocker.join("sub/b.sqlite"), &StoreOptions::default())
        .expect_err("cannot create dir");
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
    assert!(
        err.to_string().contains(&blocker.display().to_string()),
        "{err}"
    );
    // A directory where the database file should be.
    let err = Store::open(dir.path(), &StoreOptions::default()).expect_err("a directory");
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn in_memory_stores_are_independent_and_empty() {
    let mut a = mem();
    add(&mut a, "c1", ContactSpec::new("sip:alice@h1"));
    let b = mem();
    assert_eq!((a.count().expect("a"), b.count().expect("b")), (1, 0));
    assert_eq!(b.path(), None);
}

#[test]
fn a_secret_is_made_once_and_kept_across_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.sqlite");
    let first = {
        let mut store = Store::open(&path, &StoreOptions::default()).expect("open");
        let first = store.secret("node").expect("a secret");
        assert_eq!(first.len(), 32);
        assert_eq!(store.secret("node").expect("the same"), first);
        assert_ne!(store.secret("other").expect("another"), first);
        first
    };
    let mut store = Store::open(&path, &StoreOptions::default()).expect("reopen");
    assert_eq!(store.secret("node").expect("kept"), first);
}

#[test]
fn a_new_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bindings.db");
    let mut store = Store::open(&path, &StoreOptions::default()).expect("open");
    add(&mut store, "c1", ContactSpec::new("sip:alice@h1"));
    for file in ["bindings.db", "bindings.db-wal", "bindings.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .expect("the file exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
}

#[test]
fn a_register_beyond_the_bindings_an_aor_may_hold_fails_and_changes_nothing() {
    let mut store = Store::open_in_memory(&StoreOptions::default()).expect("open");
    let first = add(&mut store, "c1", ContactSpec::new("sip:alice@h1"));
    let mut second = register(
        "c2",
        1,
        vec![upsert(ContactSpec::new("sip:alice@h2"), T0 + 3600)],
    );
    second.max_bindings = 1;
    let err = store
        .apply(AOR, &second, T0)
        .expect_err("one binding at most");
    assert!(
        matches!(err, StoreError::TooManyBindings { max: 1, .. }),
        "{err}"
    );
    assert_eq!(store.bindings(AOR, T0).expect("read"), vec![first.clone()]);
    // Refreshing the one it holds stays within the limit.
    let mut refresh = register(
        "c1",
        2,
        vec![upsert(ContactSpec::new("sip:alice@h1"), T0 + 7200)],
    );
    refresh.max_bindings = 1;
    assert_eq!(
        store
            .apply(AOR, &refresh, T0)
            .expect("a refresh")
            .bindings
            .len(),
        1
    );
}

/// Tests of what every backend must do alike: each runs on SQLite (in memory) and on Redis
/// (a real `redis-server`, with a key prefix of the test's own).
macro_rules! on_every_backend {
    ($(fn $name:ident($store:ident) $body:block)*) => {
        mod on_sqlite {
            use super::*;
            $(#[test] fn $name() { let mut $store = mem(); $body })*
        }
        mod on_redis {
            use super::*;
            $(#[test] fn $name() { let mut $store = redis_store(); $body })*
        }
    };
}

on_every_backend! {
fn same_instance_replaces_binding_even_with_new_address_and_token(store) {
    let inst = "<urn:uuid:11111111-1111-1111-1111-111111111111>";
    let old = add(
        &mut store,
        "c1",
        apns("tok1", "10.0.0.1:5060").instance(inst).reg_id(1),
    );
    let new = add(
        &mut store,
        "c2",
        apns("tok2", "10.9.9.9:6000").instance(inst).reg_id(1),
    );
    assert_eq!(new.id, old.id);
    let all = store.bindings(AOR, T0).expect("bindings");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].push.as_ref().map(|p| p.prid.as_str()), Some("tok2"));
    assert_eq!(all[0].call_id, "c2");
}

fn same_instance_with_different_reg_id_and_token_is_a_separate_binding(store) {
    let inst = "<urn:uuid:11111111-1111-1111-1111-111111111111>";
    let a = add(
        &mut store,
        "c1",
        ContactSpec::new("sip:alice@h1").instance(inst).reg_id(1),
    );
    let b = add(
        &mut store,
        "c2",
        ContactSpec::new("sip:alice@h2").instance(inst).reg_id(2),
    );
    assert_ne!(a.id, b.id);
    assert_eq!(store.bindings(AOR, T0).expect("bindings").len(), 2);
}

fn same_push_token_replaces_binding_when_phone_wakes_on_new_address(store) {
    let old = add(&mut store, "c1", apns("tok1", "10.0.0.1:5060"));
    // New address, new Call-ID (the app was restarted by the push), same token.
    let new = add(&mut store, "c2", apns("tok1", "192.0.2.7:41234"));
    assert_eq!(new.id, old.id);
    let all = store.bindings(AOR, T0).expect("bindings");
    assert_eq!(all.len(), 1, "no stale duplicate: {all:?}");
    assert!(all[0].contact.contains("192.0.2.7:41234"));
}

fn different_push_token_on_a_different_address_is_a_second_device(store) {
    let a = add(&mut store, "c1", apns("tok1", "10.0.0.1:5060"));
    let b = add(&mut store, "c2", apns("tok2", "10.0.0.2:5060"));
    assert_ne!(a.id, b.id);
    assert_eq!(store.count().expect("count"), 2);
}

fn same_contact_uri_replaces_binding_even_with_a_new_push_token(store) {
    let old = add(&mut store, "c1", apns("tok1", "10.0.0.1:5060"));
    let new = add(&mut store, "c2", apns("tok2", "10.0.0.1:5060"));
    assert_eq!(new.id, old.id);
    let all = store.bindings(AOR, T0).expect("bindings");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].push.as_ref().map(|p| p.prid.as_str()), Some("tok2"));
    // And without any push parameters at all.
    let plain = add(&mut store, "c3", ContactSpec::new("sip:alice@198.51.100.1"));
    let again = add(&mut store, "c4", ContactSpec::new("sip:alice@198.51.100.1"));
    assert_eq!(plain.id, again.id);
    assert_eq!(store.count().expect("count"), 2);
}

fn instance_match_removes_a_stale_duplicate_holding_the_same_token(store) {
    let inst = "<urn:uuid:22222222-2222-2222-2222-222222222222>";
    let keeper = add(
        &mut store,
        "c1",
        apns("tok1", "10.0.0.1:5060").instance(inst),
    );
    let stale = add(&mut store, "c2", apns("tok2", "10.0.0.2:5060"));
    // The phone registers again under its instance, now with the token the stale binding holds.
    let applied = store
        .apply(
            AOR,
            &register(
                "c3",
                1,
                vec![upsert(
                    apns("tok2", "10.0.0.3:5060").instance(inst),
                    T0 + 60,
                )],
            ),
            T0,
        )
        .expect("apply");
    assert_eq!(applied.removed, vec![stale.id]);
    assert_eq!(
        applied.bindings.iter().map(|b| b.id).collect::<Vec<_>>(),
        vec![keeper.id]
    );
}

fn star_removes_all_bindings_of_the_aor_only(store) {
    let a = add(&mut store, "c1", apns("tok1", "h1"));
    let b = add(&mut store, "c2", ContactSpec::new("sip:alice@h2"));
    let other = store
        .apply(
            "sip:bob@example.com",
            &register(
                "c3",
                1,
                vec![upsert(ContactSpec::new("sip:bob@h3"), T0 + 60)],
            ),
            T0,
        )
        .expect("bob");
    let applied = store
        .apply(AOR, &register("c9", 1, vec![Change::RemoveAll]), T0)
        .expect("star");
    assert!(applied.bindings.is_empty());
    assert_eq!(applied.removed, vec![a.id, b.id]);
    assert!(store.bindings(AOR, T0).expect("bindings").is_empty());
    assert_eq!(
        store.bindings("sip:bob@example.com", T0).expect("bob"),
        other.bindings
    );
}

fn star_mixed_with_other_contacts_is_rejected_and_changes_nothing(store) {
    add(&mut store, "c1", ContactSpec::new("sip:alice@h1"));
    let err = store
        .apply(
            AOR,
            &register(
                "c2",
                1,
                vec![
                    Change::RemoveAll,
                    upsert(ContactSpec::new("sip:alice@h2"), T0 + 60),
                ],
            ),
            T0,
        )
        .expect_err("must be rejected");
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert_eq!(store.count().expect("count"), 1);
}

fn remove_change_and_zero_expiry_delete_the_matching_binding(store) {
    let a = add(&mut store, "c1", apns("tok1", "h1"));
    let b = add(&mut store, "c2", ContactSpec::new("sip:alice@h2"));
    let applied = store
        .apply(
            AOR,
            &register("c1", 2, vec![Change::Remove(apns("tok1", "h1"))]),
            T0,
        )
        .expect("remove");
    assert_eq!(applied.removed, vec![a.id]);
    // An upsert whose expiry is not in the future is an expires=0.
    let applied = store
        .apply(
            AOR,
            &register("c2", 2, vec![upsert(ContactSpec::new("sip:alice@h2"), T0)]),
            T0,
        )
        .expect("expire");
    assert_eq!(applied.removed, vec![b.id]);
    assert_eq!(store.count().expect("count"), 0);
}

fn register_with_same_call_id_and_old_cseq_is_rejected_atomically(store) {
    let contact = ContactSpec::new("sip:alice@h1");
    store
        .apply(
            AOR,
            &register("c1", 5, vec![upsert(contact.clone(), T0 + 60)]),
            T0,
        )
        .expect("first");
    // A second Contact that would be new, then the stale one: the whole request must fail.
    let err = store
        .apply(
            AOR,
            &register(
                "c1",
                5,
                vec![
                    upsert(ContactSpec::new("sip:alice@h9"), T0 + 60),
                    upsert(contact.clone(), T0 + 999),
                ],
            ),
            T0,
        )
        .expect_err("out of order");
    assert!(
        matches!(
            err,
            StoreError::OutOfOrder {
                stored_cseq: 5,
                cseq: 5,
                ..
            }
        ),
        "{err}"
    );
    let all = store.bindings(AOR, T0).expect("bindings");
    assert_eq!(all.len(), 1, "nothing of the failed REGISTER applied");
    assert_eq!(all[0].expires_at, T0 + 60);
    // A higher CSeq, or another Call-ID, is fine.
    store
        .apply(
            AOR,
            &register("c1", 6, vec![upsert(contact.clone(), T0 + 120)]),
            T0,
        )
        .expect("higher cseq");
    store
        .apply(
            AOR,
            &register("other", 1, vec![upsert(contact, T0 + 180)]),
            T0,
        )
        .expect("other call-id");
}

fn expired_bindings_are_hidden_then_swept(store) {
    let short = store
        .apply(
            AOR,
            &register(
                "c1",
                1,
                vec![upsert(ContactSpec::new("sip:alice@h1"), T0 + 10)],
            ),
            T0,
        )
        .expect("short");
    let long = add(&mut store, "c2", ContactSpec::new("sip:alice@h2"));
    let short_id = short.bindings[0].id;
    assert_eq!(store.bindings(AOR, T0 + 9).expect("b").len(), 2);
    let visible: Vec<_> = store
        .bindings(AOR, T0 + 10)
        .expect("b")
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(visible, vec![long.id], "expires_at == now is expired");
    assert!(
        store.binding(short_id).expect("binding").is_some(),
        "still stored until swept"
    );
    assert_eq!(store.sweep_expired(T0 + 10).expect("sweep"), 1);
    assert_eq!(store.binding(short_id).expect("binding"), None);
    assert_eq!(store.count().expect("count"), 1);
    assert_eq!(store.sweep_expired(T0 + 10).expect("sweep"), 0);
}

fn expiring_between_is_half_open_and_ordered_by_expiry(store) {
    for (host, exp) in [("h1", 100), ("h2", 50), ("h3", 200), ("h4", 150)] {
        store
            .apply(
                AOR,
                &register(
                    host,
                    1,
                    vec![upsert(
                        ContactSpec::new(format!("sip:alice@{host}")),
                        T0 + exp,
                    )],
                ),
                T0,
            )
            .expect("apply");
    }
    let got: Vec<_> = store
        .expiring_between(T0 + 50, T0 + 200)
        .expect("expiring")
        .into_iter()
        .map(|b| b.expires_at - T0)
        .collect();
    assert_eq!(got, vec![50, 100, 150]);
}

fn forget_push_token_clears_only_the_token_still_stored(store) {
    let b = add(&mut store, "c1", apns("tok1", "h1"));
    // The phone registered a new token before the push service's rejection of tok1 came back.
    add(&mut store, "c2", apns("tok2", "h1"));
    assert!(!store.forget_push_token(b.id, "tok1").expect("forget old"));
    let kept = store.binding(b.id).expect("binding").expect("present");
    assert_eq!(kept.push.as_ref().map(|p| p.prid.as_str()), Some("tok2"));
    assert!(store
        .forget_push_token(b.id, "tok2")
        .expect("forget current"));
    let cleared = store.binding(b.id).expect("binding").expect("present");
    assert_eq!(cleared.push, None);
    assert_eq!(cleared.contact, kept.contact, "the binding itself stays");
    assert!(!store
        .forget_push_token(BindingId(9999), "tok2")
        .expect("unknown id"));
}

fn invalid_input_is_rejected_before_touching_the_database(store) {
    let cases = [
        ("", register("c", 1, vec![])),
        (AOR, register("", 1, vec![])),
        (
            AOR,
            register(
                "c",
                1,
                vec![upsert(ContactSpec::new("sip:a@h").q(1001), T0 + 1)],
            ),
        ),
        (
            AOR,
            register("c", 1, vec![upsert(ContactSpec::new("sip:a@h"), u64::MAX)]),
        ),
        // Just beyond the latest expiry every backend holds exactly (2^53 - 1).
        (
            AOR,
            register("c", 1, vec![upsert(ContactSpec::new("sip:a@h"), 1 << 53)]),
        ),
        (
            AOR,
            register(
                "c",
                1,
                vec![upsert(
                    ContactSpec {
                        push: Some(PushParams {
                            provider: String::new(),
                            prid: "tok".to_owned(),
                            param: None,
                        }),
                        ..ContactSpec::new("sip:a@h")
                    },
                    T0 + 1,
                )],
            ),
        ),
    ];
    for (aor, reg) in cases {
        let err = store.apply(aor, &reg, T0).expect_err("invalid");
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }
    assert_eq!(store.count().expect("count"), 0);
    // The limits themselves are valid: q = 1, and the latest expiry.
    let edge = register(
        "c",
        1,
        vec![upsert(ContactSpec::new("sip:a@h").q(1000), (1 << 53) - 1)],
    );
    store.apply(AOR, &edge, T0).expect("at the limits");
}

fn contacts_of_one_register_matching_the_same_binding_are_not_out_of_order(store) {
    let first = add(&mut store, "c1", apns("tok1", "h1"));
    // CSeq 2 of the same Call-ID: its second Contact matches the binding its first one just
    // rewrote (same token), which now carries this very Call-ID and CSeq.
    let applied = store
        .apply(
            AOR,
            &register(
                "c1",
                2,
                vec![
                    upsert(apns("tok1", "h2"), T0 + 60),
                    upsert(apns("tok1", "h3"), T0 + 90),
                ],
            ),
            T0,
        )
        .expect("one request may touch a binding twice");
    assert_eq!(applied.bindings.len(), 1);
    assert_eq!(applied.bindings[0].id, first.id);
    assert!(applied.bindings[0].contact.contains("@h3;"));
}
}
