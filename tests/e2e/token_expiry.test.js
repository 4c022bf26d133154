// Session expiry: a live socket is told `session:end {"code":"token_expired"}` and closed when its
// token's lifetime is over; afterwards the token is refused everywhere with token_expired.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, api, newUser, signIn, newWallet, connect, connectRefused, waitFor, waitDisconnect,
  emitAck, isError, assertError, show,
} from './lib/harness.js';

const TTL = 3;
const ctx = useServer({ before, after }, { env: { COOLCHAT__AUTH__SESSION_TTL_SECS: String(TTL) } });

describe('token expiry', () => {
  it('expires_at reflects the configured TTL', async () => {
    const started = Date.now();
    const s = await signIn(ctx.url, newWallet());
    const exp = Date.parse(s.expires_at);
    assert.ok(exp > started, `expires_at ${s.expires_at} is not in the future`);
    assert.ok(exp <= Date.now() + TTL * 1000 + 1000, `expires_at ${s.expires_at} is beyond the ${TTL} s TTL`);
  });

  it('a live socket gets session:end token_expired, then is closed; REST and reconnects get token_expired', async () => {
    const u = await newUser(ctx.url);
    const s = await connect(ctx.url, u.token);
    const ack = await emitAck(s, 'sync', { cursors: {} });
    assert.equal(ack.ok, true, 'the socket works before expiry');

    const end = await waitFor(s, 'session:end', () => true, TTL * 1000 + 10_000);
    const endedAt = Date.now();
    assert.deepEqual(end, { code: 'token_expired' });
    assert.ok(endedAt >= Date.parse(u.expires_at) - 1000, `session ended ${Date.parse(u.expires_at) - endedAt} ms before expires_at`);
    await waitDisconnect(s);
    const iEnd = s.log.findIndex((e) => e.event === 'session:end');
    const iDisc = s.log.findIndex((e) => e.event === 'disconnect');
    assert.ok(iEnd < iDisc, 'session:end must come before the disconnect');

    assertError(await api.get(ctx.url, '/api/v1/me', { token: u.token }), 401, 'token_expired', 'REST after expiry');
    const err = await connectRefused(ctx.url, u.token);
    assert.ok(isError(err.data, 'token_expired'), `connect after expiry: ${JSON.stringify(err.data)}`);
    assertError(await api.post(ctx.url, '/api/v1/auth/logout', { token: u.token }), 401, 'token_expired', 'logout after expiry');

    // Signing in again gives a working token.
    const again = await signIn(ctx.url, u.wallet);
    const me = await api.get(ctx.url, '/api/v1/me', { token: again.token });
    assert.equal(me.status, 200, show(me));
    assert.equal(me.json.address, u.address);
  });

  it('every socket of the token ends, each with session:end', async () => {
    const u = await newUser(ctx.url);
    const socks = await Promise.all([1, 2].map(() => connect(ctx.url, u.token)));
    for (const s of socks) {
      assert.deepEqual(await waitFor(s, 'session:end', () => true, TTL * 1000 + 10_000), { code: 'token_expired' });
      await waitDisconnect(s);
    }
  });
});
