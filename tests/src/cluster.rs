//! A real Kubernetes control plane on this machine, for tests and local development.
//!
//! etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which plays the
//! kubelet for one fake node), all upstream binaries built by `tests/cluster/build.sh`, all on
//! 127.0.0.1 and free ports. PersistentVolumeClaims bind through the controller-manager's
//! in-tree host-path provisioner, so a StatefulSet's claims get real directories.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::process::{Child, Command};

/// Name of the one fake node kwok manages.
pub const NODE_NAME: &str = "kwok-node-0";
/// The default StorageClass, backed by the host-path provisioner.
pub const STORAGE_CLASS: &str = "standard";
/// Where the in-tree host-path provisioner creates volume directories (fixed upstream).
pub const HOSTPATH_ROOT: &str = "/tmp/hostpath_pv";
/// The Services' cluster IPs (`--service-cluster-ip-range`).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's cluster IP (the first of [`SERVICE_CIDR`]).
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// Environment variable naming the Go-built binaries, else `tests/cluster/build.sh` runs.
pub const BIN_ENV: &str = "WAO_CLUSTER_BIN";

/// A running control plane. Dropping it kills every process; [`ControlPlane::stop`] stops
/// them gracefully.
pub struct ControlPlane {
    /// State directory: `kubeconfig`, `pki/`, `logs/`, etcd data.
    pub dir: PathBuf,
    /// Directory of the upstream binaries (kubectl and helm included).
    pub bin: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The API server URL.
    pub server: String,
    components: Components,
}

/// Named long-running processes, each logging to `<dir>/logs/<name>.log`, stopped newest
/// first: the control plane's components, and a real node's (`crate::node`).
pub struct Components {
    dir: PathBuf,
    processes: Vec<(&'static str, Child)>,
}

impl Components {
    /// None yet; logs go under `dir/logs`, which must exist.
    pub fn new(dir: &Path) -> Components {
        Components { dir: dir.to_path_buf(), processes: Vec::new() }
    }

    /// Starts `program` as the component `name`, in its own process group (a Ctrl-C in the
    /// terminal reaches only whoever owns it, which stops the components in order).
    pub fn spawn(&mut self, name: &'static str, program: &Path, args: &[&str]) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("logs").join(format!("{name}.log")))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        self.processes.push((name, child));
        Ok(())
    }

    /// Checks every component is still running; names the first that is not, with its log.
    pub fn check_alive(&mut self) -> Result<()> {
        for (name, child) in &mut self.processes {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}):\n{}", log_tail(&self.dir, name, 30));
            }
        }
        Ok(())
    }

    /// Polls `check` until it is true, failing early (with the log tail) if a component exits.
    pub async fn wait_for<F, Fut>(&mut self, what: &str, limit: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let deadline = Instant::now() + limit;
        let mut last_error = None;
        loop {
            self.check_alive().with_context(|| format!("while waiting for {what}"))?;
            match check().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_error = Some(e),
            }
            if Instant::now() > deadline {
                bail!("timed out after {limit:?} waiting for {what} (last error: {last_error:?})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Takes the component `name` out of the set (to stop it by hand).
    fn remove(&mut self, name: &str) -> Result<(&'static str, Child)> {
        let index = self
            .processes
            .iter()
            .position(|(n, _)| *n == name)
            .with_context(|| format!("no running {name}"))?;
        Ok(self.processes.remove(index))
    }

    /// The newest component still in the set.
    pub fn newest(&self) -> Option<&'static str> {
        self.processes.last().map(|(name, _)| *name)
    }

    /// Stops the newest component left (SIGTERM, then SIGKILL after 10 s); its name, or None
    /// when none is left.
    pub async fn stop_newest(&mut self) -> Option<&'static str> {
        let (name, mut child) = self.processes.pop()?;
        let _ = crate::processes::stop_gracefully(name, &mut child, Duration::from_secs(10)).await;
        Some(name)
    }
}

