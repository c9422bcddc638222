// The page: WhatsApp Web's module layer over this profile's device and its connection to
// "WhatsApp's servers" (the simulator: POST /sim/* from the page, server events on
// GET /sim/events as the socket's incoming stanzas).

const SIM = window.__SIM__;
const CURRENT = SIM.build === 'current';
const DEVICE_PLATFORM = SIM.platform;

let device = null;
let login = null;
let conn = null;
let events = null;
let loggingOut = false;
let reconnectTimer = null;
const me = { pn: null, lid: null };
const lidByPn = new Map();
const pnByLid = new Map();

function b64(bytes) {
  return Base64.encodeB64(bytes);
}

async function post(path, body) {
  const res = await fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(Object.assign({ conn }, body || {})),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = new Error(data.message || 'HTTP ' + res.status);
    e.status = res.status;
    e.code = data.error;
    throw e;
  }
  return data;
}

// The LID <-> phone number mapping (WAWebApiContact's lidPnCache), kept in the contact table
// as WhatsApp Web keeps it (the LID contact's `phoneNumber`), so a reloaded page knows it again.
// Resolves once a new mapping is stored.
function remember(pn, lid, stored) {
  if (!pn || !lid) return Promise.resolve();
  const known = pnByLid.get(String(lid)) === String(pn);
  lidByPn.set(String(pn), String(lid));
  pnByLid.set(String(lid), String(pn));
  if (known || stored) return Promise.resolve();
  return contactDb
    .merge({ id: lid + '@lid', phoneNumber: pn + '@c.us', phoneNumberCreatedAt: Math.floor(Date.now() / 1000) })
    .catch((e) => console.error('storing the LID mapping failed', e));
}

// ---- the models drivers read -------------------------------------------------------------

const Socket = new Model({ state: 'OPENING', hasSynced: false, stream: 'DISCONNECTED' });
const Conn = new Model({ ref: null, pushname: undefined, platform: undefined, isSMB: false });
const Cmd = new Events();
const Stream = new Model({ available: false, displayInfo: 'OPENING', mode: 'MAIN' });
const OfflineMessageHandler = {
  _progress: 0,
  getOfflineDeliveryProgress() {
    return this._progress;
  },
};

Conn.serialize = function () {
  return { ref: this.ref, pushname: this.pushname, platform: this.platform, isSMB: this.isSMB };
};
Conn.canSetMyPushname = () => true;
Stream.markAvailable = () => Stream.set('available', true);
Stream.markUnavailable = () => Stream.set('available', false);

// A reply carries the quoted message's id, chat, author and data, as WhatsApp Web's Msg model does.
const MSG_FIELDS = ['id', 'rowId', 'type', 'body', 't', 'from', 'to', 'author', 'ack', 'self', 'isNewMsg', 'local', 'notifyName',
  'quotedStanzaID', 'quotedRemoteJid', 'quotedParticipant', 'quotedMsg'];
// The order of messages in a chat: the message table's rowId, growing with each stored message.
let nextRowId = 1;
class MsgModel extends Model {
  constructor(attrs) {
    super(
      Object.assign(
        {
          star: false,
          broadcast: false,
          isForwarded: false,
          forwardingScore: 0,
          hasReaction: false,
          isEphemeral: false,
          isStatusV3: false,
          mentionedJidList: [],
          groupMentions: [],
        },
        attrs,
      ),
      MSG_FIELDS,
    );
  }
  unsafe() {
    return this;
  }
  canReply() {
    return true;
  }
  msgContextInfo() {
    return { quotedMsg: this.serialize(), quotedStanzaID: this.id.id, quotedRemoteJid: this.id.remote };
  }
  // A media message's file, fetched and decrypted (see media.js).
  downloadMedia(opts) {
    return downloadMsgMedia(this, opts);
  }
}

class ContactModel extends Model {
  constructor(attrs) {
    super(
      Object.assign(
        {
          name: undefined,
          shortName: undefined,
          pushname: undefined,
          type: 'in',
          isBusiness: false,
          isEnterprise: false,
          isContactBlocked: false,
          isAddressBookContact: false,
          verifiedName: undefined,
          verifiedLevel: undefined,
          statusMute: false,
          labels: [],
        },
        attrs,
      ),
      ['id', 'name', 'pushname', 'phoneNumber'],
    );
  }
  get formattedName() {
    return this.name || this.pushname || formattedPhone(this.phoneNumber || this.id);
  }
}

class ChatModel extends Model {
  constructor(attrs) {
    super(
      Object.assign(
        {
          t: 0,
          unreadCount: 0,
          archive: false,
          pin: 0,
          isLocked: false,
          isReadOnly: false,
          mute: { expiration: 0 },
          muteExpiration: 0,
          notSpam: true,
          ephemeralDuration: 0,
          ephemeralSettingTimestamp: 0,
          lastReceivedKey: undefined,
          msgs: chatMsgs(),
        },
        attrs,
      ),
      ['id', 'name', 't', 'unreadCount', 'lastReceivedKey', 'archive'],
    );
  }
  get formattedTitle() {
    const contact = Contact.get(this.id);
    return (contact && contact.formattedName) || this.name || formattedPhone(this.id);
  }
}

// A chat's messages, oldest first, and how far back they are loaded (msgLoadState; the rowId
// the loaded stretch starts at: messages looked up one by one do not extend it).
function chatMsgs() {
  const msgs = new Collection(MsgModel);
  msgs.msgLoadState = { noEarlierMsgs: false, isLoadingEarlierMsgs: false };
  Object.defineProperty(msgs, '_loadedFrom', { value: Infinity, writable: true, enumerable: false });
  return msgs;
}

function formattedPhone(wid) {
  if (!wid) return '';
  const w = WidFactory.createWid(wid);
  return w.isLid() ? w.user : '+' + w.user;
}

async function contactFinder(id) {
  const wid = WidFactory.createWid(id);
  return Contact.add(newContact(wid, {}));
}

async function chatFinder(id) {
  return (await findOrCreateLatestChat(id)).chat;
}

