// Media: WhatsApp Web's media modules as drivers use them (whatsapp-web.js 1.34.7's
// processMediaData and Message.downloadMedia, WhatsApp Web's own WAWebPrepRawMedia,
// WAWebMediaMmsV4Upload, WAWebMmsMediaTypes, WAWebMediaOpaqueData). Media is encrypted as WhatsApp
// encrypts it: a random 32-byte media key, expanded with HKDF-SHA256 ("WhatsApp <Kind> Keys") into
// an IV, an AES-256-CBC key and an HMAC-SHA256 key; the file on WhatsApp's media servers is the
// ciphertext and the first 10 bytes of the HMAC of IV + ciphertext; `filehash` is the SHA-256 of
// the plaintext, `encFilehash` that of the file (both base64), and the upload's token is
// `encFilehash`. The server (POST /sim/mms/<type>/<token>, GET /sim/mmg?directPath=) checks the
// hash of what it stores, and the recipient's phone decrypts with the message's media key.

const MEDIA_TYPES = Object.freeze({
  AUDIO: 'audio',
  DOCUMENT: 'document',
  GIF: 'gif',
  IMAGE: 'image',
  PTT: 'ptt',
  STICKER: 'sticker',
  VIDEO: 'video',
  PTV: 'ptv',
  NEWSLETTER_AUDIO: 'newsletter-audio',
  NEWSLETTER_DOCUMENT: 'newsletter-document',
  NEWSLETTER_IMAGE: 'newsletter-image',
  NEWSLETTER_GIF: 'newsletter-gif',
  NEWSLETTER_PTT: 'newsletter-ptt',
  NEWSLETTER_PTV: 'newsletter-ptv',
  NEWSLETTER_STICKER: 'newsletter-sticker',
  NEWSLETTER_VIDEO: 'newsletter-video',
});
// The message types that carry media (WAWebMsgType.MSG_TYPE values).
const MEDIA_MSG_TYPES = new Set(['image', 'video', 'audio', 'ptt', 'document', 'sticker', 'ptv']);
// WAWebMediaTypes.MediaDataStage / DownloadStage values drivers read.
const STAGE = { INIT: 'INIT', PREPARING: 'PREPARING', FETCHING: 'FETCHING', RESOLVED: 'RESOLVED', ERROR_MISSING: 'ERROR_MISSING', ERROR_UNSUPPORTED: 'ERROR_UNSUPPORTED' };
// WhatsApp's upload limits (WAWebMediaGatingUtils.getUploadLimit): 16 MB media, 2 GB documents.
const UPLOAD_LIMIT = { image: 16 * 1024 * 1024, video: 16 * 1024 * 1024, audio: 16 * 1024 * 1024, sticker: 16 * 1024 * 1024, document: 2 * 1024 * 1024 * 1024 };

const MmsMediaTypes = {
  MEDIA_TYPES,
  // An mmsv3 type (the media object's: IMAGE, DOCUMENT, ...) as a v4 media type.
  castToV4(t) {
    if (t == null) return MEDIA_TYPES.DOCUMENT;
    if (t in MEDIA_TYPES) return MEDIA_TYPES[t];
    throw new Error('castToV4: unexpected mmsv3 type ' + t);
  },
  msgToMediaType({ type, isGif, isNewsletter }) {
    const pick = (plain, newsletter) => (isNewsletter ? newsletter : plain);
    switch (type) {
      case 'image': return pick(MEDIA_TYPES.IMAGE, MEDIA_TYPES.NEWSLETTER_IMAGE);
      case 'video': return isGif === true ? pick(MEDIA_TYPES.GIF, MEDIA_TYPES.NEWSLETTER_GIF) : pick(MEDIA_TYPES.VIDEO, MEDIA_TYPES.NEWSLETTER_VIDEO);
      case 'audio': return pick(MEDIA_TYPES.AUDIO, MEDIA_TYPES.NEWSLETTER_AUDIO);
      case 'ptt': return pick(MEDIA_TYPES.PTT, MEDIA_TYPES.NEWSLETTER_PTT);
      case 'ptv': return pick(MEDIA_TYPES.PTV, MEDIA_TYPES.NEWSLETTER_PTV);
      case 'document': return MEDIA_TYPES.DOCUMENT;
      case 'sticker': return pick(MEDIA_TYPES.STICKER, MEDIA_TYPES.NEWSLETTER_STICKER);
    }
    throw new Error('msg is not a media msg: ' + type + ', isGif=' + String(isGif));
  },
  getMsgMediaType(msg) {
    return MmsMediaTypes.msgToMediaType({ type: msg.type, isGif: msg.type === 'video' ? msg.isGif : false, isNewsletter: false });
  },
};

