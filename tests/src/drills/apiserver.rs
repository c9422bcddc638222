//! The API server stopped for a while (30 s in the issue) under a running hub: every status read
//! meanwhile must still answer 200 from the hub's cache, and once the API server is back a
//! change made then must show up in the hub without restarting it. This stops an API server,
//! so it runs on a control plane of its own, never the one other tests share.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Counts, DEADLINE, Row, guarded};
use crate::cluster::{ControlPlane, build_binaries};
use crate::harness::{TestCluster, TestNamespace, eventually};
use crate::hub::{Hub, HubOptions, admin_token};
use crate::processes::print_log_tail;

pub(super) const DRILL: &str = "API server stopped";
const MEASURED: &str = "API back -> a change shown by the hub (reads 200 while down)";
const APISERVER: &str = "kube-apiserver";
const CLIENTE: i64 = 5;

pub(super) async fn run(counts: &Counts) -> Vec<Row> {
    if counts.apiserver_stop == 0 {
        return Vec::new();
    }
    let dir = std::env::temp_dir().join(format!("wao-drills-apiserver-{}", std::process::id()));
    let mut plane = match guarded(start_plane(&dir)).await {
        Ok(plane) => plane,
        Err(why) => return vec![Row::setup_failed(DRILL, MEASURED, counts.apiserver_stop, why)],
    };
    // The control plane lives until the process ends, as the shared one does for tests.
    let cluster: &'static TestCluster = Box::leak(Box::new(TestCluster::at(plane.dir.clone())));
    let mut row = Row::new(DRILL, MEASURED, counts.apiserver_stop);
    let outage = counts.apiserver_outage;
    match guarded(Stack::start(cluster)).await {
        Ok(stack) => {
            row.run(async |i| stack.attempt(&mut plane, outage, i).await).await;
            if !row.failures.is_empty() {
                print_log_tail("hub", &stack.hub.log, 40);
            }
        }
        Err(why) => row = Row::setup_failed(DRILL, MEASURED, counts.apiserver_stop, why),
    }
    plane.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    vec![row]
}

async fn start_plane(dir: &std::path::Path) -> ControlPlane {
    let bin = tokio::task::spawn_blocking(build_binaries).await.expect("join").expect("the binaries");
    let plane = ControlPlane::start(&bin, dir).await.expect("starting a control plane");
    crate::install_crd(&plane.bin, &plane.kubeconfig).expect("installing the CRD");
    plane
}

struct Stack {
    ns: TestNamespace,
    hub: Hub,
    name: String,
}

impl Stack {
    async fn start(cluster: &'static TestCluster) -> Stack {
        let ns = cluster.namespace("drills-apiserver").await;
        let name = format!("cliente-{CLIENTE}");
        ns.create_session(&name, json!({"clienteId": CLIENTE})).await;
        ns.report_status(&name, status("CONNECTING", "before")).await.expect("reporting a status");
        let hub = Hub::ready(&ns, HubOptions::default()).await;
        let stack = Stack { ns, hub, name };
        stack.wait_message("before").await;
        stack
    }

    /// The hub's answer for the session: (HTTP status, its message).
    async fn read(&self) -> (u16, Value) {
        let (code, body) = self.hub.get(&format!("/api/whatsapp/{CLIENTE}/status"), &admin_token()).await;
        (code, body["message"].clone())
    }

    async fn wait_message(&self, message: &str) {
        eventually(&format!("the hub to show \"{message}\""), DEADLINE, || async {
            let (code, shown) = self.read().await;
            Ok((code == 200 && shown == message).then_some(()))
        })
        .await
    }

    async fn attempt(&self, plane: &mut ControlPlane, outage: Duration, attempt: usize) -> Duration {
        let before = format!("before-{attempt}");
        self.report(&before).await;
        self.wait_message(&before).await;
        let args = plane.stop_component(APISERVER).await.expect("stopping the API server");
        // Reads through the outage (its length is the drill's input, not a wait for anything).
        let down = Instant::now();
        let mut reads = Vec::new();
        while down.elapsed() < outage {
            reads.push(self.read().await);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        plane.start_component(APISERVER, &args).expect("starting the API server again");
        let back = Instant::now();
        let wrong: Vec<_> =
            reads.iter().filter(|(code, shown)| *code != 200 || *shown != before.as_str()).collect();
        assert!(
            wrong.is_empty(),
            "{} of {} reads during the outage were not 200 with the cached status: {:?}",
            wrong.len(),
            reads.len(),
            wrong.iter().take(5).collect::<Vec<_>>()
        );
        let after = format!("after-{attempt}");
        eventually("the API server to take the change", DEADLINE, || async {
            Ok(self.ns.report_status(&self.name, status("CONNECTING", &after)).await.ok())
        })
        .await;
        let answered = back.elapsed();
        self.wait_message(&after).await;
        let converged = back.elapsed();
        let log = std::fs::read_to_string(&self.hub.log).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("the watch on WhatsAppSessions")) {
            eprintln!("{DRILL}: hub: {line}");
        }
        eprintln!(
            "{DRILL}: {} reads while down, all 200 from the cache; after its restart the API server took a write at {:.1} s, the hub showed it at {:.1} s",
            reads.len(),
            answered.as_secs_f64(),
            converged.as_secs_f64()
        );
        converged
    }

    async fn report(&self, message: &str) {
        self.ns.report_status(&self.name, status("CONNECTING", message)).await.expect("reporting a status");
    }
}

fn status(state: &str, message: &str) -> Value {
    json!({"state": state, "message": message})
}