/// Builds (or takes from the cache) the upstream binaries and returns their directory.
pub fn build_binaries() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(BIN_ENV) {
        return Ok(PathBuf::from(bin));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/build.sh");
    let out = std::process::Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Where the control plane serves and what plays its node.
#[derive(Clone, Debug)]
pub struct Options {
    /// The API server's address. Loopback (the default) for the fast lane; a real node's pods
    /// need one they can route to (the `kubernetes` Service then points at it).
    pub address: Ipv4Addr,
    /// Whether kwok plays the one fake node (the fast lane) or a real kubelet joins later.
    pub kwok: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { address: Ipv4Addr::LOCALHOST, kwok: true }
    }
}

impl ControlPlane {
    /// Starts a fresh control plane with its state under `dir` (emptied first) and waits until
    /// it serves, the controllers run and the fake node is Ready.
    pub async fn start(bin: &Path, dir: &Path) -> Result<ControlPlane> {
        Self::start_with(bin, dir, &Options::default()).await
    }

    /// [`ControlPlane::start`] with `options`.
    pub async fn start_with(bin: &Path, dir: &Path, options: &Options) -> Result<ControlPlane> {
        let started = Instant::now();
        let address = options.address;
        remove_state_dir(dir)?;
        for sub in ["pki", "logs", "etcd"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let dir = dir.canonicalize()?;
        let pki = write_pki(&dir.join("pki"), address)?;
        let token = random_hex(16);
        std::fs::write(dir.join("tokens.csv"), format!("{token},admin,admin,system:masters\n"))?;
        std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY)?;

        let etcd_port = free_port()?;
        let api_port = free_port()?;
        let server = format!("https://{address}:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server, &pki.ca_pem, &token))?;

        let mut plane = ControlPlane {
            dir: dir.clone(),
            bin: bin.to_path_buf(),
            kubeconfig: kubeconfig.clone(),
            server,
            components: Components::new(&dir),
        };
        let kc = kubeconfig.to_str().context("kubeconfig path is not UTF-8")?;
        let p = |name: &str| dir.join("pki").join(name).display().to_string();

        plane.spawn(
            "etcd",
            &[
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-url=http://127.0.0.1:{etcd_port}"),
                &format!("--listen-peer-url=http://127.0.0.1:{}", free_port()?),
            ],
        )?;
        let mut apiserver = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            // A real kubelet serves logs and exec on its node address.
            "--kubelet-preferred-address-types=InternalIP".into(),
        ];
        if address.is_loopback() {
            // The `kubernetes` Service would point at 127.0.0.1, which Endpoints reject.
            apiserver.push("--endpoint-reconciler-type=none".into());
        }
        let apiserver_args: Vec<&str> = apiserver.iter().map(String::as_str).collect();
        plane.spawn(
            "kube-apiserver",
            &[
                &apiserver_args[..],
                &[
                    &format!("--secure-port={api_port}"),
                    &format!("--tls-cert-file={}", p("apiserver.crt")),
                    &format!("--tls-private-key-file={}", p("apiserver.key")),
                    &format!("--client-ca-file={}", p("ca.crt")),
                    &format!("--token-auth-file={}", dir.join("tokens.csv").display()),
                    "--authorization-mode=RBAC",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    &format!("--service-account-key-file={}", p("sa.pub")),
                    &format!("--service-account-signing-key-file={}", p("sa.key")),
                    &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                    &format!("--audit-policy-file={}", dir.join("audit-policy.yaml").display()),
                    &format!("--audit-log-path={}", dir.join("logs/audit.log").display()),
                    "--audit-log-maxsize=200",
                    "--profiling=false",
                ],
            ]
            .concat(),
        )?;
        let client = client_for(&kubeconfig).await?;
        plane
            .wait_for("kube-apiserver /readyz", Duration::from_secs(90), || async {
                let req = http::Request::get("/readyz").body(Vec::new())?;
                Ok(client.request_text(req).await.is_ok_and(|body| body.trim() == "ok"))
            })
            .await?;

        plane.spawn(
            "kube-controller-manager",
            &[
                &format!("--kubeconfig={kc}"),
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                &format!("--service-account-private-key-file={}", p("sa.key")),
                &format!("--root-ca-file={}", p("ca.crt")),
                "--enable-hostpath-provisioner",
                "--cluster-cidr=10.244.0.0/16",
                &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--concurrent-statefulset-syncs=20",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )?;
        plane.spawn(
            "kube-scheduler",
            &[
                &format!("--kubeconfig={kc}"),
                "--secure-port=0",
                "--leader-elect=false",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )?;
        create_storage_class(&client).await?;
        if options.kwok {
            plane.start_kwok(&client, kc).await?;
        }
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        plane
            .wait_for("the controller-manager to create default/default", Duration::from_secs(60), || async {
                Ok(sas.get_opt("default").await?.is_some())
            })
            .await?;

        // `bin` next to the state, so scripts find kubectl and helm from the state dir alone.
        let link = dir.join("bin");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(bin, &link)?;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, server = %plane.server, "control plane ready");
        Ok(plane)
    }

    /// kwok, playing the one fake node of the fast lane; waits until that node is Ready.
    async fn start_kwok(&mut self, client: &Client, kc: &str) -> Result<()> {
        self.spawn(
            "kwok",
            &[
                &format!("--kubeconfig={kc}"),
                "--manage-all-nodes=true",
                // Renew the node Lease and heartbeat the node status, so the node stays Ready
                // (kwok v0.7 picks its status-heartbeat stage only when a lease duration is set).
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/24",
                "--node-ip=127.0.0.1",
                &format!("--server-address=127.0.0.1:{}", free_port()?),
            ],
        )?;

        create_kwok_node(client).await?;
        let nodes: Api<Node> = Api::all(client.clone());
        self.wait_for("the kwok node to be Ready", Duration::from_secs(60), || async {
            let node = nodes.get(NODE_NAME).await?;
            Ok(node
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
        })
        .await?;
        Ok(())
    }

    /// An admin client for this control plane.
    pub async fn client(&self) -> Result<Client> {
        client_for(&self.kubeconfig).await
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) -> Result<()> {
        self.components.spawn(name, &self.bin.join(name), args)
    }

    async fn wait_for<F, Fut>(&mut self, what: &str, limit: Duration, check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        self.components.wait_for(what, limit, check).await
    }

    /// The last `lines` lines of a component's log.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        log_tail(&self.dir, component, lines)
    }

    /// Checks every component is still running; names the first that is not.
    pub fn check_alive(&mut self) -> Result<()> {
        self.components.check_alive()
    }

    /// Stops one component (SIGTERM, then SIGKILL after 10 s), as an outage of it, and returns
    /// the arguments it ran with, for [`ControlPlane::start_component`] to start it again.
    pub async fn stop_component(&mut self, name: &str) -> Result<Vec<String>> {
        let (name, mut child) = self.components.remove(name)?;
        let pid = child.id().with_context(|| format!("{name} has exited"))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let args = cmdline
            .split(|b| *b == 0)
            .skip(1)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        crate::processes::stop_gracefully(name, &mut child, Duration::from_secs(10)).await?;
        Ok(args)
    }

    /// Starts a component stopped by [`ControlPlane::stop_component`] again, with `args` (its
    /// log is started afresh).
    pub fn start_component(&mut self, name: &'static str, args: &[String]) -> Result<()> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(name, &args)
    }

    /// Stops every component, newest first, with SIGTERM and then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        while self.components.stop_newest().await.is_some() {}
    }
}

/// Removes a state directory left by an earlier run, detaching first whatever is still mounted
/// beneath it: a test mounts a small filesystem as a session's volume, and a run killed in the
/// middle of that test leaves the mount behind (then the removal fails with EBUSY).
pub fn remove_state_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let dir = dir.canonicalize()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut beneath: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_point)
        .filter(|point| point.starts_with(&dir))
        .collect();
    // Deepest first, so a mount inside another one goes before it.
    beneath.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in beneath {
        nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {} (left by an earlier run)", point.display()))?;
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))
}

