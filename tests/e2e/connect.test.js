// Socket readiness: once the client sees `connect`, the socket is in all the user's rooms and
// every event it emits is handled (none dropped while the server finishes setting it up).
// Repeated to catch races between the connect handshake and the server's per-socket setup.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, newUser, connect, waitFor, createRoom, restSend, sendOk } from './lib/harness.js';

const ctx = useServer({ before, after }, {
  env: { COOLCHAT__LIMITS__MESSAGES_PER_SECOND: '10000', COOLCHAT__LIMITS__MESSAGE_BURST: '10000' },
});

const ROUNDS = 25;

describe('socket readiness on connect', () => {
  it(`an event emitted right on connect is acknowledged (${ROUNDS} fresh sockets)`, async () => {
    const u = await newUser(ctx.url);
    const room = await createRoom(ctx.url, u.token, 'ready', []);
    const failures = [];
    for (let i = 0; i < ROUNDS; i++) {
      const s = await connect(ctx.url, u.token);
      // Emitted synchronously in the same tick as the `connect` event was handled.
      const acks = await Promise.allSettled([
        s.timeout(3_000).emitWithAck('sync', { cursors: {} }),
        s.timeout(3_000).emitWithAck('message:send', { room_id: room.id, body: `r${i}`, client_msg_id: `ready-${i}` }),
      ]);
      for (const [k, r] of acks.entries()) {
        if (r.status !== 'fulfilled' || r.value?.ok !== true) {
          failures.push(`round ${i} ${k ? 'message:send' : 'sync'}: ${r.status === 'fulfilled' ? JSON.stringify(r.value) : r.reason.message}`);
        }
      }
      s.close();
      if (failures.length >= 3) break; // enough evidence; keep the failing run short
    }
    assert.deepEqual(failures, [], `events emitted right after connect were not answered:\n${failures.join('\n')}`);
  });

  it(`a socket receives its rooms' messages as soon as it is connected (${ROUNDS} fresh sockets)`, async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'ready-rooms', [b.address]);
    const sa = await connect(ctx.url, a.token);
    const missed = [];
    for (let i = 0; i < ROUNDS; i++) {
      const sb = await connect(ctx.url, b.token);
      const m = await sendOk(sa, room.id, `hello ${i}`);
      try {
        await waitFor(sb, 'message', (x) => x.id === m.id, 3_000);
      } catch {
        missed.push(`round ${i}: seq ${m.seq} not delivered to a socket connected before it was sent`);
      }
      sb.close();
      if (missed.length >= 3) break;
    }
    assert.deepEqual(missed, [], missed.join('\n'));
    sa.close();
  });

  it('a REST message right after connect reaches the new socket', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'ready-rest', []);
    const missed = [];
    for (let i = 0; i < 10; i++) {
      const s = await connect(ctx.url, a.token);
      const m = await restSend(ctx.url, a.token, room.id, `rest ${i}`);
      try {
        await waitFor(s, 'message', (x) => x.id === m.id, 3_000);
      } catch {
        missed.push(`round ${i}`);
      }
      s.close();
      if (missed.length >= 3) break;
    }
    assert.deepEqual(missed, [], `REST messages not delivered to a just-connected socket: ${missed.join(', ')}`);
  });
});
