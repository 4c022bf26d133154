// Durability across a graceful restart: SIGTERM (exit 0, session:end shutdown on live sockets),
// restart on the same data directory, tokens, rooms, history and sync intact.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, api, newUser, connect, waitFor, waitDisconnect, send, sendOk, createRoom, restSend,
  history, syncAll, closeAllSockets, assertError, show,
} from './lib/harness.js';

const servers = [];
after(async () => {
  closeAllSockets();
  for (const s of servers) await s.dispose();
});

const env = { COOLCHAT__LIMITS__MESSAGES_PER_SECOND: '10000', COOLCHAT__LIMITS__MESSAGE_BURST: '10000' };

describe('restart', () => {
  it('everything acknowledged before SIGTERM is there after a restart on the same data dir', async () => {
    const s1 = await startServer({ env });
    servers.push(s1);
    const a = await newUser(s1.url);
    const b = await newUser(s1.url);
    const loggedOut = await newUser(s1.url);
    await api.patch(s1.url, '/api/v1/me', { token: a.token, json: { display_name: 'Alice' } });
    const room = await createRoom(s1.url, a.token, 'durable', [b.address, loggedOut.address]);
    const dm = (await api.post(s1.url, '/api/v1/dms', { token: a.token, json: { address: b.address } })).json;

    const sa = await connect(s1.url, a.token);
    const sb = await connect(s1.url, b.token);
    const acked = [];
    for (let i = 0; i < 20; i++) acked.push(await sendOk(i % 2 ? sb : sa, room.id, `socket-${i}`));
    for (let i = 0; i < 5; i++) acked.push(await restSend(s1.url, b.token, room.id, `rest-${i}`));
    acked.push(await sendOk(sa, dm.id, 'dm before restart'));
    const out = await api.post(s1.url, '/api/v1/auth/logout', { token: loggedOut.token });
    assert.equal(out.status, 204, show(out));

    // A burst still in flight when SIGTERM arrives: whatever got an ok ack must survive.
    const inflight = Array.from({ length: 40 }, (_, i) =>
      send(sb, room.id, `inflight-${i}`).then((ack) => ack, (err) => ({ ok: false, transport: String(err) })),
    );
    await waitFor(sb, 'message', (m) => m.body === 'inflight-0', 10_000);

    const endA = waitFor(sa, 'session:end');
    const endB = waitFor(sb, 'session:end');
    const exit = await s1.terminate();
    assert.equal(exit.code, 0, `exit code ${exit.code} signal ${exit.signal}\n${s1.stderr().slice(-3000)}`);
    assert.deepEqual(await endA, { code: 'shutdown' });
    assert.deepEqual(await endB, { code: 'shutdown' });
    await waitDisconnect(sa);
    await waitDisconnect(sb);

    const inflightAcks = await Promise.all(inflight);
    const inflightOk = inflightAcks.filter((x) => x && x.ok === true).map((x) => x.message);
    for (const x of inflightAcks) {
      if (x && x.ok === false && x.error) {
        assert.ok(['shutting_down', 'overloaded', 'backend_unavailable'].includes(x.error.code), `unexpected refusal during shutdown: ${JSON.stringify(x)}`);
      }
    }
    // Every message that was fanned out to a socket was durably accepted, acked or not.
    const delivered = [...sa.log, ...sb.log].filter((e) => e.event === 'message').map((e) => e.args[0]);
    assert.ok(delivered.some((m) => m.body === 'inflight-0'));

    // Restart on the same data directory.
    const s2 = await startServer({ env, dataDir: s1.dataDir });
    servers.push(s2);

    // Tokens survive; the revoked one stays revoked.
    let res = await api.get(s2.url, '/api/v1/me', { token: a.token });
    assert.equal(res.status, 200, `token after restart: ${show(res)}`);
    assert.equal(res.json.display_name, 'Alice');
    assertError(await api.get(s2.url, '/api/v1/me', { token: loggedOut.token }), 401, 'token_revoked', 'revoked token after restart');

    // Rooms survive.
    res = await api.get(s2.url, '/api/v1/rooms', { token: b.token });
    assert.deepEqual(res.json.rooms.map((r) => r.id).sort(), [room.id, dm.id].sort());
    res = await api.post(s2.url, '/api/v1/dms', { token: b.token, json: { address: a.address } });
    assert.equal(res.status, 200, show(res));
    assert.equal(res.json.id, dm.id);

    // History holds every acknowledged message, with the same id/seq/body, and no gaps.
    const hist = await history(s2.url, a.token, room.id);
    const byId = new Map(hist.map((m) => [m.id, m]));
    for (const m of [...acked.filter((x) => x.room_id === room.id), ...inflightOk]) {
      assert.deepEqual(byId.get(m.id), m, `acknowledged message seq ${m.seq} missing or changed after restart`);
    }
    for (const m of delivered.filter((x) => x.room_id === room.id)) {
      assert.deepEqual(byId.get(m.id), m, `delivered message seq ${m.seq} (${m.body}) missing or changed after restart`);
    }
    assert.deepEqual(hist.map((m) => m.seq), Array.from({ length: hist.length }, (_, i) => i + 1), 'gap in seqs after restart');
    res = await api.get(s2.url, `/api/v1/rooms/${room.id}`, { token: a.token });
    assert.equal(res.json.last_seq, hist.length, show(res));

    // Sync from scratch returns everything, once.
    const sa2 = await connect(s2.url, a.token);
    const synced = await syncAll(sa2, {});
    const roomMsgs = synced.messages.filter((m) => m.room_id === room.id);
    assert.deepEqual(roomMsgs, hist);
    assert.deepEqual(synced.messages.filter((m) => m.room_id === dm.id).map((m) => m.body), ['dm before restart']);

    // New messages continue the sequence.
    const next = await sendOk(sa2, room.id, 'after restart');
    assert.equal(next.seq, hist.length + 1);

    // A pre-restart client_msg_id still deduplicates.
    const first = acked[0];
    const again = await send(sa2, room.id, first.body, { client_msg_id: first.client_msg_id });
    assert.deepEqual(again.message, first);

    sa2.close();
    await s2.stop();
  });

  it('a server with no connections stops with exit code 0 and restarts on its data dir twice', async () => {
    const s1 = await startServer();
    servers.push(s1);
    const u = await newUser(s1.url);
    const room = await createRoom(s1.url, u.token, 'twice', []);
    await restSend(s1.url, u.token, room.id, 'one');
    await s1.stop();
    const s2 = await startServer({ dataDir: s1.dataDir });
    servers.push(s2);
    await restSend(s2.url, u.token, room.id, 'two');
    await s2.stop();
    const s3 = await startServer({ dataDir: s1.dataDir });
    servers.push(s3);
    const hist = await history(s3.url, u.token, room.id);
    assert.deepEqual(hist.map((m) => [m.seq, m.body]), [[1, 'one'], [2, 'two']]);
    // The nonce domain follows the new port.
    const n = (await api.get(s3.url, '/api/v1/auth/nonce')).json;
    assert.equal(n.domain, s3.domain);
    assert.equal(n.uri, s3.url);
    await s3.stop();
  });
});
