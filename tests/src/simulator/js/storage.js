// The browser profile's part of the login, in IndexedDB as on the real page (a committed
// transaction survives the browser being killed): this companion device's id, its key pairs
// (noise static key, Signal identity key: X25519 from WebCrypto), its ADV secret and, once
// linked, the login the server handed out (database `wawc`). Messages live in the
// `model-storage` database's `message` table, keyed by the message key (`true_<chat>_<id>`),
// as WhatsApp Web keeps them.

function idbStore(dbName, storeName, options) {
  return {
    _db: null,
    open() {
      if (this._db) return Promise.resolve(this._db);
      return new Promise((resolve, reject) => {
        const req = indexedDB.open(dbName, 1);
        req.onupgradeneeded = () => req.result.createObjectStore(storeName, options);
        req.onsuccess = () => {
          this._db = req.result;
          resolve(this._db);
        };
        req.onerror = () => reject(req.error);
      });
    },
    async run(mode, fn) {
      const db = await this.open();
      return new Promise((resolve, reject) => {
        const tx = db.transaction(storeName, mode);
        const req = fn(tx.objectStore(storeName));
        tx.oncomplete = () => resolve(req && req.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
      });
    },
    get(key) {
      return this.run('readonly', (s) => s.get(key));
    },
    all() {
      return this.run('readonly', (s) => s.getAll());
    },
    set(key, value) {
      return this.run('readwrite', (s) => s.put(value, key));
    },
    put(value) {
      return this.run('readwrite', (s) => s.put(value));
    },
    remove(key) {
      return this.run('readwrite', (s) => s.delete(key));
    },
    clear() {
      return this.run('readwrite', (s) => s.clear());
    },
  };
}

const idb = idbStore('wawc', 'user');
const msgDb = idbStore('model-storage', 'message', { keyPath: 'id' });

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
