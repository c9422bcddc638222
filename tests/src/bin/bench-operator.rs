//! Operator benchmark (prints numbers beside their targets; asserts nothing). Per repetition:
//!
//! 1. N WhatsAppSessions are created with no operator running, in a fresh namespace;
//! 2. the operator starts on them: the time until every session is `Reconciled=True` (the
//!    operator alone: its start, its caches, 6 children and a status write per session);
//! 3. its RSS then; once its writes have stopped (the pods started, PodReady written) its
//!    writes over an idle window (should be none) and its RSS after it, and its peak;
//! 4. the same 6*N children created directly through the API into a fresh namespace, with the
//!    same concurrency, twice: kind by kind (every StatefulSet last, so the cluster's own work
//!    on them, claims and pods, mostly falls after the clock stops: the bare writes' floor), and
//!    session by session in the operator's order (the cluster starts each session's pod while
//!    the rest are written, as it does while the operator works: the like-for-like floor the
//!    target is judged against);
//!    after each, the cluster's own work on the children (every pod ready) is waited for,
//!    untimed, so the next phase does not share the machine with it;
//! 5. when another repetition follows, the namespaces are deleted and waited for, and then
//!    the volumes their claims were bound to, so it does not share the machine with their
//!    garbage collection.
//!
//! `--memory-only` leaves out step 4 (and so the ratios): the RSS curve to 5,000 sessions in
//! a fraction of the time.
//!
//! Run (a private control plane: thousands of objects do not belong on a shared one):
//! `cargo build --release -p whatsapp-operator -p whatsapp-tests --bins && env -u
//! WAO_TEST_CLUSTER target/release/bench-operator 1000` (or `5000`, or `--curve 1000,2000,5000`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use whatsapp_crds::WhatsAppSession;
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::processes::{Operator, cpu_time, median, processes_naming};

/// Concurrent creates, both for the sessions and for the direct children.
const CONCURRENCY: usize = 32;
/// What the operator's reconcile time may be, as a multiple of the direct creates' time.
const RATIO_TARGET: f64 = 1.5;
/// The children's kinds in the order the operator applies them.
const KINDS: [&str; 6] = ["Secret", "ServiceAccount", "Role", "Service", "RoleBinding", "StatefulSet"];
/// Longest wait for every session to be Reconciled.
const LIMIT: Duration = Duration::from_secs(1800);

#[derive(Parser)]
#[command(about = "Operator benchmark: reconcile time against direct creates, RSS, idle writes")]
struct Args {
    /// Sessions (ignored with --curve).
    #[arg(default_value_t = 1000)]
    sessions: usize,
    /// Several session counts in one run, e.g. 1000,2000,5000: the RSS curve.
    #[arg(long, value_delimiter = ',')]
    curve: Vec<usize>,
    /// Repetitions per session count.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds of the idle window after every session is Reconciled.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Instead: the API server's CPU per write of each kind the operator makes (this many of each).
    #[arg(long)]
    write_costs: Option<usize>,
    /// Only the operator's phase: its time, writes and memory, not the direct creates it is
    /// compared with (no ratios).
    #[arg(long)]
    memory_only: bool,
}

/// One repetition's figures.
struct Rep {
    operator: Duration,
    /// The same children created directly (none with `--memory-only`).
    direct: Option<Direct>,
    rss_reconciled: u64,
    rss_steady: u64,
    rss_peak: u64,
    /// The idle window's writes by kind, largest first (what was still changing).
    idle_writes: Vec<(String, f64)>,
    idle_reconciles: f64,
    /// The operator's API writes until every session was Reconciled, per session.
    writes_per_session: f64,
    /// The operator's API writes once it settled (every pod started and its PodReady
    /// written), per session.
    writes_settled_per_session: f64,
    /// Reconciles per session until every session was Reconciled, and once settled.
    reconciles_per_session: (f64, f64),
    /// The operator's writes once settled, by kind (`kind="..."` label), largest first.
    writes_by_kind: Vec<(String, f64)>,
    /// CPU seconds of each process over the operator phase.
    cpu_operator: Vec<(String, f64)>,
}

