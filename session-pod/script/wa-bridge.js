// wa-bridge v1: the only code the session pod runs inside WhatsApp Web.
//
// It reads the page's own module layer (window.require('WAWeb...')), as current drivers do,
// and falls back to the DOM (div[data-ref]) for the QR when a module is missing. Module names
// change between WhatsApp Web builds: this file is versioned and can be replaced from a
// ConfigMap (WAO_BRIDGE_SCRIPT) without rebuilding the session pod.
//
// The driver calls window.__waoBridge.snapshot() to poll, and the action functions below.
(function () {
  'use strict';
  if (window.__waoBridge) return;

  function mod(name) {
    try { return typeof window.require === 'function' ? window.require(name) : undefined; } catch (e) { return undefined; }
  }

  function domRef() {
    const el = document.querySelector('div[data-ref]');
    const ref = el && el.getAttribute('data-ref');
    return ref ? ref : null;
  }

  const bridge = {
    version: 1,

    // Everything the driver needs to know, in one call.
    snapshot() {
      const socket = (mod('WAWebSocketModel') || {}).Socket;
      const conn = (mod('WAWebConnModel') || {}).Conn;
      const meModule = mod('WAWebUserPrefsMeUser');
      const me = meModule && typeof meModule.getMaybeMeUser === 'function' ? meModule.getMaybeMeUser() : null;
      return {
        loaded: !!(window.Debug && window.Debug.VERSION),
        webVersion: window.Debug ? window.Debug.VERSION || null : null,
        modules: !!socket,
        state: socket ? socket.state : null,
        hasSynced: socket ? !!socket.hasSynced : false,
        ref: (conn && conn.ref) || domRef(),
        idle: socket ? socket.state === 'UNPAIRED_IDLE' : !!document.querySelector('div[data-ref] button'),
        me: me ? {phone: String(me.user), pushName: (conn && conn.pushname) || null} : null,
      };
    },

    async requestPairingCode(phone) {
      const api = mod('WAWebAltDeviceLinkingApi') || mod('WAWebPairingCodeLinkUtils');
      if (!api || typeof api.requestPairingCode !== 'function') throw new Error('pairing by phone code is not available in this WhatsApp Web build');
      return String(await api.requestPairingCode(String(phone)));
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

    // Sends a text; resolves once WhatsApp Web reports it sent, with the message id.
    async sendText(number, body) {
      const wid = mod('WAWebWidFactory').createWid(number + '@c.us');
      const found = await mod('WAWebFindChatAction').findOrCreateLatestChat(wid);
      const chat = found.chat || found;
      const me = mod('WAWebUserPrefsMeUser').getMaybeMeUser();
      const id = await mod('WAWebMsgKey').newId();
      const msg = {
        id: {fromMe: true, remote: chat.id, id, _serialized: 'true_' + chat.id._serialized + '_' + id},
        body, type: 'chat', t: Math.floor(Date.now() / 1000), from: me, to: chat.id, ack: 0, isNewMsg: true, local: true,
      };
      const [, sent] = mod('WAWebSendMsgChatAction').addAndSendMsgToChat(chat, msg);
      const result = await sent;
      if (result !== 'OK' && !(result && result.messageSendResult === 'OK')) throw new Error('WhatsApp Web did not send the message: ' + JSON.stringify(result));
      return {id};
    },
  };

  Object.defineProperty(window, '__waoBridge', {value: bridge, enumerable: false});
})();
