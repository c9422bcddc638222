// wa-bridge v2: the only code the session pod runs inside WhatsApp Web.
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
    if (!checked.sending && state === 'CONNECTED' && socket.hasSynced) checked.sending = lacking(SENDING);
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

  // One send of a text (see the bridge's sendText).
  async function sendOnce(number, body, chosenId) {
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
    const msg = Object.assign({
      id, ack: 0, body: String(body), from, to: chat.id, local: true, self: 'out',
      t: Math.floor(Date.now() / 1000), isNewMsg: true, type: 'chat',
    }, ephemeral);
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

  const bridge = {
    version: 2,

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
    sendText(number, body, chosenId) {
      if (chosenId && sending.has(chosenId)) return sending.get(chosenId);
      const send = sendOnce(number, body, chosenId);
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
