// `coolchat admin` run as a separate process against a live embedded node, with real Socket.IO
// clients connected: a ban ends the user's live sockets (session:end banned, then disconnect),
// refuses sign-in, REST and sends; unban lets the address sign in again; the other commands
// answer with tables or JSON and exit codes scripts can rely on (0 ok, 1 failure, 2 usage).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  BIN, useServer, api, newUser, signIn, connect, connectRefused, waitFor, waitDisconnect, emitAck,
  createRoom, sendOk, history, isError, assertError, cmid,
} from './lib/harness.js';

const ctx = useServer({ before, after });

/** Runs `coolchat admin --data-dir <node's dir> ...args`; resolves {code, stdout, stderr}. */
function admin(args, { input } = {}) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, NO_COLOR: '1' };
    for (const k of Object.keys(env)) if (k.startsWith('COOLCHAT__') || k === 'COOLCHAT_CONFIG') delete env[k];
    const p = spawn(BIN, ['admin', '--data-dir', ctx.server.dataDir, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    p.on('error', reject);
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
    if (input !== undefined) p.stdin.write(input);
    p.stdin.end();
  });
}

async function adminJson(args) {
  const r = await admin([...args, '--json']);
  assert.equal(r.code, 0, `admin ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

describe('admin ban / unban against a live node', () => {
  it('ban ends live sockets on the node, refuses sign-in, REST, sockets and sends; unban restores sign-in', async () => {
    const victim = await newUser(ctx.url);
    const friend = await newUser(ctx.url);
    const room = await createRoom(ctx.url, friend.token, 'banned-room', [victim.address]);
    const tab1 = await connect(ctx.url, victim.token);
    const second = await signIn(ctx.url, victim.wallet);
    const tab2 = await connect(ctx.url, second.token);
    const watcher = await connect(ctx.url, friend.token);
    await sendOk(tab1, room.id, 'before the ban');

    const started = Date.now();
    const r = await admin(['ban', victim.address, '--reason', 'spam', '--for', '7d']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /banned 0x[0-9a-fA-F]{40} until/);
    assert.match(r.stdout, /sessions revoked: 2/);

    for (const s of [tab1, tab2]) {
      const end = await waitFor(s, 'session:end');
      assert.deepEqual(end, { code: 'banned' });
      await waitDisconnect(s);
    }
    const elapsed = Date.now() - started;
    console.log(`# ban → both sockets ended in ${elapsed} ms (admin process start included)`);
    assert.equal(watcher.connected, true, 'other users stay connected');

    assertError(await api.get(ctx.url, '/api/v1/me', { token: victim.token }), 401, 'token_revoked', 'REST with a revoked token');
    const refused = await connectRefused(ctx.url, victim.token);
    assert.ok(isError(refused.data, 'token_revoked') || isError(refused.data, 'banned'), JSON.stringify(refused.data));
    const nonce = await api.get(ctx.url, '/api/v1/auth/nonce');
    assert.equal(nonce.status, 200);
    await assert.rejects(signIn(ctx.url, victim.wallet), /403.*banned/s, 'sign-in while banned');

    const shown = await adminJson(['users', 'show', victim.address]);
    assert.equal(shown.banned, true);
    assert.equal(shown.live_sessions, 0);
    assert.equal(shown.ban.reason, 'spam');

    const un = await admin(['unban', victim.address]);
    assert.equal(un.code, 0, un.stderr);
    assert.match(un.stdout, /unbanned/);
    const again = await signIn(ctx.url, victim.wallet);
    const s = await connect(ctx.url, again.token);
    const ack = await emitAck(s, 'message:send', { room_id: room.id, body: 'back again', client_msg_id: cmid() });
    assert.equal(ack.ok, true, JSON.stringify(ack));

    const audit = await adminJson(['audit', '--target', victim.address]);
    assert.deepEqual(audit.map((e) => e.action).slice(0, 2), ['unban', 'ban']);
    assert.equal(audit[1].detail.reason, 'spam');
  });

  it('a socket that stays open cannot send once its session is revoked (store re-check)', async () => {
    const u = await newUser(ctx.url);
    const room = await createRoom(ctx.url, u.token, 'recheck', []);
    const s = await connect(ctx.url, u.token);
    const r = await admin(['sessions', 'revoke', u.address]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /revoked 1 session/);
    const end = await waitFor(s, 'session:end');
    assert.deepEqual(end, { code: 'revoked' });
    assertError(await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, { token: u.token, json: { body: 'x', client_msg_id: cmid() } }), 401, 'token_revoked');
  });

  it('ban --purge-messages tombstones every message, keeps seq, tells live clients', async () => {
    const spammer = await newUser(ctx.url);
    const reader = await newUser(ctx.url);
    const room = await createRoom(ctx.url, reader.token, 'purge', [spammer.address]);
    const ss = await connect(ctx.url, spammer.token);
    for (let i = 0; i < 5; i++) await sendOk(ss, room.id, `spam ${i}`);
    const sr = await connect(ctx.url, reader.token);
    await sendOk(sr, room.id, 'legit');
    const r = await admin(['ban', spammer.address, '--purge-messages', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.equal(report.messages_tombstoned, 5);
    for (let seq = 1; seq <= 5; seq++) {
      await waitFor(sr, 'message:deleted', (d) => d.room_id === room.id && d.seq === seq);
    }
    const h = await history(ctx.url, reader.token, room.id);
    assert.deepEqual(h.map((m) => m.seq), [1, 2, 3, 4, 5, 6]);
    for (const m of h.slice(0, 5)) {
      assert.equal(m.deleted, true);
      assert.equal(m.body, '');
    }
    assert.equal(h[5].body, 'legit');
    assert.equal(h[5].deleted, undefined);
  });
});

