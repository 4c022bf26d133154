// End-to-end harness for CoolChat: starts real `coolchat serve` processes, signs in with
// real SIWE messages and ethers signatures, talks REST (fetch) and Socket.IO (socket.io-client).
//
// Rules every test follows (see README.md):
// - every wait is bounded and waits on an event or a response, never on a bare sleep;
// - to prove that something did NOT arrive, do a round trip that is ordered after it (a barrier)
//   and then look at the socket's event log;
// - each test file starts its own server(s) on 127.0.0.1:0 with a fresh data directory.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import { io } from 'socket.io-client';
import { Wallet } from 'ethers';
import { SiweMessage } from 'siwe';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..', '..');
export const BIN = process.env.COOLCHAT_BIN || path.join(REPO_ROOT, 'target', 'debug', 'coolchat');

/** Failure bounds (not timing assertions). */
export const START_TIMEOUT_MS = 30_000;
export const STOP_TIMEOUT_MS = 30_000;
export const EVENT_TIMEOUT_MS = 10_000;
export const ACK_TIMEOUT_MS = 10_000;

const LOG_CAP = 256 * 1024; // bytes of stdout/stderr kept per server for diagnostics

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: whatever happens, no server process and no temp dir outlives the run.

const liveProcs = new Set();
const tempDirs = new Set();
const liveSockets = new Set();

process.on('exit', () => {
  for (const p of liveProcs) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
  if (!process.env.COOLCHAT_E2E_KEEP) {
    for (const d of tempDirs) {
      try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ }
    }
  }
});

function stripAnsi(s) {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
}

function tail(s, n = 4000) {
  return s.length > n ? '…' + s.slice(-n) : s;
}

export function freshDataDir() {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'coolchat-e2e-'));
  tempDirs.add(d);
  return d;
}

/**
 * A running `coolchat serve`.
 * - `url`: the public origin (`http://127.0.0.1:PORT`), also the SIWE `uri`;
 * - `domain`: `127.0.0.1:PORT`, the SIWE `domain`;
 * - `dataDir`: reuse it with `startServer({dataDir})` to restart on the same data.
 */
export class Server {
  constructor({ proc, url, dataDir, env, logs }) {
    this.proc = proc;
    this.url = url;
    const u = new URL(url);
    this.domain = u.host;
    this.port = Number(u.port);
    this.dataDir = dataDir;
    this.env = env;
    this.logs = logs;
    this.exit = new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        resolve({ code: proc.exitCode, signal: proc.signalCode });
      } else {
        proc.once('exit', (code, signal) => resolve({ code, signal }));
      }
    });
  }

  get running() {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  stderr() { return this.logs.stderr; }
  stdout() { return this.logs.stdout; }

  /** SIGTERM, wait (bounded) for the exit, return `{code, signal}` without judging it. */
  async terminate(timeoutMs = STOP_TIMEOUT_MS) {
    if (this.running) this.proc.kill('SIGTERM');
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve(null), timeoutMs);
    });
    const res = await Promise.race([this.exit, timeout]);
    clearTimeout(timer);
    if (res === null) {
      this.proc.kill('SIGKILL');
      await this.exit;
      throw new Error(
        `server did not exit within ${timeoutMs} ms of SIGTERM (killed)\n--- stderr ---\n${tail(this.logs.stderr)}\n--- stdout ---\n${tail(this.logs.stdout)}`,
      );
    }
    return res;
  }

  /** Graceful stop: SIGTERM, await exit, and fail unless the exit code is 0. */
  async stop(timeoutMs = STOP_TIMEOUT_MS) {
    const res = await this.terminate(timeoutMs);
    if (res.code !== 0) {
      throw new Error(
        `server exited with code ${res.code} signal ${res.signal} after SIGTERM (expected 0)\n--- stderr ---\n${tail(this.logs.stderr)}\n--- stdout ---\n${tail(this.logs.stdout)}`,
      );
    }
    return res;
  }

  /** Cleanup for `after` hooks: graceful stop if still running, SIGKILL as a last resort. */
  async dispose() {
    if (!this.running) return;
    try {
      await this.terminate();
    } catch {
      /* terminate already killed it */
    }
  }
}

