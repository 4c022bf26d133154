// Sending and receiving: live fan-out, idempotency, ordering under concurrency, history paging,
// REST sending, the polling transport.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, api, newUser, connect, connectRefused, isError, waitFor, waitForCount, events, emitAck, send, sendOk,
  createRoom, restSend, history, cmid, assertError, assertAckError, assertMessage, show,
} from './lib/harness.js';

// Generous rate limits: this file measures ordering, not throttling.
const ctx = useServer({ before, after }, {
  env: { COOLCHAT__LIMITS__MESSAGES_PER_SECOND: '10000', COOLCHAT__LIMITS__MESSAGE_BURST: '10000' },
});

const msgsPath = (id) => `/api/v1/rooms/${encodeURIComponent(id)}/messages`;

describe('live messages', () => {
  it('send and receive both ways; every socket in the room, the sender\'s own included, gets `message`', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'chat', [b.address]);
    const a1 = await connect(ctx.url, a.token);
    const a2 = await connect(ctx.url, a.token); // second tab
    const b1 = await connect(ctx.url, b.token);

    const id1 = cmid();
    const ack = await send(a1, room.id, 'hello Bob', { client_msg_id: id1 });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assertMessage(ack.message, { room_id: room.id, seq: 1, sender: a.address, body: 'hello Bob', client_msg_id: id1 });
    for (const s of [a1, a2, b1]) {
      const m = await waitFor(s, 'message', (x) => x.id === ack.message.id);
      assert.deepEqual(m, ack.message, 'the live event equals the acked message');
    }

    const back = await sendOk(b1, room.id, 'hi Alice');
    assertMessage(back, { room_id: room.id, seq: 2, sender: b.address, body: 'hi Alice' });
    for (const s of [a1, a2, b1]) await waitFor(s, 'message', (x) => x.id === back.id);

    for (const s of [a1, a2, b1]) s.close();
  });

  it('bodies round-trip exactly (Unicode, newlines, JSON-looking text, HTML)', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'unicode', [b.address]);
    const sa = await connect(ctx.url, a.token);
    const sb = await connect(ctx.url, b.token);
    const bodies = [
      'Zoë 👩‍👩‍👧‍👦 日本語 العربية',
      'line one\nline two\r\n\ttabbed',
      '{"ok":false,"error":{"code":"fake"}}',
      '<script>alert(1)</script> & "quotes" \\ backslash',
      'separators \u2028 and \u2029, zero-width \u200b joiner',
    ];
    for (const body of bodies) {
      const m = await sendOk(sa, room.id, body);
      assert.equal(m.body, body);
      const got = await waitFor(sb, 'message', (x) => x.id === m.id);
      assert.equal(got.body, body);
    }
    const hist = await history(ctx.url, b.token, room.id);
    assert.deepEqual(hist.map((m) => m.body), bodies);
    sa.close();
    sb.close();
  });

  it('non-members cannot send; unknown rooms are refused', async () => {
    const a = await newUser(ctx.url);
    const outsider = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'private', []);
    const so = await connect(ctx.url, outsider.token);
    assertAckError(await send(so, room.id, 'hi'), 'not_member');
    assertAckError(await send(so, 'no-such-room', 'hi'), 'room_not_found');
    const hist = await history(ctx.url, a.token, room.id);
    assert.equal(hist.length, 0);
    so.close();
  });
});