describe('admin commands: output and exit codes', () => {
  it('users, rooms, stats, messages delete, export, delete-user', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'ops', [b.address]);
    const sa = await connect(ctx.url, a.token);
    const sb = await connect(ctx.url, b.token);
    const m1 = await sendOk(sa, room.id, 'first');
    await sendOk(sb, room.id, 'from b');

    const list = await admin(['users', 'list']);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^ADDRESS\s+DISPLAY NAME\s+CREATED\s+LAST SEEN/m);
    assert.ok(list.stdout.includes(a.address), 'users list shows the user');

    const rooms = await adminJson(['rooms', 'list', '--limit', '1000']);
    assert.ok(rooms.some((r) => r.id === room.id));
    const shownRoom = await adminJson(['rooms', 'show', room.id]);
    assert.equal(shownRoom.members.length, 2);

    const stats = await adminJson(['stats']);
    assert.ok(stats.store.users >= 2 && stats.store.messages >= 2, JSON.stringify(stats));

    const del = await admin(['messages', 'delete', m1.id]);
    assert.equal(del.code, 0, del.stderr);
    await waitFor(sb, 'message:deleted', (d) => d.id === m1.id);

    const exp = await adminJson(['export', b.address]);
    assert.equal(exp.user.address, b.address);
    assert.ok(exp.messages.some((m) => m.body === 'from b'));
    assert.ok(exp.rooms.some((r) => r.id === room.id));
    assert.ok(!JSON.stringify(exp).includes(b.token), 'an export never contains a token');

    const noConfirm = await admin(['delete-user', b.address], { input: '' });
    assert.equal(noConfirm.code, 2, 'without a terminal, delete-user needs --yes');
    const erase = await admin(['delete-user', b.address, '--yes', '--json']);
    assert.equal(erase.code, 0, erase.stderr);
    assert.equal(JSON.parse(erase.stdout).messages_tombstoned, 1);
    const end = await waitFor(sb, 'session:end');
    assert.deepEqual(end, { code: 'revoked' });
    const changed = await waitFor(sa, 'room', (d) => d.room.id === room.id && d.room.members.length === 1);
    assert.deepEqual(changed.room.members, [a.address]);
    assertError(await api.get(ctx.url, `/api/v1/users/${b.address}`, { token: a.token }), 404, 'user_not_found');
  });

  it('wrong input: one-line error, non-zero exit, nothing applied', async () => {
    const bad = await admin(['ban', '0x1234']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^error: .*invalid address/m);
    assert.equal(bad.stderr.trim().split('\n').length, 1);
    const unknown = await admin(['users', 'show', '0x' + '11'.repeat(20)]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /user not found/);
    const noRoom = await admin(['rooms', 'show', 'nope']);
    assert.equal(noRoom.code, 1);
    assert.match(noRoom.stderr, /room not found/);
    const usage = await admin(['ban']);
    assert.equal(usage.code, 2, 'clap usage error');
    const past = await admin(['ban', '0x' + '22'.repeat(20), '--until', '2001-01-01T00:00:00Z']);
    assert.equal(past.code, 2);
    const bans = await adminJson(['bans']);
    assert.ok(!bans.some((b) => b.address.toLowerCase() === '0x' + '22'.repeat(20)), 'a refused ban is not applied');
  });
});