/**
 * Starts `coolchat serve --listen 127.0.0.1:0 --data-dir <dir>` with `COOLCHAT__*` overrides in
 * `env` and waits (bounded) for its `listening on http://...` line.
 */
export async function startServer({ env = {}, dataDir, timeoutMs = START_TIMEOUT_MS } = {}) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`coolchat binary not found at ${BIN} (build it with \`cargo build\` or set COOLCHAT_BIN)`);
  }
  const dir = dataDir ?? freshDataDir();
  const childEnv = { ...process.env, NO_COLOR: '1', ...env };
  // Never inherit a stray configuration from the developer's shell.
  for (const k of Object.keys(childEnv)) {
    if ((k.startsWith('COOLCHAT__') || k === 'COOLCHAT_CONFIG') && !(k in env)) delete childEnv[k];
  }
  const proc = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dir], {
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveProcs.add(proc);
  proc.once('exit', () => liveProcs.delete(proc));

  const logs = { stdout: '', stderr: '' };
  const keep = (k, chunk) => {
    logs[k] += chunk;
    if (logs[k].length > LOG_CAP) logs[k] = logs[k].slice(-LOG_CAP);
  };
  proc.stderr.setEncoding('utf8');
  proc.stdout.setEncoding('utf8');
  proc.stderr.on('data', (c) => {
    keep('stderr', c);
    if (process.env.COOLCHAT_E2E_VERBOSE) process.stderr.write(c);
  });

  const url = await new Promise((resolve, reject) => {
    let buf = '';
    let done = false;
    const finish = (err, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      proc.off('exit', onExit);
      proc.off('error', onError);
      if (err) reject(err); else resolve(value);
    };
    const diag = () => `\n--- stderr ---\n${tail(logs.stderr)}\n--- stdout ---\n${tail(logs.stdout)}`;
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      finish(new Error(`server did not print "listening on http://..." within ${timeoutMs} ms${diag()}`));
    }, timeoutMs);
    const onExit = (code, signal) =>
      finish(new Error(`server exited (code ${code}, signal ${signal}) before listening${diag()}`));
    const onError = (e) => finish(new Error(`cannot spawn ${BIN}: ${e.message}`));
    proc.once('exit', onExit);
    proc.once('error', onError);
    proc.stdout.on('data', (c) => {
      keep('stdout', c);
      if (process.env.COOLCHAT_E2E_VERBOSE) process.stdout.write(c);
      if (done) return;
      buf += c;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = stripAnsi(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        const m = line.match(/listening on (http:\/\/[^\s]+)/);
        if (m) {
          try {
            finish(null, new URL(m[1]).origin);
          } catch (e) {
            finish(new Error(`unparsable listen URL in line ${JSON.stringify(line)}: ${e.message}`));
          }
          return;
        }
      }
    });
  });
  return new Server({ proc, url, dataDir: dir, env, logs });
}

// ---------------------------------------------------------------------------------------------
// REST

/**
 * One HTTP request. `json` is sent as JSON; `body` is sent raw (string/Buffer) with
 * `contentType` (default application/json). Returns `{status, headers, text, json}` where `json`
 * is the parsed body or undefined.
 */
export async function http(base, method, urlPath, { token, json, body, contentType, headers = {} } = {}) {
  const h = { ...headers };
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  let payload;
  if (json !== undefined) {
    payload = JSON.stringify(json);
    h['content-type'] = 'application/json';
  } else if (body !== undefined) {
    payload = body;
    h['content-type'] = contentType ?? 'application/json';
  }
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), ACK_TIMEOUT_MS * 2);
  let res;
  try {
    res = await fetch(base + urlPath, { method, headers: h, body: payload, signal: ctl.signal });
  } catch (e) {
    throw new Error(`${method} ${urlPath}: request failed: ${e.cause?.message ?? e.message}`);
  } finally {
    clearTimeout(timer);
  }
  const text = await res.text();
  let parsed;
  try {
    parsed = text.length ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, text, json: parsed };
}