const Msg = new Collection(MsgModel);
const Chat = new Collection(ChatModel, chatFinder);
const Contact = new Collection(ContactModel, contactFinder);
const Blocklist = new Collection(Model);
const BusinessProfile = new Collection(Model, async (id) => BusinessProfile.add(new Model({ id: WidFactory.createWid(id) })));
const Label = new Collection(Model);
const Status = new Collection(Model);
const GroupMetadata = new Collection(Model);
GroupMetadata.update = async () => {};
// Looks messages up by key (`true_<chat>_<id>`, or a MsgKey): in memory, else in this profile's
// IndexedDB, whence they join the collection (as WhatsApp Web's processMultipleMessages does with
// {add: 'search'}; isNewMsg false, so no "new message" for drivers). A bare id is no key: the
// real table is keyed by the full key, and WAWebDBMessageFindLocal.getMsgsByMsgIdsAndChatId
// finds bare ids of one chat.
Msg.getMessagesById = async (ids) => {
  const messages = [];
  for (const id of ids || []) {
    const key = typeof id === 'string' ? id : id && typeof id._serialized === 'string' ? id._serialized : null;
    if (!key) continue;
    let msg = Msg.get(key);
    if (!msg) {
      const row = await msgDb.get(key);
      if (!row) continue;
      msg = Msg.add(msgFromRow(row));
      storedMsgs.add(msg);
      const chat = Chat.get(msg.id.remote);
      if (chat) chat.msgs.add(msg);
    }
    messages.push(msg);
  }
  return { messages, eof: true, canceled: false };
};
Msg.search = async () => ({ messages: [] });
const CallCollection = new Collection(Model);

// ---- messages kept in the profile ------------------------------------------------------
//
// Every message the page sends or receives is written to IndexedDB (`model-storage`, table
// `message`, keyed by its key) before anything else happens to it, and again when its ack
// changes, so a message WhatsApp has is found again after Chromium is killed. Acks that arrive
// for messages not in memory update the stored row.

const storedAck = new Map(); // key → ack, for every message this profile stores
const storedMsgs = new WeakSet(); // models whose changes are stored
const inFlight = new Set(); // keys of messages being sent now

function msgRow(msg) {
  const row = {
    id: msg.id._serialized,
    rowId: msg.rowId,
    type: msg.type,
    body: msg.body,
    t: msg.t,
    from: msg.from ? msg.from._serialized : undefined,
    to: msg.to ? msg.to._serialized : undefined,
    ack: msg.ack,
    self: msg.self,
    notifyName: msg.notifyName,
    ephemeralDuration: msg.ephemeralDuration || 0,
  };
  if (msg.quotedStanzaID) {
    row.quotedStanzaID = msg.quotedStanzaID;
    row.quotedRemoteJid = msg.quotedRemoteJid ? msg.quotedRemoteJid._serialized : undefined;
    row.quotedParticipant = msg.quotedParticipant ? msg.quotedParticipant._serialized : undefined;
    row.quotedMsg = msg.quotedMsg;
  }
  return Object.assign(row, mediaRow(msg));
}

function msgFromRow(row) {
  const quoted = {};
  if (row.quotedStanzaID) {
    quoted.quotedStanzaID = row.quotedStanzaID;
    quoted.quotedRemoteJid = row.quotedRemoteJid ? WidFactory.createWid(row.quotedRemoteJid) : undefined;
    quoted.quotedParticipant = row.quotedParticipant ? WidFactory.createWid(row.quotedParticipant) : undefined;
    quoted.quotedMsg = row.quotedMsg;
  }
  return new MsgModel(withMedia(Object.assign(quoted, pickMediaFields(row), {
    id: MsgKey.fromString(row.id),
    rowId: row.rowId || 0,
    type: row.type,
    body: row.body,
    t: row.t,
    from: row.from ? WidFactory.createWid(row.from) : undefined,
    to: row.to ? WidFactory.createWid(row.to) : undefined,
    author: undefined,
    ack: row.ack,
    self: row.self,
    notifyName: row.notifyName || '',
    ephemeralDuration: row.ephemeralDuration || 0,
    isNewMsg: false,
    local: false,
  }), false));
}

function chatRow(chat) {
  return {
    id: chat.id._serialized,
    t: chat.t,
    unreadCount: chat.unreadCount || 0,
    archive: !!chat.archive,
    ephemeralDuration: chat.ephemeralDuration || 0,
    ephemeralSettingTimestamp: chat.ephemeralSettingTimestamp || 0,
    lastReceivedKey: chat.lastReceivedKey ? chat.lastReceivedKey._serialized : undefined,
  };
}

function chatFromRow(row) {
  return new ChatModel({
    id: WidFactory.createWid(row.id),
    t: row.t || 0,
    unreadCount: row.unreadCount || 0,
    archive: !!row.archive,
    ephemeralDuration: row.ephemeralDuration || 0,
    ephemeralSettingTimestamp: row.ephemeralSettingTimestamp || 0,
    lastReceivedKey: row.lastReceivedKey ? MsgKey.fromString(row.lastReceivedKey) : undefined,
  });
}

function persist(msg) {
  storedMsgs.add(msg);
  storedAck.set(msg.id._serialized, msg.ack);
  return msgDb.put(msgRow(msg));
}

// A new message of `chat` and the chat's row, in one transaction.
function persistWithChat(msg, chat) {
  storedMsgs.add(msg);
  storedAck.set(msg.id._serialized, msg.ack);
  return storeMsgAndChat(msgRow(msg), chatRow(chat));
}

// The chat a stored message belongs to (its key's remote).
function chatOfRow(row) {
  return MsgKey.fromString(row.id).remote._serialized;
}

Msg.on('change:ack', (msg) => {
  if (storedMsgs.has(msg)) persist(msg).catch((e) => console.error('storing the message failed', e));
});

// ---- the chat list, restored when the page loads ---------------------------------------
//
// WhatsApp Web restores its chat list from the chat table when it loads, each chat with its
// most recent message (what the chat list shows; isNewMsg false: nothing new for drivers);
// earlier messages come from the message table, a page at a time, with
// WAWebChatLoadMessages.loadEarlierMsgs({chat}) (older builds: loadEarlierMsgs(chat)).

