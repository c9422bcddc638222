//! Hub benchmark (prints numbers beside their targets; asserts nothing):
//!
//! 1. status reads (`GET /api/whatsapp/{id}/status`: JWT verified, served from the watch cache)
//!    against a bare axum server answering a fixed body of the same bytes (a separate process:
//!    same machine, same load generator, same connections), 5 runs in alternating order: per
//!    run the requests/s and p99 of both, then the median ratio and its spread;
//! 2. SSE delivery: a status written to the API server -> the event at every subscribed client,
//!    with 1,000 streams of 1,000 tenants (a change per tenant at a steady 50/s, timed from when
//!    each write was due; then all 1,000 at once, 8 writers) and with 1,000 streams of one tenant
//!    (p50, p99), beside the same writes at a watch of the bench's own (the API server's share);
//! 3. the RSS of a fresh hub with N sessions cached (half of them showing a QR code), at each N
//!    given, and with the streams open.
//!
//! The load generator is a minimal HTTP/1.1 client (one keep-alive connection per worker,
//! requests built once) so it costs the 2 cores little next to the servers it measures.
//!
//! Run (release builds of the bench and the hub; the bench starts `target/release/whatsapp-hub`):
//! `cargo build --release -p whatsapp-hub -p whatsapp-tests --bin bench-hub --bin
//! whatsapp-testcluster && env -u WAO_TEST_CLUSTER target/release/bench-hub 1000 5000`
//! (without `WAO_TEST_CLUSTER` the bench starts a private control plane: 5,000 sessions are
//! too many for a shared one). `bench-hub --reads-only 1000` runs part 1 alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use kube::runtime::watcher;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use whatsapp_tests::cluster::free_port;
use whatsapp_tests::harness::{CLUSTER_ENV, TestNamespace, cluster, eventually, workspace_binary};
use whatsapp_tests::hub::{Hub, HubOptions, tenant_token};
use whatsapp_tests::processes::{cpu_times, rss_kib};

