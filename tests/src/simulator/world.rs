//! WhatsApp's side: companion devices and their connections, QR ref batches, pairing codes,
//! linked accounts, messages and their acks. Everything here runs under one lock; what waits
//! (ref lifetimes, the sync delay, delivery) runs in tasks started by `http.rs`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{
    Build, CODE_LIFETIME, DeviceKeys, PHONE_PLATFORM, QrParts, Received, SimConfig, code_hash,
    is_on_whatsapp, lid_of, normalize_code,
};

/// An error for the page: HTTP status, code, message.
pub(crate) type Refusal = (u16, &'static str, String);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unpredictable bytes: SHA-256 over a process-random key, a counter and the clock.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        let seed = h.finish();
        let mut digest = Sha256::new();
        digest.update(seed.to_le_bytes());
        digest.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        out.extend_from_slice(&digest.finalize());
    }
    out.truncate(n);
    out
}

pub(crate) fn random_hex(n: usize) -> String {
    super::hex(&random_bytes(n))
}

struct Qr {
    conn: u64,
    generation: u64,
    current: Option<String>,
    shown_at: Instant,
}

struct LinkCode {
    conn: u64,
    phone: String,
    hash: String,
    issued: Instant,
}

struct Link {
    phone: String,
    token: String,
}

struct Device {
    keys: DeviceKeys,
    qr: Option<Qr>,
    qr_generation: u64,
    code: Option<LinkCode>,
    link: Option<Link>,
    /// Server events for a linked device that is offline, delivered when it connects again.
    pending: Vec<Value>,
    /// Messages for this device it has not acknowledged (its delivery receipt): WhatsApp keeps
    /// them and sends them again each time the device connects, until it does.
    inbox: Inbox,
}

/// A device's unacknowledged messages, in the order WhatsApp received them, found by id in
/// constant time (a busy session acknowledges thousands of them a minute).
#[derive(Default)]
struct Inbox {
    next: u64,
    by_order: std::collections::BTreeMap<u64, Value>,
    order_of: HashMap<String, u64>,
}

impl Inbox {
    fn push(&mut self, event: Value) {
        let id = event["id"].as_str().unwrap_or_default().to_string();
        if let Some(old) = self.order_of.insert(id, self.next) {
            self.by_order.remove(&old);
        }
        self.by_order.insert(self.next, event);
        self.next += 1;
    }

    fn remove(&mut self, id: &str) {
        if let Some(order) = self.order_of.remove(id) {
            self.by_order.remove(&order);
        }
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.by_order.get_mut(self.order_of.get(id)?)
    }

    fn len(&self) -> usize {
        self.by_order.len()
    }

    fn clear(&mut self) {
        self.by_order.clear();
        self.order_of.clear();
    }

    fn in_order(&self) -> Vec<Value> {
        self.by_order.values().cloned().collect()
    }
}

pub(crate) struct Conn {
    device: String,
    build: Build,
    tx: mpsc::UnboundedSender<Value>,
    rx: Option<mpsc::UnboundedReceiver<Value>>,
    /// Connected with a valid login and not replaced (conflict) since.
    active: bool,
    /// The offline delivery is done: new messages go to it as they come.
    synced: bool,
}

#[derive(Default)]
pub(crate) struct World {
    devices: HashMap<String, Device>,
    conns: HashMap<u64, Conn>,
    /// Push names of the accounts that linked, by phone number.
    push_names: HashMap<String, String>,
    /// Every ref ever handed out, to tell "expired" from "never shown".
    issued_refs: HashSet<String>,
    /// Phone numbers by LID, for the LIDs handed out.
    phones_by_lid: HashMap<String, String>,
    pub(crate) sent: Vec<Received>,
    /// The chat each accepted message went to, as the page addressed it (`<lid>@lid` or
    /// `<phone>@c.us`), by sender and message id: the page's message key is `true_<chat>_<id>`.
    chats: HashMap<(String, String), String>,
    /// Sends [`SimConfig::throttle`] refused.
    pub(crate) throttled: usize,
    /// Accounts punished for sending too fast, until when (ms).
    punished_until: HashMap<String, u64>,
    /// WhatsApp users whose phone is off: no delivery acks.
    phones_off: HashSet<String>,
    /// What WhatsApp users sent to linked accounts (id -> sender, body), for replies quoting them.
    from_phones: HashMap<String, (String, String)>,
    next_id: u64,
    /// Each linked account's address book, on its phone: (number, name), as the user saved them.
    address_books: HashMap<String, Vec<(String, String)>>,
    /// WhatsApp users that are business accounts, with their verified name.
    businesses: HashMap<String, String>,
    /// Existence queries WhatsApp answered.
    pub(crate) exists_queries: usize,
    /// WhatsApp's media servers.
    pub(crate) mms: super::media::Mms,
}

/// What WhatsApp made of a message a page sent.
#[derive(Debug, PartialEq)]
pub(crate) struct Accepted {
    pub id: String,
    /// Its ack now: 1 for a new message; a resent one keeps what it reached.
    pub ack: i32,
    /// A new message (not a page resending one WhatsApp has).
    pub new: bool,
}

/// What a new connection needs next.
pub(crate) enum AfterConnect {
    /// An unpaired page: run a QR batch.
    Batch {
        device: String,
        conn: u64,
        generation: u64,
    },
    /// A logged-in page: offline delivery, then synced.
    Sync {
        conn: u64,
    },
    Nothing,
}

pub(crate) struct ConnectRequest {
    pub device: String,
    pub keys: DeviceKeys,
    pub login: Option<String>,
    pub replaces: Option<u64>,
    pub build: Build,
}

impl World {
    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn lid(&mut self, phone: &str) -> String {
        let lid = lid_of(phone);
        self.phones_by_lid.insert(lid.clone(), phone.to_string());
        lid
    }

