// Scheduled messages (deliver_at): accepted now, get their seq and go out when due.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, api, newUser, connect, waitFor, events, send, sendOk, createRoom, history, cmid,
  assertError, assertMessage, show, RFC3339, EIP55,
} from './lib/harness.js';

const ctx = useServer({ before, after });

const inMs = (ms) => new Date(Date.now() + ms).toISOString();
const DUE_BOUND_MS = 15_000; // failure bound for a delivery due ~2 s ahead

function assertScheduled(s, expect) {
  assert.ok(s && typeof s === 'object', `scheduled: ${JSON.stringify(s)}`);
  assert.equal(typeof s.id, 'string');
  assert.match(s.sender, EIP55);
  assert.match(s.deliver_at, RFC3339);
  assert.match(s.created_at, RFC3339);
  for (const [k, v] of Object.entries(expect)) assert.deepEqual(s[k], v, `scheduled.${k}: ${JSON.stringify(s)}`);
  assert.equal('seq' in s, false, 'a scheduled message has no seq yet');
}

describe('scheduled messages', () => {
  it('socket: deliver_at ~2 s ahead → scheduled ack; later a `message` with the next seq at that time', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'later', [b.address]);
    const sa = await connect(ctx.url, a.token);
    const sb = await connect(ctx.url, b.token);
    const deliverAt = inMs(2000);
    const id = cmid();
    const ack = await send(sa, room.id, 'from the past', { client_msg_id: id, deliver_at: deliverAt });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(ack.message, undefined, 'a scheduled send acks with `scheduled`, not `message`');
    assertScheduled(ack.scheduled, { room_id: room.id, sender: a.address, body: 'from the past', client_msg_id: id });
    assert.equal(Date.parse(ack.scheduled.deliver_at), Date.parse(deliverAt));

    // A normal message sent meanwhile takes seq 1: the scheduled one gets its seq on delivery.
    const now = await sendOk(sa, room.id, 'right now');
    assert.equal(now.seq, 1);
    let hist = await history(ctx.url, a.token, room.id);
    assert.deepEqual(hist.map((m) => m.body), ['right now'], 'the scheduled message is visible before it is due');

    const delivered = await waitFor(sb, 'message', (m) => m.client_msg_id === id, DUE_BOUND_MS);
    const arrivedAt = Date.now();
    assertMessage(delivered, { room_id: room.id, seq: 2, sender: a.address, body: 'from the past', client_msg_id: id });
    assert.ok(arrivedAt >= Date.parse(deliverAt) - 50, `delivered ${Date.parse(deliverAt) - arrivedAt} ms early`);
    assert.ok(Date.parse(delivered.created_at) >= Date.parse(deliverAt) - 1000, `created_at ${delivered.created_at} is before deliver_at ${deliverAt}`);
    const own = await waitFor(sa, 'message', (m) => m.client_msg_id === id);
    assert.deepEqual(own, delivered);

    hist = await history(ctx.url, b.token, room.id);
    assert.deepEqual(hist.map((m) => [m.seq, m.body]), [[1, 'right now'], [2, 'from the past']]);

    // Delivered once: barrier through a later message.
    const later = await sendOk(sa, room.id, 'after');
    assert.equal(later.seq, 3);
    await waitFor(sb, 'message', (m) => m.id === later.id);
    assert.equal(events(sb, 'message', (m) => m.client_msg_id === id).length, 1);
    sa.close();
    sb.close();
  });

  it('idempotence spans both states: a resend while pending returns the scheduled entry, after delivery the message (same id)', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'idem-later', []);
    const sa = await connect(ctx.url, a.token);
    const id = cmid();
    const first = await send(sa, room.id, 'once, later', { client_msg_id: id, deliver_at: inMs(2000) });
    assert.equal(first.ok, true, JSON.stringify(first));
    const pending = await send(sa, room.id, 'once, later', { client_msg_id: id, deliver_at: inMs(60_000) });
    assert.deepEqual(pending, first, 'resend while pending (deliver_at is not compared)');
    let res = await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, { token: a.token, json: { body: 'once, later', client_msg_id: id } });
    assert.equal(res.status, 202, `REST resend while pending: ${show(res)}`);
    assert.deepEqual(res.json.scheduled, first.scheduled);
    const conflict = await send(sa, room.id, 'other text', { client_msg_id: id, deliver_at: inMs(2000) });
    assert.equal(conflict.ok, false, JSON.stringify(conflict));
    assert.equal(conflict.error.code, 'idempotency_conflict');

    const delivered = await waitFor(sa, 'message', (m) => m.client_msg_id === id, DUE_BOUND_MS);
    assert.equal(delivered.id, first.scheduled.id, 'the delivered message keeps the scheduled entry\'s id');
    const after = await send(sa, room.id, 'once, later', { client_msg_id: id, deliver_at: inMs(2000) });
    assert.deepEqual(after, { ok: true, message: delivered });
    res = await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, { token: a.token, json: { body: 'once, later', client_msg_id: id } });
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(res.json, delivered);
    const hist = await history(ctx.url, a.token, room.id);
    assert.deepEqual(hist.map((m) => m.id), [delivered.id]);
    sa.close();
  });

  it('deliver_at in the past sends at once; beyond 30 days ahead → invalid_request', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'edges', []);
    const sa = await connect(ctx.url, a.token);
    const past = await send(sa, room.id, 'already due', { deliver_at: inMs(-60_000) });
    assert.equal(past.ok, true, JSON.stringify(past));
    assertMessage(past.message, { seq: 1, body: 'already due' });
    const res = await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, {
      token: a.token,
      json: { body: 'also due', client_msg_id: cmid(), deliver_at: '2000-01-01T00:00:00+02:00' },
    });
    assert.equal(res.status, 201, show(res));
    assert.equal(res.json.seq, 2);
    const far = await send(sa, room.id, 'too late', { deliver_at: inMs(31 * 24 * 3600 * 1000) });
    assert.equal(far.ok, false, JSON.stringify(far));
    assert.equal(far.error.code, 'invalid_request', JSON.stringify(far));
    sa.close();
  });

  it('REST: deliver_at → 202 {"scheduled": {...}}, then delivered', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'rest-later', []);
    const sa = await connect(ctx.url, a.token);
    const id = cmid();
    const deliverAt = inMs(2000);
    const res = await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, {
      token: a.token,
      json: { body: 'scripted later', client_msg_id: id, deliver_at: deliverAt },
    });
    assert.equal(res.status, 202, show(res));
    assertScheduled(res.json.scheduled, { room_id: room.id, sender: a.address, body: 'scripted later', client_msg_id: id });
    const m = await waitFor(sa, 'message', (x) => x.client_msg_id === id, DUE_BOUND_MS);
    assertMessage(m, { seq: 1, body: 'scripted later' });
    sa.close();
  });

  it('several scheduled messages go out in deliver_at order', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'order', []);
    const sa = await connect(ctx.url, a.token);
    const base = Date.now();
    // Submitted in reverse order of their due times.
    for (const [i, ms] of [[3, 3000], [2, 2500], [1, 2000]]) {
      const ack = await send(sa, room.id, `due-${i}`, { deliver_at: new Date(base + ms).toISOString() });
      assert.equal(ack.ok, true, JSON.stringify(ack));
    }
    const got = [];
    for (const i of [1, 2, 3]) got.push(await waitFor(sa, 'message', (m) => m.body === `due-${i}`, DUE_BOUND_MS));
    assert.deepEqual(got.map((m) => [m.body, m.seq]), [['due-1', 1], ['due-2', 2], ['due-3', 3]]);
    sa.close();
  });

  it('non-members cannot schedule; invalid deliver_at is refused', async () => {
    const a = await newUser(ctx.url);
    const other = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'closed', []);
    const so = await connect(ctx.url, other.token);
    const ack = await send(so, room.id, 'sneaky', { deliver_at: inMs(2000) });
    assert.equal(ack.ok, false, JSON.stringify(ack));
    assert.equal(ack.error.code, 'not_member', JSON.stringify(ack));
    const bad = await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, {
      token: a.token,
      json: { body: 'x', client_msg_id: cmid(), deliver_at: 'next tuesday' },
    });
    assertError(bad, 400, 'invalid_request');
    so.close();
  });
});