export const api = {
  get: (base, p, opts) => http(base, 'GET', p, opts),
  post: (base, p, opts) => http(base, 'POST', p, opts),
  patch: (base, p, opts) => http(base, 'PATCH', p, opts),
  delete: (base, p, opts) => http(base, 'DELETE', p, opts),
};

/** Short description of a response for assertion messages. */
export function show(res) {
  return `HTTP ${res.status} ${res.text.length > 600 ? res.text.slice(0, 600) + '…' : res.text}`;
}

// ---------------------------------------------------------------------------------------------
// Sign-In with Ethereum

export const STATEMENT = 'Sign in to CoolChat.';

export function newWallet() {
  return Wallet.createRandom();
}

/** GET /api/v1/auth/nonce; throws unless 200. */
export async function getNonce(base) {
  const res = await api.get(base, '/api/v1/auth/nonce');
  if (res.status !== 200 || !res.json) throw new Error(`GET /api/v1/auth/nonce: ${show(res)}`);
  return res.json;
}

/**
 * The EIP-4361 text for `address` built from a nonce response, with any field overridden
 * (`domain`, `uri`, `chainId`, `nonce`, `issuedAt`, `expirationTime`, `notBefore`, `statement`).
 */
export function siweText(info, address, overrides = {}) {
  const msg = new SiweMessage({
    domain: info.domain,
    address,
    statement: STATEMENT,
    uri: info.uri,
    version: '1',
    chainId: info.chain_id,
    nonce: info.nonce,
    issuedAt: new Date().toISOString(),
    ...overrides,
  });
  return msg.prepareMessage();
}

/** POST /api/v1/auth/verify; returns the raw response. */
export function verify(base, message, signature) {
  return api.post(base, '/api/v1/auth/verify', { json: { message, signature } });
}

/** Full sign-in; returns `{token, address, expires_at}` and throws unless 200. */
export async function signIn(base, wallet, overrides = {}) {
  const info = await getNonce(base);
  const text = siweText(info, wallet.address, overrides);
  const signature = await wallet.signMessage(text);
  const res = await verify(base, text, signature);
  if (res.status !== 200 || !res.json?.token) throw new Error(`sign-in of ${wallet.address}: ${show(res)}`);
  return res.json;
}

/** A new wallet, signed in: `{wallet, address, token, expires_at}`. */
export async function newUser(base) {
  const wallet = newWallet();
  const s = await signIn(base, wallet);
  return { wallet, address: wallet.address, token: s.token, expires_at: s.expires_at };
}

// ---------------------------------------------------------------------------------------------
// Socket.IO

/**
 * Connects to `/` with `auth: {token}` (omit the token with `token === undefined`). Resolves with
 * the socket on `connect`, rejects with the `connect_error` error object (check `err.data`).
 * Every socket keeps a log of every event it receives, in order, in `socket.log`
 * (`{event, args, i}`), including `disconnect` (args: [reason]).
 */
export function connect(base, token, opts = {}) {
  const { transports = ['websocket'], auth, ...rest } = opts;
  const socket = io(base, {
    auth: auth ?? (token === undefined ? {} : { token }),
    transports,
    reconnection: false,
    forceNew: true,
    timeout: EVENT_TIMEOUT_MS,
    ...rest,
  });
  socket.log = [];
  socket.waiters = new Set();
  const record = (event, args) => {
    const entry = { event, args, i: socket.log.length };
    socket.log.push(entry);
    for (const w of [...socket.waiters]) w(entry);
  };
  socket.onAny((event, ...args) => record(event, args));
  socket.on('disconnect', (reason, details) => record('disconnect', [reason, details]));
  liveSockets.add(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error(`socket did not connect within ${EVENT_TIMEOUT_MS} ms`));
    }, EVENT_TIMEOUT_MS + 1000);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('connect_error');
      resolve(socket);
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      socket.close();
      liveSockets.delete(socket);
      reject(err);
    });
  });
}