describe('idempotency', () => {
  it('re-sending a client_msg_id returns the original (same id and seq), emits nothing, consumes no seq', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'idem', [b.address]);
    const sa = await connect(ctx.url, a.token);
    const sb = await connect(ctx.url, b.token);
    const id = cmid();
    const first = await sendOk(sa, room.id, 'once', { client_msg_id: id });
    await waitFor(sb, 'message', (m) => m.id === first.id);

    const again = await send(sa, room.id, 'once', { client_msg_id: id });
    assert.equal(again.ok, true, JSON.stringify(again));
    assert.deepEqual(again.message, first);

    // From another tab of the same user too.
    const sa2 = await connect(ctx.url, a.token);
    const third = await send(sa2, room.id, 'once', { client_msg_id: id });
    assert.deepEqual(third.message, first);

    // Barrier: the next message is seq 2 and, once B has it, B has seen the first exactly once.
    const next = await sendOk(sa, room.id, 'next');
    assert.equal(next.seq, first.seq + 1, 'a resend consumed a seq');
    await waitFor(sb, 'message', (m) => m.id === next.id);
    assert.equal(events(sb, 'message', (m) => m.client_msg_id === id).length, 1, 'the resend was emitted again');
    assert.equal(events(sa, 'message', (m) => m.client_msg_id === id).length, 1, 'the resend was emitted again to the sender');

    const hist = await history(ctx.url, a.token, room.id);
    assert.deepEqual(hist.map((m) => [m.seq, m.body]), [[1, 'once'], [2, 'next']]);
    for (const s of [sa, sa2, sb]) s.close();
  });

  it('the same client_msg_id with a different body → idempotency_conflict', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'conflict', []);
    const sa = await connect(ctx.url, a.token);
    const id = cmid();
    await sendOk(sa, room.id, 'original', { client_msg_id: id });
    assertAckError(await send(sa, room.id, 'changed', { client_msg_id: id }), 'idempotency_conflict');
    const hist = await history(ctx.url, a.token, room.id);
    assert.deepEqual(hist.map((m) => m.body), ['original']);
    sa.close();
  });

  it('client_msg_id is per sender: another user may use the same one', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'per-sender', [b.address]);
    const sa = await connect(ctx.url, a.token);
    const sb = await connect(ctx.url, b.token);
    const id = 'shared-id-1';
    const ma = await sendOk(sa, room.id, 'same text', { client_msg_id: id });
    const mb = await sendOk(sb, room.id, 'same text', { client_msg_id: id });
    assert.notEqual(ma.id, mb.id);
    assert.deepEqual([ma.seq, mb.seq], [1, 2]);
    sa.close();
    sb.close();
  });

  it('concurrent duplicates of one client_msg_id produce one message', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'race', []);
    const socks = await Promise.all([1, 2, 3].map(() => connect(ctx.url, a.token)));
    const id = cmid();
    const acks = await Promise.all(
      socks.flatMap((s) => [send(s, room.id, 'racy', { client_msg_id: id }), send(s, room.id, 'racy', { client_msg_id: id })]),
    );
    for (const ack of acks) assert.equal(ack.ok, true, JSON.stringify(ack));
    const ids = new Set(acks.map((x) => x.message.id));
    assert.equal(ids.size, 1, `duplicates created: ${JSON.stringify(acks.map((x) => x.message))}`);
    const hist = await history(ctx.url, a.token, room.id);
    assert.equal(hist.length, 1);
    for (const s of socks) s.close();
  });
});

