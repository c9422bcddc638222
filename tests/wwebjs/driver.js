'use strict';
// Drives whatsapp-web.js (an independent WhatsApp Web client, pinned in package-lock.json) for
// the conformance test tests/tests/wwebjs.rs. Run as `node driver.js` with NODE_PATH at the
// node_modules that `./dev setup` installs ($WAO_WWEBJS_DIR/node_modules).
//
// Configuration (environment):
//   WAO_CHROMIUM_ARGS   JSON array of extra Chromium arguments (the simulator's "network")
//   WAO_WWEBJS_DATA     LocalAuth's dataPath: the Chromium profile lives under it
//   WAO_CHROMIUM        the browser (default /usr/lib/chromium/chromium); never downloaded
//   WAO_AUTH_TIMEOUT_MS whatsapp-web.js's authTimeoutMs (waiting for the page's Debug.VERSION)
//
// Protocol: one JSON object per line on stdout, for every client event
//   {type:'qr', qr} {type:'code', code} {type:'authenticated'} {type:'ready', wid, pushname, platform}
//   {type:'message', id, serialized, from, to, body, fromMe, msgType, timestamp, notifyName}
//   {type:'message_create', ...same} {type:'message_ack', id, serialized, to, ack}
//   {type:'change_state', state} {type:'loading_screen', percent} {type:'disconnected', reason}
//   {type:'auth_failure', message} {type:'unhandled', kind, message}
// and for every command read from stdin (one JSON object per line, optional `tag` echoed back)
//   {cmd:'send', to, body}            -> {type:'result', cmd, id, serialized, to, ack}
//   {cmd:'sendMedia', to, mimetype, data, filename, caption}
//                                     -> {type:'result', cmd, id, serialized, to, ack, hasMedia, msgType}
//                                        (a MessageMedia with base64 data, sent with its caption)
//   {cmd:'downloadMedia', serialized} -> {type:'result', cmd, mimetype, data, filename, filesize}
//                                        (getMessageById, then Message.downloadMedia(); data null without media)
//   {cmd:'contacts'}                  -> {type:'result', cmd, contacts:[{id, number, name, pushname, isMyContact, isUser, isWAContact, isMe, isBusiness}]}
//   {cmd:'numberId', number}          -> {type:'result', cmd, id: null | '<serialized wid>'}
//   {cmd:'history', limit}            -> {type:'result', cmd, chats:[{id, lastMessage, messages:[{id, body, fromMe}]}]}
//                                        (getChats, then each chat's fetchMessages({limit}), oldest first)
//   {cmd:'pairingCode', phone}        -> {type:'result', cmd, code}
//   {cmd:'state'}                     -> {type:'result', cmd, state}
//   {cmd:'logout'}                    -> {type:'result', cmd} (whatsapp-web.js closes the browser)
//   {cmd:'initialize'}                -> {type:'result', cmd} once initialize() resolves (after a logout)
//   {cmd:'restart'}                   -> {type:'result', cmd} once destroy() and initialize() resolve
//   {cmd:'destroy'}                   -> {type:'result', cmd}, then the process exits 0
// A failed command answers {type:'error', cmd, tag, message}. End of stdin destroys the client
// and exits, so the browser never outlives the test.

const path = require('path');
const readline = require('readline');
const { Client, LocalAuth, MessageMedia } = require('whatsapp-web.js');

function emit(event) {
    try {
        process.stdout.write(JSON.stringify(event) + '\n');
    } catch (e) {
        process.stderr.write(`driver: cannot write an event: ${e}\n`);
    }
}

function describe(err) {
    if (err instanceof Error) return err.stack || err.message;
    if (typeof err === 'string') return err;
    try {
        return JSON.stringify(err);
    } catch (_) {
        return String(err);
    }
}

process.on('unhandledRejection', (reason) => {
    emit({ type: 'unhandled', kind: 'rejection', message: describe(reason) });
});
process.on('uncaughtException', (err) => {
    emit({ type: 'unhandled', kind: 'exception', message: describe(err) });
});
process.stdout.on('error', (err) => {
    // The reader is gone (EPIPE): nobody to report to; do not leave the browser behind.
    process.stderr.write(`driver: stdout: ${err}\n`);
    shutdown(1);
});

let chromiumArgs;
try {
    chromiumArgs = JSON.parse(process.env.WAO_CHROMIUM_ARGS || '[]');
    if (!Array.isArray(chromiumArgs) || !chromiumArgs.every((a) => typeof a === 'string')) {
        throw new Error('not an array of strings');
    }
} catch (e) {
    emit({ type: 'fatal', message: `WAO_CHROMIUM_ARGS: ${describe(e)}` });
    process.exit(2);
}
const dataPath = process.env.WAO_WWEBJS_DATA || path.join(process.cwd(), '.wwebjs_auth');
const executablePath = process.env.WAO_CHROMIUM || '/usr/lib/chromium/chromium';
const authTimeoutMs = Number(process.env.WAO_AUTH_TIMEOUT_MS || 60000);

const client = new Client({
    authStrategy: new LocalAuth({ dataPath }),
    webVersionCache: { type: 'none' },
    authTimeoutMs,
    puppeteer: {
        executablePath,
        headless: true,
        args: [...chromiumArgs, '--no-sandbox'],
    },
});

function messageFields(msg) {
    return {
        id: msg.id && msg.id.id,
        serialized: msg.id && msg.id._serialized,
        from: msg.from,
        to: msg.to,
        body: msg.body,
        fromMe: msg.fromMe,
        msgType: msg.type,
        timestamp: msg.timestamp,
        notifyName: msg._data && msg._data.notifyName,
        hasMedia: msg.hasMedia,
    };
}