/// The operator's children created directly, in two orders.
struct Direct {
    children: usize,
    /// Session by session, in the operator's order: the target's floor.
    by_session: Duration,
    /// Kind by kind.
    by_kind: Duration,
    /// CPU seconds of each process over each phase.
    cpu_by_session: Vec<(String, f64)>,
    cpu_by_kind: Vec<(String, f64)>,
}

impl Rep {
    /// The operator's time over the direct creates session by session, and kind by kind.
    fn ratios(&self) -> Option<(f64, f64)> {
        let d = self.direct.as_ref()?;
        let over = |t: Duration| self.operator.as_secs_f64() / t.as_secs_f64().max(1e-9);
        Some((over(d.by_session), over(d.by_kind)))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.write_costs {
        return write_costs(n).await;
    }
    let sizes = if args.curve.is_empty() { vec![args.sessions] } else { args.curve.clone() };
    let idle = Duration::from_secs(args.idle_seconds);
    println!(
        "operator benchmark: {sizes:?} sessions, {} repetitions, {CONCURRENCY} concurrent creates, idle window {}s, control plane on this machine",
        args.reps,
        idle.as_secs()
    );
    let mut curve = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let mut reps = Vec::new();
        for rep in 1..=args.reps {
            let last = i + 1 == sizes.len() && rep == args.reps;
            let r = repetition(n, idle, rep == 1, !last, !args.memory_only).await?;
            let direct = match (&r.direct, r.ratios()) {
                (Some(d), Some((by_session, by_kind))) => format!(
                    "direct {} children session by session {:.1}s, ratio {by_session:.2}x; kind by kind {:.1}s, ratio {by_kind:.2}x",
                    d.children,
                    d.by_session.as_secs_f64(),
                    d.by_kind.as_secs_f64(),
                ),
                _ => "no direct creates".to_owned(),
            };
            println!(
                "  n={n} rep {rep}: operator {:.1}s; {direct}; RSS reconciled {}, steady {}, peak {}; idle: {} writes{}, {} reconciles",
                r.operator.as_secs_f64(),
                mib(r.rss_reconciled),
                mib(r.rss_steady),
                mib(r.rss_peak),
                total(&r.idle_writes),
                if r.idle_writes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by_kind(&r.idle_writes))
                },
                r.idle_reconciles
            );
            println!(
                "    writes per session until Reconciled: {:.2}, once settled: {:.2} ({}); reconciles per session until Reconciled: {:.1}, once settled: {:.1}; CPU seconds, operator phase: {}{}",
                r.writes_per_session,
                r.writes_settled_per_session,
                by_kind(&r.writes_by_kind),
                r.reconciles_per_session.0,
                r.reconciles_per_session.1,
                cpu_line(&r.cpu_operator),
                r.direct.as_ref().map_or(String::new(), |d| format!(
                    "; direct, session by session: {}; direct, kind by kind: {}",
                    cpu_line(&d.cpu_by_session),
                    cpu_line(&d.cpu_by_kind)
                ))
            );
            reps.push(r);
        }
        summary(n, &reps);
        curve.push((n, reps));
    }
    if curve.len() > 1 {
        println!("RSS curve (median of repetitions): sessions, steady, peak");
        for (n, reps) in &curve {
            let steady = median(&reps.iter().map(|r| r.rss_steady as f64).collect::<Vec<_>>());
            let peak = median(&reps.iter().map(|r| r.rss_peak as f64).collect::<Vec<_>>());
            println!("  {n:>6}  {:>10}  {:>10}", mib(steady as u64), mib(peak as u64));
        }
    }
    Ok(())
}

