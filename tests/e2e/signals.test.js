// Ephemeral signals: typing, read receipts, presence (including two tabs).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, api, newUser, connect, disconnect, waitFor, events, mark, emitAck, sendOk, createRoom,
  restSend, assertAckError,
} from './lib/harness.js';

const ctx = useServer({ before, after });

describe('typing', () => {
  it('other sockets in the room get typing {room_id, address, active}; the sending socket does not', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const outsider = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'typing', [b.address]);
    const a1 = await connect(ctx.url, a.token);
    const a2 = await connect(ctx.url, a.token);
    const b1 = await connect(ctx.url, b.token);
    const o1 = await connect(ctx.url, outsider.token);

    const ack = await emitAck(a1, 'typing', { room_id: room.id, active: true });
    assert.deepEqual(ack, { ok: true });
    const expected = { room_id: room.id, address: a.address, active: true };
    assert.deepEqual(await waitFor(b1, 'typing', (t) => t.active === true), expected);

    assert.deepEqual(await emitAck(a1, 'typing', { room_id: room.id, active: false }), { ok: true });
    assert.deepEqual(await waitFor(b1, 'typing', (t) => t.active === false), { ...expected, active: false });

    // Barrier: a message from a1 reaches a1 and o1 has a round trip of its own; by then any
    // typing echo to a1 or leak to the outsider would have arrived.
    const m = await sendOk(a1, room.id, 'barrier');
    await waitFor(a1, 'message', (x) => x.id === m.id);
    await waitFor(b1, 'message', (x) => x.id === m.id);
    await emitAck(o1, 'sync', { cursors: {} });
    assert.deepEqual(events(a1, 'typing'), [], 'the sending socket got its own typing event');
    assert.deepEqual(events(o1, 'typing'), [], 'a non-member got a typing event');
    assert.equal(events(b1, 'typing').length, 2);
    for (const s of [a1, a2, b1, o1]) s.close();
  });

  it('typing is not sent to any of the typing user\'s own sockets (docs §4.6), only to other members', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'typing-tabs', [b.address]);
    const a1 = await connect(ctx.url, a.token);
    const a2 = await connect(ctx.url, a.token);
    const b1 = await connect(ctx.url, b.token);
    assert.deepEqual(await emitAck(a1, 'typing', { room_id: room.id, active: true }), { ok: true });
    await waitFor(b1, 'typing', (t) => t.address === a.address);
    // Barrier: a message from a1 reaches a2 after any typing event would have.
    const m = await sendOk(a1, room.id, 'barrier');
    await waitFor(a2, 'message', (x) => x.id === m.id);
    assert.deepEqual(events(a2, 'typing'), [], 'the typing user\'s other tab got its own typing event');
    for (const s of [a1, a2, b1]) s.close();
  });

  it('typing refusals: not_member, room_not_found, invalid_request', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const theirs = await createRoom(ctx.url, b.token, 'theirs', []);
    const s = await connect(ctx.url, a.token);
    assertAckError(await emitAck(s, 'typing', { room_id: theirs.id, active: true }), 'not_member');
    assertAckError(await emitAck(s, 'typing', { room_id: 'no-such-room', active: true }), 'room_not_found');
    assertAckError(await emitAck(s, 'typing', { room_id: theirs.id, active: 'yes' }), 'invalid_request', 'active not boolean');
    assertAckError(await emitAck(s, 'typing', { active: true }), 'invalid_request', 'no room_id');
    assertAckError(await emitAck(s, 'typing', 'typing'), 'invalid_request', 'not an object');
    s.close();
  });
});

