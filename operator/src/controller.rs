//! The reconciler: each `WhatsAppSession` into its children, its conditions and its Events.
//!
//! Children are watched once into caches; a reconcile compares what it would apply with the
//! cache and writes only what differs, so a converged session costs no API writes, however
//! often its pod patches its status.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{Instrument, field, info, info_span, warn};
use whatsapp_crds::WhatsAppSession;

use crate::children::{self, Children, MANAGED_BY, Names, SESSION_LABEL, Settings};
use crate::compare::{is_subset, quantity_value};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::ownership;
use crate::rollout::{self, Budget, Cause, Decision, StsView};
use crate::slim::{self, Packable, Packed};
use crate::status::{self, Observation, POD_READY, RECONCILED, ROLL_PENDING};

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "whatsapp-operator";
/// Periodic re-check of a converged session (no writes unless something drifted).
const RESYNC: Duration = Duration::from_secs(600);
/// Retry delay after an error or an invalid spec: soon, but never a hot loop.
const RETRY: Duration = Duration::from_secs(15);
/// How soon a session first in line for a restart slot asks again; one further back asks
/// less often (a round of restarts later), up to [`ROLL_WAIT_MAX`].
const ROLL_WAIT: Duration = Duration::from_secs(2);
const ROLL_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long progress of a pod that stays not ready (see [`status::pod_progress_only`]) must
/// hold before it is written. A pod's start passes through several such steps (missing,
/// waiting for its volume, for a node, to start): a status write each was half of the
/// operator's status writes on a start of 1,000 sessions (bench-operator), for steps that
/// mostly pass before anyone reads them. A step that lasts is shown; a flip is written at once.
const POD_PROGRESS_HOLD: Duration = Duration::from_secs(10);

/// Sessions reconciled at once. Unbounded, a start on 1,000 sessions ran 1,000 reconciles
/// together, each with its own connection and buffers: most of the operator's memory, kept by
/// the allocator after the burst (RSS about 190 MiB; about 80 MiB at 32, 74 MiB at 16, 110-135
/// MiB at 64). A lower bound costs reconcile throughput at start (see `bench-operator`).
const CONCURRENCY: u16 = 32;

/// Caches of everything the reconciler reads.
#[derive(Clone)]
pub struct Caches {
    pub sessions: Store<WhatsAppSession>,
    statefulsets: Cache<StatefulSet, StsView>,
    services: Cache<Service>,
    service_accounts: Cache<ServiceAccount>,
    roles: Cache<Role>,
    role_bindings: Cache<RoleBinding>,
    secrets: Cache<Secret>,
    pods: Cache<Pod>,
    claims: Cache<PersistentVolumeClaim>,
    storage_classes: Store<StorageClass>,
}

/// A cache of packed objects (see [`Packed`]), read only through here: a reconcile always
/// gets its objects back whole.
#[derive(Clone)]
struct Cache<K: Packable, S: Clone + 'static = ()>(Store<Packed<K, S>>);

impl<K: Packable, S: Clone + 'static> Cache<K, S> {
    fn packed(&self, name: &str, namespace: &str) -> Option<Arc<Packed<K, S>>> {
        self.0.get(&ObjectRef::new(name).within(namespace))
    }

    fn get(&self, name: &str, namespace: &str) -> Result<Option<Arc<K>>> {
        Ok(self.packed(name, namespace).map(|p| p.unpack()).transpose()?.map(Arc::new))
    }
}

impl Cache<StatefulSet, StsView> {
    /// Every StatefulSet, by `namespace/name`, as the rollout budget sees it (no unpacking).
    fn fleet(&self) -> Vec<(String, StsView)> {
        let key = |s: &Packed<StatefulSet, StsView>| {
            format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())
        };
        self.0.state().iter().map(|s| (key(s), s.summary)).collect()
    }
}

/// A cache a child is compared against before it is applied: the child as it is, in JSON
/// (what the compare reads, without building the typed object in between).
trait Cached<K> {
    fn cached(&self, desired: &K) -> Result<Option<serde_json::Value>>;
}

