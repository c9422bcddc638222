//! `whatsapp-local`: the whole system on this machine, for trying it out (`./dev up` runs it).
//!
//! Starts the test control plane with the CRD, the operator, the hub, the WhatsApp Web
//! simulator (playing WhatsApp and the phone) and the local pod runner (the kubelet of session
//! pods: it runs the real `whatsapp-session` with Chromium for each). Then creates a demo
//! session through the hub, prints the hub's URL, a JWT, the QR code in the terminal and how
//! to scan it, follows the session live, and on Ctrl-C stops everything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use tokio::process::{Child, Command};
use whatsapp_tests::cluster::{self, ControlPlane};
use whatsapp_tests::harness::workspace_binary;
use whatsapp_tests::hub::{Events, sign};
use whatsapp_tests::podrunner::{PodRunner, RunnerConfig};
use whatsapp_tests::processes::stop_gracefully;
use whatsapp_tests::simulator::{SimConfig, Simulator};

#[derive(Parser)]
#[command(
    version,
    about = "Run the whole system locally: control plane, operator, hub, pod runner, simulator"
)]
struct Args {
    /// State directory: keys, logs, the control plane (emptied at each start).
    #[arg(long, default_value = ".wao")]
    dir: PathBuf,
    /// The hub's REST API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    hub_listen: SocketAddr,
    /// The hub's /metrics.
    #[arg(long, default_value = "127.0.0.1:9090")]
    hub_metrics_listen: SocketAddr,
    /// The operator's /metrics and probes.
    #[arg(long, default_value = "127.0.0.1:8081")]
    operator_listen: SocketAddr,
    /// The WhatsApp Web simulator's control API (the phone); its page is https://web.whatsapp.com/
    /// to the session pods' Chromium.
    #[arg(long, default_value = "127.0.0.1:8090")]
    simulator_listen: SocketAddr,
    /// clienteId of the demo session (also the hub's admin session).
    #[arg(long, default_value_t = 1)]
    demo_cliente_id: i64,
}

const NAMESPACE: &str = "default";

#[tokio::main]
async fn main() -> Result<()> {
    whatsapp_runtime::telemetry::init_tracing("text", "warn,whatsapp_tests=info,kube_client=off");
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;

    let mut stack = Stack::default();
    let outcome = tokio::select! {
        r = run(&args, &dir, &mut stack) => r,
        _ = whatsapp_runtime::terminated() => Ok(()),
    };
    say("stopping");
    stack.stop().await;
    say("stopped");
    outcome
}

