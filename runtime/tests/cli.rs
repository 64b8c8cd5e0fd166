//! The `pushpark` command line, run as an operator runs it.

use std::io::Write;
use std::process::{Command, Stdio};

fn pushpark(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushpark"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pushpark runs");
    // A refused command may exit before it reads the password: a broken pipe then is its
    // answer, not the test's failure (its exit status and output say what happened).
    let written = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().expect("pushpark ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn user_add_takes_the_realm_of_the_servers_configuration_and_refuses_another() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("pushpark.toml");
    std::fs::write(&config, "domains = [\"sip.example.com\"]\n").expect("a config");
    let users = dir.path().join("users");
    let (file, config) = (
        users.to_str().expect("a path"),
        config.to_str().expect("a path"),
    );

    let (ok, out) = pushpark(
        &["user", "--file", file, "--config", config, "add", "alice"],
        "s3cret\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("alice in realm sip.example.com"), "{out}");

    let (ok, out) = pushpark(
        &[
            "user",
            "--file",
            file,
            "--config",
            config,
            "add",
            "bob",
            "--realm",
            "localhost",
        ],
        "s3cret\n",
    );
    assert!(!ok, "a realm the server never challenges with: {out}");
    assert!(out.contains("sip.example.com"), "{out}");

    let (ok, out) = pushpark(&["user", "--file", file, "list"], "");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "alice\tsip.example.com");

    // Without --config: the embedded defaults' realm, the first default domain.
    let (ok, out) = pushpark(&["user", "--file", file, "add", "carol"], "s3cret\n");
    assert!(ok && out.contains("carol in realm localhost"), "{out}");
}
