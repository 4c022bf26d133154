// Enforced limits: body size (socket stays usable), frame size (closes only that socket),
// message rate (socket and REST, with Retry-After), REST body size, room size.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, api, newUser, newWallet, connect, connectRefused, disconnect, isError, waitFor, waitDisconnect, emitAck, send, sendOk,
  createRoom, history, cmid, closeAllSockets, assertError, assertAckError, show,
} from './lib/harness.js';

const BODY = 1024;
const FRAME = 4096;
const HTTP_BODY = 2048;

describe('sizes', () => {
  let server;
  let url;
  before(async () => {
    server = await startServer({
      env: {
        COOLCHAT__LIMITS__MAX_BODY_BYTES: String(BODY),
        COOLCHAT__LIMITS__MAX_FRAME_BYTES: String(FRAME),
        COOLCHAT__LIMITS__MAX_HTTP_BODY_BYTES: String(HTTP_BODY),
        COOLCHAT__LIMITS__MAX_ROOM_MEMBERS: '3',
        COOLCHAT__LIMITS__MAX_SOCKETS_PER_USER: '3',
        COOLCHAT__LIMITS__MESSAGES_PER_SECOND: '10000',
        COOLCHAT__LIMITS__MESSAGE_BURST: '10000',
      },
    });
    url = server.url;
  });
  after(async () => {
    closeAllSockets();
    if (server) await server.stop();
  });

  it('a body over max_body_bytes (counted in UTF-8 bytes) → payload_too_large; the socket stays open and works', async () => {
    const a = await newUser(url);
    const b = await newUser(url);
    const room = await createRoom(url, a.token, 'sizes', [b.address]);
    const sa = await connect(url, a.token);
    const sb = await connect(url, b.token);

    const exact = await sendOk(sa, room.id, 'x'.repeat(BODY));
    assert.equal(exact.body.length, BODY, 'a body of exactly the limit is accepted');

    assertAckError(await send(sa, room.id, 'x'.repeat(BODY + 1)), 'payload_too_large', 'one byte over');
    // 342 × "€" = 342 characters but 1026 bytes.
    assertAckError(await send(sa, room.id, '€'.repeat(342)), 'payload_too_large', 'multi-byte characters over the limit in bytes');
    assertAckError(await send(sa, room.id, 'y'.repeat(FRAME / 2)), 'payload_too_large', 'well over, frame still fits');
    assert.ok(sa.connected, 'the socket was closed after payload_too_large');

    const after = await sendOk(sa, room.id, 'still works');
    assert.equal(after.seq, 2, 'refused bodies must not consume seqs');
    await waitFor(sb, 'message', (m) => m.id === after.id);
    const hist = await history(url, a.token, room.id);
    assert.deepEqual(hist.map((m) => m.seq), [1, 2]);
    sa.close();
    sb.close();
  });

  it('a frame over max_frame_bytes closes that socket only', async () => {
    const a = await newUser(url);
    const b = await newUser(url);
    const room = await createRoom(url, a.token, 'frames', [b.address]);
    const victim = await connect(url, a.token);
    const sibling = await connect(url, a.token);
    const sb = await connect(url, b.token);

    // Not awaited as an ack: the server is expected to close the socket instead of answering.
    victim.timeout(10_000).emit('message:send', { room_id: room.id, body: 'z'.repeat(FRAME * 3), client_msg_id: cmid() }, () => {});
    const reason = await waitDisconnect(victim, 10_000);
    assert.ok(typeof reason === 'string', `disconnect reason: ${reason}`);

    // The other sockets, including the same user's other tab, are unaffected.
    assert.ok(sibling.connected, 'sibling socket closed');
    assert.ok(sb.connected, 'other user\'s socket closed');
    const m = await sendOk(sibling, room.id, 'sibling fine');
    await waitFor(sb, 'message', (x) => x.id === m.id);
    await waitFor(sibling, 'message', (x) => x.id === m.id);
    const ack = await emitAck(sb, 'sync', { cursors: {} });
    assert.equal(ack.ok, true);
    assert.deepEqual(ack.messages.filter((x) => x.room_id === room.id).map((x) => x.body), ['sibling fine'], 'the oversized frame must not have been stored');

    // The user can reconnect.
    const again = await connect(url, a.token);
    await sendOk(again, room.id, 'reconnected');
    for (const s of [again, sibling, sb]) s.close();
  });

  it('polling: a POST over max_frame_bytes ends that session only', async () => {
    const a = await newUser(url);
    const b = await newUser(url);
    const room = await createRoom(url, a.token, 'poll-frames', [b.address]);
    const victim = await connect(url, a.token, { transports: ['polling'], upgrade: false });
    const sb = await connect(url, b.token);
    victim.emit('message:send', { room_id: room.id, body: 'p'.repeat(FRAME * 3), client_msg_id: cmid() }, () => {});
    await waitDisconnect(victim, 10_000);
    const m = await sendOk(sb, room.id, 'still here');
    assert.equal(m.seq, 1, 'the oversized send must not have been stored');
    sb.close();
  });

  it('max_sockets_per_user (3): the 4th live socket is refused with too_many_connections; closing one frees a place', async () => {
    const a = await newUser(url);
    const socks = [];
    for (let i = 0; i < 3; i++) socks.push(await connect(url, a.token));
    const err = await connectRefused(url, a.token);
    assert.ok(isError(err.data, 'too_many_connections'), `4th socket: ${JSON.stringify(err.data)}`);
    // Other users are not affected.
    const b = await newUser(url);
    (await connect(url, b.token)).close();
    // Close one; the server learns it asynchronously, so retry (bounded) until a connect passes.
    await disconnect(socks.pop());
    const deadline = Date.now() + 10_000;
    let again;
    while (!again) {
      again = await connect(url, a.token).catch((e) => {
        assert.ok(isError(e.data, 'too_many_connections'), `unexpected refusal: ${JSON.stringify(e.data)}`);
        assert.ok(Date.now() < deadline, 'still refused 10 s after closing a socket');
        return new Promise((r) => setTimeout(() => r(null), 100));
      });
    }
    for (const s of [...socks, again]) s.close();
  });

  it('REST: a message body over the limit → 413 payload_too_large; a request over max_http_body_bytes → 413', async () => {
    const a = await newUser(url);
    const room = await createRoom(url, a.token, 'rest-sizes', []);
    const p = `/api/v1/rooms/${room.id}/messages`;
    let res = await api.post(url, p, { token: a.token, json: { body: 'x'.repeat(BODY + 1), client_msg_id: cmid() } });
    assertError(res, 413, 'payload_too_large', 'body over max_body_bytes');
    res = await api.post(url, p, { token: a.token, json: { body: 'x'.repeat(HTTP_BODY * 2), client_msg_id: cmid() } });
    assertError(res, 413, 'payload_too_large', 'request over max_http_body_bytes');
    res = await api.patch(url, '/api/v1/me', { token: a.token, json: { display_name: 'x'.repeat(HTTP_BODY * 2) } });
    assertError(res, 413, 'payload_too_large', 'PATCH /me over max_http_body_bytes');
    res = await api.post(url, '/api/v1/rooms', { token: a.token, json: { name: 'n', members: Array.from({ length: 60 }, () => newWallet().address) } });
    assertError(res, 413, 'payload_too_large', 'POST /rooms over max_http_body_bytes');
    res = await api.post(url, '/api/v1/auth/verify', { json: { message: 'x'.repeat(HTTP_BODY * 2), signature: '0x' } });
    assertError(res, 413, 'payload_too_large', 'verify over max_http_body_bytes');

    res = await api.post(url, p, { token: a.token, json: { body: 'x'.repeat(BODY), client_msg_id: cmid() } });
    assert.equal(res.status, 201, show(res));
    assert.equal(res.json.seq, 1);
  });

  it('room_full at max_room_members', async () => {
    const a = await newUser(url);
    const [x, y, z] = [newWallet().address, newWallet().address, newWallet().address];
    assertError(await api.post(url, '/api/v1/rooms', { token: a.token, json: { name: 'big', members: [x, y, z] } }), 409, 'room_full');
    const room = await createRoom(url, a.token, 'three', [x, y]);
    assertError(await api.post(url, `/api/v1/rooms/${room.id}/members`, { token: a.token, json: { address: z } }), 409, 'room_full');
    // Leaving frees a place.
    const res = await api.delete(url, `/api/v1/rooms/${room.id}/members/${y}`, { token: a.token });
    assert.equal(res.status, 200, show(res));
    const add = await api.post(url, `/api/v1/rooms/${room.id}/members`, { token: a.token, json: { address: z } });
    assert.equal(add.status, 200, show(add));
  });
});

