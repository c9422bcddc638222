//! Prometheus for real: Debian's Prometheus scrapes the running stack (operator, hub, a session
//! pod with Chromium linked to the simulator) and loads the chart's alerting rules; the key
//! series exist with the values the stack's state implies; `promtool` finds every `/metrics`
//! and the rules clean.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use whatsapp_tests::cluster::free_port;
use whatsapp_tests::harness::{cluster, eventually, source_path};
use whatsapp_tests::hub::{Hub, HubOptions, admin_token};
use whatsapp_tests::processes::Operator;
use whatsapp_tests::simulator::{SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(90);

/// A tool from Debian's `prometheus` package (`./dev setup` installs it).
fn prometheus_tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(path.exists(), "{} is missing: run `./dev setup` (Debian's prometheus package)", path.display());
    path
}

struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    fn start(config: &str, dir: &std::path::Path) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port().unwrap();
        let child = Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("prometheus.err.log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let request = self.http.get(format!("{}{path}", self.url)).query(query);
        let response = request.send().await.map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"].clone())
    }

    /// The value of an instant query that returns one series, once it does.
    async fn value(&self, query: &str) -> f64 {
        eventually(&format!("Prometheus: {query}"), WAIT, || async {
            let data = self.api("/api/v1/query", &[("query", query)]).await?;
            let result = data["result"].as_array().cloned().unwrap_or_default();
            match result.as_slice() {
                [one] => Ok(one["value"][1].as_str().and_then(|v| v.parse().ok())),
                _ => Ok(None),
            }
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on one exposition: clean means exit 0 and nothing to say.
fn promtool_check_metrics(what: &str, exposition: &str) {
    use std::io::Write;
    let mut child = Command::new(prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics on {what}:\n{said}");
}

#[test]
fn promtool_finds_the_alerting_rules_valid() {
    let rules = source_path("charts/whatsapp-operator/files/alerts.yaml");
    let out =
        Command::new(prometheus_tool("promtool")).args(["check", "rules"]).arg(&rules).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(&format!("SUCCESS: {} rules found", chart_alerts())),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many alerts the chart defines.
fn chart_alerts() -> usize {
    let text = std::fs::read_to_string(source_path("charts/whatsapp-operator/files/alerts.yaml")).unwrap();
    let rules: Value = serde_yaml::from_str(&text).unwrap();
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .count()
}

/// The alerts fire when they should and not otherwise (`tests/prometheus/alerts_test.yaml`).
#[test]
fn the_alerts_fire_when_they_should() {
    let tests = source_path("tests/prometheus/alerts_test.yaml");
    let out = Command::new(prometheus_tool("promtool")).args(["test", "rules"]).arg(&tests).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("SUCCESS"), "{said}");
}

#[tokio::test]
async fn prometheus_scrapes_the_running_stack_and_loads_the_alerts() {
    let ns = cluster().namespace("prometheus").await;
    let sim = Simulator::start(SimConfig {
        first_ref: Duration::from_secs(4),
        next_ref: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let operator = Operator::start(&ns, "op", "op", &[]);
    let runner = ns.pod_runner(&sim);
    let hub = Hub::ready(&ns, HubOptions::default()).await;
    let admin = admin_token();

    // A session linked and used: created through the hub, scanned, one message sent.
    let (code, body) = hub.post("/api/sessions", &admin, json!({"clienteId": 42})).await;
    assert_eq!(code, 201, "{body}");
    ns.wait_status("cliente-42", "a QR code", |s| s.qr.is_some()).await;
    let scan = reqwest::Client::new()
        .post(format!("{}/control/scan", sim.control_url()))
        .json(&json!({"phone": "5491155556666"}))
        .send()
        .await
        .unwrap();
    assert!(scan.status().is_success(), "{}", scan.text().await.unwrap());
    ns.wait_status("cliente-42", "READY", |s| s.state == Some(whatsapp_crds::SessionState::Ready)).await;
    // The hub's cache follows the same watch a moment later: send once the hub says connected.
    eventually("the hub shows cliente-42 connected", WAIT, || async {
        let (_, status) = hub.get("/api/whatsapp/42/status", &admin).await;
        Ok((status["connected"] == true).then_some(()))
    })
    .await;
    let (code, body) =
        hub.post("/api/whatsapp/42/send", &admin, json!({"to": "5491100001111", "message": "metrics"})).await;
    assert_eq!(code, 200, "{body}");
    let session = runner.endpoint(&ns.name, "cliente-42-0").expect("the session pod's process");

    // Prometheus scrapes the three kinds of target the chart's monitors describe, labelled
    // the way the PodMonitor labels session pods, and evaluates the chart's alerts.
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [{rules}]\n\
         scrape_configs:\n\
         - job_name: operator\n  static_configs: [{{targets: ['127.0.0.1:{op}'], labels: {{namespace: {ns}}}}}]\n\
         - job_name: hub\n  static_configs: [{{targets: ['127.0.0.1:{hub}'], labels: {{namespace: {ns}}}}}]\n\
         - job_name: sessions\n  static_configs: [{{targets: ['{session}'], labels: {{namespace: {ns}, session: cliente-42, cliente_id: '42'}}}}]\n",
        rules = source_path("charts/whatsapp-operator/files/alerts.yaml").display(),
        op = operator.port,
        hub = hub.metrics_port,
        session = session.trim_start_matches("http://"),
        ns = ns.name,
    );
    let prometheus = Prometheus::start(&config, &ns.cluster.dir.join(format!("prometheus-{}", ns.name)));
    eventually("every target up", WAIT, || async {
        let data = prometheus.api("/api/v1/targets", &[]).await?;
        let targets = data["activeTargets"].as_array().cloned().unwrap_or_default();
        let health: Vec<String> = targets
            .iter()
            .map(|t| {
                format!(
                    "{}={}",
                    t["labels"]["job"].as_str().unwrap_or("?"),
                    t["health"].as_str().unwrap_or("?")
                )
            })
            .collect();
        Ok((health.len() == 3 && health.iter().all(|h| h.ends_with("=up"))).then_some(()))
    })
    .await;

    // The key series, with the values this stack's state implies.
    for (query, expected) in [
        ("sum(up)", 3.0),
        ("whatsapp_operator_leader", 1.0),
        ("whatsapp_operator_sessions{state=\"READY\"}", 1.0),
        ("whatsapp_hub_cache_synced", 1.0),
        ("whatsapp_hub_cache_sessions", 1.0),
        ("whatsapp_hub_cache_staleness_seconds", 0.0),
        ("whatsapp_session_state{state=\"READY\"}", 1.0),
        ("whatsapp_session_state{state=\"QR_REQUIRED\"}", 0.0),
        ("whatsapp_session_messages_sent_total{result=\"sent\"}", 1.0),
        ("whatsapp_session_send_duration_seconds_count{result=\"sent\"}", 1.0),
        ("whatsapp_session_browser_restarts_total", 0.0),
        ("count(whatsapp_session_web_version_info == 1)", 1.0),
        ("whatsapp_session_bridge_compatible", 1.0),
        (
            "sum(whatsapp_hub_http_requests_total{route=\"/api/whatsapp/{clienteId}/send\",status=\"200\"})",
            1.0,
        ),
    ] {
        let value = prometheus.value(query).await;
        assert_eq!(value, expected, "{query}");
    }
    for (query, at_least) in [
        ("whatsapp_operator_reconciliations_total", 1.0),
        ("whatsapp_session_qr_codes_total", 1.0),
        ("sum(whatsapp_hub_http_request_duration_seconds_count)", 3.0),
        ("sum(whatsapp_operator_kube_writes_total)", 6.0),
    ] {
        let value = prometheus.value(query).await;
        assert!(value >= at_least, "{query} = {value}, expected at least {at_least}");
    }

    // The chart's alerts are loaded and evaluated without error; none fires on a healthy stack.
    let rules = eventually("every rule evaluated", WAIT, || async {
        let data = prometheus.api("/api/v1/rules", &[]).await?;
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated =
            rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")));
        Ok((rules.len() == chart_alerts() && evaluated).then_some(rules))
    })
    .await;
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        assert_eq!(rule["alerts"].as_array().map(Vec::len), Some(0), "{} fires: {rule}", rule["name"]);
    }

    // promtool finds every exposition clean.
    let http = reqwest::Client::new();
    for (what, url) in [
        ("the operator", format!("http://127.0.0.1:{}/metrics", operator.port)),
        ("the hub", format!("http://127.0.0.1:{}/metrics", hub.metrics_port)),
        ("a session pod", format!("{session}/metrics")),
    ] {
        let text = http.get(&url).send().await.unwrap().text().await.unwrap();
        promtool_check_metrics(what, &text);
    }
}