/// A mount point as `/proc/self/mountinfo` writes it: space, tab, newline and backslash octal-escaped.
fn unescape_mount_point(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok());
        match octal.and_then(|d| u8::from_str_radix(d, 8).ok()) {
            Some(byte) if bytes[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The last `lines` lines of a component's log in a control-plane state directory.
pub fn log_tail(dir: &Path, component: &str, lines: usize) -> String {
    let path = dir.join("logs").join(format!("{component}.log"));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// Component names, in start order, for log collection.
pub const COMPONENTS: [&str; 5] =
    ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"];

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(Client::try_from(config)?)
}

async fn create_kwok_node(client: &Client) -> Result<()> {
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "status": {
            // Room for the 5,000-session benchmark: the operator's sessions and two direct
            // copies of their children, 15,000 pods (a pod the node has no room for stays
            // Pending, and the scheduler retries it over and over, skewing the figures).
            "allocatable": {"cpu": "1000", "memory": "4Ti", "ephemeral-storage": "1Ti", "pods": "20000"},
            "capacity": {"cpu": "1000", "memory": "4Ti", "ephemeral-storage": "1Ti", "pods": "20000"},
        },
    }))?;
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await?;
    Ok(())
}

async fn create_storage_class(client: &Client) -> Result<()> {
    let class: StorageClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/host-path",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }))?;
    Api::<StorageClass>::all(client.clone()).create(&PostParams::default(), &class).await?;
    Ok(())
}