client.on('qr', (qr) => emit({ type: 'qr', qr }));
client.on('code', (code) => emit({ type: 'code', code }));
client.on('authenticated', () => emit({ type: 'authenticated' }));
client.on('auth_failure', (message) => emit({ type: 'auth_failure', message: describe(message) }));
client.on('ready', () => {
    const info = client.info || {};
    emit({
        type: 'ready',
        wid: info.wid && info.wid._serialized,
        pushname: info.pushname,
        platform: info.platform,
    });
});
client.on('message', (msg) => emit({ type: 'message', ...messageFields(msg) }));
client.on('message_create', (msg) => emit({ type: 'message_create', ...messageFields(msg) }));
client.on('message_ack', (msg, ack) =>
    emit({ type: 'message_ack', id: msg.id && msg.id.id, serialized: msg.id && msg.id._serialized, to: msg.to, ack }),
);
client.on('change_state', (state) => emit({ type: 'change_state', state }));
client.on('loading_screen', (percent) => emit({ type: 'loading_screen', percent }));
client.on('disconnected', (reason) => emit({ type: 'disconnected', reason: describe(reason) }));

function initialize() {
    return client.initialize();
}

function withServer(number, server) {
    const n = String(number);
    return n.includes('@') ? n : `${n}@${server}`;
}

const commands = {
    async send({ to, body }) {
        const msg = await client.sendMessage(withServer(to, 'c.us'), body);
        return { id: msg.id.id, serialized: msg.id._serialized, to: msg.to, ack: msg.ack };
    },
    async sendMedia({ to, mimetype, data, filename, caption }) {
        const media = new MessageMedia(mimetype, data, filename);
        const msg = await client.sendMessage(withServer(to, 'c.us'), media, { caption });
        return { id: msg.id.id, serialized: msg.id._serialized, to: msg.to, ack: msg.ack, hasMedia: msg.hasMedia, msgType: msg.type };
    },
    async downloadMedia({ serialized }) {
        const msg = await client.getMessageById(serialized);
        if (!msg) throw new Error(`getMessageById(${serialized}) found nothing`);
        const media = await msg.downloadMedia();
        if (!media) return { data: null };
        return { mimetype: media.mimetype, data: media.data, filename: media.filename, filesize: media.filesize };
    },
    async contacts() {
        const contacts = await client.getContacts();
        return {
            contacts: contacts.map((c) => ({
                id: c.id && c.id._serialized,
                number: c.number,
                name: c.name,
                pushname: c.pushname,
                isMyContact: c.isMyContact,
                isUser: c.isUser,
                isWAContact: c.isWAContact,
                isMe: c.isMe,
                isBusiness: c.isBusiness,
            })),
        };
    },
    async history({ limit }) {
        const chats = await client.getChats();
        const out = [];
        for (const chat of chats) {
            const messages = await chat.fetchMessages({ limit: limit || 50 });
            out.push({
                id: chat.id._serialized,
                lastMessage: chat.lastMessage ? chat.lastMessage.body : null,
                messages: messages.map((m) => ({ id: m.id.id, body: m.body, fromMe: m.fromMe })),
            });
        }
        return { chats: out };
    },
    async numberId({ number }) {
        const wid = await client.getNumberId(String(number));
        return { id: wid ? wid._serialized : null };
    },
    async pairingCode({ phone, intervalMs }) {
        // whatsapp-web.js asks for a new code every intervalMs while unpaired: keep it long.
        const code = await client.requestPairingCode(String(phone), true, intervalMs || 600000);
        return { code };
    },
    async state() {
        return { state: await client.getState() };
    },
    async info() {
        const info = client.info || {};
        return { wid: info.wid && info.wid._serialized, pushname: info.pushname, platform: info.platform };
    },
    async logout() {
        await client.logout();
        return {};
    },
    async initialize() {
        await initialize();
        return {};
    },
    async restart() {
        // Chromium closed and started again on the same profile (LocalAuth): no new QR.
        await client.destroy();
        await initialize();
        return {};
    },
    async destroy() {
        await client.destroy();
        return {};
    },
};

let shuttingDown = false;
async function shutdown(code) {
    if (shuttingDown) return;
    shuttingDown = true;
    try {
        await client.destroy();
    } catch (e) {
        process.stderr.write(`driver: destroy: ${describe(e)}\n`);
    }
    process.exit(code);
}

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on('line', async (line) => {
    if (!line.trim()) return;
    let command;
    try {
        command = JSON.parse(line);
    } catch (e) {
        emit({ type: 'error', cmd: null, message: `not JSON: ${line}` });
        return;
    }
    const { cmd, tag } = command;
    const run = commands[cmd];
    if (!run) {
        emit({ type: 'error', cmd, tag, message: `unknown command ${JSON.stringify(cmd)}` });
        return;
    }
    try {
        const result = await run(command);
        emit({ type: 'result', cmd, tag, ...result });
        if (cmd === 'destroy') {
            shuttingDown = true;
            process.exit(0);
        }
    } catch (e) {
        emit({ type: 'error', cmd, tag, message: describe(e) });
    }
});
input.on('close', () => shutdown(0));

emit({ type: 'started', pid: process.pid, dataPath, executablePath, args: chromiumArgs });
initialize().catch((e) => emit({ type: 'error', cmd: 'initialize', message: describe(e) }));
