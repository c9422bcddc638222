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
  // (today's export first, the older build's after it).
  const NEEDS = {
    WAWebSocketModel: ['Socket'],
    WAWebConnModel: ['Conn'],
    WAWebCmd: ['Cmd'],
    WAWebUserPrefsMeUser: ['getMaybeMePnUser|getMaybeMeUser'],
    WAWebUserPrefsInfoStore: ['waNoiseInfo'],
    WAWebSignalStoreApi: ['waSignalStore'],
    WAWebUserPrefsMultiDevice: ['getADVSecretKey'],
    WAWebCompanionRegClientUtils: ['DEVICE_PLATFORM'],
    WABase64: ['encodeB64'],
    WAWebAltDeviceLinkingApi: ['setPairingType', 'initializeAltDeviceLinking', 'startAltLinkingFlow'],
    WAWebWidFactory: ['createWid'],
    WAWebQueryExistsJob: ['queryWidExists'],
    WAWebFindChatAction: ['findOrCreateLatestChat'],
    WAWebMsgKey: ['newId'],
    WAWebSendMsgChatAction: ['addAndSendMsgToChat'],
  };

  // What of NEEDS this build lacks, as 'Module' or 'Module.export'.
  function missing() {
    const out = [];
    for (const [name, exports] of Object.entries(NEEDS)) {
      const m = mod(name);
      if (!m) { out.push(name); continue; }
      for (const alternatives of exports) {
        if (!alternatives.split('|').some((e) => m[e] !== undefined)) out.push(name + '.' + alternatives.split('|')[0]);
      }
    }
    return out;
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
    return [
      ref,
      b64.encodeB64(noise.staticKeyPair.pubKey),
      b64.encodeB64(registration.identityKeyPair.pubKey),
      mod('WAWebUserPrefsMultiDevice').getADVSecretKey(),
      mod('WAWebCompanionRegClientUtils').DEVICE_PLATFORM,
    ].join(',');
  }

  // The QR of the current ref, rebuilt when WhatsApp Web rotates the ref (change:ref).
  let qr = {ref: null, text: null};
  let watchedConn = null;
  async function currentQr(conn) {
    if (conn && conn !== watchedConn && typeof conn.on === 'function') {
      watchedConn = conn;
      conn.on('change:ref', () => { qr = {ref: null, text: null}; });
    }
    const ref = conn && conn.ref;
    if (ref && qr.ref !== ref) {
      try {
        qr = {ref, text: await qrString(ref)};
      } catch (e) {
        qr = {ref: null, text: null};
      }
    }
    if (ref && qr.ref === ref) return qr.text;
    // The QR component puts the same string in the DOM.
    const el = document.querySelector('div[data-ref]');
    const domRef = el && el.getAttribute('data-ref');
    return domRef && domRef.includes(',') ? domRef : null;
  }

  function failure(code, message) {
    return {error: {code, message}};
  }

  const bridge = {
    version: 2,

    // Everything the driver needs to know, in one call.
    async snapshot() {
      const loaded = !!(window.Debug && window.Debug.VERSION);
      const socket = (mod('WAWebSocketModel') || {}).Socket;
      const conn = (mod('WAWebConnModel') || {}).Conn;
      const {pn, lid} = meUsers();
      const me = pn || lid;
      return {
        loaded,
        webVersion: loaded ? String(window.Debug.VERSION) : null,
        missing: loaded ? missing() : null,
        modules: !!socket,
        state: socket ? socket.state : null,
        hasSynced: socket ? !!socket.hasSynced : false,
        ref: await currentQr(conn),
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

    refreshQR() {
      const cmd = (mod('WAWebCmd') || {}).Cmd;
      if (cmd && typeof cmd.refreshQR === 'function') { cmd.refreshQR(); return true; }
      const button = document.querySelector('div[data-ref] button');
      if (button) { button.click(); return true; }
      return false;
    },

    async logout() {
      const socket = (mod('WAWebSocketModel') || {}).Socket;
      if (!socket) throw new Error('WhatsApp Web is not loaded');
      await socket.logout();
      return true;
    },

    // Sends a text. Resolves {id} once WhatsApp Web reports it sent, or {error: {code,
    // message}} with NOT_ON_WHATSAPP, BRIDGE_INCOMPATIBLE or SEND_FAILED; throws only when the page itself fails.
    async sendText(number, body) {
      const gaps = missing();
      if (gaps.length) return failure('BRIDGE_INCOMPATIBLE', 'this WhatsApp Web build lacks ' + gaps.join(', '));
      const wid = mod('WAWebWidFactory').createWid(String(number) + '@c.us');
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
      const id = new MsgKey({from, to: chat.id, id: await MsgKey.newId(), participant: undefined, selfDir: 'out'});
      const ephemeralUtils = mod('WAWebGetEphemeralFieldsMsgActionsUtils');
      const ephemeral = ephemeralUtils && typeof ephemeralUtils.getEphemeralFields === 'function' ? ephemeralUtils.getEphemeralFields(chat) : {};
      const msg = Object.assign({
        id, ack: 0, body: String(body), from, to: chat.id, local: true, self: 'out',
        t: Math.floor(Date.now() / 1000), isNewMsg: true, type: 'chat',
      }, ephemeral);
      const [, sending] = mod('WAWebSendMsgChatAction').addAndSendMsgToChat(chat, msg);
      const result = await sending;
      const ok = result === 'OK' || (result && result.messageSendResult === 'OK');
      if (!ok) return failure('SEND_FAILED', 'WhatsApp Web did not send the message: ' + JSON.stringify(result));
      return {id: id.id};
    },
  };

  Object.defineProperty(window, '__waoBridge', {value: bridge, enumerable: false});
})();
