// /api/v1/me and /api/v1/users/{address}.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, api, newUser, newWallet, connect, disconnect, assertError, show, RFC3339,
} from './lib/harness.js';

const ctx = useServer({ before, after });

function assertUser(u, address) {
  assert.equal(u.address, address, JSON.stringify(u));
  assert.ok('display_name' in u, `display_name missing: ${JSON.stringify(u)}`);
  assert.match(u.created_at, RFC3339, JSON.stringify(u));
  assert.ok(u.last_seen_at === null || RFC3339.test(u.last_seen_at), JSON.stringify(u));
  assert.equal(typeof u.online, 'boolean', JSON.stringify(u));
}

describe('me', () => {
  it('GET /api/v1/me returns the signed-in user', async () => {
    const u = await newUser(ctx.url);
    const res = await api.get(ctx.url, '/api/v1/me', { token: u.token });
    assert.equal(res.status, 200, show(res));
    assertUser(res.json, u.address);
    assert.equal(res.json.display_name, null);
  });

  it('PATCH display_name sets, keeps Unicode, null clears, 64 chars ok, 65 refused', async () => {
    const u = await newUser(ctx.url);
    let res = await api.patch(ctx.url, '/api/v1/me', { token: u.token, json: { display_name: 'Zoë 🚀 ☕' } });
    assert.equal(res.status, 200, show(res));
    assertUser(res.json, u.address);
    assert.equal(res.json.display_name, 'Zoë 🚀 ☕');
    res = await api.get(ctx.url, '/api/v1/me', { token: u.token });
    assert.equal(res.json.display_name, 'Zoë 🚀 ☕');

    res = await api.patch(ctx.url, '/api/v1/me', { token: u.token, json: { display_name: 'é'.repeat(64) } });
    assert.equal(res.status, 200, `64 characters (128 bytes) must be accepted: ${show(res)}`);
    assert.equal(res.json.display_name, 'é'.repeat(64));

    res = await api.patch(ctx.url, '/api/v1/me', { token: u.token, json: { display_name: 'x'.repeat(65) } });
    assertError(res, 400, 'invalid_request', '65 characters');
    res = await api.get(ctx.url, '/api/v1/me', { token: u.token });
    assert.equal(res.json.display_name, 'é'.repeat(64), 'a refused PATCH changed the name');

    res = await api.patch(ctx.url, '/api/v1/me', { token: u.token, json: { display_name: null } });
    assert.equal(res.status, 200, show(res));
    assert.equal(res.json.display_name, null);
    res = await api.get(ctx.url, '/api/v1/me', { token: u.token });
    assert.equal(res.json.display_name, null);
  });

  it('PATCH trims; "", whitespace and {} clear; control characters are refused (docs §3.4)', async () => {
    const u = await newUser(ctx.url);
    const patch = (json) => api.patch(ctx.url, '/api/v1/me', { token: u.token, json });
    let res = await patch({ display_name: '  Alice  ' });
    assert.equal(res.status, 200, show(res));
    assert.equal(res.json.display_name, 'Alice');
    for (const clear of [{ display_name: '' }, { display_name: '   ' }, {}]) {
      await patch({ display_name: 'set' });
      res = await patch(clear);
      assert.equal(res.status, 200, `${JSON.stringify(clear)}: ${show(res)}`);
      assert.equal(res.json.display_name, null, `${JSON.stringify(clear)} must clear the name`);
    }
    for (const bad of ['tab\there', 'nul\u0000', 'esc\u001b[31m']) {
      assertError(await patch({ display_name: bad }), 400, 'invalid_request', JSON.stringify(bad));
    }
  });

  it('PATCH with a wrongly typed display_name → 400 invalid_request', async () => {
    const u = await newUser(ctx.url);
    for (const v of [42, true, ['a'], { a: 1 }]) {
      assertError(await api.patch(ctx.url, '/api/v1/me', { token: u.token, json: { display_name: v } }), 400, 'invalid_request', JSON.stringify(v));
    }
    assertError(await api.patch(ctx.url, '/api/v1/me', { token: u.token, body: '{"display_name": "x"' }), 400, 'invalid_request', 'broken JSON');
  });

  it('PATCH requires a token', async () => {
    assertError(await api.patch(ctx.url, '/api/v1/me', { json: { display_name: 'x' } }), 401, 'missing_token');
  });
});

describe('users', () => {
  it('GET /api/v1/users/{address} accepts any case and returns EIP-55', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    await api.patch(ctx.url, '/api/v1/me', { token: b.token, json: { display_name: 'Bee' } });
    for (const form of [b.address, b.address.toLowerCase(), '0x' + b.address.slice(2).toUpperCase()]) {
      const res = await api.get(ctx.url, `/api/v1/users/${form}`, { token: a.token });
      assert.equal(res.status, 200, `${form}: ${show(res)}`);
      assertUser(res.json, b.address);
      assert.equal(res.json.display_name, 'Bee');
    }
  });

  it('invalid addresses → 400 invalid_address', async () => {
    const a = await newUser(ctx.url);
    for (const bad of ['0x1234', 'hello', '0x' + 'g'.repeat(40), '0x' + 'a'.repeat(41), 'a'.repeat(42)]) {
      assertError(await api.get(ctx.url, `/api/v1/users/${bad}`, { token: a.token }), 400, 'invalid_address', bad);
    }
  });

  it('an address that never signed in → 404 user_not_found', async () => {
    const a = await newUser(ctx.url);
    const never = newWallet().address;
    assertError(await api.get(ctx.url, `/api/v1/users/${never}`, { token: a.token }), 404, 'user_not_found');
  });

  it('requires a token', async () => {
    const a = await newUser(ctx.url);
    assertError(await api.get(ctx.url, `/api/v1/users/${a.address}`), 401, 'missing_token');
  });

  it('online follows the user\'s sockets', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    let res = await api.get(ctx.url, `/api/v1/users/${b.address}`, { token: a.token });
    assert.equal(res.json.online, false, show(res));
    const s = await connect(ctx.url, b.token);
    res = await api.get(ctx.url, `/api/v1/users/${b.address}`, { token: a.token });
    assert.equal(res.json.online, true, `connected but ${show(res)}`);
    res = await api.get(ctx.url, '/api/v1/me', { token: b.token });
    assert.equal(res.json.online, true, show(res));
    await disconnect(s);
    // The server learns about the disconnect asynchronously: poll with a bound.
    const deadline = Date.now() + 10_000;
    for (;;) {
      res = await api.get(ctx.url, `/api/v1/users/${b.address}`, { token: a.token });
      if (res.json.online === false) break;
      assert.ok(Date.now() < deadline, `still online 10 s after disconnecting: ${show(res)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });
});
