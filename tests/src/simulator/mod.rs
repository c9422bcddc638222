//! The WhatsApp Web simulator: WhatsApp's servers, WhatsApp Web's page and the user's phone, on
//! loopback, for tests and the local stack.
//!
//! # What it models
//!
//! The simulator serves `https://web.whatsapp.com/` over TLS (a certificate made at start;
//! Chromium reaches it through [`Simulator::chromium_args`]) with a page that offers WhatsApp
//! Web's own module layer: `window.Debug.VERSION` once the modules are ready and
//! `window.require(name)`, which throws `Requiring unknown module "<name>"` for a module the
//! build lacks, as the real page does. The page's modules behave as WhatsApp Web's do for the
//! flow drivers use: linking (QR or phone-number code), login kept in the browser profile,
//! sending text, acks, incoming messages, contacts, number lookups, logout and conflicts. Its
//! backend (`/sim/*` on the same origin) plays WhatsApp's servers, and [`Simulator`] (or the
//! control API on [`Simulator::control_url`]) plays the phone and the other WhatsApp users.
//!
//! The page's surface, module by module (current build; [`Build::Legacy`] differs where noted):
//!
//! | module | exports |
//! |---|---|
//! | `WAWebSocketModel` | `Socket`: `state` (`OPENING`, `UNPAIRED`, `UNPAIRED_IDLE`, `PAIRING`, `CONNECTED`, `CONFLICT`), `hasSynced`, `logout()`, `takeover()`, `reconnect()` |
//! | `WAWebConnModel` | `Conn`: `ref` (the bare `2@…` ref), `pushname`, `platform`, `serialize()`, `canSetMyPushname()` |
//! | `WAWebCmd` | `Cmd`: `refreshQR()`; events `logout`, `logout_from_bridge`, `offline_progress_update_from_bridge` |
//! | `WAWebStreamModel` | `Stream`: `markAvailable()`, `markUnavailable()` |
//! | `WAWebOfflineHandler` | `OfflineMessageHandler.getOfflineDeliveryProgress()` |
//! | `WAWebUserPrefsInfoStore` | `waNoiseInfo.get()` → `{staticKeyPair: {pubKey, privKey}}` |
//! | `WAWebSignalStoreApi` | `waSignalStore.getRegistrationInfo()` → `{registrationId, identityKeyPair}` |
//! | `WAWebUserPrefsMultiDevice` | `getADVSecretKey()` (base64) |
//! | `WAWebCompanionRegClientUtils` | `DEVICE_PLATFORM` (`"1"`, Chrome) |
//! | `WAWebAdvSignatureApi` | `getADVSecretKey()` (async), `getADVEncodedIdentity()` |
//! | `WABase64` | `encodeB64`, `decodeB64`, `encodeB64UrlSafe`, `decodeB64UrlSafe` |
//! | `WAWebUserPrefsMeUser` | `getMaybeMePnUser`, `getMaybeMeLidUser`, `getMeUserOrThrow`, `getMePnUserOrThrow`, `getMeLidUserOrThrow`, `isMeAccount` (legacy: `getMaybeMeUser`, `getMeUser`, `isMeAccount`) |
//! | `WAWebAltDeviceLinkingApi` | `setPairingType`, `getPairingType`, `getCurrentRef`, `initializeAltDeviceLinking`, `startAltLinkingFlow(phone, showNotification)` → code, `initializeQRLinking` |
//! | `WAWebLaunchSocketUtils` | `refreshQR` |
//! | `WAWebCollections` | `Msg`, `Chat`, `Contact`, `Blocklist`, `BusinessProfile`, `Label`, `Status`, `GroupMetadata`; `Msg.getMessagesById([key])` → `{messages, eof, canceled}`; a chat's `msgs` (oldest first) with `msgLoadState.noEarlierMsgs`; incoming replies carry `quotedStanzaID`, `quotedRemoteJid`, `quotedParticipant`, `quotedMsg` |
//! | `WAWebChatLoadMessages` | `loadEarlierMsgs({chat})` (legacy: `loadEarlierMsgs(chat)`) → the next page of up to 50 (`WAWebCollectionConstants.PAGE_SIZE`) earlier stored messages, added to `chat.msgs` (`[]` and `noEarlierMsgs` at the start of the chat) |
//! | `WAWebWidFactory` | `createWid` (one instance per id), `createWidFromWidLike`, `createUserWid`, `createUserWidOrThrow`, `isWidlike`, `asUserWidOrThrow`, `asUserLidOrThrow`; wids have `user`, `server`, `_serialized`, `isLid()`, `isUser()`, `isGroup()`, `equals()`, `toString()` |
//! | `WAWebMsgKey` | the `MsgKey` class: `new MsgKey({from, to, id, participant, selfDir})` (wids only) or `({fromMe, remote, id})`, `newId()` (async: `3EB0` + 18 uppercase hex), `newId_DEPRECATED()` (`3EB0` + 16), `fromString`, `from`; `_serialized` is `true_<remote>_<id>` |
//! | `WAWebMsgKeyNewId` | `getMsgKeyNewSHA256Id()` (what `newId()` uses: SHA-256 of time, own phone user, 16 random bytes; first 9 bytes), `genMsgKeyUint()` |
//! | `WAWebDBMessageFindLocal` | the stored message table: `getMsgByMsgKey(key)`, `getMsgsByMsgKey(keys)` (message data), `getMsgsByMsgIdsAndChatId(ids, chat)` (rows of bare ids in a chat) |
//! | `WAWebFindChatAction` | `findOrCreateLatestChat(wid)` → `{chat, created}` |
//! | `WAWebSendMsgChatAction` | `addAndSendMsgToChat(chat, msg)` → `[added, sent]` (sent: `{messageSendResult: 'OK'}`; legacy: `'OK'`) |
//! | `WAWebGetEphemeralFieldsMsgActionsUtils` | `getEphemeralFields(chat)` |
//! | `WAWebQueryExistsJob` | `queryWidExists(wid)`, `queryPhoneExists('+<digits>')` (null when not on WhatsApp) |
//! | `WAWebMediaOpaqueData` | the `OpaqueData` class (its default export): `createFromData(blob, type)`, `retain`, `autorelease` (released, and unusable, a moment after the last), `autoreleaseWhenPromiseCompletes`, `url`, `size`, `type`, `formData`, `forceToBlob`, `validate` |
//! | `WAWebPrepRawMedia` | `prepRawMedia(opaqueData, {asDocument, isPtt, asGif, asSticker})` → a `WAWebMediaPrep.MediaPrep` whose `waitForPrep()` resolves to the `WAWebMediaData` model: `type` (from the mimetype, `document` with `asDocument`), `mimetype`, `size`, `filehash` (base64 SHA-256), `mediaBlob`, `filename`; images decoded for `fullWidth`, `fullHeight` and a JPEG `preview` (an undecodable image is refused); WhatsApp's size limits (16 MB media, 2 GB documents) |
//! | `WAWebMediaStorage` | `getOrCreateMediaObject(filehash)`: one media object per file (`consolidate`, `type` as the mmsv3 `IMAGE`/`DOCUMENT`/…, `size`, `mediaBlob`, `contentInfo`, `entries.addEntry`) |
//! | `WAWebMmsMediaTypes` | `MEDIA_TYPES`, `castToV4(mmsv3 type)`, `msgToMediaType({type, isGif, isNewsletter})` (throws for a non-media type), `getMsgMediaType` |
//! | `WAWebMediaDataUtils`, `WAWebMediaInMemoryBlobCache` | `shouldUseMediaCache(type)`; `InMemoryMediaBlobCache.put/get/replace/delete` by filehash |
//! | `WAWebMediaMmsV4Upload`, `WAWebUploadManager` | `uploadMedia({mimetype, mediaObject, mediaType, mediaKeyInfo?})` → `{kind: 'success', mediaEntry}` (`directPath`, `mediaKey`, `mediaKeyTimestamp`, `encFilehash`, `deprecatedMms3Url`) or `{kind: 'error'}`, the blob taken from the media object or the in-memory cache; `uploadUnencryptedMedia` (channels: `{kind: 'error'}`); `WAWebUploadManager.encryptAndUpload` |
//! | `WAWebDownloadManager` | `downloadManager.downloadAndMaybeDecrypt({directPath, encFilehash, filehash, mediaKey, type, signal})` → the decrypted `ArrayBuffer` (hashes and MAC checked; an error with `status` 404 when WhatsApp has no such file) |
//! | `WAWebApiContact`, `WAWebLidMigrationUtils` (current only) | the LID ↔ phone number mapping the page knows (`getPhoneNumber`, `getCurrentLid`, `getAlternateUserWid`), kept in the contact table and known again after a reload |
//! | `WAWebChatGetters`, `WAWebContactGetters`, `WAWebFrontendContactGetters`, `WAWebPhoneUtils`, `WALinkify`, `WAWebLinkPreviewChatAction`, `WAWebUpdateUnreadChatAction`, `WAWebSyncGatingUtils`, `WAWebCallCollection`, `WAWebMiscBrowserUtils`, `WAWebAddonReactionTableMode`, `WAWebAddonPollVoteTableMode`, `WAWebBackendJobsCommon`, `WAWebE2EProtoUtils` | what whatsapp-web.js 1.34.7 touches around the flow above |
//!
//! Media messages carry `mimetype`, `filehash`, `encFilehash`, `directPath`, `mediaKey`,
//! `mediaKeyTimestamp`, `size`, `filename`, `caption` (the body is the preview), a `mediaData`
//! (`mediaStage` `INIT` until downloaded, `FETCHING`, `RESOLVED` or `ERROR_MISSING`) and a
//! `mediaObject`; `msg.downloadMedia({downloadEvenIfExpensive, rmrReason})` fetches and decrypts
//! the file.
//!
//! Models and collections are Backbone-shaped like WhatsApp's: `on`/`off`/`once`/`trigger`,
//! `change:<field>` handlers get `(model, value, previous)`, a collection re-fires its models'
//! events and fires `add` with `(model, collection, options)`; collections have `get`,
//! `getModelsArray`, `find`, `models`; models have `serialize()`.
//!
//! Behaviour:
//! - Each browser profile is a companion device with real X25519 key pairs (noise static key,
//!   identity key, made with WebCrypto) and a 32-byte ADV secret, kept in IndexedDB (`wawc`)
//!   with the login, so a login survives a killed Chromium. The page reports its public keys
//!   when it connects (as the noise handshake does) and a SHA-256 of its ADV secret (the real
//!   phone proves the secret with an HMAC the page checks; the simulator's phone compares the
//!   hash instead, so a wrong secret is refused at scan time).
//! - The QR string is `ref,noise key,identity key,ADV secret,DEVICE_PLATFORM` (base64), in
//!   `div[data-ref]` and drawn on a canvas. The server hands out batches of
//!   [`SimConfig::refs_per_batch`] refs: the first lives [`SimConfig::first_ref`], the others
//!   [`SimConfig::next_ref`], then the socket is `UNPAIRED_IDLE` until `Cmd.refreshQR()` or a
//!   click. [`Simulator::scan`] checks every part against the device that shows the ref.
//! - Phone-number pairing: the page makes the 8-character code (alphabet without 0, I, O, U)
//!   and tells the server the phone number; the phone accepts the code for 180 s.
//! - Linked accounts are LID-migrated unless [`SimConfig::lid_migrated`] is false: chats and
//!   senders are `@lid`, a phone wid resolves to the contact's LID chat only once the page knows
//!   that LID (otherwise `findOrCreateLatestChat` throws `No LID for user`, as WhatsApp Web does),
//!   and a message must come `from` the own LID user in a LID chat.
//! - `addAndSendMsgToChat` refuses (throws, naming the field) a message WhatsApp would not
//!   deliver properly, and a key this profile has already (in memory or stored; a failed one,
//!   ack -1, may be sent again). Acks: 1 when the server takes it, 2 after
//!   [`SimConfig::delivered_after`] (not while [`Simulator::set_phone_online`] has the
//!   recipient's phone off; when it comes on), 3 on [`Simulator::read`]; each fires `change:ack`.
//!   The server takes any id WhatsApp clients make (letters and digits: WhatsApp Web's `3EB0…`,
//!   phones' 32 hex digits) and refuses an id it has from the account already (`DUPLICATE`).
//!   [`SimConfig::throttle`] plays WhatsApp's rate limit: over it the message fails (server
//!   error 429 `rate-overlimit`, ack -1, send result not OK) and the account is punished a while.
//! - Messages are kept as WhatsApp Web keeps them: in the profile's IndexedDB
//!   (`model-storage`, table `message`, keyed `true_<chat>_<id>`), written before a message
//!   leaves (ack 0) and on every ack, so after a killed Chromium the page finds them again with
//!   `Msg.getMessagesById([key])` (not `Msg.get`, until loaded), with the acks that came while
//!   it was away (the server keeps them for the offline device). On reconnecting the page sends
//!   again what it had stored as pending (ack 0); the server takes a message it has as the same
//!   one (nothing new in [`Simulator::messages`]). A bare id is not a key:
//!   `WAWebDBMessageFindLocal.getMsgsByMsgIdsAndChatId([id], chat)` finds it.
//! - Chats are kept in the `chat` table with their message (one transaction), and the LID ↔ phone
//!   number mapping in the `contact` table (a LID contact's `phoneNumber`). A page that loads with
//!   a login restores the chat list from there, each chat with its most recent message in
//!   `chat.msgs` (`isNewMsg` false: no `add` of a new message for drivers); earlier ones come
//!   with `WAWebChatLoadMessages.loadEarlierMsgs`, in stored order (the message table's `rowId`).
//! - Incoming messages ([`Simulator::send_from_phone`], [`Simulator::send_reply`]) are held by the
//!   server for each linked device until that device acknowledges them: the page stores a message
//!   (and its chat), adds it to `Msg` (`isNewMsg` true, `add`), then sends its delivery receipt.
//!   A page that died before storing one gets it again when it connects (offline delivery, before
//!   `hasSynced`; a message it had stored is acknowledged again, not added twice). While a page is
//!   connected but not synced yet, new messages wait for the offline delivery. Messages are taken
//!   one at a time, in the server's order. [`Simulator::unacknowledged`] counts what is held.
//!   [`Simulator::send_undecryptable`]: the first copy cannot be decrypted; the page adds a
//!   `ciphertext` placeholder (`isNewMsg` true, not stored), sends a retry receipt, and the copy
//!   that follows is stored, then turns the placeholder into the message (`change:type`).
//! - Media is encrypted as WhatsApp encrypts it (`media.rs`: a random media key expanded with
//!   HKDF-SHA256 into AES-256-CBC and HMAC-SHA256 keys, the file the ciphertext and a 10-byte
//!   MAC). WhatsApp's media servers (`POST /sim/mms/<type>/<token>`, `GET /sim/mmg?directPath=`)
//!   keep an upload only if its token is the SHA-256 of what came (`encFilehash`); the recipient
//!   of a media message opens the file at its `directPath` with its `mediaKey` and checks both
//!   hashes and the size, else WhatsApp refuses the message. [`Simulator::messages`] gives the
//!   opened file's type, name, size and SHA-256 ([`ReceivedMedia`]);
//!   [`Simulator::send_media_from_phone`] has a WhatsApp user send a file (uploaded by the phone).
//! - The phone's address book ([`Simulator::set_address_book`]) reaches the linked pages as
//!   WhatsApp's app-state sync brings it (while connected, and again with each connection's sync):
//!   each WhatsApp user in it (not the numbers that are not on WhatsApp) becomes a Contact with the
//!   saved `name`, its first word as `shortName`, `isAddressBookContact` (what
//!   `WAWebFrontendContactGetters.getIsMyContact` reads), and on a LID-migrated account a LID
//!   contact too, with its `phoneNumber`; a business account ([`Simulator::set_business`]) is
//!   `isBusiness` with its `verifiedName`, and `queryWidExists` says `biz`. Every existence query
//!   WhatsApp answers is counted ([`Simulator::exists_queries`]).
//! - Logout from the phone: `Cmd` fires `starting_logout_from_bridge` and `logout_from_bridge`,
//!   the profile is wiped (new keys) and the page reloads as `/?post_logout=1`. `Socket.logout()`
//!   resolves once the server forgot the device (drivers close the browser then); about a second
//!   later the page does the same with `Cmd` `logout`. Conflict: the
//!   page goes `CONFLICT` until `Socket.takeover()` (or its "Use here" button).
//!
//! # Where the facts come from
//!
//! Module names, exports, argument orders, the QR string, the `post_logout=1` reload, the
//! batch of 6 refs with 60 s / 20 s lifetimes and the 180 s code lifetime come from
//! whatsapp-web.js 1.34.7 (`src/Client.js`, `src/util/Injected/Utils.js`,
//! `src/util/Injected/AuthStore/AuthStore.js`, `src/structures/*`), from publicly stored copies
//! of WhatsApp Web's own `__d("WAWeb…")` modules (`WAWebCmd` events, `WAWebAltDeviceLinkingApi`,
//! `WAWebSocketModel`, the `Requiring unknown module` error), from issue reports (`No LID for
//! user` thrown by `findOrCreateLatestChat`), and from the project's
//! `whatsapp-web-contract.md`. No code of those projects is used here.
//!
//! # Simplifications (known, deliberate)
//!
//! Text and media messages, 1:1 chats only (no groups); videos and audio are not decoded (no
//! duration, no waveform; images are, for their preview), voice notes, stickers and channels'
//! unencrypted media are not modelled, nor media re-uploads by the phone (`REUPLOADING`); no
//! history sync (a newly linked profile has no messages, and messages sent from one linked
//! profile do not reach the others); contacts other than the LID mapping are not stored; a
//! restored chat brings back only its last message (the real page may preload a few more); the
//! server drives the QR rotation (the real server sends the batch and the page rotates it);
//! transport is HTTPS requests plus server-sent events instead of a noise-encrypted WebSocket.