const PAGE_SIZE = 50; // WAWebCollectionConstants.PAGE_SIZE
const RESTORED_PER_CHAT = 1;

// A stored message as a model of the collections (the one already there, if any).
function loadedMsg(row) {
  const existing = Msg.get(row.id);
  if (existing) return existing;
  const msg = Msg.add(msgFromRow(row));
  storedMsgs.add(msg);
  return msg;
}

// Adds earlier stored messages to their chat, keeping the chat's messages in stored order.
function addEarlier(chat, msgs) {
  chat.msgs.add(msgs);
  chat.msgs.models.sort((a, b) => (a.rowId || 0) - (b.rowId || 0));
  for (const m of msgs) chat.msgs._loadedFrom = Math.min(chat.msgs._loadedFrom, m.rowId || 0);
}

async function restoreChats() {
  const [chats, rows, contacts] = await Promise.all([chatDb.all(), msgDb.all(), contactDb.all()]);
  for (const c of contacts) {
    const lid = WidFactory.createWid(c.id);
    if (lid.isLid() && c.phoneNumber) remember(WidFactory.createWid(c.phoneNumber).user, lid.user, true);
  }
  const byChat = new Map();
  for (const row of rows) {
    nextRowId = Math.max(nextRowId, (row.rowId || 0) + 1);
    const chat = chatOfRow(row);
    if (!byChat.has(chat)) byChat.set(chat, []);
    byChat.get(chat).push(row);
  }
  for (const row of chats) {
    if (Chat.get(row.id)) continue;
    const chat = Chat.add(chatFromRow(row));
    const recent = (byChat.get(row.id) || []).sort((a, b) => (a.rowId || 0) - (b.rowId || 0)).slice(-RESTORED_PER_CHAT);
    addEarlier(chat, recent.map(loadedMsg));
  }
}

async function loadEarlierMsgs(arg) {
  const chat = CURRENT ? arg && arg.chat : arg;
  if (!(chat instanceof ChatModel)) {
    throw new Error('loadEarlierMsgs: expected ' + (CURRENT ? '{chat}' : 'a chat') + ', got ' + String(arg));
  }
  const state = chat.msgs.msgLoadState;
  if (state.noEarlierMsgs) return [];
  state.isLoadingEarlierMsgs = true;
  try {
    const chatId = chat.id._serialized;
    const rows = (await msgDb.all())
      .filter((row) => chatOfRow(row) === chatId && (row.rowId || 0) < chat.msgs._loadedFrom && !chat.msgs.get(row.id))
      .sort((a, b) => (a.rowId || 0) - (b.rowId || 0));
    const page = rows.slice(-PAGE_SIZE);
    if (rows.length <= PAGE_SIZE) state.noEarlierMsgs = true;
    const msgs = page.map(loadedMsg);
    addEarlier(chat, msgs);
    return msgs;
  } finally {
    state.isLoadingEarlierMsgs = false;
  }
}

// WAWebDBMessageFindLocal: the message table itself. getMsgByMsgKey/getMsgsByMsgKey give message
// data (not collection models); getMsgsByMsgIdsAndChatId gives the rows whose key starts with
// `true_<chat>_<id>` or `false_<chat>_<id>`.
const DBMessageFindLocal = {
  async getMsgByMsgKey(key) {
    const row = await msgDb.get(String(key));
    return row ? msgFromRow(row).serialize() : null;
  },
  async getMsgsByMsgKey(keys) {
    const rows = await Promise.all((keys || []).map((k) => msgDb.get(String(k))));
    return rows.filter(Boolean).map((row) => msgFromRow(row).serialize());
  },
  async getMsgsByMsgIdsAndChatId(ids, chatId) {
    const chat = WidFactory.createWid(chatId)._serialized;
    const prefixes = [];
    for (const id of ids || []) prefixes.push('true_' + chat + '_' + id, 'false_' + chat + '_' + id);
    const rows = await msgDb.all();
    return rows.filter((row) => prefixes.some((p) => row.id.startsWith(p)));
  },
};

function newContact(wid, extra) {
  const attrs = Object.assign({ id: wid }, extra);
  if (wid.isLid() && pnByLid.has(wid.user)) attrs.phoneNumber = new Wid(pnByLid.get(wid.user) + '@c.us');
  return new ContactModel(attrs);
}

function upsertContact(wid, pushname) {
  const existing = Contact.get(wid);
  if (existing) {
    if (pushname && existing.pushname !== pushname) existing.pushname = pushname;
    return existing;
  }
  return Contact.add(newContact(wid, { pushname }));
}

// ---- the logged-in user ------------------------------------------------------------------

function lidMigrated() {
  return CURRENT && me.lid != null;
}

function requireLoggedIn(what) {
  if (!me.pn) throw new Error(what + ': not logged in');
}

MsgKey._me = () => me.pn;
MsgKey._isMe = (w) => (me.pn && me.pn.equals(w)) || (me.lid && me.lid.equals(w));

const MeUserCurrent = {
  getMaybeMePnUser: () => me.pn || undefined,
  getMaybeMeLidUser: () => me.lid,
  getMeUserOrThrow() {
    if (!me.pn) throw new Error('getMeUserOrThrow: no logged-in user');
    return me.pn;
  },
  getMePnUserOrThrow() {
    if (!me.pn) throw new Error('getMePnUserOrThrow: no logged-in user');
    return me.pn;
  },
  getMeLidUserOrThrow() {
    if (!me.lid) throw new Error('getMeLidUserOrThrow: no LID user');
    return me.lid;
  },
  isMeAccount: (w) => w != null && ((me.pn && me.pn.equals(w)) || (me.lid && me.lid.equals(w))),
};
const MeUserLegacy = {
  getMaybeMeUser: () => me.pn || undefined,
  getMeUser() {
    if (!me.pn) throw new Error('getMeUser: no logged-in user');
    return me.pn;
  },
  isMeAccount: (w) => w != null && me.pn != null && me.pn.equals(w),
};