describe('ordering under concurrent senders', () => {
  it('3 users × 50 messages at once: every receiver sees seqs 1..150 exactly once, each sender\'s messages in send order', async () => {
    const PER = 50;
    const users = await Promise.all([1, 2, 3].map(() => newUser(ctx.url)));
    const watcher = await newUser(ctx.url);
    const room = await createRoom(ctx.url, users[0].token, 'busy', [...users.slice(1), watcher].map((u) => u.address));
    const senders = await Promise.all(users.map((u) => connect(ctx.url, u.token)));
    const receivers = [...senders, await connect(ctx.url, watcher.token), await connect(ctx.url, users[1].token)];

    // Each sender sends its messages one after the other (waiting for each ack); the three
    // senders run at the same time.
    const acked = await Promise.all(
      senders.map(async (s, u) => {
        const out = [];
        for (let i = 0; i < PER; i++) out.push(await sendOk(s, room.id, `u${u}-m${i}`));
        return out;
      }),
    );

    const all = acked.flat();
    assert.deepEqual(all.map((m) => m.seq).sort((x, y) => x - y), Array.from({ length: 3 * PER }, (_, i) => i + 1), 'acked seqs are not exactly 1..150');
    for (const [u, list] of acked.entries()) {
      const seqs = list.map((m) => m.seq);
      assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), `sender ${u}: seqs not increasing in send order`);
    }
    const byId = new Map(all.map((m) => [m.id, m]));

    for (const [r, s] of receivers.entries()) {
      const got = await waitForCount(s, 'message', 3 * PER, (m) => m.room_id === room.id, 20_000);
      const seqs = got.map((m) => m.seq);
      assert.equal(new Set(seqs).size, seqs.length, `receiver ${r}: duplicate seqs`);
      assert.deepEqual([...seqs].sort((x, y) => x - y), Array.from({ length: 3 * PER }, (_, i) => i + 1), `receiver ${r}: seqs not exactly 1..150`);
      for (const m of got) assert.deepEqual(m, byId.get(m.id), `receiver ${r}: event differs from ack`);
      for (let u = 0; u < 3; u++) {
        const mine = got.filter((m) => m.sender === users[u].address).map((m) => m.body);
        assert.deepEqual(mine, Array.from({ length: PER }, (_, i) => `u${u}-m${i}`), `receiver ${r}: sender ${u}'s messages out of order`);
      }
    }
    // Barrier, then nothing extra arrived.
    const last = await sendOk(senders[0], room.id, 'end');
    for (const s of receivers) await waitFor(s, 'message', (m) => m.id === last.id);
    for (const [r, s] of receivers.entries()) {
      assert.equal(events(s, 'message', (m) => m.room_id === room.id).length, 3 * PER + 1, `receiver ${r}: extra events`);
    }

    const hist = await history(ctx.url, watcher.token, room.id);
    assert.deepEqual(hist.map((m) => m.seq), Array.from({ length: 3 * PER + 1 }, (_, i) => i + 1));
    for (const m of hist.slice(0, -1)) assert.deepEqual(m, byId.get(m.id), 'history differs from ack');
    for (const s of receivers) s.close();
  });
});