/// Everything started, stopped in reverse order.
#[derive(Default)]
struct Stack {
    plane: Option<ControlPlane>,
    simulator: Option<Simulator>,
    runner: Option<PodRunner>,
    processes: Vec<(&'static str, Child)>,
}

impl Stack {
    async fn stop(&mut self) {
        // The hub and the operator first (SIGTERM: graceful), then the session processes (the
        // runner stops them as a kubelet would, so Chromium saves the login), then the rest.
        for (name, child) in self.processes.iter_mut().rev() {
            let _ = stop_gracefully(name, child, Duration::from_secs(10)).await;
        }
        self.runner.take();
        self.simulator.take();
        if let Some(plane) = self.plane.take() {
            plane.stop().await;
        }
    }
}

fn say(line: &str) {
    println!("[local] {line}");
}

async fn run(args: &Args, dir: &Path, stack: &mut Stack) -> Result<()> {
    let bin = tokio::task::spawn_blocking(cluster::build_binaries).await??;
    say("starting the control plane");
    let plane = stack.plane.insert(ControlPlane::start(&bin, &dir.join("cluster")).await?);
    whatsapp_tests::install_crd(&plane.bin, &plane.kubeconfig)?;
    let kubeconfig = plane.kubeconfig.clone();
    let client = plane.client().await?;

    // This machine's own secrets, kept across runs.
    let key = secret_file(&dir.join("hub-token.key"), 24)?;
    let jwt_secret = secret_file(&dir.join("jwt.secret"), 24)?;
    let (users, password) = admin_login(dir)?;

    let simulator =
        stack.simulator.insert(Simulator::start_on(args.simulator_listen, SimConfig::default()).await?);
    let simulator_url = simulator.control_url();
    stack.runner = Some(PodRunner::start(
        client,
        RunnerConfig {
            server: plane.server.clone(),
            ca_pem: std::fs::read_to_string(plane.dir.join("pki/ca.crt"))?,
            work_dir: dir.join("pods"),
            namespace: None,
            extra_env: simulator.browser_env(),
        },
    ));

    let operator = spawn(
        "whatsapp-operator",
        &kubeconfig,
        &dir.join("operator.log"),
        &[
            "--hub-token-key-file",
            path_str(&key),
            "--leader-election=false",
            "--listen",
            &args.operator_listen.to_string(),
            "--session-image",
            "whatsapp-session:local",
        ],
    )?;
    stack.processes.push(("operator", operator));
    let hub = spawn(
        "whatsapp-hub",
        &kubeconfig,
        &dir.join("hub.log"),
        &[
            "--hub-token-key-file",
            path_str(&key),
            "--jwt-secret-file",
            path_str(&jwt_secret),
            "--users-file",
            path_str(&users),
            "--session-namespace",
            NAMESPACE,
            "--admin-cliente-id",
            &args.demo_cliente_id.to_string(),
            "--listen",
            &args.hub_listen.to_string(),
            "--metrics-listen",
            &args.hub_metrics_listen.to_string(),
        ],
    )?;
    stack.processes.push(("hub", hub));
    let hub_url = format!("http://{}", args.hub_listen);
    wait_healthy(&hub_url).await?;

    // The demo session, created the way a frontend would.
    let secret = std::fs::read(&jwt_secret)?;
    let exp = jsonwebtoken::get_current_timestamp() + 24 * 3600;
    let admin = sign(json!({"sub": "local-admin", "role": "admin", "exp": exp}), &secret);
    let tenant = sign(json!({"sub": "local-demo", "cliente_id": args.demo_cliente_id, "exp": exp}), &secret);
    let id = args.demo_cliente_id;
    let created = reqwest::Client::new()
        .post(format!("{hub_url}/api/sessions"))
        .bearer_auth(&admin)
        .json(&json!({"clienteId": id}))
        .send()
        .await?;
    if !created.status().is_success() {
        bail!("creating the demo session: {} {}", created.status(), created.text().await?);
    }

    println!(
        "\nWhatsApp operator: local stack\n\
         \x20 kubectl     export KUBECONFIG={kubeconfig} PATH={bin}:$PATH; kubectl get whatsappsessions\n\
         \x20 hub         {hub_url} (OpenAPI at /openapi.json; log {dir}/hub.log)\n\
         \x20 metrics     hub http://{hub_metrics}/metrics, operator http://{operator}/metrics\n\
         \x20 simulator   {simulator_url} (the phone; WhatsApp Web is https://web.whatsapp.com/ to the session pods)\n\
         \x20 login       admin / {password} (POST {hub_url}/auth/login)\n\
         \x20 demo        session cliente-{id} (clienteId {id}); tokens valid 24 h:\n\n\
         export WAO_HUB={hub_url} WAO_TOKEN={tenant} WAO_ADMIN_TOKEN={admin}\n\n\
         Follow it:   curl -sN $WAO_HUB/api/whatsapp/{id}/events -H \"authorization: Bearer $WAO_TOKEN\"\n\
         Ctrl-C stops everything.\n",
        kubeconfig = kubeconfig.display(),
        bin = bin.display(),
        dir = dir.display(),
        hub_metrics = args.hub_metrics_listen,
        operator = args.operator_listen,
    );

    follow(&hub_url, &tenant, id, &simulator_url).await
}

/// Prints the demo session's changes as the hub pushes them: the QR code (drawn in the
/// terminal) and how to scan it, then what to do once READY.
async fn follow(hub_url: &str, token: &str, id: i64, simulator_url: &str) -> Result<()> {
    let mut events = Events::open(&format!("{hub_url}/api/whatsapp/{id}/events"), token).await;
    let mut last_state = String::new();
    let mut last_qr = String::new();
    while let Some((name, status)) = events.next().await {
        if name != "status" {
            say(&format!("demo session: {name}"));
            continue;
        }
        let state = status["state"].as_str().unwrap_or_default().to_string();
        let qr = status["qr"]["url"].as_str().unwrap_or_default().to_string();
        if state != last_state {
            let phone = status["phone"].as_str().unwrap_or_default();
            say(&format!(
                "demo session: state {state}{}",
                if phone.is_empty() { String::new() } else { format!(" as {phone}") }
            ));
        }
        if state == "QR_REQUIRED" && !qr.is_empty() && qr != last_qr {
            if last_qr.is_empty() {
                println!("{}", terminal_qr(&qr));
                println!(
                    "Scan it with the simulated phone (it takes the QR on screen now):\n\
                     \x20 curl -s {simulator_url}/control/scan -H 'content-type: application/json' \
                     -d '{{\"phone\": \"5511999990000\", \"pushName\": \"Demo\"}}'\n"
                );
            } else {
                say(&format!("demo session: new QR code (attempt {})", status["qr"]["attempts"]));
            }
            last_qr = qr;
        }
        if state == "READY" && last_state != "READY" {
            println!(
                "Send a message through the hub, then see it arrive at WhatsApp (the simulator):\n\
                 \x20 curl -s $WAO_HUB/api/whatsapp/{id}/send -H \"authorization: Bearer $WAO_TOKEN\" \
                 -H 'content-type: application/json' -d '{{\"to\": \"5511988887777\", \"message\": \"Hello from the hub\"}}'\n\
                 \x20 curl -s {simulator_url}/control/messages\n"
            );
        }
        last_state = state;
    }
    bail!("the hub's event stream ended (is the hub still running? see its log)")
}

/// The QR code as text: two modules per character, dark on light, with a quiet zone.
fn terminal_qr(data: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(data.as_bytes()) {
        Ok(code) => code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).build(),
        Err(e) => format!("(cannot draw the QR code: {e})"),
    }
}

