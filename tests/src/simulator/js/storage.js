// The browser profile's part of the login, in IndexedDB as on the real page (a committed
// transaction survives the browser being killed): this companion device's id, its key pairs
// (noise static key, Signal identity key: X25519 from WebCrypto), its ADV secret and, once
// linked, the login the server handed out (database `wawc`). WhatsApp Web's own data lives in
// the `model-storage` database, as on the real page: the `message` table keyed by the message
// key (`true_<chat>_<id>`), the `chat` table keyed by the chat id (the chat list, restored when
// the page loads), and the `contact` table keyed by the contact id (among others, a LID's
// `phoneNumber`: WAWebApiContact's LID <-> phone number mapping is warmed up from it at start).

function idbDatabase(dbName, version, stores) {
  return {
    _db: null,
    open() {
      if (this._db) return Promise.resolve(this._db);
      return new Promise((resolve, reject) => {
        const req = indexedDB.open(dbName, version);
        req.onupgradeneeded = () => {
          for (const [name, options] of Object.entries(stores)) {
            if (!req.result.objectStoreNames.contains(name)) req.result.createObjectStore(name, options);
          }
        };
        req.onsuccess = () => {
          this._db = req.result;
          resolve(this._db);
        };
        req.onerror = () => reject(req.error);
      });
    },
    // One transaction over `names`: `fn` gets their object stores; resolves once committed.
    async run(names, mode, fn) {
      const db = await this.open();
      return new Promise((resolve, reject) => {
        const tx = db.transaction(names, mode);
        const req = fn(...names.map((n) => tx.objectStore(n)));
        tx.oncomplete = () => resolve(req && req.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
      });
    },
  };
}

function idbStore(database, storeName) {
  const run = (mode, fn) => database.run([storeName], mode, fn);
  return {
    get: (key) => run('readonly', (s) => s.get(key)),
    all: () => run('readonly', (s) => s.getAll()),
    set: (key, value) => run('readwrite', (s) => s.put(value, key)),
    put: (value) => run('readwrite', (s) => s.put(value)),
    remove: (key) => run('readwrite', (s) => s.delete(key)),
    clear: () => run('readwrite', (s) => s.clear()),
    // Puts `row` merged over the stored row of its key, in one transaction.
    merge(row) {
      return run('readwrite', (s) => {
        const req = s.get(row.id);
        req.onsuccess = () => s.put(Object.assign({}, req.result || {}, row));
      });
    },
  };
}

const idb = idbStore(idbDatabase('wawc', 1, { user: undefined }), 'user');
const modelStorage = idbDatabase('model-storage', 2, {
  message: { keyPath: 'id' },
  chat: { keyPath: 'id' },
  contact: { keyPath: 'id' },
});
const msgDb = idbStore(modelStorage, 'message');
const chatDb = idbStore(modelStorage, 'chat');
const contactDb = idbStore(modelStorage, 'contact');

// A message and its chat's row in one transaction: the chat list never points at a message
// that was not stored, and a stored message is never in a chat the page forgets.
function storeMsgAndChat(msgRow, chatRow) {
  return modelStorage.run(['message', 'chat'], 'readwrite', (messages, chats) => {
    messages.put(msgRow);
    chats.put(chatRow);
  });
}

async function newKeyPair() {
  const pair = await crypto.subtle.generateKey({ name: 'X25519' }, true, ['deriveBits']);
  const pub = await crypto.subtle.exportKey('raw', pair.publicKey);
  return { pubKey: pub, privKey: pair.privateKey };
}

function randomBytes(n) {
  return crypto.getRandomValues(new Uint8Array(n));
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

// Loads this profile's device, creating it (fresh keys) when the profile is new or was logged out.
async function loadDevice() {
  let device = await idb.get('device');
  if (!device) {
    const noise = await newKeyPair();
    const identity = await newKeyPair();
    device = {
      id: 'd' + Base64.encodeB64UrlSafe(randomBytes(12)),
      noise,
      identity,
      registrationId: (crypto.getRandomValues(new Uint16Array(1))[0] & 0x3fff) + 1,
      advSecret: Base64.encodeB64(randomBytes(32)),
    };
    await idb.set('device', device);
  }
  const login = (await idb.get('login')) || null;
  return { device, login };
}