const CONNECTIONS: usize = 64;
const LOAD: Duration = Duration::from_secs(5);
const RUNS: usize = 5;
const STREAMS: usize = 1000;
/// Status writes in flight at once while the 1,000 tenants' streams are measured.
const WRITERS: usize = 8;
/// The steady rate of changes across the 1,000 tenants: every one of 1,000 sessions showing a
/// QR code, which WhatsApp Web replaces every 20 s, the most a fleet that size writes for long.
const PACED_PER_SECOND: u32 = 50;
/// Writes measured on the one tenant with 1,000 streams (each reaches every stream).
const ONE_TENANT_WRITES: u64 = 20;
const CREATES: usize = 32;
/// Sessions a shared control plane is asked to hold.
const SHARED_LIMIT: i64 = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--bare-server") {
        return bare_server(args[1].parse()?, args[2].clone()).await;
    }
    // `--reads-only`: part 1 alone, at the first size (to iterate on the read path quickly).
    let reads_only = args.iter().any(|a| a == "--reads-only");
    let mut sizes: Vec<i64> =
        args.iter().filter(|a| *a != "--reads-only").map(|a| a.parse()).collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        sizes = vec![1000, 5000];
    }
    sizes.sort_unstable();
    let largest = *sizes.last().expect("a size");
    if std::env::var_os(CLUSTER_ENV).is_some() && largest > SHARED_LIMIT {
        bail!(
            "{largest} sessions are too many for the shared control plane: run with `env -u {CLUSTER_ENV}`"
        );
    }
    let ns = cluster().namespace("bench-hub").await;
    let hub_binary = workspace_binary("whatsapp-hub");
    println!("hub benchmark: {} (sessions: {sizes:?})", hub_binary.display());

    let mut rss = Vec::new();
    let mut cached = 0;
    for (i, &n) in sizes.iter().enumerate() {
        populate(&ns, cached + 1..=n).await?;
        cached = n;
        // A fresh hub per size: each RSS is of a hub that held only that many sessions. It logs
        // as the chart runs it (JSON), since a request's span is formatted as its logs are.
        let started = Instant::now();
        let hub =
            Hub::ready(&ns, HubOptions { extra: &["--log-format", "json"], ..Default::default() }).await;
        wait_cached(&hub, n).await;
        println!("hub start -> serving {n} cached sessions: {:.2} s", started.elapsed().as_secs_f64());
        rss.push((n, "after sync".to_owned(), rss_kib(hub.pid())));
        read_each(&hub, n).await?;
        rss.push((n, "after a read by each tenant".to_owned(), rss_kib(hub.pid())));
        if i == 0 {
            reads(&hub, n).await?;
            if reads_only {
                return Ok(());
            }
            rss.extend(sse(&ns, &hub, n).await?.into_iter().map(|(what, kib)| (n, what, kib)));
        }
    }
    println!("\n3. hub RSS (target: <= 48 MiB at 5,000 sessions):");
    for (n, when, kib) in rss {
        println!("  {n:>5} sessions, {when:<36} {:>6.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}

/// Sessions `ids`, the even ones waiting for a QR scan (their QR images are cached too), the
/// odd ones READY.
async fn populate(ns: &TestNamespace, ids: std::ops::RangeInclusive<i64>) -> anyhow::Result<()> {
    let sessions = ns.api::<whatsapp_crds::WhatsAppSession>();
    let started = Instant::now();
    let count = ids.clone().count();
    stream::iter(ids)
        .map(|id| {
            let sessions = sessions.clone();
            async move {
                let s: whatsapp_crds::WhatsAppSession = serde_json::from_value(json!({
                    "apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession",
                    "metadata": {"name": format!("cliente-{id}")}, "spec": {"clienteId": id}
                }))?;
                sessions.create(&Default::default(), &s).await?;
                let status = if id % 2 == 0 {
                    json!({"state": "QR_REQUIRED", "qr": {"code": format!("2@{id:0>40},key{id}a,key{id}b,key{id}c"),
                          "attempts": 1, "updatedAt": "2026-11-23T10:00:00Z"}})
                } else {
                    json!({"state": "READY", "me": {"phone": format!("549110000{id:04}")}})
                };
                ns.report_status(&format!("cliente-{id}"), status).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATES)
        .try_collect::<()>()
        .await?;
    println!("created {count} sessions in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn wait_cached(hub: &Hub, n: i64) {
    eventually("every session in the hub's cache", Duration::from_secs(300), || async {
        Ok(hub.metrics().await.contains(&format!("whatsapp_hub_cache_sessions {n}")).then_some(()))
    })
    .await;
}

/// Part 1: status reads of the READY tenants (same body size as the bare server's) against the bare
/// server, RUNS times, alternating which goes first.
async fn reads(hub: &Hub, n: i64) -> anyhow::Result<()> {
    let ready: Vec<i64> = (1..=n).filter(|id| id % 2 == 1).collect();
    let hub_requests: Vec<Vec<u8>> =
        ready.iter().map(|id| request(&format!("/api/whatsapp/{id}/status"), &tenant_token(*id))).collect();
    // The bare server answers the hub's own body for tenant 1, and reads the same headers.
    let mut connection = Connection::open(hub.port).await?;
    let body = connection.get(&hub_requests[0]).await?.1.to_vec();
    let bare_requests: Vec<Vec<u8>> = ready.iter().map(|id| request("/status", &tenant_token(*id))).collect();
    let bare_port = free_port()?;
    let mut bare = std::process::Command::new(std::env::current_exe()?)
        .args(["--bare-server", &bare_port.to_string(), std::str::from_utf8(&body)?])
        .spawn()?;
    eventually("the bare server", Duration::from_secs(10), || async {
        Ok(TcpStream::connect(("127.0.0.1", bare_port)).await.ok().map(|_| ()))
    })
    .await;
    println!(
        "\n1. status reads, {CONNECTIONS} connections, {} s per target per run, {}-byte bodies, {} tenants:",
        LOAD.as_secs(),
        body.len(),
        ready.len()
    );
    let (mut runs, mut users) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let (hub_load, bare_load) = if run % 2 == 0 {
            let h = load(hub.port, hub.pid(), &hub_requests).await?;
            (h, load(bare_port, bare.id(), &bare_requests).await?)
        } else {
            let b = load(bare_port, bare.id(), &bare_requests).await?;
            (load(hub.port, hub.pid(), &hub_requests).await?, b)
        };
        let (hub_cpu, hub_user) = hub_load.cpu_per_request();
        let (bare_cpu, bare_user) = bare_load.cpu_per_request();
        println!(
            "  run {}: hub {:>6.0} req/s p99 {:>5.2} ms {:>4.1} us CPU/req (user {:.1}) | bare {:>6.0} req/s p99 {:>5.2} ms {:>4.1} us CPU/req (user {:.1}) | {:.2}x, p99 {:.2}x{}",
            run + 1,
            hub_load.rate(),
            hub_load.p99_ms(),
            hub_cpu,
            hub_user,
            bare_load.rate(),
            bare_load.p99_ms(),
            bare_cpu,
            bare_user,
            hub_load.rate() / bare_load.rate(),
            hub_load.p99_ms() / bare_load.p99_ms(),
            if hub_load.errors + bare_load.errors > 0 {
                format!(" ({} hub errors, {} bare errors)", hub_load.errors, bare_load.errors)
            } else {
                String::new()
            }
        );
        runs.push((hub_load.rate() / bare_load.rate(), hub_load.p99_ms() / bare_load.p99_ms()));
        users.push((hub_user, bare_user));
    }
    let _ = bare.kill();
    let _ = bare.wait();
    let (throughput, p99): (Vec<f64>, Vec<f64>) = runs.into_iter().unzip();
    println!("  hub/bare throughput: {}   (target: >= 0.80x)", median_spread(throughput, "x"));
    println!("  hub/bare p99:        {}   (target: <= 1.50x)", median_spread(p99, "x"));
    let (hub_user, bare_user): (Vec<f64>, Vec<f64>) = users.into_iter().unzip();
    println!(
        "  user CPU per read:   hub {}, bare axum {}",
        median_spread(hub_user, " us"),
        median_spread(bare_user, " us")
    );
    Ok(())
}

/// One read by every tenant of `1..=n` (each with its own token), as 5,000 frontends would.
async fn read_each(hub: &Hub, n: i64) -> anyhow::Result<()> {
    let requests: Vec<Vec<u8>> =
        (1..=n).map(|id| request(&format!("/api/whatsapp/{id}/status"), &tenant_token(id))).collect();
    let mut connection = Connection::open(hub.port).await?;
    for r in &requests {
        let (status, _) = connection.get(r).await?;
        anyhow::ensure!(status == 200, "a status read answered {status}");
    }
    Ok(())
}

fn request(path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n\r\n").into_bytes()
}

/// The median of `values` and their spread, each with `unit`.
fn median_spread(mut values: Vec<f64>, unit: &str) -> String {
    values.sort_by(f64::total_cmp);
    let (median, low, high) = (values[values.len() / 2], values[0], values[values.len() - 1]);
    format!("median {median:.2}{unit} (runs {low:.2}{unit} to {high:.2}{unit})")
}

struct Load {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    /// CPU time the server spent meanwhile: user, and system.
    server_cpu: (Duration, Duration),
    /// Sorted, in microseconds.
    latencies: Vec<u32>,
}

impl Load {
    /// The server's CPU time per request, in microseconds: all of it, and its user part (where
    /// a server's own code runs; the system part is mostly the socket calls both servers make).
    fn cpu_per_request(&self) -> (f64, f64) {
        let per_request = |d: Duration| d.as_secs_f64() * 1e6 / self.requests.max(1) as f64;
        let (user, system) = self.server_cpu;
        (per_request(user + system), per_request(user))
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn p99_ms(&self) -> f64 {
        percentile_ms(&self.latencies, 99)
    }
}

fn percentile_ms(sorted_micros: &[u32], p: usize) -> f64 {
    let i = (sorted_micros.len() * p / 100).min(sorted_micros.len().saturating_sub(1));
    sorted_micros.get(i).copied().unwrap_or_default() as f64 / 1000.0
}

/// CONNECTIONS workers, each on its own keep-alive connection (opened before the clock
/// starts), cycling through `requests` from its own offset, for LOAD.
async fn load(port: u16, server: u32, requests: &[Vec<u8>]) -> anyhow::Result<Load> {
    let requests = std::sync::Arc::new(requests.to_vec());
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(Connection::open(port).await?);
    }
    let (started, cpu_before) = (Instant::now(), cpu_times(server));
    let deadline = started + LOAD;
    let workers: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(w, mut connection)| {
            let requests = requests.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut i) = (Vec::with_capacity(1 << 16), 0, w);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match connection.get(&requests[i % requests.len()]).await {
                        Ok((200, _)) => latencies.push(t.elapsed().as_micros() as u32),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            connection = Connection::open(port).await.expect("reconnecting");
                        }
                    }
                    i += CONNECTIONS;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Load {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        server_cpu: (Duration::ZERO, Duration::ZERO),
        latencies: Vec::new(),
    };
    for worker in workers {
        let (latencies, errors) = worker.await?;
        all.requests += latencies.len();
        all.errors += errors;
        all.latencies.extend(latencies);
    }
    all.elapsed = started.elapsed();
    let cpu_after = cpu_times(server);
    all.server_cpu = (cpu_after.0.saturating_sub(cpu_before.0), cpu_after.1.saturating_sub(cpu_before.1));
    all.latencies.sort_unstable();
    Ok(all)
}

/// A minimal HTTP/1.1 client connection: requests written as given, responses read by
/// `content-length` (what both servers send for these reads).
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(port: u16) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, buffer: Vec::with_capacity(8192) })
    }

    /// One request; the status code and the body.
    async fn get(&mut self, request: &[u8]) -> anyhow::Result<(u16, &[u8])> {
        self.stream.write_all(request).await?;
        self.buffer.clear();
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            self.read_more().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end])?;
        let status: u16 = head.get(9..12).context("a status line")?.parse()?;
        let length: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("content-length")))
            .context("a content-length")?
            .1
            .trim()
            .parse()?;
        while self.buffer.len() < head_end + length {
            self.read_more().await?;
        }
        Ok((status, &self.buffer[head_end..head_end + length]))
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The baseline: axum answering a fixed JSON body, nothing else.
async fn bare_server(port: u16, body: String) -> anyhow::Result<()> {
    let body = axum::body::Bytes::from(body);
    let app = axum::Router::new().route(
        "/status",
        axum::routing::get(move || async move {
            ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Part 2: SSE delivery, with STREAMS streams of as many tenants, then of one tenant; the hub's RSS
/// (KiB) with each set of streams open.
async fn sse(ns: &TestNamespace, hub: &Hub, n: i64) -> anyhow::Result<Vec<(String, u64)>> {
    let tenants = (STREAMS as i64).min(n);
    println!("\n2. SSE delivery (status written to the API server -> the event at each client):");
    let (watch, mut watched) = reference_watch(ns).await;
    let (events, mut rx) = mpsc::unbounded_channel();
    let streams = open_streams(hub.port, (1..=tenants).collect(), events).await?;
    // Numbers of their own, above the burst's and the one tenant's.
    let written = write_paced(ns, tenants, 2_000_000).await?;
    let what = format!("{tenants} streams of {tenants} tenants, {PACED_PER_SECOND} changes/s");
    print_each_tenant(&what, &mut rx, &mut watched, &written).await;
    let written = write_each(ns, tenants).await?;
    let what = format!("{tenants} streams of {tenants} tenants, all at once ({WRITERS} writers)");
    print_each_tenant(&what, &mut rx, &mut watched, &written).await;
    let mut rss = vec![(format!("with {tenants} streams of as many tenants"), rss_kib(hub.pid()))];
    streams.into_iter().for_each(|s| s.abort());

    let (events, mut rx) = mpsc::unbounded_channel();
    let streams = open_streams(hub.port, vec![1; STREAMS], events).await?;
    let (mut latencies, mut reference) = (Vec::new(), Vec::new());
    // Numbers above the first case's, so a first event carrying its last change is not counted.
    for n in 1_000_001..=1_000_000 + ONE_TENANT_WRITES {
        let written = HashMap::from([(n, write_change(ns, 1, n).await?)]);
        let mut seen = vec![false; STREAMS];
        let first = |i: usize, _: u64| !std::mem::replace(&mut seen[i], true);
        latencies.extend(delivered(&mut rx, &written, first, STREAMS).await);
        reference.extend(delivered_to_watch(&mut watched, &written).await);
    }
    print_delivery(
        &format!("{STREAMS} streams of one tenant, {ONE_TENANT_WRITES} writes"),
        latencies,
        reference,
    );
    rss.push((format!("with {STREAMS} streams of one tenant"), rss_kib(hub.pid())));
    streams.into_iter().for_each(|s| s.abort());
    watch.abort();
    Ok(rss)
}

/// Waits for each of the `written` changes (one per tenant) at its tenant's stream and at the
/// bench's own watch, and prints them.
async fn print_each_tenant(
    what: &str,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    watched: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    written: &HashMap<u64, Instant>,
) {
    let latencies = delivered(rx, written, |_, _| true, written.len()).await;
    let reference = delivered_to_watch(watched, written).await;
    print_delivery(what, latencies, reference);
}

/// Prints the deliveries (change, latency in us) to the hub's streams beside the same changes at
/// the bench's own watch, and the hub's own delay: per delivery, how much later than the watch
/// it came (0 when it came first).
fn print_delivery(what: &str, latencies: Vec<(u64, u32)>, reference: Vec<(u64, u32)>) {
    let at_watch: HashMap<u64, u32> = reference.iter().copied().collect();
    let mut own: Vec<u32> =
        latencies.iter().filter_map(|(n, l)| at_watch.get(n).map(|r| l.saturating_sub(*r))).collect();
    let mut latencies: Vec<u32> = latencies.into_iter().map(|(_, l)| l).collect();
    let mut reference: Vec<u32> = reference.into_iter().map(|(_, l)| l).collect();
    latencies.sort_unstable();
    reference.sort_unstable();
    own.sort_unstable();
    println!(
        "  {what}: {} events, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms   (target: p99 < 50 ms)",
        latencies.len(),
        percentile_ms(&latencies, 50),
        percentile_ms(&latencies, 99),
        percentile_ms(&latencies, 100),
    );
    println!(
        "    the same writes at a watch of the bench's own (the API server's share): p50 {:.1} ms, p99 {:.1} ms",
        percentile_ms(&reference, 50),
        percentile_ms(&reference, 99),
    );
    println!(
        "    the hub's own delay (each delivery against the same change at that watch): p50 {:.1} ms, p99 {:.1} ms",
        percentile_ms(&own, 50),
        percentile_ms(&own, 99),
    );
}

/// A watch of the bench's own on the sessions: when each `chg-<n>` reaches a watcher straight
/// from the API server, which no hub can beat.
async fn reference_watch(
    ns: &TestNamespace,
) -> (tokio::task::JoinHandle<()>, mpsc::UnboundedReceiver<(u64, Instant)>) {
    let api = ns.api::<whatsapp_crds::WhatsAppSession>();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready, listed) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
        while let Some(Ok(event)) = events.next().await {
            match event {
                watcher::Event::InitDone => drop(ready.take().map(|r| r.send(()))),
                watcher::Event::Apply(session) => {
                    let message = session.status.and_then(|s| s.message).unwrap_or_default();
                    if let Some(n) = message.strip_prefix("chg-").and_then(|n| n.parse().ok()) {
                        let _ = tx.send((n, Instant::now()));
                    }
                }
                _ => {}
            }
        }
    });
    let _ = listed.await;
    (task, rx)
}

/// The latencies (change, us) of the `written` changes at the bench's own watch.
async fn delivered_to_watch(
    watched: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    written: &HashMap<u64, Instant>,
) -> Vec<(u64, u32)> {
    let mut latencies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while latencies.len() < written.len() {
        let Ok(Some((n, at))) = tokio::time::timeout_at(deadline, watched.recv()).await else { break };
        if let Some(t) = written.get(&n) {
            latencies.push((n, at.saturating_duration_since(*t).as_micros() as u32));
        }
    }
    latencies
}

/// An event seen by a stream: (stream index, the change's number, when).
type Seen = (usize, u64, Instant);

/// One stream per entry of `ids` (a clienteId each), reporting each `chg-<n>` status message.
async fn open_streams(
    port: u16,
    ids: Vec<i64>,
    events: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let tokens: HashMap<i64, String> = ids.iter().map(|id| (*id, tenant_token(*id))).collect();
    let opened: Vec<(usize, TcpStream, Vec<u8>)> = stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let path = format!("/api/whatsapp/{id}/events");
            let request = request(&path, &tokens[id]);
            async move {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
                stream.write_all(&request).await?;
                let mut buffer = Vec::with_capacity(4096);
                while find(&buffer, b"\r\n\r\n").is_none() {
                    anyhow::ensure!(stream.read_buf(&mut buffer).await? > 0, "the hub closed a stream");
                }
                anyhow::ensure!(buffer.starts_with(b"HTTP/1.1 200"), "a stream was refused");
                anyhow::Ok((i, stream, buffer))
            }
        })
        .buffer_unordered(CONNECTIONS)
        .try_collect()
        .await?;
    Ok(opened
        .into_iter()
        .map(|(i, stream, buffer)| tokio::spawn(follow(i, stream, buffer, events.clone())))
        .collect())
}

