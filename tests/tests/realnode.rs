//! The real-node lane: the product's own images, built from its Dockerfiles, run as containers
//! on a real kubelet with containerd, installed with the chart the way a user installs it.
//! Everything lives in a network namespace of the test's own (see `whatsapp_tests::node`),
//! with a control plane of its own serving there.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::runtime::watcher;
use serde_json::{Value, json};
use whatsapp_tests::cluster::{self, ControlPlane, Options};
use whatsapp_tests::harness::source_path;
use whatsapp_tests::node::{self, CLUSTER_DNS, NODE_IP, Node};
use whatsapp_tests::simulator::{SimConfig, Simulator};
use whatsapp_tests::{hub, images, kubectl, run};

/// The release and its namespace, which the hub serves sessions in.
const NS: &str = "wao";
const PREFIX: &str = "wao-whatsapp-operator";
/// The session a tenant's clienteId names.
const CLIENTE_ID: i64 = 7;
const SESSION: &str = "cliente-7";
const PHONE: &str = "5491155551234";
const WAIT: Duration = Duration::from_secs(180);
/// Browser kills in the container: 3 here, `WAO_REALNODE_BROWSER_KILLS` for a longer drill (the
/// session restarts Chromium after 1, 2, 4... up to 30 seconds, so 50 take about 25 minutes).
fn browser_kills() -> usize {
    std::env::var("WAO_REALNODE_BROWSER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}
/// Kills Chromium's browser process (not its helpers) in the session container.
const KILL_BROWSER: &str = r#"for d in /proc/[0-9]*; do
  c=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)
  case "$c" in *--type=*) ;; */chromium-headless-shell*) kill -9 "${d#/proc/}";; esac
done"#;
/// Counts the zombie processes in the session container.
const ZOMBIES: &str = r#"grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status 2>/dev/null | wc -l"#;

/// Cluster DNS for the node: CoreDNS from the image `tests/images/build.sh` makes, serving
/// the cluster's Services and pods (the hub finds session pods by their DNS names).
const COREDNS: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: system:coredns}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: system:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:1053 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 5
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: registry.k8s.io/coredns/coredns:v1.15.0
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
        ports: [{containerPort: 1053, protocol: UDP, name: dns}, {containerPort: 1053, protocol: TCP, name: dns-tcp}]
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        securityContext: {runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: CLUSTER_DNS
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, targetPort: 1053, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}
"#;

/// The control plane and the node, stopped in order when the test ends (pass or fail).
struct RealCluster {
    plane: Option<ControlPlane>,
    node: Option<Node>,
    volumes: Option<tokio::task::JoinHandle<()>>,
}

impl RealCluster {
    async fn start() -> Result<RealCluster> {
        let bin = tokio::task::spawn_blocking(cluster::build_binaries).await??;
        let dir = std::env::temp_dir().join(format!("wao-realnode-{}", std::process::id()));
        let plane = ControlPlane::start_with(&bin, &dir, &Options { address: NODE_IP, kwok: false }).await?;
        whatsapp_tests::install_crd(&plane.bin, &plane.kubeconfig)?;
        let node = match Node::start(&plane, &images::archives()?).await {
            Ok(node) => node,
            Err(e) => {
                plane.stop().await;
                return Err(e);
            }
        };
        let volumes = tokio::spawn(open_volumes(plane.client().await?));
        let cluster = RealCluster { plane: Some(plane), node: Some(node), volumes: Some(volumes) };
        if let Err(e) = cluster.start_dns() {
            cluster.stop(true).await;
            return Err(e);
        }
        Ok(cluster)
    }

    /// CoreDNS, rolled out.
    fn start_dns(&self) -> Result<()> {
        self.apply(&COREDNS.replace("CLUSTER_DNS", CLUSTER_DNS))?;
        let rollout = ["-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s"];
        self.kubectl(&rollout)?;
        Ok(())
    }

    fn plane(&self) -> &ControlPlane {
        self.plane.as_ref().unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let plane = self.plane();
        Ok(run(kubectl(&plane.bin, &plane.kubeconfig).args(args))?.stdout)
    }

