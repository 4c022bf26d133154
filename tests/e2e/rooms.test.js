// Rooms and DMs: create, list, get, membership changes (with live `room` events), refusals.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, api, newUser, newWallet, connect, waitFor, events, mark, emitAck, sendOk, createRoom,
  assertError, assertRoom, show, RFC3339,
} from './lib/harness.js';

const MAX_MEMBERS = 4;
const ctx = useServer({ before, after }, { env: { COOLCHAT__LIMITS__MAX_ROOM_MEMBERS: String(MAX_MEMBERS) } });

const roomPath = (id) => `/api/v1/rooms/${encodeURIComponent(id)}`;

describe('group rooms', () => {
  it('create: 201 with the creator included, EIP-55 members, last_seq 0', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const never = newWallet().address; // never signed in
    const res = await api.post(ctx.url, '/api/v1/rooms', {
      token: a.token,
      json: { name: 'Project 🚀', members: [b.address.toLowerCase(), never.toLowerCase()] },
    });
    assert.equal(res.status, 201, show(res));
    assertRoom(res.json, {
      kind: 'group',
      name: 'Project 🚀',
      members: [a.address, b.address, never],
      last_seq: 0,
      created_by: a.address,
    });
    assert.match(res.json.created_at, RFC3339);
    assert.ok(res.json.id.length > 0);
  });

  it('create with the creator listed, or duplicates, keeps each member once', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'dups', [a.address, b.address, b.address.toLowerCase()]);
    assertRoom(room, { members: [a.address, b.address] });
  });

  it('list and get: members see it, others get 403 not_member, unknown ids 404 room_not_found', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const outsider = await newUser(ctx.url);
    const r1 = await createRoom(ctx.url, a.token, 'one', [b.address]);
    const r2 = await createRoom(ctx.url, a.token, 'two', []);

    let res = await api.get(ctx.url, '/api/v1/rooms', { token: a.token });
    assert.equal(res.status, 200, show(res));
    assert.ok(Array.isArray(res.json.rooms), show(res));
    assert.deepEqual(res.json.rooms.map((r) => r.id).sort(), [r1.id, r2.id].sort());
    for (const r of res.json.rooms) assertRoom(r);

    const ids = res.json.rooms.map((r) => r.id);
    assert.deepEqual(ids, [...ids].sort(), 'docs §3.5: rooms are listed sorted by id');
    for (const r of res.json.rooms) {
      const lower = r.members.map((m) => m.toLowerCase());
      assert.deepEqual(lower, [...lower].sort(), `docs §1.9: members sorted by lower-case address: ${JSON.stringify(r.members)}`);
    }

    res = await api.get(ctx.url, '/api/v1/rooms', { token: b.token });
    assert.deepEqual(res.json.rooms.map((r) => r.id), [r1.id]);

    res = await api.get(ctx.url, '/api/v1/rooms', { token: outsider.token });
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(res.json.rooms, []);

    res = await api.get(ctx.url, roomPath(r1.id), { token: b.token });
    assert.equal(res.status, 200, show(res));
    assertRoom(res.json, { id: r1.id, name: 'one', kind: 'group', members: [a.address, b.address], created_by: a.address });

    assertError(await api.get(ctx.url, roomPath(r1.id), { token: outsider.token }), 403, 'not_member');
    assertError(await api.get(ctx.url, roomPath('doesnotexist'), { token: a.token }), 404, 'room_not_found');
    assertError(await api.get(ctx.url, roomPath('0'.repeat(32)), { token: a.token }), 404, 'room_not_found');
  });

  it('room names are trimmed, 1..100 characters, without control characters', async () => {
    const a = await newUser(ctx.url);
    let res = await api.post(ctx.url, '/api/v1/rooms', { token: a.token, json: { name: '  spaced out  ', members: [] } });
    assert.equal(res.status, 201, show(res));
    assert.equal(res.json.name, 'spaced out');
    res = await api.post(ctx.url, '/api/v1/rooms', { token: a.token, json: { name: 'ü'.repeat(100) } });
    assert.equal(res.status, 201, `100 characters, members omitted: ${show(res)}`);
    assert.deepEqual(res.json.members, [a.address]);
    for (const name of ['', '   ', 'x'.repeat(101), 'bell\u0007', 'new\nline']) {
      res = await api.post(ctx.url, '/api/v1/rooms', { token: a.token, json: { name, members: [] } });
      assertError(res, 400, 'invalid_request', `name ${JSON.stringify(name).slice(0, 30)}`);
    }
    assertError(await api.post(ctx.url, '/api/v1/rooms', { token: a.token, json: { members: [] } }), 400, 'invalid_request', 'no name');
  });

  it('last_seq follows the messages', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'counter', []);
    const s = await connect(ctx.url, a.token);
    await sendOk(s, room.id, 'one');
    await sendOk(s, room.id, 'two');
    const res = await api.get(ctx.url, roomPath(room.id), { token: a.token });
    assert.equal(res.json.last_seq, 2, show(res));
    s.close();
  });

  it('an invalid member address → 400 invalid_address, and no room is created', async () => {
    const a = await newUser(ctx.url);
    const res = await api.post(ctx.url, '/api/v1/rooms', { token: a.token, json: { name: 'bad', members: ['0xnothex'] } });
    assertError(res, 400, 'invalid_address');
    const list = await api.get(ctx.url, '/api/v1/rooms', { token: a.token });
    assert.deepEqual(list.json.rooms, []);
  });

  it(`more than max_room_members (${MAX_MEMBERS}) → 409 room_full, on create and on add`, async () => {
    const a = await newUser(ctx.url);
    const others = Array.from({ length: MAX_MEMBERS }, () => newWallet().address);
    // creator + MAX_MEMBERS others = MAX_MEMBERS + 1
    assertError(await api.post(ctx.url, '/api/v1/rooms', { token: a.token, json: { name: 'big', members: others } }), 409, 'room_full', 'create');
    const full = await createRoom(ctx.url, a.token, 'full', others.slice(0, MAX_MEMBERS - 1));
    assert.equal(full.members.length, MAX_MEMBERS);
    const res = await api.post(ctx.url, `${roomPath(full.id)}/members`, { token: a.token, json: { address: others[MAX_MEMBERS - 1] } });
    assertError(res, 409, 'room_full', 'add');
    const after = await api.get(ctx.url, roomPath(full.id), { token: a.token });
    assert.equal(after.json.members.length, MAX_MEMBERS);
  });
});