/** Expects the connection to be refused; resolves with the `connect_error` error. */
export async function connectRefused(base, token, opts = {}) {
  let socket;
  try {
    socket = await connect(base, token, opts);
  } catch (err) {
    return err;
  }
  socket.close();
  throw new Error('connection was accepted, expected a connect_error');
}

/** Closes every socket opened through `connect` (for `after` hooks). */
export function closeAllSockets() {
  for (const s of liveSockets) {
    try { s.close(); } catch { /* ignore */ }
  }
  liveSockets.clear();
}

/** The current end of a socket's event log, to wait for or inspect only later events. */
export function mark(socket) {
  return socket.log.length;
}

/** Logged events named `event` (optionally matching `predicate`) from index `since` on. */
export function events(socket, event, predicate = () => true, since = 0) {
  return socket.log.slice(since).filter((e) => e.event === event && predicate(e.args[0], e)).map((e) => e.args[0]);
}

/**
 * Resolves with the payload of the first `event` matching `predicate` in the socket's log at or
 * after index `since` (default: the whole log, so events that arrived before the call count),
 * or the next one to arrive. Rejects after `timeoutMs`.
 */
export function waitFor(socket, event, predicate = () => true, timeoutMs = EVENT_TIMEOUT_MS, { since = 0 } = {}) {
  return new Promise((resolve, reject) => {
    const matches = (e) => e.i >= since && e.event === event && predicate(e.args[0], e);
    const found = socket.log.find(matches);
    if (found) return resolve(found.args[0]);
    const waiter = (e) => {
      if (!matches(e)) return;
      clearTimeout(timer);
      socket.waiters.delete(waiter);
      resolve(e.args[0]);
    };
    const timer = setTimeout(() => {
      socket.waiters.delete(waiter);
      const seen = socket.log
        .slice(since)
        .slice(-10)
        .map((e) => `${e.event} ${JSON.stringify(e.args[0])?.slice(0, 200)}`)
        .join('\n  ');
      reject(new Error(`no "${event}" event matching within ${timeoutMs} ms; last events seen:\n  ${seen || '(none)'}`));
    }, timeoutMs);
    socket.waiters.add(waiter);
  });
}

/** Waits until `count` events named `event` matching `predicate` have been logged; returns them. */
export function waitForCount(socket, event, count, predicate = () => true, timeoutMs = EVENT_TIMEOUT_MS, { since = 0 } = {}) {
  return new Promise((resolve, reject) => {
    const current = () => events(socket, event, predicate, since);
    const check = () => {
      const got = current();
      if (got.length >= count) {
        clearTimeout(timer);
        socket.waiters.delete(check);
        resolve(got);
        return true;
      }
      return false;
    };
    const timer = setTimeout(() => {
      socket.waiters.delete(check);
      reject(new Error(`expected ${count} "${event}" events within ${timeoutMs} ms, got ${current().length}`));
    }, timeoutMs);
    if (!check()) socket.waiters.add(check);
  });
}

/** Emits with an acknowledgement; resolves with the ack payload (bounded). */
export function emitAck(socket, event, ...payload) {
  return socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, ...payload);
}

/** `message:send`, asserting nothing; returns the ack. */
export function send(socket, roomId, body, extra = {}) {
  return emitAck(socket, 'message:send', { room_id: roomId, body, client_msg_id: extra.client_msg_id ?? cmid(), ...extra });
}