// ---- chats, contacts, lookups ------------------------------------------------------------

// On a LID-migrated account the latest chat with a phone number is the contact's LID chat, and
// the page must already know that LID (from a lookup, a contact sync or a message): otherwise
// the real page throws "No LID for user".
async function findOrCreateLatestChat(widLike) {
  requireLoggedIn('findOrCreateLatestChat');
  let wid = WidFactory.createWid(widLike);
  if (!wid.isUser()) throw new Error('findOrCreateLatestChat: ' + wid + ' is not a user (the simulator models 1:1 chats)');
  if (lidMigrated() && !wid.isLid()) {
    const lid = lidByPn.get(wid.user);
    if (!lid) throw new Error('No LID for user');
    wid = new Wid(lid + '@lid');
  }
  if (!lidMigrated() && wid.isLid()) {
    throw new Error('findOrCreateLatestChat: this account is not LID-migrated; use the phone number wid, not ' + wid);
  }
  const existing = Chat.get(wid);
  if (existing) return { chat: existing, created: false };
  const chat = Chat.add(new ChatModel({ id: wid }));
  return { chat, created: true };
}

async function queryExists(wid) {
  const r = await post('/sim/exists', { wid: wid._serialized });
  if (!r.exists) return null;
  remember(r.phone, r.lid);
  const pnWid = new Wid(r.phone + '@c.us');
  const lidWid = r.lid ? new Wid(r.lid + '@lid') : undefined;
  return {
    wid: wid.isLid() ? lidWid : pnWid,
    lid: lidWid,
    biz: Boolean(r.biz),
    bizInfo: undefined,
    disappearingMode: { duration: 0, settingTimestamp: 0 },
  };
}

async function queryWidExists(widLike) {
  requireLoggedIn('queryWidExists');
  return queryExists(WidFactory.createWid(widLike));
}

async function queryPhoneExists(phone) {
  requireLoggedIn('queryPhoneExists');
  const digits = String(phone).replace(/^\+/, '');
  if (!/^\d+$/.test(digits)) throw new Error('queryPhoneExists: expected "+<digits>", got ' + phone);
  return queryExists(new Wid(digits + '@c.us'));
}

const ApiContact = {
  getCurrentLid(w) {
    const wid = WidFactory.createWid(w);
    if (wid.isLid()) return wid;
    const lid = lidByPn.get(wid.user);
    return lid ? new Wid(lid + '@lid') : null;
  },
  getPhoneNumber(w) {
    const wid = WidFactory.createWid(w);
    if (!wid.isLid()) return wid;
    const pn = pnByLid.get(wid.user);
    return pn ? new Wid(pn + '@c.us') : null;
  },
  getAlternateUserWid(w) {
    const wid = WidFactory.createWid(w);
    return wid.isLid() ? ApiContact.getPhoneNumber(wid) : ApiContact.getCurrentLid(wid);
  },
};

const ContactGetters = {
  getIsMe: (c) => MeUserCurrent.isMeAccount(c.id),
  getIsUser: (c) => c.id.isUser(),
  getIsGroup: (c) => c.id.isGroup(),
  getIsWAContact: (c) => !c.id.isGroup() && !c.id.isBroadcast(),
  getUserid: (c) => c.id.user,
  getVerifiedName: (c) => c.verifiedName,
  getVerifiedLevel: (c) => c.verifiedLevel,
  getStatusMute: (c) => c.statusMute,
  getName: (c) => c.name,
  getShortName: (c) => c.shortName,
  getPushname: (c) => c.pushname,
  getIsEnterprise: (c) => c.isEnterprise,
  getIsBusiness: (c) => c.isBusiness,
  getPhoneNumber: (c) => c.phoneNumber,
  getFormattedName: (c) => c.formattedName,
};

const ChatGetters = {
  getIsNewsletter: (c) => c.id.isNewsletter(),
  getIsBroadcast: (c) => c.id.isBroadcast(),
  getIsGroup: (c) => c.id.isGroup(),
  getIsUser: (c) => c.id.isUser(),
  getFormattedTitle: (c) => c.formattedTitle,
};

// ---- sending -----------------------------------------------------------------------------

function whenConnected() {
  if (Socket.state === 'CONNECTED') return Promise.resolve();
  return new Promise((resolve) => {
    const wait = (_s, state) => {
      if (state === 'CONNECTED') {
        Socket.off('change:state', wait);
        resolve();
      }
    };
    Socket.on('change:state', wait);
  });
}

function refuse(why) {
  throw new Error('addAndSendMsgToChat: ' + why);
}

// What WhatsApp checks before a message leaves: a key for this chat, the sender in the chat's
// addressing mode (the LID user in a LID chat, else the phone number user: anything else
// reaches the recipient from "an unknown user"), a text body, a timestamp in seconds.
function validateOutgoing(chat, m) {
  if (!(chat instanceof ChatModel) || Chat.get(chat.id) !== chat) refuse('chat is not a chat of this page (use findOrCreateLatestChat)');
  if (!m || typeof m !== 'object') refuse('message must be an object');
  if (!(m.id instanceof MsgKey)) refuse('message id must be a WAWebMsgKey (new MsgKey({from, to, id, selfDir: "out"}))');
  if (!m.id.fromMe) refuse('message key must be fromMe (selfDir "out")');
  if (!m.id.remote.equals(chat.id)) refuse('message key remote ' + m.id.remote + ' is not the chat ' + chat.id);
  // A key this profile has (in memory or stored before a restart) is taken, unless its message
  // failed (ack -1): that one may be sent again.
  const known = Msg.get(m.id._serialized);
  const knownAck = known ? known.ack : storedAck.get(m.id._serialized);
  if (knownAck !== undefined && knownAck !== -1) refuse('a message with key ' + m.id._serialized + ' exists already');
  if (!WidFactory.isWidlike(m.to) || !chat.id.equals(m.to)) refuse('"to" must be the chat id ' + chat.id);
  const expected = chat.id.isLid() ? me.lid : me.pn;
  if (!WidFactory.isWidlike(m.from) || !expected || !expected.equals(m.from)) {
    refuse(
      '"from" is ' + (m.from && m.from._serialized) + ' but this ' + (chat.id.isLid() ? 'LID' : 'phone number') +
        ' chat needs ' + (expected && expected._serialized) + ': the recipient would see the message from an unknown user',
    );
  }
  if (m.type === 'chat') {
    if (typeof m.body !== 'string' || m.body.length === 0) refuse('a text message needs a non-empty string body');
  } else if (MEDIA_MSG_TYPES.has(m.type)) {
    checkOutgoingMedia(m, refuse);
  } else {
    refuse('type ' + JSON.stringify(m.type) + ' is not modelled (the simulator sends text, type "chat", and media)');
  }
  if (m.self !== 'out') refuse('self must be "out"');
  if (m.ack !== 0) refuse('a new message starts with ack 0');
  const now = Date.now() / 1000;
  if (!Number.isInteger(m.t) || Math.abs(m.t - now) > 600) refuse('t must be the current time in whole seconds (got ' + m.t + ')');
  if ((m.ephemeralDuration || 0) !== (chat.ephemeralDuration || 0)) refuse('the chat ephemeral fields are missing (getEphemeralFields(chat))');
}

