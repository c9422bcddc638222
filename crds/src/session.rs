use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a WhatsApp session.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "whatsapp.leadmaster.dev",
    version = "v1alpha1",
    kind = "WhatsAppSession",
    namespaced,
    status = "WhatsAppSessionStatus",
    shortname = "was",
    shortname = "wasession",
    category = "whatsapp",
    validation = Rule::new("self.metadata.name.size() <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must start with a letter, use only lowercase letters, digits and '-', and be at most 40 characters: it names the session's StatefulSet, Service and pod"),
    doc = "A WhatsApp Web session for one tenant (clienteId): a browser with its own persistent profile (the WhatsApp login), linked to one phone number. The operator runs it as a one-replica StatefulSet; the session pod reports its state and QR code here.",
    printcolumn(name = "Cliente", type_ = "integer", json_path = ".spec.clienteId"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Phone", type_ = "string", json_path = ".status.me.phone"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Queued", type_ = "integer", json_path = ".status.outbox.queued"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.outbox.failed", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WhatsAppSessionSpec {
    /// The tenant this session belongs to (the `clienteId` of the hub's API and of the JWT
    /// `cliente_id` claim). A positive integer; it cannot change after creation.
    #[x_kube(validation = Rule::new("self > 0").message("clienteId must be a positive integer"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("clienteId is immutable: create a new WhatsAppSession instead"))]
    pub cliente_id: i64,

    /// Stops the session without losing it: the pod is removed, the browser profile (and with
    /// it the WhatsApp login) is kept on its volume. Set back to false to resume.
    #[serde(default)]
    pub suspended: bool,

    /// How the phone links to this session.
    #[serde(default)]
    pub pairing: PairingSpec,

    /// QR code behaviour while the session waits to be linked.
    #[serde(default)]
    pub qr: QrSpec,

    /// Limits on outgoing messages.
    #[serde(default)]
    pub send: SendSpec,

    /// Incoming messages: how long the session keeps them.
    #[serde(default)]
    pub inbound: InboundSpec,

    /// Where the session posts its events (Standard Webhooks: signed, at least once, in order
    /// per endpoint, from a queue on the session's volume). At most 5.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    #[x_kube(validation = Rule::new("self.all(w, self.exists_one(o, o.name == w.name))").message("webhook names must be unique"))]
    pub webhooks: Vec<WebhookSpec>,

    /// The volume that holds the browser profile.
    #[serde(default)]
    pub storage: StorageSpec,

    /// The browser that runs WhatsApp Web.
    #[serde(default)]
    pub browser: BrowserSpec,
}

/// How the phone links to this session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.method != 'PhoneCode' || has(self.phoneNumber)").message("pairing.phoneNumber is required when pairing.method is PhoneCode"))]
pub struct PairingSpec {
    /// `QR` (scan a QR code from the phone, the default) or `PhoneCode` (type an 8-character
    /// code shown in the session's status into the phone).
    #[serde(default)]
    // A plain string in the schema, so a bad value gets the CEL message below.
    #[schemars(with = "String")]
    #[x_kube(validation = Rule::new("self in ['QR', 'PhoneCode']").message("pairing.method must be QR or PhoneCode"))]
    pub method: PairingMethod,

    /// The phone number to link, international format, digits only (country code first, no
    /// `+` or spaces), 8 to 15 digits. Required for `PhoneCode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{8,15}$')").message("pairing.phoneNumber must be 8 to 15 digits: country code and number, without '+', spaces or dashes"))]
    pub phone_number: Option<String>,
}

/// How the phone links to the session.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PairingMethod {
    /// Scan a QR code with the phone.
    #[default]
    QR,
    /// Type a pairing code into the phone.
    PhoneCode,
}

/// QR code behaviour while the session waits to be linked.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QrSpec {
    /// How many QR codes to show before giving up with state FAILED (reason
    /// `QRAttemptsExhausted`) instead of looping. WhatsApp renews the code every 20 s (the first
    /// lives 60 s). 1 to 60, default 6.
    #[serde(default = "default_qr_max_attempts")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 60").message("qr.maxAttempts must be between 1 and 60"))]
    pub max_attempts: i32,
}