describe('history', () => {
  let owner;
  let room;
  const N = 25;
  before(async () => {
    owner = await newUser(ctx.url);
    room = await createRoom(ctx.url, owner.token, 'history', []);
    for (let i = 1; i <= N; i++) await restSend(ctx.url, owner.token, room.id, `h${i}`);
  });
  const page = (q) => api.get(ctx.url, `${msgsPath(room.id)}?${q}`, { token: owner.token });
  const seqs = (res) => res.json.messages.map((m) => m.seq);
  const range = (a, b) => {
    const out = [];
    if (a <= b) for (let i = a; i <= b; i++) out.push(i);
    else for (let i = a; i >= b; i--) out.push(i);
    return out;
  };

  it('after_seq pages ascend and has_more is exact', async () => {
    let res = await page('after_seq=0&limit=10');
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(seqs(res), range(1, 10));
    assert.equal(res.json.has_more, true);
    for (const m of res.json.messages) assertMessage(m, { room_id: room.id, sender: owner.address });
    res = await page('after_seq=10&limit=10');
    assert.deepEqual(seqs(res), range(11, 20));
    assert.equal(res.json.has_more, true);
    res = await page('after_seq=20&limit=10');
    assert.deepEqual(seqs(res), range(21, 25));
    assert.equal(res.json.has_more, false);
    res = await page('after_seq=20&limit=5');
    assert.deepEqual(seqs(res), range(21, 25));
    assert.equal(res.json.has_more, false, 'has_more must be false when the page ends exactly at the last message');
    res = await page('after_seq=25&limit=10');
    assert.deepEqual(seqs(res), []);
    assert.equal(res.json.has_more, false);
    res = await page('after_seq=1000');
    assert.deepEqual(seqs(res), []);
  });

  it('before_seq pages descend and has_more is exact', async () => {
    let res = await page('before_seq=26&limit=10');
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(seqs(res), range(25, 16));
    assert.equal(res.json.has_more, true);
    res = await page('before_seq=16&limit=10');
    assert.deepEqual(seqs(res), range(15, 6));
    assert.equal(res.json.has_more, true);
    res = await page('before_seq=6&limit=10');
    assert.deepEqual(seqs(res), range(5, 1));
    assert.equal(res.json.has_more, false);
    res = await page('before_seq=6&limit=5');
    assert.deepEqual(seqs(res), range(5, 1));
    assert.equal(res.json.has_more, false, 'has_more must be false when the page ends exactly at seq 1');
    res = await page('before_seq=1');
    assert.deepEqual(seqs(res), []);
    assert.equal(res.json.has_more, false);
  });

  it('neither → the latest page, descending; the default limit is 50', async () => {
    let res = await page('');
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(seqs(res), range(25, 1));
    assert.equal(res.json.has_more, false);
    res = await page('limit=5');
    assert.deepEqual(seqs(res), range(25, 21));
    assert.equal(res.json.has_more, true);
    res = await api.get(ctx.url, msgsPath(room.id), { token: owner.token });
    assert.deepEqual(seqs(res), range(25, 1));
  });

  it('both cursors, or non-numeric values → 400 invalid_request', async () => {
    assertError(await page('after_seq=1&before_seq=5'), 400, 'invalid_request', 'both');
    assertError(await page('after_seq=abc'), 400, 'invalid_request', 'after_seq=abc');
    assertError(await page('before_seq=x1'), 400, 'invalid_request', 'before_seq=x1');
    assertError(await page('limit=ten'), 400, 'invalid_request', 'limit=ten');
    assertError(await page('limit=0'), 400, 'invalid_request', 'limit=0 (docs: L < 1 is an error)');
    assertError(await page('after_seq=1&color=blue'), 400, 'invalid_request', 'unknown query parameter (docs §3.7)');
  });

  it('a negative after_seq counts as 0 (docs §3.7)', async () => {
    const res = await page('after_seq=-5&limit=3');
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(seqs(res), [1, 2, 3]);
  });

  it('non-members get 403 not_member, unknown rooms 404 room_not_found', async () => {
    const other = await newUser(ctx.url);
    assertError(await api.get(ctx.url, msgsPath(room.id), { token: other.token }), 403, 'not_member');
    assertError(await api.get(ctx.url, msgsPath('no-such-room'), { token: owner.token }), 404, 'room_not_found');
    assertError(await api.get(ctx.url, msgsPath(room.id)), 401, 'missing_token');
  });

  it('limit is clamped to 200', async () => {
    const u = await newUser(ctx.url);
    const big = await createRoom(ctx.url, u.token, 'big', []);
    const total = 210;
    for (let i = 0; i < total; i += 30) {
      await Promise.all(Array.from({ length: Math.min(30, total - i) }, (_, k) => restSend(ctx.url, u.token, big.id, `b${i + k}`)));
    }
    let res = await api.get(ctx.url, `${msgsPath(big.id)}?after_seq=0&limit=1000`, { token: u.token });
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(res.json.messages.map((m) => m.seq), range(1, 200));
    assert.equal(res.json.has_more, true);
    res = await api.get(ctx.url, `${msgsPath(big.id)}?limit=1000`, { token: u.token });
    assert.deepEqual(res.json.messages.map((m) => m.seq), range(210, 11));
    res = await api.get(ctx.url, msgsPath(big.id), { token: u.token });
    assert.deepEqual(res.json.messages.map((m) => m.seq), range(210, 161), 'default limit is 50');
    assert.equal(res.json.has_more, true);
  });
});

