// wa-bridge v3: the only code the session pod runs inside WhatsApp Web.
//
// It uses the page's own module layer (window.require('WAWeb...')), the way current drivers
// do, and reads the QR from the DOM (div[data-ref]) when the modules that build it are
// missing. Module names and exports change between WhatsApp Web builds: this file is
// versioned and can be replaced from a ConfigMap (WAO_BRIDGE_SCRIPT) without rebuilding the
// session pod, and `missing()` (reported by the pod as the BridgeCompatible condition) names
// what a new build no longer has.
//
// The driver polls `window.__waoBridge.snapshot()` and calls the actions below.
(function () {
  'use strict';
  if (window.__waoBridge) return;

  // window.require throws for a module the build does not have.
  function mod(name) {
    try { return typeof window.require === 'function' ? window.require(name) || undefined : undefined; } catch (e) { return undefined; }
  }

  // Everything this bridge calls, module -> exports. An entry 'a|b' is satisfied by either
  // (today's export first, the older build's after it). WhatsApp Web loads some modules
  // late, so what linking needs is checked once the page shows a QR or a code, and what
  // sending needs once the account is connected and synced.
  const LINKING = {
    WAWebSocketModel: ['Socket'],
    WAWebConnModel: ['Conn'],
    WAWebUserPrefsInfoStore: ['waNoiseInfo'],
    WAWebSignalStoreApi: ['waSignalStore'],
    WAWebUserPrefsMultiDevice: ['getADVSecretKey'],
    WAWebCompanionRegClientUtils: ['DEVICE_PLATFORM'],
    WABase64: ['encodeB64'],
    WAWebAltDeviceLinkingApi: ['setPairingType', 'initializeAltDeviceLinking', 'startAltLinkingFlow'],
  };
  const SENDING = {
    WAWebUserPrefsMeUser: ['getMaybeMePnUser|getMaybeMeUser'],
    WAWebCollections: ['Msg'],
    WAWebWidFactory: ['createWid'],
    WAWebQueryExistsJob: ['queryWidExists'],
    WAWebFindChatAction: ['findOrCreateLatestChat'],
    WAWebMsgKey: ['newId'],
    WAWebSendMsgChatAction: ['addAndSendMsgToChat'],
    WAWebGetEphemeralFieldsMsgActionsUtils: ['getEphemeralFields'],
  };
  // What taking incoming messages needs (checked with SENDING; a gap here does not hold sends
  // back): the chats and their earlier messages for the catch-up after a reload, and the LID
  // <-> phone number mapping that names senders.
  const RECEIVING = {
    WAWebCollections: ['Msg', 'Chat'],
    WAWebChatLoadMessages: ['loadEarlierMsgs'],
    WAWebApiContact: ['getPhoneNumber', 'getCurrentLid'],
  };
  // What media needs (sendMedia, downloadMedia; checked with SENDING; a gap here holds back
  // only media).
  const MEDIA_NEEDS = {
    WAWebMediaOpaqueData: ['createFromData'],
    WAWebPrepRawMedia: ['prepRawMedia'],
    WAWebMediaStorage: ['getOrCreateMediaObject'],
    WAWebMmsMediaTypes: ['msgToMediaType', 'castToV4'],
    WAWebMediaDataUtils: ['shouldUseMediaCache'],
    WAWebMediaInMemoryBlobCache: ['InMemoryMediaBlobCache'],
    WAWebMediaMmsV4Upload: ['uploadMedia'],
    WAWebDownloadManager: ['downloadManager'],
  };

  // What of `needs` this build lacks, as 'Module' or 'Module.export'.
  function lacking(needs) {
    const out = [];
    for (const [name, exports] of Object.entries(needs)) {
      const m = mod(name);
      if (!m) { out.push(name); continue; }
      for (const alternatives of exports) {
        if (!alternatives.split('|').some((e) => m[e] !== undefined)) out.push(name + '.' + alternatives.split('|')[0]);
      }
    }
    return out;
  }

  // The canary's answer, computed once per page load at each stage (a throwing require is
  // reported by the page's own error logging, so it is not repeated every poll).
  const checked = {linking: null, sending: null};
  function missing(socket) {
    const state = socket ? socket.state : null;
    if (!checked.linking && (state === 'UNPAIRED' || state === 'UNPAIRED_IDLE' || state === 'CONNECTED')) checked.linking = lacking(LINKING);
    if (!checked.sending && state === 'CONNECTED' && socket.hasSynced) {
      checked.sending = Array.from(new Set(lacking(SENDING).concat(lacking(RECEIVING), lacking(MEDIA_NEEDS))));
    }
    if (!checked.linking && !checked.sending) return socket ? null : ['WAWebSocketModel'];
    return (checked.linking || []).concat(checked.sending || []);
  }

  // The own user: phone-number id (today) or the older single getter; the LID id, if any.
  function meUsers() {
    const m = mod('WAWebUserPrefsMeUser') || {};
    const call = (f) => (typeof m[f] === 'function' ? m[f]() || null : null);
    const pn = call('getMaybeMePnUser') || call('getMaybeMeUser');
    return {pn, lid: call('getMaybeMeLidUser')};
  }

  function isLid(wid) {
    return !!wid && (typeof wid.isLid === 'function' ? wid.isLid() : wid.server === 'lid');
  }

  // The string WhatsApp Web's own QR component draws: the ref, the noise static public key,
  // the identity public key, the ADV secret and the platform. The phone needs all five.
  async function qrString(ref) {
    const b64 = mod('WABase64');
    const noise = await mod('WAWebUserPrefsInfoStore').waNoiseInfo.get();
    const registration = await mod('WAWebSignalStoreApi').waSignalStore.getRegistrationInfo();
    const parts = [
      ref,
      b64.encodeB64(noise.staticKeyPair.pubKey),
      b64.encodeB64(registration.identityKeyPair.pubKey),
      mod('WAWebUserPrefsMultiDevice').getADVSecretKey(),
      mod('WAWebCompanionRegClientUtils').DEVICE_PLATFORM,
    ];
    // The real component draws nothing while a part is missing; neither do we.
    return parts.every((p) => typeof p === 'string' || typeof p === 'number') && parts.every((p) => String(p) !== '') ? parts.join(',') : null;
  }

  function domQr() {
    const el = document.querySelector('div[data-ref]');
    const text = el && el.getAttribute('data-ref');
    return text && text.split(',').length >= 5 ? text : null;
  }

  // The QR of the current ref. Built in the background (it reads IndexedDB), so a poll never
  // waits on it; rebuilt when the ref rotates (change:ref), when WhatsApp renews the ADV
  // secret (advSecretEventEmitter 'change'), and every few seconds. The page's own QR
  // (div[data-ref]) wins when it shows the current ref.
  let qr = {ref: null, text: null, at: 0};
  let building = false;
  const watched = new Set();
  function watch(emitter, event) {
    if (!emitter || watched.has(emitter) || typeof emitter.on !== 'function') return;
    watched.add(emitter);
    emitter.on(event, () => { qr = {ref: null, text: null, at: 0}; });
  }
  function currentQr(conn) {
    watch(conn, 'change:ref');
    watch((mod('WAWebUserPrefsMultiDevice') || {}).advSecretEventEmitter, 'change');
    const ref = conn && conn.ref;
    const dom = domQr();
    if (!ref) return dom;
    if (dom && dom.startsWith(ref + ',')) return dom;
    if (!building && (qr.ref !== ref || Date.now() - qr.at > 3000)) {
      building = true;
      qrString(ref)
        .then((text) => { qr = text ? {ref, text, at: Date.now()} : {ref: null, text: null, at: 0}; })
        .catch(() => { qr = {ref: null, text: null, at: 0}; })
        .finally(() => { building = false; });
    }
    return qr.ref === ref ? qr.text : null;
  }

  // Sends of this page still under way, by message id.
  const sending = new Map();

  // One send (see the bridge's sendText); `withMedia` (sendMedia) makes a media message's fields
  // once the chat is known.
  async function sendOnce(number, body, chosenId, withMedia) {
    const gaps = lacking(SENDING);
    if (gaps.length) return failure('BRIDGE_INCOMPATIBLE', 'this WhatsApp Web build lacks ' + gaps.join(', '));
    const digits = String(number).replace(/[^0-9]/g, '');
    const wid = mod('WAWebWidFactory').createWid(digits + '@c.us');
    const exists = await mod('WAWebQueryExistsJob').queryWidExists(wid);
    if (!exists) return failure('NOT_ON_WHATSAPP', number + ' is not on WhatsApp');
    // On accounts migrated to LIDs the chat is the contact's @lid chat, and the message
    // must come from our own LID, else the recipient sees "an unknown user".
    const found = await mod('WAWebFindChatAction').findOrCreateLatestChat(exists.wid || wid);
    const chat = found && found.chat ? found.chat : found;
    const {pn, lid} = meUsers();
    const from = isLid(chat.id) ? lid : pn;
    if (!from) return failure('SEND_FAILED', 'the own ' + (isLid(chat.id) ? 'LID' : 'phone') + ' user is not known yet');
    const MsgKey = mod('WAWebMsgKey');
    const id = new MsgKey({from, to: chat.id, id: chosenId || await MsgKey.newId(), participant: undefined, selfDir: 'out'});
    // Disappearing-message chats: the message carries the chat's ephemeral settings.
    const ephemeral = mod('WAWebGetEphemeralFieldsMsgActionsUtils').getEphemeralFields(chat) || {};
    const media = withMedia ? await withMedia() : {};
    if (media.error) return media;
    const msg = Object.assign({
      id, ack: 0, body: String(body), from, to: chat.id, local: true, self: 'out',
      t: Math.floor(Date.now() / 1000), isNewMsg: true, type: 'chat',
    }, ephemeral, media);
    const [, delivery] = mod('WAWebSendMsgChatAction').addAndSendMsgToChat(chat, msg);
    const result = await delivery;
    const ok = result === 'OK' || (result && result.messageSendResult === 'OK');
    if (!ok) return failure('SEND_FAILED', 'WhatsApp Web did not send the message: ' + JSON.stringify(result));
    return {id: id.id};
  }

  // Whether WhatsApp Web has stored our message `id` to `number`, and its ack.
  async function lookupStored(number, id) {
    const Msg = (mod('WAWebCollections') || {}).Msg;
    if (!Msg) throw new Error('WhatsApp Web is not loaded');
    const ours = (m) => !!m && !!m.id && m.id.fromMe && m.id.id === id;
    let found = Msg.getModelsArray().find(ours);
    if (!found && typeof Msg.getMessagesById === 'function') {
      // The message key names the chat: the phone chat, or the contact's LID chat.
      const wid = mod('WAWebWidFactory').createWid(String(number) + '@c.us');
      const exists = await mod('WAWebQueryExistsJob').queryWidExists(wid);
      const chats = [wid, exists && exists.wid, exists && exists.lid].filter(Boolean).map((w) => w._serialized || String(w));
      const keys = Array.from(new Set(chats)).map((chat) => 'true_' + chat + '_' + id);
      const result = await Msg.getMessagesById(keys);
      found = ((result && result.messages) || []).find(ours);
    }
    return found ? {found: true, ack: typeof found.ack === 'number' ? found.ack : 0} : {found: false};
  }

  function failure(code, message) {
    return {error: {code, message}};
  }

  // ---- incoming messages ------------------------------------------------------------------

  // Not messages a person wrote: system notices, protocol messages, placeholders.
  const NOT_MESSAGES = new Set(['e2e_notification', 'notification', 'notification_template', 'gp2', 'protocol', 'call_log', 'revoked', 'ciphertext']);
  const MEDIA = new Set(['image', 'video', 'audio', 'ptt', 'document', 'sticker']);

  function serialized(wid) {
    return wid ? String(wid._serialized || wid) : null;
  }

  // A sender's phone number and LID (users), through the page's own mapping (WAWebApiContact).
  function senderIds(wid) {
    const api = mod('WAWebApiContact') || {};
    const other = (f) => { try { return typeof api[f] === 'function' ? api[f](wid) || null : null; } catch (e) { return null; } };
    if (!wid || wid.user == null) return {pn: null, lid: null};
    if (isLid(wid)) {
      const pn = other('getPhoneNumber');
      return {pn: pn ? String(pn.user) : null, lid: String(wid.user)};
    }
    const lid = other('getCurrentLid');
    return {pn: String(wid.user), lid: lid ? String(lid.user) : null};
  }

  function isIncoming(msg) {
    return !!msg && !!msg.id && !msg.id.fromMe && !msg.isNotification && !NOT_MESSAGES.has(msg.type) &&
      serialized(msg.id.remote) !== 'status@broadcast';
  }

  // An incoming message as the pod stores it. Media messages: the caption is the text (their
  // body is a thumbnail).
  function described(msg) {
    const media = MEDIA.has(msg.type) || msg.directPath != null;
    const {pn, lid} = senderIds(msg.author || msg.from || msg.id.remote);
    return {
      id: String(msg.id.id),
      from: pn,
      fromLid: lid,
      pushName: msg.notifyName || null,
      chat: serialized(msg.id.remote),
      type: String(msg.type),
      body: String((media ? msg.caption : msg.body) || ''),
      t: Number(msg.t) || 0,
      quotedId: msg.quotedStanzaID ? String(msg.quotedStanzaID) : null,
      media: media ? {
        mimetype: msg.mimetype || null,
        size: typeof msg.size === 'number' ? msg.size : null,
        filename: msg.filename || null,
      } : null,
    };
  }

  // New messages (Msg `add` with isNewMsg, not ours) since the driver last drained them; one
  // not decrypted yet (type ciphertext) is taken when its type changes.
  const incoming = [];
  let incomingOf = null;
  function watchIncoming() {
    const Msg = (mod('WAWebCollections') || {}).Msg;
    if (!Msg || Msg === incomingOf || typeof Msg.on !== 'function') return !!Msg;
    incomingOf = Msg;
    Msg.on('add', (msg) => {
      if (!msg || !msg.isNewMsg || !msg.id || msg.id.fromMe) return;
      if (msg.type === 'ciphertext') {
        msg.once('change:type', (m) => { if (isIncoming(m)) incoming.push(described(m)); });
        return;
      }
      if (isIncoming(msg)) incoming.push(described(msg));
    });
    return true;
  }
  // Listening from the moment the modules exist, before the driver's first poll.
  const early = setInterval(() => { if (watchIncoming()) clearInterval(early); }, 100);

  // The next page of a chat's earlier messages, by WhatsApp Web's own loader (current builds
  // take {chat}, older ones the chat).
  async function loadEarlier(chat) {
    const loader = mod('WAWebChatLoadMessages');
    if (!loader || typeof loader.loadEarlierMsgs !== 'function') return [];
    try {
      return (await loader.loadEarlierMsgs({chat})) || [];
    } catch (e) {
      return (await loader.loadEarlierMsgs(chat)) || [];
    }
  }

  // The incoming messages of `chat` with t >= since, loading earlier ones while the oldest
  // loaded is that recent (at most `pages` pages).
  async function chatIncoming(chat, since, pages) {
    const oldest = () => Math.min(...chat.msgs.getModelsArray().map((m) => Number(m.t) || 0));
    for (let i = 0; i < pages && chat.msgs.length && oldest() >= since; i++) {
      const state = chat.msgs.msgLoadState;
      if (state && state.noEarlierMsgs) break;
      if (!(await loadEarlier(chat)).length) break;
    }
    return chat.msgs.getModelsArray().filter((m) => isIncoming(m) && Number(m.t) >= since).map(described);
  }

  const bridge = {
    version: 3,

    // Everything the driver needs to know, in one call. Never waits and never throws: a
    // failing read is reported as unknown, not as a dead page.
    snapshot() {
      const attempt = (f, fallback) => { try { return f(); } catch (e) { return fallback; } };
      watchAcks();
      const loaded = !!(window.Debug && window.Debug.VERSION);
      const socket = (mod('WAWebSocketModel') || {}).Socket;
      const conn = (mod('WAWebConnModel') || {}).Conn;
      const {pn, lid} = attempt(meUsers, {pn: null, lid: null});
      const me = pn || lid;
      return {
        loaded,
        webVersion: loaded ? String(window.Debug.VERSION) : null,
        missing: loaded ? attempt(() => missing(socket), null) : null,
        modules: !!socket,
        state: socket ? socket.state : null,
        hasSynced: socket ? !!socket.hasSynced : false,
        ref: attempt(() => currentQr(conn), null),
        idle: socket ? socket.state === 'UNPAIRED_IDLE' : !!document.querySelector('div[data-ref] button'),
        me: me ? {phone: String(me.user), lid: lid ? String(lid.user) : null, pushName: (conn && conn.pushname) || null} : null,
      };
    },

    // Phone-code pairing: WhatsApp's alternative device linking. The code is valid 180 s;
    // the driver asks again before that.
    async requestPairingCode(phone) {
      const api = mod('WAWebAltDeviceLinkingApi');
      if (!api || typeof api.startAltLinkingFlow !== 'function') throw new Error('pairing by phone code is not available in this WhatsApp Web build (WAWebAltDeviceLinkingApi.startAltLinkingFlow)');
      api.setPairingType('ALT_DEVICE_LINKING');
      await api.initializeAltDeviceLinking();
      return String(await api.startAltLinkingFlow(String(phone), true));
    },

    // New QR codes after the page went idle: the way the page's own reload button does it,
    // then older ways. Answers which one was used.
    refreshQR() {
      const bus = (mod('WAWebBackendEventBus') || {}).BackendEventBus;
      if (bus && typeof bus.triggerRefreshQR === 'function') { bus.triggerRefreshQR(); return 'WAWebBackendEventBus'; }
      const launch = mod('WAWebLaunchSocketUtils');
      if (launch && typeof launch.refreshQR === 'function') { launch.refreshQR(); return 'WAWebLaunchSocketUtils'; }
      const cmd = (mod('WAWebCmd') || {}).Cmd;
      if (cmd && typeof cmd.refreshQR === 'function') { cmd.refreshQR(); return 'WAWebCmd'; }
      const button = document.querySelector('div[data-ref] button');
      if (button) { button.click(); return 'button'; }
      return null;
    },

    // Logs out. Not awaited: WhatsApp Web reloads itself (/?post_logout=1) as it finishes,
    // which would end this call with a destroyed page context; the state that follows (a new
    // QR) is the answer.
    logout() {
      const socket = (mod('WAWebSocketModel') || {}).Socket;
      if (!socket) throw new Error('WhatsApp Web is not loaded');
      Promise.resolve(socket.logout()).catch((e) => console.error('logout failed', e));
      return true;
    },

    // Sends a text with the WhatsApp message id the caller chose (the pod persists it first,
    // so a send a crash interrupts can be looked up instead of sent twice). Resolves {id} once
    // WhatsApp Web reports it sent, or {error: {code, message}} with NOT_ON_WHATSAPP,
    // BRIDGE_INCOMPATIBLE or SEND_FAILED; throws only when the page itself fails. A send of an
    // id already under way in this page is that same send: a caller that gave up on a slow
    // call and asks again never makes a second message.
    sendText(number, body, chosenId, withMedia) {
      if (chosenId && sending.has(chosenId)) return sending.get(chosenId);
      const send = sendOnce(number, body, chosenId, withMedia);
      if (chosenId) {
        sending.set(chosenId, send);
        send.then(() => sending.delete(chosenId), () => sending.delete(chosenId));
      }
      return send;
    },

    // Whether WhatsApp Web has our message `id` to `number` (sent before a crash), and its
    // ack. A send of that id still under way in this page is waited for first.
    async lookup(number, id) {
      if (sending.has(id)) {
        const outcome = await sending.get(id).catch(() => ({}));
        if (outcome && outcome.id) return {found: true, ack: 1};
      }
      return lookupStored(number, id);
    },

    // Receipts of our messages since the last call: [{id, ack}] (change:ack on Msg).
    drainAcks() {
      watchAcks();
      return acks.splice(0, acks.length);
    },

    // Incoming messages since the last call (see described()).
    drainIncoming() {
      watchIncoming();
      return incoming.splice(0, incoming.length);
    },

    // The incoming messages WhatsApp Web has with t >= sinceSeconds, new or not: after a reload
    // the chat list comes back from the page's storage with each chat's latest messages, and
    // earlier ones are loaded as WhatsApp Web loads them (WAWebChatLoadMessages). This finds
    // what a page took just before it died, before the driver drained it.
    async recentIncoming(sinceSeconds) {
      const Chat = (mod('WAWebCollections') || {}).Chat;
      if (!Chat) throw new Error('WhatsApp Web is not loaded');
      const since = Number(sinceSeconds) || 0;
      const out = [];
      for (const chat of Chat.getModelsArray()) {
        if (Number(chat.t) && Number(chat.t) < since) continue;
        out.push(...await chatIncoming(chat, since, 40));
      }
      return out;
    },

    // ---- Contacts and number checks (the pod's directory) ----

    // The contacts WhatsApp Web knows, read the way whatsapp-web.js getContacts reads them
    // (WAWebCollections.Contact, WAWebContactGetters, WAWebFrontendContactGetters.getIsMyContact):
    // users only (no groups, broadcasts, channels, nor the own account), with the phone number
    // and the LID where the page knows them (WAWebApiContact). A person may be listed twice (by
    // phone number and by LID): the pod merges them.
    // [{number, lid, name, pushName, isBusiness, isMyContact}]
    contacts() {
      const Contact = (mod('WAWebCollections') || {}).Contact;
      if (!Contact) throw new Error('WhatsApp Web is not loaded (WAWebCollections.Contact)');
      const getters = mod('WAWebContactGetters') || {};
      const frontend = mod('WAWebFrontendContactGetters') || {};
      const api = mod('WAWebApiContact') || {};
      const read = (getter, contact, field) => {
        try { return typeof getter === 'function' ? getter(contact) : contact[field]; } catch (e) { return contact[field]; }
      };
      const other = (f, wid) => { try { return typeof api[f] === 'function' ? api[f](wid) || null : null; } catch (e) { return null; } };
      const user = (wid) => (wid && wid.user != null ? String(wid.user) : null);
      const out = [];
      for (const contact of Contact.getModelsArray()) {
        const id = contact && contact.id;
        if (!id || typeof id.isUser !== 'function' || !id.isUser() || read(getters.getIsMe, contact, 'isMe')) continue;
        const lid = isLid(id) ? id : other('getCurrentLid', id);
        const pn = isLid(id) ? contact.phoneNumber || other('getPhoneNumber', id) : id;
        out.push({
          number: user(pn),
          lid: user(lid),
          name: read(getters.getName, contact, 'name') || null,
          pushName: read(getters.getPushname, contact, 'pushname') || null,
          isBusiness: !!contact.isBusiness,
          isMyContact: !!read(frontend.getIsMyContact, contact, 'isMyContact'),
        });
      }
      return out;
    },

    // Whether `digits` is on WhatsApp, by WhatsApp Web's own existence query (a request to
    // WhatsApp's servers: the pod paces these and keeps the answers). {exists, lid}
    async checkNumber(digits) {
      const factory = mod('WAWebWidFactory');
      const query = mod('WAWebQueryExistsJob');
      if (!factory || !query || typeof query.queryWidExists !== 'function') throw new Error('this WhatsApp Web build lacks WAWebQueryExistsJob.queryWidExists');
      const wid = factory.createWid(String(digits).replace(/[^0-9]/g, '') + '@c.us');
      const found = await query.queryWidExists(wid);
      if (!found) return {exists: false, lid: null};
      const api = mod('WAWebApiContact') || {};
      const lid = [found.lid, found.wid].find(isLid) || (typeof api.getCurrentLid === 'function' ? api.getCurrentLid(wid) : null);
      return {exists: true, lid: lid && lid.user != null ? String(lid.user) : null};
    },

    // ---- Media ----

    // Sends an image, video, audio or document ({kind, mimetype, dataBase64, filename, caption})
    // with the chosen message id, as sendText does a text (same answers, same in-flight dedupe).
    // The media goes the way WhatsApp Web's own attach flow and whatsapp-web.js take it: an
    // OpaqueData of the file (WAWebMediaOpaqueData), prepared (WAWebPrepRawMedia.prepRawMedia:
    // type, hash, preview), the chat-independent media object (WAWebMediaStorage), encrypted
    // and uploaded (WAWebMediaMmsV4Upload.uploadMedia), and the message carries the upload's
    // entry (directPath, mediaKey, encFilehash) with the caption.
    sendMedia(number, media, chosenId) {
      const gaps = lacking(MEDIA_NEEDS);
      if (gaps.length) return Promise.resolve(failure('BRIDGE_INCOMPATIBLE', 'this WhatsApp Web build lacks ' + gaps.join(', ')));
      const prepared = async () => {
        const binary = atob(String(media.dataBase64 || ''));
        const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
        const file = new File([bytes], media.filename || 'file', {type: media.mimetype, lastModified: Date.now()});
        const OpaqueData = mod('WAWebMediaOpaqueData');
        const types = mod('WAWebMmsMediaTypes');
        const prep = mod('WAWebPrepRawMedia').prepRawMedia(await OpaqueData.createFromData(file, media.mimetype), {asDocument: media.kind === 'document'});
        const data = await prep.waitForPrep();
        if (!data.filehash) throw new Error('WhatsApp Web did not prepare the media (no filehash)');
        const object = mod('WAWebMediaStorage').getOrCreateMediaObject(data.filehash);
        if (!(data.mediaBlob instanceof OpaqueData)) data.mediaBlob = await OpaqueData.createFromData(data.mediaBlob, data.mediaBlob.type);
        data.renderableUrl = data.mediaBlob.url();
        object.consolidate(data.toJSON());
        data.mediaBlob.autorelease();
        if (mod('WAWebMediaDataUtils').shouldUseMediaCache(types.castToV4(object.type))) {
          mod('WAWebMediaInMemoryBlobCache').InMemoryMediaBlobCache.put(object.filehash, data.mediaBlob.formData());
        }
        const mediaType = types.msgToMediaType({type: data.type, isGif: data.isGif});
        const uploaded = await mod('WAWebMediaMmsV4Upload').uploadMedia({mimetype: data.mimetype, mediaObject: object, mediaType});
        const entry = uploaded && uploaded.mediaEntry;
        if (!entry) throw new Error('WhatsApp did not take the upload (' + (uploaded && uploaded.kind) + ')');
        data.set({
          clientUrl: entry.mmsUrl, deprecatedMms3Url: entry.deprecatedMms3Url, directPath: entry.directPath,
          mediaKey: entry.mediaKey, mediaKeyTimestamp: entry.mediaKeyTimestamp, filehash: object.filehash,
          encFilehash: entry.encFilehash, uploadhash: entry.uploadHash, size: object.size,
          streamingSidecar: entry.sidecar, firstFrameSidecar: entry.firstFrameSidecar,
        });
        // A media message's body is its preview (a thumbnail, when there is one); the text is the caption.
        return Object.assign(data.toJSON(), {body: data.preview, caption: media.caption || undefined});
      };
      const withMedia = () => prepared().catch((e) => failure('SEND_FAILED', 'WhatsApp Web could not prepare or upload the media: ' + (e && e.message)));
      return this.sendText(number, '', chosenId, withMedia);
    },

    // The media of the incoming message `messageId` (of chat `chatId`): {mimetype, filename,
    // dataBase64}, or {error: {code: 'MEDIA_NOT_FOUND', message}} when the page or WhatsApp no
    // longer has it. Downloaded and decrypted the way whatsapp-web.js's Message.downloadMedia
    // does (msg.downloadMedia to resolve it, WAWebDownloadManager.downloadAndMaybeDecrypt).
    async downloadMedia(messageId, chatId) {
      const Msg = (mod('WAWebCollections') || {}).Msg;
      const manager = (mod('WAWebDownloadManager') || {}).downloadManager;
      if (!Msg || !manager) return failure('BRIDGE_INCOMPATIBLE', 'this WhatsApp Web build lacks WAWebDownloadManager.downloadManager');
      const theirs = (m) => !!m && !!m.id && !m.id.fromMe && m.id.id === messageId;
      let msg = Msg.getModelsArray().find(theirs);
      if (!msg && chatId && typeof Msg.getMessagesById === 'function') {
        const found = await Msg.getMessagesById(['false_' + chatId + '_' + messageId]);
        msg = ((found && found.messages) || []).find(theirs);
      }
      const gone = (why) => failure('MEDIA_NOT_FOUND', 'the media of ' + messageId + ' ' + why);
      if (!msg || !msg.mediaData) return gone('is not in WhatsApp Web');
      if (msg.mediaData.mediaStage === 'REUPLOADING') return gone('is being uploaded again by the sender\'s phone; try later');
      if (msg.mediaData.mediaStage !== 'RESOLVED') await msg.downloadMedia({downloadEvenIfExpensive: true, rmrReason: 1});
      const stage = String(msg.mediaData.mediaStage);
      if (stage.includes('ERROR') || stage === 'FETCHING') return gone('could not be downloaded (' + stage + ')');
      const qpl = {addAnnotations() { return this; }, addPoint() { return this; }};
      let data;
      try {
        data = await manager.downloadAndMaybeDecrypt({
          directPath: msg.directPath, encFilehash: msg.encFilehash, filehash: msg.filehash, mediaKey: msg.mediaKey,
          mediaKeyTimestamp: msg.mediaKeyTimestamp, type: msg.type, signal: new AbortController().signal, downloadQpl: qpl,
        });
      } catch (e) {
        if (e && e.status === 404) return gone('is no longer on WhatsApp\'s servers');
        throw e;
      }
      const dataUrl = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(String(reader.result));
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(new Blob([data]));
      });
      return {mimetype: msg.mimetype || null, filename: msg.filename || null, dataBase64: dataUrl.slice(dataUrl.indexOf(',') + 1)};
    },
  };

  const acks = [];
  let watchedMsg = null;
  function watchAcks() {
    const Msg = (mod('WAWebCollections') || {}).Msg;
    if (!Msg || Msg === watchedMsg || typeof Msg.on !== 'function') return;
    watchedMsg = Msg;
    Msg.on('change:ack', (msg, ack) => {
      if (msg && msg.id && msg.id.fromMe) acks.push({id: msg.id.id, ack: Number(ack)});
    });
  }

  Object.defineProperty(window, '__waoBridge', {value: bridge, enumerable: false});
})();
