//! The users file: HA1 hashes only, never passwords. Format: see [`UserDb`].

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;

use super::algorithm::{ha1, Algorithm};

/// One user's stored hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// User name (as the phone sends in `username`).
    pub username: String,
    /// Realm the hashes were made for.
    pub realm: String,
    /// MD5 HA1, 32 lowercase hex digits.
    pub md5_ha1: String,
    /// SHA-256 HA1, 64 lowercase hex digits.
    pub sha256_ha1: String,
}

/// Errors reading or writing the users file. Messages name the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Reading or writing failed.
    #[error("users file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A line is not valid.
    #[error("users file {}, line {line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A username or realm given to [`add_user`] cannot be stored.
    #[error("invalid {what} {value:?}: must be non-empty, without white space or control characters, not starting with '#'")]
    InvalidField {
        /// `"username"` or `"realm"`.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// The loaded users file: HA1 hashes only, never passwords.
///
/// # Format
///
/// UTF-8 text, one user per line, four fields separated by spaces or tabs:
///
/// ```text
/// # username realm md5-ha1 sha256-ha1
/// alice example.com b1726872c344b6dc8365b774f8fd6412 ed8925b20f9a77b8f8f8d5f8e4467fe32b866f7208ab9e4b20595e9821a0fdee
/// ```
///
/// (That line is alice's with password `secret`.)
///
/// * `md5-ha1` = lowercase hex of MD5(`username:realm:password`) (32 digits),
///   `sha256-ha1` = the same with SHA-256 (64 digits); RFC 7616 §3.4.2, RFC 8760 §2.
///   Both are stored so a phone may answer either challenge.
/// * Lines that are empty or whose first non-blank character is `#` are comments and are
///   kept as they are when the file is rewritten.
/// * A user is keyed by (username, realm); one line per key. Neither may contain white
///   space or control characters, nor start with `#`.
///
/// Because the stored hash is derived from the realm, changing the realm means setting
/// every password again. An HA1 is password-equivalent for that realm: the file is
/// written with mode 0600 on unix.
///
/// Rewrites ([`add_user`], [`remove_user`]) are atomic: a temporary file in the same
/// directory is written, synced and renamed over the old one, so a reader sees either
/// the old or the new file. Two concurrent writers can still lose one update (last
/// rename wins); the CLI is meant for one administrator at a time.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    entries: Vec<UserEntry>,
    index: HashMap<(String, String), usize>,
}

impl UserDb {
    /// Loads and validates the file; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses file contents; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, UsersError> {
        let mut db = UserDb::default();
        for (n, line) in text.lines().enumerate() {
            let parsed = parse_line(line).map_err(|message| UsersError::Parse {
                path: path.to_path_buf(),
                line: n + 1,
                message,
            })?;
            if let Some(entry) = parsed {
                let key = (entry.username.clone(), entry.realm.clone());
                if db.index.contains_key(&key) {
                    return Err(UsersError::Parse {
                        path: path.to_path_buf(),
                        line: n + 1,
                        message: format!("user {:?} in realm {:?} appears twice", key.0, key.1),
                    });
                }
                db.index.insert(key, db.entries.len());
                db.entries.push(entry);
            }
        }
        Ok(db)
    }

    /// The user's entry in `realm`.
    pub fn get(&self, username: &str, realm: &str) -> Option<&UserEntry> {
        self.index
            .get(&(username.to_string(), realm.to_string()))
            .and_then(|&i| self.entries.get(i))
    }

    /// The HA1 to verify `algorithm` credentials with.
    pub fn ha1(&self, username: &str, realm: &str, algorithm: Algorithm) -> Option<&str> {
        self.get(username, realm).map(|e| match algorithm {
            Algorithm::Md5 => e.md5_ha1.as_str(),
            Algorithm::Sha256 => e.sha256_ha1.as_str(),
        })
    }

    /// All entries in file order.
    pub fn entries(&self) -> &[UserEntry] {
        &self.entries
    }
}