/// The medians and spreads of one session count, beside their targets.
fn summary(n: usize, reps: &[Rep]) {
    let spread = |values: Vec<f64>, unit: &dyn Fn(f64) -> String| {
        let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        format!("median {} (spread {} to {})", unit(median(&values)), unit(lo), unit(hi))
    };
    let secs = |v: f64| format!("{v:.1}s");
    let times = |f: fn(&Rep) -> Duration| reps.iter().map(|r| f(r).as_secs_f64()).collect::<Vec<_>>();
    let rss_target = match n {
        ..=1000 => Some(64.0),
        5000.. => Some(160.0),
        _ => None,
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("n={n}: operator to all Reconciled: {}", spread(times(|r| r.operator), &secs));
    let direct: Vec<&Direct> = reps.iter().filter_map(|r| r.direct.as_ref()).collect();
    let ratios: Vec<(f64, f64)> = reps.iter().filter_map(Rep::ratios).collect();
    if !ratios.is_empty() {
        let direct_times = |f: fn(&Direct) -> Duration| direct.iter().map(|d| f(d).as_secs_f64()).collect();
        println!(
            "n={n}: the same children created directly, session by session: {}; kind by kind: {}",
            spread(direct_times(|d| d.by_session), &secs),
            spread(direct_times(|d| d.by_kind), &secs)
        );
        let by_session: Vec<f64> = ratios.iter().map(|r| r.0).collect();
        let met = median(&by_session) <= RATIO_TARGET;
        println!(
            "n={n}: ratio operator/direct (session by session): {} | target <= {RATIO_TARGET}x: {}",
            spread(by_session, &|v| format!("{v:.2}x")),
            verdict(met)
        );
        println!(
            "n={n}: ratio operator/direct (kind by kind, the bare writes): {}",
            spread(ratios.iter().map(|r| r.1).collect(), &|v| format!("{v:.2}x"))
        );
    }
    let steady: Vec<f64> = reps.iter().map(|r| r.rss_steady as f64 / 1024.0).collect();
    let steady_median = median(&steady);
    let target = rss_target.map_or("no target at this count".to_string(), |t| {
        format!("target <= {t} MiB: {}", verdict(steady_median <= t))
    });
    let in_mib = |v: f64| format!("{v:.1} MiB");
    let kib = |f: fn(&Rep) -> u64| reps.iter().map(|r| f(r) as f64 / 1024.0).collect::<Vec<_>>();
    println!("n={n}: operator RSS steady (after the idle window): {} | {target}", spread(steady, &in_mib));
    println!("n={n}: operator RSS when all were Reconciled: {}", spread(kib(|r| r.rss_reconciled), &in_mib));
    println!("n={n}: operator RSS peak (VmHWM): {}", spread(kib(|r| r.rss_peak), &in_mib));
    let writes: f64 = reps.iter().map(|r| total(&r.idle_writes)).sum();
    println!("n={n}: writes over the idle windows: {writes} in all (target 0; Lease renewals not counted)");
}

/// One repetition at `n` sessions; `sizes`: also print the bytes of each kind the operator caches;
/// `clean`: delete its namespaces and wait until they are gone (another repetition follows: it
/// must not share the machine with their garbage collection).
async fn repetition(
    n: usize,
    idle: Duration,
    sizes: bool,
    clean: bool,
    with_direct: bool,
) -> anyhow::Result<Rep> {
    let c = cluster();
    let ns = c.namespace("bench-op").await;
    let sessions: Api<WhatsAppSession> = ns.api();
    create_all((0..n).map(session).collect::<anyhow::Result<Vec<_>>>()?, |s| {
        let sessions = sessions.clone();
        async move { sessions.create(&PostParams::default(), &s).await.map(drop).map_err(Into::into) }
    })
    .await?;

    let reconciled = tokio::spawn(all_reconciled(sessions.clone(), n));
    let cpu = Cpu::start(&c.dir);
    let t0 = Instant::now();
    let op = Operator::start(&ns, "bench", "bench", &[]);
    tokio::time::timeout(LIMIT, reconciled).await???;
    let operator = t0.elapsed();
    let cpu_operator = cpu.since();
    let writes_per_session = op.writes().await / n as f64;
    let reconciles_until = op.metric("whatsapp_operator_reconciliations_total").await / n as f64;
    let rss_reconciled = op.rss_kib();

    settle(&op, n).await;
    let writes_by_kind = writes_by_kind(&op).await;
    let writes_settled_per_session = total(&writes_by_kind) / n as f64;
    let reconciles_before = op.metric("whatsapp_operator_reconciliations_total").await;
    tokio::time::sleep(idle).await;
    let idle_writes = writes_since(&writes_by_kind, self::writes_by_kind(&op).await);
    let idle_reconciles = op.metric("whatsapp_operator_reconciliations_total").await - reconciles_before;
    let (rss_steady, rss_peak) = (op.rss_kib(), op.peak_rss_kib());
    drop(op);
    if sizes {
        print_cached_sizes(&ns, n).await?;
    }
    let (direct, namespaces) = if with_direct { direct_creates(&ns, n).await? } else { (None, Vec::new()) };
    if clean {
        let client = ns.client.clone();
        let names: Vec<String> = std::iter::once(&ns).chain(&namespaces).map(|ns| ns.name.clone()).collect();
        futures::future::try_join_all(std::iter::once(ns).chain(namespaces).map(|ns| delete_and_wait(ns, n)))
            .await?;
        volumes_gone(&client, &names).await?;
    }
    Ok(Rep {
        operator,
        direct,
        rss_reconciled,
        rss_steady,
        rss_peak,
        idle_writes,
        idle_reconciles,
        writes_per_session,
        writes_settled_per_session,
        reconciles_per_session: (reconciles_until, reconciles_before / n as f64),
        writes_by_kind,
        cpu_operator,
    })
}

/// The children the operator made in `ns`, created again directly kind by kind, then session
/// by session; with the namespaces they went to.
async fn direct_creates(
    ns: &TestNamespace,
    n: usize,
) -> anyhow::Result<(Option<Direct>, Vec<TestNamespace>)> {
    let sessions = copy_children(&ns.client, &ns.name).await?;
    let children = sessions.iter().map(Vec::len).sum();
    let mut kind_by_kind: Vec<serde_json::Value> = sessions.iter().flatten().cloned().collect();
    kind_by_kind.sort_by_key(|obj| KINDS.iter().position(|kind| obj["kind"] == *kind));
    let (by_kind, cpu_by_kind, by_kind_ns) =
        direct_phase(kind_by_kind, n, |client, ns, obj| async move { create_raw(&client, &ns, obj).await })
            .await?;
    let (by_session, cpu_by_session, by_session_ns) =
        direct_phase(sessions, n, |client, ns, children| async move {
            for obj in children {
                create_raw(&client, &ns, obj).await?;
            }
            Ok(())
        })
        .await?;
    let direct = Direct { children, by_session, by_kind, cpu_by_session, cpu_by_kind };
    Ok((Some(direct), vec![by_kind_ns, by_session_ns]))
}

/// Runs `create` over `items` into a fresh namespace: its time, the CPU it cost each process,
/// and the namespace. Then waits, untimed, until the cluster has caught up (the `n` pods of
/// the StatefulSets ready), so what comes next does not share the machine with that work.
async fn direct_phase<T, F, Fut>(
    items: Vec<T>,
    n: usize,
    create: F,
) -> anyhow::Result<(Duration, Vec<(String, f64)>, TestNamespace)>
where
    F: Fn(Client, String, T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let c = cluster();
    let ns = c.namespace("bench-direct").await;
    let cpu = Cpu::start(&c.dir);
    let t = Instant::now();
    create_all(items, |item| create(ns.client.clone(), ns.name.clone(), item)).await?;
    let (took, cpu) = (t.elapsed(), cpu.since());
    let limit = Duration::from_secs(300).max(Duration::from_millis(200) * n as u32);
    let ready = |s: &StatefulSet| s.status.as_ref().and_then(|st| st.ready_replicas).unwrap_or(0) >= 1;
    match tokio::time::timeout(limit, all_satisfy(ns.api::<StatefulSet>(), n, ready)).await {
        Ok(watched) => watched?,
        Err(_) => println!(
            "    (not every one of the {n} pods in {} was ready after {}s: the next phase starts anyway)",
            ns.name,
            limit.as_secs()
        ),
    }
    Ok((took, cpu, ns))
}

/// Deletes `ns` and waits until it is gone (about 2.5 minutes for a namespace of 1,000
/// sessions here: the pods, then the claims, go one by one).
async fn delete_and_wait(ns: TestNamespace, n: usize) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    namespaces.delete(&ns.name, &Default::default()).await?;
    let limit = Duration::from_secs(600).max(Duration::from_millis(600) * n as u32);
    eventually(&format!("namespace {} to be deleted", ns.name), limit, || async {
        match namespaces.get_opt(&ns.name).await {
            Ok(None) => Ok(Some(())),
            Ok(Some(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    Ok(())
}

/// Waits until no volume is left bound to a claim of `namespaces` (deleted): the volume
/// controller deletes them after their claims, one by one, and a repetition that started
/// meanwhile shared the machine with that work (its operator phase ran up to 1.4x slower
/// than the first repetition's, its direct creates did not). Follows a watch, as
/// [`all_satisfy`] does: a poll of thousands of volumes would load the API server too.
async fn volumes_gone(client: &Client, namespaces: &[String]) -> anyhow::Result<()> {
    let of_deleted = |v: &PersistentVolume| {
        v.spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref()?.namespace.as_ref())
            .is_some_and(|ns| namespaces.contains(ns))
    };
    let t = Instant::now();
    let mut left = HashSet::new();
    let mut listed = false;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    // Watch errors (a timed-out connection) are retried with a backoff, and skipped here.
    let mut events = watcher(volumes, watcher::Config::default()).default_backoff().boxed();
    let gone = async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(v) | watcher::Event::InitApply(v)) if of_deleted(&v) => {
                    left.insert(v.name_any());
                }
                Ok(watcher::Event::Apply(v) | watcher::Event::InitApply(v) | watcher::Event::Delete(v)) => {
                    left.remove(&v.name_any());
                }
                Ok(watcher::Event::Init) => left.clear(),
                Ok(watcher::Event::InitDone) => listed = true,
                Err(_) => continue,
            }
            if listed && left.is_empty() {
                return Ok(());
            }
        }
        anyhow::bail!("the watch ended")
    };
    match tokio::time::timeout(LIMIT, gone).await {
        Ok(gone) => gone?,
        Err(_) => anyhow::bail!("volumes of deleted namespaces still there after {LIMIT:?}"),
    }
    println!(
        "    (the deleted namespaces' volumes were gone {:.0}s after their namespaces)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// CPU time of the control plane's processes (and an operator's) from a starting point.
struct Cpu {
    dir: std::path::PathBuf,
    before: HashMap<u32, Duration>,
    own: Duration,
}

impl Cpu {
    fn start(dir: &std::path::Path) -> Cpu {
        let before = processes_naming(dir).into_iter().map(|(_, pid)| (pid, cpu_time(pid))).collect();
        Cpu { dir: dir.to_path_buf(), before, own: cpu_time(std::process::id()) }
    }

    /// Seconds per command name since the start (this benchmark's own as `bench`), largest first.
    fn since(&self) -> Vec<(String, f64)> {
        let mut by_name: HashMap<String, f64> = HashMap::new();
        for (name, pid) in processes_naming(&self.dir) {
            let before = self.before.get(&pid).copied().unwrap_or_default();
            *by_name.entry(name).or_default() += cpu_time(pid).saturating_sub(before).as_secs_f64();
        }
        by_name.insert("bench".into(), cpu_time(std::process::id()).saturating_sub(self.own).as_secs_f64());
        let mut out: Vec<_> = by_name.into_iter().filter(|(_, s)| *s >= 0.05).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

fn cpu_line(cpu: &[(String, f64)]) -> String {
    let total: f64 = cpu.iter().map(|(_, s)| s).sum();
    let parts: Vec<String> = cpu.iter().map(|(name, s)| format!("{name} {s:.1}")).collect();
    format!("{} (in all {total:.1})", parts.join(", "))
}

/// The operator's writes so far by kind, largest first.
async fn writes_by_kind(op: &Operator) -> Vec<(String, f64)> {
    let text = op.metrics().await.unwrap_or_default();
    let mut kinds: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("whatsapp_operator_kube_writes_total{"))
        .filter_map(|l| {
            let kind = l.split("kind=\"").nth(1)?.split('"').next()?;
            Some((kind.to_string(), l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    kinds
}

/// The writes by kind in `now` beyond those in `before`, largest first.
fn writes_since(before: &[(String, f64)], now: Vec<(String, f64)>) -> Vec<(String, f64)> {
    let earlier = |kind: &str| before.iter().find(|(k, _)| k == kind).map_or(0.0, |(_, w)| *w);
    let mut since: Vec<(String, f64)> = now
        .into_iter()
        .filter_map(|(kind, w)| {
            let more = w - earlier(&kind);
            (more > 0.0).then_some((kind, more))
        })
        .collect();
    since.sort_by(|a, b| b.1.total_cmp(&a.1));
    since
}

/// All the writes of a by-kind count.
fn total(by_kind: &[(String, f64)]) -> f64 {
    by_kind.iter().fold(0.0, |sum, (_, w)| sum + w)
}

/// A by-kind count as `Kind n, Kind n`.
fn by_kind(writes: &[(String, f64)]) -> String {
    writes.iter().map(|(kind, w)| format!("{kind} {w}")).collect::<Vec<_>>().join(", ")
}

/// Waits until the operator has made no write and no reconcile for 10 s (its sessions' pods
/// have started, so their PodReady conditions are written, and the cluster's controllers have
/// stopped changing them), at most 5 minutes or a fifth of a second per session (the cluster
/// starts the pods of 5,000 sessions over more than 5 minutes here): the idle window starts then.
async fn settle(op: &Operator, n: usize) {
    let activity =
        || async { op.writes().await + op.metric("whatsapp_operator_reconciliations_total").await };
    let limit = Duration::from_secs(300).max(Duration::from_millis(200) * n as u32);
    let deadline = Instant::now() + limit;
    let mut last = (activity().await, Instant::now());
    while last.1.elapsed() < Duration::from_secs(10) {
        if Instant::now() >= deadline {
            println!(
                "    (the operator was still busy after {}s: the idle window starts anyway)",
                limit.as_secs()
            );
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = activity().await;
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
}

/// Runs `create` over `items`, [`CONCURRENCY`] at a time.
async fn create_all<T, F, Fut>(items: Vec<T>, create: F) -> anyhow::Result<()>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    stream::iter(items).map(create).buffer_unordered(CONCURRENCY).try_collect::<()>().await
}

fn session(i: usize) -> anyhow::Result<WhatsAppSession> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession",
        "metadata": {"name": format!("s{i}")}, "spec": {"clienteId": i + 1}
    }))?)
}

/// Resolves once `n` sessions show `Reconciled=True`.
async fn all_reconciled(sessions: Api<WhatsAppSession>, n: usize) -> anyhow::Result<()> {
    all_satisfy(sessions, n, |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.conditions.iter().any(|c| c.type_ == "Reconciled" && c.status == "True"))
    })
    .await
}

/// Resolves once `n` objects of `api` satisfy `ok`, following a watch (a poll of thousands of
/// objects would load the API server the benchmark measures).
async fn all_satisfy<K>(api: Api<K>, n: usize, ok: impl Fn(&K) -> bool) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut done = HashSet::new();
    // Watch errors (a timed-out connection) are retried with a backoff, and skipped here.
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) = event else { continue };
        let name = object.meta().name.clone().unwrap_or_default();
        if ok(&object) {
            done.insert(name);
        } else {
            done.remove(&name);
        }
        if done.len() == n {
            return Ok(());
        }
    }
    anyhow::bail!("the watch ended")
}

