//! Stateless, unforgeable nonces and the bounded `nc` replay map.
//!
//! A nonce is `base64url(ts ‖ id ‖ HMAC-SHA256(secret, ts ‖ id ‖ realm))` without padding,
//! where `ts` is the issue time (unix seconds, 8 bytes big-endian) and `id` 16 random
//! bytes. Only the holder of the secret can mint one that verifies, and a nonce minted
//! for one realm does not verify in another. RFC 7616 §3.3 suggests exactly this shape
//! (a time stamp plus a keyed hash only the server can compute); the result is 75
//! characters from the base64url alphabet, so it needs no escaping inside a
//! quoted-string.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const TS_LEN: usize = 8;
const ID_LEN: usize = 16;
const MAC_LEN: usize = 32;
const RAW_LEN: usize = TS_LEN + ID_LEN + MAC_LEN;

/// The server secret that keys nonce MACs. Keep it in memory only; a new one at each
/// start-up ([`Secret::generate`]) merely makes outstanding nonces invalid, and phones
/// re-authenticate on the next challenge. Its `Debug` output is redacted.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// 32 bytes from the operating system's CSPRNG (via `rand`'s thread RNG).
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Secret(key)
    }

    /// A caller-provided key, e.g. shared by several instances behind one address so that
    /// any of them accepts the others' nonces. Use at least 32 random bytes; returns
    /// `None` for keys shorter than 16 bytes.
    pub fn from_bytes(key: &[u8]) -> Option<Self> {
        (key.len() >= 16).then(|| Secret(key.to_vec()))
    }

    /// The secret of a cluster's nodes, read from `path`: at least 32 bytes as hex digits
    /// (whitespace around them ignored). An error says what is wrong, naming the file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let named = |why: String| format!("{}: {why}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| named(e.to_string()))?;
        let key = hex::decode(text.trim())
            .map_err(|_| named("not hex digits (make one with `openssl rand -hex 32`)".into()))?;
        if key.len() < 32 {
            return Err(named(format!(
                "{} bytes; a secret needs at least 32 (64 hex digits)",
                key.len()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{}: readable by others than its owner (mode {:o}): whoever reads it can \
                     forge route and answer tokens",
                    path.display(),
                    mode & 0o777
                );
            }
        }
        Ok(Secret(key))
    }

    /// A key for another use, derived from this one with `label` (HMAC-SHA256): keys for
    /// different purposes never coincide, and none reveals the secret.
    pub(crate) fn derive(&self, label: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.0)
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
        mac.update(label);
        mac.finalize().into_bytes().to_vec()
    }

    fn mac(&self, ts: &[u8; TS_LEN], id: &[u8; ID_LEN], realm: &str) -> HmacSha256 {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail here; the
        // fallback keeps the code panic-free regardless.
        let mut mac = HmacSha256::new_from_slice(&self.0)
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
        mac.update(ts);
        mac.update(id);
        mac.update(realm.as_bytes());
        mac
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What an authentic nonce carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NonceInfo {
    pub ts: u64,
    pub id: [u8; ID_LEN],
}

/// Mints a nonce issued at `ts` with the random `id`.
pub(super) fn mint(secret: &Secret, realm: &str, ts: u64, id: [u8; ID_LEN]) -> String {
    let ts_bytes = ts.to_be_bytes();
    let tag = secret.mac(&ts_bytes, &id, realm).finalize().into_bytes();
    let mut raw = Vec::with_capacity(RAW_LEN);
    raw.extend_from_slice(&ts_bytes);
    raw.extend_from_slice(&id);
    raw.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Mints a fresh nonce issued at `now`.
pub(super) fn mint_fresh(secret: &Secret, realm: &str, now: u64) -> String {
    let mut id = [0u8; ID_LEN];
    rand::rng().fill_bytes(&mut id);
    mint(secret, realm, now, id)
}

/// Checks a nonce's MAC (in constant time) and returns what it carries, or `None` if it
/// is malformed, forged, minted under another secret or for another realm.
pub(super) fn open(secret: &Secret, realm: &str, nonce: &str) -> Option<NonceInfo> {
    if nonce.len() > 2 * RAW_LEN {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(nonce).ok()?;
    if raw.len() != RAW_LEN {
        return None;
    }
    let ts: [u8; TS_LEN] = raw.get(..TS_LEN)?.try_into().ok()?;
    let id: [u8; ID_LEN] = raw.get(TS_LEN..TS_LEN + ID_LEN)?.try_into().ok()?;
    let tag = raw.get(TS_LEN + ID_LEN..)?;
    secret.mac(&ts, &id, realm).verify_slice(tag).ok()?;
    Some(NonceInfo {
        ts: u64::from_be_bytes(ts),
        id,
    })
}

/// Outcome of recording a nonce count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NcCheck {
    /// `nc` is higher than any seen for this nonce; it is now the highest.
    Accepted,
    /// `nc` is equal to or lower than one already seen: a replay (RFC 7616 §3.4.1
    /// / RFC 2617 §3.2.2: the server detects replays by watching `nc`).
    Replay,
    /// The map had to forget this nonce (or ones issued no earlier) to stay bounded, so
    /// a replay cannot be ruled out: answer as for a stale nonce and a fresh one is used.
    Forgotten,
}

/// Highest `nc` seen per nonce, bounded to `capacity` entries.
///
/// Keyed by `(issue time, id)` so the oldest nonces come first: expired ones are dropped
/// from the front on every call, and when the map is still full the oldest live one is
/// evicted and `floor` remembers its issue time. Any nonce issued at or before `floor`
/// that is not in the map is answered [`NcCheck::Forgotten`], never accepted, so a
/// bounded map never opens a replay window.
#[derive(Debug)]
pub(super) struct NcTracker {
    seen: BTreeMap<(u64, [u8; ID_LEN]), u32>,
    capacity: usize,
    floor: Option<u64>,
}

impl NcTracker {
    pub fn new(capacity: usize) -> Self {
        NcTracker {
            seen: BTreeMap::new(),
            capacity: capacity.max(1),
            floor: None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Records `nc` for `nonce`; `lifetime` (seconds) decides which entries have expired.
    pub fn check_and_record(
        &mut self,
        nonce: NonceInfo,
        nc: u32,
        now: u64,
        lifetime: u64,
    ) -> NcCheck {
        while let Some((&(ts, _), _)) = self.seen.first_key_value() {
            if ts.saturating_add(lifetime) < now {
                self.seen.pop_first();
            } else {
                break;
            }
        }
        let key = (nonce.ts, nonce.id);
        if let Some(highest) = self.seen.get_mut(&key) {
            if nc <= *highest {
                return NcCheck::Replay;
            }
            *highest = nc;
            return NcCheck::Accepted;
        }
        if self.floor.is_some_and(|floor| nonce.ts <= floor) {
            return NcCheck::Forgotten;
        }
        while self.seen.len() >= self.capacity {
            match self.seen.pop_first() {
                Some(((ts, _), _)) => self.floor = Some(self.floor.map_or(ts, |f| f.max(ts))),
                None => break,
            }
        }
        if self.floor.is_some_and(|floor| nonce.ts <= floor) {
            // Older than what was just evicted: keep the invariant simple.
            return NcCheck::Forgotten;
        }
        self.seen.insert(key, nc);
        NcCheck::Accepted
    }
}
