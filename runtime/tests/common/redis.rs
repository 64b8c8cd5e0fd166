//! A real `redis-server` (Debian package `redis-server`) for the tests of the Redis binding
//! store: on a free loopback port, its append-only file fsynced on every write (what
//! pushpark requires by default) in a directory of its own, killed and started again on
//! the same port and files at the test's command.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// A running (or killed) `redis-server`. It dies with the test: its shell kills it with
/// SIGKILL when its stdin closes, which also happens when the test process ends.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    /// `requirepass`, if it has one.
    password: Option<String>,
    running: Option<(Child, ChildStdin)>,
}

impl RedisServer {
    /// Starts one, and waits until it answers.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Starts one that asks its clients for `password` (`requirepass`).
    pub fn with_password(password: &str) -> Self {
        Self::launch(Some(password.to_owned()))
    }

    fn launch(password: Option<String>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("a temp dir"),
            password,
            running: None,
        };
        server.restart();
        server
    }

    /// Where pushpark reaches it (with its password, if it has one).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Its files (the append-only file is under `appendonlydir`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills it with SIGKILL, as a crash would: what it did not fsync is lost.
    pub fn kill(&mut self) {
        if let Some((mut child, mut stdin)) = self.running.take() {
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and files, and waits until it has loaded them.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                "redis-server --port \"$1\" --bind 127.0.0.1 --dir \"$2\" --save '' \
                 --appendonly yes --appendfsync always ${3:+--requirepass \"$3\"} \
                 >/dev/null & pid=$!; read _ignored; kill -9 $pid; wait $pid",
            )
            .args([
                "sh",
                &self.port.to_string(),
                &self.dir.path().display().to_string(),
                self.password.as_deref().unwrap_or(""),
            ])
            .stdin(Stdio::piped())
            // The shell's "Killed" when it ends the server is no news.
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        let stdin = child.stdin.take().expect("a piped stdin");
        self.running = Some((child, stdin));
        let client = redis::Client::open(self.url()).expect("a URL");
        for _ in 0..400 {
            let ready = client
                .get_connection()
                .is_ok_and(|mut con| redis::cmd("PING").query::<String>(&mut con).is_ok());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis-server did not start on port {}: is it installed (apt-get install redis-server)?",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
