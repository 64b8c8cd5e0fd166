//! What an APNs answer means: a2's result mapped to a [`Verdict`] (see the table in the
//! module docs of [`super`]), and a verdict turned into the [`PushOutcome`] the core sees.

use a2::ErrorReason;

use super::payload::TopicSource;
use crate::push::{reasons, PushOutcome};

/// Reason for a transient failure: a2 could not sign the request or build its client (bad key,
/// certificate, TLS configuration). Logged loudly.
pub const CREDENTIALS_ERROR: &str = "credentials error";

/// Reason for a transient failure: a2 could not build the HTTP request (e.g. a header value
/// that is not valid in HTTP). Logged loudly.
pub const REQUEST_BUILD_ERROR: &str = "request build error";

/// What a response (or failure) means for the push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// 200.
    Accepted,
    /// Permanent: the token (or the binding's push parameters) can never work.
    TokenDead(String),
    /// Transient, nothing for an operator to do.
    Transient(String),
    /// Transient, and an operator must fix our credentials, configuration or request.
    Misconfigured(String),
    /// `ExpiredProviderToken`: sign a new JWT and retry once.
    Resign,
}

impl Verdict {
    pub(super) fn into_outcome(self) -> PushOutcome {
        match self {
            Verdict::Accepted => PushOutcome::Accepted,
            Verdict::TokenDead(reason) => PushOutcome::permanent(reason),
            Verdict::Transient(reason) | Verdict::Misconfigured(reason) => {
                PushOutcome::transient(reason)
            }
            Verdict::Resign => PushOutcome::transient("ExpiredProviderToken"),
        }
    }
}

/// Maps what a2 returned to a verdict; see the table in the module docs.
pub(super) fn classify(
    result: &Result<a2::Response, a2::Error>,
    topic_source: TopicSource,
) -> Verdict {
    let response = match result {
        Ok(response) if response.code == 200 => return Verdict::Accepted,
        Ok(response) => response,
        Err(a2::Error::ResponseError(response)) => response,
        Err(a2::Error::RequestTimeout(_)) => return Verdict::Transient(reasons::TIMEOUT.into()),
        Err(a2::Error::ClientError(error)) => {
            let reason = if error.is_connect() {
                reasons::CONNECT_FAILED
            } else {
                reasons::TRANSPORT_ERROR
            };
            return Verdict::Transient(reason.into());
        }
        Err(a2::Error::ConnectionError(_)) => {
            return Verdict::Transient(reasons::TRANSPORT_ERROR.into())
        }
        Err(
            a2::Error::SignerError(_)
            | a2::Error::ReadError(_)
            | a2::Error::Tls(_)
            | a2::Error::UnexpectedKey(_)
            | a2::Error::InvalidCertificate,
        ) => return Verdict::Misconfigured(CREDENTIALS_ERROR.into()),
        Err(
            a2::Error::SerializeError(_)
            | a2::Error::InvalidOptions(_)
            | a2::Error::BuildRequestError(_),
        ) => return Verdict::Misconfigured(REQUEST_BUILD_ERROR.into()),
    };

    let Some(body) = &response.error else {
        let reason = format!("http {}", response.code);
        return match response.code {
            // 410's reasons are Unregistered (parsed) and ExpiredToken (unknown to a2).
            410 => Verdict::TokenDead(reason),
            // An unknown 400 reason is more likely a new request error (InvalidPushType)
            // than a token error; 403 is always about our credentials.
            400 | 403 | 404 | 405 | 413 => Verdict::Misconfigured(reason),
            _ => Verdict::Transient(reason),
        };
    };
    let reason = reason_name(&body.reason);
    match body.reason {
        ErrorReason::Unregistered
        | ErrorReason::BadDeviceToken
        | ErrorReason::DeviceTokenNotForTopic => Verdict::TokenDead(reason),
        ErrorReason::BadTopic => match topic_source {
            TopicSource::PnParam => Verdict::TokenDead(reason),
            TopicSource::Fallback => Verdict::Misconfigured(reason),
        },
        ErrorReason::ExpiredProviderToken => Verdict::Resign,
        ErrorReason::InvalidProviderToken
        | ErrorReason::MissingProviderToken
        | ErrorReason::BadCertificate
        | ErrorReason::BadCertificateEnvironment
        | ErrorReason::Forbidden
        | ErrorReason::TopicDisallowed
        | ErrorReason::TooManyProviderTokenUpdates
        | ErrorReason::BadCollapseId
        | ErrorReason::BadExpirationDate
        | ErrorReason::BadMessageId
        | ErrorReason::BadPriority
        | ErrorReason::DuplicateHeaders
        | ErrorReason::MissingDeviceToken
        | ErrorReason::MissingTopic
        | ErrorReason::PayloadEmpty
        | ErrorReason::BadPath
        | ErrorReason::MethodNotAllowed
        | ErrorReason::PayloadTooLarge => Verdict::Misconfigured(reason),
        ErrorReason::TooManyRequests
        | ErrorReason::IdleTimeout
        | ErrorReason::InternalServerError
        | ErrorReason::ServiceUnavailable
        | ErrorReason::Shutdown => Verdict::Transient(reason),
    }
}