// The message is stored (ack 0, pending) before it leaves; sent, WhatsApp's ack makes it 1. A
// refusal (WhatsApp's rate-overlimit among them) makes it -1 and the result is not OK.
function addAndSendMsgToChat(chat, m) {
  validateOutgoing(chat, m);
  const failed = Msg.get(m.id._serialized);
  if (failed) {
    chat.msgs.remove(failed);
    Msg.remove(failed);
  }
  const msg = new MsgModel(withMedia(Object.assign({}, m, { rowId: nextRowId++, isNewMsg: true, local: true }), true));
  Msg.add(msg);
  chat.msgs.add(msg);
  chat.t = msg.t;
  const key = msg.id._serialized;
  inFlight.add(key);
  const added = Promise.resolve([msg]);
  const sent = (async () => {
    try {
      await persistWithChat(msg, chat).catch((e) => console.error('storing the message failed', e));
      await whenConnected();
      return await transmit(msg, false);
    } finally {
      inFlight.delete(key);
    }
  })();
  return [added, sent];
}

async function transmit(msg, resend) {
  try {
    const r = await post('/sim/send', {
      id: msg.id.id,
      to: msg.id.remote._serialized,
      from: msg.from._serialized,
      type: msg.type,
      body: msg.body,
      media: mediaOfMsg(msg),
      t: msg.t,
      resend,
    });
    const ack = typeof r.ack === 'number' ? r.ack : 1;
    if (msg.ack < ack) msg.ack = ack;
    return CURRENT ? { messageSendResult: 'OK', t: msg.t } : 'OK';
  } catch (e) {
    console.error('send failed', e);
    msg.ack = -1;
    return CURRENT ? { messageSendResult: 'ERROR_UNKNOWN', error: e.message } : 'ERROR';
  }
}

// After a restart WhatsApp Web sends again what it had stored as pending (ack 0): messages that
// were leaving when the browser went away. WhatsApp takes a message it has already as the same.
async function resendPending() {
  let rows;
  try {
    rows = await msgDb.all();
  } catch (e) {
    console.error('reading the stored messages failed', e);
    return;
  }
  for (const row of rows) {
    if (row.self !== 'out' || row.ack !== 0 || inFlight.has(row.id)) continue;
    const msg = Msg.get(row.id) || Msg.add(msgFromRow(row));
    storedMsgs.add(msg);
    inFlight.add(row.id);
    transmit(msg, true).finally(() => inFlight.delete(row.id));
  }
}

function getEphemeralFields(chat) {
  return {
    ephemeralDuration: (chat && chat.ephemeralDuration) || 0,
    ephemeralSettingTimestamp: (chat && chat.ephemeralSettingTimestamp) || 0,
    disappearingModeInitiator: 'chat',
  };
}

async function sendSeen({ chat }) {
  if (chat && chat.unreadCount) chat.unreadCount = 0;
}

// ---- incoming from the server ------------------------------------------------------------

// The phone's address book, as WhatsApp's app-state sync brings it (its contact mutations: the
// saved full and first name of each WhatsApp user in it, with the phone number and the LID):
// each becomes a Contact with `name`, `shortName` and `isAddressBookContact` (what
// WAWebFrontendContactGetters.getIsMyContact reads); on a LID-migrated account its LID contact
// too, with its `phoneNumber`. A business account is `isBusiness` with its `verifiedName`. An
// entry deleted from the address book leaves a plain WhatsApp user: no saved name any more.
function onAddressBook(ev) {
  const listed = new Set();
  for (const entry of ev.contacts || []) {
    remember(entry.phone, entry.lid);
    const attrs = {
      name: entry.name,
      shortName: entry.shortName,
      isAddressBookContact: true,
      isBusiness: Boolean(entry.business),
      verifiedName: entry.verifiedName || undefined,
    };
    const wids = [new Wid(entry.phone + '@c.us')];
    if (lidMigrated() && entry.lid) wids.push(new Wid(entry.lid + '@lid'));
    for (const wid of wids) {
      listed.add(wid._serialized);
      const existing = Contact.get(wid);
      if (existing) existing.set(attrs);
      else Contact.add(newContact(wid, attrs));
    }
  }
  for (const contact of Contact.getModelsArray()) {
    if (contact.isAddressBookContact && !listed.has(contact.id._serialized)) {
      contact.set({ isAddressBookContact: false, name: undefined, shortName: undefined });
    }
  }
}

// Incoming messages are taken one at a time, in the order the server sends them: each is stored
// (the message and its chat's row) before it joins the collections, and only then does the page
// send the server its delivery receipt. The server keeps a message until that receipt, and
// sends it again when the page connects again (WhatsApp's offline delivery), so a message the
// page had not stored when it died is not lost; one it has stored is receipted again, not added.
let receiving = Promise.resolve();
function onIncoming(ev) {
  receiving = receiving.then(() => receive(ev)).catch((e) => console.error('receiving a message failed', e));
}