impl Default for QrSpec {
    fn default() -> Self {
        Self { max_attempts: default_qr_max_attempts() }
    }
}

fn default_qr_max_attempts() -> i32 {
    6
}

/// Limits on outgoing messages.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SendSpec {
    /// Most messages sent per minute: a ceiling, never a target. Messages wait in the outbox
    /// and go out with random gaps of 1.05 to 1.6 times 60/ratePerMinute seconds, so a number
    /// never sends in a burst. 1 to 180, default 20.
    #[serde(default = "default_rate_per_minute")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 180").message("send.ratePerMinute must be between 1 and 180"))]
    pub rate_per_minute: i32,

    /// Most messages sent per day (a day of the window's time zone, UTC without a window);
    /// the rest wait for the next day. Absent: no daily cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("send.dailyCap must be between 1 and 100000"))]
    pub daily_cap: Option<i32>,

    /// The hours messages may go out; outside them they wait. Absent: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<SendWindow>,
}

impl Default for SendSpec {
    fn default() -> Self {
        Self { rate_per_minute: default_rate_per_minute(), daily_cap: None, window: None }
    }
}

/// A daily sending window, such as 08:00 to 20:00 in America/Sao_Paulo. An end before the
/// start spans midnight (22:00 to 06:00).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start != self.end").message("send.window.start and send.window.end must differ"))]
pub struct SendWindow {
    /// Opening time, HH:MM (24 h).
    #[x_kube(validation = Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')").message("send.window.start must be HH:MM, 00:00 to 23:59"))]
    pub start: String,
    /// Closing time, HH:MM (24 h), not included.
    #[x_kube(validation = Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')").message("send.window.end must be HH:MM, 00:00 to 23:59"))]
    pub end: String,
    /// IANA time zone of the window and of the daily cap's day, default UTC.
    #[serde(default = "default_time_zone")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$') && size(self) <= 64").message("send.window.timeZone must be an IANA time zone name such as America/Sao_Paulo"))]
    pub time_zone: String,
}

/// Incoming messages: how long the session keeps them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InboundSpec {
    /// How long incoming messages (and the events told about them) are kept on the session's
    /// volume, in days: 1 to 90, default 7.
    #[serde(default = "default_retention_days")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 90").message("inbound.retentionDays must be between 1 and 90"))]
    pub retention_days: i32,
}

impl Default for InboundSpec {
    fn default() -> Self {
        Self { retention_days: default_retention_days() }
    }
}

fn default_retention_days() -> i32 {
    7
}

/// One endpoint the session posts its events to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.url.startsWith('https://') || (has(self.allowInsecure) && self.allowInsecure)").message("webhooks[].url must be https:// unless allowInsecure is true"))]
pub struct WebhookSpec {
    /// A name for the endpoint, unique in the session (deliveries name it): lowercase letters,
    /// digits and dashes, up to 63.
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("webhooks[].name must be lowercase letters, digits and dashes, up to 63"))]
    pub name: String,

    /// The URL events are POSTed to.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^ /]+(/[^ ]*)?$')").message("webhooks[].url must be an http(s) URL of at most 2048 characters"))]
    pub url: String,

    /// Plain http:// is refused unless this is true (an endpoint inside the cluster).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure: bool,

    /// The events sent: `message` (an incoming message), `message.ack` (a sent message's
    /// receipt: sent, delivered, read, played, failed), `state` (the session's state). Default all.
    #[serde(default = "default_webhook_events")]
    #[schemars(length(max = 3), inner(length(max = 16)))]
    #[x_kube(validation = Rule::new("size(self) >= 1 && self.all(e, e in ['message', 'message.ack', 'state'])").message("webhooks[].events must be some of message, message.ack, state"))]
    pub events: Vec<String>,

    /// The Secret (in the session's namespace) whose key signs the deliveries:
    /// `webhook-signature` is `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
    pub secret_ref: WebhookSecretRef,
}

