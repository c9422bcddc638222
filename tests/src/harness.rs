//! The control plane shared by every test of a run, and a fresh namespace per test.
//!
//! `WAO_TEST_CLUSTER=<state dir>` reuses a running `whatsapp-testcluster` (the README's test
//! command starts one for the whole run). Without it, the first test of a test binary starts
//! one; it stops when the test binary exits, because its standard input (held here) closes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::cluster;

/// Environment variable naming the state directory of a running test control plane.
pub const CLUSTER_ENV: &str = "WAO_TEST_CLUSTER";

/// A running test control plane.
pub struct TestCluster {
    /// The control plane's state directory.
    pub dir: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Upstream binaries: kubectl, helm, ...
    pub bin: PathBuf,
    /// A control plane we started, whose standard input stays open for the life of this
    /// process: its closing (at exit) stops the control plane.
    _supervisor: Mutex<Option<Child>>,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

/// The control plane for this test run, started on first use.
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| match std::env::var_os(CLUSTER_ENV) {
        Some(dir) => TestCluster::existing(PathBuf::from(dir)),
        None => TestCluster::spawn(),
    })
}

/// Directory of the workspace's built binaries (`target/<profile>`), from this executable's
/// own location: `target/<profile>/deps/<test>` for a test, `target/<profile>/<bin>` for a
/// binary such as a benchmark.
pub fn target_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("the executable has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of one of the workspace's binaries; panics with the fix if it was not built.
pub fn workspace_binary(name: &str) -> PathBuf {
    let path = target_bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built: run the README's test command, or `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

impl TestCluster {
    /// A control plane running from the state directory `dir` (one a test started itself,
    /// apart from the shared one).
    pub fn at(dir: PathBuf) -> TestCluster {
        Self::existing(dir)
    }

    fn existing(dir: PathBuf) -> TestCluster {
        let dir = dir.canonicalize().unwrap_or_else(|e| panic!("{CLUSTER_ENV}={}: {e}", dir.display()));
        let bin = dir.join("bin").canonicalize().expect("the cluster state dir has bin/");
        TestCluster { kubeconfig: dir.join("kubeconfig"), dir, bin, _supervisor: Mutex::new(None) }
    }

    fn spawn() -> TestCluster {
        let state = target_bin_dir().join(format!("wao-test-cluster-{}", std::process::id()));
        let log_path = state.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("creating the cluster log");
        let mut child = Command::new(workspace_binary("whatsapp-testcluster"))
            .arg("--dir")
            .arg(&state)
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting whatsapp-testcluster");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut ready = false;
        for line in stdout.lines() {
            if line.as_deref().is_ok_and(|l| l == "ready") {
                ready = true;
                break;
            }
        }
        if !ready {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("the test control plane did not start; its log ({}):\n{log}", log_path.display());
        }
        let mut cluster = TestCluster::existing(state);
        cluster._supervisor = Mutex::new(Some(child));
        cluster
    }

    /// An admin client.
    pub async fn client(&self) -> Client {
        cluster::client_for(&self.kubeconfig).await.expect("client for the test cluster")
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        crate::kubectl(&self.bin, &self.kubeconfig)
    }

    /// Creates a fresh namespace for one test; it is deleted when the test ends, and on a
    /// failure the namespace's events and the control-plane logs are printed first.
    pub async fn namespace(&'static self, prefix: &str) -> TestNamespace {
        let client = self.client().await;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": format!("{prefix}-"), "labels": {"whatsapp-operator/test": "true"}}
        }))
        .expect("namespace object");
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        let name = created.metadata.name.expect("generated name");
        TestNamespace { name, client, cluster: self }
    }

    /// The API server URL, from the kubeconfig.
    pub fn server(&self) -> String {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("server in kubeconfig")
            .to_string()
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("pki/ca.crt")).expect("ca.crt")
    }

    /// Prints the tail of every control-plane component's log.
    pub fn dump_logs(&self) {
        for component in cluster::COMPONENTS {
            eprintln!(
                "---- {component} (last 40 lines) ----\n{}",
                cluster::log_tail(&self.dir, component, 40)
            );
        }
    }
}

/// A namespace that lives as long as one test.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    pub cluster: &'static TestCluster,
}