    fn push(&self, conn: u64, event: Value) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(event);
        }
    }

    fn active_conn(&self, device: &str) -> Option<u64> {
        self.conns.iter().find(|(_, c)| c.device == device && c.active).map(|(id, _)| *id)
    }

    fn linked_devices(&self, phone: &str) -> Vec<String> {
        self.devices
            .iter()
            .filter(|(_, d)| d.link.as_ref().is_some_and(|l| l.phone == phone))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Sends `event` to every device linked to `phone`, queueing it for the offline ones.
    fn deliver(&mut self, phone: &str, event: Value) {
        for device in self.linked_devices(phone) {
            match self.active_conn(&device) {
                Some(conn) => self.push(conn, event.clone()),
                None => {
                    if let Some(d) = self.devices.get_mut(&device) {
                        d.pending.push(event.clone());
                    }
                }
            }
        }
    }

    /// Hands a message to every device linked to `phone`: kept for each until that device
    /// acknowledges it ([`World::receipt`]), sent at once to a connected, synced one.
    fn deliver_message(&mut self, phone: &str, event: Value) {
        for device in self.linked_devices(phone) {
            let live = self.active_conn(&device).filter(|c| self.conns.get(c).is_some_and(|c| c.synced));
            if let Some(d) = self.devices.get_mut(&device) {
                d.inbox.push(event.clone());
            }
            if let Some(conn) = live {
                self.push(conn, event.clone());
            }
        }
    }

    /// The device of `conn` acknowledges the message `id` (it has stored it): WhatsApp forgets
    /// it for that device.
    pub(crate) fn receipt(&mut self, conn: u64, id: &str) -> Result<(), Refusal> {
        let (_, device, _) = self.linked(conn)?;
        let device = device.to_string();
        if let Some(d) = self.devices.get_mut(&device) {
            d.inbox.remove(id);
        }
        Ok(())
    }

    /// Messages WhatsApp holds for the devices linked to `phone` that they have not acknowledged.
    pub(crate) fn unacknowledged(&self, phone: &str) -> usize {
        self.linked_devices(phone).iter().filter_map(|d| self.devices.get(d)).map(|d| d.inbox.len()).sum()
    }

    /// The linked connection `conn`, with its device and phone, or why not.
    fn linked(&self, conn: u64) -> Result<(&Conn, &str, &str), Refusal> {
        let c =
            self.conns.get(&conn).ok_or((409, "NO_CONNECTION", "this connection is closed".to_string()))?;
        let d = self.devices.get(&c.device).ok_or((409, "NO_DEVICE", "unknown device".to_string()))?;
        let link = d.link.as_ref().ok_or((401, "LOGGED_OUT", "this device is not linked".to_string()))?;
        if !c.active {
            return Err((409, "CONFLICT", "the account is open in another window (conflict)".into()));
        }
        Ok((c, &c.device, &link.phone))
    }

    pub(crate) fn connect(&mut self, req: ConnectRequest) -> (u64, AfterConnect) {
        if let Some(previous) = req.replaces
            && self.conns.get(&previous).is_some_and(|c| c.device == req.device)
        {
            self.close(previous);
        }
        let id = self.next();
        let (tx, rx) = mpsc::unbounded_channel();
        self.conns.insert(
            id,
            Conn {
                device: req.device.clone(),
                build: req.build,
                tx,
                rx: Some(rx),
                active: false,
                synced: false,
            },
        );
        let device = self.devices.entry(req.device.clone()).or_insert_with(|| Device {
            keys: req.keys.clone(),
            qr: None,
            qr_generation: 0,
            code: None,
            link: None,
            pending: Vec::new(),
            inbox: Inbox::default(),
        });
        let same_keys = device.keys == req.keys;
        if device.link.is_none() {
            device.keys = req.keys.clone();
        }
        match req.login {
            Some(token) => {
                let valid = same_keys && device.link.as_ref().is_some_and(|l| l.token == token);
                if !valid {
                    self.push(id, json!({"type": "logged-out", "reason": "the login is no longer valid"}));
                    return (id, AfterConnect::Nothing);
                }
                self.activate(id);
                (id, AfterConnect::Sync { conn: id })
            }
            None => {
                let generation = self.start_batch(&req.device, id);
                (id, AfterConnect::Batch { device: req.device, conn: id, generation })
            }
        }
    }

    /// Makes `conn` its device's connection: the others get a conflict.
    fn activate(&mut self, conn: u64) {
        let Some(device) = self.conns.get(&conn).map(|c| c.device.clone()) else { return };
        let others: Vec<u64> = self
            .conns
            .iter()
            .filter(|(id, c)| **id != conn && c.device == device && c.active)
            .map(|(id, _)| *id)
            .collect();
        for other in others {
            if let Some(c) = self.conns.get_mut(&other) {
                c.active = false;
            }
            self.push(other, json!({"type": "conflict"}));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.active = true;
        }
        let Some(link) = self.devices.get(&device).and_then(|d| d.link.as_ref()) else { return };
        let phone = link.phone.clone();
        let lid = self.lid(&phone);
        let push_name = self.push_names.get(&phone).cloned().unwrap_or_default();
        self.push(
            conn,
            json!({"type": "connected", "phone": phone, "lid": lid, "pushName": push_name, "platform": PHONE_PLATFORM}),
        );
    }

    /// After the sync delay: the messages the device has not acknowledged, what else arrived
    /// while it was offline, then synced.
    pub(crate) fn finish_sync(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.active {
            return;
        }
        c.synced = true;
        let device = c.device.clone();
        let (inbox, pending) = self
            .devices
            .get_mut(&device)
            .map(|d| (d.inbox.in_order(), std::mem::take(&mut d.pending)))
            .unwrap_or_default();
        let offline: Vec<Value> = inbox.into_iter().chain(pending).collect();
        let total = offline.len().max(1);
        for (i, event) in offline.into_iter().enumerate() {
            self.push(conn, event);
            self.push(conn, json!({"type": "offline-progress", "progress": (i + 1) * 100 / total}));
        }
        self.push(conn, json!({"type": "offline-progress", "progress": 100}));
        self.push(conn, json!({"type": "synced"}));
    }

    pub(crate) fn take_events(&mut self, conn: u64) -> Option<mpsc::UnboundedReceiver<Value>> {
        self.conns.get_mut(&conn).and_then(|c| c.rx.take())
    }

    /// The connection is gone (its event stream closed, or it was replaced).
    pub(crate) fn close(&mut self, conn: u64) {
        let Some(c) = self.conns.remove(&conn) else { return };
        if let Some(d) = self.devices.get_mut(&c.device) {
            if d.qr.as_ref().is_some_and(|q| q.conn == conn) {
                d.qr = None;
            }
            if d.code.as_ref().is_some_and(|code| code.conn == conn) {
                d.code = None;
            }
        }
    }

    fn start_batch(&mut self, device: &str, conn: u64) -> u64 {
        let Some(d) = self.devices.get_mut(device) else { return 0 };
        d.qr_generation += 1;
        d.qr = Some(Qr { conn, generation: d.qr_generation, current: None, shown_at: Instant::now() });
        d.qr_generation
    }

    /// The page asks for new refs (`Cmd.refreshQR()`): a new batch, if it is unpaired.
    pub(crate) fn refresh_qr(&mut self, conn: u64) -> Result<(String, u64), Refusal> {
        let c =
            self.conns.get(&conn).ok_or((409, "NO_CONNECTION", "this connection is closed".to_string()))?;
        if c.active {
            return Err((409, "PAIRED", "this page is logged in".into()));
        }
        let device = c.device.clone();
        Ok((device.clone(), self.start_batch(&device, conn)))
    }

    /// Shows the next ref of a batch; false once the batch is no longer the page's current one.
    pub(crate) fn show_ref(&mut self, device: &str, conn: u64, generation: u64) -> bool {
        let reference =
            format!("2@{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(random_bytes(48)));
        let Some(qr) = self.devices.get_mut(device).and_then(|d| d.qr.as_mut()) else { return false };
        if qr.conn != conn || qr.generation != generation {
            return false;
        }
        qr.current = Some(reference.clone());
        qr.shown_at = Instant::now();
        self.issued_refs.insert(reference.clone());
        self.push(conn, json!({"type": "ref", "ref": reference}));
        true
    }

    /// The batch ran out: the page goes idle until it asks for more.
    pub(crate) fn end_batch(&mut self, device: &str, conn: u64, generation: u64) {
        let Some(qr) = self.devices.get_mut(device).and_then(|d| d.qr.as_mut()) else { return };
        if qr.conn != conn || qr.generation != generation {
            return;
        }
        qr.current = None;
        self.push(conn, json!({"type": "idle"}));
    }

    /// The phone links `device` to `phone`: a fresh login for the page that paired.
    fn link(&mut self, config: &SimConfig, device: &str, phone: &str, push_name: &str) {
        let token = random_hex(32);
        let Some(d) = self.devices.get_mut(device) else { return };
        let conn = d.qr.as_ref().map(|q| q.conn).or(d.code.as_ref().map(|c| c.conn));
        d.qr = None;
        d.code = None;
        d.pending.clear();
        d.inbox.clear();
        d.link = Some(Link { phone: phone.to_string(), token: token.clone() });
        self.push_names.insert(phone.to_string(), push_name.to_string());
        let lid = config.lid_migrated.then(|| self.lid(phone));
        if let Some(conn) = conn {
            self.push(
                conn,
                json!({"type": "pair-success", "token": token, "phone": phone, "lid": lid, "pushName": push_name, "platform": PHONE_PLATFORM}),
            );
        }
    }

    pub(crate) fn scan(
        &mut self,
        config: &SimConfig,
        qr: &str,
        phone: &str,
        push_name: &str,
    ) -> Result<(), String> {
        let parts = QrParts::parse(qr)?;
        let device = self
            .devices
            .iter()
            .find(|(_, d)| d.qr.as_ref().and_then(|q| q.current.as_deref()) == Some(parts.reference.as_str()))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                if self.issued_refs.contains(&parts.reference) {
                    "that QR code expired: its ref is no longer the one its page shows (refs rotate, then the page goes idle)"
                        .to_string()
                } else {
                    "no page shows that QR code: WhatsApp never handed out its ref".to_string()
                }
            })?;
        parts.check(&self.devices[&device].keys)?;
        check_phone(phone)?;
        self.link(config, &device, phone, push_name);
        Ok(())
    }

    /// The phone points at the QR most recently put on a screen.
    pub(crate) fn scan_on_screen(
        &mut self,
        config: &SimConfig,
        phone: &str,
        push_name: &str,
    ) -> Result<(), String> {
        check_phone(phone)?;
        let device = self
            .devices
            .iter()
            .filter(|(_, d)| d.qr.as_ref().is_some_and(|q| q.current.is_some()))
            .max_by_key(|(_, d)| d.qr.as_ref().map(|q| q.shown_at))
            .map(|(id, _)| id.clone())
            .ok_or("no page shows a QR code now (expired, idle, logged in, or never shown)")?;
        self.link(config, &device, phone, push_name);
        Ok(())
    }

    /// The page asks for a pairing code for `phone` (or cancels it).
    pub(crate) fn link_code(
        &mut self,
        conn: u64,
        phone: Option<String>,
        hash: Option<String>,
        cancel: bool,
    ) -> Result<(), Refusal> {
        let c =
            self.conns.get(&conn).ok_or((409, "NO_CONNECTION", "this connection is closed".to_string()))?;
        if c.active {
            return Err((409, "PAIRED", "this page is logged in".into()));
        }
        let device = c.device.clone();
        let d = self.devices.get_mut(&device).ok_or((409, "NO_DEVICE", "unknown device".to_string()))?;
        if cancel {
            d.code = None;
            return Ok(());
        }
        let phone = phone.unwrap_or_default();
        if !(8..=15).contains(&phone.len()) || !phone.bytes().all(|b| b.is_ascii_digit()) {
            return Err((400, "BAD_PHONE", format!("\"{phone}\" is not a phone number (8 to 15 digits)")));
        }
        if !is_on_whatsapp(&phone) {
            return Err((404, "NOT_ON_WHATSAPP", format!("{phone} is not a WhatsApp account")));
        }
        let hash = hash.filter(|h| h.len() == 64).ok_or((
            400,
            "BAD_CODE",
            "codeHash must be a SHA-256 in hex".to_string(),
        ))?;
        d.code = Some(LinkCode { conn, phone, hash, issued: Instant::now() });
        Ok(())
    }

    pub(crate) fn enter_code(
        &mut self,
        config: &SimConfig,
        phone: &str,
        code: &str,
        push_name: &str,
    ) -> Result<(), String> {
        let code = normalize_code(code)?;
        let hash = code_hash(&code);
        let asking: Vec<(String, bool, bool)> = self
            .devices
            .iter()
            .filter_map(|(id, d)| {
                d.code
                    .as_ref()
                    .filter(|c| c.phone == phone)
                    .map(|c| (id.clone(), c.hash == hash, c.issued.elapsed() <= CODE_LIFETIME))
            })
            .collect();
        if asking.is_empty() {
            return Err(format!("no page asked for a pairing code for {phone}"));
        }
        let Some((device, _, fresh)) = asking.into_iter().find(|(_, right, _)| *right) else {
            return Err(format!("wrong code: {code} is not the code the page shows for {phone}"));
        };
        if !fresh {
            return Err(format!(
                "code {code} expired: the phone accepts a code for {} s",
                CODE_LIFETIME.as_secs()
            ));
        }
        self.link(config, &device, phone, push_name);
        Ok(())
    }

    /// Whether a wid is on WhatsApp: `{exists, phone, lid}`.
    pub(crate) fn exists(&mut self, config: &SimConfig, conn: u64, wid: &str) -> Result<Value, Refusal> {
        self.linked(conn)?;
        let phone = self.phone_of_wid(wid)?;
        self.exists_queries += 1;
        let Some(phone) = phone else { return Ok(json!({"exists": false})) };
        if !is_on_whatsapp(&phone) {
            return Ok(json!({"exists": false}));
        }
        let lid = config.lid_migrated.then(|| self.lid(&phone));
        Ok(json!({"exists": true, "phone": phone, "lid": lid, "biz": self.businesses.contains_key(&phone)}))
    }

    /// The address book of the account `phone`, as its phone syncs it to linked devices (the
    /// WhatsApp users in it: numbers not on WhatsApp never reach WhatsApp Web).
    fn address_book_event(&mut self, config: &SimConfig, phone: &str) -> Option<Value> {
        let entries = self.address_books.get(phone)?.clone();
        let contacts: Vec<Value> = entries
            .iter()
            .filter(|(number, _)| is_on_whatsapp(number))
            .map(|(number, name)| {
                let lid = config.lid_migrated.then(|| self.lid(number));
                let first = name.split_whitespace().next().unwrap_or(name);
                let verified = self.businesses.get(number);
                json!({"phone": number, "lid": lid, "name": name, "shortName": first,
                       "business": verified.is_some(), "verifiedName": verified})
            })
            .collect();
        Some(json!({"type": "contacts", "contacts": contacts}))
    }

    /// The user of the account `phone` saves `entries` (number, name) as their address book: the
    /// phone syncs it to the connected linked devices now, and to the others when they connect.
    pub(crate) fn set_address_book(
        &mut self,
        config: &SimConfig,
        phone: &str,
        entries: Vec<(String, String)>,
    ) {
        self.address_books.insert(phone.to_string(), entries);
        let Some(event) = self.address_book_event(config, phone) else { return };
        for device in self.linked_devices(phone) {
            if let Some(conn) = self.active_conn(&device) {
                self.push(conn, event.clone());
            }
        }
    }

    /// The contacts part of a linked device's sync when it connects: its account's address book.
    pub(crate) fn sync_address_book(&mut self, config: &SimConfig, conn: u64) {
        let Ok((_, _, phone)) = self.linked(conn) else { return };
        let phone = phone.to_string();
        if let Some(event) = self.address_book_event(config, &phone) {
            self.push(conn, event);
        }
    }

    /// WhatsApp user `phone` is a business account named `verified_name`.
    pub(crate) fn set_business(&mut self, phone: &str, verified_name: &str) {
        self.businesses.insert(phone.to_string(), verified_name.to_string());
    }

    /// The phone number behind `<digits>@c.us` or a LID handed out; None for an unknown LID.
    fn phone_of_wid(&self, wid: &str) -> Result<Option<String>, Refusal> {
        let (user, server) = wid.split_once('@').ok_or((
            400,
            "BAD_WID",
            format!("\"{wid}\" is not a wid (<user>@<server>)"),
        ))?;
        match server {
            "c.us" | "s.whatsapp.net" => Ok(Some(user.to_string())),
            "lid" => Ok(self.phones_by_lid.get(user).cloned()),
            other => Err((400, "UNSUPPORTED", format!("@{other} chats are not modelled (1:1 chats only)"))),
        }
    }

    pub(crate) fn send(
        &mut self,
        config: &SimConfig,
        conn: u64,
        msg: &OutgoingMessage,
    ) -> Result<Accepted, Refusal> {
        self.send_at(config, conn, msg, now_ms())
    }

    pub(crate) fn send_at(
        &mut self,
        config: &SimConfig,
        conn: u64,
        msg: &OutgoingMessage,
        now: u64,
    ) -> Result<Accepted, Refusal> {
        let (_, _, sender) = self.linked(conn)?;
        let sender = sender.to_string();
        let to_phone = self.phone_of_wid(&msg.to)?.ok_or((
            404,
            "UNKNOWN_LID",
            format!("{} is not a LID WhatsApp handed out", msg.to),
        ))?;
        let expected_from = if msg.to.ends_with("@lid") {
            format!("{}@lid", lid_of(&sender))
        } else {
            format!("{sender}@c.us")
        };
        if msg.from != expected_from {
            return Err((
                400,
                "UNKNOWN_SENDER",
                format!(
                    "from {} to {}: the recipient would see an unknown user (expected from {expected_from})",
                    msg.from, msg.to
                ),
            ));
        }
        if !is_on_whatsapp(&to_phone) {
            return Err((404, "NOT_ON_WHATSAPP", format!("{to_phone} is not a WhatsApp account")));
        }
        // A media message's text is its caption; its file must open as the recipient opens it.
        let (body, media) = match &msg.media {
            None if msg.kind == "chat" && !msg.body.is_empty() => (msg.body.clone(), None),
            Some(media)
                if media.kind == msg.kind && super::media::MEDIA_KINDS.contains(&media.kind.as_str()) =>
            {
                (media.caption.clone().unwrap_or_default(), Some(self.mms.open(media)?))
            }
            _ => {
                return Err((
                    400,
                    "UNSUPPORTED",
                    "only text (type chat, non-empty body) and media messages (image, video, audio, ptt, document, sticker with their media) are modelled".into(),
                ));
            }
        };
        check_message_id(&msg.id).map_err(|e| (400, "BAD_ID", e))?;
        if let Some(known) = self.sent.iter().find(|m| m.id == msg.id && m.from == sender) {
            // The page resending a message it had sent when it went away (WhatsApp Web resends
            // its pending messages after a restart): WhatsApp has it, nothing new happens.
            let same = known.to == to_phone && known.body == body;
            if msg.resend && same {
                return Ok(Accepted { id: msg.id.clone(), ack: known.ack, new: false });
            }
            return Err((409, "DUPLICATE", format!("message id \"{}\" was sent already", msg.id)));
        }
        if let Some(throttle) = &config.throttle {
            let accepted: Vec<u64> = self.sent.iter().filter(|m| m.from == sender).map(|m| m.at_ms).collect();
            let punished_until = self.punished_until.get(&sender).copied().unwrap_or(0);
            if let Err(why) = throttle.check(&accepted, punished_until, now) {
                self.throttled += 1;
                let until = now + throttle.penalty.as_millis() as u64;
                self.punished_until.insert(sender, until.max(punished_until));
                return Err((429, "RATE_OVERLIMIT", why));
            }
        }
        self.sent.push(Received {
            id: msg.id.clone(),
            from: sender.clone(),
            to: to_phone,
            body,
            at_ms: now,
            ack: 1,
            media,
            browser: msg.browser.clone(),
        });
        self.chats.insert((sender, msg.id.clone()), msg.to.clone());
        Ok(Accepted { id: msg.id.clone(), ack: 1, new: true })
    }

    fn set_ack(&mut self, id: &str, ack: i32) -> Result<(), String> {
        let m = self
            .sent
            .iter_mut()
            .find(|m| m.id == id)
            .ok_or_else(|| format!("no message with id {id} was sent through this WhatsApp"))?;
        if m.ack >= ack {
            return Ok(());
        }
        m.ack = ack;
        let from = m.from.clone();
        let chat = self.chats.get(&(from.clone(), id.to_string())).cloned();
        self.deliver(&from, json!({"type": "ack", "id": id, "remote": chat, "ack": ack}));
        Ok(())
    }

    /// The recipient's phone got the message (ack 2), unless it is off.
    pub(crate) fn delivered(&mut self, id: &str) {
        let off = self.sent.iter().find(|m| m.id == id).is_some_and(|m| self.phones_off.contains(&m.to));
        if !off {
            let _ = self.set_ack(id, 2);
        }
    }

    pub(crate) fn read(&mut self, id: &str) -> Result<(), String> {
        if let Some(m) = self.sent.iter().find(|m| m.id == id)
            && self.phones_off.contains(&m.to)
        {
            return Err(format!("{}'s phone is off: nobody can read message {id} now", m.to));
        }
        self.set_ack(id, 3)
    }

    /// The phone of WhatsApp user `phone` goes off, or on: on, it acks what reached it.
    pub(crate) fn set_phone_online(&mut self, phone: &str, online: bool) {
        if !online {
            self.phones_off.insert(phone.to_string());
            return;
        }
        if self.phones_off.remove(phone) {
            let waiting: Vec<String> =
                self.sent.iter().filter(|m| m.to == phone && m.ack == 1).map(|m| m.id.clone()).collect();
            for id in waiting {
                let _ = self.set_ack(&id, 2);
            }
        }
    }

    /// WhatsApp user `from` sends `body` to the linked account `to` (see [`Kind`]).
    pub(crate) fn send_from_phone(
        &mut self,
        config: &SimConfig,
        from: &str,
        to: &str,
        body: &str,
        kind: Kind<'_>,
    ) -> Result<String, String> {
        let quoted = match kind {
            Kind::Reply(id) => Some(self.quoted(id, from, to)?),
            _ => None,
        };
        if !is_on_whatsapp(from) {
            return Err(format!("{from} is not a WhatsApp account (8 to 15 digits, not starting with 000)"));
        }
        if self.linked_devices(to).is_empty() {
            return Err(format!("{to} has no linked page to receive the message"));
        }
        if body.is_empty() && !matches!(kind, Kind::Media(_)) {
            return Err("the message body is empty".into());
        }
        let id = random_hex(16).to_uppercase();
        let lid = config.lid_migrated.then(|| self.lid(from));
        let push_name = self.push_names.get(from).cloned();
        let t = now_ms() / 1000;
        self.from_phones.insert(id.clone(), (from.to_string(), body.to_string()));
        let undecryptable = kind == Kind::Undecryptable;
        let media = match kind {
            Kind::Media(fields) => Some(fields.clone()),
            _ => None,
        };
        self.deliver_message(
            to,
            json!({"type": "msg", "id": id, "phone": from, "lid": lid, "pushName": push_name, "body": body, "t": t, "quoted": quoted, "undecryptable": undecryptable, "media": media}),
        );
        Ok(id)
    }

    /// The device of `conn` could not decrypt message `id` and asks for it again (a retry
    /// receipt): the sender's phone encrypts it again, for a session the device has now, and
    /// WhatsApp hands it over again.
    pub(crate) fn retry(&mut self, conn: u64, id: &str) -> Result<(), Refusal> {
        let (_, device, _) = self.linked(conn)?;
        let device = device.to_string();
        let resent = self.devices.get_mut(&device).and_then(|d| {
            let event = d.inbox.get_mut(id)?;
            event["undecryptable"] = json!(false);
            Some(event.clone())
        });
        match resent {
            Some(event) => {
                self.push(conn, event);
                Ok(())
            }
            None => Err((404, "NO_SUCH_MESSAGE", format!("no message {id} waits for this device"))),
        }
    }

    /// What a reply carries of the message it quotes: its id, whether the account (`to`) sent it,
    /// and its text.
    fn quoted(&self, id: &str, from: &str, to: &str) -> Result<Value, String> {
        if let Some(m) = self.sent.iter().find(|m| m.id == id && m.from == to && m.to == from) {
            return Ok(json!({"id": id, "fromMe": true, "body": m.body}));
        }
        match self.from_phones.get(id) {
            Some((sender, body)) if sender == from => Ok(json!({"id": id, "fromMe": false, "body": body})),
            _ => Err(format!("{from} cannot quote message {id}: it is not in their chat with {to}")),
        }
    }

    /// WhatsApp user `phone` names themselves `name` (their profile name: the push name their
    /// messages carry).
    pub(crate) fn set_push_name(&mut self, phone: &str, name: &str) {
        self.push_names.insert(phone.to_string(), name.to_string());
    }

    pub(crate) fn logout_from_phone(&mut self, phone: &str) -> Result<(), String> {
        let devices = self.linked_devices(phone);
        if devices.is_empty() {
            return Err(format!("{phone} has no linked device"));
        }
        for device in devices {
            self.unlink(&device);
        }
        Ok(())
    }

    fn unlink(&mut self, device: &str) {
        if let Some(d) = self.devices.get_mut(device) {
            d.link = None;
            d.pending.clear();
            d.inbox.clear();
        }
        let conns: Vec<u64> =
            self.conns.iter().filter(|(_, c)| c.device == device).map(|(id, _)| *id).collect();
        for conn in conns {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.active = false;
            }
            self.push(conn, json!({"type": "logged-out", "reason": "removed from the phone"}));
        }
    }

    /// The page logs itself out.
    pub(crate) fn logout(&mut self, conn: u64) -> Result<(), Refusal> {
        let device = self.conns.get(&conn).map(|c| c.device.clone()).ok_or((
            409,
            "NO_CONNECTION",
            "this connection is closed".to_string(),
        ))?;
        if let Some(d) = self.devices.get_mut(&device) {
            d.link = None;
            d.pending.clear();
            d.inbox.clear();
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.active = false;
        }
        Ok(())
    }

    pub(crate) fn conflict(&mut self, phone: &str) -> Result<(), String> {
        let devices = self.linked_devices(phone);
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.active && devices.contains(&c.device))
            .map(|(id, _)| *id)
            .collect();
        if conns.is_empty() {
            return Err(format!("no page of {phone} is connected"));
        }
        for conn in conns {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.active = false;
            }
            self.push(conn, json!({"type": "conflict"}));
        }
        Ok(())
    }

    /// "Use here": this page takes the account back.
    pub(crate) fn takeover(&mut self, conn: u64) -> Result<(), Refusal> {
        let c =
            self.conns.get(&conn).ok_or((409, "NO_CONNECTION", "this connection is closed".to_string()))?;
        let linked = self.devices.get(&c.device).is_some_and(|d| d.link.is_some());
        if !linked {
            return Err((401, "LOGGED_OUT", "this device is not linked".into()));
        }
        self.activate(conn);
        Ok(())
    }

    pub(crate) fn conn_build(&self, conn: u64) -> Option<Build> {
        self.conns.get(&conn).map(|c| c.build)
    }
}

