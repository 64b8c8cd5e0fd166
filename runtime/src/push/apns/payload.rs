//! What is sent for one push: the topic taken from the binding's `pn-param`, the VoIP payload
//! (cut to fit [`MAX_VOIP_PAYLOAD_BYTES`]), and the [`ApnsRequest`] that a2 sends as a
//! notification with the VoIP headers.

use std::fmt;

use a2::request::payload::PayloadLike;
use a2::{NotificationOptions, Priority, PushType};
use serde::Serialize;

use super::ApnsEnvironment;
use crate::push::redact_token;

/// Largest VoIP payload APNs accepts, in bytes (other push types: 4096).
pub const MAX_VOIP_PAYLOAD_BYTES: usize = 5120;

/// Where the `apns-topic` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TopicSource {
    /// The binding's `pn-param`.
    PnParam,
    /// [`ApnsConfig::fallback_bundle_id`](super::ApnsConfig::fallback_bundle_id).
    Fallback,
}

/// Why a `pn-param` gives no topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PnParamProblem {
    Missing,
    Malformed,
}

/// Splits an RFC 8599 §10 APNs `pn-param` into (team id, topic).
pub(super) fn parse_pn_param(pn_param: Option<&str>) -> Result<(&str, &str), PnParamProblem> {
    let param = pn_param.map(str::trim).unwrap_or("");
    if param.is_empty() {
        return Err(PnParamProblem::Missing);
    }
    let (team, topic) = param.split_once('.').ok_or(PnParamProblem::Malformed)?;
    let valid_topic = !topic.is_empty()
        && !topic.starts_with('.')
        && !topic.ends_with('.')
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if team.is_empty() || !valid_topic {
        return Err(PnParamProblem::Malformed);
    }
    Ok((team, topic))
}

/// The JSON payload of a VoIP push (no `aps`). Optional fields are left out when absent.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub(super) struct VoipPayload {
    pub(super) kind: &'static str,
    pub(super) push_id: String,
    pub(super) call_id: String,
    pub(super) callee_aor: String,
    pub(super) caller_uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) caller_display_name: Option<String>,
    pub(super) deadline_unix_ms: u64,
    /// [`PushRequest::answer_token`](crate::push::PushRequest::answer_token): never cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) answer_token: Option<String>,
    /// [`PushRequest::answer_url`](crate::push::PushRequest::answer_url): never cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) answer_url: Option<String>,
}

/// The answer token is a credential for the call: redacted as push tokens are.
impl fmt::Debug for VoipPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VoipPayload")
            .field("kind", &self.kind)
            .field("push_id", &self.push_id)
            .field("call_id", &self.call_id)
            .field("callee_aor", &self.callee_aor)
            .field("caller_uri", &self.caller_uri)
            .field("caller_display_name", &self.caller_display_name)
            .field("deadline_unix_ms", &self.deadline_unix_ms)
            .field(
                "answer_token",
                &self.answer_token.as_deref().map(redact_token),
            )
            .field("answer_url", &self.answer_url)
            .finish()
    }
}

/// Serialises `payload`, shortening (then dropping) the display name until it fits in `cap`
/// bytes. `None` if it does not fit even without a display name. Nothing else is cut: the
/// ids, URIs, answer token and answer URL are useless in part.
pub(super) fn fit_payload(mut payload: VoipPayload, cap: usize) -> Option<(VoipPayload, String)> {
    let json = serde_json::to_string(&payload).ok()?;
    if json.len() <= cap {
        return Some((payload, json));
    }
    let name = payload.caller_display_name.take()?;
    let with = |chars: usize, payload: &mut VoipPayload| -> Option<String> {
        payload.caller_display_name = (chars > 0).then(|| {
            let end = name
                .char_indices()
                .nth(chars)
                .map_or(name.len(), |(i, _)| i);
            format!("{}…", &name[..end])
        });
        serde_json::to_string(payload).ok()
    };
    // Largest number of kept characters that fits: fits(lo) holds, fits(hi) does not.
    let (mut lo, mut hi) = (0, name.chars().count());
    if with(0, &mut payload)?.len() > cap {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if with(mid, &mut payload)?.len() <= cap {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let json = with(lo, &mut payload)?;
    Some((payload, json))
}

/// Everything sent for one push, built by [`ApnsProvider::prepare`](super::ApnsProvider::prepare).
#[derive(Debug, Clone)]
pub(super) struct ApnsRequest {
    pub(super) environment: ApnsEnvironment,
    pub(super) device_token: String,
    pub(super) topic: String,
    pub(super) topic_source: TopicSource,
    pub(super) expiration: u64,
    pub(super) payload: VoipPayload,
    pub(super) payload_json: String,
}

impl ApnsRequest {
    /// The APNs headers, as a2 takes them.
    fn options(&self) -> NotificationOptions<'_> {
        NotificationOptions {
            apns_id: None,
            apns_push_type: Some(PushType::Voip),
            apns_expiration: Some(self.expiration),
            apns_priority: Some(Priority::High),
            apns_topic: Some(&self.topic),
            apns_collapse_id: None,
        }
    }

    /// What a2 sends.
    pub(super) fn notification(&self) -> Notification<'_> {
        Notification {
            options: self.options(),
            request: self,
        }
    }
}

