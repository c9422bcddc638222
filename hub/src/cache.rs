//! The watch cache: every WhatsAppSession, kept current by one watch, with an index by
//! clienteId and the public status of each precomputed (QR images included) and serialized
//! once per change, so a read is a hash lookup and never an API server call. Only the views are
//! kept, not the resources. Changes are broadcast for live push, per clienteId, so a change
//! wakes only the streams of its clienteId. When the API server goes away the cache keeps the
//! last known state, says it is stale, and the watcher's backoff reconnects by itself.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::StreamExt;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::broadcast;
use whatsapp_crds::{PairingMethod, SessionState, WhatsAppSession};

use crate::metrics::Metrics;
use crate::model::{Qr, SessionStatus, State};
use crate::qr;

/// One session as the hub serves it.
#[derive(Debug, PartialEq)]
pub struct SessionView {
    pub namespace: String,
    pub name: String,
    pub cliente_id: i64,
    /// The address the session pod announced: it tells that the pod serves, and a new one that
    /// the pod was replaced. Never called: calls go to the address derived from the name.
    pub endpoint: Option<String>,
    pub pairing: PairingMethod,
    /// What the frontend sees.
    pub status: SessionStatus,
    /// `status` as JSON, serialized once: the body of every status read and the data of every
    /// status event.
    pub status_json: Bytes,
}

/// The name of the one session that serves a clienteId, in the hub's session namespace.
/// Kubernetes keeps names unique, so one clienteId maps to exactly one session by
/// construction; a session by any other name, or whose `clienteId` is not its name's, serves
/// no one (whoever can create sessions cannot take a tenant's slot).
pub fn session_name(cliente_id: i64) -> String {
    format!("cliente-{cliente_id}")
}

/// The clienteId a session serves, if any (see [`session_name`]).
fn served_id(session: &WhatsAppSession) -> Option<i64> {
    let id = session.spec.cliente_id;
    (id > 0 && session.metadata.name.as_deref() == Some(session_name(id).as_str())).then_some(id)
}

impl SessionView {
    pub fn of(session: &WhatsAppSession, previous: Option<&SessionView>) -> SessionView {
        let status = session.status.clone().unwrap_or_default();
        let state = status.state.unwrap_or(SessionState::Disconnected);
        // The pod writes READY; only the operator sees the pod go (a lost node): READY is
        // believed while the operator does not say the pod is not ready.
        let pod_down =
            status.conditions.iter().find(|c| c.type_ == "PodReady").filter(|c| c.status == "False");
        let connected = state == SessionState::Ready && pod_down.is_none();
        let (reason, message) = match pod_down.filter(|_| state == SessionState::Ready) {
            Some(c) => (Some(c.reason.clone()), Some(c.message.clone())),
            None => (status.reason.clone(), status.message.clone()),
        };
        let qr = status.qr.as_ref().filter(|_| state == SessionState::QrRequired).map(|q| {
            // Rendering costs a few milliseconds: reuse the image while the code is the same.
            let base64 = previous
                .and_then(|p| p.status.qr.as_ref())
                .filter(|p| p.url == q.code)
                .map(|p| p.base64.clone())
                .unwrap_or_else(|| qr::png_data_url(&q.code).unwrap_or_default());
            Qr {
                base64,
                url: q.code.clone(),
                attempts: q.attempts,
                timestamp: q.updated_at.0.as_millisecond(),
                expires_at: q.expires_at.as_ref().map(|t| t.0.as_millisecond()),
            }
        });
        let served = SessionStatus {
            connected,
            state: State::from(state),
            session: session.name_any(),
            qr,
            cliente_id: session.spec.cliente_id,
            namespace: session.namespace().unwrap_or_default(),
            suspended: session.spec.suspended,
            reason,
            message,
            pairing_code: status.pairing_code.clone().filter(|_| state == SessionState::QrRequired),
            phone: status.me.as_ref().map(|m| m.phone.clone()),
            push_name: status.me.as_ref().and_then(|m| m.push_name.clone()),
        };
        SessionView {
            namespace: session.namespace().unwrap_or_default(),
            name: session.name_any(),
            cliente_id: session.spec.cliente_id,
            endpoint: status.endpoint.clone(),
            pairing: session.spec.pairing.method,
            status_json: serde_json::to_vec(&served).expect("a status serializes").into_boxed_slice().into(),
            status: served,
        }
    }
}

