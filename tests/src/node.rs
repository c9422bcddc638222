//! A real node for the real-node lane: containerd (CRI, runc, overlayfs) from Debian, the CNI
//! `bridge` and `host-local` plugins from Debian, and a kubelet and kube-proxy built from the
//! same upstream Kubernetes module as the control plane (`tests/cluster/build.sh`).
//!
//! Everything runs in a network namespace the test creates for itself
//! ([`in_network_namespace`]): the control plane serves on [`NODE_IP`] there, pods get addresses
//! on the `cni0` bridge, and no traffic leaves this machine's own namespaces. The kubelet gets a
//! node address that is not loopback, as pods must route to it. The mount namespace stays the
//! host's: the kubelet needs the cgroup mounts as they are.
//!
//! What the kubelet changes outside its directories is undone by [`Node::stop`]: the pods'
//! processes and cgroups (`/kubepods`), the kernel settings it rewrites, the mounts under its
//! directory.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::api::Api;
use tokio::process::Command;

use crate::cluster::{Components, ControlPlane, SERVICE_CIDR, free_port, log_tail, remove_state_dir};

/// The node's name.
pub const NODE_NAME: &str = "wao-node-0";
/// The node's address, on the namespace's loopback device: what the API server advertises
/// (so the `kubernetes` Service points at it) and what the kubelet serves on.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The pods' addresses, on the `cni0` bridge (its gateway, `.1`, is the node).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The cluster DNS Service's address the kubelet writes into pods' resolv.conf.
pub const CLUSTER_DNS: &str = "10.96.0.10";
/// The sandbox image containerd starts for every pod (built by `tests/images/build.sh`).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";

/// Kernel settings the kubelet rewrites when `protectKernelDefaults` is off (it is: this
/// machine's defaults differ), saved at start and restored at stop.
const KUBELET_SYSCTLS: [&str; 3] = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"];
/// The cgroup v1 hierarchies the kubelet makes its `/kubepods` tree in.
const CGROUP_HIERARCHIES: [&str; 10] =
    ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", "unified"];

