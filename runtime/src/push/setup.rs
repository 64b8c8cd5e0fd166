//! The push providers a configuration asks for, built and routed: `[push.providers]` by
//! name, `[push.routes]` from RFC 8599 `pn-provider` to provider.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Provider};
use crate::push::{
    ApnsAuth, ApnsConfig, ApnsEnvironment, ApnsError, ApnsProvider, Dispatcher, DispatcherError,
    FcmConfig, FcmError, FcmProvider, KeySource, LogProvider, ProviderLimits, PushProvider,
    PushReports, ServiceAccountSource, WebhookAuth, WebhookConfig, WebhookError, WebhookProvider,
};

/// Why the push providers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("push provider: {0}")]
    Webhook(#[from] WebhookError),
    #[error("push provider: {0}")]
    Fcm(#[from] FcmError),
    #[error("push provider: {0}")]
    Apns(#[from] ApnsError),
    #[error("push providers: {0}")]
    Dispatcher(#[from] DispatcherError),
}

/// The dispatcher over the configured providers, and `extra` ones of the embedding
/// program's own (a name here wins over a configured one), routed by `[push.routes]`.
pub fn dispatcher<T: Send + 'static>(
    config: &Config,
    extra: HashMap<String, Arc<dyn PushProvider>>,
) -> Result<(Dispatcher<T>, PushReports<T>), SetupError> {
    let mut providers: HashMap<String, Arc<dyn PushProvider>> = extra;
    for (name, provider) in &config.push.providers {
        if providers.contains_key(name) {
            continue;
        }
        let provider: Arc<dyn PushProvider> = match provider {
            Provider::Log => Arc::new(LogProvider::named(name.clone())),
            Provider::Webhook {
                url,
                timeout,
                bearer_token,
                format,
            } => {
                let mut webhook = WebhookConfig::new(url.clone());
                webhook.name = name.clone();
                webhook.timeout = *timeout;
                webhook.auth = bearer_token.clone().map(WebhookAuth::Bearer);
                webhook.format = *format;
                Arc::new(WebhookProvider::new(webhook)?)
            }
            Provider::Apns {
                key,
                key_id,
                team_id,
                certificate,
                certificate_password,
                certificate_key,
                sandbox,
                bundle_id,
                timeout,
            } => {
                let auth = match (key, key_id, team_id, certificate) {
                    (Some(key), Some(key_id), Some(team_id), _) => ApnsAuth::Token {
                        key: KeySource::Path(key.clone()),
                        key_id: key_id.clone(),
                        team_id: team_id.clone(),
                    },
                    (_, _, _, Some(cert)) if is_pkcs12(cert) => ApnsAuth::Pkcs12 {
                        file: KeySource::Path(cert.clone()),
                        password: certificate_password.clone().unwrap_or_default(),
                    },
                    (_, _, _, cert) => ApnsAuth::Pem {
                        cert: KeySource::Path(cert.clone().unwrap_or_default()),
                        key: certificate_key.clone().map(KeySource::Path),
                    },
                };
                let mut apns = ApnsConfig::new(auth);
                apns.name = name.clone();
                if *sandbox {
                    apns.environment = ApnsEnvironment::Sandbox;
                }
                apns.fallback_bundle_id = bundle_id.clone();
                apns.timeout = *timeout;
                Arc::new(ApnsProvider::new(apns)?)
            }
            Provider::Fcm {
                service_account,
                project_id,
                api_base_url,
                token_url,
                timeout,
            } => {
                let mut fcm = FcmConfig::new(ServiceAccountSource::Path(service_account.clone()));
                fcm.name = name.clone();
                fcm.project_id = project_id.clone();
                if let Some(url) = api_base_url {
                    fcm.api_base_url = url.clone();
                }
                fcm.token_url = token_url.clone();
                fcm.timeout = *timeout;
                Arc::new(FcmProvider::new(fcm)?)
            }
        };
        providers.insert(name.clone(), provider);
    }
    let mut builder = Dispatcher::builder();
    for (pns, name) in &config.push.routes {
        if let Some(provider) = providers.get(name.get_ref().as_str()) {
            builder = builder.provider(pns, Arc::clone(provider), ProviderLimits::default());
        }
    }
    // `apns.dev` (the sandbox, as Flexisip spells it) goes where `apns` goes.
    if config.push.routes.contains_key("apns") && !config.push.routes.contains_key("apns.dev") {
        builder = builder.alias("apns.dev", "apns");
    }
    Ok(builder.build()?)
}

fn is_pkcs12(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"))
}
