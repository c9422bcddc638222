//! The hub as a real process, and what a frontend does with it: tokens, JSON requests and a
//! Server-Sent Events client.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cluster::free_port;
use crate::harness::{TestNamespace, eventually, workspace_binary};
use crate::processes::{TEST_HUB_TOKEN_KEY, print_log_tail, write_shared_file};

/// The HS256 secret test hubs verify tokens with.
pub const TEST_JWT_SECRET: &[u8] = b"test-jwt-secret-0123456789abcdef-0123";
pub const ISSUER: &str = "leadmaster";
pub const AUDIENCE: &str = "whatsapp-hub";

/// A `whatsapp-hub` process serving one test namespace.
pub struct Hub {
    child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// How to start a test hub.
#[derive(Default)]
pub struct HubOptions<'a> {
    pub admin_cliente_id: Option<i64>,
    /// Another kubeconfig (such as one through a proxy that tests cut).
    pub kubeconfig: Option<PathBuf>,
    /// JWT keys other than the HS256 test secret: `--jwt-public-keys <file>`.
    pub public_keys: Option<PathBuf>,
    pub extra: &'a [&'a str],
}

impl Hub {
    pub fn start(ns: &TestNamespace, options: HubOptions) -> Hub {
        Self::start_at(ns, options, free_port().unwrap(), free_port().unwrap())
    }

    /// [`Hub::start`] listening on `port` and `metrics_port` (those of a hub that died, say, as
    /// its restarted container keeps them).
    pub fn start_at(ns: &TestNamespace, options: HubOptions, port: u16, metrics_port: u16) -> Hub {
        let dir = ns.cluster.dir.join("processes");
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("hub-token.key");
        write_shared_file(&key, TEST_HUB_TOKEN_KEY);
        let secret = dir.join("jwt.secret");
        write_shared_file(&secret, TEST_JWT_SECRET);
        let log = dir.join(format!("{}-hub-{port}.log", ns.name));
        let mut command = crate::clusterdns::command(&workspace_binary("whatsapp-hub"));
        command
            .env("KUBECONFIG", options.kubeconfig.as_ref().unwrap_or(&ns.cluster.kubeconfig))
            .env("RUST_LOG", "info,kube_runtime=warn,whatsapp_hub=debug")
            .args(["--session-namespace", &ns.name])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--hub-token-key-file")
            .arg(&key)
            .args(["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]);
        match &options.public_keys {
            Some(file) => command.arg("--jwt-public-keys").arg(file),
            None => command.arg("--jwt-secret-file").arg(&secret),
        };
        if let Some(id) = options.admin_cliente_id {
            command.args(["--admin-cliente-id", &id.to_string()]);
        }
        let child = command
            .args(options.extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("starting whatsapp-hub");
        Hub { child, port, metrics_port, log, http: reqwest::Client::new() }
    }

    /// Starts a hub and waits until it serves (its cache synced).
    pub async fn ready(ns: &TestNamespace, options: HubOptions<'_>) -> Hub {
        let hub = Hub::start(ns, options);
        hub.wait_healthy().await;
        hub
    }

    pub async fn wait_healthy(&self) {
        eventually("the hub to be healthy", Duration::from_secs(60), || async {
            let (code, _) = self.call(reqwest::Method::GET, "/health", None, None).await;
            Ok((code == 200).then_some(()))
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One request; the status code and the JSON body (null if not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                (code, response.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({"transport": e.to_string()})),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body)).await
    }

    /// A raw request builder (headers, bodies the helpers do not make).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url()))
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Subscribes to a clienteId's live status.
    pub async fn events(&self, cliente_id: i64, token: &str) -> Events {
        Events::open(&format!("{}/api/whatsapp/{cliente_id}/events", self.url()), token).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as Kubernetes stops a pod; the exit status.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            print_log_tail("hub", &self.log, 60);
        }
    }
}

/// A token signed with the test secret.
pub fn token(claims: Value) -> String {
    sign(claims, TEST_JWT_SECRET)
}

pub fn sign(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Standard claims valid for ten minutes, with `extra` on top.
pub fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "sub": "test", "iss": ISSUER, "aud": AUDIENCE,
        "exp": jsonwebtoken::get_current_timestamp() + 600,
    });
    claims.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    claims
}

pub fn admin_token() -> String {
    token(claims(json!({"role": "admin"})))
}

pub fn tenant_token(cliente_id: i64) -> String {
    token(claims(json!({"cliente_id": cliente_id})))
}

/// A Server-Sent Events client: each event as (event name, JSON data).
pub struct Events {
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    task: tokio::task::JoinHandle<()>,
    pub status: u16,
    pub content_type: String,
}

impl Events {
    /// Opens the stream at `url` (a hub's `/api/whatsapp/{clienteId}/events`).
    pub async fn open(url: &str, token: &str) -> Events {
        Self::try_open(url, token).await.expect("opening the stream")
    }

    /// [`Events::open`], with the transport error if the hub cannot be reached (a client
    /// reconnecting tries again).
    pub async fn try_open(url: &str, token: &str) -> Result<Events, String> {
        let response =
            reqwest::Client::new().get(url).bearer_auth(token).send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let mut name = "message".to_owned();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            name = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim_start());
                        }
                    }
                    if !data.is_empty() {
                        let _ = tx.send((name, serde_json::from_str(&data).unwrap_or(Value::String(data))));
                    }
                }
            }
        });
        Ok(Events { rx, task, status, content_type })
    }

    /// The next event, or None once the stream ended.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        self.rx.recv().await
    }

    /// The next event matching `what`, skipping others, within `limit`.
    pub async fn until(
        &mut self,
        description: &str,
        limit: Duration,
        what: impl Fn(&str, &Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((name, data))) => {
                    if what(&name, &data) {
                        return data;
                    }
                    seen.push(format!("{name}: {}", data.get("state").unwrap_or(&data)));
                }
                Ok(None) => panic!("the event stream ended while waiting for {description}; seen: {seen:?}"),
                Err(_) => panic!("no event {description} within {limit:?}; seen: {seen:?}"),
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The schemathesis CLI: `WAO_SCHEMATHESIS`, else where `./dev setup` installs it.
pub fn schemathesis() -> PathBuf {
    let path = std::env::var_os("WAO_SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/whatsapp-operator").join(SCHEMATHESIS_VENV).join("bin/schemathesis")
    });
    assert!(path.exists(), "schemathesis is not installed at {}: run `./dev setup`", path.display());
    path
}

/// The virtualenv (under the cache directory) `./dev setup` installs schemathesis into.
pub const SCHEMATHESIS_VENV: &str = "schemathesis-4.32.5";