/// A key of a Secret in the session's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecretRef {
    /// The Secret's name.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("webhooks[].secretRef.name must be a Secret name"))]
    pub name: String,
    /// The key in it (the signing secret; Standard Webhooks' `whsec_` base64 form or raw bytes).
    #[serde(default = "default_secret_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]{1,253}$')").message("webhooks[].secretRef.key must be a Secret key"))]
    pub key: String,
}

fn default_webhook_events() -> Vec<String> {
    vec!["message".into(), "message.ack".into(), "state".into()]
}

fn default_secret_key() -> String {
    "secret".into()
}

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_rate_per_minute() -> i32 {
    20
}

/// The volume that holds the browser profile (the WhatsApp login).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of the profile volume, for example `1Gi`. Default 1Gi.
    #[serde(default = "default_storage_size")]
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))").message("storage.size must be a positive quantity such as 512Mi or 1Gi"))]
    pub size: Quantity,

    /// StorageClass of the profile volume; the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("storage.storageClassName must be a DNS subdomain name"))]
    pub storage_class_name: Option<String>,

    /// What happens to the profile volume when the WhatsAppSession is deleted: `Retain` (the
    /// default: keep it, the login can be recovered) or `Delete`.
    #[serde(default)]
    // A plain string in the schema, so a bad value gets the CEL message below.
    #[schemars(with = "String")]
    #[x_kube(validation = Rule::new("self in ['Retain', 'Delete']").message("storage.whenDeleted must be Retain or Delete"))]
    pub when_deleted: VolumePolicy,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self { size: default_storage_size(), storage_class_name: None, when_deleted: VolumePolicy::default() }
    }
}

fn default_storage_size() -> Quantity {
    Quantity("1Gi".into())
}

/// What happens to the profile volume when the session is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VolumePolicy {
    /// Keep the volume.
    #[default]
    Retain,
    /// Delete the volume with the session.
    Delete,
}

/// The browser that runs WhatsApp Web.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrowserSpec {
    /// Container image of the session pod; the operator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.contains(' ')").message("browser.image must be a container image reference without spaces"))]
    pub image: Option<String>,

    /// CPU and memory for the session pod. Chromium with WhatsApp Web needs about 500Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra Chromium command-line flags, each starting with `--`. Flags the session pod
    /// controls itself (`--user-data-dir`, `--remote-debugging-*`) are refused. At most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 512)))]
    #[x_kube(validation = Rule::new("self.all(a, a.startsWith('--'))").message("browser.extraArgs entries must start with --"))]
    #[x_kube(validation = Rule::new("!self.exists(a, a.startsWith('--user-data-dir') || a.startsWith('--remote-debugging'))").message("browser.extraArgs must not set --user-data-dir or --remote-debugging-*: the session pod controls them"))]
    pub extra_args: Vec<String>,

    /// Pin the WhatsApp Web build, for example `2.3000.1029560484`: the session pod serves that
    /// build's page instead of the latest. Absent: whatever WhatsApp serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^2\\\\.[0-9]{4}\\\\.[0-9]+$')").message("browser.webVersion must look like 2.3000.1029560484"))]
    pub web_version: Option<String>,

    /// Which Chromium build runs WhatsApp Web: `HeadlessShell` (the default: Chromium's
    /// headless shell, about 40% less memory than the full browser; WhatsApp Web, the bridge
    /// and the login's persistence work the same in it) or `Chromium` (the full browser in its
    /// new headless mode, for a WhatsApp Web build that needs something the shell lacks).
    /// Changing it restarts the session pod; the login is kept.
    #[serde(default, skip_serializing_if = "BrowserEngine::is_default")]
    // A plain string in the schema, so a bad value gets the CEL message below; the default is
    // written out because serde leaves it out of the serialized spec.
    #[schemars(with = "String", extend("default" = "HeadlessShell"))]
    #[x_kube(validation = Rule::new("self in ['HeadlessShell', 'Chromium']").message("browser.engine must be HeadlessShell or Chromium"))]
    pub engine: BrowserEngine,
}

