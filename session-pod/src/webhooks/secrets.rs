//! The endpoints' signing secrets, read from the Secrets `spec.webhooks[].secretRef` names
//! through the Kubernetes API (the pod's Role may get exactly those), kept a short while so a
//! rotated secret takes effect within [`CACHE_FOR`]. Their values are never logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use whatsapp_crds::WebhookSecretRef;

/// How long a Secret read is used before it is read again.
pub const CACHE_FOR: Duration = Duration::from_secs(30);

/// Where the signing secrets come from.
pub trait Keys: Send + Sync {
    /// The value of the key `secret` names (before `whsec_` decoding); the error names the
    /// Secret and the key, never a value.
    fn value<'a>(&'a self, secret: &'a WebhookSecretRef) -> BoxFuture<'a, Result<Vec<u8>, String>>;
}

type Data = BTreeMap<String, ByteString>;

/// The Secrets of the session's namespace, through the Kubernetes API.
pub struct KubeSecrets {
    api: Api<Secret>,
    read: Mutex<HashMap<String, (Instant, Data)>>,
}

impl KubeSecrets {
    pub fn new(api: Api<Secret>) -> KubeSecrets {
        KubeSecrets { api, read: Mutex::new(HashMap::new()) }
    }

    async fn data(&self, name: &str) -> Result<Data, String> {
        let cached = self.read.lock().map_err(|e| e.to_string())?.get(name).cloned();
        if let Some((_, data)) = cached.filter(|(at, _)| at.elapsed() < CACHE_FOR) {
            return Ok(data);
        }
        let secret = self.api.get(name).await.map_err(|e| format!("reading the Secret {name}: {e}"))?;
        let data = secret.data.unwrap_or_default();
        self.read.lock().map_err(|e| e.to_string())?.insert(name.to_string(), (Instant::now(), data.clone()));
        Ok(data)
    }
}

impl Keys for KubeSecrets {
    fn value<'a>(&'a self, secret: &'a WebhookSecretRef) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let data = self.data(&secret.name).await?;
            data.get(&secret.key)
                .map(|v| v.0.clone())
                .ok_or_else(|| format!("the Secret {} has no key {}", secret.name, secret.key))
        })
    }
}