/// Bytes of JSON per kind in `ns`, managedFields aside (the operator drops those): what its
/// caches hold before any stripping, for scale.
async fn print_cached_sizes(ns: &TestNamespace, n: usize) -> anyhow::Result<()> {
    let mut line = format!("n={n}: JSON bytes per session in the cluster (managedFields aside):");
    let mut total = 0;
    for (kind, bytes) in [
        ("WhatsAppSession", json_bytes::<WhatsAppSession>(ns).await?),
        ("StatefulSet", json_bytes::<StatefulSet>(ns).await?),
        ("Pod", json_bytes::<Pod>(ns).await?),
        ("PersistentVolumeClaim", json_bytes::<PersistentVolumeClaim>(ns).await?),
        ("Secret", json_bytes::<Secret>(ns).await?),
        ("Service", json_bytes::<Service>(ns).await?),
        ("ServiceAccount", json_bytes::<ServiceAccount>(ns).await?),
        ("Role", json_bytes::<Role>(ns).await?),
        ("RoleBinding", json_bytes::<RoleBinding>(ns).await?),
    ] {
        total += bytes;
        line += &format!(" {kind} {}", bytes / n.max(1));
    }
    println!("{line}; in all {:.1} MiB", total as f64 / 1048576.0);
    Ok(())
}