struct Pki {
    ca_pem: String,
}

/// A CA, the API server's serving certificate, and the service-account signing key.
fn write_pki(dir: &Path, address: Ipv4Addr) -> Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "whatsapp-operator test CA");
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    // As pods reach it too: by the `kubernetes` Service's name and cluster IP.
    let names = ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"];
    let mut names: Vec<String> = names.map(String::from).to_vec();
    names.extend([address.to_string(), KUBERNETES_SERVICE_IP.to_string()]);
    names.dedup();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(dir.join("ca.key"), ca_key_pem)?;
    std::fs::write(dir.join("apiserver.crt"), cert.pem())?;
    std::fs::write(dir.join("apiserver.key"), key.serialize_pem())?;
    let sa = KeyPair::generate()?;
    std::fs::write(dir.join("sa.key"), sa.serialize_pem())?;
    std::fs::write(dir.join("sa.pub"), sa.public_key_pem())?;
    Ok(Pki { ca_pem: ca.pem() })
}

/// A kubeconfig that authenticates with a bearer token (an admin one, or a ServiceAccount's).
pub fn kubeconfig_yaml(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    use std::fmt::Write;
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut s = String::new();
    let _ = write!(
        s,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca_b64}\n\
         users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n\
         current-context: test\n"
    );
    s
}

/// `bytes` random bytes from the kernel, as lowercase hex (tokens, keys, passwords).
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A free TCP port on 127.0.0.1 (bound and released; the component binds it right after).
/// It is picked below the kernel's ephemeral range: a port from that range can be handed to
/// any outgoing connection (to the API server, a benchmark's load) between this check and the
/// component's bind, which then fails with "Address already in use".
pub fn free_port() -> Result<u16> {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let below = 10_000..ephemeral.max(10_001);
    for _ in 0..1000 {
        let port = rand::random_range(below.clone());
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Audit log: every write (not reads or watches), with who made it. Tests count writes by a
/// user agent or service account from it.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_with_a_leftover_mount_is_removed() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state dir");
        let volume = dir.join("profiles/a/volume");
        std::fs::create_dir_all(&volume).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&volume)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs (the tests run as root)");
        std::fs::write(volume.join("file"), "x").unwrap();
        remove_state_dir(&dir).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_point(r"/a\040b\011c\134d"), PathBuf::from("/a b\tc\\d"));
        assert_eq!(unescape_mount_point(r"/plain\x"), PathBuf::from(r"/plain\x"));
    }
}
