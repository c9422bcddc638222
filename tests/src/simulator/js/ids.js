// WhatsApp ids: wids (`<user>@<server>`: c.us phone users, lid users, g.us groups, broadcast,
// newsletter), message keys (`<fromMe>_<remote>_<id>[_<participant>]`), and base64.

class Wid {
  constructor(serialized) {
    const s = String(serialized);
    const at = s.indexOf('@');
    if (at <= 0 || at === s.length - 1) throw new Error('createWid: invalid wid "' + s + '"');
    let user = s.slice(0, at);
    let server = s.slice(at + 1);
    if (server === 's.whatsapp.net') server = 'c.us';
    const colon = user.indexOf(':');
    if (colon >= 0 && server !== 'g.us') user = user.slice(0, colon);
    this.server = server;
    this.user = user;
    this._serialized = user + '@' + server;
  }
  toString() {
    return this._serialized;
  }
  isLid() {
    return this.server === 'lid';
  }
  isUser() {
    return this.server === 'c.us' || this.server === 'lid';
  }
  isGroup() {
    return this.server === 'g.us';
  }
  isBroadcast() {
    return this.server === 'broadcast';
  }
  isStatus() {
    return this.server === 'broadcast' && this.user === 'status';
  }
  isNewsletter() {
    return this.server === 'newsletter';
  }
  isBot() {
    return this.server === 'bot';
  }
  equals(other) {
    if (other == null) return false;
    return this._serialized === (typeof other === 'string' ? other : other._serialized);
  }
  toJid() {
    return this.server === 'c.us' ? this.user + '@s.whatsapp.net' : this._serialized;
  }
}

// Like WhatsApp's, one Wid instance per id.
const widCache = new Map();
const WidFactory = {
  createWid(s) {
    if (s instanceof Wid) return s;
    if (s && typeof s === 'object' && typeof s._serialized === 'string') return WidFactory.createWid(s._serialized);
    if (typeof s !== 'string') throw new Error('createWid: invalid wid ' + String(s));
    const key = s.replace('@s.whatsapp.net', '@c.us');
    let wid = widCache.get(key);
    if (!wid) {
      wid = new Wid(key);
      widCache.set(key, wid);
    }
    return wid;
  },
  createWidFromWidLike(w) {
    return WidFactory.createWid(w);
  },
  createUserWid(user, server) {
    return new Wid(String(user) + '@' + (server || 'c.us'));
  },
  isWidlike(w) {
    return w instanceof Wid || (w != null && typeof w === 'object' && typeof w._serialized === 'string');
  },
  asUserWidOrThrow(w) {
    const wid = WidFactory.createWid(w);
    if (!wid.isUser()) throw new Error('asUserWidOrThrow: ' + wid + ' is not a user');
    return wid;
  },
  asUserLidOrThrow(w) {
    const wid = WidFactory.createWid(w);
    if (!wid.isLid()) throw new Error('asUserLidOrThrow: ' + wid + ' is not a LID user');
    return wid;
  },
  createUserWidOrThrow(user, server) {
    return WidFactory.asUserWidOrThrow(String(user) + '@' + (server || 'c.us'));
  },
};

function hexUpper(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('').toUpperCase();
}

// WhatsApp Web's own message ids (WAWebMsgKeyNewId): "3EB0" and the first 9 bytes, in uppercase
// hex, of a SHA-256 over the time in seconds (int64, big-endian), the own phone number user
// ("<digits>@c.us") and 16 random bytes: 22 characters. Without a logged-in user that fails and
// MsgKey.newId() falls back to newId_DEPRECATED(): "3EB0" and 8 random bytes in hex (20
// characters). Phones use 32 hex characters; the server takes any of them.
const MsgKeyNewId = {
  genMsgKeyUint() {
    const me = MsgKey._me();
    if (!me) throw new Error('getMePnUserOrThrow: no logged-in user');
    const jid = new TextEncoder().encode(me.toString());
    const out = new Uint8Array(8 + jid.length + 16);
    new DataView(out.buffer).setBigInt64(0, BigInt(Math.floor(Date.now() / 1000)));
    out.set(jid, 8);
    out.set(crypto.getRandomValues(new Uint8Array(16)), 8 + jid.length);
    return out;
  },
  async getMsgKeyNewSHA256Id() {
    const digest = await crypto.subtle.digest('SHA-256', MsgKeyNewId.genMsgKeyUint());
    return '3EB0' + hexUpper(new Uint8Array(digest, 0, 9));
  },
};