impl TestNamespace {
    /// A typed API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// A pod runner for the session pods of this namespace, on a "node" whose network has
    /// `sim` as WhatsApp Web.
    pub fn pod_runner(&self, sim: &crate::simulator::Simulator) -> crate::podrunner::PodRunner {
        let config = crate::podrunner::RunnerConfig {
            server: self.cluster.server(),
            ca_pem: self.cluster.ca_pem(),
            work_dir: self.cluster.dir.join("pods"),
            namespace: Some(self.name.clone()),
            extra_env: sim.browser_env(),
        };
        crate::podrunner::PodRunner::start(self.client.clone(), config)
    }

    /// `kubectl apply -f -` of a YAML manifest in this namespace, as a user would.
    pub fn apply(&self, manifest: &str) -> crate::Output {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child.stdin.take().expect("stdin").write_all(manifest.as_bytes()).expect("writing to kubectl");
        let out = child.wait_with_output().expect("kubectl");
        crate::Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    /// Creates a WhatsAppSession with this spec (JSON) through the API.
    pub async fn create_session(&self, name: &str, spec: serde_json::Value) {
        let session: whatsapp_crds::WhatsAppSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("a WhatsAppSession");
        self.api::<whatsapp_crds::WhatsAppSession>()
            .create(&PostParams::default(), &session)
            .await
            .expect("creating the WhatsAppSession");
    }

    /// Waits (up to 2 minutes) until the session's status satisfies `check`, and returns it.
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&whatsapp_crds::WhatsAppSessionStatus) -> bool,
    ) -> whatsapp_crds::WhatsAppSessionStatus {
        let api = self.api::<whatsapp_crds::WhatsAppSession>();
        eventually(&format!("{name}: {what}"), Duration::from_secs(120), || async {
            let session = api.get(name).await.map_err(|e| e.to_string())?;
            Ok(session.status.filter(|s| check(s)))
        })
        .await
    }

    /// Writes a session's status the way its pod does (server-side apply of `status`, a JSON
    /// object, as the field manager `test-pod`): the CR's status is the interface.
    pub async fn report_status(&self, name: &str, status: serde_json::Value) -> Result<(), kube::Error> {
        use kube::api::{Patch, PatchParams};
        let body = serde_json::json!({
            "apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession", "status": status,
        });
        self.api::<whatsapp_crds::WhatsAppSession>()
            .patch_status(name, &PatchParams::apply("test-pod").force(), &Patch::Apply(body))
            .await
            .map(|_| ())
    }

    /// The phone `phone` scans whichever QR the session `name` shows (the next one if it
    /// rotated in between), then waits for READY.
    pub async fn link(
        &self,
        sim: &crate::simulator::Simulator,
        name: &str,
        phone: &str,
    ) -> whatsapp_crds::WhatsAppSessionStatus {
        let shown = self.wait_status(name, "a QR code", |s| s.qr.is_some()).await.qr.unwrap().code;
        if sim.scan(&shown, phone, "Acme").is_err() {
            let next = self
                .wait_status(name, "the next QR", |s| s.qr.as_ref().is_some_and(|q| q.code != shown))
                .await;
            sim.scan(&next.qr.unwrap().code, phone, "Acme").expect("scan");
        }
        self.wait_status(name, "READY", |s| s.state == Some(whatsapp_crds::SessionState::Ready)).await
    }

    /// A browser-profile directory for a session run by hand (a stand-in for its volume).
    pub fn profile_dir(&self, name: &str) -> PathBuf {
        let dir = self.cluster.dir.join("profiles").join(&self.name).join(name);
        std::fs::create_dir_all(&dir).expect("creating the profile directory");
        dir
    }

    /// `kubectl -n <this namespace>`.
    pub fn kubectl(&self) -> Command {
        let mut cmd = self.cluster.kubectl();
        cmd.args(["-n", &self.name]);
        cmd
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== test failed in namespace {}: its events ====", self.name);
            if let Ok(out) = crate::output(self.kubectl().args(["get", "events", "--sort-by=.lastTimestamp"]))
            {
                eprintln!("{}{}", out.stdout, out.stderr);
            }
            self.cluster.dump_logs();
        }
        let _ =
            crate::output(self.cluster.kubectl().args(["delete", "namespace", &self.name, "--wait=false"]));
    }
}

/// Polls `check` until it returns `Some`, or panics after `limit` naming `what` and the last
/// value seen. Every wait on the cluster goes through here: a poll with a deadline, never a
/// bare sleep.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return value,
            Ok(None) => "not yet".to_string(),
            Err(e) => e,
        };
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}; last: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The path of a file in the workspace source tree.
pub fn source_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}