describe('REST send', () => {
  it('201 with the message, live `message` to sockets; repeat → 200 original; other body → 409', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'rest', [b.address]);
    const sb = await connect(ctx.url, b.token);
    const id = cmid();
    let res = await api.post(ctx.url, msgsPath(room.id), { token: a.token, json: { body: 'from a script', client_msg_id: id } });
    assert.equal(res.status, 201, show(res));
    assertMessage(res.json, { room_id: room.id, seq: 1, sender: a.address, body: 'from a script', client_msg_id: id });
    const original = res.json;
    const live = await waitFor(sb, 'message', (m) => m.id === original.id);
    assert.deepEqual(live, original);

    res = await api.post(ctx.url, msgsPath(room.id), { token: a.token, json: { body: 'from a script', client_msg_id: id } });
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(res.json, original);

    res = await api.post(ctx.url, msgsPath(room.id), { token: a.token, json: { body: 'edited', client_msg_id: id } });
    assertError(res, 409, 'idempotency_conflict');

    // The socket path shares the idempotency key space with REST.
    const sa = await connect(ctx.url, a.token);
    const ack = await send(sa, room.id, 'from a script', { client_msg_id: id });
    assert.deepEqual(ack.message, original);

    const next = await sendOk(sa, room.id, 'next');
    assert.equal(next.seq, 2);
    await waitFor(sb, 'message', (m) => m.id === next.id);
    assert.equal(events(sb, 'message', (m) => m.client_msg_id === id).length, 1);
    sa.close();
    sb.close();
  });

  it('refusals: not_member, room_not_found, invalid_request', async () => {
    const a = await newUser(ctx.url);
    const other = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'rest-refusals', []);
    assertError(await api.post(ctx.url, msgsPath(room.id), { token: other.token, json: { body: 'x', client_msg_id: cmid() } }), 403, 'not_member');
    assertError(await api.post(ctx.url, msgsPath('nope'), { token: a.token, json: { body: 'x', client_msg_id: cmid() } }), 404, 'room_not_found');
    assertError(await api.post(ctx.url, msgsPath(room.id), { token: a.token, json: { body: 'x' } }), 400, 'invalid_request', 'no client_msg_id');
    assertError(await api.post(ctx.url, msgsPath(room.id), { token: a.token, json: { client_msg_id: cmid() } }), 400, 'invalid_request', 'no body');
    assertError(await api.post(ctx.url, msgsPath(room.id), { token: a.token, json: { body: 5, client_msg_id: cmid() } }), 400, 'invalid_request', 'numeric body');
    assertError(await api.post(ctx.url, msgsPath(room.id), { token: a.token, json: { body: 'x', client_msg_id: 5 } }), 400, 'invalid_request', 'numeric client_msg_id');
    assertError(await api.post(ctx.url, msgsPath(room.id), { json: { body: 'x', client_msg_id: cmid() } }), 401, 'missing_token');
    assert.equal((await history(ctx.url, a.token, room.id)).length, 0);
  });
});

describe('polling transport', () => {
  it('a client on HTTP long-polling sends and receives', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'polling', [b.address]);
    const pa = await connect(ctx.url, a.token, { transports: ['polling'], upgrade: false });
    const wb = await connect(ctx.url, b.token);
    assert.equal(pa.io.engine.transport.name, 'polling');
    const m1 = await sendOk(pa, room.id, 'over polling');
    await waitFor(wb, 'message', (m) => m.id === m1.id);
    await waitFor(pa, 'message', (m) => m.id === m1.id);
    const m2 = await sendOk(wb, room.id, 'to polling');
    const got = await waitFor(pa, 'message', (m) => m.id === m2.id);
    assert.equal(got.body, 'to polling');
    const ack = await emitAck(pa, 'sync', { cursors: {} });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.deepEqual(ack.messages.filter((m) => m.room_id === room.id).map((m) => m.seq), [1, 2]);
    pa.close();
    wb.close();
  });

  it('a refused token on polling gets the same connect_error data', async () => {
    const err = await connectRefused(ctx.url, 'garbage', { transports: ['polling'] });
    assert.ok(isError(err.data, 'invalid_token'), JSON.stringify(err.data));
  });
});