class MsgKey {
  constructor(opts) {
    const o = opts || {};
    if (typeof o.id !== 'string' || o.id.length === 0) throw new Error('MsgKey: id must be a non-empty string');
    let fromMe = o.fromMe;
    let remote = o.remote;
    const direct = o.from !== undefined || o.to !== undefined;
    if (direct && (o.fromMe !== undefined || o.remote !== undefined)) {
      throw new Error('MsgKey error: give either {from, to} or {fromMe, remote}');
    }
    if (direct) {
      if (!(o.from instanceof Wid) || !(o.to instanceof Wid)) throw new Error('MsgKey error: something is not a wid');
      if (!MsgKey._me()) throw new Error('MsgKey error: me is undefined');
      fromMe = o.selfDir !== undefined ? o.selfDir === 'out' : MsgKey._isMe(o.from);
      remote = fromMe ? o.to : o.from;
    }
    if (typeof fromMe !== 'boolean') throw new Error('MsgKey: fromMe (or selfDir) is required');
    if (remote == null) throw new Error('MsgKey: remote (or from/to) is required');
    this.fromMe = fromMe;
    this.remote = WidFactory.createWid(remote);
    this.id = o.id;
    if (o.participant != null) this.participant = WidFactory.createWid(o.participant);
    this._serialized =
      String(fromMe) + '_' + this.remote._serialized + '_' + this.id + (this.participant ? '_' + this.participant._serialized : '');
  }
  toString() {
    return this._serialized;
  }
  equals(other) {
    return other != null && this._serialized === (typeof other === 'string' ? other : other._serialized);
  }
  clone() {
    return new MsgKey({ fromMe: this.fromMe, remote: this.remote, id: this.id, participant: this.participant });
  }
  static async newId() {
    try {
      return await MsgKeyNewId.getMsgKeyNewSHA256Id();
    } catch (e) {
      return MsgKey.newId_DEPRECATED();
    }
  }
  static newId_DEPRECATED() {
    return '3EB0' + hexUpper(crypto.getRandomValues(new Uint8Array(8)));
  }
  static fromString(s) {
    const parts = String(s).split('_');
    if (parts.length < 3 || (parts[0] !== 'true' && parts[0] !== 'false')) {
      throw new Error('MsgKey.fromString: invalid key "' + s + '"');
    }
    return new MsgKey({ fromMe: parts[0] === 'true', remote: parts[1], id: parts[2], participant: parts[3] });
  }
  static from(k) {
    return k instanceof MsgKey ? k : MsgKey.fromString(typeof k === 'string' ? k : k._serialized);
  }
  static isMsgKey(k) {
    return k instanceof MsgKey;
  }
}

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) return new Uint8Array(data);
  throw new Error('encodeB64: expected bytes (ArrayBuffer or Uint8Array)');
}

const Base64 = {
  encodeB64(data) {
    let s = '';
    for (const b of toBytes(data)) s += String.fromCharCode(b);
    return btoa(s);
  },
  encodeB64UrlSafe(data, pad) {
    const s = Base64.encodeB64(data).replace(/\+/g, '-').replace(/\//g, '_');
    return pad ? s : s.replace(/=+$/, '');
  },
  decodeB64(s) {
    const bin = atob(String(s).replace(/-/g, '+').replace(/_/g, '/'));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  },
  decodeB64UrlSafe(s) {
    return Base64.decodeB64(s);
  },
};

const LINK_RE = /\b((?:https?:\/\/|www\.)[^\s<>"']+[^\s<>"'.,;:!?)\]])/gi;
const Linkify = {
  findLinks(text) {
    if (typeof text !== 'string') return [];
    const out = [];
    for (const m of text.matchAll(LINK_RE)) {
      const url = m[1];
      const href = /^https?:\/\//i.test(url) ? url : 'http://' + url;
      let domain = '';
      try {
        domain = new URL(href).hostname;
      } catch (e) {
        continue;
      }
      out.push({ url, href, domain, index: m.index, suspiciousCharacters: undefined });
    }
    return out;
  },
  findLink(text) {
    return Linkify.findLinks(text)[0];
  },
};
