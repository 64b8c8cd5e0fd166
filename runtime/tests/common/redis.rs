//! A real `redis-server` (Debian package `redis-server`) for the tests of the Redis binding
//! store: on a free loopback port, its append-only file fsynced on every write (what
//! pushpark requires by default) in a directory of its own, killed and started again on
//! the same port and files at the test's command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// A running (or killed) `redis-server`. It dies with the test: its shell kills it with
/// SIGKILL when its stdin closes, which also happens when the test process ends.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    /// `requirepass`, if it has one.
    password: Option<String>,
    /// Its certificate and key, and the authority that issued them, when it takes TLS only.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    running: Option<(Child, ChildStdin)>,
}

impl RedisServer {
    /// Starts one, and waits until it answers.
    pub fn start() -> Self {
        Self::launch(None, None)
    }

    /// Starts one that asks its clients for `password` (`requirepass`).
    pub fn with_password(password: &str) -> Self {
        Self::launch(Some(password.to_owned()), None)
    }

    /// Starts one that takes TLS only, with `certificate` and `key` issued by `authority`.
    pub fn with_tls(certificate: &Path, key: &Path, authority: &Path) -> Self {
        let files = (certificate.to_owned(), key.to_owned(), authority.to_owned());
        Self::launch(None, Some(files))
    }

    fn launch(password: Option<String>, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("a temp dir"),
            password,
            tls,
            running: None,
        };
        server.restart();
        server
    }

    /// Where pushpark reaches it (with its password, if it has one).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
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
                "redis-server --bind 127.0.0.1 --dir \"$2\" --save '' --appendonly yes \
                 --appendfsync always ${3:+--requirepass \"$3\"} \
                 $(if [ -n \"$4\" ]; then echo --port 0 --tls-port \"$1\" --tls-cert-file \"$4\" \
                   --tls-key-file \"$5\" --tls-ca-cert-file \"$6\" --tls-auth-clients no; \
                   else echo --port \"$1\"; fi) \
                 >/dev/null & pid=$!; read _ignored; kill -9 $pid; wait $pid",
            )
            .args([
                "sh".to_owned(),
                self.port.to_string(),
                self.dir.path().display().to_string(),
                self.password.clone().unwrap_or_default(),
            ])
            .args(self.tls.iter().flat_map(|(certificate, key, authority)| {
                [certificate, key, authority].map(|p| p.display().to_string())
            }))
            .stdin(Stdio::piped())
            // The shell's "Killed" when it ends the server is no news.
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        let stdin = child.stdin.take().expect("a piped stdin");
        self.running = Some((child, stdin));
        let client = match &self.tls {
            Some((_, _, authority)) => {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(authority).expect("the authority")),
                };
                redis::Client::build_with_tls(self.url(), certificates).expect("a URL")
            }
            None => redis::Client::open(self.url()).expect("a URL"),
        };
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
