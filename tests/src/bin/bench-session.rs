//! Session-pod benchmark (prints numbers; asserts nothing), with real Chromium, the WhatsApp
//! Web simulator (WhatsApp's own timings) and the real control plane:
//!
//! - session process started -> QR in the status, and CR created -> QR through the operator
//!   and the pod runner;
//! - process restart -> READY again (login from the profile);
//! - send latency (request -> WhatsApp Web reports it sent);
//! - PSS of the session process with its Chromium, beside bare Chromium on the same page.
//!
//! Run: `cargo build --release --workspace --bins && target/release/bench-session`.

use std::time::{Duration, Instant};

use serde_json::json;
use whatsapp_crds::SessionState;
use whatsapp_tests::harness::cluster;
use whatsapp_tests::processes::{Operator, SessionProcess, TEST_HUB_TOKEN};
use whatsapp_tests::simulator::{SimConfig, Simulator};

const RUNS: usize = 3;
const PHONE: &str = "5491122334455";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sim = Simulator::start(SimConfig::default()).await?;
    let ns = cluster().namespace("bench-session").await;
    println!("session benchmark: {RUNS} runs each, Debian Chromium, simulator with WhatsApp's timings");

    // Started -> QR in status, fresh profile each time.
    let mut to_qr = Vec::new();
    for i in 0..RUNS {
        let name = format!("qr{i}");
        ns.create_session(&name, json!({"clienteId": i + 1})).await;
        let t = Instant::now();
        let _p = SessionProcess::start(&ns, &name, &ns.profile_dir(&name), &sim);
        ns.wait_status(&name, "the benchmark condition", |s| s.qr.is_some()).await;
        to_qr.push(t.elapsed());
    }
    println!("process start -> QR in status: {}", summary(&to_qr));

    // Through the operator and the pod runner: CR created -> QR in status.
    {
        let _op = Operator::start(&ns, "op", "op", &[]);
        let _runner = ns.pod_runner(&sim);
        let t = Instant::now();
        ns.create_session("viaop", json!({"clienteId": 99})).await;
        ns.wait_status("viaop", "the benchmark condition", |s| s.qr.is_some()).await;
        println!(
            "CR created -> QR in status (operator, StatefulSet, scheduling, pod runner): {:.2}s",
            t.elapsed().as_secs_f64()
        );
    }

    // Link one session, then restarts and sends.
    ns.create_session("main", json!({"clienteId": 500, "send": {"ratePerMinute": 180}})).await;
    let dir = ns.profile_dir("main");
    let mut process = SessionProcess::start(&ns, "main", &dir, &sim);
    let qr = ns.wait_status("main", "the benchmark condition", |s| s.qr.is_some()).await.qr.unwrap().code;
    sim.scan(&qr, PHONE, "Bench").map_err(anyhow::Error::msg)?;
    ns.wait_status("main", "the benchmark condition", |s| s.state == Some(SessionState::Ready)).await;

    let mut restarts = Vec::new();
    for _ in 0..RUNS {
        process.stop();
        ns.wait_status("main", "the benchmark condition", |s| s.state != Some(SessionState::Ready)).await;
        let t = Instant::now();
        process = SessionProcess::start(&ns, "main", &dir, &sim);
        ns.wait_status("main", "the benchmark condition", |s| s.state == Some(SessionState::Ready)).await;
        restarts.push(t.elapsed());
    }
    println!("process restart -> READY (no QR): {}", summary(&restarts));

    let client = reqwest::Client::new();
    let mut sends = Vec::new();
    for i in 0..30 {
        let t = Instant::now();
        let response = client
            .post(format!("{}/v1/messages", process.url()))
            .bearer_auth(TEST_HUB_TOKEN)
            .json(&json!({"to": "5491100000000", "message": format!("bench {i}")}))
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "send failed: {}", response.text().await?);
        sends.push(t.elapsed());
    }
    println!("send latency over {} sends: {}", sends.len(), summary(&sends));

    // Memory, after the page settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let session_pss = pss_tree_kib(process.pid());
    let bare = bare_chromium_pss_kib(&sim).await?;
    println!(
        "PSS: session process + its Chromium {:.0} MiB; bare Chromium on the same page {:.0} MiB",
        session_pss as f64 / 1024.0,
        bare as f64 / 1024.0
    );
    Ok(())
}

fn summary(samples: &[Duration]) -> String {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:.0} ms, min {:.0} ms, max {:.0} ms, p95 {:.0} ms",
        pick(0.5),
        ms[0],
        ms[ms.len() - 1],
        pick(0.95)
    )
}

/// Proportional set size of a process and all its descendants, in KiB.
fn pss_tree_kib(root: u32) -> u64 {
    let mut parents = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent pid is the second field after the parenthesised command name.
        let ppid =
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.insert(pid, ppid);
        }
    }
    let in_tree = |mut pid: u32| loop {
        if pid == root {
            return true;
        }
        match parents.get(&pid) {
            Some(&p) if p != 0 && p != pid => pid = p,
            _ => return false,
        }
    };
    parents
        .keys()
        .chain(std::iter::once(&root))
        .filter(|pid| in_tree(**pid))
        .map(|pid| whatsapp_tests::processes::pss_kib(*pid))
        .sum()
}

/// Bare Chromium (same binary, same machine flags) on the simulator page, its PSS after it
/// settled.
async fn bare_chromium_pss_kib(sim: &Simulator) -> anyhow::Result<u64> {
    let dir = std::env::temp_dir().join(format!("bare-chromium-{}", std::process::id()));
    let mut child = std::process::Command::new("/usr/lib/chromium/chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", dir.display()))
        .args(sim.chromium_args())
        .arg(sim.web_url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pss = pss_tree_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    Ok(pss)
}
