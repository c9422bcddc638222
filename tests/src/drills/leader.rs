//! Drills on the operator's leader election: two replicas on one Lease, each reaching the API
//! server through a proxy of its own. The leader is killed (no Lease release) or its
//! connection cut; in the gap a session is edited and another created. The standby must lead,
//! and reconcile both, once: `observedGeneration` catches up, the new session gets exactly one
//! `Created` event, and a cut-off leader stops before the standby starts and writes nothing
//! after.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use whatsapp_crds::WhatsAppSession;

use super::{Counts, DEADLINE, Row, guarded};
use crate::harness::{TestNamespace, cluster, eventually};
use crate::processes::{Operator, logged_times, print_log_tail};
use crate::tcpproxy::CuttableProxy;

pub(super) const KILL: &str = "operator leader killed";
pub(super) const PARTITION: &str = "operator leader partitioned";
const TO_RECONCILED: &str = "gap edit + create reconciled once by the standby";
const LEASE: &str = "drills";

/// One operator replica and its own road to the API server.
struct Replica {
    label: &'static str,
    op: Operator,
    proxy: CuttableProxy,
    kubeconfig: PathBuf,
    starts: usize,
}

impl Replica {
    async fn start(ns: &TestNamespace, label: &'static str) -> Replica {
        let server = ns.cluster.server();
        let target = server.trim_start_matches("https://").parse().expect("the API server address");
        let proxy = CuttableProxy::start(target).await.expect("starting the proxy");
        let kubeconfig = ns.cluster.dir.join(format!("{}-{label}-via-proxy.kubeconfig", ns.name));
        let text = std::fs::read_to_string(&ns.cluster.kubeconfig).expect("the kubeconfig");
        std::fs::write(&kubeconfig, text.replace(&server, &format!("https://{}", proxy.addr)))
            .expect("writing the kubeconfig");
        let op = Operator::start_via(ns, &format!("op-{label}-0"), LEASE, &[], &kubeconfig);
        Replica { label, op, proxy, kubeconfig, starts: 1 }
    }

    /// A new process in place of a killed one (a new identity, as a new pod would have).
    fn restart(&mut self, ns: &TestNamespace) {
        let name = format!("op-{}-{}", self.label, self.starts);
        self.starts += 1;
        self.op = Operator::start_via(ns, &name, LEASE, &[], &self.kubeconfig);
    }
}

struct Pair {
    ns: TestNamespace,
    replicas: [Replica; 2],
}

pub(super) async fn run(counts: &Counts) -> Vec<Row> {
    if counts.leader_kill + counts.leader_partition == 0 {
        return Vec::new();
    }
    let mut pair = match guarded(Pair::start()).await {
        Ok(pair) => pair,
        Err(why) => {
            return vec![
                Row::setup_failed(KILL, TO_RECONCILED, counts.leader_kill, why.clone()),
                Row::setup_failed(PARTITION, TO_RECONCILED, counts.leader_partition, why),
            ];
        }
    };
    let mut kills = Row::new(KILL, TO_RECONCILED, counts.leader_kill);
    kills.run(async |i| pair.kill_attempt(i).await).await;
    let mut cuts = Row::new(PARTITION, TO_RECONCILED, counts.leader_partition);
    cuts.run(async |i| pair.partition_attempt(i).await).await;
    if !kills.failures.is_empty() || !cuts.failures.is_empty() {
        for replica in &pair.replicas {
            print_log_tail(&format!("operator {}", replica.label), &replica.op.log, 40);
        }
    }
    vec![kills, cuts]
}

impl Pair {
    async fn start() -> Pair {
        let ns = cluster().namespace("drills-leader").await;
        let a = Replica::start(&ns, "a").await;
        a.op.wait_leading().await;
        let b = Replica::start(&ns, "b").await;
        ns.create_session("acme", json!({"clienteId": 1})).await;
        let pair = Pair { ns, replicas: [a, b] };
        pair.caught_up(&["acme"]).await;
        eventually("the standby's metrics", DEADLINE, || async {
            Ok(pair.replicas[1].op.metrics().await.ok())
        })
        .await;
        pair
    }

    /// Which replica leads: exactly one must.
    async fn leader(&self) -> usize {
        eventually("exactly one leader", DEADLINE, || async {
            let a = self.replicas[0].op.metric("whatsapp_operator_leader").await;
            let b = self.replicas[1].op.metric("whatsapp_operator_leader").await;
            Ok(match (a == 1.0, b == 1.0) {
                (true, false) => Some(0),
                (false, true) => Some(1),
                (true, true) => return Err("two leaders".into()),
                (false, false) => None,
            })
        })
        .await
    }

