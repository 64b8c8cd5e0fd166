//! Parsing `Authorization` / `Proxy-Authorization` header values (RFC 3261 §25.1
//! `credentials`, RFC 7616 §3.4).
//!
//! Tolerant by design: parameters in any order, names compared case-insensitively,
//! values quoted or bare tokens, linear white space (including folded lines) anywhere
//! between elements, empty list elements, unknown parameters ignored. Strict where
//! ambiguity would be a security problem: a repeated parameter is an error. Never
//! panics; work is linear in the input length.

use super::algorithm::Algorithm;

/// Digest credentials as the client sent them (values unquoted and unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `username` (RFC 7616 §3.4).
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`, as received.
    pub nonce: String,
    /// `uri` (the digest-uri; RFC 3261 §22.4 requires it to equal the Request-URI).
    pub uri: String,
    /// `response`, the request digest in hex.
    pub response: String,
    /// `algorithm`; MD5 when the parameter is absent (RFC 7616 §3.3).
    pub algorithm: Algorithm,
    /// `qop=auth` with its `nc` and `cnonce`; `None` is the legacy RFC 2069 form.
    pub qop: Option<QopAuth>,
    /// `opaque`, if sent.
    pub opaque: Option<String>,
}

/// The parameters that come with `qop=auth` (RFC 7616 §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QopAuth {
    /// `nc` exactly as sent (it enters the hash verbatim).
    pub nc: String,
    /// `nc`'s value (hexadecimal, 1 to 8 digits; RFC 7616 sends exactly 8).
    pub nc_value: u32,
    /// `cnonce`.
    pub cnonce: String,
}

/// Why a header value is not usable digest credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The value is empty.
    #[error("empty credentials")]
    Empty,
    /// A scheme other than `Digest` (e.g. RFC 4475 §3.1.2.1's `NoOneKnowsThisScheme`).
    /// A registrar answers 401 with a fresh digest challenge, not 400.
    #[error("unsupported authentication scheme {0:?}")]
    UnknownScheme(String),
    /// Syntax error.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// A parameter given twice.
    #[error("parameter {0:?} given twice")]
    DuplicateParameter(String),
    /// A required parameter is missing.
    #[error("missing parameter {0:?}")]
    MissingParameter(&'static str),
    /// An `algorithm` the server never offers (e.g. `MD5-sess`, `SHA-512-256`):
    /// answer 401 with a fresh challenge, which lists what is supported.
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A `qop` the server never offers (e.g. `auth-int`).
    #[error("unsupported qop {0:?}")]
    UnsupportedQop(String),
    /// `nc` is not 1 to 8 hex digits, or is zero.
    #[error("bad nonce count {0:?}")]
    BadNonceCount(String),
}

/// Parses an `Authorization` or `Proxy-Authorization` header value (the text after the
/// colon), e.g. `Digest username="bob", realm="biloxi.com", nonce="…", uri="sip:bob@biloxi.com",
/// response="…", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="0a4f113b"`.
///
/// The scheme name is case-insensitive; a scheme other than `Digest` gives
/// [`ParseError::UnknownScheme`].
pub fn parse_authorization(value: &str) -> Result<Credentials, ParseError> {
    let s = value.trim_matches(is_lws_char);
    if s.is_empty() {
        return Err(ParseError::Empty);
    }
    let scheme_end = s.bytes().position(|b| !is_token_byte(b)).unwrap_or(s.len());
    let scheme = s.get(..scheme_end).unwrap_or("");
    if scheme.is_empty() {
        return Err(ParseError::Malformed("expected an authentication scheme"));
    }
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(ParseError::UnknownScheme(scheme.to_string()));
    }
    let rest = s.get(scheme_end..).unwrap_or("");
    if !rest.is_empty() && !rest.starts_with(is_lws_char) {
        return Err(ParseError::Malformed(
            "expected white space after the scheme",
        ));
    }
    let params = parse_params(rest)?;
    let take = |name: &'static str| -> Option<String> {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let required = |name: &'static str| take(name).ok_or(ParseError::MissingParameter(name));

    let username = required("username")?;
    let realm = required("realm")?;
    let nonce = required("nonce")?;
    let uri = required("uri")?;
    let response = required("response")?;
    let algorithm = match take("algorithm") {
        None => Algorithm::Md5,
        Some(a) => Algorithm::from_name(&a).ok_or(ParseError::UnsupportedAlgorithm(a))?,
    };
    let qop = match take("qop") {
        None => None,
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let nc = required("nc")?;
            let cnonce = required("cnonce")?;
            let nc_value = parse_nc(&nc).ok_or_else(|| ParseError::BadNonceCount(nc.clone()))?;
            Some(QopAuth {
                nc,
                nc_value,
                cnonce,
            })
        }
        Some(q) => return Err(ParseError::UnsupportedQop(q)),
    };
    Ok(Credentials {
        username,
        realm,
        nonce,
        uri,
        response,
        algorithm,
        qop,
        opaque: take("opaque"),
    })
}

/// `nc`: 1 to 8 hex digits (RFC 7616 §3.4 `nc-value = 8LHEX`; case and short forms
/// tolerated), non-zero (counting starts at 1).
fn parse_nc(nc: &str) -> Option<u32> {
    if nc.is_empty() || nc.len() > 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(nc, 16).ok().filter(|&v| v > 0)
}

/// Parses `name = value *(, name = value)` with lowercase names.
fn parse_params(input: &str) -> Result<Vec<(String, String)>, ParseError> {
    let b = input.as_bytes();
    let mut i = 0;
    let mut out: Vec<(String, String)> = Vec::new();
    loop {
        while i < b.len() && (is_lws_byte(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let name_start = i;
        while i < b.len() && is_token_byte(b[i]) {
            i += 1;
        }
        let name = input
            .get(name_start..i)
            .filter(|n| !n.is_empty())
            .ok_or(ParseError::Malformed("expected a parameter name"))?
            .to_ascii_lowercase();
        while i < b.len() && is_lws_byte(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(ParseError::Malformed("expected '=' after a parameter name"));
        }
        i += 1;
        while i < b.len() && is_lws_byte(b[i]) {
            i += 1;
        }
        let value = if b.get(i) == Some(&b'"') {
            i += 1;
            let mut bytes = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err(ParseError::Malformed("unterminated quoted string")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        // quoted-pair (RFC 3261 §25.1): the next byte stands for itself.
                        // A multi-byte character's later bytes follow in the next rounds.
                        let Some(&next) = b.get(i + 1) else {
                            return Err(ParseError::Malformed("unterminated quoted string"));
                        };
                        bytes.push(next);
                        i += 2;
                    }
                    Some(&c) => {
                        bytes.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(bytes).map_err(|_| ParseError::Malformed("invalid UTF-8"))?
        } else {
            // A bare token; tolerant: anything up to a comma or white space.
            let start = i;
            while i < b.len() && b[i] != b',' && !is_lws_byte(b[i]) && b[i] != b'"' {
                i += 1;
            }
            input
                .get(start..i)
                .ok_or(ParseError::Malformed("invalid parameter value"))?
                .to_string()
        };
        while i < b.len() && is_lws_byte(b[i]) {
            i += 1;
        }
        if i < b.len() && b[i] != b',' {
            return Err(ParseError::Malformed("expected ',' between parameters"));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(ParseError::DuplicateParameter(name));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// RFC 3261 §25.1 `token` characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Linear white space, including the CR LF of a folded header line.
fn is_lws_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_lws_char(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}
