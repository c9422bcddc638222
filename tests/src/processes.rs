//! The project's own binaries run as real processes by tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cluster::free_port;
use crate::harness::{TestNamespace, eventually, workspace_binary};
use crate::simulator::Simulator;

/// A `whatsapp-operator` process scoped to one test namespace (its Lease lives there too).
pub struct Operator {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    name: String,
}

/// The hub-token key every test operator uses (tests of the hub derive tokens from it).
pub const TEST_HUB_TOKEN_KEY: &[u8] = b"test-hub-token-key-0123456789abcdef";

impl Operator {
    /// Starts an operator for `ns` with leader election on the Lease `lease`.
    pub fn start(ns: &TestNamespace, name: &str, lease: &str, extra: &[&str]) -> Operator {
        Self::start_via(ns, name, lease, extra, &ns.cluster.kubeconfig)
    }

    /// [`Operator::start`] reaching the API server through `kubeconfig` (a proxy, say).
    pub fn start_via(
        ns: &TestNamespace,
        name: &str,
        lease: &str,
        extra: &[&str],
        kubeconfig: &std::path::Path,
    ) -> Operator {
        let dir = ns.cluster.dir.join("processes");
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("hub-token.key");
        write_shared_file(&key, TEST_HUB_TOKEN_KEY);
        let log = dir.join(format!("{}-{name}.log", ns.name));
        let port = free_port().unwrap();
        let child = Command::new(workspace_binary("whatsapp-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube_runtime=warn")
            .args(["--watch-namespace", &ns.name, "--lease-namespace", &ns.name, "--lease-name", lease])
            .args([
                "--identity",
                name,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--lease-duration-seconds",
                "4",
            ])
            .arg("--hub-token-key-file")
            .arg(&key)
            .args(["--session-image", "whatsapp-session:test"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("starting whatsapp-operator");
        Operator { child, port, log, name: name.into() }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String, String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let resp = reqwest::get(url).await.map_err(|e| e.to_string())?;
        resp.text().await.map_err(|e| e.to_string())
    }

    /// One sample's value (`name` with its labels, as in the exposition), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await.unwrap_or_default();
        sample_value(&text, sample).unwrap_or(0.0)
    }

    /// The operator's own count of its API writes (Lease renewals are not counted there).
    pub async fn writes(&self) -> f64 {
        let text = self.metrics().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("whatsapp_operator_kube_writes_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// Waits until this operator holds the lease.
    pub async fn wait_leading(&self) {
        eventually(&format!("operator {} to lead", self.name), Duration::from_secs(30), || async {
            let text = self.metrics().await?;
            Ok((sample_value(&text, "whatsapp_operator_leader") == Some(1.0)).then_some(()))
        })
        .await
    }

    /// Kills the process at once, as a node failure would (no lease release).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// CPU time the process has used so far (see [`cpu_time`]).
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.child.id())
    }
}

/// Prints the last `lines` lines of a log file under a title (on a test failure).
pub fn print_log_tail(title: &str, path: &std::path::Path, lines: usize) {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    eprintln!("---- {title} ({}; last {lines} lines) ----", path.display());
    for line in tail.into_iter().rev() {
        eprintln!("{line}");
    }
}

/// When a process logged each line containing `needle` (the RFC 3339 timestamp the line
/// starts with, colour codes aside), in order.
pub fn logged_times(log: &std::path::Path, needle: &str) -> Vec<k8s_openapi::jiff::Timestamp> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|line| {
            // Without the colour codes: each `ESC[…m` ends at its `m`.
            let mut parts = line.split('\u{1b}');
            let mut plain = parts.next().unwrap_or_default().to_string();
            plain.extend(parts.map(|part| part.split_once('m').map_or(part, |(_, rest)| rest)));
            plain.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Resident memory of a process, in KiB, 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A size field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...) in KiB, 0 if the process is gone.
fn status_kib(pid: u32, name: &str) -> u64 {
    status_field(pid, name).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Whether the kernel may give a process transparent huge pages (`THP_enabled`), None if it
/// is gone.
pub fn huge_pages_allowed(pid: u32) -> Option<bool> {
    status_field(pid, "THP_enabled").map(|v| v != "0")
}

/// A field of `/proc/<pid>/status` (`VmRSS`, `THP_enabled`, ...) as the kernel writes it,
/// None if the process is gone.
pub fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| Some(l.strip_prefix(name)?.strip_prefix(':')?.trim().to_owned()))
}

/// A process' CPU time so far (user and system), from /proc (in clock ticks of 10 ms).
pub fn cpu_time(pid: u32) -> Duration {
    let (user, system) = cpu_times(pid);
    user + system
}

/// A process' user and system CPU times so far, from /proc (in clock ticks of 10 ms).
pub fn cpu_times(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces), from the third on.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks =
        |i: usize| Duration::from_millis(fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0) * 10);
    (ticks(11), ticks(12))
}

