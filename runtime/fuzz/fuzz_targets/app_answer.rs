//! A request body posted to the app API (`POST /v1/calls/answer`), as an app or an attacker
//! sends it: parsed into a token and an answer, and the token checked against a key, as the
//! node checks it. No input may panic or hang; a token the key did not mint never verifies.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pushpark::app_api::parse_answer;
use pushpark::app_api::token::{AnswerKey, Verified, MAX_TOKEN_LEN};
use pushpark::auth::Secret;
use pushpark_model::{CallId, DeviceId};

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let key = AnswerKey::new(&Secret::from_bytes(&[7; 32]).expect("a key"), 1);
    if let Ok((token, _)) = parse_answer(data) {
        assert!(token.len() <= MAX_TOKEN_LEN);
        // A body's token is a guess: it verifies only if it is one the key minted.
        if let Verified::Good(call, device) = key.verify(&token, NOW) {
            let expires = token.rsplit('.').nth(1).and_then(|e| e.parse().ok());
            assert_eq!(
                Some(token.as_str()),
                expires.map(|e| key.mint(call, device, e)).as_deref()
            );
        }
    }
    // The raw input as a token: never a panic, and a minted token round-trips.
    let text = String::from_utf8_lossy(data);
    let _ = key.verify(&text, NOW);
    let minted = key.mint(CallId(data.len() as u64), DeviceId(7), NOW);
    assert_eq!(
        key.verify(&minted, NOW),
        Verified::Good(CallId(data.len() as u64), DeviceId(7))
    );
});
