//! Formatting digest challenges (RFC 7616 §3.3, RFC 3261 §22.4, RFC 8760 §2.4).

use super::algorithm::Algorithm;

/// Which challenge header to send: a registrar or user agent server answers 401 with
/// `WWW-Authenticate`, a proxy 407 with `Proxy-Authenticate` (RFC 3261 §22.2, §22.3).
/// The credentials come back in `Authorization` / `Proxy-Authorization` respectively;
/// both carry the same syntax, parsed by [`parse_authorization`](super::parse_authorization).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// 401 Unauthorized + `WWW-Authenticate`.
    Www,
    /// 407 Proxy Authentication Required + `Proxy-Authenticate`.
    Proxy,
}

impl ChallengeKind {
    /// The response status code.
    pub fn status_code(self) -> u16 {
        match self {
            ChallengeKind::Www => 401,
            ChallengeKind::Proxy => 407,
        }
    }

    /// The challenge header's name.
    pub fn challenge_header(self) -> &'static str {
        match self {
            ChallengeKind::Www => "WWW-Authenticate",
            ChallengeKind::Proxy => "Proxy-Authenticate",
        }
    }

    /// The name of the header the client answers with.
    pub fn credentials_header(self) -> &'static str {
        match self {
            ChallengeKind::Www => "Authorization",
            ChallengeKind::Proxy => "Proxy-Authorization",
        }
    }
}

/// One challenge header value, e.g.
/// `Digest realm="atlanta.com", nonce="…", algorithm=SHA-256, qop="auth"`.
/// `opaque` is appended when given, `stale=true` when `stale`.
pub(super) fn format_challenge(
    realm: &str,
    nonce: &str,
    algorithm: Algorithm,
    opaque: Option<&str>,
    stale: bool,
) -> String {
    let mut s = format!(
        "Digest realm={}, nonce={}, algorithm={}, qop=\"auth\"",
        quote(realm),
        quote(nonce),
        algorithm.name()
    );
    if let Some(opaque) = opaque {
        s.push_str(", opaque=");
        s.push_str(&quote(opaque));
    }
    if stale {
        s.push_str(", stale=true");
    }
    s
}

/// A quoted-string (RFC 3261 §25.1): `"` and `\` escaped as quoted-pairs, and CR / LF
/// (which could split the header) dropped.
pub(super) fn quote(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    s.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                s.push('\\');
                s.push(c);
            }
            '\r' | '\n' => {}
            _ => s.push(c),
        }
    }
    s.push('"');
    s
}