async function receive(ev) {
  await remember(ev.phone, ev.lid);
  const sender = lidMigrated() && ev.lid ? new Wid(ev.lid + '@lid') : new Wid(ev.phone + '@c.us');
  upsertContact(sender, ev.pushName);
  const key = new MsgKey({ fromMe: false, remote: sender, id: ev.id });
  const known = Msg.get(key._serialized);
  if (known && known.type === 'ciphertext') return ev.undecryptable ? undefined : decrypted(known, ev);
  if (known || storedAck.has(key._serialized)) return receipt(ev);
  const chat = Chat.get(sender) || Chat.add(new ChatModel({ id: sender }));
  const msg = new MsgModel(withMedia(
    Object.assign(quotedFields(ev.quoted, sender), receivedMedia(ev), {
      id: key,
      rowId: nextRowId++,
      type: ev.undecryptable ? 'ciphertext' : ev.media ? ev.media.type : 'chat',
      body: ev.undecryptable || ev.media ? undefined : ev.body,
      t: ev.t,
      from: sender,
      to: sender.isLid() ? me.lid : me.pn,
      author: undefined,
      notifyName: ev.pushName || '',
      ack: 1,
      self: 'in',
      isNewMsg: true,
      local: false,
    }), false),
  );
  chat.set({ t: ev.t, lastReceivedKey: key, unreadCount: (chat.unreadCount || 0) + 1 });
  if (ev.undecryptable) {
    // "Waiting for this message": a placeholder, not stored; the page asks for the message again.
    Msg.add(msg);
    chat.msgs.add(msg);
    return post('/sim/retry', { id: ev.id }).catch(() => {});
  }
  await persistWithChat(msg, chat);
  Msg.add(msg);
  chat.msgs.add(msg);
  return receipt(ev);
}

// The copy that follows a retry receipt: the placeholder becomes the message (stored first; its
// body and then its type change, firing change:type).
async function decrypted(msg, ev) {
  const chat = Chat.get(msg.id.remote) || Chat.add(new ChatModel({ id: msg.id.remote }));
  await storeMsgAndChat(Object.assign(msgRow(msg), { type: 'chat', body: ev.body }), chatRow(chat));
  storedMsgs.add(msg);
  storedAck.set(msg.id._serialized, msg.ack);
  msg.set({ body: ev.body, type: 'chat' });
  return receipt(ev);
}

// The fields of a reply: the quoted message's id, chat and author in the chat's addressing, and
// its data (the reply carries the quoted message, so the page has it even when it does not).
function quotedFields(quoted, chatId) {
  if (!quoted) return {};
  let author = chatId;
  if (quoted.fromMe) author = chatId.isLid() ? me.lid : me.pn;
  return {
    quotedStanzaID: quoted.id,
    quotedRemoteJid: chatId,
    quotedParticipant: author,
    quotedMsg: { type: 'chat', body: quoted.body },
  };
}

function receipt(ev) {
  return post('/sim/receipt', { id: ev.id, phone: ev.phone }).catch(() => {
    // The connection is gone: the server sends the message again when the page is back.
  });
}

// An ack names the message's id and chat; a message not in memory is updated where it is stored.
function onAck(ev) {
  const key = ev.remote ? 'true_' + ev.remote + '_' + ev.id : null;
  const msg = (key && Msg.get(key)) || Msg.models.find((m) => m.id.fromMe && m.id.id === ev.id);
  if (msg) {
    if (msg.ack < ev.ack) msg.ack = ev.ack;
    return;
  }
  if (!key || !(storedAck.get(key) < ev.ack)) return;
  storedAck.set(key, ev.ack);
  msgDb
    .get(key)
    .then((row) => {
      if (row && row.ack < ev.ack) return msgDb.put(Object.assign(row, { ack: ev.ack }));
    })
    .catch((e) => console.error('storing the ack failed', e));
}

// ---- pairing -----------------------------------------------------------------------------

let pairingType = 'QR_CODE';
let altInitialized = false;
let linkCode = null;
const CODE_ALPHABET = '123456789ABCDEFGHJKLMNPQRSTVWXYZ';

function requireUnpaired(what) {
  if (!conn || (Socket.state !== 'UNPAIRED' && Socket.state !== 'UNPAIRED_IDLE')) {
    throw new Error(what + ': only while the page is unpaired (socket state ' + Socket.state + ')');
  }
}

const AltDeviceLinkingApi = {
  setPairingType(t) {
    if (t !== 'QR_CODE' && t !== 'ALT_DEVICE_LINKING') throw new Error('setPairingType: unknown pairing type ' + t);
    pairingType = t;
  },
  getPairingType: () => pairingType,
  getCurrentRef: () => Conn.ref,
  async initializeAltDeviceLinking() {
    requireUnpaired('initializeAltDeviceLinking');
    if (pairingType !== 'ALT_DEVICE_LINKING') throw new Error('initializeAltDeviceLinking: pairing type is ' + pairingType);
    altInitialized = true;
  },
  async startAltLinkingFlow(phone, showNotification) {
    requireUnpaired('startAltLinkingFlow');
    if (!altInitialized) throw new Error('startAltLinkingFlow: call initializeAltDeviceLinking() first');
    const digits = String(phone);
    if (!/^\d{8,15}$/.test(digits)) throw new Error('startAltLinkingFlow: the phone number must be 8 to 15 digits, got ' + JSON.stringify(phone));
    const random = crypto.getRandomValues(new Uint8Array(8));
    const code = Array.from(random, (b) => CODE_ALPHABET[b % CODE_ALPHABET.length]).join('');
    await post('/sim/link-code', {
      phone: digits,
      codeHash: await sha256Hex(new TextEncoder().encode(code)),
      showNotification: showNotification !== false,
    });
    linkCode = code;
    render();
    return code;
  },
  async initializeQRLinking() {
    pairingType = 'QR_CODE';
    altInitialized = false;
    if (linkCode) await post('/sim/link-code', { cancel: true }).catch(() => {});
    linkCode = null;
    render();
  },
};

