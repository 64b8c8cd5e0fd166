//! An `Authorization` / `Proxy-Authorization` header value, as a registrar receives it
//! (RFC 3261 §22, RFC 7616): parsed into digest credentials. No input may panic or hang
//! (libFuzzer's -timeout; the parser promises work linear in the input).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pushpark::auth::{parse_authorization, Algorithm};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(credentials) = parse_authorization(&text) else {
        return;
    };
    // What the verifier relies on after a successful parse.
    let _ = credentials.algorithm.name();
    assert_eq!(
        Algorithm::from_name(credentials.algorithm.name()),
        Some(credentials.algorithm)
    );
    if let Some(qop) = &credentials.qop {
        assert!(qop.nc_value > 0);
        assert!(!qop.nc.is_empty() && qop.nc.len() <= 8);
        assert_eq!(u32::from_str_radix(&qop.nc, 16).ok(), Some(qop.nc_value));
    }
});