impl<K: Packable + Resource, S: Clone + 'static> Cached<K> for Cache<K, S> {
    fn cached(&self, desired: &K) -> Result<Option<serde_json::Value>> {
        let packed = self.packed(&desired.name_any(), &desired.namespace().unwrap_or_default());
        Ok(packed.map(|p| p.to_value()).transpose()?)
    }
}

/// The object a reconcile already read from its cache (a StatefulSet, unpacked once).
impl<K: Serialize> Cached<K> for Option<Arc<K>> {
    fn cached(&self, _: &K) -> Result<Option<serde_json::Value>> {
        Ok(self.as_deref().map(serde_json::to_value).transpose()?)
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub caches: Caches,
    /// How many sessions may restart their pod at a time (see [`crate::rollout`]).
    pub budget: Budget,
    /// The operator status last written per session UID (see [`Written`]).
    written: std::sync::Mutex<std::collections::HashMap<String, Written>>,
}

/// The operator's last status write to a session. The session cache can lag behind our own
/// write: while it still shows the resourceVersion the session had when we wrote, a stale read
/// must not write (and announce) the same thing twice; once it shows any other version (ours,
/// or someone's after it: a wiped status), the cache is the truth again.
struct Written {
    /// What was written, timestamps aside.
    fingerprint: serde_json::Value,
    resource_version: Option<String>,
    /// Pod progress seen since that write and not written yet: what (a fingerprint) and since
    /// when (see [`POD_PROGRESS_HOLD`]).
    held: Option<(serde_json::Value, Instant)>,
}

/// Where the operator looks for sessions.
#[derive(Clone, Debug)]
pub enum Scope {
    Cluster,
    Namespace(String),
}

impl Scope {
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        match self {
            Scope::Cluster => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }
}

/// A watch of one kind, feeding its cache: the objects it touches, as they change.
type Changes<K> = futures::stream::BoxStream<'static, std::result::Result<K, watcher::Error>>;

/// The watches behind [`Caches`], for the controller to be triggered by.
struct Watches {
    sessions: Changes<WhatsAppSession>,
    statefulsets: Changes<Packed<StatefulSet, StsView>>,
    services: Changes<Packed<Service>>,
    service_accounts: Changes<Packed<ServiceAccount>>,
    roles: Changes<Packed<Role>>,
    role_bindings: Changes<Packed<RoleBinding>>,
    secrets: Changes<Packed<Secret>>,
    pods: Changes<Packed<Pod>>,
    claims: Changes<Packed<PersistentVolumeClaim>>,
    storage_classes: Changes<StorageClass>,
}

/// A cache of `api`'s objects and the watch that fills it. managedFields are never read here
/// and are most of an object's size: they are dropped before caching (a third of the
/// operator's memory at 1,000 sessions), and `keep` drops what else a reconcile never reads
/// and packs the rest (see [`crate::slim`]).
fn cached<K, T>(api: Api<K>, config: &watcher::Config, keep: fn(K) -> T) -> (Store<T>, Changes<T>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    T: Resource<DynamicType = K::DynamicType> + Clone + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<T>();
    let kept = move |mut obj: K| {
        obj.managed_fields_mut().clear();
        keep(obj)
    };
    let stream = watcher(api, config.clone())
        .default_backoff()
        .map_ok(move |event| match event {
            watcher::Event::Apply(obj) => watcher::Event::Apply(kept(obj)),
            watcher::Event::Delete(obj) => watcher::Event::Delete(kept(obj)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitApply(obj) => watcher::Event::InitApply(kept(obj)),
            watcher::Event::InitDone => watcher::Event::InitDone,
        })
        .reflect(writer)
        .touched_objects()
        .boxed();
    (store, stream)
}

/// Starts every watch and waits until each child cache has listed: before that a session's
/// pod, claim or children look missing, and a reconcile would write PodReady=False, warn
/// PodLost and apply everything again, at every start and failover. (The sessions' own watch
/// is left to the controller: its first list is what triggers every session.)
async fn watch(client: &Client, scope: &Scope) -> (Caches, Watches) {
    let any = whatsapp_runtime::initial_lists(&scope.api::<WhatsAppSession>(client)).await;
    let managed = any.clone().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let (sessions, session_changes) = cached(scope.api(client), &any, slim::session);
    let (statefulsets, mut sts) = cached(scope.api(client), &managed, slim::statefulset);
    let (services, mut svc) = cached(scope.api(client), &managed, slim::whole);
    let (service_accounts, mut sa) = cached(scope.api(client), &managed, slim::whole);
    let (roles, mut role) = cached(scope.api(client), &managed, slim::whole);
    let (role_bindings, mut rb) = cached(scope.api(client), &managed, slim::whole);
    let (secrets, mut secret) = cached(scope.api(client), &managed, slim::whole);
    let (pods, mut pod) = cached(scope.api(client), &managed, slim::pod);
    let (claims, mut claim) = cached(scope.api(client), &managed, slim::claim);
    let (storage_classes, mut class) = cached(Api::all(client.clone()), &any, std::convert::identity);
    futures::join!(
        listed(&mut sts, &statefulsets),
        listed(&mut svc, &services),
        listed(&mut sa, &service_accounts),
        listed(&mut role, &roles),
        listed(&mut rb, &role_bindings),
        listed(&mut secret, &secrets),
        listed(&mut pod, &pods),
        listed(&mut claim, &claims),
        listed(&mut class, &storage_classes),
    );
    let caches = Caches {
        sessions,
        statefulsets: Cache(statefulsets),
        services: Cache(services),
        service_accounts: Cache(service_accounts),
        roles: Cache(roles),
        role_bindings: Cache(role_bindings),
        secrets: Cache(secrets),
        pods: Cache(pods),
        claims: Cache(claims),
        storage_classes,
    };
    let changes = Watches {
        sessions: session_changes,
        statefulsets: sts,
        services: svc,
        service_accounts: sa,
        roles: role,
        role_bindings: rb,
        secrets: secret,
        pods: pod,
        claims: claim,
        storage_classes: class,
    };
    (caches, changes)
}

/// Sessions by state and pod restarts, counted off the reconcile path: every few seconds
/// from the caches, until dropped.
fn gauges(ctx: Arc<Context>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let states = ctx.caches.sessions.state();
            ctx.metrics.set_sessions(states.iter().map(|s| s.status.as_ref().and_then(|st| st.state)));
            let fleet = ctx.caches.statefulsets.fleet();
            ctx.metrics.set_rollout(ctx.budget.observe(&fleet, Instant::now()));
        }
    }))
}