// WAWebMediaOpaqueData: a retained blob, released (and unusable) a moment after its last
// autorelease, as WhatsApp Web's autorelease pool does.
class OpaqueData {
  constructor(blob, type) {
    this.blob = blob;
    this.released = false;
    this._type = type;
    this._count = 1;
    this._url = null;
  }
  static async createFromData(data, type) {
    return new OpaqueData(data instanceof Blob && data.type === type ? data : new Blob([data], { type }), type);
  }
  retain() {
    if (this.released) throw new Error('OpaqueData:retain called on released OpaqueData');
    this._count++;
  }
  autorelease() {
    if (this.released || this._count === 0) return;
    this._count--;
    if (this._count === 0) {
      setTimeout(() => {
        if (this._count !== 0) return;
        this.released = true;
        if (this._url) URL.revokeObjectURL(this._url);
        this.blob = undefined;
      }, 1000);
    }
  }
  autoreleaseWhenPromiseCompletes(p) {
    const done = () => this.autorelease();
    p.then(done, done);
  }
  throwIfReleased(what) {
    if (this.released) throw new Error(what + ' called on released OpaqueData');
  }
  url() {
    this.throwIfReleased('OpaqueData:url');
    return this._url || (this._url = URL.createObjectURL(this.blob));
  }
  getBlob() {
    return this.blob;
  }
  size() {
    this.throwIfReleased('OpaqueData:size');
    return this.blob.size;
  }
  formData() {
    this.throwIfReleased('OpaqueData:formData');
    return this.blob;
  }
  forceToBlob() {
    this.throwIfReleased('OpaqueData:forceToBlob');
    return this.blob;
  }
  type() {
    this.throwIfReleased('OpaqueData:type');
    return this._type || 'undefined';
  }
  async validate() {
    return !this.released && !!this.blob;
  }
  isBlobEqual(other) {
    return other ? this.blob === other.blob : !this.blob;
  }
}

const MEDIA_DATA_FIELDS = ['type', 'mediaStage', 'mimetype', 'filehash', 'encFilehash', 'size', 'filename', 'mediaBlob', 'preview',
  'isGif', 'fullWidth', 'fullHeight', 'renderableUrl', 'directPath', 'mediaKey', 'mediaKeyTimestamp', 'duration'];
// WAWebMediaData: a model; toJSON() gives its fields.
class MediaData extends Model {
  constructor(attrs) {
    super(Object.assign({ isGif: false, isViewOnce: false }, attrs), MEDIA_DATA_FIELDS);
  }
}

// WAWebMediaPrep.MediaPrep: what prepRawMedia returns; waitForPrep() resolves to the MediaData.
class MediaPrep {
  constructor(baseType, processing) {
    this.baseType = baseType;
    this.mediaData = new MediaData({ mediaStage: STAGE.PREPARING });
    this._done = processing.then(
      (fields) => this.mediaData.set(fields),
      (e) => {
        this.mediaData.mediaStage = STAGE.ERROR_UNSUPPORTED;
        throw e;
      },
    );
  }
  async waitForPrep() {
    await this._done;
    return this.mediaData;
  }
}

