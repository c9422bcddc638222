//! What every request handler shares.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::cache::{SessionCache, SessionView};
use crate::error::ApiError;
use crate::feeds::{MessageFeeds, Subscription, Upstream};
use crate::login::Logins;
use crate::metrics::Metrics;
use crate::upstream::SessionPods;
use crate::writes::SessionWriter;

/// What every request handler shares, behind one pointer: a request clones it a few times
/// (each middleware and extractor), so a clone is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl From<Shared> for AppState {
    fn from(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub cache: Arc<SessionCache>,
    pub auth: Arc<Authenticator>,
    pub logins: Option<Arc<Logins>>,
    pub pods: Arc<SessionPods>,
    pub writer: Arc<SessionWriter>,
    /// The clienteId the `/api/admin/whatsapp/*` routes act on.
    pub admin_cliente_id: Option<i64>,
    pub metrics: Metrics,
    /// Turns true when the hub is stopping: live streams end so shutdown completes.
    pub shutdown: watch::Receiver<bool>,
    pub request_timeout: Duration,
    /// The OpenAPI document, rendered once at startup.
    pub openapi: Arc<OnceLock<String>>,
    /// Message changes from the session pods, one connection per session with live streams.
    pub feeds: Arc<MessageFeeds>,
}

impl AppState {
    /// The session served for `cliente_id`, once the cache is usable.
    pub fn session(&self, cliente_id: i64) -> Result<Arc<SessionView>, ApiError> {
        if !self.cache.synced() {
            return Err(ApiError::NotReady);
        }
        self.cache.get(cliente_id).ok_or(ApiError::SessionNotFound(cliente_id))
    }

    /// The message changes of `cliente_id`'s session, shared with its other live streams.
    pub fn message_changes(&self, cliente_id: i64) -> Subscription {
        self.feeds.subscribe(cliente_id, || Upstream {
            cache: self.cache.clone(),
            pods: self.pods.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
        })
    }
}