/// Reads a stream, reporting the number of every `"message":"chg-<n>"` it carries.
async fn follow(i: usize, mut stream: TcpStream, mut buffer: Vec<u8>, events: mpsc::UnboundedSender<Seen>) {
    const MARKER: &[u8] = b"\"message\":\"chg-";
    loop {
        while let Some(at) = find(&buffer, MARKER) {
            let digits = &buffer[at + MARKER.len()..];
            let Some(end) = digits.iter().position(|b| *b == b'"') else { break };
            if let Some(n) = std::str::from_utf8(&digits[..end]).ok().and_then(|d| d.parse().ok()) {
                let _ = events.send((i, n, Instant::now()));
            }
            buffer.drain(..at + MARKER.len() + end);
        }
        // Keep only what a marker split by a read may start with.
        let keep = buffer.len().saturating_sub(MARKER.len() + 24);
        buffer.drain(..keep);
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn write_change(ns: &TestNamespace, id: i64, n: u64) -> anyhow::Result<Instant> {
    let started = Instant::now();
    ns.report_status(&format!("cliente-{id}"), json!({"state": "READY", "message": format!("chg-{n}")}))
        .await?;
    Ok(started)
}

/// One change per tenant (change n to tenant n), WRITERS at a time: when each was written.
async fn write_each(ns: &TestNamespace, tenants: i64) -> anyhow::Result<HashMap<u64, Instant>> {
    stream::iter(1..=tenants)
        .map(|id| async move { write_change(ns, id, id as u64).await.map(|t| (id as u64, t)) })
        .buffer_unordered(WRITERS)
        .try_collect()
        .await
}

/// One change per tenant (change `base + n` to tenant n), each due PACED_PER_SECOND after the one
/// before: when each was due, so a write the API server held up counts against the delivery.
async fn write_paced(ns: &TestNamespace, tenants: i64, base: u64) -> anyhow::Result<HashMap<u64, Instant>> {
    let start = tokio::time::Instant::now();
    let every = Duration::from_secs(1) / PACED_PER_SECOND;
    stream::iter(1..=tenants)
        .map(|id| async move {
            let due = start + every * (id - 1) as u32;
            tokio::time::sleep_until(due).await;
            let n = base + id as u64;
            write_change(ns, id, n).await.map(|_| (n, due.into_std()))
        })
        .buffer_unordered(WRITERS)
        .try_collect()
        .await
}

/// The latencies (change, us) of `expected` deliveries of the `written` changes to the streams,
/// counting a delivery when `count(stream, change)` says so.
async fn delivered(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    written: &HashMap<u64, Instant>,
    mut count: impl FnMut(usize, u64) -> bool,
    expected: usize,
) -> Vec<(u64, u32)> {
    let mut latencies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while latencies.len() < expected {
        let Ok(Some((i, n, at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            println!("  missing: {} events never arrived", expected - latencies.len());
            break;
        };
        if let Some(t) = written.get(&n).filter(|_| count(i, n)) {
            latencies.push((n, at.saturating_duration_since(*t).as_micros() as u32));
        }
    }
    latencies
}