function refreshQR() {
  if (!conn || (Socket.state !== 'UNPAIRED' && Socket.state !== 'UNPAIRED_IDLE')) return;
  post('/sim/refresh-qr').catch((e) => console.error('refreshQR', e));
}
Cmd.refreshQR = refreshQR;

function qrString(ref) {
  return ref + ',' + b64(device.noise.pubKey) + ',' + b64(device.identity.pubKey) + ',' + device.advSecret + ',' + DEVICE_PLATFORM;
}

// ---- the connection ----------------------------------------------------------------------

async function connect() {
  if (reconnectTimer) clearTimeout(reconnectTimer);
  reconnectTimer = null;
  const previous = conn;
  if (events) events.close();
  events = null;
  conn = null;
  let res;
  try {
    res = await fetch('/sim/connect', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        device: device.id,
        noiseKey: b64(device.noise.pubKey),
        identityKey: b64(device.identity.pubKey),
        advSecretHash: await sha256Hex(Base64.decodeB64(device.advSecret)),
        platform: DEVICE_PLATFORM,
        registrationId: device.registrationId,
        login: login ? login.token : null,
        replaces: previous,
        build: SIM.build,
      }),
    });
  } catch (e) {
    return lost();
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    console.error('connect refused', data);
    return lost();
  }
  conn = data.conn;
  events = new EventSource('/sim/events?conn=' + encodeURIComponent(conn));
  events.onmessage = (e) => {
    let ev;
    try {
      ev = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    onServerEvent(ev);
  };
  events.onerror = () => {
    if (events && !loggingOut) lost();
  };
}

function lost() {
  if (loggingOut) return;
  if (events) events.close();
  events = null;
  conn = null;
  if (Socket.state !== 'CONFLICT') Socket.state = 'OPENING';
  render();
  if (!reconnectTimer) reconnectTimer = setTimeout(connect, 1000);
}

async function onServerEvent(ev) {
  switch (ev.type) {
    case 'ref':
      Conn.ref = ev.ref;
      if (Socket.state !== 'UNPAIRED') Socket.state = 'UNPAIRED';
      render();
      break;
    case 'idle':
      Socket.state = 'UNPAIRED_IDLE';
      render();
      break;
    case 'pair-success':
      login = { token: ev.token, phone: ev.phone, lid: ev.lid || null, pushName: ev.pushName, platform: ev.platform };
      await idb.set('login', login);
      linkCode = null;
      altInitialized = false;
      Socket.state = 'PAIRING';
      render();
      await connect();
      break;
    case 'connected':
      me.pn = new Wid(ev.phone + '@c.us');
      me.lid = CURRENT && ev.lid ? new Wid(ev.lid + '@lid') : null;
      remember(ev.phone, me.lid && me.lid.user);
      Conn.set({ pushname: ev.pushName, platform: ev.platform });
      upsertContact(me.lid || me.pn, ev.pushName);
      Socket.state = 'CONNECTED';
      Stream.displayInfo = 'NORMAL';
      render();
      break;
    case 'offline-progress':
      OfflineMessageHandler._progress = ev.progress;
      Cmd.trigger('offline_progress_update_from_bridge');
      break;
    case 'synced':
      OfflineMessageHandler._progress = 100;
      Socket.hasSynced = true;
      render();
      resendPending();
      break;
    case 'msg':
      onIncoming(ev);
      break;
    case 'contacts':
      onAddressBook(ev);
      break;
    case 'ack':
      onAck(ev);
      break;
    case 'conflict':
      Socket.state = 'CONFLICT';
      render();
      break;
    case 'logged-out':
      await loggedOut('logout_from_bridge');
      break;
  }
}

// The device is gone (logged out here or from the phone): the page forgets the login and its
// keys, tells its listeners, and reloads as /?post_logout=1, where a fresh device shows a QR.
async function loggedOut(cmdEvent) {
  if (loggingOut) return;
  loggingOut = true;
  if (events) events.close();
  events = null;
  try {
    await idb.clear();
    await Promise.all([msgDb.clear(), chatDb.clear(), contactDb.clear()]);
    storedAck.clear();
  } catch (e) {
    console.error('clearing the profile failed', e);
  }
  if (cmdEvent === 'logout_from_bridge') Cmd.trigger('starting_logout_from_bridge');
  Cmd.trigger(cmdEvent);
  setTimeout(() => location.replace('/?post_logout=1'), 0);
}

// Logging out here: the server forgets the device first (Socket.logout() resolves then, as
// drivers await it before closing the browser); the page then shows "Logging out…" for a
// moment, cleans up and reloads.
Socket.logout = async function () {
  if (conn) await post('/sim/logout').catch(() => {});
  if (events) events.close();
  events = null;
  conn = null;
  document.getElementById('app').innerHTML = '<div class="landing"><div>Logging out…</div></div>';
  setTimeout(() => loggedOut('logout'), 1000);
};
Socket.takeover = async function () {
  if (Socket.state !== 'CONFLICT') return;
  await post('/sim/takeover');
};
Socket.reconnect = function () {
  lost();
};
Socket.poke = () => {};

// ---- what the user sees ------------------------------------------------------------------