// WAWebFileUtils.typeFromMimetype.
function typeFromMimetype(mimetype) {
  const top = String(mimetype || '').split('/')[0];
  return ['image', 'video', 'audio'].includes(top) ? top : 'document';
}

async function sha256B64(data) {
  return Base64.encodeB64(await crypto.subtle.digest('SHA-256', data));
}

// WAWebProcessRawMedia.processRawMedia: the type (from the mimetype unless asDocument), WhatsApp's
// size limit, the hash, and for images their size and a JPEG preview (an image the browser cannot
// decode is refused, as WhatsApp Web refuses it).
async function processRawMedia(opaque, opts) {
  const type = opts.asDocument === true ? 'document' : typeFromMimetype(opaque.type());
  const size = opaque.size();
  if (size > UPLOAD_LIMIT[type]) throw new Error('MediaFileTooLargeError: ' + type + ' of ' + size + ' bytes, the limit is ' + UPLOAD_LIMIT[type]);
  if (size <= 0) throw new Error('MediaFileEmpty');
  const blob = opaque.forceToBlob();
  const fields = { type, mimetype: opaque.type(), size, filehash: await sha256B64(await blob.arrayBuffer()), mediaBlob: opaque, mediaStage: STAGE.RESOLVED };
  if (type === 'document') fields.filename = blob.name || opts.filename;
  if (type === 'image') Object.assign(fields, await imagePreview(blob));
  return fields;
}

async function imagePreview(blob) {
  const bitmap = await createImageBitmap(blob);
  const scale = Math.min(1, 100 / Math.max(bitmap.width, bitmap.height));
  const canvas = new OffscreenCanvas(Math.max(1, Math.round(bitmap.width * scale)), Math.max(1, Math.round(bitmap.height * scale)));
  canvas.getContext('2d').drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const jpeg = await canvas.convertToBlob({ type: 'image/jpeg', quality: 0.5 });
  return { fullWidth: bitmap.width, fullHeight: bitmap.height, preview: Base64.encodeB64(await jpeg.arrayBuffer()) };
}

function prepRawMedia(opaqueOrPromise, opts) {
  const options = opts || {};
  const baseType = options.isPtt ? 'ptt' : options.asDocument ? 'document' : options.asSticker ? 'sticker' : 'unknown';
  const processing = Promise.resolve(opaqueOrPromise).then((opaque) => {
    opaque.autoreleaseWhenPromiseCompletes(processing);
    return processRawMedia(opaque, options);
  });
  return new MediaPrep(baseType, processing);
}

// WAWebMediaEntry.EncryptedMediaEntry: where an upload is, and its key.
class EncryptedMediaEntry {
  constructor(props) {
    Object.assign(this, props);
  }
  getMediaKey() {
    return this.mediaKey;
  }
  getMediaKeyTimestamp() {
    return this.mediaKeyTimestamp;
  }
  getEncfilehash() {
    return this.encFilehash;
  }
  canReuseMediaKey() {
    return false;
  }
}

// WAWebMediaObject: one per file (by filehash), shared by the messages that carry it.
class MediaObject {
  constructor(filehash) {
    this.filehash = filehash;
    this.type = undefined;
    this.size = undefined;
    this.mediaBlob = null;
    this.contentInfo = {};
    this.downloadStage = STAGE.INIT;
    this.uploadStage = 'INIT';
    this.msgs = [];
    const list = [];
    this.entries = {
      entries: list,
      addEntry: (props) => {
        const entry = new EncryptedMediaEntry(props);
        list.push(entry);
        return entry;
      },
      getUploadEntry: () => list[list.length - 1],
      getDownloadEntry: () => list[list.length - 1],
    };
  }
  // Takes what a MediaData knows; the media object's type is the mmsv3 one (IMAGE, DOCUMENT, ...).
  consolidate(props) {
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined) continue;
      if (k === 'type') this.type = String(v).toUpperCase();
      else if (['mediaBlob', 'size', 'filehash', 'downloadStage', 'uploadStage'].includes(k)) this[k] = v;
      else this.contentInfo[k] = v;
    }
    return true;
  }
  clearBlob() {
    if (this.mediaBlob) this.mediaBlob.autorelease();
    this.mediaBlob = null;
  }
}