mod http;
mod media;
mod tls;
mod world;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use media::ReceivedMedia;
use world::World;

/// What the page reports as `WAWebCompanionRegClientUtils.DEVICE_PLATFORM`, the QR string's
/// last part: WhatsApp's companion platform number as a decimal string, `"1"` for Chrome.
pub(crate) const DEVICE_PLATFORM: &str = "1";
/// The phone's platform, as `Conn.platform` reports it once linked.
pub(crate) const PHONE_PLATFORM: &str = "android";
/// How long a pairing code is accepted by the phone.
pub(crate) const CODE_LIFETIME: Duration = Duration::from_secs(180);
/// The alphabet of pairing codes: Crockford's base 32 without 0 (digits 1-9, letters without I, O, U).
pub(crate) const CODE_ALPHABET: &str = "123456789ABCDEFGHJKLMNPQRSTVWXYZ";

/// Two WhatsApp Web builds with different module surfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Build {
    /// Today's surface: LIDs, `getMaybeMePnUser`/`getMaybeMeLidUser`, send result `{messageSendResult: 'OK'}`.
    #[default]
    Current,
    /// An older surface: `getMaybeMeUser`, no LIDs, send result the string `'OK'`.
    Legacy,
}

impl Build {
    /// The build's `window.Debug.VERSION`.
    pub fn version(&self) -> &'static str {
        match self {
            Build::Current => "2.3000.1029560484",
            Build::Legacy => "2.2412.54",
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Build::Current => "current",
            Build::Legacy => "legacy",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Build> {
        [Build::Current, Build::Legacy].into_iter().find(|b| b.name() == name)
    }

    pub(crate) fn from_version(version: &str) -> Option<Build> {
        [Build::Current, Build::Legacy].into_iter().find(|b| b.version() == version)
    }
}

/// WhatsApp's behaviour, with timings tests shorten.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How long the first QR code of a batch lives (WhatsApp: 60 s).
    pub first_ref: Duration,
    /// How long each next QR code lives (WhatsApp: 20 s).
    pub next_ref: Duration,
    /// QR codes per batch before the page goes idle (WhatsApp: 6).
    pub refs_per_batch: usize,
    /// From connected to `hasSynced` (offline messages delivered, chats loaded; WhatsApp: a few
    /// seconds). whatsapp-web.js only sees `hasSynced` change if it happens after it attached its
    /// listener, several round trips after the page loaded: keep it above about a second.
    pub sync: Duration,
    /// What `https://web.whatsapp.com/` serves.
    pub build: Build,
    /// Accounts linked to this simulator are LID-migrated (the legacy build ignores it: no LIDs).
    pub lid_migrated: bool,
    /// Modules the served pages lack (`window.require` throws for them).
    pub without_modules: Vec<String>,
    /// The recipient's phone acks "delivered" (2) this long after the server ack (1) (unless
    /// [`Simulator::set_phone_online`] turned that phone off).
    pub delivered_after: Duration,
    /// WhatsApp's own rate limit on sending, per account; `None` (the default): no limit.
    pub throttle: Option<Throttle>,
}