function render() {
  const app = document.getElementById('app');
  if (!app) return;
  const state = Socket.state;
  if ((state === 'UNPAIRED' || state === 'UNPAIRED_IDLE') && pairingType === 'ALT_DEVICE_LINKING' && linkCode) {
    app.innerHTML =
      '<div class="link-code"><p>Enter code on phone</p><div aria-details="link-device-phone-number-code-screen-instructions"></div></div>';
    const box = app.querySelector('div[aria-details]');
    box.setAttribute('data-link-code', linkCode.slice(0, 4) + ',' + linkCode.slice(4));
    box.textContent = linkCode.slice(0, 4) + '-' + linkCode.slice(4);
  } else if (state === 'UNPAIRED' && Conn.ref) {
    const text = qrString(Conn.ref);
    app.innerHTML =
      '<div class="landing"><div><p>Scan to log in</p><div data-ref=""><canvas aria-label="Scan this QR code to link a device!" role="img" width="264" height="264"></canvas></div></div></div>';
    app.querySelector('div[data-ref]').setAttribute('data-ref', text);
    const img = new Image();
    img.onload = () => {
      const canvas = app.querySelector('canvas');
      if (canvas) canvas.getContext('2d').drawImage(img, 0, 0, canvas.width, canvas.height);
    };
    img.src = '/sim/qr.png?text=' + encodeURIComponent(text);
  } else if (state === 'UNPAIRED_IDLE') {
    app.innerHTML =
      '<div class="landing"><div data-ref=""><button type="button">Click to reload QR code</button></div></div>';
    app.querySelector('button').onclick = () => refreshQR();
  } else if (state === 'CONNECTED' && Socket.hasSynced) {
    app.innerHTML = '<div id="side"><div id="pane-side" aria-label="Chat list"></div></div><div id="main"></div>';
  } else if (state === 'CONNECTED') {
    app.innerHTML = '<div class="loading"><progress max="100"></progress><div>Loading your chats</div></div>';
  } else if (state === 'CONFLICT') {
    app.innerHTML =
      '<div class="conflict"><p>WhatsApp is open on another computer or browser. Click "Use here" to use WhatsApp in this window.</p><button type="button">Use here</button></div>';
    app.querySelector('button').onclick = () => Socket.takeover();
  } else {
    app.innerHTML = '<div class="landing"><div class="startup">WhatsApp</div></div>';
  }
}
Socket.on('change:hasSynced', render);

// ---- the module layer --------------------------------------------------------------------

function buildModules() {
  const m = {
    WAWebSocketModel: { Socket },
    WAWebConnModel: { Conn },
    WAWebCmd: { Cmd },
    WAWebStreamModel: { Stream },
    WAWebOfflineHandler: { OfflineMessageHandler },
    WAWebUserPrefsInfoStore: {
      waNoiseInfo: {
        get: async () => ({ staticKeyPair: { pubKey: device.noise.pubKey, privKey: device.noise.privKey } }),
      },
    },
    WAWebSignalStoreApi: {
      waSignalStore: {
        getRegistrationInfo: async () => ({
          registrationId: device.registrationId,
          identityKeyPair: { pubKey: device.identity.pubKey, privKey: device.identity.privKey },
        }),
      },
    },
    WAWebUserPrefsMultiDevice: { getADVSecretKey: () => device.advSecret },
    WAWebCompanionRegClientUtils: { DEVICE_PLATFORM },
    WAWebAdvSignatureApi: {
      getADVSecretKey: async () => device.advSecret,
      getADVEncodedIdentity: () => (login ? login.token : null),
    },
    WABase64: Base64,
    WAWebUserPrefsMeUser: CURRENT ? MeUserCurrent : MeUserLegacy,
    WAWebAltDeviceLinkingApi: AltDeviceLinkingApi,
    WAWebLaunchSocketUtils: { refreshQR },
    WAWebCollections: { Msg, Chat, Contact, Blocklist, BusinessProfile, Label, Status, GroupMetadata },
    WAWebWidFactory: WidFactory,
    WAWebMsgKey: MsgKey,
    WAWebMsgKeyNewId: MsgKeyNewId,
    WAWebDBMessageFindLocal: DBMessageFindLocal,
    WAWebChatLoadMessages: { loadEarlierMsgs },
    WAWebFindChatAction: { findOrCreateLatestChat },
    WAWebSendMsgChatAction: { addAndSendMsgToChat },
    WAWebGetEphemeralFieldsMsgActionsUtils: { getEphemeralFields },
    WAWebQueryExistsJob: { queryWidExists, queryPhoneExists },
    WAWebChatGetters: ChatGetters,
    WAWebContactGetters: ContactGetters,
    WAWebFrontendContactGetters: { getIsMyContact: (c) => Boolean(c.isAddressBookContact) },
    WAWebApiContact: ApiContact,
    WAWebPhoneUtils: { formattedPhoneNumber: (w) => formattedPhone(String(w).replace('@s.whatsapp.net', '@c.us')) },
    WALinkify: Linkify,
    WAWebLinkPreviewChatAction: { getLinkPreview: async () => null },
    WAWebUpdateUnreadChatAction: { sendSeen },
    WAWebSyncGatingUtils: { isPlaceholderMessageResendEnabled: () => false },
    WAWebCallCollection: CallCollection,
    WAWebMiscBrowserUtils: { info: () => ({ name: 'Chrome', version: navigator.userAgent, os: 'Linux' }) },
    WAWebAddonReactionTableMode: { reactionTableMode: { bulkUpsert: async () => {} } },
    WAWebAddonPollVoteTableMode: { pollVoteTableMode: { bulkUpsert: async () => {} } },
    WAWebBackendJobsCommon: { mediaTypeFromProtobuf: () => null },
    WAWebE2EProtoUtils: { typeAttributeFromProtobuf: () => 'text' },
  };
  if (CURRENT) {
    m.WAWebLidMigrationUtils = {
      toPn: (w) => ApiContact.getPhoneNumber(w),
      toLid: (w) => ApiContact.getCurrentLid(w),
      isLidMigrated: () => lidMigrated(),
    };
  }
  Object.assign(m, MEDIA_MODULES);
  for (const name of SIM.without || []) delete m[name];
  return m;
}

async function boot() {
  render();
  ({ device, login } = await loadDevice());
  try {
    for (const row of await msgDb.all()) storedAck.set(row.id, row.ack);
    if (login) await restoreChats();
  } catch (e) {
    console.error('reading the stored messages failed', e);
  }
  const modules = buildModules();
  window.require = function (name) {
    if (!Object.prototype.hasOwnProperty.call(modules, name)) throw new Error('Requiring unknown module "' + name + '"');
    return modules[name];
  };
  window.Debug = { VERSION: SIM.version };
  await connect();
}

boot().catch((e) => {
  console.error('boot failed', e);
  document.getElementById('app').textContent = 'The page failed to start: ' + e;
});