fn check_phone(phone: &str) -> Result<(), String> {
    if is_on_whatsapp(phone) {
        Ok(())
    } else {
        Err(format!("\"{phone}\" is not a WhatsApp account (8 to 15 digits, not starting with 000)"))
    }
}

/// What a WhatsApp user's message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    Text,
    /// A reply to the message with this id (one the account sent to the user, or one the user
    /// sent to the account).
    Reply(&'a str),
    /// The first copy reaches the device undecryptable (no Signal session with it yet, as after
    /// a new link): the page shows a `ciphertext` placeholder and asks for it again.
    Undecryptable,
    /// A file (its media fields: the phone uploaded it, [`super::media::Mms::upload_from_phone`]);
    /// the body is its caption, maybe empty.
    Media(&'a Value),
}

/// A message as the page hands it to the server.
pub(crate) struct OutgoingMessage {
    pub id: String,
    pub to: String,
    pub from: String,
    pub kind: String,
    pub body: String,
    /// The page sends again a message it had stored as pending (ack 0) before a restart.
    pub resend: bool,
    /// A media message's file and caption.
    pub media: Option<super::media::OutgoingMedia>,
    /// The browser the sending page announced (its `Sec-CH-UA` header).
    pub browser: Option<String>,
}

/// The ids WhatsApp clients make: WhatsApp Web `3EB0` and 16 (`newId_DEPRECATED`) or 18
/// (`newId`) uppercase hex digits, phones 32 hex digits, other clients other letters and
/// digits. The server takes any such id; the simulator refuses what no client makes (empty,
/// longer than 128, anything but ASCII letters and digits, which would also break the key
/// `true_<chat>_<id>`).
pub(crate) fn check_message_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "message id \"{id}\" is not a WhatsApp message id (1 to 128 ASCII letters and digits, \
             e.g. 3EB0 and 18 uppercase hex digits from MsgKey.newId())"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{DEVICE_PLATFORM, Throttle};
    use base64::engine::general_purpose::STANDARD;
    use std::time::Duration;

    const PHONE: &str = "5511999990000";
    const FRIEND: &str = "5511988887777";

    fn keys(seed: u8) -> (DeviceKeys, [u8; 32]) {
        let adv = [seed.wrapping_add(2); 32];
        let keys = DeviceKeys {
            noise: [seed; 32],
            identity: [seed.wrapping_add(1); 32],
            adv_hash: Sha256::digest(adv).into(),
            platform: DEVICE_PLATFORM.into(),
        };
        (keys, adv)
    }

    fn events(rx: &mut mpsc::UnboundedReceiver<Value>) -> Vec<Value> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn of_type<'a>(events: &'a [Value], kind: &str) -> Option<&'a Value> {
        events.iter().find(|e| e["type"] == kind)
    }

    /// A page that connected without a login and shows its first QR: its connection, its events, the QR.
    fn unpaired(world: &mut World) -> (u64, mpsc::UnboundedReceiver<Value>, String) {
        let (keys, adv) = keys(1);
        let request = ConnectRequest {
            device: "d1".into(),
            keys: keys.clone(),
            login: None,
            replaces: None,
            build: Build::Current,
        };
        let (conn, after) = world.connect(request);
        let AfterConnect::Batch { device, conn: batch_conn, generation } = after else {
            panic!("expected a QR batch")
        };
        assert_eq!(batch_conn, conn);
        assert!(world.show_ref(&device, conn, generation));
        let mut rx = world.take_events(conn).expect("events");
        let shown = events(&mut rx);
        let reference = of_type(&shown, "ref").expect("a ref")["ref"].as_str().unwrap().to_string();
        let qr = format!(
            "{reference},{},{},{},{DEVICE_PLATFORM}",
            STANDARD.encode(keys.noise),
            STANDARD.encode(keys.identity),
            STANDARD.encode(adv)
        );
        (conn, rx, qr)
    }

    #[test]
    fn scanning_links_the_page_and_its_login_reconnects() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (_, mut rx, qr) = unpaired(&mut world);
        world.scan(&config, &qr, PHONE, "Tester").expect("linked");
        let paired = events(&mut rx);
        let success = of_type(&paired, "pair-success").expect("pair-success");
        assert_eq!(success["lid"], lid_of(PHONE));
        // The same QR cannot be used twice.
        assert!(world.scan(&config, &qr, PHONE, "Tester").unwrap_err().contains("expired"));

        let (keys, _) = keys(1);
        let token = success["token"].as_str().unwrap().to_string();
        let request = ConnectRequest {
            device: "d1".into(),
            keys,
            login: Some(token),
            replaces: None,
            build: Build::Current,
        };
        let (conn, after) = world.connect(request);
        assert!(matches!(after, AfterConnect::Sync { .. }));
        let mut rx = world.take_events(conn).unwrap();
        assert_eq!(of_type(&events(&mut rx), "connected").expect("connected")["phone"], PHONE);

        // Sending from the wrong addressing is refused, the right one recorded with ack 1.
        let lid = lid_of(FRIEND);
        world.phones_by_lid.insert(lid.clone(), FRIEND.into());
        let wrong = OutgoingMessage {
            id: "3EB0AA".into(),
            to: format!("{lid}@lid"),
            from: format!("{PHONE}@c.us"),
            kind: "chat".into(),
            body: "hi".into(),
            resend: false,
            media: None,
            browser: None,
        };
        assert!(world.send(&config, conn, &wrong).unwrap_err().2.contains("unknown user"));
        let right = OutgoingMessage { from: format!("{}@lid", lid_of(PHONE)), ..wrong };
        world.send(&config, conn, &right).expect("sent");
        world.delivered("3EB0AA");
        world.read("3EB0AA").expect("read");
        let acks: Vec<i64> = events(&mut rx)
            .iter()
            .filter(|e| e["type"] == "ack")
            .map(|e| e["ack"].as_i64().unwrap())
            .collect();
        assert_eq!(acks, [2, 3]);
        assert_eq!(world.sent[0].to, FRIEND);

        // Incoming once synced; logout from the phone ends the login.
        world.finish_sync(conn);
        world.send_from_phone(&config, FRIEND, PHONE, "hello", Kind::Text).expect("sent to the account");
        assert_eq!(of_type(&events(&mut rx), "msg").expect("msg")["lid"], lid);
        world.logout_from_phone(PHONE).expect("logged out");
        assert!(of_type(&events(&mut rx), "logged-out").is_some());
        assert!(world.send_from_phone(&config, FRIEND, PHONE, "again", Kind::Text).is_err());
    }

    #[test]
    fn a_qr_of_another_browser_is_refused() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (_, _rx, qr) = unpaired(&mut world);
        let (other, _) = keys(9);
        let mut parts: Vec<String> = qr.split(',').map(String::from).collect();
        parts[1] = STANDARD.encode(other.noise);
        let err = world.scan(&config, &parts.join(","), PHONE, "Tester").unwrap_err();
        assert!(err.contains("noise"), "{err}");
        let err = world.scan(&config, "2@never-shown,a,b,c,1", PHONE, "Tester").unwrap_err();
        assert!(err.contains("not base64") || err.contains("never"), "{err}");
    }

    #[test]
    fn a_pairing_code_links_the_phone_it_was_asked_for() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (conn, mut rx, _) = unpaired(&mut world);
        assert_eq!(
            world
                .link_code(conn, Some("0001234567".into()), Some(code_hash("ABCDEFGH")), false)
                .unwrap_err()
                .0,
            404
        );
        world.link_code(conn, Some(PHONE.into()), Some(code_hash("ABCDEFGH")), false).expect("asked");
        assert!(world.enter_code(&config, FRIEND, "ABCD-EFGH", "x").unwrap_err().contains("no page asked"));
        assert!(world.enter_code(&config, PHONE, "ABCD-EFGJ", "x").unwrap_err().contains("wrong code"));
        world.enter_code(&config, PHONE, "abcd-efgh", "Tester").expect("linked");
        assert!(of_type(&events(&mut rx), "pair-success").is_some());
    }

    #[test]
    fn a_second_connection_of_a_device_conflicts_the_first() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (_, mut rx, qr) = unpaired(&mut world);
        world.scan(&config, &qr, PHONE, "Tester").unwrap();
        let token = of_type(&events(&mut rx), "pair-success").unwrap()["token"].as_str().unwrap().to_string();
        let connect = |world: &mut World| {
            let request = ConnectRequest {
                device: "d1".into(),
                keys: keys(1).0,
                login: Some(token.clone()),
                replaces: None,
                build: Build::Current,
            };
            let (conn, _) = world.connect(request);
            (conn, world.take_events(conn).unwrap())
        };
        let (first, mut first_rx) = connect(&mut world);
        let (_second, _) = connect(&mut world);
        assert!(of_type(&events(&mut first_rx), "conflict").is_some());
        world.takeover(first).expect("took over");
        assert!(of_type(&events(&mut first_rx), "connected").is_some());
        world.conflict(PHONE).expect("conflict");
        assert!(of_type(&events(&mut first_rx), "conflict").is_some());
    }

    /// A page linked to PHONE and connected again with its login: its connection and events.
    fn linked_page(world: &mut World, config: &SimConfig) -> (u64, mpsc::UnboundedReceiver<Value>) {
        let (_, mut rx, qr) = unpaired(world);
        world.scan(config, &qr, PHONE, "Tester").unwrap();
        let token = of_type(&events(&mut rx), "pair-success").unwrap()["token"].as_str().unwrap().to_string();
        let request = ConnectRequest {
            device: "d1".into(),
            keys: keys(1).0,
            login: Some(token),
            replaces: None,
            build: Build::Current,
        };
        let (conn, _) = world.connect(request);
        let mut rx = world.take_events(conn).unwrap();
        events(&mut rx);
        world.lid(FRIEND);
        (conn, rx)
    }

    fn text(id: &str, body: &str) -> OutgoingMessage {
        OutgoingMessage {
            id: id.into(),
            to: format!("{}@lid", lid_of(FRIEND)),
            from: format!("{}@lid", lid_of(PHONE)),
            kind: "chat".into(),
            body: body.into(),
            resend: false,
            media: None,
            browser: None,
        }
    }

    #[test]
    fn ids_chosen_by_the_sender_are_taken_once() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (conn, mut rx) = linked_page(&mut world, &config);
        // WhatsApp Web's newId() (3EB0 + 18 hex), newId_DEPRECATED() (3EB0 + 16), a phone's (32 hex).
        for id in ["3EB0A1B2C3D4E5F60718", "3EB0A1B2C3D4E5F6071829", "0123456789ABCDEF0123456789ABCDEF"] {
            let accepted = world.send(&config, conn, &text(id, "hi")).expect("accepted");
            assert_eq!(accepted, Accepted { id: id.into(), ack: 1, new: true });
        }
        for bad in ["", "3EB0_1", "3EB0 1", &"A".repeat(129)] {
            assert_eq!(world.send(&config, conn, &text(bad, "hi")).unwrap_err().1, "BAD_ID", "{bad:?}");
        }
        // The same id again is a duplicate; the page resending its pending message is not new.
        let id = "3EB0A1B2C3D4E5F60718";
        assert_eq!(world.send(&config, conn, &text(id, "hi")).unwrap_err().1, "DUPLICATE");
        world.delivered(id);
        let resent = OutgoingMessage { resend: true, ..text(id, "hi") };
        assert_eq!(
            world.send(&config, conn, &resent).unwrap(),
            Accepted { id: id.into(), ack: 2, new: false }
        );
        let other = OutgoingMessage { resend: true, ..text(id, "something else") };
        assert_eq!(world.send(&config, conn, &other).unwrap_err().1, "DUPLICATE");
        assert_eq!(world.sent.iter().filter(|m| m.id == id).count(), 1, "each accepted message once");
        assert_eq!(world.sent.len(), 3);
        // Acks name the chat, so a page that restarted finds the message's key.
        let ack = of_type(&events(&mut rx), "ack").cloned().expect("an ack");
        assert_eq!(ack["remote"], format!("{}@lid", lid_of(FRIEND)));
        assert_eq!(ack["id"], id);
    }

    #[test]
    fn a_sender_that_goes_too_fast_is_refused_and_punished() {
        let throttle = Throttle { max_per_minute: 4, max_burst: 2, penalty: Duration::from_secs(10) };
        let config = SimConfig { throttle: Some(throttle), ..SimConfig::default() };
        let mut world = World::default();
        let (conn, _rx) = linked_page(&mut world, &config);
        let t0 = 1_000_000;
        world.send_at(&config, conn, &text("3EB001", "a"), t0).expect("1st");
        world.send_at(&config, conn, &text("3EB002", "b"), t0 + 100).expect("2nd");
        let refused = world.send_at(&config, conn, &text("3EB003", "c"), t0 + 200).unwrap_err();
        assert_eq!((refused.0, refused.1), (429, "RATE_OVERLIMIT"));
        assert!(refused.2.contains("in a second"), "{}", refused.2);
        // Punished: even a slow send is refused for the penalty, then taken (the same id too).
        assert!(world.send_at(&config, conn, &text("3EB003", "c"), t0 + 5_000).is_err());
        assert_eq!(world.throttled, 2);
        world.send_at(&config, conn, &text("3EB003", "c"), t0 + 15_300).expect("after the penalty");
        world.send_at(&config, conn, &text("3EB004", "d"), t0 + 20_000).expect("4th in the minute");
        let refused = world.send_at(&config, conn, &text("3EB005", "e"), t0 + 30_000).unwrap_err();
        assert!(refused.2.contains("in a minute"), "{}", refused.2);
        assert_eq!(world.throttled, 3);
        assert_eq!(world.sent.len(), 4, "refused sends are not WhatsApp's");
        let times: Vec<u64> = world.sent.iter().map(|m| m.at_ms).collect();
        assert!(crate::simulator::max_in_window(&times, 60_000) <= 4);
        assert!(crate::simulator::max_in_window(&times, 1_000) <= 2);
    }

    #[test]
    fn a_phone_that_is_off_acks_nothing_until_it_is_on() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (conn, mut rx) = linked_page(&mut world, &config);
        world.set_phone_online(FRIEND, false);
        world.send(&config, conn, &text("3EB0AB", "hi")).unwrap();
        world.delivered("3EB0AB");
        assert!(world.read("3EB0AB").unwrap_err().contains("phone is off"));
        assert_eq!(world.sent[0].ack, 1);
        assert!(of_type(&events(&mut rx), "ack").is_none());
        world.set_phone_online(FRIEND, true);
        assert_eq!(world.sent[0].ack, 2);
        assert_eq!(of_type(&events(&mut rx), "ack").expect("delivered")["ack"], 2);
        world.read("3EB0AB").expect("read");
        assert_eq!(world.sent[0].ack, 3);
    }

    /// The page connected again with its login (the previous connection gone): its events.
    fn reconnect(world: &mut World, previous: u64) -> (u64, mpsc::UnboundedReceiver<Value>) {
        world.close(previous);
        let token = world.devices["d1"].link.as_ref().unwrap().token.clone();
        let request = ConnectRequest {
            device: "d1".into(),
            keys: keys(1).0,
            login: Some(token),
            replaces: None,
            build: Build::Current,
        };
        let (conn, _) = world.connect(request);
        let rx = world.take_events(conn).unwrap();
        (conn, rx)
    }

    fn message_ids(events: &[Value]) -> Vec<String> {
        events.iter().filter(|e| e["type"] == "msg").map(|e| e["id"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn a_message_is_sent_again_until_the_device_acknowledges_it() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (conn, mut rx) = linked_page(&mut world, &config);
        // Before the offline delivery is done nothing goes live; then the held messages come first.
        let first = world.send_from_phone(&config, FRIEND, PHONE, "one", Kind::Text).unwrap();
        assert!(message_ids(&events(&mut rx)).is_empty());
        world.finish_sync(conn);
        let second = world.send_from_phone(&config, FRIEND, PHONE, "two", Kind::Text).unwrap();
        assert_eq!(message_ids(&events(&mut rx)), [first.clone(), second.clone()]);
        // The page stored and acknowledged the first only, then died: the second comes again.
        world.receipt(conn, &first).unwrap();
        assert_eq!(world.unacknowledged(PHONE), 1);
        let (conn, mut rx) = reconnect(&mut world, conn);
        world.finish_sync(conn);
        assert_eq!(message_ids(&events(&mut rx)), std::slice::from_ref(&second));
        world.receipt(conn, &second).unwrap();
        assert_eq!(world.unacknowledged(PHONE), 0);
        let (conn, mut rx) = reconnect(&mut world, conn);
        world.finish_sync(conn);
        assert!(message_ids(&events(&mut rx)).is_empty(), "nothing once acknowledged");
    }

    #[test]
    fn a_reply_carries_the_message_it_quotes() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (conn, mut rx) = linked_page(&mut world, &config);
        world.finish_sync(conn);
        world.send(&config, conn, &text("3EB0C0FFEE", "our offer")).unwrap();
        let asked = world.send_from_phone(&config, FRIEND, PHONE, "how much?", Kind::Text).unwrap();
        world.send_from_phone(&config, FRIEND, PHONE, "yes please", Kind::Reply("3EB0C0FFEE")).unwrap();
        world.send_from_phone(&config, FRIEND, PHONE, "I meant", Kind::Reply(&asked)).unwrap();
        let replies: Vec<Value> =
            events(&mut rx).into_iter().filter(|e| e["type"] == "msg").map(|e| e["quoted"].clone()).collect();
        assert_eq!(
            replies,
            [
                Value::Null,
                json!({"id": "3EB0C0FFEE", "fromMe": true, "body": "our offer"}),
                json!({"id": asked, "fromMe": false, "body": "how much?"}),
            ]
        );
        let err = world
            .send_from_phone(&config, "5511977776666", PHONE, "hm", Kind::Reply("3EB0C0FFEE"))
            .unwrap_err();
        assert!(err.contains("cannot quote"), "{err}");
    }

    #[test]
    fn the_phone_syncs_its_address_book_and_existence_queries_are_counted() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (conn, mut rx) = linked_page(&mut world, &config);
        world.set_business("5511977776666", "Acme Ltda");
        let book = [(FRIEND, "Ana Pérez"), ("5511977776666", "Acme"), ("0001234567", "Nobody")];
        world.set_address_book(
            &config,
            PHONE,
            book.iter().map(|(n, m)| (n.to_string(), m.to_string())).collect(),
        );
        let synced = events(&mut rx);
        let contacts = of_type(&synced, "contacts").expect("synced at once")["contacts"].clone();
        assert_eq!(contacts.as_array().map(Vec::len), Some(2), "only WhatsApp users: {contacts}");
        assert_eq!(
            (contacts[0]["name"].as_str(), contacts[0]["shortName"].as_str()),
            (Some("Ana Pérez"), Some("Ana"))
        );
        assert_eq!(contacts[0]["lid"].as_str(), Some(lid_of(FRIEND).as_str()));
        assert_eq!(
            (contacts[1]["business"].as_bool(), contacts[1]["verifiedName"].as_str()),
            (Some(true), Some("Acme Ltda"))
        );
        // Again with every sync of a connection.
        world.sync_address_book(&config, conn);
        assert!(of_type(&events(&mut rx), "contacts").is_some());

        assert_eq!(world.exists_queries, 0);
        assert_eq!(world.exists(&config, conn, "5511977776666@c.us").unwrap()["biz"], true);
        assert_eq!(world.exists(&config, conn, "0001234567@c.us").unwrap()["exists"], false);
        assert!(world.exists(&config, conn, "nonsense").is_err(), "refused, not answered");
        assert_eq!(world.exists_queries, 2);
    }

    #[test]
    fn an_undecryptable_message_comes_again_after_a_retry_receipt() {
        let config = SimConfig::default();
        let mut world = World::default();
        let (conn, mut rx) = linked_page(&mut world, &config);
        world.finish_sync(conn);
        let id = world.send_from_phone(&config, FRIEND, PHONE, "secret", Kind::Undecryptable).unwrap();
        let first = events(&mut rx).into_iter().find(|e| e["type"] == "msg").unwrap();
        assert_eq!(first["undecryptable"], true);
        world.retry(conn, &id).unwrap();
        let again = events(&mut rx).into_iter().find(|e| e["type"] == "msg").unwrap();
        assert_eq!(
            (&again["id"], &again["undecryptable"], &again["body"]),
            (&json!(id), &json!(false), &json!("secret"))
        );
        assert_eq!(world.unacknowledged(PHONE), 1, "held until the page acknowledges it");
        assert_eq!(world.retry(conn, "NOPE").unwrap_err().0, 404);
    }
}