    fn helm(&self, args: &[&str]) -> Result<String> {
        let plane = self.plane();
        let mut cmd = Command::new(plane.bin.join("helm"));
        cmd.env("KUBECONFIG", &plane.kubeconfig)
            .env("HELM_CACHE_HOME", plane.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", plane.dir.join("helm/config"))
            .env("HELM_DATA_HOME", plane.dir.join("helm/data"));
        Ok(run(cmd.args(args))?.stdout)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let out = self.kubectl(&[args, &["-o", "json"]].concat())?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The session's status, as `kubectl get` shows it.
    fn session_status(&self) -> Result<Value> {
        Ok(self.json(&["-n", NS, "get", "whatsappsession", SESSION])?["status"].clone())
    }

    /// Polls `check` (every 200 ms) until it gives a value.
    async fn until<T>(&self, what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match check() {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => "not yet".to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("timed out after {WAIT:?} waiting for {what}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn apply(&self, manifest: &str) -> Result<()> {
        let path = self.plane().dir.join(format!("manifest-{}.yaml", cluster::random_hex(4)));
        std::fs::write(&path, manifest)?;
        self.kubectl(&["apply", "-f", path.to_str().context("UTF-8 path")?])?;
        Ok(())
    }

    /// Stops everything; prints the node's logs first when the test failed.
    async fn stop(mut self, failed: bool) {
        if let Some(volumes) = self.volumes.take() {
            volumes.abort();
        }
        if let Some(node) = self.node.take() {
            if failed {
                for component in ["kubelet", "containerd", "kube-proxy"] {
                    eprintln!("---- {component} (last 40 lines)\n{}", node.log_tail(component, 40));
                }
            }
            node.stop().await;
        }
        if let Some(plane) = self.plane.take() {
            let dir = plane.dir.clone();
            plane.stop().await;
            if !failed {
                let _ = cluster::remove_state_dir(&dir);
            }
        }
    }
}

#[test]
fn the_chart_runs_a_session_in_real_containers_on_a_real_node() {
    node::in_network_namespace(|| async {
        let cluster = RealCluster::start().await.expect("a real node");
        let outcome = std::panic::AssertUnwindSafe(scenario(&cluster)).catch_unwind().await;
        let failed = !matches!(outcome, Ok(Ok(())));
        if failed {
            for what in [
                &["get", "pods", "-A", "-o", "wide"][..],
                &["get", "events", "-A"],
                &["-n", NS, "get", "whatsappsessions", "-o", "yaml"],
                &[
                    "-n",
                    NS,
                    "logs",
                    "-l",
                    "app.kubernetes.io/name=whatsapp-operator",
                    "--tail=40",
                    "--prefix",
                ],
                &["-n", NS, "logs", "-l", "app.kubernetes.io/name=whatsapp-hub", "--tail=20", "--prefix"],
                &["-n", NS, "logs", &format!("{SESSION}-0"), "--tail=60"],
            ] {
                eprintln!("{}", cluster.kubectl(what).unwrap_or_else(|e| format!("{e:#}")));
            }
        }
        cluster.stop(failed).await;
        match outcome {
            Ok(result) => result.unwrap(),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
}

/// The host-path provisioner makes root-only directories and, unlike most storage drivers, its
/// volumes get no fsGroup ownership: this opens each new one to every user, as Rancher's
/// local-path provisioner does, so the session pod (uid 10001) can write its volume.
async fn open_volumes(client: kube::Client) {
    let volumes: kube::Api<PersistentVolume> = kube::Api::all(client);
    let mut events = std::pin::pin!(watcher::watcher(volumes, watcher::Config::default()));
    while let Some(event) = events.next().await {
        let (watcher::Event::Apply(pv) | watcher::Event::InitApply(pv)) =
            event.unwrap_or(watcher::Event::Init)
        else {
            continue;
        };
        if let Some(path) = pv.spec.and_then(|s| s.host_path).map(|h| h.path) {
            let _ = std::fs::create_dir_all(&path);
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
        }
    }
}

async fn scenario(cluster: &RealCluster) -> Result<()> {
    // The namespace enforces the restricted Pod Security profile: every pod must meet it.
    cluster.kubectl(&["create", "namespace", NS])?;
    cluster.kubectl(&["label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted"])?;

    // The chart, with the images built from the Dockerfiles (imported, never pulled), two
    // operator replicas (one leads) and two hub replicas.
    let installing = Instant::now();
    let never =
        "operator.image.pullPolicy=Never,hub.image.pullPolicy=Never,sessionPod.image.pullPolicy=Never";
    let chart = source_path("charts/whatsapp-operator");
    cluster.helm(&[
        "install",
        "wao",
        chart.to_str().unwrap(),
        "-n",
        NS,
        "--set",
        never,
        "--set",
        "operator.replicas=2",
        "--wait",
        "--timeout",
        "180s",
    ])?;
    println!("helm install --wait: {:.1}s", installing.elapsed().as_secs_f64());
    // Two operator pods: one leads; when it is deleted, it hands the lease over and another
    // pod leads (the standby, or the leader's replacement if it asks first), and that one
    // reconciles the session below.
    let holder = || -> Result<Option<String>> {
        let lease = cluster.json(&["-n", NS, "get", "lease", &format!("{PREFIX}-operator")])?;
        Ok(lease["spec"]["holderIdentity"].as_str().map(String::from))
    };
    let operator_pods = || -> Result<Vec<String>> {
        let pods =
            cluster.json(&["-n", NS, "get", "pods", "-l", "app.kubernetes.io/name=whatsapp-operator"])?;
        let names = pods["items"].as_array().context("pods")?.iter();
        Ok(names.filter_map(|p| p["metadata"]["name"].as_str().map(String::from)).collect())
    };
    let leading_pod = || Ok(holder()?.filter(|h| operator_pods().is_ok_and(|pods| pods.contains(h))));
    let first = cluster.until("an operator pod to lead", leading_pod).await?;
    assert_eq!(operator_pods()?.len(), 2, "two operator pods");
    let handover = Instant::now();
    cluster.kubectl(&["-n", NS, "delete", "pod", &first, "--wait=false"])?;
    let next =
        cluster.until("another operator pod to lead", || Ok(leading_pod()?.filter(|h| *h != first))).await?;
    println!("leadership moved from {first} to {next} in {:.1}s", handover.elapsed().as_secs_f64());

    // A session created with kubectl; its Chromium reaches the simulator on the node's address.
    let sim = Simulator::start_on(SocketAddr::new(NODE_IP.into(), 0), SimConfig::default()).await?;
    let session = json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1",
        "kind": "WhatsAppSession",
        "metadata": {"name": SESSION, "namespace": NS},
        "spec": {"clienteId": CLIENTE_ID, "browser": {"extraArgs": sim.chromium_args()}},
    });
    cluster.apply(&session.to_string())?;
    let shown = cluster
        .until("QR_REQUIRED in the session's container", || {
            let status = cluster.session_status()?;
            Ok((status["state"] == "QR_REQUIRED")
                .then(|| status["qr"]["code"].as_str().map(String::from))
                .flatten())
        })
        .await?;
    if sim.scan(&shown, PHONE, "Acme").is_err() {
        let next = cluster
            .until("the next QR", || {
                let code = cluster.session_status()?["qr"]["code"].as_str().map(String::from);
                Ok(code.filter(|c| *c != shown))
            })
            .await?;
        sim.scan(&next, PHONE, "Acme").map_err(anyhow::Error::msg)?;
    }
    let ready = |what: &'static str| {
        cluster.until(what, || {
            let status = cluster.session_status()?;
            Ok((status["state"] == "READY").then_some(status))
        })
    };
    ready("READY").await?;
    println!("helm install to a READY session: {:.1}s", installing.elapsed().as_secs_f64());

    // A send through the hub's Service, with a tenant's token signed by the chart's secret.
    let secret = cluster.json(&["-n", NS, "get", "secret", &format!("{PREFIX}-jwt")])?;
    let secret = base64_decode(secret["data"]["secret"].as_str().context("the JWT secret")?)?;
    let token = hub::sign(hub::claims(json!({"cliente_id": CLIENTE_ID})), &secret);
    let service = cluster.json(&["-n", NS, "get", "service", &format!("{PREFIX}-hub")])?;
    let hub_url =
        format!("http://{}", service["spec"]["clusterIP"].as_str().context("the hub's cluster IP")?);
    let sent: Value = reqwest::Client::new()
        .post(format!("{hub_url}/sender/send"))
        .bearer_auth(&token)
        .json(&json!({"to": "5491166668888", "message": "hola desde un contenedor"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(sent["data"]["status"], "sent", "{sent}");
    assert!(sim.messages().iter().any(|m| Some(m.id.as_str()) == sent["data"]["id"].as_str()));

    // Chromium killed in the container, again and again: the session restarts it and comes
    // back READY, and tini (PID 1) reaps every helper process the dead browser left behind.
    let kills = browser_kills();
    for round in 1..=kills {
        let before = cluster.session_status()?["lastStateChange"].clone();
        cluster.kubectl(&["-n", NS, "exec", &format!("{SESSION}-0"), "--", "sh", "-c", KILL_BROWSER])?;
        cluster
            .until("READY after the browser was killed", || {
                let status = cluster.session_status()?;
                Ok((status["state"] == "READY" && status["lastStateChange"] != before).then_some(()))
            })
            .await?;
        let zombies =
            cluster.kubectl(&["-n", NS, "exec", &format!("{SESSION}-0"), "--", "sh", "-c", ZOMBIES])?;
        let init =
            cluster.kubectl(&["-n", NS, "exec", &format!("{SESSION}-0"), "--", "cat", "/proc/1/comm"])?;
        assert_eq!((zombies.trim(), init.trim()), ("0", "tini"), "after browser kill {round}");
    }
    println!("{kills} browser kills: READY after each, no zombies");
    // The container runs as the image's user, on a read-only root.
    let exec = |script: &str| {
        let plane = cluster.plane();
        whatsapp_tests::output(kubectl(&plane.bin, &plane.kubeconfig).args([
            "-n",
            NS,
            "exec",
            &format!("{SESSION}-0"),
            "--",
            "sh",
            "-c",
            script,
        ]))
    };
    assert_eq!(exec("id -u")?.stdout.trim(), "10001");
    let write = exec("touch /probe")?;
    assert!(!write.success && write.stderr.contains("Read-only file system"), "{}", write.stderr);

    // The pod deleted: its replacement comes back READY on the same claim, without a QR.
    let pod = format!("{SESSION}-0");
    let first = cluster.json(&["-n", NS, "get", "pod", &pod])?["metadata"]["uid"].clone();
    cluster.kubectl(&["-n", NS, "delete", "pod", &pod, "--wait=true"])?;
    cluster
        .until("the replacement pod", || {
            let uid = cluster.json(&["-n", NS, "get", "pod", &pod]).map(|p| p["metadata"]["uid"].clone());
            Ok(uid.ok().filter(|uid| !uid.is_null() && *uid != first))
        })
        .await?;
    let back = cluster
        .until("READY from the replacement pod", || {
            let status = cluster.session_status()?;
            let pod_now = cluster.json(&["-n", NS, "get", "pod", &pod])?;
            let ip = pod_now["status"]["podIP"].as_str().unwrap_or("-");
            let serving = status["endpoint"].as_str().is_some_and(|e| e.contains(&format!("//{ip}:")));
            Ok((status["state"] == "READY" && serving).then_some(status))
        })
        .await?;
    assert!(back["qr"].is_null(), "no QR after the restart: {back}");

    // The chart's own test.
    let test = cluster.helm(&["test", "wao", "-n", NS, "--timeout", "120s"])?;
    assert!(test.contains("Succeeded"), "{test}");
    Ok(())
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
}
