//! The local pod runner: the kubelet of session pods on this machine.
//!
//! kwok makes pods "Running" but runs nothing, so this watches the pods of session
//! StatefulSets and runs the real `whatsapp-session` binary for each, the way a kubelet
//! would: the container's environment (values, downward API, Secret references), the
//! profile volume as the real directory of its bound PersistentVolume (host-path), the pod's
//! own ServiceAccount token (so its RBAC is what is tested), a restart when the process dies,
//! SIGTERM then SIGKILL when the pod is deleted, and the process's readiness written back to
//! the pod's status.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec, Secret, ServiceAccount,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;

use crate::cluster::free_port;
use crate::harness::workspace_binary;

/// Label of session pods (set by the operator).
const SESSION_PODS: &str = "app.kubernetes.io/name=whatsapp-session";

/// Settings of a runner.
#[derive(Clone)]
pub struct RunnerConfig {
    /// The API server URL and its CA, for the kubeconfigs of the pods' service accounts.
    pub server: String,
    pub ca_pem: String,
    /// Where per-pod files go (kubeconfigs, HOME, logs).
    pub work_dir: PathBuf,
    /// Only pods of this namespace (None: all).
    pub namespace: Option<String>,
    /// Environment added to every session process, such as `WAO_CHROMIUM` naming the
    /// simulator's Chromium wrapper: the "network" of this node.
    pub extra_env: Vec<(String, String)>,
}

struct Running {
    child: Child,
    uid: String,
    address: SocketAddr,
    log: PathBuf,
    restarts: i32,
    started: Instant,
    ready: Option<bool>,
}

/// A running pod runner; dropping it stops every process it started.
pub struct PodRunner {
    processes: Arc<Mutex<HashMap<String, Running>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodRunner {
    pub fn start(client: Client, config: RunnerConfig) -> PodRunner {
        let processes: Arc<Mutex<HashMap<String, Running>>> = Arc::default();
        let task = tokio::spawn(run(client, config, processes.clone()));
        PodRunner { processes, task }
    }

    /// Kills the process of a pod at once, as a crash would (the runner restarts it).
    pub fn kill_process(&self, namespace: &str, pod: &str) -> bool {
        let mut processes = self.processes.lock().expect("lock");
        match processes.get_mut(&format!("{namespace}/{pod}")) {
            Some(p) => {
                let _ = killpg(Pid::from_raw(p.child.id() as i32), Signal::SIGKILL);
                true
            }
            None => false,
        }
    }

    /// The log file of a pod's current process.
    pub fn log(&self, namespace: &str, pod: &str) -> Option<PathBuf> {
        self.processes.lock().expect("lock").get(&format!("{namespace}/{pod}")).map(|p| p.log.clone())
    }

    /// The address of a pod's session API.
    pub fn endpoint(&self, namespace: &str, pod: &str) -> Option<String> {
        self.processes
            .lock()
            .expect("lock")
            .get(&format!("{namespace}/{pod}"))
            .map(|p| format!("http://{}", p.address))
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        self.task.abort();
        let mut processes = self.processes.lock().expect("lock");
        for (pod, mut p) in processes.drain() {
            stop(&mut p.child, Duration::from_secs(20));
            if std::thread::panicking() {
                crate::processes::print_log_tail(
                    &format!("session process of pod {pod}, {} restarts", p.restarts),
                    &p.log,
                    40,
                );
            }
        }
    }
}

/// SIGTERM to the process group, SIGKILL after `grace`.
fn stop(child: &mut Child, grace: Duration) {
    let group = Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            // Chromium may outlive its parent for a moment: finish the group.
            let _ = killpg(group, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
}

async fn run(client: Client, config: RunnerConfig, processes: Arc<Mutex<HashMap<String, Running>>>) {
    let pods: Api<Pod> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = kube::runtime::reflector::store();
    let stream = watcher(pods.clone(), watcher::Config::default().labels(SESSION_PODS))
        .default_backoff()
        .reflect(writer);
    let mut stream = std::pin::pin!(stream.touched_objects());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            next = stream.next() => if next.is_none() { return },
            _ = tick.tick() => {}
        }
        // Reconcile processes with pods, like a kubelet's sync loop.
        let pods_now = store.state();
        let wanted: HashMap<String, Arc<Pod>> = pods_now
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .map(|p| (format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()), p))
            .collect();
        // Stop processes whose pod is gone, deleted, or replaced.
        let gone: Vec<(String, Running)> = {
            let mut procs = processes.lock().expect("lock");
            let keys: Vec<String> = procs
                .iter()
                .filter(|(k, r)| wanted.get(*k).is_none_or(|p| p.uid().as_deref() != Some(r.uid.as_str())))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter().filter_map(|k| procs.remove(&k).map(|r| (k, r))).collect()
        };
        for (key, mut running) in gone {
            tracing::info!(pod = %key, "pod deleted: stopping its process");
            tokio::task::spawn_blocking(move || stop(&mut running.child, Duration::from_secs(45)));
        }
        for (key, pod) in wanted {
            let exists = processes.lock().expect("lock").contains_key(&key);
            if !exists {
                match start_process(&client, &config, &pod).await {
                    Ok(running) => {
                        processes.lock().expect("lock").insert(key, running);
                    }
                    Err(e) => {
                        tracing::warn!(pod = %key, error = %format!("{e:#}"), "could not start the session process")
                    }
                }
                continue;
            }
            // Restart a dead process (restartPolicy Always), with a short backoff.
            let restart = {
                let mut procs = processes.lock().expect("lock");
                let r = procs.get_mut(&key).expect("present");
                r.child.try_wait().ok().flatten().is_some() && r.started.elapsed() > Duration::from_secs(1)
            };
            if restart {
                let old = processes.lock().expect("lock").remove(&key);
                if let Some(mut old) = old {
                    let _ = killpg(Pid::from_raw(old.child.id() as i32), Signal::SIGKILL);
                    let _ = old.child.wait();
                    match start_process(&client, &config, &pod).await {
                        Ok(mut running) => {
                            running.restarts = old.restarts + 1;
                            processes.lock().expect("lock").insert(key, running);
                        }
                        Err(e) => tracing::warn!(pod = %key, error = %format!("{e:#}"), "could not restart"),
                    }
                }
                continue;
            }
            update_readiness(&client, &pod, &processes, &key).await;
        }
    }
}