const mediaObjects = new Map();
function getOrCreateMediaObject(filehash) {
  if (!mediaObjects.has(filehash)) mediaObjects.set(filehash, new MediaObject(filehash));
  return mediaObjects.get(filehash);
}

const blobCache = new Map();
const InMemoryMediaBlobCache = {
  put: (filehash, blob) => blobCache.set(filehash, blob),
  get: (filehash) => blobCache.get(filehash),
  replace: (filehash, blob) => blobCache.set(filehash, blob),
  delete: (filehash) => blobCache.delete(filehash),
};

// ---- WhatsApp's media encryption ----------------------------------------------------------

function keyInfo(type) {
  const t = String(type).replace(/^newsletter-/, '');
  if (t === 'image' || t === 'sticker') return 'WhatsApp Image Keys';
  if (t === 'video' || t === 'gif' || t === 'ptv') return 'WhatsApp Video Keys';
  if (t === 'audio' || t === 'ptt') return 'WhatsApp Audio Keys';
  return 'WhatsApp Document Keys';
}

async function expandMediaKey(mediaKey, type) {
  const base = await crypto.subtle.importKey('raw', Base64.decodeB64(mediaKey), 'HKDF', false, ['deriveBits']);
  const info = new TextEncoder().encode(keyInfo(type));
  const bits = new Uint8Array(await crypto.subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(32), info }, base, 112 * 8));
  const iv = bits.slice(0, 16);
  const cipherKey = await crypto.subtle.importKey('raw', bits.slice(16, 48), 'AES-CBC', false, ['encrypt', 'decrypt']);
  const macKey = await crypto.subtle.importKey('raw', bits.slice(48, 80), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return { iv, cipherKey, macKey };
}

async function mediaMac(keys, enc) {
  const signed = new Uint8Array(keys.iv.length + enc.length);
  signed.set(keys.iv);
  signed.set(enc, keys.iv.length);
  return new Uint8Array(await crypto.subtle.sign('HMAC', keys.macKey, signed)).slice(0, 10);
}

async function encryptMedia(plain, mediaKey, type) {
  const keys = await expandMediaKey(mediaKey, type);
  const enc = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-CBC', iv: keys.iv }, keys.cipherKey, plain));
  const mac = await mediaMac(keys, enc);
  const file = new Uint8Array(enc.length + mac.length);
  file.set(enc);
  file.set(mac, enc.length);
  return file;
}

// The plaintext of a downloaded file, every hash and the MAC checked (as WhatsApp Web does).
async function decryptMedia(file, { mediaKey, type, encFilehash, filehash }) {
  const bytes = new Uint8Array(file);
  if (encFilehash && (await sha256B64(bytes)) !== encFilehash) throw new Error('media-fault: encFilehash mismatch');
  const keys = await expandMediaKey(mediaKey, type);
  const enc = bytes.slice(0, bytes.length - 10);
  const mac = await mediaMac(keys, enc);
  if (Base64.encodeB64(mac) !== Base64.encodeB64(bytes.slice(bytes.length - 10))) throw new Error('media-fault: MAC mismatch (wrong media key?)');
  const plain = await crypto.subtle.decrypt({ name: 'AES-CBC', iv: keys.iv }, keys.cipherKey, enc);
  if (filehash && (await sha256B64(plain)) !== filehash) throw new Error('media-fault: filehash mismatch');
  return plain;
}