describe('read receipts', () => {
  it('read stores a never-decreasing marker and tells the room', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'reads', [b.address]);
    for (let i = 1; i <= 5; i++) await restSend(ctx.url, a.token, room.id, `m${i}`);
    const sa = await connect(ctx.url, a.token);
    const sb = await connect(ctx.url, b.token);

    assert.deepEqual(await emitAck(sb, 'read', { room_id: room.id, seq: 3 }), { ok: true, seq: 3 });
    assert.deepEqual(await waitFor(sa, 'read', (r) => r.seq === 3), { room_id: room.id, address: b.address, seq: 3 });

    // Lower than the stored marker: the marker stays.
    assert.deepEqual(await emitAck(sb, 'read', { room_id: room.id, seq: 2 }), { ok: true, seq: 3 });
    assert.deepEqual(await emitAck(sb, 'read', { room_id: room.id, seq: 3 }), { ok: true, seq: 3 });

    assert.deepEqual(await emitAck(sb, 'read', { room_id: room.id, seq: 5 }), { ok: true, seq: 5 });
    assert.deepEqual(await waitFor(sa, 'read', (r) => r.seq === 5), { room_id: room.id, address: b.address, seq: 5 });
    // No read event ever announced a decrease.
    const seqs = events(sa, 'read', (r) => r.address === b.address).map((r) => r.seq);
    assert.ok(seqs.every((s) => s >= 3), `a read event went backwards: ${seqs}`);
    assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), `read events went backwards: ${seqs}`);

    // Beyond last_seq → invalid_request, marker unchanged.
    assertAckError(await emitAck(sb, 'read', { room_id: room.id, seq: 6 }), 'invalid_request', 'seq beyond last_seq');
    assert.deepEqual(await emitAck(sb, 'read', { room_id: room.id, seq: 1 }), { ok: true, seq: 5 });

    // The marker is per user and per room and survives reconnecting.
    await disconnect(sb);
    const sb2 = await connect(ctx.url, b.token);
    assert.deepEqual(await emitAck(sb2, 'read', { room_id: room.id, seq: 4 }), { ok: true, seq: 5 });
    assert.deepEqual(await emitAck(sa, 'read', { room_id: room.id, seq: 2 }), { ok: true, seq: 2 }, 'A has its own marker');
    assert.deepEqual(await waitFor(sb2, 'read', (r) => r.address === a.address), { room_id: room.id, address: a.address, seq: 2 });
    // The reader's own sockets get the event too (docs §4.6); it also serves as a barrier for sa.
    await waitFor(sa, 'read', (r) => r.address === a.address);
    // Docs §4.5: a seq equal to or above the marker broadcasts, a lower one (or an error) does not.
    assert.deepEqual(events(sa, 'read', (r) => r.address === b.address).map((r) => r.seq), [3, 3, 5], 'read events seen by A for B');
    sa.close();
    sb2.close();
  });

  it('GET /rooms/{id}/reads returns every member\'s marker, for clients that were offline', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const outsider = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'reads', [b.address]);
    const sa = await connect(ctx.url, a.token);
    for (let i = 0; i < 4; i++) await sendOk(sa, room.id, `m${i}`);
    const ack = await emitAck(sa, 'read', { room_id: room.id, seq: 3 });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    const res = await api.get(ctx.url, `/api/v1/rooms/${room.id}/reads`, { token: b.token });
    assert.equal(res.status, 200, JSON.stringify(res.json));
    const bySender = Object.fromEntries(res.json.reads.map((r) => [r.address, r.seq]));
    assert.deepEqual(bySender, { [a.address]: 3, [b.address]: 0 });
    const refused = await api.get(ctx.url, `/api/v1/rooms/${room.id}/reads`, { token: outsider.token });
    assert.equal(refused.status, 403);
    assert.equal(refused.json.error.code, 'not_member');
  });

  it('read refusals: not_member, room_not_found, invalid_request', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const mine = await createRoom(ctx.url, a.token, 'mine', []);
    await restSend(ctx.url, a.token, mine.id, 'x');
    const theirs = await createRoom(ctx.url, b.token, 'theirs', []);
    await restSend(ctx.url, b.token, theirs.id, 'y');
    const s = await connect(ctx.url, a.token);
    assertAckError(await emitAck(s, 'read', { room_id: theirs.id, seq: 1 }), 'not_member');
    assertAckError(await emitAck(s, 'read', { room_id: 'no-such-room', seq: 1 }), 'room_not_found');
    assertAckError(await emitAck(s, 'read', { room_id: mine.id, seq: 'one' }), 'invalid_request', 'seq string');
    assertAckError(await emitAck(s, 'read', { room_id: mine.id }), 'invalid_request', 'no seq');
    assertAckError(await emitAck(s, 'read', [mine.id, 1]), 'invalid_request', 'array');
    s.close();
  });
});