fn spawn(binary: &str, kubeconfig: &Path, log: &Path, args: &[&str]) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    // Cluster DNS, so the hub reaches session pods by name.
    Command::from(whatsapp_tests::clusterdns::command(&workspace_binary(binary)))
        // Ctrl-C reaches only this program, which stops everything in order.
        .process_group(0)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {binary}"))
}

async fn wait_healthy(hub_url: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{hub_url}/health")).await
            && r.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the hub did not become healthy in 60 s; see its log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A file of `bytes` random bytes in hex, created once.
fn secret_file(path: &Path, bytes: usize) -> Result<PathBuf> {
    if !path.exists() {
        std::fs::write(path, cluster::random_hex(bytes))?;
    }
    Ok(path.to_path_buf())
}

/// The users file with an `admin` login (argon2 hash from the hub itself) and its password.
fn admin_login(dir: &Path) -> Result<(PathBuf, String)> {
    let (users, password_file) = (dir.join("users.yaml"), dir.join("admin.password"));
    if !users.exists() || !password_file.exists() {
        let password = cluster::random_hex(8);
        let mut child = std::process::Command::new(workspace_binary("whatsapp-hub"))
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child.stdin.take().context("stdin")?.write_all(format!("{password}\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("whatsapp-hub hash-password failed");
        }
        let hash = String::from_utf8(out.stdout)?.trim().to_string();
        std::fs::write(
            &users,
            format!("users:\n  - username: admin\n    passwordHash: \"{hash}\"\n    role: admin\n"),
        )?;
        std::fs::write(&password_file, &password)?;
    }
    Ok((users, std::fs::read_to_string(password_file)?.trim().to_string()))
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}