// WAWebUploadManager (its default export): encrypts and uploads to WhatsApp's media servers.
const UploadManager = {
  async encryptAndUpload({ blob, mediaKey, mediaKeyTimestamp, type, signal }) {
    const key = mediaKey || Base64.encodeB64(crypto.getRandomValues(new Uint8Array(32)));
    const file = await encryptMedia(await blob.arrayBuffer(), key, type);
    const encFilehash = await sha256B64(file);
    const token = Base64.encodeB64UrlSafe(Base64.decodeB64(encFilehash));
    const res = await fetch('/sim/mms/' + encodeURIComponent(type) + '/' + token, { method: 'POST', body: file, signal });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw Object.assign(new Error(data.message || 'upload failed: HTTP ' + res.status), { status: res.status });
    return { url: data.url, directPath: data.direct_path, encFilehash, mediaKey: key, mediaKeyTimestamp: mediaKeyTimestamp || Math.floor(Date.now() / 1000), sidecar: undefined, firstFrameSidecar: undefined };
  },
};

// WAWebMediaMmsV4Upload: the media object's blob (or the in-memory cache's) uploaded; the
// result's mediaEntry is the upload's entry on the media object, {kind: 'error'} when it failed.
const MediaMmsV4Upload = {
  UploadMediaResultKind: { SUCCESS: 'success', CANCELLATION: 'cancellation', ERROR: 'error', TIMEOUT: 'timeout' },
  async uploadMedia({ mediaObject, mediaType, mediaKeyInfo }) {
    try {
      mediaObject.uploadStage = 'UPLOADING';
      const blob = mediaObject.mediaBlob && !mediaObject.mediaBlob.released ? mediaObject.mediaBlob.formData() : InMemoryMediaBlobCache.get(mediaObject.filehash);
      if (!blob) throw new Error("can't upload media w/out mediaBlob after download");
      const up = await UploadManager.encryptAndUpload({ blob, mediaKey: mediaKeyInfo && mediaKeyInfo.key, mediaKeyTimestamp: mediaKeyInfo && mediaKeyInfo.timestamp, type: mediaType, signal: new AbortController().signal });
      const mediaEntry = mediaObject.entries.addEntry({ deprecatedMms3Url: up.url, mediaKey: up.mediaKey, mediaKeyTimestamp: up.mediaKeyTimestamp, encFilehash: up.encFilehash, type: mediaType, sidecar: up.sidecar, directPath: up.directPath, firstFrameSidecar: up.firstFrameSidecar, debugHint: 'upload' });
      mediaObject.uploadStage = 'UPLOADED';
      return { kind: 'success', mediaEntry };
    } catch (e) {
      console.error('MediaAlgo.uploadMedia', e);
      mediaObject.uploadStage = 'NEED_UPLOAD';
      return { kind: 'error' };
    }
  },
  // Unencrypted uploads are for channels (newsletters), which the simulator does not model.
  async uploadUnencryptedMedia() {
    return { kind: 'error' };
  },
};

// WAWebDownloadManager.downloadManager: the file from WhatsApp's media servers, decrypted.
const downloadManager = {
  async downloadAndMaybeDecrypt({ directPath, encFilehash, filehash, mediaKey, type, signal }) {
    if (!directPath || !mediaKey) throw new Error('downloadAndMaybeDecrypt: directPath and mediaKey are required');
    const res = await fetch('/sim/mmg?directPath=' + encodeURIComponent(directPath), { signal });
    if (!res.ok) throw Object.assign(new Error('media download failed: HTTP ' + res.status), { status: res.status });
    return decryptMedia(await res.arrayBuffer(), { mediaKey, type, encFilehash, filehash });
  },
};

const MEDIA_MODULES = {
  WAWebMediaOpaqueData: OpaqueData,
  WAWebPrepRawMedia: { prepRawMedia },
  WAWebMediaPrep: { MediaPrep },
  WAWebMediaData: MediaData,
  WAWebMediaStorage: { getOrCreateMediaObject },
  WAWebMmsMediaTypes: MmsMediaTypes,
  WAWebMediaDataUtils: { shouldUseMediaCache: (t) => t === MEDIA_TYPES.IMAGE || t === MEDIA_TYPES.STICKER },
  WAWebMediaInMemoryBlobCache: { InMemoryMediaBlobCache },
  WAWebUploadManager: UploadManager,
  WAWebMediaMmsV4Upload: MediaMmsV4Upload,
  WAWebDownloadManager: { downloadManager },
};