/// WhatsApp punishing an account that sends too fast. WhatsApp publishes no numbers (users
/// report errors from about 3 messages a second); tests choose theirs.
///
/// A message over a limit is refused as WhatsApp refuses it: the server answers the message
/// with error 429 `rate-overlimit`, the page sets its ack to -1 (`ACK_ERROR`, firing
/// `change:ack`) and `addAndSendMsgToChat`'s send result is not OK. The refused message is not
/// WhatsApp's (not in [`Simulator::messages`], its id may be sent again later); it is counted
/// in [`Simulator::throttled`], and the account is refused everything for
/// [`Throttle::penalty`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    /// Accepted messages in any 60 s window.
    pub max_per_minute: usize,
    /// Accepted messages in any 1 s window.
    pub max_burst: usize,
    /// After a refusal, every send of the account is refused this long (a send refused
    /// meanwhile starts it again: retrying at once does not help).
    pub penalty: Duration,
}

impl Default for Throttle {
    /// 20 a minute, 3 a second, 30 s of punishment.
    fn default() -> Self {
        Throttle { max_per_minute: 20, max_burst: 3, penalty: Duration::from_secs(30) }
    }
}

impl Throttle {
    /// Whether an account that had messages accepted at `accepted` (ms, any order) and is
    /// punished until `punished_until` (ms) may send one more at `now` (ms); why not otherwise.
    pub(crate) fn check(&self, accepted: &[u64], punished_until: u64, now: u64) -> Result<(), String> {
        if now < punished_until {
            return Err(format!(
                "rate-overlimit: this account sent too fast and is refused for {} ms more",
                punished_until - now
            ));
        }
        let within = |window: u64| accepted.iter().filter(|t| **t + window > now && **t <= now).count();
        if within(60_000) + 1 > self.max_per_minute {
            return Err(format!("rate-overlimit: more than {} messages in a minute", self.max_per_minute));
        }
        if within(1_000) + 1 > self.max_burst {
            return Err(format!("rate-overlimit: more than {} messages in a second", self.max_burst));
        }
        Ok(())
    }
}