/// The Chromium build a session runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BrowserEngine {
    /// `chromium-headless-shell`: the headless-only build.
    #[default]
    HeadlessShell,
    /// The full Chromium browser, in its new headless mode.
    Chromium,
}

impl BrowserEngine {
    /// Left out when serialized, so sessions that never chose an engine keep the same
    /// `spec.browser` (and the operator's digest of it).
    fn is_default(&self) -> bool {
        *self == BrowserEngine::default()
    }
}

/// Observed state of a WhatsApp session. The session pod owns `state`, `reason`, `message`,
/// `qr`, `pairingCode`, `me`, `endpoint`, `lastStateChange` and its own conditions; the
/// operator owns `observedGeneration` and its own conditions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WhatsAppSessionStatus {
    /// Where the session is: DISCONNECTED, CONNECTING, QR_REQUIRED (waiting for a QR scan or a
    /// phone-code link), READY or FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SessionState>,

    /// Machine-readable reason for the state, in CamelCase (for example `QRAttemptsExhausted`,
    /// `LoggedOutFromPhone`, `Conflict`, `BrowserCrashed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Human-readable explanation of the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The QR code to scan while the state is QR_REQUIRED with QR pairing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr: Option<QrStatus>,

    /// The code to type into the phone while the state is QR_REQUIRED with PhoneCode pairing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing_code: Option<String>,

    /// The linked WhatsApp account, once READY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub me: Option<Me>,

    /// Address (`http://host:port`) the session pod says it serves its API on. The hub does not
    /// connect to it: it derives the pod's address from the session's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The `metadata.generation` the operator last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions, keyed by type. The operator owns `Reconciled` and `PodReady`; the session
    /// pod owns `Ready` (linked and able to send), `BridgeCompatible` (the WhatsApp Web
    /// build has every module the bridge uses; reason `ModuleMissing` names what it lacks) and
    /// `StorageFull` (the session's volume: `True`, reason `VolumeFull`, while under 16 MiB is
    /// available or since a write failed for lack of space, new messages being refused with 507
    /// until space is freed; `False`, reason `SpaceAvailable`, otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state_change: Option<Time>,

    /// The outbox in numbers, written by the session pod at most once a minute while they
    /// change (its own field manager, `whatsapp-session-outbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStatus>,
}

/// How many messages of a session wait and how many failed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStatus {
    /// Messages waiting to be sent (queued or being sent).
    pub queued: i64,
    /// Messages that failed for good (not on WhatsApp, expired, cancelled, refused).
    pub failed: i64,
    /// When these numbers were taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// Where a WhatsApp session is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionState {
    /// No browser session (suspended, starting, or logged out and not yet showing a QR).
    Disconnected,
    /// The browser is loading WhatsApp Web or restoring a login.
    Connecting,
    /// Waiting for the phone: a QR code to scan or a pairing code to type.
    QrRequired,
    /// Linked and able to send.
    Ready,
    /// Stopped with an error that needs a person (see `reason`).
    Failed,
}

impl SessionState {
    /// Every state, in life-cycle order.
    pub const ALL: [SessionState; 5] = [
        SessionState::Disconnected,
        SessionState::Connecting,
        SessionState::QrRequired,
        SessionState::Ready,
        SessionState::Failed,
    ];

    /// The wire name, as in the API (`QR_REQUIRED`).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Disconnected => "DISCONNECTED",
            SessionState::Connecting => "CONNECTING",
            SessionState::QrRequired => "QR_REQUIRED",
            SessionState::Ready => "READY",
            SessionState::Failed => "FAILED",
        }
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The QR code currently shown by WhatsApp Web.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QrStatus {
    /// The raw string encoded in the QR (`2@...,<keys>`): render it as a QR image to scan.
    pub code: String,
    /// How many QR codes were shown so far in this pairing attempt (1-based).
    pub attempts: i32,
    /// When this code was first seen.
    pub updated_at: Time,
    /// When WhatsApp will replace this code with the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// The linked WhatsApp account.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// Phone number of the account, digits only.
    pub phone: String,
    /// The account's display name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_name: Option<String>,
}