async fn json_bytes<K>(ns: &TestNamespace) -> anyhow::Result<usize>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let mut bytes = 0;
    for mut item in ns.api::<K>().list(&ListParams::default()).await?.items {
        item.meta_mut().managed_fields = None;
        bytes += serde_json::to_vec(&item)?.len();
    }
    Ok(bytes)
}

/// The operator-made children of every session in `ns`, stripped to what a user would create,
/// grouped by session, each group in the order the operator applies them (the Secret, the
/// ServiceAccount, the Role and the Service, then the RoleBinding, then the StatefulSet).
async fn copy_children(client: &Client, ns: &str) -> anyhow::Result<Vec<Vec<serde_json::Value>>> {
    let mut by_session: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    macro_rules! take {
        ($kind:ty) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), ns);
            let lp = ListParams::default().labels("app.kubernetes.io/managed-by=whatsapp-operator");
            for item in api.list(&lp).await?.items {
                let session = item.owner_references().first().map(|o| o.name.clone()).unwrap_or_default();
                let mut v = serde_json::to_value(&item)?;
                v["apiVersion"] = json!(<$kind>::api_version(&()));
                v["kind"] = json!(<$kind>::kind(&()));
                let meta = &mut v["metadata"];
                meta["namespace"] = json!(null);
                for key in [
                    "uid",
                    "resourceVersion",
                    "creationTimestamp",
                    "managedFields",
                    "ownerReferences",
                    "generation",
                ] {
                    meta.as_object_mut().unwrap().remove(key);
                }
                v.as_object_mut().unwrap().remove("status");
                by_session.entry(session).or_default().push(v);
            }
        }};
    }
    take!(Secret);
    take!(ServiceAccount);
    take!(Role);
    take!(Service);
    take!(RoleBinding);
    take!(StatefulSet);
    Ok(by_session.into_values().collect())
}

