//! The hub killed (SIGKILL) while clients follow sessions on its event stream, and started
//! again on the same ports, as its restarted container would be. The hub has no event ids to
//! resume from: a reconnecting client resumes from the status the stream opens with. So the
//! drill counts states: what changed while the hub was down must be the first thing each
//! reconnected client sees, and what changes after must follow; none may be missed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Counts, DEADLINE, Row, guarded};
use crate::cluster::free_port;
use crate::harness::{TestNamespace, cluster, eventually};
use crate::hub::{Events, Hub, HubOptions, tenant_token};
use crate::processes::print_log_tail;

pub(super) const DRILL: &str = "hub killed, streams open";
const MEASURED: &str = "every client reconnected, shown what changed meanwhile";
/// The followed sessions' clienteIds, one client each.
const CLIENTS: [i64; 3] = [91, 92, 93];

struct Stack {
    ns: TestNamespace,
    hub: Option<Hub>,
    ports: (u16, u16),
    streams: Vec<Events>,
}

pub(super) async fn run(counts: &Counts) -> Vec<Row> {
    if counts.hub_kill == 0 {
        return Vec::new();
    }
    let mut stack = match guarded(Stack::start()).await {
        Ok(stack) => stack,
        Err(why) => return vec![Row::setup_failed(DRILL, MEASURED, counts.hub_kill, why)],
    };
    let mut row = Row::new(DRILL, MEASURED, counts.hub_kill);
    row.run(async |i| stack.attempt(i).await).await;
    if !row.failures.is_empty()
        && let Some(hub) = &stack.hub
    {
        print_log_tail("hub", &hub.log, 40);
    }
    vec![row]
}

/// `events` until a `status` event whose message is `message`.
async fn until_message(events: &mut Events, message: &str) {
    events
        .until(&format!("the status \"{message}\""), DEADLINE, |name, data| {
            name == "status" && data["message"] == message
        })
        .await;
}

impl Stack {
    async fn start() -> Stack {
        let ns = cluster().namespace("drills-hub").await;
        for id in CLIENTS {
            let name = format!("cliente-{id}");
            ns.create_session(&name, json!({"clienteId": id})).await;
            ns.report_status(&name, status("CONNECTING", "created")).await.expect("reporting a status");
        }
        let ports = (free_port().expect("a port"), free_port().expect("a port"));
        let hub = Hub::start_at(&ns, HubOptions::default(), ports.0, ports.1);
        hub.wait_healthy().await;
        let mut stack = Stack { ns, hub: Some(hub), ports, streams: Vec::new() };
        for id in CLIENTS {
            let events = stack.connect(id).await;
            stack.streams.push(events);
        }
        // Live changes reach every client.
        for id in CLIENTS {
            let name = format!("cliente-{id}");
            stack.ns.report_status(&name, status("CONNECTING", "live")).await.expect("reporting a status");
        }
        for events in &mut stack.streams {
            until_message(events, "live").await;
        }
        stack
    }

    /// A client (re)connecting: tries until the hub answers with a stream.
    async fn connect(&self, id: i64) -> Events {
        let url = format!("http://127.0.0.1:{}/api/whatsapp/{id}/events", self.ports.0);
        let token = tenant_token(id);
        eventually(&format!("clienteId {id}'s stream to open"), DEADLINE, || async {
            let events = Events::try_open(&url, &token).await?;
            Ok((events.status == 200).then_some(events))
        })
        .await
    }

    /// Kill, change every session while the hub is down, restart it; every client reconnects
    /// and sees the change, then a change after.
    async fn attempt(&mut self, attempt: usize) -> Duration {
        let fault = Instant::now();
        drop(self.hub.take()); // SIGKILL
        for events in &mut self.streams {
            ended(events).await;
        }
        let (down, up) = (format!("down-{attempt}"), format!("up-{attempt}"));
        let state = ["QR_REQUIRED", "CONNECTING"][attempt % 2];
        for id in CLIENTS {
            let name = format!("cliente-{id}");
            self.ns.report_status(&name, status(state, &down)).await.expect("reporting a status");
        }
        self.hub = Some(Hub::start_at(&self.ns, HubOptions::default(), self.ports.0, self.ports.1));
        let mut resumed = Vec::new();
        for id in CLIENTS {
            let mut events = self.connect(id).await;
            until_message(&mut events, &down).await;
            resumed.push(events);
        }
        let recovered = fault.elapsed();
        self.streams = resumed;
        for id in CLIENTS {
            let name = format!("cliente-{id}");
            self.ns.report_status(&name, status(state, &up)).await.expect("reporting a status");
        }
        for events in &mut self.streams {
            until_message(events, &up).await;
        }
        recovered
    }
}

/// Waits for a stream to end (the client noticed the hub went away).
async fn ended(events: &mut Events) {
    tokio::time::timeout(DEADLINE, async { while events.next().await.is_some() {} })
        .await
        .expect("the stream to end when the hub died");
}

fn status(state: &str, message: &str) -> Value {
    json!({"state": state, "message": message})
}