/// The most of `times` (ms) inside any window of `window_ms` (a window `[t, t + window_ms)`).
pub fn max_in_window(times: &[u64], window_ms: u64) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] >= sorted[start] + window_ms {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            first_ref: Duration::from_secs(60),
            next_ref: Duration::from_secs(20),
            refs_per_batch: 6,
            sync: Duration::from_secs(3),
            build: Build::Current,
            lid_migrated: true,
            without_modules: Vec::new(),
            delivered_after: Duration::from_millis(500),
            throttle: None,
        }
    }
}

/// A message a linked session sent, as WhatsApp received it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Received {
    /// The WhatsApp message id (`MsgKey.id`).
    pub id: String,
    /// The sender's phone number.
    pub from: String,
    /// The recipient's phone number.
    pub to: String,
    pub body: String,
    pub at_ms: u64,
    /// 1 server, 2 delivered, 3 read.
    pub ack: i32,
    /// A media message's file, as the recipient opened it (`body` is then its caption).
    #[serde(default)]
    pub media: Option<ReceivedMedia>,
    /// The browser the sending page announced to WhatsApp (its `Sec-CH-UA` header), which
    /// WhatsApp Web's server sees on every request; None for a message from a phone.
    #[serde(default)]
    pub browser: Option<String>,
}

pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) world: Mutex<World>,
}

impl Shared {
    pub(crate) fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running simulator. Dropping it stops both listeners and removes its temporary files.
pub struct Simulator {
    shared: Arc<Shared>,
    control: SocketAddr,
    web: SocketAddr,
    spki_pin: String,
    dir: PathBuf,
    wrapper: PathBuf,
    shell_wrapper: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Simulator {
    /// Starts both listeners on 127.0.0.1, on free ports.
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts the control listener on `control`, and the TLS listener on a free port of the
    /// same address (a real node's pods reach the simulator on the node's address).
    pub async fn start_on(control: SocketAddr, config: SimConfig) -> std::io::Result<Simulator> {
        let identity = tls::identity()?;
        let shared = Arc::new(Shared { config, world: Mutex::new(World::default()) });

        let control_listener = tokio::net::TcpListener::bind(control).await?;
        let control = control_listener.local_addr()?;
        let web_listener = tokio::net::TcpListener::bind(SocketAddr::new(control.ip(), 0)).await?;
        let web = web_listener.local_addr()?;
        let web_listener = tls::TlsListener::new(web_listener, identity.acceptor)?;

        let dir = std::env::temp_dir().join(format!(
            "wao-simulator-{}-{}",
            std::process::id(),
            world::random_hex(6)
        ));
        std::fs::create_dir_all(&dir)?;
        let args = chromium_args(web, &identity.spki_pin);
        let wrapper =
            write_wrapper(&dir, "chromium", "WAO_TEST_CHROMIUM", "/usr/lib/chromium/chromium", &args)?;
        let shell_wrapper = write_wrapper(
            &dir,
            "chromium-headless-shell",
            "WAO_TEST_HEADLESS_SHELL",
            "/usr/lib/chromium/chromium-headless-shell",
            &args,
        )?;

        let web_app = http::web_router(shared.clone());
        let control_app = http::control_router(shared.clone());
        let tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = axum::serve(web_listener, web_app).await {
                    tracing::error!("simulator web listener: {e}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = axum::serve(control_listener, control_app).await {
                    tracing::error!("simulator control listener: {e}");
                }
            }),
        ];
        Ok(Simulator {
            shared,
            control,
            web,
            spki_pin: identity.spki_pin,
            dir,
            wrapper,
            shell_wrapper,
            tasks,
        })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash): `/control/*` and the build cache
    /// `/versions/<version>.html`.
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control)
    }

    /// Where the page is: `https://web.whatsapp.com/`.
    pub fn web_url(&self) -> &'static str {
        "https://web.whatsapp.com/"
    }

    /// What Chromium needs to reach the page: the host mapped to the TLS listener and its
    /// certificate trusted by its public key pin.
    pub fn chromium_args(&self) -> Vec<String> {
        chromium_args(self.web, &self.spki_pin)
    }

    /// An executable script that runs Chromium (`$WAO_TEST_CHROMIUM` at start, else
    /// `/usr/lib/chromium/chromium`) with [`Simulator::chromium_args`] and its own arguments.
    pub fn chromium_wrapper(&self) -> PathBuf {
        self.wrapper.clone()
    }

    /// [`Simulator::chromium_wrapper`] for Chromium's headless shell
    /// (`$WAO_TEST_HEADLESS_SHELL` at start, else `/usr/lib/chromium/chromium-headless-shell`).
    pub fn headless_shell_wrapper(&self) -> PathBuf {
        self.shell_wrapper.clone()
    }

    /// The session pod's environment naming both browser wrappers (`WAO_CHROMIUM`,
    /// `WAO_HEADLESS_SHELL`).
    pub fn browser_env(&self) -> Vec<(String, String)> {
        vec![
            ("WAO_CHROMIUM".into(), self.wrapper.display().to_string()),
            ("WAO_HEADLESS_SHELL".into(), self.shell_wrapper.display().to_string()),
        ]
    }

    /// The phone reads the QR text: links only if the ref is the current one of a page and the
    /// noise key, identity key, ADV secret and platform are that page's.
    pub fn scan(&self, qr: &str, phone: &str, push_name: &str) -> Result<(), String> {
        self.shared.world().scan(&self.shared.config, qr, phone, push_name)
    }

    /// The phone reads a picture of the QR code (PNG), then [`Simulator::scan`].
    pub fn scan_png(&self, png: &[u8], phone: &str, push_name: &str) -> Result<(), String> {
        let text = http::decode_qr_png(png)?;
        self.scan(&text, phone, push_name)
    }

    /// The user types a pairing code (`ABCD-EFGH` or `ABCDEFGH`) on the phone: links the page
    /// that asked for a code for `phone`, if the code is right and younger than 180 s.
    pub fn enter_code(&self, phone: &str, code: &str) -> Result<(), String> {
        self.shared.world().enter_code(&self.shared.config, phone, code, phone)
    }

    /// What linked sessions sent, oldest first, with the current ack: each message WhatsApp
    /// accepted appears once (a refused one, throttled or duplicate, never; the page resending a
    /// pending message after a restart does not add it again).
    pub fn messages(&self) -> Vec<Received> {
        self.shared.world().sent.clone()
    }

    /// When WhatsApp accepted each message `from_phone` sent (ms since the epoch, oldest first):
    /// with [`max_in_window`], what a pacing test asserts on.
    pub fn sent_times(&self, from_phone: &str) -> Vec<u64> {
        self.shared.world().sent.iter().filter(|m| m.from == from_phone).map(|m| m.at_ms).collect()
    }

    /// How many sends [`SimConfig::throttle`] refused.
    pub fn throttled(&self) -> usize {
        self.shared.world().throttled
    }

    /// The phone of WhatsApp user `phone` is on (the default) or off: while it is off, messages
    /// to it stay at ack 1 (server) and cannot be read; turned on, it acks them delivered (2).
    pub fn set_phone_online(&self, phone: &str, online: bool) {
        self.shared.world().set_phone_online(phone, online)
    }

    /// WhatsApp user `from` sends `body` to the linked account `to`; returns the message id.
    pub fn send_from_phone(&self, from: &str, to: &str, body: &str) -> Result<String, String> {
        self.shared.world().send_from_phone(&self.shared.config, from, to, body, world::Kind::Text)
    }

    /// [`Simulator::send_from_phone`] as a reply quoting the message `quoted_id` (one the account
    /// sent to `from`, or one `from` sent to it).
    pub fn send_reply(&self, from: &str, to: &str, body: &str, quoted_id: &str) -> Result<String, String> {
        self.shared.world().send_from_phone(
            &self.shared.config,
            from,
            to,
            body,
            world::Kind::Reply(quoted_id),
        )
    }

    /// [`Simulator::send_from_phone`], but the first copy reaches the linked pages undecryptable
    /// (as when the sender has no Signal session with a device yet): each page adds a
    /// `ciphertext` placeholder (`isNewMsg` true) and asks for the message again; the copy that
    /// follows turns the placeholder into the message (`change:type`).
    pub fn send_undecryptable(&self, from: &str, to: &str, body: &str) -> Result<String, String> {
        self.shared.world().send_from_phone(&self.shared.config, from, to, body, world::Kind::Undecryptable)
    }

    /// WhatsApp user `from` sends the linked account `to` a file (`bytes` of `mimetype`, shown
    /// as an image, video or audio by its type, else as a document named `filename`) with a
    /// caption, maybe empty: the phone encrypts and uploads it, the message carries its media key
    /// and hashes. Returns the message id.
    pub fn send_media_from_phone(
        &self,
        from: &str,
        to: &str,
        mimetype: &str,
        bytes: &[u8],
        caption: &str,
        filename: Option<&str>,
    ) -> Result<String, String> {
        let mut world = self.shared.world();
        let fields = world.mms.upload_from_phone(mimetype, bytes, filename);
        world.send_from_phone(&self.shared.config, from, to, caption, world::Kind::Media(&fields))
    }

    /// WhatsApp user `phone` names themselves `name` in their profile: the push name their
    /// messages carry (a linked account's is the one it linked with).
    pub fn set_push_name(&self, phone: &str, name: &str) {
        self.shared.world().set_push_name(phone, name)
    }

    /// Messages WhatsApp holds for the pages linked to `phone` because they have not acknowledged
    /// them yet (stored): sent again each time a page connects.
    pub fn unacknowledged(&self, phone: &str) -> usize {
        self.shared.world().unacknowledged(phone)
    }

    /// The recipient reads a message a session sent: ack 3 (refused while their phone is off).
    pub fn read(&self, message_id: &str) -> Result<(), String> {
        self.shared.world().read(message_id)
    }

    /// The phone removes its linked devices.
    pub fn logout_from_phone(&self, phone: &str) -> Result<(), String> {
        self.shared.world().logout_from_phone(phone)
    }

    /// The account is opened in another WhatsApp Web: its connected pages go `CONFLICT`.
    pub fn conflict(&self, phone: &str) -> Result<(), String> {
        self.shared.world().conflict(phone)
    }

    /// The user of the linked account `phone` saves `contacts` (number, name) as the address book
    /// on their phone, replacing what was there: the phone syncs it to its linked pages (at once
    /// to a connected one, else when it connects), where each WhatsApp user in it becomes a
    /// Contact with the saved `name` (`shortName` its first word) and `isAddressBookContact`.
    pub fn set_address_book(&self, phone: &str, contacts: &[(&str, &str)]) {
        let entries = contacts.iter().map(|(n, name)| (n.to_string(), name.to_string())).collect();
        self.shared.world().set_address_book(&self.shared.config, phone, entries)
    }

    /// WhatsApp user `phone` is a business account with the verified name `name`: existence
    /// queries say `biz`, and its contact is `isBusiness` with that `verifiedName`. Set before the
    /// address books that list it are synced.
    pub fn set_business(&self, phone: &str, name: &str) {
        self.shared.world().set_business(phone, name)
    }

    /// How many existence queries (`queryWidExists`, `queryPhoneExists`) WhatsApp answered for
    /// linked pages: what a test of caching and pacing counts.
    pub fn exists_queries(&self) -> usize {
        self.shared.world().exists_queries
    }

    /// The LID (digits) WhatsApp assigns a phone number, the same every time.
    pub fn lid_of(phone: &str) -> String {
        lid_of(phone)
    }

    /// Whether a number is a WhatsApp account here: 8 to 15 digits, not starting with `000`.
    pub fn is_on_whatsapp(phone: &str) -> bool {
        is_on_whatsapp(phone)
    }
}

