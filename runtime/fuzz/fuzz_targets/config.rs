//! A configuration file, as `pushpark --config` reads it: TOML parsed into the typed
//! configuration and checked. No input may panic; errors name the file. The values a
//! server computes from a valid configuration must come out too.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pushpark::config::Config;

fuzz_target!(|text: &str| {
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            let _ = config.core();
            let _ = config.digest_algorithms();
            let _ = config.realm();
            let _ = config.serves_push_provider("apns");
            let _ = config.serves_push_provider("fcm");
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
});