describe('membership changes', () => {
  it('a user added to a room gets a live `room` event, then its messages; removed: a `room` event and no more messages', async () => {
    const a = await newUser(ctx.url);
    const d = await newUser(ctx.url);
    const sa = await connect(ctx.url, a.token);
    const sd = await connect(ctx.url, d.token);
    const room = await createRoom(ctx.url, a.token, 'live', []);
    const side = await createRoom(ctx.url, a.token, 'side', [d.address]); // a channel A and D share throughout
    await waitFor(sd, 'room', (e) => e.room?.id === side.id);

    // Add D.
    let res = await api.post(ctx.url, `${roomPath(room.id)}/members`, { token: a.token, json: { address: d.address.toLowerCase() } });
    assert.equal(res.status, 200, show(res));
    assertRoom(res.json, { id: room.id, members: [a.address, d.address] });
    const added = await waitFor(sd, 'room', (e) => e.room?.id === room.id);
    assertRoom(added.room, { id: room.id, members: [a.address, d.address] });
    // Existing members are told too.
    await waitFor(sa, 'room', (e) => e.room?.id === room.id && e.room.members.includes(d.address));

    const m1 = await sendOk(sa, room.id, 'welcome');
    const got = await waitFor(sd, 'message', (m) => m.id === m1.id);
    assert.equal(got.body, 'welcome');

    // D can use the room over REST and the socket too.
    res = await api.get(ctx.url, roomPath(room.id), { token: d.token });
    assert.equal(res.status, 200, show(res));
    await sendOk(sd, room.id, 'thanks');

    // Remove D (A is the creator).
    const before = mark(sd);
    res = await api.delete(ctx.url, `${roomPath(room.id)}/members/${d.address}`, { token: a.token });
    assert.equal(res.status, 200, show(res));
    assertRoom(res.json, { id: room.id, members: [a.address] });
    const removed = await waitFor(sd, 'room', (e) => e.room?.id === room.id, undefined, { since: before });
    assert.ok(!removed.room.members.includes(d.address), `room event after removal still lists D: ${JSON.stringify(removed)}`);
    await waitFor(sa, 'room', (e) => e.room?.id === room.id && !e.room.members.includes(d.address));

    // A message in the room after the removal must not reach D. Barrier: A's own socket has
    // received it (so it was fanned out), then a message in the shared side room reaches D.
    const m2 = await sendOk(sa, room.id, 'secret');
    await waitFor(sa, 'message', (m) => m.id === m2.id);
    const m3 = await sendOk(sa, side.id, 'barrier');
    await waitFor(sd, 'message', (m) => m.id === m3.id);
    assert.deepEqual(events(sd, 'message', (m) => m.id === m2.id), [], 'removed member still received a message');

    // And the room is closed to D.
    assertError(await api.get(ctx.url, roomPath(room.id), { token: d.token }), 403, 'not_member');
    const list = await api.get(ctx.url, '/api/v1/rooms', { token: d.token });
    assert.deepEqual(list.json.rooms.map((r) => r.id), [side.id]);
    const ack = await emitAck(sd, 'message:send', { room_id: room.id, body: 'let me in', client_msg_id: 'x1' });
    assert.equal(ack.ok, false, JSON.stringify(ack));
    assert.equal(ack.error.code, 'not_member', JSON.stringify(ack));
    sa.close();
    sd.close();
  });

  it('a new room created with a user in it reaches that user\'s live socket', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const sb = await connect(ctx.url, b.token);
    const room = await createRoom(ctx.url, a.token, 'surprise', [b.address]);
    const ev = await waitFor(sb, 'room', (e) => e.room?.id === room.id);
    assertRoom(ev.room, { id: room.id, name: 'surprise', members: [a.address, b.address] });
    const sa = await connect(ctx.url, a.token);
    const m = await sendOk(sa, room.id, 'hi');
    await waitFor(sb, 'message', (x) => x.id === m.id);
    sa.close();
    sb.close();
  });

  it('any member may add; a member may remove themselves; only the creator removes others', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const c = await newUser(ctx.url);
    const e = newWallet().address;
    const room = await createRoom(ctx.url, a.token, 'perms', [b.address]);

    let res = await api.post(ctx.url, `${roomPath(room.id)}/members`, { token: b.token, json: { address: c.address } });
    assert.equal(res.status, 200, `a non-creator member adds: ${show(res)}`);
    assertRoom(res.json, { members: [a.address, b.address, c.address] });

    res = await api.delete(ctx.url, `${roomPath(room.id)}/members/${c.address}`, { token: b.token });
    assertError(res, 403, 'forbidden', 'non-creator removes someone else');
    res = await api.delete(ctx.url, `${roomPath(room.id)}/members/${a.address}`, { token: b.token });
    assertError(res, 403, 'forbidden', 'non-creator removes the creator');

    res = await api.delete(ctx.url, `${roomPath(room.id)}/members/${b.address.toLowerCase()}`, { token: b.token });
    assert.equal(res.status, 200, `self-removal: ${show(res)}`);
    assertRoom(res.json, { members: [a.address, c.address] });

    // B is no longer a member: cannot add anyone.
    res = await api.post(ctx.url, `${roomPath(room.id)}/members`, { token: b.token, json: { address: e } });
    assertError(res, 403, 'not_member', 'former member adds');

    res = await api.delete(ctx.url, `${roomPath(room.id)}/members/${c.address}`, { token: a.token });
    assert.equal(res.status, 200, `creator removes: ${show(res)}`);
    assertRoom(res.json, { members: [a.address] });

    // Outsiders can neither add nor remove.
    res = await api.post(ctx.url, `${roomPath(room.id)}/members`, { token: c.token, json: { address: c.address } });
    assertError(res, 403, 'not_member', 'outsider adds themselves');
  });

  it('adding an existing member is idempotent (200, unchanged, no event); removing a non-member is 400', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'idempotent', [b.address]);
    const side = await createRoom(ctx.url, a.token, 'idempotent-side', [b.address]);
    const sb = await connect(ctx.url, b.token);
    const sa = await connect(ctx.url, a.token);
    const before = mark(sb);
    const res = await api.post(ctx.url, `${roomPath(room.id)}/members`, { token: a.token, json: { address: b.address.toLowerCase() } });
    assert.equal(res.status, 200, show(res));
    assertRoom(res.json, { id: room.id, members: [a.address, b.address] });
    // Barrier: a later message in another room reaches B.
    const m = await sendOk(sa, side.id, 'barrier');
    await waitFor(sb, 'message', (x) => x.id === m.id);
    assert.deepEqual(events(sb, 'room', () => true, before), [], 'a no-op add sent a room event');

    const never = newWallet().address;
    assertError(await api.delete(ctx.url, `${roomPath(room.id)}/members/${never}`, { token: a.token }), 400, 'invalid_request', 'remove a non-member');
    sa.close();
    sb.close();
  });

  it('member endpoints refuse bad input', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'input', []);
    assertError(await api.post(ctx.url, `${roomPath(room.id)}/members`, { token: a.token, json: { address: 'nope' } }), 400, 'invalid_address');
    assertError(await api.post(ctx.url, `${roomPath(room.id)}/members`, { token: a.token, json: {} }), 400, 'invalid_request');
    assertError(await api.post(ctx.url, `${roomPath(room.id)}/members`, { token: a.token, json: { address: 7 } }), 400, 'invalid_request');
    assertError(await api.delete(ctx.url, `${roomPath(room.id)}/members/nope`, { token: a.token }), 400, 'invalid_address');
    assertError(await api.post(ctx.url, `${roomPath('unknown-room')}/members`, { token: a.token, json: { address: a.address } }), 404, 'room_not_found');
  });
});