/** `message:send` that must succeed; returns the message. */
export async function sendOk(socket, roomId, body, extra = {}) {
  const ack = await send(socket, roomId, body, extra);
  if (!ack || ack.ok !== true || !ack.message) throw new Error(`message:send refused: ${JSON.stringify(ack)}`);
  return ack.message;
}

/** A fresh client_msg_id. */
export function cmid() {
  return randomUUID();
}

/** Resolves when the socket is disconnected (now or later), with the reason. */
export function waitDisconnect(socket, timeoutMs = EVENT_TIMEOUT_MS) {
  return waitFor(socket, 'disconnect', () => true, timeoutMs);
}

/** Disconnects from the client side and waits for the local `disconnect`. */
export async function disconnect(socket) {
  if (socket.connected) {
    const p = waitDisconnect(socket);
    socket.disconnect();
    await p;
  } else {
    socket.close();
  }
  liveSockets.delete(socket);
}

// ---------------------------------------------------------------------------------------------
// Domain helpers

/** POST /api/v1/rooms; returns the room, throws unless 201. */
export async function createRoom(base, token, name, members) {
  const res = await api.post(base, '/api/v1/rooms', { token, json: { name, members } });
  if (res.status !== 201) throw new Error(`POST /api/v1/rooms: ${show(res)}`);
  return res.json;
}

/** POST /api/v1/rooms/{id}/messages; returns the message, throws unless 201. */
export async function restSend(base, token, roomId, body, clientMsgId = cmid()) {
  const res = await api.post(base, `/api/v1/rooms/${encodeURIComponent(roomId)}/messages`, {
    token,
    json: { body, client_msg_id: clientMsgId },
  });
  if (res.status !== 201) throw new Error(`POST messages: ${show(res)}`);
  return res.json;
}

/** Every message of a room, ascending, following `after_seq` pages. */
export async function history(base, token, roomId, { limit = 200 } = {}) {
  const all = [];
  let after = 0;
  for (let page = 0; page < 10_000; page++) {
    const res = await api.get(base, `/api/v1/rooms/${encodeURIComponent(roomId)}/messages?after_seq=${after}&limit=${limit}`, { token });
    if (res.status !== 200) throw new Error(`GET messages: ${show(res)}`);
    all.push(...res.json.messages);
    if (!res.json.has_more || res.json.messages.length === 0) return all;
    after = res.json.messages[res.json.messages.length - 1].seq;
  }
  throw new Error('history paging did not end');
}

/**
 * Runs `sync` until `has_more` is false, advancing the cursors from what came back. Returns
 * `{messages, pages, cursors}`; `pages` holds every ack.
 */
export async function syncAll(socket, cursors = {}, { maxPages = 1000 } = {}) {
  const cur = { ...cursors };
  const messages = [];
  const pages = [];
  for (let i = 0; i < maxPages; i++) {
    const ack = await emitAck(socket, 'sync', { cursors: cur });
    pages.push(ack);
    if (!ack || ack.ok !== true) throw new Error(`sync refused: ${JSON.stringify(ack)}`);
    for (const m of ack.messages) {
      messages.push(m);
      if ((cur[m.room_id] ?? 0) < m.seq) cur[m.room_id] = m.seq;
    }
    if (!ack.has_more) return { messages, pages, cursors: cur };
    if (ack.messages.length === 0) throw new Error('sync said has_more with an empty page');
  }
  throw new Error(`sync did not finish within ${maxPages} pages`);
}

// ---------------------------------------------------------------------------------------------
// Shape checks

export const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;
export const EIP55 = /^0x[0-9a-fA-F]{40}$/;

/** Asserts the v1 error envelope `{"error": {"code", "message"}}` with the given code. */
export function isError(body, code) {
  return (
    body !== null &&
    typeof body === 'object' &&
    typeof body.error === 'object' &&
    body.error !== null &&
    body.error.code === code &&
    typeof body.error.message === 'string' &&
    body.error.message.length > 0
  );
}