/// The processes whose command line names `dir` (a control plane's components, by their
/// state directory), each as its command name and pid.
pub fn processes_naming(dir: &std::path::Path) -> Vec<(String, u32)> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(&needle).then_some(())?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((comm.trim().to_string(), pid))
        })
        .collect()
}

/// Proportional set size of a process, in KiB, 0 if it is gone.
pub fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The nearest-rank percentile `p` of durations (0 gives the minimum), for benchmarks.
pub fn percentile(samples: &[std::time::Duration], p: usize) -> std::time::Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or_default()
}

/// The value of one sample in Prometheus text, matched on its full name and labels.
pub fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            print_log_tail(&format!("operator {}", self.name), &self.log, 60);
        }
    }
}

/// A `whatsapp-session` process for one WhatsAppSession, run directly (as the pod runner
/// will run it for a pod). It opens WhatsApp Web at its real address; the simulator's
/// Chromium wrapper maps that address to the simulator and trusts its certificate.
pub struct SessionProcess {
    child: Child,
    /// Its own loopback address, under which its pod's DNS name resolves ([`crate::clusterdns`]).
    pub ip: std::net::Ipv4Addr,
    pub log: PathBuf,
    pub profile: PathBuf,
}

/// The hub token session processes are started with in tests.
pub const TEST_HUB_TOKEN: &str = "test-hub-token";

impl SessionProcess {
    /// Starts the session `name` of `ns` on `profile`, with `sim` as WhatsApp Web.
    pub fn start(
        ns: &TestNamespace,
        name: &str,
        profile: &std::path::Path,
        sim: &Simulator,
    ) -> SessionProcess {
        Self::start_with(ns, name, profile, sim, &[])
    }

    /// [`SessionProcess::start`] with extra environment variables.
    pub fn start_with(
        ns: &TestNamespace,
        name: &str,
        profile: &std::path::Path,
        sim: &Simulator,
        env: &[(&str, &str)],
    ) -> SessionProcess {
        let dir = ns.cluster.dir.join("processes");
        std::fs::create_dir_all(&dir).unwrap();
        let ip = crate::clusterdns::session_ip(&ns.name, name);
        let log = dir.join(format!("{}-{name}-{}.log", ns.name, free_port().unwrap()));
        let child = Command::new(workspace_binary("whatsapp-session"))
            .env("KUBECONFIG", &ns.cluster.kubeconfig)
            .env("RUST_LOG", "info,chromiumoxide=error")
            .env("WAO_SESSION_NAME", name)
            .env("POD_NAMESPACE", &ns.name)
            .env("POD_IP", ip.to_string())
            .env("WAO_PROFILE_DIR", profile)
            .env("WAO_LISTEN", format!("{ip}:{}", whatsapp_crds::SESSION_PORT))
            .env("WAO_HUB_TOKEN", TEST_HUB_TOKEN)
            .envs(sim.browser_env())
            .env("HOME", profile.parent().unwrap_or(profile))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("starting whatsapp-session");
        SessionProcess { child, ip, log, profile: profile.to_path_buf() }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The base URL of its API.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, whatsapp_crds::SESSION_PORT)
    }

    /// Stops it the way Kubernetes does: SIGTERM, then waits for it to exit.
    pub fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }

    /// Waits for it to exit by itself (with a deadline) and returns its log.
    pub async fn exited(&mut self, limit: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return Some(std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for SessionProcess {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            print_log_tail("session process", &self.log, 40);
        }
    }
}

/// Stops a process the way Kubernetes stops a container: SIGTERM, then SIGKILL if it has not
/// exited after `grace`. Returns how it exited.
pub async fn stop_gracefully(
    name: &str,
    child: &mut tokio::process::Child,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!(process = name, ?grace, "did not stop after SIGTERM: killing it");
            child.kill().await?;
            child.wait().await
        }
    }
}

/// Writes a file that concurrently running tests share and read (the test keys): written
/// aside and renamed into place, so a reader never sees it empty or half written.
pub fn write_shared_file(path: &std::path::Path, content: &[u8]) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let aside = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// The main Chromium process running on `profile`.
pub fn chromium_pid(profile: &std::path::Path) -> Option<i32> {
    let flag = format!("--user-data-dir={}", profile.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        (args.contains(&flag) && !args.iter().any(|a| a.starts_with("--type="))).then_some(pid)
    })
}

impl Operator {
    /// Peak resident memory of the process so far (VmHWM), in KiB, 0 if it is gone.
    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.child.id(), "VmHWM")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => 0.0,
        len if len % 2 == 0 => (sorted[mid - 1] + sorted[mid]) / 2.0,
        _ => sorted[mid],
    }
}
