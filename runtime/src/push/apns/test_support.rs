//! Fixtures and helpers shared by the unit tests of the `apns` modules.

use std::time::{Duration, SystemTime};

use super::{ApnsConfig, ApnsProvider, KeySource};
use crate::push::{PushKind, PushRequest};

// Throwaway test credentials, generated once with OpenSSL 3 for these tests only:
// `openssl ecparam -genkey -name prime256v1 -noout | openssl pkcs8 -topk8 -nocrypt`, and a
// self-signed RSA 2048 certificate exported as PKCS#12 (password `s3cret`) with the
// default (AES/PBES2) and the legacy (3DES, SHA-1 MAC, as Keychain exports) algorithms.
// See `fixtures/README.md`.

/// A P-256 `.p8`-style key.
pub(super) const TOKEN_KEY: &str = include_str!("fixtures/token_key.p8");

/// The self-signed test certificate.
pub(super) const CERT_PEM: &str = include_str!("fixtures/cert.pem");

/// Its key, PKCS#8.
pub(super) const KEY_PKCS8_PEM: &str = include_str!("fixtures/key_pkcs8.pem");

/// The same key, PKCS#1 (`openssl rsa -traditional`).
pub(super) const KEY_PKCS1_PEM: &str = include_str!("fixtures/key_pkcs1.pem");

/// Certificate + key as PKCS#12, OpenSSL 3 defaults (PBES2, AES-256-CBC).
pub(super) const P12_MODERN: &[u8] = include_bytes!("fixtures/cert_modern.p12");

/// Certificate + key as PKCS#12, legacy 3DES with a SHA-1 MAC.
pub(super) const P12_LEGACY: &[u8] = include_bytes!("fixtures/cert_legacy.p12");

pub(super) const TEAM: &str = "ABCD1234EF";
pub(super) const KEY_ID: &str = "KEY1234567";
pub(super) const DEVICE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

pub(super) fn token_config() -> ApnsConfig {
    ApnsConfig::token(KeySource::Bytes(TOKEN_KEY.into()), KEY_ID, TEAM)
}

pub(super) fn token_provider() -> ApnsProvider {
    ApnsProvider::new(token_config()).expect("token provider")
}

pub(super) fn cert_provider() -> ApnsProvider {
    ApnsProvider::new(ApnsConfig::pem(
        KeySource::Bytes(CERT_PEM.into()),
        Some(KeySource::Bytes(KEY_PKCS8_PEM.into())),
    ))
    .expect("certificate provider")
}

pub(super) fn request() -> PushRequest {
    PushRequest {
        id: "7-3-12".to_owned(),
        kind: PushKind::IncomingCall,
        callee_aor: "sip:alice@example.com".to_owned(),
        pn_provider: "apns".to_owned(),
        pn_prid: DEVICE.to_owned(),
        pn_param: Some(format!("{TEAM}.com.example.app.voip")),
        caller_uri: "sip:bob@example.org".to_owned(),
        caller_display_name: Some("Bob".to_owned()),
        call_id: "a84b4c76e66710@pc33.example.org".to_owned(),
        deadline: SystemTime::now() + Duration::from_secs(30),
        answer_token: None,
        answer_url: None,
    }
}

/// An answer token as the app API mints them (`pa1.<boot>.<call>.<device>.<expires>.<mac>`).
pub(super) const ANSWER_TOKEN: &str =
    "pa1.3f2a9c01d4e5b6a7.12.3.1767225632.0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// Where the app posts its answer.
pub(super) const ANSWER_URL: &str = "https://sip.example.com:5443/v1/calls/answer";

/// [`request`] with the app API on: the call push carries an answer token and URL.
pub(super) fn request_with_answer() -> PushRequest {
    PushRequest {
        answer_token: Some(ANSWER_TOKEN.to_owned()),
        answer_url: Some(ANSWER_URL.to_owned()),
        ..request()
    }
}