/// APNs's own name of a reason: a2's variant names are the JSON strings it deserialises
/// (`Display` gives a description instead).
fn reason_name(reason: &ErrorReason) -> String {
    format!("{reason:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: u16, reason: Option<ErrorReason>) -> Result<a2::Response, a2::Error> {
        Err(a2::Error::ResponseError(a2::Response {
            error: reason.map(|reason| a2::ErrorBody {
                reason,
                timestamp: None,
            }),
            apns_id: None,
            code,
        }))
    }

    fn verdict(code: u16, reason: ErrorReason) -> Verdict {
        classify(&response(code, Some(reason)), TopicSource::PnParam)
    }

    #[test]
    fn ok_is_accepted() {
        let ok = Ok(a2::Response {
            error: None,
            apns_id: Some("5C0B1F46-D4E4-4AE5-A3FD-0B1E1CF6C3F8".into()),
            code: 200,
        });
        assert_eq!(classify(&ok, TopicSource::PnParam), Verdict::Accepted);
        assert_eq!(
            classify(&ok, TopicSource::PnParam).into_outcome(),
            PushOutcome::Accepted
        );
    }

    #[test]
    fn dead_tokens_are_permanent_with_apns_reason_names() {
        for (code, reason, name) in [
            (410, ErrorReason::Unregistered, "Unregistered"),
            (400, ErrorReason::BadDeviceToken, "BadDeviceToken"),
            (
                400,
                ErrorReason::DeviceTokenNotForTopic,
                "DeviceTokenNotForTopic",
            ),
        ] {
            assert_eq!(
                verdict(code, reason).into_outcome(),
                PushOutcome::permanent(name)
            );
        }
    }

    #[test]
    fn gone_without_a_known_reason_is_permanent() {
        // ExpiredToken: a2 0.10 does not know it, so the body does not parse.
        let verdict = classify(&response(410, None), TopicSource::PnParam);
        assert_eq!(verdict.into_outcome(), PushOutcome::permanent("http 410"));
    }

    #[test]
    fn apns_side_and_throttling_failures_are_transient() {
        for (code, reason, name) in [
            (429, ErrorReason::TooManyRequests, "TooManyRequests"),
            (500, ErrorReason::InternalServerError, "InternalServerError"),
            (503, ErrorReason::ServiceUnavailable, "ServiceUnavailable"),
            (503, ErrorReason::Shutdown, "Shutdown"),
            (400, ErrorReason::IdleTimeout, "IdleTimeout"),
        ] {
            assert_eq!(verdict(code, reason), Verdict::Transient(name.into()));
        }
        for code in [429, 500, 502, 503, 504] {
            assert_eq!(
                classify(&response(code, None), TopicSource::PnParam),
                Verdict::Transient(format!("http {code}"))
            );
        }
    }

    #[test]
    fn timeouts_are_transient() {
        let verdict = classify(&Err(a2::Error::RequestTimeout(10)), TopicSource::PnParam);
        assert_eq!(
            verdict.into_outcome(),
            PushOutcome::transient(reasons::TIMEOUT)
        );
    }

    #[test]
    fn expired_provider_token_asks_for_a_new_signature() {
        assert_eq!(
            verdict(403, ErrorReason::ExpiredProviderToken),
            Verdict::Resign
        );
        // If it gets as far as an outcome, it is transient.
        assert_eq!(
            Verdict::Resign.into_outcome(),
            PushOutcome::transient("ExpiredProviderToken")
        );
    }

    #[test]
    fn credential_problems_are_transient_and_loud() {
        for (code, reason, name) in [
            (
                403,
                ErrorReason::InvalidProviderToken,
                "InvalidProviderToken",
            ),
            (
                403,
                ErrorReason::MissingProviderToken,
                "MissingProviderToken",
            ),
            (403, ErrorReason::BadCertificate, "BadCertificate"),
            (
                403,
                ErrorReason::BadCertificateEnvironment,
                "BadCertificateEnvironment",
            ),
            (403, ErrorReason::Forbidden, "Forbidden"),
            (400, ErrorReason::TopicDisallowed, "TopicDisallowed"),
            (
                429,
                ErrorReason::TooManyProviderTokenUpdates,
                "TooManyProviderTokenUpdates",
            ),
        ] {
            assert_eq!(verdict(code, reason), Verdict::Misconfigured(name.into()));
        }
        assert_eq!(
            classify(&response(403, None), TopicSource::PnParam),
            Verdict::Misconfigured("http 403".into())
        );
    }

    #[test]
    fn malformed_requests_are_transient_and_loud() {
        for (code, reason, name) in [
            (400, ErrorReason::BadCollapseId, "BadCollapseId"),
            (400, ErrorReason::BadExpirationDate, "BadExpirationDate"),
            (400, ErrorReason::BadMessageId, "BadMessageId"),
            (400, ErrorReason::BadPriority, "BadPriority"),
            (400, ErrorReason::DuplicateHeaders, "DuplicateHeaders"),
            (400, ErrorReason::MissingDeviceToken, "MissingDeviceToken"),
            (400, ErrorReason::MissingTopic, "MissingTopic"),
            (400, ErrorReason::PayloadEmpty, "PayloadEmpty"),
            (404, ErrorReason::BadPath, "BadPath"),
            (405, ErrorReason::MethodNotAllowed, "MethodNotAllowed"),
            (413, ErrorReason::PayloadTooLarge, "PayloadTooLarge"),
        ] {
            assert_eq!(verdict(code, reason), Verdict::Misconfigured(name.into()));
        }
        // InvalidPushType and other reasons a2 does not know.
        for code in [400, 413] {
            assert_eq!(
                classify(&response(code, None), TopicSource::PnParam),
                Verdict::Misconfigured(format!("http {code}"))
            );
        }
    }

    #[test]
    fn bad_topic_is_permanent_only_when_the_binding_chose_it() {
        assert_eq!(
            classify(
                &response(400, Some(ErrorReason::BadTopic)),
                TopicSource::PnParam
            )
            .into_outcome(),
            PushOutcome::permanent("BadTopic")
        );
        assert_eq!(
            classify(
                &response(400, Some(ErrorReason::BadTopic)),
                TopicSource::Fallback
            ),
            Verdict::Misconfigured("BadTopic".into())
        );
    }

    #[test]
    fn local_a2_errors_are_transient() {
        let io = std::io::Error::other("boom");
        assert_eq!(
            classify(&Err(a2::Error::ReadError(io)), TopicSource::PnParam),
            Verdict::Misconfigured(CREDENTIALS_ERROR.into())
        );
        assert_eq!(
            classify(&Err(a2::Error::InvalidCertificate), TopicSource::PnParam),
            Verdict::Misconfigured(CREDENTIALS_ERROR.into())
        );
        assert_eq!(
            classify(
                &Err(a2::Error::InvalidOptions("x".into())),
                TopicSource::PnParam
            ),
            Verdict::Misconfigured(REQUEST_BUILD_ERROR.into())
        );
    }
}