describe('direct messages', () => {
  it('the same pair gets the same DM room in either direction; 201 then 200', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const sb = await connect(ctx.url, b.token);
    let res = await api.post(ctx.url, '/api/v1/dms', { token: a.token, json: { address: b.address.toLowerCase() } });
    assert.equal(res.status, 201, show(res));
    assertRoom(res.json, { kind: 'dm', name: null, members: [a.address, b.address], last_seq: 0 });
    const id = res.json.id;
    const ev = await waitFor(sb, 'room', (e) => e.room?.id === id);
    assertRoom(ev.room, { kind: 'dm' });

    res = await api.post(ctx.url, '/api/v1/dms', { token: a.token, json: { address: b.address } });
    assert.equal(res.status, 200, show(res));
    assert.equal(res.json.id, id);

    res = await api.post(ctx.url, '/api/v1/dms', { token: b.token, json: { address: a.address.toUpperCase().replace('0X', '0x') } });
    assert.equal(res.status, 200, show(res));
    assert.equal(res.json.id, id);
    assertRoom(res.json, { kind: 'dm', name: null });

    const la = await api.get(ctx.url, '/api/v1/rooms', { token: a.token });
    assert.deepEqual(la.json.rooms.filter((r) => r.kind === 'dm').map((r) => r.id), [id]);
    sb.close();
  });

  it('concurrent DM creation from both sides yields one room', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const [ra, rb] = await Promise.all([
      api.post(ctx.url, '/api/v1/dms', { token: a.token, json: { address: b.address } }),
      api.post(ctx.url, '/api/v1/dms', { token: b.token, json: { address: a.address } }),
    ]);
    assert.ok([200, 201].includes(ra.status), show(ra));
    assert.ok([200, 201].includes(rb.status), show(rb));
    assert.deepEqual([ra.status, rb.status].sort(), [200, 201], 'exactly one of the two calls creates the room');
    assert.equal(ra.json.id, rb.json.id);
  });

  it('DM with yourself → 400 invalid_request; bad address → 400 invalid_address', async () => {
    const a = await newUser(ctx.url);
    assertError(await api.post(ctx.url, '/api/v1/dms', { token: a.token, json: { address: a.address.toLowerCase() } }), 400, 'invalid_request');
    assertError(await api.post(ctx.url, '/api/v1/dms', { token: a.token, json: { address: '0x12' } }), 400, 'invalid_address');
    assertError(await api.post(ctx.url, '/api/v1/dms', { token: a.token, json: {} }), 400, 'invalid_request');
  });

  it('members cannot be added to a DM (403 forbidden)', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const c = await newUser(ctx.url);
    const dm = (await api.post(ctx.url, '/api/v1/dms', { token: a.token, json: { address: b.address } })).json;
    assertError(await api.post(ctx.url, `${roomPath(dm.id)}/members`, { token: a.token, json: { address: c.address } }), 403, 'forbidden');
    const res = await api.get(ctx.url, roomPath(dm.id), { token: a.token });
    assertRoom(res.json, { members: [a.address, b.address] });
    assertError(await api.get(ctx.url, roomPath(dm.id), { token: c.token }), 403, 'not_member');
  });

  it('DM messages flow both ways', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const dm = (await api.post(ctx.url, '/api/v1/dms', { token: a.token, json: { address: b.address } })).json;
    const sa = await connect(ctx.url, a.token);
    const sb = await connect(ctx.url, b.token);
    const m1 = await sendOk(sa, dm.id, 'ping');
    await waitFor(sb, 'message', (m) => m.id === m1.id);
    const m2 = await sendOk(sb, dm.id, 'pong');
    await waitFor(sa, 'message', (m) => m.id === m2.id);
    assert.deepEqual([m1.seq, m2.seq], [1, 2]);
    sa.close();
    sb.close();
  });
});