async fn update_readiness(
    client: &Client,
    pod: &Pod,
    processes: &Arc<Mutex<HashMap<String, Running>>>,
    key: &str,
) {
    let Some((address, previous, restarts)) =
        processes.lock().expect("lock").get(key).map(|r| (r.address, r.ready, r.restarts))
    else {
        return;
    };
    let ready = reqwest::Client::new()
        .get(format!("http://{address}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let pod_says = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True");
    if previous == Some(ready) && pod_says == Some(ready) {
        return;
    }
    let status = if ready { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let container = pod.spec.as_ref().map(|s| s.containers[0].name.clone()).unwrap_or_default();
    let patch = json!({"status": {
        "conditions": [
            {"type": "Ready", "status": status, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
        ],
        "containerStatuses": [{
            "name": container, "ready": ready, "restartCount": restarts,
            "image": pod.spec.as_ref().and_then(|s| s.containers[0].image.clone()).unwrap_or_default(),
            "imageID": "", "started": true, "state": {"running": {"startedAt": now}},
        }],
    }});
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    if api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await.is_ok()
        && let Some(r) = processes.lock().expect("lock").get_mut(key)
    {
        r.ready = Some(ready);
    }
}

async fn start_process(client: &Client, config: &RunnerConfig, pod: &Pod) -> Result<Running> {
    let ns = pod.namespace().context("pod without namespace")?;
    let name = pod.name_any();
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let dir = config.work_dir.join(&ns).join(&name);
    // A session pod gets the address its DNS name resolves to ([`crate::clusterdns`]).
    let session = name.strip_suffix("-0").context("a session pod is named <session>-0")?;
    let ip = crate::clusterdns::session_ip(&ns, session);
    let local = LocalContainer::prepare(client, &ns, &name, spec, &dir, Some(ip)).await?;
    let address = local.main_address().context("the session container declares no port")?;
    let kubeconfig =
        service_account_kubeconfig(client, &config.server, &config.ca_pem, &ns, spec, &dir).await?;

    let mut env = local.env;
    env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    env.extend(config.extra_env.iter().cloned());
    let log = dir.join(format!("session-{}.log", std::process::id()));
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let mut command = Command::new(workspace_binary("whatsapp-session"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group, so Chromium goes with it, as with a container.
        .process_group(0);
    let child = command.spawn().context("starting whatsapp-session")?;
    tracing::info!(pod = %format!("{ns}/{name}"), %address, "started the session process");
    Ok(Running {
        child,
        uid: pod.uid().unwrap_or_default(),
        address,
        log,
        restarts: 0,
        started: Instant::now(),
        ready: None,
    })
}

/// A pod's first container as a kubelet on this machine starts it. The environment has its
/// values, downward-API fields and Secret keys resolved. Volumes become local directories
/// under `dir`: a claim is its bound host-path volume, a Secret or ConfigMap is written out
/// as files, an emptyDir is an empty directory; values naming a path under a mount follow it.
/// A pod given an address of its own (`ip`) listens there on its declared ports; otherwise it
/// shares this "node's" 127.0.0.1, and every `0.0.0.0:PORT` listener moves to a free port.
pub struct LocalContainer {
    pub env: Vec<(String, String)>,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Container port -> local port.
    pub ports: HashMap<u16, u16>,
    /// The container's first declared port.
    container_port: Option<u16>,
}

impl LocalContainer {
    pub async fn prepare(
        client: &Client,
        ns: &str,
        pod_name: &str,
        spec: &PodSpec,
        dir: &Path,
        own_ip: Option<Ipv4Addr>,
    ) -> Result<Self> {
        let ip = own_ip.unwrap_or(Ipv4Addr::LOCALHOST);
        let container = spec.containers.first().context("pod without containers")?;
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .with_context(|| format!("no volume {}", mount.name))?;
            let local = dir.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&local)?;
            let local = if let Some(claim) = &volume.persistent_volume_claim {
                claim_dir(client, ns, &claim.claim_name).await?
            } else if let Some(secret) = &volume.secret {
                let name = secret.secret_name.as_deref().context("secret volume without a name")?;
                let object = Api::<Secret>::namespaced(client.clone(), ns).get(name).await?;
                for (key, value) in object.data.unwrap_or_default() {
                    std::fs::write(local.join(key), value.0)?;
                }
                local
            } else if let Some(configmap) = &volume.config_map {
                let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
                match api.get_opt(&configmap.name).await? {
                    Some(object) => {
                        for (key, value) in object.data.unwrap_or_default() {
                            std::fs::write(local.join(key), value)?;
                        }
                    }
                    None if configmap.optional == Some(true) => {}
                    None => return Err(anyhow!("ConfigMap {} not found", configmap.name)),
                }
                local
            } else {
                local
            };
            mounts.push((mount.mount_path.clone(), local));
        }
        let map_path = |value: &str| -> String {
            for (mount_path, local) in &mounts {
                if let Some(rest) = value.strip_prefix(mount_path.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    return format!("{}{rest}", local.display());
                }
            }
            value.to_string()
        };

        let mut ports = HashMap::new();
        let mut env: Vec<(String, String)> = Vec::new();
        for var in container.env.iter().flatten() {
            let value = if let Some(v) = &var.value {
                map_path(v)
            } else if let Some(from) = &var.value_from {
                if let Some(field) = &from.field_ref {
                    match field.field_path.as_str() {
                        "metadata.name" => pod_name.to_string(),
                        "metadata.namespace" => ns.to_string(),
                        "status.podIP" => ip.to_string(),
                        other => return Err(anyhow!("unsupported fieldRef {other}")),
                    }
                } else if let Some(secret) = &from.secret_key_ref {
                    let s = Api::<Secret>::namespaced(client.clone(), ns).get(&secret.name).await?;
                    let bytes =
                        s.data.and_then(|d| d.get(&secret.key).cloned()).context("secret key missing")?;
                    String::from_utf8(bytes.0)?
                } else {
                    continue;
                }
            } else {
                continue;
            };
            let value = match value.strip_prefix("0.0.0.0:").and_then(|p| p.parse::<u16>().ok()) {
                Some(port) => {
                    let local = if own_ip.is_some() { port } else { free_port()? };
                    ports.insert(port, local);
                    format!("{ip}:{local}")
                }
                None => value,
            };
            env.push((var.name.clone(), value));
        }
        let container_port =
            container.ports.iter().flatten().next().and_then(|p| u16::try_from(p.container_port).ok());
        Ok(LocalContainer { env, ip, ports, container_port })
    }

    /// Where the container's first declared port listens.
    pub fn main_address(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from((self.ip, *self.ports.get(&self.container_port?)?)))
    }
}

/// A kubeconfig with a token of the pod's ServiceAccount (from the TokenRequest API), so a
/// process runs with that account's RBAC, not an admin's.
pub async fn service_account_kubeconfig(
    client: &Client,
    server: &str,
    ca_pem: &str,
    ns: &str,
    spec: &PodSpec,
    dir: &Path,
) -> Result<PathBuf> {
    let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"expirationSeconds": 86400}}))?;
    let token: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_subresource("token", &sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("a token for service account {sa}"))?;
    let token = token.status.context("token request without status")?.token;
    std::fs::create_dir_all(dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, crate::cluster::kubeconfig_yaml(server, ca_pem, &token))?;
    Ok(kubeconfig)
}

/// The host directory of a claim's bound host-path volume.
pub async fn claim_dir(client: &Client, ns: &str, claim: &str) -> Result<PathBuf> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns).get(claim).await?;
    let volume =
        pvc.spec.and_then(|s| s.volume_name).with_context(|| format!("claim {claim} is not bound"))?;
    let pv = Api::<PersistentVolume>::all(client.clone()).get(&volume).await?;
    let path = pv
        .spec
        .and_then(|s| s.host_path)
        .map(|h| h.path)
        .with_context(|| format!("volume {volume} is not host-path"))?;
    std::fs::create_dir_all(&path)?;
    Ok(Path::new(&path).to_path_buf())
}
