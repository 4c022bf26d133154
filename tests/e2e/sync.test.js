// Offline catch-up with `sync`: exactly the missed messages, in order, once, across pages.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, newUser, connect, disconnect, waitFor, emitAck, sendOk, createRoom, restSend, syncAll,
  assertAckError, assertMessage,
} from './lib/harness.js';

const PAGE = 7;
const ctx = useServer({ before, after }, {
  env: {
    COOLCHAT__LIMITS__MAX_SYNC_PAGE: String(PAGE),
    COOLCHAT__LIMITS__MESSAGES_PER_SECOND: '10000',
    COOLCHAT__LIMITS__MESSAGE_BURST: '10000',
  },
});

/** Sorted by room id then seq (plain string order of the ids). */
function byRoomThenSeq(a, b) {
  if (a.room_id !== b.room_id) return a.room_id < b.room_id ? -1 : 1;
  return a.seq - b.seq;
}

describe('sync', () => {
  it('after being offline, paged sync returns exactly the missed messages, in order, once', async () => {
    const a = await newUser(ctx.url); // goes offline
    const b = await newUser(ctx.url);
    const c = await newUser(ctx.url);
    const r1 = await createRoom(ctx.url, b.token, 'r1', [a.address, c.address]);
    const r2 = await createRoom(ctx.url, c.token, 'r2', [a.address, b.address]);
    const sb = await connect(ctx.url, b.token);
    const sc = await connect(ctx.url, c.token);

    // A is online for the first 3 messages of r1 and keeps its cursors from the live events.
    let sa = await connect(ctx.url, a.token);
    const seen = [];
    for (let i = 0; i < 3; i++) seen.push(await sendOk(sb, r1.id, `before-${i}`));
    for (const m of seen) await waitFor(sa, 'message', (x) => x.id === m.id);
    const cursors = { [r1.id]: 3 };
    await disconnect(sa);

    // While A is offline: 30 messages in 2 rooms from 2 senders, plus a room A is added to.
    const missed = [];
    const sends = [];
    for (let i = 0; i < 15; i++) {
      sends.push(sendOk(i % 2 ? sb : sc, r1.id, `r1-${i}`));
      sends.push(sendOk(i % 2 ? sc : sb, r2.id, `r2-${i}`));
    }
    missed.push(...(await Promise.all(sends)));
    const r3 = await createRoom(ctx.url, b.token, 'r3', [a.address]);
    for (let i = 0; i < 4; i++) missed.push(await restSend(ctx.url, b.token, r3.id, `r3-${i}`));
    assert.equal(missed.length, 34);

    sa = await connect(ctx.url, a.token);
    const { messages, pages, cursors: end } = await syncAll(sa, cursors);
    for (const p of pages) {
      assert.ok(p.messages.length <= PAGE, `page of ${p.messages.length} > max_sync_page ${PAGE}`);
      assert.equal(typeof p.has_more, 'boolean');
    }
    assert.ok(pages.length >= Math.ceil(34 / PAGE), `expected paging, got ${pages.length} page(s)`);
    for (const m of messages) assertMessage(m);

    const ids = messages.map((m) => m.id);
    assert.equal(new Set(ids).size, ids.length, 'a message came twice');
    assert.deepEqual([...ids].sort(), missed.map((m) => m.id).sort(), 'not exactly the missed messages');
    assert.deepEqual(messages, [...messages].sort(byRoomThenSeq), 'not ordered by room then seq');
    const expectSeqs = (room, from, to) =>
      assert.deepEqual(messages.filter((m) => m.room_id === room).map((m) => m.seq), Array.from({ length: to - from + 1 }, (_, i) => from + i), `room ${room}`);
    expectSeqs(r1.id, 4, 18);
    expectSeqs(r2.id, 1, 15);
    expectSeqs(r3.id, 1, 4);
    const byId = new Map(missed.map((m) => [m.id, m]));
    for (const m of messages) assert.deepEqual(m, byId.get(m.id), 'synced message differs from the ack');
    assert.deepEqual(end, { [r1.id]: 18, [r2.id]: 15, [r3.id]: 4 });

    // Up to date now: nothing more.
    const again = await emitAck(sa, 'sync', { cursors: end });
    assert.equal(again.ok, true, JSON.stringify(again));
    assert.deepEqual(again.messages, []);
    assert.equal(again.has_more, false);

    // And live delivery resumes with the next seq.
    const live = await sendOk(sb, r1.id, 'back online');
    assert.equal(live.seq, 19);
    await waitFor(sa, 'message', (m) => m.id === live.id);
    for (const s of [sa, sb, sc]) s.close();
  });

  it('rooms missing from the cursors count from 0; an empty cursor map returns everything', async () => {
    const a = await newUser(ctx.url);
    const r1 = await createRoom(ctx.url, a.token, 'x', []);
    const r2 = await createRoom(ctx.url, a.token, 'y', []);
    const sa = await connect(ctx.url, a.token);
    const sent = [];
    for (let i = 0; i < 10; i++) sent.push(await sendOk(sa, i % 2 ? r1.id : r2.id, `m${i}`));

    const all = await syncAll(sa, {});
    assert.deepEqual(all.messages.map((m) => m.id).sort(), sent.map((m) => m.id).sort());
    assert.deepEqual(all.messages, [...all.messages].sort(byRoomThenSeq));

    const part = await syncAll(sa, { [r1.id]: 5 });
    assert.deepEqual(part.messages.filter((m) => m.room_id === r1.id), []);
    assert.deepEqual(part.messages.filter((m) => m.room_id === r2.id).map((m) => m.seq), [1, 2, 3, 4, 5]);

    const mid = await syncAll(sa, { [r1.id]: 2, [r2.id]: 4 });
    assert.deepEqual(mid.messages.map((m) => [m.room_id, m.seq]), [
      ...[[r1.id, 3], [r1.id, 4], [r1.id, 5]],
      [r2.id, 5],
    ].sort((p, q) => byRoomThenSeq({ room_id: p[0], seq: p[1] }, { room_id: q[0], seq: q[1] })));
    sa.close();
  });

  it('cursors are optional, negative cursors count as 0, unknown top-level fields are ignored (docs §4.5)', async () => {
    const a = await newUser(ctx.url);
    const r = await createRoom(ctx.url, a.token, 'opt', []);
    for (let i = 0; i < 3; i++) await restSend(ctx.url, a.token, r.id, `o${i}`);
    const sa = await connect(ctx.url, a.token);
    let ack = await emitAck(sa, 'sync', {});
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.deepEqual(ack.messages.map((m) => m.seq), [1, 2, 3], 'no cursors = from the beginning');
    ack = await emitAck(sa, 'sync', { cursors: { [r.id]: -7 } });
    assert.deepEqual(ack.messages.map((m) => m.seq), [1, 2, 3], 'negative cursor = 0');
    ack = await emitAck(sa, 'sync', { cursors: { [r.id]: 1 }, since: 'yesterday' });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.deepEqual(ack.messages.map((m) => m.seq), [2, 3]);
    ack = await emitAck(sa, 'sync', { cursors: { [r.id]: 99 } });
    assert.deepEqual(ack.messages, [], 'a cursor beyond last_seq returns nothing');
    assert.equal(ack.has_more, false);
    sa.close();
  });

  it('sync only covers the user\'s own rooms', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const theirs = await createRoom(ctx.url, b.token, 'theirs', []);
    await restSend(ctx.url, b.token, theirs.id, 'private');
    const sa = await connect(ctx.url, a.token);
    const res = await syncAll(sa, { [theirs.id]: 0 });
    assert.deepEqual(res.messages.filter((m) => m.room_id === theirs.id), [], 'leaked a message from a room the user is not in');
    sa.close();
  });

  it('malformed sync requests → invalid_request', async () => {
    const a = await newUser(ctx.url);
    const sa = await connect(ctx.url, a.token);
    assertAckError(await emitAck(sa, 'sync', { cursors: [] }), 'invalid_request', 'cursors array');
    assertAckError(await emitAck(sa, 'sync', { cursors: 'x' }), 'invalid_request', 'cursors string');
    assertAckError(await emitAck(sa, 'sync', { cursors: { r: 'five' } }), 'invalid_request', 'cursor string');
    assertAckError(await emitAck(sa, 'sync', 'cursors'), 'invalid_request', 'not an object');
    const ok = await emitAck(sa, 'sync', { cursors: {} });
    assert.equal(ok.ok, true, 'the socket still works');
    sa.close();
  });
});
