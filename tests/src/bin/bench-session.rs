//! Session-pod benchmark (prints numbers; asserts nothing), release build, with real Chromium,
//! the WhatsApp Web simulator (WhatsApp's own timings) and the real control plane. Each run
//! starts one session per browser engine side by side (same moment, same load):
//!
//! - session process started -> QR in the status;
//! - linked, then an activity window (`--minutes`): every few seconds each session sends a
//!   message (its latency: request -> WhatsApp Web has it) and receives one; the PSS of each
//!   session process with its whole browser tree is sampled throughout, so growth shows;
//! - process restart -> READY again (the login from the profile, no QR);
//! - the bare browser (same binary, no session process) on the same page, for reference.
//!
//! Then, per engine over the runs: median and spread of PSS (and USS, the pages only that
//! session maps) at start, middle and end of the window beside the target, and each run's
//! side-by-side ratio of the engines.
//!
//! Run: `cargo build --release -p whatsapp-tests -p whatsapp-session --bins &&
//! target/release/bench-session [--minutes 60] [--runs 3] [--extra-args "--flag ..."]`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use whatsapp_crds::{BrowserEngine, SessionState};
use whatsapp_tests::harness::{TestNamespace, cluster};
use whatsapp_tests::processes::{SessionProcess, TEST_HUB_TOKEN};
use whatsapp_tests::simulator::{SimConfig, Simulator};

/// The figure the issue asks for: PSS per session, release build, on the simulator's page.
const TARGET_MIB: f64 = 250.0;
/// One send and one incoming message per session this often.
const TICK: Duration = Duration::from_secs(5);
/// PSS sampled every this many ticks.
const SAMPLE_EVERY: u32 = 3;

#[derive(Parser, Debug)]
#[command(about = "PSS, start-up, restart and send latency of a session, per browser engine")]
struct Args {
    /// Length of the activity window of each run, in minutes (the full benchmark: 60).
    #[arg(long, default_value_t = 3)]
    minutes: u64,
    /// Runs, each with every engine side by side.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Engines to compare.
    #[arg(long, value_delimiter = ',', default_value = "HeadlessShell,Chromium")]
    engines: Vec<String>,
    /// Extra Chromium flags for every session (`spec.browser.extraArgs`), space separated: to
    /// measure a flag before it joins the built-in set.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    extra_args: String,
}

/// What one session of one run measured.
struct Measured {
    to_qr: Duration,
    /// Time into the window and the memory of the session process with its browser.
    samples: Vec<(Duration, Memory)>,
    sends: Vec<Duration>,
    restart: Duration,
    bare: Memory,
}