describe('presence', () => {
  it('online on the first socket, offline on the last; a second tab changes nothing; only room-mates are told', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const stranger = await newUser(ctx.url); // shares no room with B
    const room = await createRoom(ctx.url, a.token, 'presence', [b.address]);
    const shared = await createRoom(ctx.url, a.token, 'a-and-stranger', [stranger.address]);
    const sa = await connect(ctx.url, a.token);
    const ss = await connect(ctx.url, stranger.token);
    const isB = (p) => p.address === b.address;

    const b1 = await connect(ctx.url, b.token);
    assert.deepEqual(await waitFor(sa, 'presence', (p) => isB(p) && p.online === true), { address: b.address, online: true });

    // Second tab: no new presence event. Barrier: a typing signal from the new tab reaches A
    // after its connection has been set up.
    const b2 = await connect(ctx.url, b.token);
    await emitAck(b2, 'typing', { room_id: room.id, active: true });
    await waitFor(sa, 'typing', (t) => t.address === b.address);
    assert.equal(events(sa, 'presence', isB).length, 1, `second tab announced presence again: ${JSON.stringify(events(sa, 'presence', isB))}`);

    // Close one tab: still online.
    await disconnect(b1);
    const m = await sendOk(b2, room.id, 'still here');
    await waitFor(sa, 'message', (x) => x.id === m.id);
    assert.deepEqual(events(sa, 'presence', (p) => isB(p) && p.online === false), [], 'closing one of two tabs sent offline');
    let res = await api.get(ctx.url, `/api/v1/users/${b.address}`, { token: a.token });
    assert.equal(res.json.online, true);

    // Close the last tab: offline, exactly once.
    const before = mark(sa);
    await disconnect(b2);
    assert.deepEqual(await waitFor(sa, 'presence', (p) => isB(p) && p.online === false, undefined, { since: before }), { address: b.address, online: false });
    res = await api.get(ctx.url, `/api/v1/users/${b.address}`, { token: a.token });
    assert.equal(res.json.online, false);

    // Barrier through the stranger's own room, then count.
    const m2 = await sendOk(sa, shared.id, 'barrier');
    await waitFor(ss, 'message', (x) => x.id === m2.id);
    assert.equal(events(sa, 'presence', (p) => isB(p) && p.online === false).length, 1, 'offline announced more than once');
    assert.deepEqual(events(ss, 'presence', isB), [], 'presence leaked to a user sharing no room');
    sa.close();
    ss.close();
  });

  it('a new socket is told which room-mates are already online (presence snapshot), and no one else', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const offline = await newUser(ctx.url);
    const stranger = await newUser(ctx.url);
    await createRoom(ctx.url, a.token, 'snapshot', [b.address, offline.address]);
    const sa = await connect(ctx.url, a.token);
    const ss = await connect(ctx.url, stranger.token);
    const sb = await connect(ctx.url, b.token);
    assert.deepEqual(await waitFor(sb, 'presence', (p) => p.address === a.address), { address: a.address, online: true });
    // Barrier: a round trip on B's socket is answered after the snapshot was sent.
    await emitAck(sb, 'sync', { cursors: {} });
    await emitAck(sb, 'sync', { cursors: {} });
    const told = events(sb, 'presence').map((p) => p.address);
    assert.ok(!told.includes(offline.address), 'an offline member was announced online');
    assert.ok(!told.includes(stranger.address), 'a user sharing no room was announced');
    assert.ok(!told.includes(b.address), 'a socket was told about its own user');
    sa.close();
    ss.close();
    sb.close();
  });

  it('a user who joins a room later learns presence of its members from then on', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const sa = await connect(ctx.url, a.token);
    const room = await createRoom(ctx.url, b.token, 'later', []);
    await api.post(ctx.url, `/api/v1/rooms/${room.id}/members`, { token: b.token, json: { address: a.address } });
    await waitFor(sa, 'room', (e) => e.room?.id === room.id);
    const sb = await connect(ctx.url, b.token);
    assert.deepEqual(await waitFor(sa, 'presence', (p) => p.address === b.address && p.online), { address: b.address, online: true });
    sb.close();
    sa.close();
  });
});
