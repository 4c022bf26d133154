// Hostile and malformed input on every surface; afterwards the server is healthy and the data
// written before is intact.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import nodeHttp from 'node:http';
import {
  useServer, api, http, newUser, connectRefused, isError, newWallet, getNonce, siweText, verify, connect, waitFor, emitAck,
  send, sendOk, createRoom, restSend, history, cmid, assertError, assertAckError, show,
} from './lib/harness.js';

let owner;
let room;
let seeded;

const ctx = useServer({ before, after }, {
  setup: async ({ url }) => {
    owner = await newUser(url);
    room = await createRoom(url, owner.token, 'seeded', []);
    seeded = [];
    for (let i = 0; i < 5; i++) seeded.push(await restSend(url, owner.token, room.id, `seed-${i}`));
  },
});

describe('REST', () => {
  it('malformed JSON → 400 invalid_request on every JSON endpoint', async () => {
    const bodies = ['{', '{"name": "x",}', 'not json at all', '\u0000\u0001\u0002', '{"a":1}{"b":2}', '"\\ud800"x'];
    const endpoints = [
      ['POST', '/api/v1/rooms'],
      ['POST', `/api/v1/rooms/${room.id}/messages`],
      ['POST', `/api/v1/rooms/${room.id}/members`],
      ['POST', '/api/v1/dms'],
      ['PATCH', '/api/v1/me'],
      ['POST', '/api/v1/auth/verify'],
    ];
    for (const [method, p] of endpoints) {
      for (const body of bodies) {
        const res = await http(ctx.url, method, p, { token: owner.token, body });
        assertError(res, 400, 'invalid_request', `${method} ${p} with ${JSON.stringify(body)}`);
      }
    }
  });

  it('an empty body on a JSON endpoint → 400 invalid_request', async () => {
    const res = await http(ctx.url, 'POST', '/api/v1/rooms', { token: owner.token, body: '' });
    assertError(res, 400, 'invalid_request');
  });

  it('deeply nested JSON → 400, no crash', async () => {
    const deep = '['.repeat(5000) + ']'.repeat(5000);
    const res = await http(ctx.url, 'POST', '/api/v1/rooms', { token: owner.token, body: deep });
    assertError(res, 400, 'invalid_request');
    const deepObj = '{"name":'.repeat(3000) + '1' + '}'.repeat(3000);
    assertError(await http(ctx.url, 'POST', '/api/v1/rooms', { token: owner.token, body: deepObj }), 400, 'invalid_request');
  });

  it('wrong types → 400 invalid_request', async () => {
    const cases = [
      ['POST', '/api/v1/rooms', { name: 5, members: [] }],
      ['POST', '/api/v1/rooms', { name: 'x', members: 'not-a-list' }],
      ['POST', '/api/v1/rooms', { name: 'x', members: [5] }],
      ['POST', '/api/v1/rooms', { name: 'x', members: null }],
      ['POST', '/api/v1/rooms', { name: 'x', members: [[]] }],
      ['POST', '/api/v1/rooms', ['x']],
      ['POST', '/api/v1/rooms', 'x'],
      ['POST', `/api/v1/rooms/${room.id}/messages`, { body: ['x'], client_msg_id: 'c1' }],
      ['POST', `/api/v1/rooms/${room.id}/messages`, { body: 'x', client_msg_id: { id: 1 } }],
      ['POST', `/api/v1/rooms/${room.id}/messages`, { body: null, client_msg_id: 'c2' }],
      ['POST', `/api/v1/rooms/${room.id}/messages`, { body: 'x', client_msg_id: 'c3', deliver_at: 12345 }],
      ['POST', `/api/v1/rooms/${room.id}/messages`, { body: 'x', client_msg_id: 'c4', deliver_at: 'tomorrow' }],
      ['POST', `/api/v1/rooms/${room.id}/members`, { address: ['0x'] }],
      ['POST', '/api/v1/dms', { address: 42 }],
      ['PATCH', '/api/v1/me', { display_name: 42 }],
      ['PATCH', '/api/v1/me', []],
    ];
    for (const [method, p, json] of cases) {
      const res = await http(ctx.url, method, p, { token: owner.token, json });
      assertError(res, 400, 'invalid_request', `${method} ${p} ${JSON.stringify(json)}`);
    }
  });

  it('an over-long client_msg_id (beyond 128 bytes) is refused (400 invalid_request or 413 payload_too_large)', async () => {
    const res = await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, { token: owner.token, json: { body: 'x', client_msg_id: 'c'.repeat(300) } });
    if (res.status === 413) assertError(res, 413, 'payload_too_large');
    else assertError(res, 400, 'invalid_request');
    const s = await connect(ctx.url, owner.token);
    const ack = await send(s, room.id, 'x', { client_msg_id: 'c'.repeat(300) });
    assert.equal(ack.ok, false, JSON.stringify(ack));
    assert.ok(['invalid_request', 'payload_too_large'].includes(ack.error?.code), JSON.stringify(ack));
    s.close();
  });

  it('request bodies are strict: unknown fields → 400 invalid_request (docs §1.1)', async () => {
    const cases = [
      ['POST', '/api/v1/rooms', { name: 'x', members: [], topic: 'extra' }],
      ['POST', `/api/v1/rooms/${room.id}/messages`, { body: 'x', client_msg_id: cmid(), html: true }],
      ['POST', `/api/v1/rooms/${room.id}/members`, { address: owner.address, role: 'admin' }],
      ['POST', '/api/v1/dms', { address: newWallet().address, name: 'x' }],
      ['PATCH', '/api/v1/me', { display_name: 'x', admin: true }],
    ];
    for (const [method, p, json] of cases) {
      assertError(await http(ctx.url, method, p, { token: owner.token, json }), 400, 'invalid_request', `${method} ${p} ${JSON.stringify(json)}`);
    }
  });

  it('empty or whitespace-only message bodies → 400 invalid_request', async () => {
    for (const body of ['', '   ', '\n\t ']) {
      const res = await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, { token: owner.token, json: { body, client_msg_id: cmid() } });
      assertError(res, 400, 'invalid_request', JSON.stringify(body));
    }
  });

  it('known path with a wrong method → 405 method_not_allowed', async () => {
    for (const [method, p] of [
      ['DELETE', '/api/v1/me'],
      ['PUT', '/api/v1/rooms'],
      ['POST', '/api/v1/auth/nonce'],
      ['GET', '/api/v1/auth/verify'],
      ['POST', '/healthz'],
    ]) {
      assertError(await http(ctx.url, method, p, { token: owner.token }), 405, 'method_not_allowed', `${method} ${p}`);
    }
  });

  it('a chunked body without Content-Length → 411 length_required', async () => {
    const res = await rawRequest(ctx.url, 'POST', '/api/v1/rooms', {
      authorization: `Bearer ${owner.token}`,
      'content-type': 'application/json',
      'transfer-encoding': 'chunked',
    }, ['{"name":', '"chunked","members":[]}']);
    assert.equal(res.status, 411, `${res.status} ${res.text}`);
    assert.equal(JSON.parse(res.text).error.code, 'length_required', res.text);
  });

  it('unknown routes → 404 not_found', async () => {
    for (const [method, p] of [
      ['GET', '/api/v1/nope'],
      ['GET', '/api/v2/me'],
      ['POST', '/api/v1/rooms/x/y/z'],
      ['GET', '/api/v1/../../etc/passwd'],
    ]) {
      const res = await http(ctx.url, method, p, { token: owner.token });
      assertError(res, 404, 'not_found', `${method} ${p}`);
    }
  });

  it('odd room ids → 404 room_not_found, never a crash', async () => {
    for (const id of ['%00', '..%2F..%2Fetc', "1' OR '1'='1", 'x'.repeat(2000), '%F0%9F%92%A9', '-1', '0']) {
      const res = await api.get(ctx.url, `/api/v1/rooms/${id}`, { token: owner.token });
      assert.ok([404, 400].includes(res.status), `GET /api/v1/rooms/${id.slice(0, 40)}: ${show(res)}`);
      if (res.status === 404) assertError(res, 404, 'room_not_found', id.slice(0, 40));
      else assertError(res, 400, 'invalid_request', id.slice(0, 40));
    }
  });

  it('non-member access to every room endpoint → 403 not_member', async () => {
    const other = await newUser(ctx.url);
    const t = other.token;
    assertError(await api.get(ctx.url, `/api/v1/rooms/${room.id}`, { token: t }), 403, 'not_member', 'get room');
    assertError(await api.get(ctx.url, `/api/v1/rooms/${room.id}/messages`, { token: t }), 403, 'not_member', 'history');
    assertError(await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, { token: t, json: { body: 'x', client_msg_id: cmid() } }), 403, 'not_member', 'send');
    assertError(await api.post(ctx.url, `/api/v1/rooms/${room.id}/members`, { token: t, json: { address: other.address } }), 403, 'not_member', 'add self');
    const del = await api.delete(ctx.url, `/api/v1/rooms/${room.id}/members/${owner.address}`, { token: t });
    assert.equal(del.status, 403, show(del));
  });

  it('garbage SIWE text → 400 siwe_malformed; garbage tokens → 401', async () => {
    const w = newWallet();
    const sig = await w.signMessage('x');
    const info = await getNonce(ctx.url);
    const good = siweText(info, w.address);
    for (const text of [
      'hello',
      '',
      '\u0000\u0001binary\uFFFF',
      good.replace('wants you to sign in with your Ethereum account:', 'wants your money:'),
      good.replace(w.address, '0xnotanaddress'),
      good.replace(/Issued At: .*/, 'Issued At: yesterday'),
      good.replace('Version: 1', 'Version: 2'),
      good + '\nExtra: field',
      good.split('\n').reverse().join('\n'),
    ]) {
      const res = await verify(ctx.url, text, sig);
      assertError(res, 400, 'siwe_malformed', JSON.stringify(text.slice(0, 80)));
    }
    for (const header of ['Bearer', 'Bearer ', 'Basic abc', 'bearer', 'Token xyz', 'Bearer a b c']) {
      const res = await http(ctx.url, 'GET', '/api/v1/me', { headers: { authorization: header } });
      assert.equal(res.status, 401, `Authorization: ${JSON.stringify(header)} → ${show(res)}`);
      assert.ok(['missing_token', 'invalid_token'].includes(res.json?.error?.code), `Authorization: ${JSON.stringify(header)} → ${show(res)}`);
    }
  });
});