fn chromium_args(web: SocketAddr, spki_pin: &str) -> Vec<String> {
    vec![
        format!("--host-resolver-rules=MAP {} {web}", tls::HOST),
        format!("--ignore-certificate-errors-spki-list={spki_pin}"),
    ]
}

/// Writes the executable script `dir/name` that runs the browser (`$env_var`, else `default`)
/// with the simulator's `args` and its own.
fn write_wrapper(
    dir: &Path,
    name: &str,
    env_var: &str,
    default: &str,
    args: &[String],
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = dir.join(name);
    let binary = std::env::var(env_var).unwrap_or_else(|_| default.into());
    let script = format!(
        "#!/bin/sh\n# {name} on the simulator's \"network\": web.whatsapp.com is the WhatsApp Web simulator.\nexec {} {} \"$@\"\n",
        shell_quote(&binary),
        args.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
    );
    std::fs::write(&wrapper, script)?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    Ok(wrapper)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub(crate) fn is_on_whatsapp(phone: &str) -> bool {
    (8..=15).contains(&phone.len()) && phone.bytes().all(|b| b.is_ascii_digit()) && !phone.starts_with("000")
}

pub(crate) fn lid_of(phone: &str) -> String {
    let digest = Sha256::digest(format!("whatsapp-simulator-lid:{phone}").as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    // 15 digits, as WhatsApp's LIDs.
    (100_000_000_000_000 + n % 900_000_000_000_000).to_string()
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

/// The keys a companion device reported when it connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeviceKeys {
    pub noise: [u8; 32],
    pub identity: [u8; 32],
    /// SHA-256 of the ADV secret.
    pub adv_hash: [u8; 32],
    pub platform: String,
}

/// The parts of a WhatsApp Web QR string.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct QrParts {
    pub reference: String,
    pub noise: [u8; 32],
    pub identity: [u8; 32],
    pub adv_secret: [u8; 32],
    pub platform: String,
}

fn key_part(parts: &[&str], index: usize, what: &str) -> Result<[u8; 32], String> {
    let bytes = b64()
        .decode(parts[index])
        .map_err(|e| format!("part {} of the QR ({what}) is not base64: {e}", index + 1))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("part {} of the QR ({what}) is {} bytes, not 32", index + 1, b.len()))
}