    /// What a user changes while there is no leader: an edit of `acme` and a new session.
    async fn change_in_the_gap(&self, tag: &str, attempt: usize) -> String {
        let rate = 10 + attempt as i64;
        let patch = json!({"spec": {"send": {"ratePerMinute": rate}}});
        let sessions = self.ns.api::<WhatsAppSession>();
        sessions.patch("acme", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("editing acme");
        let name = format!("gap-{tag}-{attempt}");
        self.ns.create_session(&name, json!({"clienteId": 100 + attempt as i64})).await;
        name
    }

    /// Waits until every named session is reconciled at its current generation.
    async fn caught_up(&self, names: &[&str]) {
        let sessions = self.ns.api::<WhatsAppSession>();
        for name in names {
            eventually(&format!("{name} reconciled at its generation"), DEADLINE, || async {
                let session = sessions.get(name).await.map_err(|e| e.to_string())?;
                let generation = session.metadata.generation;
                let status = session.status.unwrap_or_default();
                let reconciled = status.conditions.iter().find(|c| c.type_ == "Reconciled");
                let done = status.observed_generation == generation
                    && reconciled.is_some_and(|c| c.status == "True" && c.observed_generation == generation);
                Ok(done.then_some(()))
            })
            .await;
        }
    }

    /// Waits for the `Created` event of a new session and checks there is one, counting
    /// repeats: a session created in the gap is created once, by one leader.
    async fn created_once(&self, name: &str) {
        let events = self.ns.api::<Event>();
        let count = eventually(&format!("a Created event on {name}"), DEADLINE, || async {
            let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
            let list = events.list(&params).await.map_err(|e| e.to_string())?;
            let created = list.items.iter().filter(|e| e.reason.as_deref() == Some("Created"));
            let count: i32 = created.map(|e| e.count.unwrap_or(1)).sum();
            Ok((count > 0).then_some(count))
        })
        .await;
        assert_eq!(count, 1, "Created events on {name}");
    }

    /// Both replicas running (one killed by a failed attempt is started again).
    async fn both_running(&mut self) {
        for replica in &mut self.replicas {
            if !replica.op.running() {
                replica.restart(&self.ns);
            }
            let op = &replica.op;
            eventually("the replica's metrics", DEADLINE, || async { Ok(op.metrics().await.ok()) }).await;
        }
    }

    /// The leader killed; the standby must take over and reconcile the gap's changes once.
    async fn kill_attempt(&mut self, attempt: usize) -> Duration {
        self.both_running().await;
        let leader = self.leader().await;
        let fault = Instant::now();
        self.replicas[leader].op.kill();
        let gap = self.change_in_the_gap("kill", attempt).await;
        self.replicas[1 - leader].op.wait_leading().await;
        self.caught_up(&["acme", &gap]).await;
        let recovered = fault.elapsed();
        // The killed replica comes back, as its pod would, and stands by.
        self.replicas[leader].restart(&self.ns);
        self.created_once(&gap).await;
        self.both_running().await;
        assert_eq!(self.leader().await, 1 - leader, "the restarted replica took the lead back");
        recovered
    }

    /// The leader's connection to the API server cut: it must step down on its own clock
    /// before the standby leads, write nothing from then on, and stay a standby once its
    /// network is back.
    async fn partition_attempt(&mut self, attempt: usize) -> Duration {
        self.both_running().await;
        let leader = self.leader().await;
        let (old, new) = (&self.replicas[leader], &self.replicas[1 - leader]);
        let since = Timestamp::now();
        let fault = Instant::now();
        old.proxy.cut();
        let gap = self.change_in_the_gap("cut", attempt).await;
        eventually("the cut-off leader to step down", DEADLINE, || async {
            Ok((old.op.metric("whatsapp_operator_leader").await == 0.0).then_some(()))
        })
        .await;
        let written = old.op.writes().await;
        let (cpu, stepped_down) = (old.op.cpu_time(), Instant::now());
        new.op.wait_leading().await;
        self.caught_up(&["acme", &gap]).await;
        let recovered = fault.elapsed();
        // Cut off, it waits for its network: it must not spin (its lease fence once did, at a
        // full core, from the moment the renewal it had seen expired).
        let (spent, wall) = (old.op.cpu_time().saturating_sub(cpu), stepped_down.elapsed());
        assert!(spent * 5 < wall, "the cut-off replica used {spent:?} of CPU in {wall:?}");
        self.created_once(&gap).await;
        // No overlap, on the one clock both logs share.
        let stopped = logged_times(&old.op.log, "stepped down").into_iter().rfind(|t| *t >= since);
        let started = logged_times(&new.op.log, "leading: reconciling").into_iter().find(|t| *t >= since);
        let (stopped, started) = (
            stopped.expect("the old leader said it stepped down"),
            started.expect("the new leader said it leads"),
        );
        assert!(stopped < started, "the standby led at {started} before the old leader stopped at {stopped}");
        // The network back: the old leader stays a standby and writes nothing.
        old.proxy.restore();
        let after = self.change_in_the_gap("after-cut", attempt).await;
        self.caught_up(&["acme", &after]).await;
        assert_eq!(old.op.writes().await, written, "the old leader wrote after it was cut off");
        assert_eq!(self.leader().await, 1 - leader, "the old leader took the lead back");
        recovered
    }
}