/// An [`ApnsRequest`] as an a2 payload; its JSON is exactly the size-checked
/// [`ApnsRequest::payload_json`].
pub(super) struct Notification<'a> {
    options: NotificationOptions<'a>,
    request: &'a ApnsRequest,
}

impl fmt::Debug for Notification<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notification")
            .field("device_token", &redact_token(&self.request.device_token))
            .field("options", &self.options)
            .field("payload", &self.request.payload)
            .finish()
    }
}

impl Serialize for Notification<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.request.payload.serialize(serializer)
    }
}

impl PayloadLike for Notification<'_> {
    fn to_json_string(&self) -> Result<String, a2::Error> {
        Ok(self.request.payload_json.clone())
    }

    fn get_device_token(&self) -> &str {
        &self.request.device_token
    }

    fn get_options(&self) -> &NotificationOptions<'_> {
        &self.options
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::super::test_support::{
        cert_provider, request, request_with_answer, token_provider, ANSWER_TOKEN, ANSWER_URL,
        DEVICE,
    };
    use super::*;
    use crate::push::PushOutcome;

    #[test]
    fn voip_headers_for_token_and_certificate_setups() {
        let request = request();
        for provider in [token_provider(), cert_provider()] {
            let prepared = provider.prepare(&request).expect("prepared");
            let options = prepared.options();
            assert_eq!(options.apns_push_type, Some(PushType::Voip));
            assert!(matches!(options.apns_priority, Some(Priority::High)));
            assert_eq!(
                options.apns_priority.as_ref().map(ToString::to_string),
                Some("10".to_owned())
            );
            assert_eq!(options.apns_topic, Some("com.example.app.voip"));
            assert_eq!(options.apns_expiration, Some(request.deadline_unix_secs()));
            assert!(options.apns_expiration > Some(0));
            assert!(options.apns_id.is_none());
            assert!(options.apns_collapse_id.is_none());
            assert_eq!(prepared.device_token, DEVICE);
            assert_eq!(prepared.environment, ApnsEnvironment::Production);
        }
    }

    #[test]
    fn topic_is_everything_after_the_first_dot_of_pn_param() {
        assert_eq!(
            parse_pn_param(Some("ABCD1234.com.example.app.voip")),
            Ok(("ABCD1234", "com.example.app.voip"))
        );
        let mut request = request();
        request.pn_param = Some("ABCD1234.com.example.app.voip".into());
        let prepared = token_provider().prepare(&request).expect("prepared");
        assert_eq!(prepared.topic, "com.example.app.voip");
        assert_eq!(prepared.topic_source, TopicSource::PnParam);
    }

    #[test]
    fn malformed_pn_params_are_recognised() {
        assert_eq!(parse_pn_param(None), Err(PnParamProblem::Missing));
        assert_eq!(parse_pn_param(Some("  ")), Err(PnParamProblem::Missing));
        for bad in [
            "ABCD1234",
            ".com.example.app.voip",
            "ABCD1234.",
            "ABCD1234..voip",
            "ABCD1234.com.example.",
            "ABCD1234.com example",
        ] {
            assert_eq!(
                parse_pn_param(Some(bad)),
                Err(PnParamProblem::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn payload_carries_the_call_and_no_aps() {
        let request = request();
        let prepared = token_provider().prepare(&request).expect("prepared");
        let json: serde_json::Value =
            serde_json::from_str(&prepared.payload_json).expect("payload is JSON");
        assert_eq!(json["kind"], "incoming_call");
        assert_eq!(json["push_id"], "7-3-12");
        assert_eq!(json["call_id"], "a84b4c76e66710@pc33.example.org");
        assert_eq!(json["callee_aor"], "sip:alice@example.com");
        assert_eq!(json["caller_uri"], "sip:bob@example.org");
        assert_eq!(json["caller_display_name"], "Bob");
        let deadline_ms = request
            .deadline
            .duration_since(UNIX_EPOCH)
            .expect("after epoch")
            .as_millis();
        assert_eq!(
            json["deadline_unix_ms"].as_u64().map(u128::from),
            Some(deadline_ms)
        );
        assert!(json.get("aps").is_none(), "VoIP pushes carry no aps");
        // Without the app API: no answer keys at all (not even `null`).
        assert!(json.get("answer_token").is_none(), "{json}");
        assert!(json.get("answer_url").is_none(), "{json}");
        assert!(!prepared.payload_json.contains("answer_"));

        let mut anonymous = request.clone();
        anonymous.caller_display_name = None;
        let prepared = token_provider().prepare(&anonymous).expect("prepared");
        assert!(!prepared.payload_json.contains("caller_display_name"));
    }

    #[test]
    fn payload_carries_the_answer_token_and_url_beside_the_call_id() {
        let request = request_with_answer();
        let prepared = token_provider().prepare(&request).expect("prepared");
        let json: serde_json::Value =
            serde_json::from_str(&prepared.payload_json).expect("payload is JSON");
        assert_eq!(json["answer_token"], ANSWER_TOKEN);
        assert_eq!(json["answer_url"], ANSWER_URL);
        assert_eq!(json["call_id"], "a84b4c76e66710@pc33.example.org");
        assert!(json.get("aps").is_none(), "still a bare VoIP payload");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys.len(),
            9,
            "the seven call fields and the two answer fields: {keys:?}"
        );
        assert!(prepared.payload_json.ends_with(&format!(
            r#","answer_token":"{ANSWER_TOKEN}","answer_url":"{ANSWER_URL}"}}"#
        )));

        // Either one alone is carried alone.
        let mut token_only = request.clone();
        token_only.answer_url = None;
        let prepared = token_provider().prepare(&token_only).expect("prepared");
        let json: serde_json::Value =
            serde_json::from_str(&prepared.payload_json).expect("payload is JSON");
        assert_eq!(json["answer_token"], ANSWER_TOKEN);
        assert!(json.get("answer_url").is_none(), "{json}");
    }

    #[test]
    fn what_a2_sends_is_the_size_checked_json() {
        let prepared = token_provider()
            .prepare(&request_with_answer())
            .expect("prepared");
        let notification = prepared.notification();
        assert_eq!(
            notification.to_json_string().expect("json"),
            prepared.payload_json
        );
        assert_eq!(
            serde_json::to_string(&notification).expect("json"),
            prepared.payload_json
        );
        assert_eq!(notification.get_device_token(), DEVICE);
        assert_eq!(
            notification.get_options().apns_push_type,
            Some(PushType::Voip)
        );
        assert!(
            !format!("{notification:?}").contains(DEVICE),
            "token redacted"
        );
        assert!(
            !format!("{notification:?}").contains(ANSWER_TOKEN),
            "answer token redacted"
        );
        assert!(format!("{notification:?}").contains(ANSWER_URL));
    }

    #[test]
    fn huge_display_name_is_cut_to_fit_and_the_ids_are_kept() {
        for unit in ["x", "é", "😀", "\""] {
            let mut request = request_with_answer();
            request.caller_display_name = Some(unit.repeat(20_000));
            let prepared = token_provider().prepare(&request).expect("prepared");
            assert!(
                prepared.payload_json.len() <= MAX_VOIP_PAYLOAD_BYTES,
                "{unit}: {} bytes",
                prepared.payload_json.len()
            );
            // Not cut more than needed: one more character would not fit.
            assert!(
                prepared.payload_json.len() + 8 > MAX_VOIP_PAYLOAD_BYTES,
                "{unit}: {} bytes",
                prepared.payload_json.len()
            );
            let json: serde_json::Value =
                serde_json::from_str(&prepared.payload_json).expect("payload is JSON");
            let name = json["caller_display_name"].as_str().expect("name kept");
            assert!(name.ends_with('…'), "{unit}");
            assert!(name
                .trim_end_matches('…')
                .chars()
                .all(|c| c.to_string() == unit));
            assert_eq!(json["push_id"], request.id);
            assert_eq!(json["call_id"], request.call_id);
            assert_eq!(json["callee_aor"], request.callee_aor);
            assert_eq!(json["caller_uri"], request.caller_uri);
            assert_eq!(json["answer_token"], ANSWER_TOKEN, "never cut");
            assert_eq!(json["answer_url"], ANSWER_URL, "never cut");
        }
    }

    #[test]
    fn name_is_dropped_when_nothing_else_fits_and_oversize_ids_fail_transiently() {
        let mut request = request();
        request.caller_display_name = Some("Bob".into());
        // Leave room for the payload without the name, but not for "B…".
        let bare = serde_json::to_string(&VoipPayload {
            kind: "incoming_call",
            push_id: request.id.clone(),
            call_id: request.call_id.clone(),
            callee_aor: request.callee_aor.clone(),
            caller_uri: request.caller_uri.clone(),
            caller_display_name: None,
            deadline_unix_ms: 1,
            answer_token: None,
            answer_url: None,
        })
        .expect("json");
        let payload = VoipPayload {
            kind: "incoming_call",
            push_id: request.id.clone(),
            call_id: request.call_id.clone(),
            callee_aor: request.callee_aor.clone(),
            caller_uri: request.caller_uri.clone(),
            caller_display_name: Some("Bob".into()),
            deadline_unix_ms: 1,
            answer_token: None,
            answer_url: None,
        };
        let (fitted, json) = fit_payload(payload.clone(), bare.len()).expect("fits bare");
        assert_eq!(fitted.caller_display_name, None);
        assert_eq!(json, bare);
        assert!(fit_payload(payload, bare.len() - 1).is_none());

        request.caller_uri = format!("sip:{}@example.org", "b".repeat(6000));
        let verdict = token_provider().prepare(&request).expect_err("too large");
        assert_eq!(
            verdict.into_outcome(),
            PushOutcome::transient("PayloadTooLarge")
        );
    }
}