impl QrParts {
    pub(crate) fn parse(qr: &str) -> Result<QrParts, String> {
        let qr = qr.trim();
        let parts: Vec<&str> = qr.split(',').collect();
        if parts.len() == 1 {
            return Err(format!(
                "\"{qr}\" is a bare ref (Conn.ref): a phone cannot link with it; WhatsApp Web's QR is \
                 ref,noise public key,identity public key,ADV secret,platform"
            ));
        }
        let with_faq = parts.len() == 6 && parts[5].starts_with("https://");
        if parts.len() != 5 && !with_faq {
            return Err(format!(
                "the QR has {} comma-separated parts; WhatsApp Web's QR is ref,noise public key,identity public key,ADV secret,platform",
                parts.len()
            ));
        }
        if !parts[0].starts_with("2@") || parts[0].len() < 4 {
            return Err(format!("part 1 of the QR (\"{}\") is not a WhatsApp Web ref (2@…)", parts[0]));
        }
        Ok(QrParts {
            reference: parts[0].to_string(),
            noise: key_part(&parts, 1, "noise public key")?,
            identity: key_part(&parts, 2, "identity public key")?,
            adv_secret: key_part(&parts, 3, "ADV secret")?,
            platform: parts[4].to_string(),
        })
    }

    /// The phone's checks against the device that shows this ref.
    pub(crate) fn check(&self, device: &DeviceKeys) -> Result<(), String> {
        if self.noise != device.noise {
            return Err("part 2 of the QR (noise public key) is not the noise static key of the browser showing this ref".into());
        }
        if self.identity != device.identity {
            return Err("part 3 of the QR (identity public key) is not the identity key of the browser showing this ref".into());
        }
        if <[u8; 32]>::from(Sha256::digest(self.adv_secret)) != device.adv_hash {
            return Err(
                "part 4 of the QR (ADV secret) is not the ADV secret of the browser showing this ref".into(),
            );
        }
        if self.platform != device.platform || self.platform != DEVICE_PLATFORM {
            return Err(format!(
                "part 5 of the QR (platform) is \"{}\"; WhatsApp Web reports \"{DEVICE_PLATFORM}\"",
                self.platform
            ));
        }
        Ok(())
    }
}

/// A typed pairing code, normalised (`ABCD-EFGH`, `abcdefgh` → `ABCDEFGH`), or why it cannot be one.
pub(crate) fn normalize_code(code: &str) -> Result<String, String> {
    let code: String =
        code.chars().filter(|c| *c != '-' && !c.is_whitespace()).collect::<String>().to_uppercase();
    if code.len() != 8 || !code.chars().all(|c| CODE_ALPHABET.contains(c)) {
        return Err(format!(
            "\"{code}\" is not a pairing code: 8 characters from {CODE_ALPHABET} (an optional dash in the middle)"
        ));
    }
    Ok(code)
}