/// Runs the controller until `shutdown` resolves. Watches start here, so a replica that is
/// not the leader holds no caches and makes no requests.
pub async fn run(
    client: Client,
    scope: Scope,
    settings: Settings,
    metrics: Metrics,
    reporter: Reporter,
    budget: Budget,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // A shutdown while the caches start (a replica told to stop just as it began to lead)
    // stops at once: nothing has been reconciled yet.
    let mut shutdown = Box::pin(shutdown);
    let (caches, changes) = tokio::select! {
        started = watch(&client, &scope) => started,
        () = &mut shutdown => return,
    };
    let sessions = caches.sessions.clone();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings,
        metrics,
        caches,
        budget,
        written: Default::default(),
    });
    let _gauges = gauges(ctx.clone());

    // Pods and claims are not owned by the session (the StatefulSet owns them): map by label.
    let by_label = |obj: &kube::api::ObjectMeta| -> Option<ObjectRef<WhatsAppSession>> {
        let name = obj.labels.as_ref()?.get(SESSION_LABEL)?;
        Some(ObjectRef::new(name).within(obj.namespace.as_deref()?))
    };
    // A new or removed storage class may fix a session waiting for it.
    let class_sessions = sessions.clone();
    Controller::for_stream(changes.sessions, sessions)
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .owns_stream(changes.statefulsets)
        .owns_stream(changes.services)
        .owns_stream(changes.service_accounts)
        .owns_stream(changes.roles)
        .owns_stream(changes.role_bindings)
        .owns_stream(changes.secrets)
        .watches_stream(changes.pods, move |pod| by_label(pod.meta()))
        .watches_stream(changes.claims, move |claim| by_label(claim.meta()))
        .watches_stream(changes.storage_classes, move |_class| {
            class_sessions
                .state()
                .into_iter()
                .filter(|s| s.spec.storage.storage_class_name.is_some())
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn listed<K, T>(stream: &mut futures::stream::BoxStream<'static, T>, store: &Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::select! {
        _ = store.wait_until_ready() => {}
        _ = async { while stream.next().await.is_some() {} } => {}
    }
}

/// Stops a background task when the controller stops, however it stops (a lost lease drops it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn reconcile(session: Arc<WhatsAppSession>, ctx: Arc<Context>) -> Result<Action> {
    let span = info_span!("reconcile", session = %session.name_any(), namespace = field::Empty, writes = field::Empty);
    if let Some(ns) = session.namespace() {
        span.record("namespace", ns.as_str());
    }
    let started = Instant::now();
    ctx.metrics.reconciliations.inc();
    let result =
        Reconciler { ctx: &ctx, session: &session, writes: AtomicU32::new(0), requeue: None, rolled: None }
            .run()
            .instrument(span)
            .await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

fn error_policy(session: Arc<WhatsAppSession>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(session = %session.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_errors.with_label_values(&[error.category()]).inc();
    Action::requeue(RETRY)
}

/// One reconcile of one session.
struct Reconciler<'a> {
    ctx: &'a Context,
    session: &'a WhatsAppSession,
    /// API writes so far (the independent children are applied concurrently).
    writes: AtomicU32,
    /// When to look again, if sooner than the default (a session waiting for a restart slot).
    requeue: Option<Duration>,
    /// The StatefulSet as this reconcile wrote it with a new pod template: fresher than the
    /// cache, which may not show that write yet when the pod is already being replaced.
    rolled: Option<StatefulSet>,
}

impl Reconciler<'_> {
    async fn run(mut self) -> Result<Action> {
        if self.session.metadata.deletion_timestamp.is_some() {
            // Owner references hand the children to the garbage collector; the StatefulSet's
            // claim retention policy keeps or deletes the login volume.
            return Ok(Action::await_change());
        }
        let name = self.session.name_any();
        let namespace = self.session.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
        let names = Names::of(&name);
        let desired = children::desired(self.session, &self.ctx.settings)?;

        let reconciled = match self.spec_problem(&namespace, &names)? {
            Some(problem) => problem,
            None => match self.apply_children(desired, &namespace).await? {
                Some(pending) => pending,
                None => Observation::new(true, "Applied", "every child matches the spec"),
            },
        };
        let pod = self.ctx.caches.pods.get(&names.pod, &namespace)?;
        let cached = self.ctx.caches.statefulsets.get(&names.statefulset, &namespace)?;
        let sts = self.rolled.as_ref().or(cached.as_deref());
        let pod_ready = status::pod_ready(self.session, pod.as_deref(), sts);
        self.update_status(&reconciled, &pod_ready).await?;
        let writes = self.writes.load(Ordering::Relaxed);
        tracing::Span::current().record("writes", writes);
        if writes > 0 {
            info!(writes, reconciled = reconciled.status, pod = %pod_ready.reason, "reconciled");
        }
        let default = if reconciled.status { RESYNC } else { RETRY };
        Ok(Action::requeue(self.requeue.unwrap_or(default)))
    }

    /// A spec the API server accepted but the cluster cannot honour: a missing storage
    /// class, or a volume asked to shrink.
    fn spec_problem(&self, namespace: &str, names: &Names) -> Result<Option<Observation>> {
        if let Some(class) = &self.session.spec.storage.storage_class_name
            && self.ctx.caches.storage_classes.get(&ObjectRef::new(class)).is_none()
        {
            return Ok(Some(Observation::new(
                false,
                "StorageClassNotFound",
                format!("spec.storage.storageClassName {class:?} names no StorageClass in the cluster"),
            )));
        }
        let claim = self.ctx.caches.claims.get(&names.claim, namespace)?;
        if let Some(problem) = claim.as_deref().and_then(|c| another_tenants(c, self.session)) {
            return Ok(Some(problem));
        }
        let current = claim
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| quantity_value(&q.0));
        let wanted = quantity_value(&self.session.spec.storage.size.0);
        if let (Some(current), Some(wanted)) = (current, wanted)
            && wanted < current
        {
            return Ok(Some(Observation::new(
                false,
                "StorageShrinkRefused",
                format!(
                    "spec.storage.size {} is smaller than the existing volume {}: volumes cannot shrink",
                    self.session.spec.storage.size.0,
                    claim_size(claim.as_deref()).unwrap_or_default()
                ),
            )));
        }
        Ok(None)
    }

    /// Applies every child. A pod restart the rollout budget holds back keeps the running pod
    /// template and is told back (`Reconciled=False`, `RollPending`).
    async fn apply_children(&mut self, desired: Children, namespace: &str) -> Result<Option<Observation>> {
        let caches = self.ctx.caches.clone();
        let Children { secret, service_account, role, role_binding, service, statefulset } = desired;
        // Independent of each other: applied at once, so a reconcile waits for one round trip
        // instead of four. Each runs to its end (a failure of one must not cancel a write of
        // another in flight). The RoleBinding comes after its Role: unless the operator may
        // `bind` any Role (it may not, with the chart's RBAC), the API server checks the
        // binding against the Role's rules, and refuses it while the Role does not exist. The
        // StatefulSet comes last: its pod needs the Secret, the ServiceAccount and its rights.
        let (secret, service_account, role, service) = futures::join!(
            self.apply(&caches.secrets, secret, namespace),
            self.apply(&caches.service_accounts, service_account, namespace),
            self.apply(&caches.roles, role, namespace),
            self.apply(&caches.services, service, namespace),
        );
        secret?;
        service_account?;
        role?;
        service?;
        self.apply(&caches.role_bindings, role_binding, namespace).await?;

        let existing =
            caches.statefulsets.get(&statefulset.name_any(), &statefulset.namespace().unwrap_or_default())?;
        if let Some(frozen) = existing.as_ref().filter(|e| children::frozen_fields_differ(e, &statefulset)) {
            self.replace_statefulset(frozen, namespace).await?;
            self.resize_claim(namespace).await?;
            self.apply(&existing, statefulset, namespace).await?;
            return Ok(None);
        }
        self.apply_statefulset(existing, statefulset, namespace).await
    }

    /// Applies the StatefulSet; a new pod template goes through the rollout budget.
    async fn apply_statefulset(
        &mut self,
        cached: Option<Arc<StatefulSet>>,
        mut desired: StatefulSet,
        namespace: &str,
    ) -> Result<Option<Observation>> {
        let Some(existing) = cached.as_deref().filter(|e| template_differs(e, &desired)) else {
            self.apply(&cached, desired, namespace).await?;
            return Ok(None);
        };
        let key = format!("{namespace}/{}", existing.name_any());
        let cause = self.roll_cause(existing, &desired, namespace)?;
        let decision = self.request_roll(&key, cause);
        if let Decision::Wait { rolling, ahead, limit } = decision {
            info!(?cause, rolling, ahead, limit, "pod restart waits for a slot");
            if let (Some(spec), Some(running)) = (desired.spec.as_mut(), existing.spec.as_ref()) {
                spec.template = running.template.clone();
            }
            self.apply(&cached, desired, namespace).await?;
            let rounds = u32::try_from(ahead / limit.max(1)).unwrap_or(u32::MAX);
            self.requeue = Some(ROLL_WAIT.saturating_mul(rounds.saturating_add(1)).min(ROLL_WAIT_MAX));
            return Ok(Some(roll_pending(limit)));
        }
        info!(?cause, "restarting the pod on a new template");
        match self.apply(&cached, desired, namespace).await {
            Ok(applied) => {
                let generation = applied.as_ref().unwrap_or(existing).metadata.generation;
                self.ctx.budget.applied(&key, generation.unwrap_or_default());
                self.rolled = applied;
                Ok(None)
            }
            Err(e) => {
                self.ctx.budget.abandon(&key);
                Err(e)
            }
        }
    }

    /// Why the pod template changes (see [`rollout::cause`]).
    fn roll_cause(&self, existing: &StatefulSet, desired: &StatefulSet, namespace: &str) -> Result<Cause> {
        let names = Names::of(&self.session.name_any());
        let pod = self.ctx.caches.pods.get(&names.pod, namespace)?;
        let serving = status::pod_ready(self.session, pod.as_deref(), Some(existing)).status;
        Ok(rollout::cause(existing, desired, serving))
    }

    /// Asks the budget, with the fleet as the StatefulSet cache shows it.
    fn request_roll(&self, key: &str, cause: Cause) -> Decision {
        let fleet = self.ctx.caches.statefulsets.fleet();
        let created = self.session.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
        let now = Instant::now();
        let decision = self.ctx.budget.request(key, (created, key.to_string()), cause, &fleet, now);
        self.ctx.metrics.set_rollout(self.ctx.budget.observe(&fleet, now));
        decision
    }

    /// Writes `desired` unless the cached object already matches it: creates it when the
    /// cache has none (else server-side applies it); returns the object as written, if it was.
    async fn apply<K>(&self, cache: &impl Cached<K>, desired: K, namespace: &str) -> Result<Option<K>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let cached = cache.cached(&desired)?;
        if let Some(actual) = &cached
            && is_subset(&serde_json::to_value(&desired)?, actual)
        {
            return Ok(None);
        }
        let name = desired.name_any();
        let kind = K::kind(&());
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), namespace);
        let applied = match &cached {
            // A create costs the API server less than an apply (see `crate::ownership`).
            None => match api
                .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), dry_run: false }, &desired)
                .await
            {
                // There already (the cache lags behind, or someone else made it): applied.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    self.server_side_apply(&api, desired).await?
                }
                created => created?,
            },
            Some(_) => self.server_side_apply(&api, desired).await?,
        };
        self.wrote(&kind);
        // A child that differs while the spec it was built from is unchanged was changed by
        // someone else; after a spec edit it differs because the spec does.
        let converged = status::current(self.session, RECONCILED)
            .is_some_and(|c| c.status == "True" && c.observed_generation == self.session.metadata.generation);
        if cached.is_some() && converged {
            self.publish("Repaired", format!("{kind} {name} had drifted from the spec and was restored"))
                .await;
        }
        Ok(Some(applied))
    }

    /// Server-side applies `desired`, once the fields the operator created it with are the
    /// apply's (see [`ownership`]).
    async fn server_side_apply<K>(&self, api: &Api<K>, desired: K) -> Result<K>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    {
        let name = desired.name_any();
        if ownership::adopt_created(api, &name, FIELD_MANAGER).await? {
            self.wrote(&K::kind(&()));
        }
        // The full object, with apiVersion and kind, as server-side apply wants it.
        let mut body = serde_json::to_value(&desired)?;
        body["apiVersion"] = json!(K::api_version(&()));
        body["kind"] = json!(K::kind(&()));
        Ok(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?)
    }

    /// Deletes a StatefulSet whose frozen fields must change, leaving its pod running and its
    /// claim in place (the new StatefulSet adopts both). The claim retention is set to Retain
    /// first, so the login volume survives whatever `whenDeleted` says.
    async fn replace_statefulset(&mut self, existing: &StatefulSet, namespace: &str) -> Result<()> {
        let api: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), namespace);
        let name = existing.name_any();
        // A merge patch, not an apply: applying this fragment as our field manager would
        // release every other field we own.
        let keep = json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&keep)).await?;
        self.wrote("StatefulSet");
        let orphan =
            DeleteParams { propagation_policy: Some(PropagationPolicy::Orphan), ..DeleteParams::default() };
        api.delete(&name, &orphan).await?;
        self.wrote("StatefulSet");
        self.publish(
            "StatefulSetReplaced",
            format!(
                "StatefulSet {name} replaced to change fields it cannot update in place; pod and volume kept"
            ),
        )
        .await;
        Ok(())
    }

    /// Grows the existing claim when the spec asks for more. Only a StorageClass that allows
    /// expansion can; otherwise the refusal is told in a Warning event, and the session keeps
    /// running on its current volume.
    async fn resize_claim(&mut self, namespace: &str) -> Result<()> {
        let names = Names::of(&self.session.name_any());
        let claim = self.ctx.caches.claims.get(&names.claim, namespace)?;
        let current = claim_size(claim.as_deref()).and_then(|q| quantity_value(&q));
        let wanted = quantity_value(&self.session.spec.storage.size.0);
        if let (Some(current), Some(wanted)) = (current, wanted)
            && wanted > current
        {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), namespace);
            let grow =
                json!({"spec": {"resources": {"requests": {"storage": self.session.spec.storage.size.0}}}});
            match api.patch(&names.claim, &PatchParams::default(), &Patch::Merge(&grow)).await {
                Ok(_) => self.wrote("PersistentVolumeClaim"),
                Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
                    let note = format!(
                        "volume {} cannot grow to {}: {}",
                        names.claim, self.session.spec.storage.size.0, status.message
                    );
                    self.publish_typed(
                        kube::runtime::events::EventType::Warning,
                        "StorageResizeFailed",
                        note,
                    )
                    .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Writes the operator's conditions and observedGeneration, only when they changed, and
    /// publishes the Events their transitions call for.
    async fn update_status(&mut self, reconciled: &Observation, pod_ready: &Observation) -> Result<()> {
        let generation = self.session.metadata.generation;
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let previous_reconciled = status::current(self.session, RECONCILED);
        let previous_pod = status::current(self.session, POD_READY);
        let conditions = [
            status::condition(RECONCILED, reconciled, previous_reconciled, generation, &now),
            status::condition(POD_READY, pod_ready, previous_pod, generation, &now),
        ];
        let observed = self.session.status.as_ref().and_then(|s| s.observed_generation);
        let changed = observed != generation
            || status::differs(previous_reconciled, &conditions[0])
            || status::differs(previous_pod, &conditions[1]);
        let uid = self.session.uid().unwrap_or_default();
        // What we would write, timestamps aside, to recognise a repeat of our last write.
        let fingerprint = json!([generation, reconciled, pod_ready]);
        let resource_version = self.session.resource_version();
        if !changed || self.repeats_last_write(&uid, &fingerprint, &resource_version) {
            return Ok(());
        }
        let progress_only = observed == generation
            && !status::differs(previous_reconciled, &conditions[0])
            && status::pod_progress_only(previous_pod, &conditions[1]);
        if progress_only && let Some(wait) = self.hold(&uid, &fingerprint) {
            self.requeue = Some(self.requeue.map_or(wait, |r| r.min(wait)));
            return Ok(());
        }
        let notices = status::notices(previous_reconciled, reconciled, previous_pod, pod_ready);
        let api: Api<WhatsAppSession> =
            Api::namespaced(self.ctx.client.clone(), &self.session.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": WhatsAppSession::api_version(&()),
            "kind": WhatsAppSession::kind(&()),
            "status": {"observedGeneration": generation, "conditions": conditions},
        });
        api.patch_status(
            &self.session.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.remember_written(uid, Written { fingerprint, resource_version, held: None });
        self.wrote("WhatsAppSessionStatus");
        for notice in notices {
            self.publish_typed(notice.type_, notice.reason, notice.note).await;
        }
        Ok(())
    }

    /// Whether `fingerprint` repeats our last status write to this session on the same
    /// resourceVersion (a stale read of our own write).
    fn repeats_last_write(
        &self,
        uid: &str,
        fingerprint: &serde_json::Value,
        resource_version: &Option<String>,
    ) -> bool {
        let written = self.ctx.written.lock().expect("lock");
        written.get(uid).is_some_and(|last| {
            &last.fingerprint == fingerprint && &last.resource_version == resource_version
        })
    }

    /// How much longer pod progress `fingerprint` must hold before it is written; `None`: write
    /// it now (it held long enough, or nothing was written to this session since we started).
    fn hold(&self, uid: &str, fingerprint: &serde_json::Value) -> Option<Duration> {
        let mut written = self.ctx.written.lock().expect("lock");
        let last = written.get_mut(uid)?;
        match &last.held {
            Some((held, since)) if held == fingerprint => POD_PROGRESS_HOLD.checked_sub(since.elapsed()),
            _ => {
                last.held = Some((fingerprint.clone(), Instant::now()));
                Some(POD_PROGRESS_HOLD)
            }
        }
    }

    fn remember_written(&self, uid: String, last: Written) {
        let mut written = self.ctx.written.lock().expect("lock");
        written.insert(uid, last);
        // Forget deleted sessions now and then (a deleted session is never reconciled again).
        let live = self.ctx.caches.sessions.state();
        if written.len() > 2 * live.len() + 64 {
            let uids: std::collections::HashSet<_> = live.iter().filter_map(|s| s.uid()).collect();
            written.retain(|uid, _| uids.contains(uid));
        }
    }

    fn wrote(&self, kind: &str) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.ctx.metrics.writes.with_label_values(&[kind]).inc();
    }

    async fn publish(&self, reason: &str, note: String) {
        self.publish_typed(kube::runtime::events::EventType::Normal, reason, note).await;
    }

    /// Events are best effort: a failure to record one never fails the reconcile.
    async fn publish_typed(&self, type_: kube::runtime::events::EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        match self.ctx.recorder.publish(&event, &self.session.object_ref(&())).await {
            Ok(()) => self.wrote("Event"),
            Err(error) => warn!(%error, reason, "could not record an event"),
        }
    }
}