/// Memory of a process tree in KiB: PSS (shared pages divided among the processes that map
/// them) and USS (pages only this tree maps: what another session on the node would add
/// for sure, whoever else runs the same binary meanwhile).
#[derive(Clone, Copy, Default)]
struct Memory {
    pss: u64,
    uss: u64,
    /// The PSS of the session process alone and of the browser's renderers (the page: V8's
    /// heap, the DOM), where growth lives when the page has a process of its own; 0 in the
    /// session's one-process Chromium (`--single-process`). The rest is the browser's other
    /// processes, or the whole browser.
    session_pss: u64,
    renderer_pss: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let engines = args
        .engines
        .iter()
        .map(|e| {
            serde_json::from_value::<BrowserEngine>(json!(e))
                .map_err(|_| anyhow::anyhow!("unknown engine {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let extra: Vec<String> = args.extra_args.split_whitespace().map(String::from).collect();
    let sim = Simulator::start(SimConfig::default()).await?;
    let ns = cluster().namespace("bench-session").await;
    println!(
        "session benchmark: {} runs, {} min of activity each (a send and an incoming message per session every {}s), \
         engines {engines:?} side by side, extra flags {extra:?}",
        args.runs,
        args.minutes,
        TICK.as_secs()
    );
    let window = Duration::from_secs(args.minutes * 60);
    let mut all: BTreeMap<String, Vec<Measured>> = BTreeMap::new();
    for run in 0..args.runs {
        let measured = run_once(&ns, &sim, run, &engines, &extra, window).await?;
        for (engine, m) in engines.iter().zip(measured) {
            print_run(run, *engine, &m);
            all.entry(format!("{engine:?}")).or_default().push(m);
        }
    }
    print_summary(&all);
    Ok(())
}

/// One run: a session per engine, started, linked, kept busy for `window`, restarted.
async fn run_once(
    ns: &TestNamespace,
    sim: &Simulator,
    run: usize,
    engines: &[BrowserEngine],
    extra: &[String],
    window: Duration,
) -> anyhow::Result<Vec<Measured>> {
    let mut sessions = Vec::new();
    for (i, engine) in engines.iter().enumerate() {
        let name = format!("r{run}-{}", format!("{engine:?}").to_lowercase());
        let client = 1000 + run * 10 + i;
        let spec = json!({"clienteId": client, "send": {"ratePerMinute": 180},
            "browser": {"engine": engine, "extraArgs": extra}});
        ns.create_session(&name, spec).await;
        let phone = format!("54911{client:06}");
        sessions.push((name, phone));
    }
    // Started side by side: process start -> QR in the status.
    let mut processes = Vec::new();
    let started = Instant::now();
    for (name, _) in &sessions {
        processes.push(SessionProcess::start(ns, name, &ns.profile_dir(name), sim));
    }
    let mut to_qr = Vec::new();
    for (name, _) in &sessions {
        ns.wait_status(name, "a QR code", |s| s.qr.is_some()).await;
        to_qr.push(started.elapsed());
    }
    for (name, phone) in &sessions {
        ns.link(sim, name, phone).await;
    }
    let (samples, sends) = activity(sim, &sessions, &processes, window).await?;
    // Restart -> READY with the login from the profile.
    let mut restarts = Vec::new();
    for ((name, _), process) in sessions.iter().zip(processes.iter_mut()) {
        process.stop();
        ns.wait_status(name, "not READY", |s| s.state != Some(SessionState::Ready)).await;
        let t = Instant::now();
        *process = SessionProcess::start(ns, name, &ns.profile_dir(name), sim);
        ns.wait_status(name, "READY", |s| s.state == Some(SessionState::Ready)).await;
        restarts.push(t.elapsed());
    }
    drop(processes);
    let mut measured = Vec::new();
    for (i, engine) in engines.iter().enumerate() {
        measured.push(Measured {
            to_qr: to_qr[i],
            samples: samples[i].clone(),
            sends: sends[i].clone(),
            restart: restarts[i],
            bare: bare_browser_memory(sim, *engine).await?,
        });
    }
    Ok(measured)
}

type Samples = Vec<Vec<(Duration, Memory)>>;
type Latencies = Vec<Vec<Duration>>;

/// Every tick each session sends one message and receives one; PSS sampled every few ticks.
async fn activity(
    sim: &Simulator,
    sessions: &[(String, String)],
    processes: &[SessionProcess],
    window: Duration,
) -> anyhow::Result<(Samples, Latencies)> {
    let client = reqwest::Client::new();
    let mut samples = vec![Vec::new(); sessions.len()];
    let mut sends = vec![Vec::new(); sessions.len()];
    let start = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    let mut tick = 0u32;
    loop {
        ticks.tick().await;
        let now = start.elapsed();
        if tick.is_multiple_of(SAMPLE_EVERY) || now >= window {
            for (i, process) in processes.iter().enumerate() {
                samples[i].push((now, tree_memory(process.pid())));
            }
        }
        if now >= window {
            return Ok((samples, sends));
        }
        for (i, ((_, phone), process)) in sessions.iter().zip(processes).enumerate() {
            let t = Instant::now();
            let response = client
                .post(format!("{}/v1/messages", process.url()))
                .bearer_auth(TEST_HUB_TOKEN)
                .json(&json!({"to": "5491100000000", "message": format!("bench {tick}"), "idempotencyKey": format!("b{tick}")}))
                .send()
                .await?;
            anyhow::ensure!(response.status().is_success(), "send failed: {}", response.text().await?);
            sends[i].push(t.elapsed());
            sim.send_from_phone("5491177776666", phone, &format!("incoming {tick}"))
                .map_err(anyhow::Error::msg)?;
        }
        tick += 1;
    }
}

fn print_run(run: usize, engine: BrowserEngine, m: &Measured) {
    // The samples at each quarter of the window: PSS/USS at the start, middle and end, and the
    // parts at every quarter.
    let at = |q: f64| m.samples[((m.samples.len() - 1) as f64 * q).round() as usize];
    let quarters: Vec<(Duration, Memory)> = [0.0, 0.25, 0.5, 0.75, 1.0].iter().map(|q| at(*q)).collect();
    let points: Vec<String> = quarters
        .iter()
        .step_by(2)
        .map(|(t, mem)| format!("{:.0}s {:.0}/{:.0}", t.as_secs_f64(), mib(mem.pss), mib(mem.uss)))
        .collect();
    let peak = m.samples.iter().map(|s| s.1.pss).max().unwrap_or(0);
    let parts =
        |m: Memory| [m.session_pss, m.renderer_pss, m.pss.saturating_sub(m.session_pss + m.renderer_pss)];
    let growth: Vec<String> = ["session process", "renderers", "rest of the browser"]
        .iter()
        .enumerate()
        .map(|(i, what)| {
            let series: Vec<String> =
                quarters.iter().map(|(_, m)| format!("{:.0}", mib(parts(*m)[i]))).collect();
            format!("{what} {}", series.join(" "))
        })
        .collect();
    let times: Vec<String> = quarters.iter().map(|(t, _)| format!("{:.0}s", t.as_secs_f64())).collect();
    println!(
        "run {run} {engine:?}: start -> QR {:.2}s, restart -> READY {:.2}s, send latency {} ({} sends); \
         PSS/USS MiB at {} (peak PSS {:.0}, {} samples); bare browser on the page {:.0}/{:.0}",
        m.to_qr.as_secs_f64(),
        m.restart.as_secs_f64(),
        summary(&m.sends),
        m.sends.len(),
        points.join(", "),
        mib(peak),
        m.samples.len(),
        mib(m.bare.pss),
        mib(m.bare.uss),
    );
    println!("  PSS MiB by part at {}: {}", times.join(" "), growth.join("; "));
}

/// Per engine over the runs: median and spread beside the target, and the side-by-side ratios.
fn print_summary(all: &BTreeMap<String, Vec<Measured>>) {
    println!(
        "\nPer session (session process + its browser), MiB: median [min-max] over runs; target PSS <= {TARGET_MIB:.0}"
    );
    for (engine, runs) in all {
        let point = |q: f64, f: fn(Memory) -> u64| -> Vec<f64> {
            runs.iter()
                .map(|m| mib(f(m.samples[((m.samples.len() - 1) as f64 * q).round() as usize].1)))
                .collect()
        };
        for (what, f) in [("PSS", (|m| m.pss) as fn(Memory) -> u64), ("USS", |m| m.uss)] {
            println!(
                "  {engine:<14} {what} start {}, middle {}, end {}; bare browser {}",
                spread(point(0.0, f)),
                spread(point(0.5, f)),
                spread(point(1.0, f)),
                spread(runs.iter().map(|m| mib(f(m.bare))).collect()),
            );
        }
        let verdict = if whatsapp_tests::processes::median(&point(1.0, |m| m.pss)) <= TARGET_MIB {
            "meets"
        } else {
            "misses"
        };
        println!("  {engine:<14} {verdict} the target (PSS at the end of the window)");
        let secs = |f: fn(&Measured) -> Duration| spread(runs.iter().map(|m| f(m).as_secs_f64()).collect());
        println!(
            "  {engine:<14} start -> QR s {}, restart -> READY s {}",
            secs(|m| m.to_qr),
            secs(|m| m.restart)
        );
    }
    let mut engines = all.values();
    if let (Some(a), Some(b)) = (engines.next(), engines.next()) {
        let names: Vec<&String> = all.keys().collect();
        let ratio: Vec<f64> = a.iter().zip(b).map(|(x, y)| end_pss(x) as f64 / end_pss(y) as f64).collect();
        println!("  {} / {} PSS at the end of the window, same run: {}", names[0], names[1], spread(ratio));
    }
}

fn end_pss(m: &Measured) -> u64 {
    m.samples.last().map(|s| s.1.pss).unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn spread(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    format!("{:.2} [{:.2}-{:.2}]", values[values.len() / 2], values[0], values[values.len() - 1])
}

fn summary(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "none".into();
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!("median {:.0} ms, p95 {:.0} ms, max {:.0} ms", pick(0.5), pick(0.95), ms[ms.len() - 1])
}

/// [`Memory`] of a process and all its descendants.
fn tree_memory(root: u32) -> Memory {
    const RENDERER: &[u8] = b"--type=renderer";
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
    let mut total = Memory::default();
    for pid in parents.keys().chain(std::iter::once(&root)).filter(|pid| in_tree(**pid)) {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let pss = field("Pss:");
        total.pss += pss;
        total.uss += field("Private_Clean:") + field("Private_Dirty:");
        if *pid == root {
            total.session_pss += pss;
        } else if std::fs::read(format!("/proc/{pid}/cmdline"))
            // Chromium rewrites its children's command lines (one string, spaces between).
            .is_ok_and(|c| c.windows(RENDERER.len()).any(|w| w == RENDERER))
        {
            total.renderer_pss += pss;
        }
    }
    total
}

/// The bare browser of `engine` (its binary, through the simulator's wrapper, the same
/// machine flags, the browser's default process model, no session process) on the simulator
/// page: its memory after it settled.
async fn bare_browser_memory(sim: &Simulator, engine: BrowserEngine) -> anyhow::Result<Memory> {
    let dir = std::env::temp_dir().join(format!("bare-browser-{}", std::process::id()));
    let (binary, headless) = match engine {
        BrowserEngine::HeadlessShell => (sim.headless_shell_wrapper(), "--headless"),
        BrowserEngine::Chromium => (sim.chromium_wrapper(), "--headless=new"),
    };
    let mut child = std::process::Command::new(binary)
        .args([
            headless,
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", dir.display()))
        .arg(sim.web_url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let memory = tree_memory(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    Ok(memory)
}