async fn create_raw(client: &Client, ns: &str, mut obj: serde_json::Value) -> anyhow::Result<()> {
    obj["metadata"]["namespace"] = json!(ns);
    // Cluster IPs of the original Service cannot be reused.
    if obj["kind"] == "Service" {
        obj["spec"].as_object_mut().map(|s| s.remove("clusterIPs"));
    }
    let api = child_api(client, ns, &obj)?;
    api.create(&PostParams::default(), &serde_json::from_value(obj)?).await?;
    Ok(())
}

/// The API of `obj`'s kind, one of the children the operator writes, in `ns`.
fn child_api(client: &Client, ns: &str, obj: &serde_json::Value) -> anyhow::Result<Api<DynamicObject>> {
    let resource = match obj["kind"].as_str().unwrap_or_default() {
        "Secret" => ApiResource::erase::<Secret>(&()),
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        "Role" => ApiResource::erase::<Role>(&()),
        "RoleBinding" => ApiResource::erase::<RoleBinding>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        other => anyhow::bail!("unexpected kind {other}"),
    };
    Ok(Api::namespaced_with(client.clone(), ns, &resource))
}

/// The API server's and etcd's CPU per write, for each kind of write the operator makes, `n`
/// of each at [`CONCURRENCY`]: what a reconcile costs the control plane, write by write. The
/// children are copies of one session's as the operator made them, with no replicas (so no
/// pod work is mixed in).
async fn write_costs(n: usize) -> anyhow::Result<()> {
    let c = cluster();
    let ns = c.namespace("bench-one").await;
    let sessions: Api<WhatsAppSession> = ns.api();
    sessions.create(&PostParams::default(), &session(0)?).await?;
    let reconciled = tokio::spawn(all_reconciled(sessions.clone(), 1));
    let op = Operator::start(&ns, "bench", "bench", &[]);
    tokio::time::timeout(LIMIT, reconciled).await???;
    drop(op);
    let children = copy_children(&ns.client, &ns.name).await?.concat();
    println!("API server + etcd CPU per write, {n} writes of each at {CONCURRENCY} concurrent:");
    let report = |what: &str, cpu: Vec<(String, f64)>, took: Duration| {
        let server: f64 =
            cpu.iter().filter(|(name, _)| name == "kube-apiserver" || name == "etcd").map(|(_, s)| s).sum();
        println!(
            "  {what:<44} {:>6.2} ms CPU per write, {:>6.0} writes/s",
            server * 1000.0 / n as f64,
            n as f64 / took.as_secs_f64()
        );
    };
    for child in &children {
        let kind = child["kind"].as_str().unwrap_or_default().to_string();
        for apply in [false, true] {
            let target = c.namespace("bench-writes").await;
            let copies: Vec<serde_json::Value> = (0..n)
                .map(|i| {
                    let mut copy = child.clone();
                    copy["metadata"]["name"] = json!(format!("c{i}"));
                    if kind == "StatefulSet" {
                        copy["spec"]["replicas"] = json!(0);
                    }
                    copy
                })
                .collect();
            let (cpu, t0) = (Cpu::start(&c.dir), Instant::now());
            create_all(copies, |obj| write_raw(&target.client, &target.name, obj, apply)).await?;
            let verb = if apply { "server-side apply (new)" } else { "create" };
            report(&format!("{kind} {verb}"), cpu.since(), t0.elapsed());
        }
    }
    let target = c.namespace("bench-writes").await;
    let sessions: Api<WhatsAppSession> = target.api();
    let (cpu, t0) = (Cpu::start(&c.dir), Instant::now());
    create_all((0..n).map(session).collect::<anyhow::Result<Vec<_>>>()?, |s| {
        let sessions = sessions.clone();
        async move { sessions.create(&PostParams::default(), &s).await.map(drop).map_err(Into::into) }
    })
    .await?;
    report("WhatsAppSession create", cpu.since(), t0.elapsed());
    for (what, apply) in [("status server-side apply", true), ("status merge patch", false)] {
        let (cpu, t0) = (Cpu::start(&c.dir), Instant::now());
        create_all((0..n).collect(), |i| {
            let sessions = sessions.clone();
            async move {
                let condition = json!({"type": "Reconciled", "status": "True", "reason": what,
                    "message": "every child matches the spec", "observedGeneration": 1,
                    "lastTransitionTime": "2026-01-01T00:00:00Z"});
                let body = json!({"apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession",
                    "status": {"observedGeneration": 1, "conditions": [condition]}});
                let patch = if apply { Patch::Apply(&body) } else { Patch::Merge(&body) };
                let params = if apply { PatchParams::apply("bench").force() } else { PatchParams::default() };
                sessions.patch_status(&format!("s{i}"), &params, &patch).await.map(drop).map_err(Into::into)
            }
        })
        .await?;
        report(&format!("WhatsAppSession {what}"), cpu.since(), t0.elapsed());
    }
    Ok(())
}

/// Creates `obj` in `ns`, or server-side applies it.
async fn write_raw(client: &Client, ns: &str, obj: serde_json::Value, apply: bool) -> anyhow::Result<()> {
    if !apply {
        return create_raw(client, ns, obj).await;
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let api = child_api(client, ns, &obj)?;
    api.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(&obj)).await?;
    Ok(())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