/// A profile volume left by a session of another tenant (`whenDeleted: Retain`): it holds
/// that tenant's WhatsApp login, so it is never mounted for this one. Deleting the claim starts
/// afresh; relabelling it hands the login over on purpose.
fn another_tenants(claim: &PersistentVolumeClaim, session: &WhatsAppSession) -> Option<Observation> {
    let wanted = session.spec.cliente_id.to_string();
    let owner = claim.metadata.labels.as_ref().and_then(|l| l.get(children::CLIENTE_LABEL));
    if owner == Some(&wanted) {
        return None;
    }
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let owner = owner.map_or("no clienteId label".to_string(), |o| format!("clienteId {o}"));
    Some(Observation::new(
        false,
        "VolumeOfAnotherTenant",
        format!(
            "the retained volume {name} belongs to {owner}, not {wanted}: it holds that tenant's WhatsApp \
             login and is not mounted. Delete the claim to start afresh, or hand it over on purpose with \
             `kubectl label pvc {name} {}={wanted} --overwrite`",
            children::CLIENTE_LABEL
        ),
    ))
}

/// Whether applying `desired` would change the pod template (and so restart the pod).
fn template_differs(existing: &StatefulSet, desired: &StatefulSet) -> bool {
    let template = |sts: &StatefulSet| sts.spec.as_ref().map(|s| serde_json::to_value(&s.template));
    match (template(desired), template(existing)) {
        (Some(Ok(desired)), Some(Ok(existing))) => !is_subset(&desired, &existing),
        _ => false,
    }
}

/// The `Reconciled` observation of a session whose pod restart waits for a slot.
fn roll_pending(limit: usize) -> Observation {
    Observation::new(
        false,
        ROLL_PENDING,
        format!(
            "a new pod template (operator settings or version) waits for a restart slot: at most {limit} \
             sessions restart at a time (--max-rolling-sessions); the pod keeps running meanwhile"
        ),
    )
}

fn claim_size(claim: Option<&PersistentVolumeClaim>) -> Option<String> {
    claim?.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").map(|q| q.0.clone())
}