// ---- media on messages ----------------------------------------------------------------------

// The fields a media message carries to WhatsApp and in storage (what the recipient needs).
const MEDIA_MSG_FIELDS = ['caption', 'mimetype', 'filehash', 'encFilehash', 'directPath', 'mediaKey', 'mediaKeyTimestamp', 'size', 'filename', 'fullWidth', 'fullHeight'];

function pickMediaFields(from) {
  const out = {};
  for (const f of MEDIA_MSG_FIELDS) if (from[f] !== undefined && from[f] !== null) out[f] = from[f];
  return out;
}

// A media message's model attributes: its fields, its MediaData and media object. Outgoing media
// is resolved (the page has the file); received media is INIT until downloaded.
function withMedia(attrs, resolved) {
  if (!MEDIA_MSG_TYPES.has(attrs.type)) return attrs;
  const object = getOrCreateMediaObject(attrs.filehash);
  object.consolidate({ type: attrs.type, size: attrs.size });
  const data = new MediaData(Object.assign(pickMediaFields(attrs), { type: attrs.type, mediaStage: resolved && object.mediaBlob ? STAGE.RESOLVED : STAGE.INIT }));
  return Object.assign(attrs, { mediaData: data, mediaObject: object });
}

// The media fields of a message a WhatsApp user sent (its text is the caption).
function receivedMedia(ev) {
  return ev.media ? Object.assign(pickMediaFields(ev.media), { caption: ev.body || undefined }) : {};
}

// What the message table keeps of a media message.
function mediaRow(msg) {
  return MEDIA_MSG_TYPES.has(msg.type) ? pickMediaFields(msg) : {};
}

// What WhatsApp checks of an outgoing media message: an upload it has, and the fields the
// recipient needs to fetch and decrypt it.
function checkOutgoingMedia(m, refuse) {
  for (const f of ['mimetype', 'filehash', 'encFilehash', 'directPath', 'mediaKey']) {
    if (typeof m[f] !== 'string' || !m[f]) refuse('a ' + m.type + ' message needs its ' + f + ' (upload it first: WAWebMediaMmsV4Upload.uploadMedia)');
  }
  if (typeof m.size !== 'number' || m.size <= 0) refuse('a ' + m.type + ' message needs its size');
  if (m.caption !== undefined && typeof m.caption !== 'string') refuse('caption must be a string');
}

// The media part of a message as the page hands it to the server.
function mediaOfMsg(msg) {
  return MEDIA_MSG_TYPES.has(msg.type) ? Object.assign({ type: msg.type }, pickMediaFields(msg)) : null;
}

// Msg#downloadMedia: fetches and decrypts the file into the media object (stage FETCHING, then
// RESOLVED or ERROR_MISSING when WhatsApp no longer has it).
async function downloadMsgMedia(msg) {
  const data = msg.mediaData;
  if (!data || data.mediaStage === STAGE.RESOLVED) return;
  data.mediaStage = STAGE.FETCHING;
  try {
    const plain = await downloadManager.downloadAndMaybeDecrypt({ directPath: msg.directPath, encFilehash: msg.encFilehash, filehash: msg.filehash, mediaKey: msg.mediaKey, type: msg.type });
    msg.mediaObject.consolidate({ mediaBlob: await OpaqueData.createFromData(new Blob([plain], { type: msg.mimetype }), msg.mimetype), downloadStage: STAGE.RESOLVED });
    data.mediaStage = STAGE.RESOLVED;
  } catch (e) {
    console.error('downloading media failed', e);
    data.mediaStage = STAGE.ERROR_MISSING;
  }
}