pub(crate) fn code_hash(code: &str) -> String {
    hex(&Sha256::digest(code.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (DeviceKeys, String) {
        let noise = [1u8; 32];
        let identity = [2u8; 32];
        let adv = [3u8; 32];
        let device = DeviceKeys {
            noise,
            identity,
            adv_hash: Sha256::digest(adv).into(),
            platform: DEVICE_PLATFORM.to_string(),
        };
        let qr = format!(
            "2@abcdef,{},{},{},{DEVICE_PLATFORM}",
            b64().encode(noise),
            b64().encode(identity),
            b64().encode(adv)
        );
        (device, qr)
    }

    #[test]
    fn a_complete_qr_of_the_device_is_accepted() {
        let (device, qr) = keys();
        let parts = QrParts::parse(&qr).expect("parses");
        assert_eq!(parts.reference, "2@abcdef");
        parts.check(&device).expect("accepted");
        let with_faq = format!("{qr},https://faq.whatsapp.com/r/ld");
        QrParts::parse(&with_faq).expect("parses").check(&device).expect("accepted");
    }

    #[test]
    fn a_bare_ref_is_refused() {
        let err = QrParts::parse("2@abcdef").unwrap_err();
        assert!(err.contains("bare ref"), "{err}");
    }

    #[test]
    fn each_wrong_part_is_named() {
        let (device, qr) = keys();
        let parts: Vec<String> = qr.split(',').map(String::from).collect();
        let other = b64().encode([9u8; 32]);
        for (index, needle) in [(1, "noise"), (2, "identity"), (3, "ADV secret")] {
            let mut wrong = parts.clone();
            wrong[index] = other.clone();
            let err = QrParts::parse(&wrong.join(",")).expect("parses").check(&device).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        let mut wrong = parts.clone();
        wrong[4] = "MACOS".into();
        let err = QrParts::parse(&wrong.join(",")).expect("parses").check(&device).unwrap_err();
        assert!(err.contains("platform"), "{err}");
        let mut short = parts.clone();
        short[1] = b64().encode([1u8; 16]);
        let err = QrParts::parse(&short.join(",")).unwrap_err();
        assert!(err.contains("16 bytes"), "{err}");
        let err = QrParts::parse(&parts[..4].join(",")).unwrap_err();
        assert!(err.contains("4 comma-separated parts"), "{err}");
        let mut not_ref = parts.clone();
        not_ref[0] = "1@x".into();
        assert!(QrParts::parse(&not_ref.join(",")).unwrap_err().contains("not a WhatsApp Web ref"));
    }

    #[test]
    fn pairing_codes_are_normalised_and_checked() {
        assert_eq!(normalize_code("ABCD-EFGH").unwrap(), "ABCDEFGH");
        assert_eq!(normalize_code("abcd efgh").unwrap(), "ABCDEFGH");
        assert!(normalize_code("ABCDEFG").is_err());
        // 0, I, O and U are not in WhatsApp's code alphabet.
        assert!(normalize_code("ABCDEFG0").is_err());
        assert!(normalize_code("ABCDEFGU").is_err());
        assert_eq!(code_hash("ABCDEFGH"), code_hash("ABCDEFGH"));
        assert_ne!(code_hash("ABCDEFGH"), code_hash("ABCDEFGJ"));
    }

    #[test]
    fn lids_are_stable_fifteen_digit_numbers() {
        let lid = lid_of("5511999990000");
        assert_eq!(lid, lid_of("5511999990000"));
        assert_ne!(lid, lid_of("5511999990001"));
        assert_eq!(lid.len(), 15);
        assert!(lid.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn who_is_on_whatsapp() {
        assert!(is_on_whatsapp("5511999990000"));
        assert!(!is_on_whatsapp("0005511999990"));
        assert!(!is_on_whatsapp("1234567"));
        assert!(!is_on_whatsapp("1234567890123456"));
        assert!(!is_on_whatsapp("55119999x0000"));
    }

    #[test]
    fn the_throttle_counts_accepted_messages_in_sliding_windows() {
        let throttle = Throttle { max_per_minute: 3, max_burst: 2, penalty: Duration::from_secs(5) };
        assert!(throttle.check(&[], 0, 1_000).is_ok());
        assert!(throttle.check(&[1_000], 0, 1_500).is_ok());
        assert!(throttle.check(&[1_000, 1_400], 0, 1_500).unwrap_err().contains("second"));
        // A second later the burst is over; the minute still counts all three.
        assert!(throttle.check(&[1_000, 1_400], 0, 2_400).is_ok());
        assert!(throttle.check(&[1_000, 1_400, 2_400], 0, 30_000).unwrap_err().contains("minute"));
        assert!(throttle.check(&[1_000, 1_400, 2_400], 0, 61_000).is_ok());
        assert!(throttle.check(&[], 10_000, 9_999).unwrap_err().contains("refused for 1 ms"));
        assert!(throttle.check(&[], 10_000, 10_000).is_ok());
        assert_eq!(Throttle::default().max_burst, 3);
        assert_eq!(SimConfig::default().throttle, None);
    }

    #[test]
    fn windows_find_the_busiest_stretch() {
        assert_eq!(max_in_window(&[], 1_000), 0);
        assert_eq!(max_in_window(&[5], 1_000), 1);
        assert_eq!(max_in_window(&[0, 999, 1_000, 1_500, 1_999], 1_000), 3);
        assert_eq!(max_in_window(&[3_000, 0, 1_000, 2_000], 60_000), 4);
        assert_eq!(max_in_window(&[0, 60_000, 120_000], 60_000), 1);
    }

    #[test]
    fn message_ids_are_what_whatsapp_clients_make() {
        for id in [
            "3EB0A1B2C3D4E5F60718",
            "3EB0A1B2C3D4E5F6071829",
            "3EB0A1B2C3D4E5F607182930",
            "3A1B2C",
            "BAE5F00D",
        ] {
            world::check_message_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        for id in ["", "3EB0_A", "3EB0-A", "3EB0 A", "ñ"] {
            assert!(world::check_message_id(id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn builds_have_their_versions() {
        assert_eq!(Build::from_version(Build::Current.version()), Some(Build::Current));
        assert_eq!(Build::from_version(Build::Legacy.version()), Some(Build::Legacy));
        assert_eq!(Build::from_version("2.1.1"), None);
        assert_eq!(Build::from_name("legacy"), Some(Build::Legacy));
    }
}