/// A change of a clienteId's served session (None: it has none any more).
#[derive(Clone, Debug)]
pub struct Change {
    pub session: Option<Arc<SessionView>>,
}

/// The served sessions, by clienteId.
type Index = foldhash::HashMap<i64, Arc<SessionView>>;

/// Changes a live subscriber may fall behind by before it skips to the present.
const CHANGES_PER_SUBSCRIBER: usize = 16;

/// The live subscribers' channels, by clienteId.
type Subscribers = Arc<Mutex<HashMap<i64, broadcast::Sender<Change>>>>;

pub struct SessionCache {
    /// WhatsAppSessions in the watch (served or not).
    resources: AtomicUsize,
    index: RwLock<Index>,
    subscribers: Subscribers,
    synced: AtomicBool,
    /// Since when the watch has been failing, in nanoseconds since `epoch` plus one (0: it is
    /// not). An atomic: every response reads it.
    stale_since: AtomicU64,
    epoch: Instant,
    metrics: Metrics,
}

impl SessionCache {
    /// An empty cache, for its [`SessionCache::run`] loop to fill.
    pub fn new(metrics: Metrics) -> Arc<SessionCache> {
        Arc::new(SessionCache {
            resources: AtomicUsize::new(0),
            index: RwLock::default(),
            subscribers: Subscribers::default(),
            synced: AtomicBool::new(false),
            stale_since: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
        })
    }

    /// Watches `api` forever, keeping the cache current.
    pub async fn run(self: Arc<Self>, api: Api<WhatsAppSession>) {
        let lists = whatsapp_runtime::initial_lists(&api).await;
        let events = watcher::watcher(api, lists).backoff(WatchBackoff::default());
        let mut events = std::pin::pin!(events);
        // A relist is staged and swapped in at its end, so reads never see half a list.
        let mut staging: Option<(Index, HashSet<String>)> = None;
        // The names of the resources in the watch (the sessions this namespace holds).
        let mut names = HashSet::new();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    let since = self.epoch.elapsed().as_nanos() as u64 + 1;
                    if self
                        .stale_since
                        .compare_exchange(0, since, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        tracing::warn!(error = %e, "lost the watch on WhatsAppSessions: serving the last known state");
                    }
                    continue;
                }
            };
            if self.stale_since.swap(0, Ordering::Relaxed) != 0 {
                tracing::info!("the watch on WhatsAppSessions is back");
            }
            match event {
                Event::Init => staging = Some(Default::default()),
                Event::InitApply(session) => {
                    let Some((index, listed)) = staging.as_mut() else { continue };
                    listed.insert(session.name_any());
                    if let Some(id) = served_id(&session) {
                        let previous = self.index.read().expect("lock").get(&id).cloned();
                        index.insert(id, Arc::new(SessionView::of(&session, previous.as_deref())));
                    }
                }
                Event::InitDone => {
                    if let Some((fresh, listed)) = staging.take() {
                        names = listed;
                        self.swap(fresh);
                    }
                    self.resources.store(names.len(), Ordering::Relaxed);
                    if !self.synced.swap(true, Ordering::Relaxed) {
                        tracing::info!(sessions = self.len(), "session cache synced");
                    }
                }
                Event::Apply(session) => {
                    names.insert(session.name_any());
                    self.apply(&session);
                }
                Event::Delete(session) => {
                    names.remove(&session.name_any());
                    self.delete(&session);
                }
            }
            if staging.is_none() {
                self.resources.store(names.len(), Ordering::Relaxed);
            }
            self.metrics.cache_sessions.set(self.len() as i64);
        }
    }

    fn apply(&self, session: &WhatsAppSession) {
        let Some(id) = served_id(session) else { return };
        // The view (a QR picture, a few milliseconds) is made outside the write lock, so
        // readers never wait on it. Only the watch loop writes, so `before` stays current.
        let before = self.get(id);
        let view = Arc::new(SessionView::of(session, before.as_deref()));
        if before.as_deref() == Some(&*view) {
            return;
        }
        self.index.write().expect("lock").insert(id, view.clone());
        self.announce(id, before, Some(view));
    }

    fn delete(&self, session: &WhatsAppSession) {
        let Some(id) = served_id(session) else { return };
        let Some(old) = self.index.write().expect("lock").remove(&id) else { return };
        self.announce(id, Some(old), None);
    }

    fn swap(&self, fresh: Index) {
        let mut index = self.index.write().expect("lock");
        let old = std::mem::replace(&mut *index, fresh);
        let ids: BTreeSet<i64> = old.keys().chain(index.keys()).copied().collect();
        let changes: Vec<_> =
            ids.into_iter().map(|id| (id, old.get(&id).cloned(), index.get(&id).cloned())).collect();
        drop(index);
        for (id, before, after) in changes {
            self.announce(id, before, after);
        }
    }

    /// Tells live subscribers when what a clienteId is served changed.
    fn announce(&self, cliente_id: i64, before: Option<Arc<SessionView>>, after: Option<Arc<SessionView>>) {
        let same = match (&before, &after) {
            (Some(b), Some(a)) => b.status == a.status && b.name == a.name,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let mut subscribers = self.subscribers.lock().expect("lock");
        if let Some(channel) = subscribers.get(&cliente_id)
            && channel.send(Change { session: after }).is_err()
        {
            // Its last subscriber left.
            subscribers.remove(&cliente_id);
        }
    }

    /// The session served for a clienteId.
    pub fn get(&self, cliente_id: i64) -> Option<Arc<SessionView>> {
        self.index.read().expect("lock").get(&cliente_id).cloned()
    }

    /// Every served session (one per clienteId), ordered by clienteId, optionally of one
    /// clienteId only.
    pub fn list(&self, only: Option<i64>) -> Vec<Arc<SessionView>> {
        let index = self.index.read().expect("lock");
        let mut ids: Vec<i64> = match only {
            Some(id) => vec![id],
            None => index.keys().copied().collect(),
        };
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| index.get(&id).cloned()).collect()
    }

    /// WhatsAppSessions in the watch (served or not).
    pub fn len(&self) -> usize {
        self.resources.load(Ordering::Relaxed)
    }

    /// Live changes of what `cliente_id` is served, from now on.
    pub fn subscribe(&self, cliente_id: i64) -> Changes {
        let mut subscribers = self.subscribers.lock().expect("lock");
        let channel =
            subscribers.entry(cliente_id).or_insert_with(|| broadcast::channel(CHANGES_PER_SUBSCRIBER).0);
        Changes { cliente_id, receiver: channel.subscribe(), subscribers: self.subscribers.clone() }
    }

    /// Filled from a complete list at least once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// How long the cache has not known whether it is current (zero when it is).
    pub fn staleness(&self) -> Duration {
        match self.stale_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => self.epoch.elapsed().saturating_sub(Duration::from_nanos(since - 1)),
        }
    }
}