/// `Ok(None)` for comments and blank lines.
fn parse_line(line: &str) -> Result<Option<UserEntry>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    let [username, realm, md5_ha1, sha256_ha1] = fields[..] else {
        return Err(format!(
            "expected 4 fields (username realm md5-ha1 sha256-ha1), found {}",
            fields.len()
        ));
    };
    check_hex(md5_ha1, 32, "md5-ha1")?;
    check_hex(sha256_ha1, 64, "sha256-ha1")?;
    if username.chars().any(char::is_control) || realm.chars().any(char::is_control) {
        return Err("control character in username or realm".into());
    }
    Ok(Some(UserEntry {
        username: username.to_string(),
        realm: realm.to_string(),
        md5_ha1: md5_ha1.to_ascii_lowercase(),
        sha256_ha1: sha256_ha1.to_ascii_lowercase(),
    }))
}

fn check_hex(value: &str, len: usize, what: &str) -> Result<(), String> {
    if value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("{what} must be {len} hex digits"))
    }
}

fn check_field(what: &'static str, value: &str) -> Result<(), UsersError> {
    let ok = !value.is_empty()
        && !value.starts_with('#')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(UsersError::InvalidField {
            what,
            value: value.to_string(),
        })
    }
}

/// Reads the file's text; a missing file reads as empty.
fn read_or_empty(path: &Path) -> Result<String, UsersError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UsersError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Adds a user, or replaces the line of the same (username, realm), storing both HA1s
/// computed from `password` (which is not kept). Creates the file if needed. The whole
/// file is validated first: a bad line is reported, not silently dropped. Returns `true`
/// when an existing line was replaced.
pub fn add_user(
    path: &Path,
    username: &str,
    realm: &str,
    password: &str,
) -> Result<bool, UsersError> {
    check_field("username", username)?;
    check_field("realm", realm)?;
    let text = read_or_empty(path)?;
    UserDb::parse(&text, path)?;
    let new_line = format!(
        "{username} {realm} {} {}",
        ha1(Algorithm::Md5, username, realm, password),
        ha1(Algorithm::Sha256, username, realm, password)
    );
    let mut replaced = false;
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let is_this_user = matches!(
            parse_line(line),
            Ok(Some(e)) if e.username == username && e.realm == realm
        );
        if is_this_user {
            if !replaced {
                lines.push(new_line.clone());
                replaced = true;
            }
        } else {
            lines.push(line.to_string());
        }
    }
    if !replaced {
        lines.push(new_line);
    }
    write_atomically(path, &lines)?;
    Ok(replaced)
}

/// Removes every line for `username` (in any realm). Returns whether any was removed;
/// a missing file has no users. The file is validated first.
pub fn remove_user(path: &Path, username: &str) -> Result<bool, UsersError> {
    let text = read_or_empty(path)?;
    UserDb::parse(&text, path)?;
    let mut removed = false;
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        if matches!(parse_line(line), Ok(Some(e)) if e.username == username) {
            removed = true;
        } else {
            lines.push(line.to_string());
        }
    }
    if removed {
        write_atomically(path, &lines)?;
    }
    Ok(removed)
}

/// `(username, realm)` of every user, in file order. A missing file has no users.
pub fn list_users(path: &Path) -> Result<Vec<(String, String)>, UsersError> {
    let text = read_or_empty(path)?;
    let db = UserDb::parse(&text, path)?;
    Ok(db
        .entries
        .into_iter()
        .map(|e| (e.username, e.realm))
        .collect())
}

/// Writes `lines` to a temporary file beside `path` (mode 0600 on unix), syncs it and
/// renames it over `path`.
fn write_atomically(path: &Path, lines: &[String]) -> Result<(), UsersError> {
    let io_err = |source| UsersError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "users".into());
    let mut tag = [0u8; 8];
    rand::rng().fill_bytes(&mut tag);
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(tag)));

    let mut body = String::new();
    for line in lines {
        body.push_str(line);
        body.push('\n');
    }
    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable (best effort; not possible on every platform).
        #[cfg(unix)]
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}