/// Runs `body` to completion on a thread of its own that first enters a new network
/// namespace, with a Tokio runtime whose threads, and every process they start, live there.
/// That namespace has only loopback, with [`NODE_IP`] on it, until the node adds its bridge.
pub fn in_network_namespace<T, F, Fut>(body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("a network namespace (the tests run as root)");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"],
            // No uplink here: the Services' range routes to the node itself, where kube-proxy's
            // rules send it on (a real node's default route plays this part).
            vec!["route", "add", SERVICE_CIDR, "dev", "lo"],
        ] {
            let status = std::process::Command::new("ip").args(&args).status().expect("running ip");
            assert!(status.success(), "ip {args:?}");
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("forwarding in the namespace");
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(body())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A running real node: containerd, the kubelet and kube-proxy.
pub struct Node {
    /// State: configuration, logs, containerd's and the kubelet's directories.
    pub dir: PathBuf,
    /// containerd's socket (`ctr --address`).
    pub containerd: PathBuf,
    components: Components,
    sysctls: Vec<(&'static str, String)>,
}

impl Node {
    /// Starts the node against `plane` (started with [`NODE_IP`] as its address and no kwok),
    /// imports the image archives `images` into containerd, and waits until the node is Ready.
    pub async fn start(plane: &ControlPlane, images: &[PathBuf]) -> Result<Node> {
        let started = Instant::now();
        // A short path: containerd's socket path must fit a sockaddr_un.
        let dir = std::env::temp_dir().join(format!("wao-node-{}", std::process::id()));
        remove_state_dir(&dir)?;
        for sub in ["logs", "cni", "containerd", "kubelet", "runc", "ipam", "pods"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut sysctls = Vec::new();
        for key in KUBELET_SYSCTLS {
            sysctls
                .push((key, std::fs::read_to_string(Path::new("/proc/sys").join(key))?.trim().to_string()));
        }
        let containerd = dir.join("containerd.sock");
        let components = Components::new(&dir);
        let mut node = Node { dir, containerd, components, sysctls };
        // A node that fails to come up is taken down as carefully as one that ran.
        if let Err(e) = node.boot(plane, images).await {
            node.stop().await;
            return Err(e);
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "real node ready");
        Ok(node)
    }

    /// Starts containerd, imports the images, starts the kubelet and kube-proxy, and waits
    /// until the node is Ready.
    async fn boot(&mut self, plane: &ControlPlane, images: &[PathBuf]) -> Result<()> {
        let (dir, containerd) = (self.dir.clone(), self.containerd.clone());
        std::fs::write(dir.join("containerd.toml"), containerd_config(&dir))?;
        std::fs::write(dir.join("cni/10-wao.conflist"), cni_config(&dir))?;
        self.components.spawn(
            "containerd",
            Path::new("containerd"),
            &[&format!("--config={}", dir.join("containerd.toml").display())],
        )?;
        self.components
            .wait_for("containerd's socket", Duration::from_secs(30), || async { Ok(containerd.exists()) })
            .await?;
        for archive in images {
            let t0 = Instant::now();
            let out = self.ctr().args(["images", "import"]).arg(archive).output().await?;
            if !out.status.success() {
                bail!("importing {}: {}", archive.display(), String::from_utf8_lossy(&out.stderr));
            }
            tracing::info!(image = %archive.display(), elapsed_ms = t0.elapsed().as_millis() as u64, "image imported");
        }

        let kubeconfig = plane.kubeconfig.display().to_string();
        let kubelet_port = free_port()?;
        std::fs::write(dir.join("kubelet.yaml"), kubelet_config(&dir, kubelet_port, free_port()?))?;
        self.components.spawn(
            "kubelet",
            &plane.bin.join("kubelet"),
            &[
                &format!("--kubeconfig={kubeconfig}"),
                &format!("--config={}", dir.join("kubelet.yaml").display()),
                &format!("--root-dir={}", dir.join("kubelet").display()),
                &format!("--cert-dir={}", dir.join("kubelet/pki").display()),
                &format!("--node-ip={NODE_IP}"),
                &format!("--hostname-override={NODE_NAME}"),
            ],
        )?;
        self.components.spawn(
            "kube-proxy",
            &plane.bin.join("kube-proxy"),
            &[
                &format!("--kubeconfig={kubeconfig}"),
                &format!("--hostname-override={NODE_NAME}"),
                "--proxy-mode=iptables",
                "--cluster-cidr=10.244.0.0/16",
                // The namespace's conntrack table is the kernel's: leave its size alone.
                "--conntrack-max-per-core=0",
                &format!("--healthz-bind-address=127.0.0.1:{}", free_port()?),
                &format!("--metrics-bind-address=127.0.0.1:{}", free_port()?),
            ],
        )?;
        let nodes: Api<NodeObject> = Api::all(plane.client().await?);
        self.components
            .wait_for("the node to be Ready", Duration::from_secs(90), || async {
                let Some(object) = nodes.get_opt(NODE_NAME).await? else { return Ok(false) };
                Ok(object
                    .status
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
            })
            .await
    }

    /// `ctr` on this node's containerd, in the Kubernetes namespace of its images.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.containerd).args(["--namespace", "k8s.io"]);
        cmd
    }

    /// The last `lines` lines of a component's log (`containerd`, `kubelet`, `kube-proxy`).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        log_tail(&self.dir, component, lines)
    }

    /// Stops the node and undoes what it changed: the kubelet and kube-proxy stop, every pod's
    /// processes are killed through their cgroups and the cgroups removed, containerd stops,
    /// the kernel settings come back, and the mounts and files under its directory go.
    pub async fn stop(mut self) {
        // kube-proxy and the kubelet first, then the pods, then containerd.
        while self.components.newest().is_some_and(|name| name != "containerd") {
            self.components.stop_newest().await;
        }
        kill_cgroup_tree("kubepods");
        self.components.stop_newest().await;
        // The shims outlive containerd: what they still run is in the pods' cgroups, and the
        // shims themselves are known by the containerd address they were started with.
        kill_cgroup_tree("kubepods");
        kill_processes_naming(&self.containerd);
        // The kubelet links every container's log from this fixed directory.
        if let Ok(links) = std::fs::read_dir("/var/log/containers") {
            for link in links.flatten() {
                if std::fs::read_link(link.path()).is_ok_and(|target| target.starts_with(&self.dir)) {
                    let _ = std::fs::remove_file(link.path());
                }
            }
        }
        for (key, value) in &self.sysctls {
            let _ = std::fs::write(Path::new("/proc/sys").join(key), value);
        }
        if let Err(e) = remove_state_dir(&self.dir) {
            tracing::warn!("removing the node's state: {e:#}");
        }
    }
}

/// Kills every process in the cgroup tree `name` (in each v1 hierarchy) and removes its
/// cgroups, deepest first.
fn kill_cgroup_tree(name: &str) {
    for hierarchy in CGROUP_HIERARCHIES {
        let root = Path::new("/sys/fs/cgroup").join(hierarchy).join(name);
        let mut cgroups = Vec::new();
        collect_dirs(&root, &mut cgroups);
        for cgroup in &cgroups {
            for pid in std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        cgroups.sort_by_key(|c| std::cmp::Reverse(c.components().count()));
        for cgroup in cgroups {
            // Emptied processes leave their cgroup asynchronously: a few tries.
            for _ in 0..50 {
                if std::fs::remove_dir(&cgroup).is_ok() || !cgroup.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Kills every process whose command line names `path` (containerd's shims name its socket).
fn kill_processes_naming(path: &Path) {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|arg| arg == needle) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    out.push(dir.to_path_buf());
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

/// containerd's configuration: its own directories and socket, the CRI plugin with runc on
/// cgroupfs and the local pause image, CNI from Debian's plugins.
fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this runc fails ("can't get final child's PID").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#
    )
}

/// The pod network: one bridge, addresses from `host-local`, the node as the gateway.
fn cni_config(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "wao",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_CIDR}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("ipam"),
            },
        }],
    })
    .to_string()
}

/// The kubelet's configuration for this machine: cgroups v1 through cgroupfs, swap allowed,
/// the kernel defaults it may rewrite (restored at stop), no authentication in front of its
/// API (only this namespace reaches it), no host resolv.conf, no image garbage collection (the
/// images are imported, never pulled), eviction only when nearly out.
fn kubelet_config(dir: &Path, port: u16, healthz_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
protectKernelDefaults: false
containerRuntimeEndpoint: unix://{d}/containerd.sock
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
resolvConf: ""
clusterDomain: cluster.local
clusterDNS: ["{CLUSTER_DNS}"]
podCIDR: {POD_CIDR}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 100000h
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
serializeImagePulls: false
podLogsDir: {d}/pods
"#
    )
}