/** A request written by hand (node:http), e.g. with a chunked body. */
function rawRequest(base, method, p, headers, chunks) {
  return new Promise((resolve, reject) => {
    const req = nodeHttp.request(base + p, { method, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
    });
    req.setTimeout(10_000, () => req.destroy(new Error('raw request timed out')));
    req.on('error', reject);
    for (const c of chunks) req.write(c);
    req.end();
  });
}

describe('Socket.IO', () => {
  it('unknown fields in message:send → invalid_request; sync ignores unknown top-level fields', async () => {
    const s = await connect(ctx.url, owner.token);
    assertAckError(await emitAck(s, 'message:send', { room_id: room.id, body: 'x', client_msg_id: cmid(), extra: 1 }), 'invalid_request', 'unknown field');
    assertAckError(await emitAck(s, 'message:send', { room_id: room.id, body: '   ', client_msg_id: cmid() }), 'invalid_request', 'whitespace body');
    assertAckError(await emitAck(s, 'message:send', { room_id: '', body: 'x', client_msg_id: cmid() }), 'invalid_request', 'empty room_id');
    assertAckError(await emitAck(s, 'message:send', { room_id: room.id, body: 'x', client_msg_id: '' }), 'invalid_request', 'empty client_msg_id');
    const ok = await emitAck(s, 'sync', { cursors: { [room.id]: seeded.length }, client: 'test', v: 2 });
    assert.equal(ok.ok, true, JSON.stringify(ok));
    s.close();
  });

  it('malformed event payloads are answered with invalid_request and the socket keeps working', async () => {
    const s = await connect(ctx.url, owner.token);
    const bad = [
      ['message:send', null],
      ['message:send', 'hello'],
      ['message:send', 42],
      ['message:send', [room.id, 'body']],
      ['message:send', {}],
      ['message:send', { room_id: room.id, body: 'x' }],
      ['message:send', { room_id: room.id, client_msg_id: 'c' }],
      ['message:send', { body: 'x', client_msg_id: 'c' }],
      ['message:send', { room_id: 5, body: 'x', client_msg_id: 'c' }],
      ['message:send', { room_id: room.id, body: 5, client_msg_id: 'c' }],
      ['message:send', { room_id: room.id, body: 'x', client_msg_id: 5 }],
      ['message:send', { room_id: room.id, body: { text: 'x' }, client_msg_id: 'c' }],
      ['message:send', { room_id: room.id, body: 'x', client_msg_id: 'c', deliver_at: 'soon' }],
      ['sync', null],
      ['sync', { cursors: { [room.id]: 'x' } }],
      ['typing', { room_id: room.id }],
      ['typing', { room_id: room.id, active: 1 }],
      ['read', { room_id: room.id, seq: 'x' }],
      ['read', { room_id: room.id, seq: 1.5 }],
      ['read', null],
    ];
    for (const [event, payload] of bad) {
      const ack = await emitAck(s, event, payload);
      assertAckError(ack, 'invalid_request', `${event} ${JSON.stringify(payload)?.slice(0, 80)}`);
    }
    assert.ok(s.connected, 'the socket was closed by bad input');

    // Events the server does not know, binary payloads, and extra arguments do not kill it.
    s.emit('no-such-event', { x: 1 });
    s.emit('message:send'); // no payload, no ack
    s.emit('message:send', Buffer.from([1, 2, 3]), () => {});
    const ok = await sendOk(s, room.id, 'after the garbage');
    assert.equal(ok.seq, seeded.length + 1, 'garbage consumed seqs');
    await waitFor(s, 'message', (m) => m.id === ok.id);
    s.close();
  });

  it('unknown rooms and foreign rooms on the socket', async () => {
    const other = await newUser(ctx.url);
    const s = await connect(ctx.url, other.token);
    assertAckError(await send(s, 'no-such-room', 'x'), 'room_not_found');
    assertAckError(await send(s, room.id, 'x'), 'not_member');
    assertAckError(await emitAck(s, 'typing', { room_id: room.id, active: true }), 'not_member');
    assertAckError(await emitAck(s, 'read', { room_id: room.id, seq: 1 }), 'not_member');
    const sync = await emitAck(s, 'sync', { cursors: { [room.id]: 0, 'no-such-room': 0 } });
    assert.equal(sync.ok, true, JSON.stringify(sync));
    assert.deepEqual(sync.messages, [], 'sync leaked messages of a foreign room');
    s.close();
  });

  it('connect with odd auth payloads is refused cleanly', async () => {
    for (const auth of [{ token: 42 }, { token: null }, { token: '' }, { tok: 'x' }, { token: 'x'.repeat(5000) }]) {
      const err = await connectRefused(ctx.url, undefined, { auth });
      const code = err.data?.error?.code;
      assert.ok(['missing_token', 'invalid_token'].includes(code) && isError(err.data, code), `auth ${JSON.stringify(auth).slice(0, 60)}: ${JSON.stringify(err.data)}`);
    }
  });
});

describe('afterwards', () => {
  it('the server is healthy and the seeded data intact', async () => {
    assert.equal((await api.get(ctx.url, '/healthz')).status, 200);
    const ready = await api.get(ctx.url, '/readyz');
    assert.equal(ready.status, 200, show(ready));
    assert.equal(ready.json.status, 'ready');
    const hist = await history(ctx.url, owner.token, room.id);
    for (const m of seeded) assert.deepEqual(hist.find((x) => x.id === m.id), m);
    assert.deepEqual(hist.map((m) => m.seq), Array.from({ length: hist.length }, (_, i) => i + 1));
    assert.deepEqual(hist.map((m) => m.body), [...seeded.map((m) => m.body), 'after the garbage']);
    const me = await api.get(ctx.url, '/api/v1/me', { token: owner.token });
    assert.equal(me.status, 200, show(me));
    const u = await newUser(ctx.url);
    const r = await createRoom(ctx.url, u.token, 'fresh', [owner.address]);
    const s = await connect(ctx.url, owner.token);
    const m = await sendOk(s, r.id, 'still alive');
    assert.equal(m.seq, 1);
    s.close();
    assert.ok(ctx.server.running, 'the server process died');
  });
});