describe('message rate', () => {
  let server;
  let url;
  before(async () => {
    server = await startServer({
      env: { COOLCHAT__LIMITS__MESSAGES_PER_SECOND: '1', COOLCHAT__LIMITS__MESSAGE_BURST: '5' },
    });
    url = server.url;
  });
  after(async () => {
    closeAllSockets();
    if (server) await server.stop();
  });

  it('socket: a burst of 12 with burst 5 at 1/s → some rate_limited, no seq consumed by refusals, recovers', async () => {
    const a = await newUser(url);
    const room = await createRoom(url, a.token, 'rate', []);
    const s = await connect(url, a.token);
    const acks = await Promise.all(Array.from({ length: 12 }, (_, i) => send(s, room.id, `r${i}`)));
    const ok = acks.filter((x) => x.ok === true);
    const refused = acks.filter((x) => x.ok !== true);
    for (const x of refused) assertAckError(x, 'rate_limited');
    assert.ok(ok.length >= 5, `the burst of 5 must pass, ${ok.length} did`);
    assert.ok(refused.length >= 1, `expected rate_limited among 12 sends at burst 5, got ${JSON.stringify(acks)}`);
    assert.ok(ok.length <= 8, `${ok.length} of 12 passed with burst 5 at 1/s`);
    assert.deepEqual(ok.map((x) => x.message.seq).sort((p, q) => p - q), Array.from({ length: ok.length }, (_, i) => i + 1));
    assert.ok(s.connected, 'rate limiting must not close the socket');

    // The bucket refills at 1/s: retry (bounded) until a send passes.
    const deadline = Date.now() + 10_000;
    let next;
    for (;;) {
      next = await send(s, room.id, 'after the pause');
      if (next.ok) break;
      assertAckError(next, 'rate_limited');
      assert.ok(Date.now() < deadline, 'still rate limited 10 s later');
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.equal(next.message.seq, ok.length + 1);
    s.close();
  });

  it('REST: 429 rate_limited with a Retry-After header', async () => {
    const a = await newUser(url);
    const room = await createRoom(url, a.token, 'rest-rate', []);
    let limited;
    const started = Date.now();
    for (let i = 0; i < 15 && !limited; i++) {
      const res = await api.post(url, `/api/v1/rooms/${room.id}/messages`, { token: a.token, json: { body: `m${i}`, client_msg_id: cmid() } });
      if (res.status === 429) limited = res;
      else assert.equal(res.status, 201, show(res));
    }
    assert.ok(limited, `15 sequential sends in ${Date.now() - started} ms were never limited (burst 5, 1/s)`);
    assertError(limited, 429, 'rate_limited');
    const retry = limited.headers.get('retry-after');
    assert.match(retry ?? '', /^\d+$/, `Retry-After: ${retry}`);
    assert.ok(Number(retry) >= 1, `Retry-After: ${retry}`);
  });

  it('users are limited separately', async () => {
    const a = await newUser(url);
    const b = await newUser(url);
    const room = await createRoom(url, a.token, 'separate', [b.address]);
    const sa = await connect(url, a.token);
    const sb = await connect(url, b.token);
    const acks = await Promise.all(Array.from({ length: 8 }, (_, i) => send(sa, room.id, `a${i}`)));
    assert.ok(acks.some((x) => x.ok !== true), 'A was never limited');
    const mb = await sendOk(sb, room.id, 'b is fine');
    assert.ok(mb.seq >= 1);
    sa.close();
    sb.close();
  });
});

