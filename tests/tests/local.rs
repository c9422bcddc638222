//! The README's first command, `./dev up`, the way a newcomer uses it: it starts the whole
//! system with a demo session, prints a QR code and how to scan it; the scan makes the session
//! READY; a message sent through the hub with the printed token reaches WhatsApp (the
//! simulator); Ctrl-C stops everything.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use whatsapp_tests::cluster::free_port;
use whatsapp_tests::harness::{cluster, source_path, target_bin_dir};

/// `./dev up` running, its output line by line.
struct Up {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Up {
    /// The next printed line satisfying `what`, within `limit`.
    async fn until(&mut self, description: &str, limit: Duration, what: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if what(&line) {
                        return line;
                    }
                }
                Ok(None) => {
                    panic!("./dev up exited before {description}; it printed:\n{}", self.seen.join("\n"))
                }
                Err(_) => {
                    panic!("no {description} within {limit:?}; ./dev up printed:\n{}", self.seen.join("\n"))
                }
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[tokio::test]
async fn dev_up_runs_the_system_links_the_demo_session_sends_and_stops_on_ctrl_c() {
    // The shared cluster gives this test the upstream binaries; `./dev up` starts its own.
    let dir = cluster().dir.join("dev-up");
    let _ = std::fs::remove_dir_all(&dir);
    let ports: Vec<String> = (0..4).map(|_| free_port().unwrap().to_string()).collect();
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let mut child = Command::new(source_path("dev"))
        .arg("up")
        .args(["--dir", dir.to_str().unwrap()])
        .args(["--hub-listen", &addr(0), "--hub-metrics-listen", &addr(1)])
        .args(["--operator-listen", &addr(2), "--simulator-listen", &addr(3)])
        // Everything is built already (by the test command); the script must not build again.
        .env("WAO_DEV_PREBUILT", "1")
        .env("CARGO_TARGET_DIR", target_bin_dir().parent().unwrap())
        .env("WAO_CLUSTER_BIN", &cluster().bin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("./dev up");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = tx.send(line);
        }
    });
    let mut up = Up { child, lines, seen: Vec::new() };
    const WAIT: Duration = Duration::from_secs(120);

    // What it prints: the hub, the token, then the demo session's QR drawn in the terminal
    // and the command that scans it.
    let exports = up.until("the export line", WAIT, |l| l.starts_with("export WAO_HUB=")).await;
    let var = |name: &str| {
        exports.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap().to_string()
    };
    let (hub, token) = (var("WAO_HUB"), var("WAO_TOKEN"));
    assert_eq!(hub, format!("http://{}", addr(0)));
    up.until("QR_REQUIRED", WAIT, |l| l.contains("demo session: state QR_REQUIRED")).await;
    up.until("the QR code drawn", WAIT, |l| l.contains("▀▄") || l.contains("▄▀")).await;
    up.until("the scan instructions", WAIT, |l| l.starts_with("Scan it")).await;
    let scan = up.until("the scan command", WAIT, |l| l.contains("/control/scan")).await;

    // The newcomer runs the printed command (its URL and body, here without a shell).
    let url = scan.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    let body: Value =
        serde_json::from_str(scan.split_once("-d '").unwrap().1.trim_end_matches('\'')).unwrap();
    let http = reqwest::Client::new();
    let scanned = http.post(&url).json(&body).send().await.unwrap();
    assert!(scanned.status().is_success(), "{}", scanned.text().await.unwrap());
    up.until("READY", WAIT, |l| l.contains("demo session: state READY as 5511999990000")).await;

    // A message through the hub with the printed token arrives at WhatsApp.
    let sent: Value = http
        .post(format!("{hub}/api/whatsapp/1/send"))
        .bearer_auth(&token)
        .json(&json!({"to": "5511988887777", "message": "hello from dev up"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent["success"], true, "{sent}");
    let simulator = url.trim_end_matches("/control/scan");
    let messages: Value =
        http.get(format!("{simulator}/control/messages")).send().await.unwrap().json().await.unwrap();
    assert!(
        messages
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["body"] == "hello from dev up" && m["id"] == sent["data"]["id"]),
        "{messages}"
    );

    // Ctrl-C: everything stops, and the program exits cleanly.
    let pid = nix::unistd::Pid::from_raw(up.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    up.until("the stop message", WAIT, |l| l == "[local] stopped").await;
    let status = tokio::time::timeout(WAIT, up.child.wait()).await.expect("./dev up to exit").unwrap();
    assert!(status.success(), "{status}");
    for port in &ports {
        assert!(
            std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
            "something still listens on {port} after Ctrl-C"
        );
    }
    let leftovers = std::process::Command::new("pgrep").args(["-f", dir.to_str().unwrap()]).output().unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "processes left running: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}