/// One subscriber's changes of a clienteId; its channel goes with its last subscriber.
pub struct Changes {
    cliente_id: i64,
    receiver: broadcast::Receiver<Change>,
    subscribers: Subscribers,
}

impl Changes {
    /// The next change; `Lagged` when this subscriber fell behind (changes were skipped).
    pub async fn recv(&mut self) -> Result<Change, broadcast::error::RecvError> {
        self.receiver.recv().await
    }

    #[cfg(test)]
    pub fn try_recv(&mut self) -> Result<Change, broadcast::error::TryRecvError> {
        self.receiver.try_recv()
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        let mut subscribers = self.subscribers.lock().expect("lock");
        // This receiver still counts: it is the last one when the count is 1.
        if subscribers.get(&self.cliente_id).is_some_and(|c| c.receiver_count() <= 1) {
            subscribers.remove(&self.cliente_id);
        }
    }
}

/// A cache filled by hand, for tests of the routes.
#[cfg(test)]
impl SessionCache {
    pub fn fill_for_tests(&self, sessions: &[WhatsAppSession]) {
        for session in sessions {
            self.apply(session);
        }
        self.synced.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

/// Retries of the sessions' watch: 250 ms doubling to at most 5 s, with jitter, back to the
/// start once the watch works again. kube's default goes to 30 s and resets only after two
/// minutes, so a hub outlived an API server outage by up to two minutes of stale answers; one
/// watch per hub replica retrying every few seconds costs the API server nothing.
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        // Full jitter over the upper half: replicas that lost the watch together retry apart.
        Some(delay / 2 + delay.mul_f64(rand::random::<f64>() / 2.0))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn the_watch_is_retried_within_seconds_and_from_the_start_once_it_works() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<Duration> = backoff.by_ref().take(12).collect();
        assert!(delays.iter().all(|d| *d <= WatchBackoff::MAX), "{delays:?}");
        assert!(delays[11] >= WatchBackoff::MAX / 2, "{delays:?}");
        backoff.reset();
        assert!(backoff.next().unwrap() <= WatchBackoff::FIRST);
    }
}