/** Asserts a REST error response: status and v1 error envelope with `code`. */
export function assertError(res, status, code, what = 'request') {
  assert.equal(res.status, status, `${what}: expected HTTP ${status} ${code}, got ${show(res)}`);
  assert.ok(isError(res.json, code), `${what}: expected error code "${code}", got ${show(res)}`);
}

/** Asserts an ack `{"ok": false, "error": {"code": code, ...}}`. */
export function assertAckError(ack, code, what = 'ack') {
  assert.ok(
    ack && typeof ack === 'object' && ack.ok === false && isError(ack, code),
    `${what}: expected {"ok":false,"error":{"code":"${code}",...}}, got ${JSON.stringify(ack)}`,
  );
}

/** Asserts the v1 message shape, and any fields given in `expect`. */
export function assertMessage(m, expect = {}) {
  assert.ok(m && typeof m === 'object', `message is not an object: ${JSON.stringify(m)}`);
  assert.equal(typeof m.id, 'string', `message.id: ${JSON.stringify(m)}`);
  assert.ok(m.id.length > 0, 'message.id is empty');
  assert.equal(typeof m.room_id, 'string', `message.room_id: ${JSON.stringify(m)}`);
  assert.ok(Number.isInteger(m.seq) && m.seq >= 1, `message.seq: ${JSON.stringify(m)}`);
  assert.match(m.sender, EIP55, `message.sender: ${JSON.stringify(m)}`);
  assert.equal(typeof m.body, 'string', `message.body: ${JSON.stringify(m)}`);
  assert.match(m.created_at, RFC3339, `message.created_at: ${JSON.stringify(m)}`);
  assert.equal(typeof m.client_msg_id, 'string', `message.client_msg_id: ${JSON.stringify(m)}`);
  for (const [k, v] of Object.entries(expect)) {
    assert.deepEqual(m[k], v, `message.${k}: ${JSON.stringify(m)}`);
  }
}

/** Asserts the v1 room shape, and any fields given in `expect`. */
export function assertRoom(r, expect = {}) {
  assert.ok(r && typeof r === 'object', `room is not an object: ${JSON.stringify(r)}`);
  assert.equal(typeof r.id, 'string', `room.id: ${JSON.stringify(r)}`);
  assert.ok(r.kind === 'group' || r.kind === 'dm', `room.kind: ${JSON.stringify(r)}`);
  assert.ok(Array.isArray(r.members), `room.members: ${JSON.stringify(r)}`);
  for (const a of r.members) assert.match(a, EIP55, `room member: ${JSON.stringify(r)}`);
  assert.ok(Number.isInteger(r.last_seq) && r.last_seq >= 0, `room.last_seq: ${JSON.stringify(r)}`);
  for (const [k, v] of Object.entries(expect)) {
    if (k === 'members') {
      assert.deepEqual([...r.members].sort(), [...v].sort(), `room.members: ${JSON.stringify(r)}`);
    } else {
      assert.deepEqual(r[k], v, `room.${k}: ${JSON.stringify(r)}`);
    }
  }
}

/**
 * Lifecycle for a test file: `const ctx = useServer({before, after}, {env, setup})` at file level
 * registers `before` (start, then `setup(ctx)`) and `after` (close sockets, graceful stop
 * asserting exit code 0). `ctx.server`, `ctx.url` are set once started.
 */
export function useServer(hooks, { env = {}, setup } = {}) {
  const ctx = { server: null, url: null };
  // One hook only: Node 20 does not serialise several root-level `before` hooks, so any seeding
  // that needs the server goes into `setup(ctx)`, run here once the server is up.
  hooks.before(async () => {
    ctx.server = await startServer({ env });
    ctx.url = ctx.server.url;
    if (setup) await setup(ctx);
  });
  hooks.after(async () => {
    closeAllSockets();
    if (ctx.server) await ctx.server.stop();
  });
  return ctx;
}
