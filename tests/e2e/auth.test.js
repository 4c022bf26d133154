// Sign-In with Ethereum, sessions, logout and token refusal, over REST and Socket.IO.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, startServer, api, getNonce, siweText, verify, signIn, newWallet, newUser,
  connect, connectRefused, waitFor, waitDisconnect, emitAck, assertError, isError, show,
  RFC3339, closeAllSockets,
} from './lib/harness.js';

const ctx = useServer({ before, after });

/** A fresh nonce, a message with `overrides`, signed by `wallet` (or `signer`). */
async function attempt(wallet, overrides = {}, { signer = wallet, signText } = {}) {
  const info = await getNonce(ctx.url);
  const text = siweText(info, wallet.address, overrides);
  const signature = await signer.signMessage(signText ?? text);
  return { info, text, signature, res: await verify(ctx.url, text, signature) };
}

const minutes = (n) => new Date(Date.now() + n * 60_000).toISOString();

describe('nonce', () => {
  it('GET /api/v1/auth/nonce returns a 24-alphanumeric nonce and the node origin', async () => {
    const res = await api.get(ctx.url, '/api/v1/auth/nonce');
    assert.equal(res.status, 200, show(res));
    const n = res.json;
    assert.match(n.nonce, /^[A-Za-z0-9]{24}$/);
    assert.match(n.expires_at, RFC3339);
    assert.ok(Date.parse(n.expires_at) > Date.now(), `expires_at in the past: ${n.expires_at}`);
    assert.equal(n.domain, ctx.server.domain);
    assert.equal(n.uri, ctx.url);
    assert.equal(n.chain_id, 1);
  });

  it('every call returns a different nonce', async () => {
    const seen = new Set();
    for (let i = 0; i < 5; i++) seen.add((await getNonce(ctx.url)).nonce);
    assert.equal(seen.size, 5);
  });
});

describe('sign-in', () => {
  it('a valid signed message yields a token for the EIP-55 address', async () => {
    const wallet = newWallet();
    const { res } = await attempt(wallet);
    assert.equal(res.status, 200, show(res));
    assert.equal(typeof res.json.token, 'string');
    assert.ok(res.json.token.length >= 16, 'token suspiciously short');
    assert.equal(res.json.address, wallet.address);
    assert.match(res.json.expires_at, RFC3339);
    assert.ok(Date.parse(res.json.expires_at) > Date.now());
    const me = await api.get(ctx.url, '/api/v1/me', { token: res.json.token });
    assert.equal(me.status, 200, show(me));
    assert.equal(me.json.address, wallet.address);
  });

  it('optional fields (expiration in the future, notBefore in the past) are accepted', async () => {
    const wallet = newWallet();
    const { res } = await attempt(wallet, {
      expirationTime: minutes(10),
      notBefore: minutes(-1),
      requestId: 'req-1',
      resources: ['https://example.com/terms'],
    });
    assert.equal(res.status, 200, show(res));
    assert.equal(res.json.address, wallet.address);
  });

  it('a nonce works once', async () => {
    const wallet = newWallet();
    const first = await attempt(wallet);
    assert.equal(first.res.status, 200, show(first.res));
    // Exactly the same text and signature again.
    const replay = await verify(ctx.url, first.text, first.signature);
    assertError(replay, 401, 'siwe_invalid_nonce', 'replayed message');
    // A new message (new issuedAt) reusing the consumed nonce.
    const text = siweText(first.info, wallet.address);
    const res = await verify(ctx.url, text, await wallet.signMessage(text));
    assertError(res, 401, 'siwe_invalid_nonce', 'reused nonce');
  });

  it('the same nonce cannot be used by another wallet either', async () => {
    const a = newWallet();
    const b = newWallet();
    const first = await attempt(a);
    assert.equal(first.res.status, 200, show(first.res));
    const text = siweText(first.info, b.address);
    assertError(await verify(ctx.url, text, await b.signMessage(text)), 401, 'siwe_invalid_nonce');
  });

  it('a refused attempt does not burn the nonce (docs §2.4): fix the message and retry with it', async () => {
    const wallet = newWallet();
    const info = await getNonce(ctx.url);
    const wrong = siweText(info, wallet.address, { domain: 'evil.example.com' });
    assertError(await verify(ctx.url, wrong, await wallet.signMessage(wrong)), 401, 'siwe_domain_mismatch');
    const text = siweText(info, wallet.address);
    assertError(await verify(ctx.url, text, await newWallet().signMessage(text)), 401, 'siwe_invalid_signature');
    const res = await verify(ctx.url, text, await wallet.signMessage(text));
    assert.equal(res.status, 200, show(res));
  });

  it('tokens look like cct_ + 64 lower-case hex (docs §2.6); each sign-in gets its own', async () => {
    const wallet = newWallet();
    const t1 = (await signIn(ctx.url, wallet)).token;
    const t2 = (await signIn(ctx.url, wallet)).token;
    assert.match(t1, /^cct_[0-9a-f]{64}$/);
    assert.notEqual(t1, t2);
  });

  it('a lower-case address inside the SIWE message → 400 siwe_malformed (EIP-4361 needs EIP-55)', async () => {
    const wallet = newWallet();
    const info = await getNonce(ctx.url);
    const text = siweText(info, wallet.address).replace(wallet.address, wallet.address.toLowerCase());
    assertError(await verify(ctx.url, text, await wallet.signMessage(text)), 400, 'siwe_malformed');
  });

  it('an unknown nonce is refused', async () => {
    const wallet = newWallet();
    const info = await getNonce(ctx.url);
    const text = siweText(info, wallet.address, { nonce: 'Zz9Zz9Zz9Zz9Zz9Zz9Zz9Zz9' });
    assertError(await verify(ctx.url, text, await wallet.signMessage(text)), 401, 'siwe_invalid_nonce');
  });
});

describe('sign-in refusals', () => {
  const wallet = newWallet();

  it('wrong domain → 401 siwe_domain_mismatch', async () => {
    const { res } = await attempt(wallet, { domain: 'evil.example.com' });
    assertError(res, 401, 'siwe_domain_mismatch');
  });

  it('same host with another port → 401 siwe_domain_mismatch', async () => {
    const port = ctx.server.port === 1 ? 2 : ctx.server.port - 1;
    const { res } = await attempt(wallet, { domain: `127.0.0.1:${port}` });
    assertError(res, 401, 'siwe_domain_mismatch');
  });

  it('wrong uri origin → 401 siwe_uri_mismatch', async () => {
    const { res } = await attempt(wallet, { uri: 'https://evil.example.com' });
    assertError(res, 401, 'siwe_uri_mismatch');
  });

  it('uri with another scheme → 401 siwe_uri_mismatch', async () => {
    const { res } = await attempt(wallet, { uri: `https://${ctx.server.domain}` });
    assertError(res, 401, 'siwe_uri_mismatch');
  });

  it('chain not allowed → 401 siwe_chain_not_allowed', async () => {
    const { res } = await attempt(wallet, { chainId: 5 });
    assertError(res, 401, 'siwe_chain_not_allowed');
  });

  it('expirationTime in the past → 401 siwe_expired', async () => {
    const { res } = await attempt(wallet, { issuedAt: minutes(-2), expirationTime: minutes(-1) });
    assertError(res, 401, 'siwe_expired');
  });

  it('notBefore in the future → 401 siwe_not_yet_valid', async () => {
    const { res } = await attempt(wallet, { notBefore: minutes(10) });
    assertError(res, 401, 'siwe_not_yet_valid');
  });

  it('issuedAt 10 minutes ago → 401 siwe_issued_at_skew', async () => {
    const { res } = await attempt(wallet, { issuedAt: minutes(-10) });
    assertError(res, 401, 'siwe_issued_at_skew');
  });

  it('issuedAt 10 minutes ahead → 401 siwe_issued_at_skew', async () => {
    const { res } = await attempt(wallet, { issuedAt: minutes(10) });
    assertError(res, 401, 'siwe_issued_at_skew');
  });

  it('issuedAt within the allowed skew (2 minutes ago) is accepted', async () => {
    const { res } = await attempt(newWallet(), { issuedAt: minutes(-2) });
    assert.equal(res.status, 200, show(res));
  });

  it('signature by another key → 401 siwe_invalid_signature', async () => {
    const { res } = await attempt(wallet, {}, { signer: newWallet() });
    assertError(res, 401, 'siwe_invalid_signature');
  });

  it('signature over other text → 401 siwe_invalid_signature', async () => {
    const info = await getNonce(ctx.url);
    const text = siweText(info, wallet.address);
    const other = siweText(info, wallet.address, { statement: 'Something else entirely.' });
    const res = await verify(ctx.url, text, await wallet.signMessage(other));
    assertError(res, 401, 'siwe_invalid_signature');
  });

  it('signature with the recovery byte flipped → 401 siwe_invalid_signature', async () => {
    const info = await getNonce(ctx.url);
    const text = siweText(info, wallet.address);
    const sig = await wallet.signMessage(text);
    const v = sig.slice(-2) === '1b' ? '1c' : '1b';
    const res = await verify(ctx.url, text, sig.slice(0, -2) + v);
    assertError(res, 401, 'siwe_invalid_signature');
  });

  for (const [label, mangle] of [
    ['too short', (s) => s.slice(0, 100)],
    ['too long', (s) => s + 'ab'],
    ['without 0x', (s) => s.slice(2) + '00'],
    ['non-hex characters', (s) => '0x' + 'zz' + s.slice(4)],
    ['empty', () => ''],
  ]) {
    it(`signature ${label} → 401 siwe_invalid_signature`, async () => {
      const info = await getNonce(ctx.url);
      const text = siweText(info, wallet.address);
      const sig = await wallet.signMessage(text);
      assertError(await verify(ctx.url, text, mangle(sig)), 401, 'siwe_invalid_signature');
    });
  }

  it('message that is not EIP-4361 → 400 siwe_malformed', async () => {
    const sig = await wallet.signMessage('hello');
    assertError(await verify(ctx.url, 'hello, sign me in please', sig), 400, 'siwe_malformed');
  });

  it('EIP-4361 message with its Nonce line removed → 400 siwe_malformed', async () => {
    const info = await getNonce(ctx.url);
    const text = siweText(info, wallet.address).split('\n').filter((l) => !l.startsWith('Nonce: ')).join('\n');
    assertError(await verify(ctx.url, text, await wallet.signMessage(text)), 400, 'siwe_malformed');
  });

  it('body not JSON → 400 invalid_request', async () => {
    const res = await api.post(ctx.url, '/api/v1/auth/verify', { body: '{"message": "x", "signature": ' });
    assertError(res, 400, 'invalid_request');
  });

  it('missing fields → 400 invalid_request', async () => {
    const info = await getNonce(ctx.url);
    const text = siweText(info, wallet.address);
    const sig = await wallet.signMessage(text);
    assertError(await api.post(ctx.url, '/api/v1/auth/verify', { json: { message: text } }), 400, 'invalid_request', 'no signature');
    assertError(await api.post(ctx.url, '/api/v1/auth/verify', { json: { signature: sig } }), 400, 'invalid_request', 'no message');
    assertError(await api.post(ctx.url, '/api/v1/auth/verify', { json: {} }), 400, 'invalid_request', 'empty object');
    assertError(await api.post(ctx.url, '/api/v1/auth/verify', { json: { message: 42, signature: sig } }), 400, 'invalid_request', 'message not a string');
    assertError(await api.post(ctx.url, '/api/v1/auth/verify', { json: [text, sig] }), 400, 'invalid_request', 'array body');
    assertError(await api.post(ctx.url, '/api/v1/auth/verify', { json: null }), 400, 'invalid_request', 'null body');
  });

  it('message longer than 4096 bytes → 413 payload_too_large', async () => {
    const { res } = await attempt(wallet, { statement: 'x'.repeat(4200) });
    assertError(res, 413, 'payload_too_large');
  });
});

describe('tokens on REST', () => {
  it('missing Authorization → 401 missing_token', async () => {
    assertError(await api.get(ctx.url, '/api/v1/me'), 401, 'missing_token');
    assertError(await api.get(ctx.url, '/api/v1/rooms'), 401, 'missing_token');
  });

  it('the Bearer scheme is case-insensitive and the token is trimmed; other schemes → missing_token (docs §1.8)', async () => {
    const u = await newUser(ctx.url);
    for (const header of [`bearer ${u.token}`, `BEARER   ${u.token}  `]) {
      const res = await api.get(ctx.url, '/api/v1/me', { headers: { authorization: header } });
      assert.equal(res.status, 200, `Authorization: ${JSON.stringify(header)}: ${show(res)}`);
    }
    for (const header of [`Basic ${u.token}`, `Token ${u.token}`, 'Bearer', 'Bearer    ']) {
      assertError(await api.get(ctx.url, '/api/v1/me', { headers: { authorization: header } }), 401, 'missing_token', `Authorization: ${JSON.stringify(header)}`);
    }
  });

  it('garbage token → 401 invalid_token', async () => {
    assertError(await api.get(ctx.url, '/api/v1/me', { token: 'garbage' }), 401, 'invalid_token');
    assertError(await api.get(ctx.url, '/api/v1/me', { token: 'a'.repeat(64) }), 401, 'invalid_token');
  });
});

describe('tokens on Socket.IO', () => {
  function assertConnectError(err, code) {
    assert.ok(err instanceof Error, `not an Error: ${err}`);
    assert.equal(typeof err.message, 'string');
    assert.ok(err.message.length > 0, 'connect_error message is empty');
    assert.ok(isError(err.data, code), `connect_error data: expected {"error":{"code":"${code}",...}}, got ${JSON.stringify(err.data)}`);
    assert.deepEqual(Object.keys(err.data), ['error']);
    assert.deepEqual(Object.keys(err.data.error).sort(), ['code', 'message']);
  }

  it('no token → connect_error missing_token', async () => {
    assertConnectError(await connectRefused(ctx.url, undefined), 'missing_token');
  });

  it('garbage token → connect_error invalid_token', async () => {
    assertConnectError(await connectRefused(ctx.url, 'garbage'), 'invalid_token');
  });

  it('a valid token connects', async () => {
    const u = await newUser(ctx.url);
    const s = await connect(ctx.url, u.token);
    assert.ok(s.connected);
    s.close();
  });

  it('logout: 204, the token is revoked everywhere, its live socket gets session:end logged_out and is closed; other tokens of the same user keep working', async () => {
    const wallet = newWallet();
    const t1 = (await signIn(ctx.url, wallet)).token;
    const t2 = (await signIn(ctx.url, wallet)).token;
    assert.notEqual(t1, t2);
    const s1 = await connect(ctx.url, t1);
    const s2 = await connect(ctx.url, t2);

    const out = await api.post(ctx.url, '/api/v1/auth/logout', { token: t1 });
    assert.equal(out.status, 204, show(out));

    const end = await waitFor(s1, 'session:end');
    assert.deepEqual(end, { code: 'logged_out' });
    await waitDisconnect(s1);
    const iEnd = s1.log.findIndex((e) => e.event === 'session:end');
    const iDisc = s1.log.findIndex((e) => e.event === 'disconnect');
    assert.ok(iEnd < iDisc, 'session:end must come before the disconnect');

    // REST refuses the revoked token.
    assertError(await api.get(ctx.url, '/api/v1/me', { token: t1 }), 401, 'token_revoked', 'GET /me');
    assertError(await api.get(ctx.url, '/api/v1/rooms', { token: t1 }), 401, 'token_revoked', 'GET /rooms');
    assertError(await api.post(ctx.url, '/api/v1/auth/logout', { token: t1 }), 401, 'token_revoked', 'second logout');
    // Socket refuses it too.
    assertConnectError(await connectRefused(ctx.url, t1), 'token_revoked');

    // The other token's socket is still connected and served (an ack round trip after the
    // logout), and its REST works.
    assert.ok(s2.connected, 'the other token\'s socket was disconnected');
    const ack = await emitAck(s2, 'sync', { cursors: {} });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(s2.log.filter((e) => e.event === 'session:end').length, 0, 'session:end sent to the other token');
    const me = await api.get(ctx.url, '/api/v1/me', { token: t2 });
    assert.equal(me.status, 200, show(me));
    s2.close();
  });

  it('logout without a token → 401 missing_token', async () => {
    assertError(await api.post(ctx.url, '/api/v1/auth/logout'), 401, 'missing_token');
  });
});

describe('configured chains and nonce lifetime', () => {
  let server;
  before(async () => {
    server = await startServer({
      env: { COOLCHAT__AUTH__ALLOWED_CHAIN_IDS: '10,1', COOLCHAT__AUTH__NONCE_TTL_SECS: '2' },
    });
  });
  after(async () => {
    closeAllSockets();
    if (server) await server.stop();
  });

  it('advertises the first allowed chain, accepts every allowed one and refuses others', async () => {
    const info = await getNonce(server.url);
    assert.equal(info.chain_id, 10);
    const w = newWallet();
    for (const chainId of [10, 1]) {
      const n = await getNonce(server.url);
      const text = siweText(n, w.address, { chainId });
      const res = await verify(server.url, text, await w.signMessage(text));
      assert.equal(res.status, 200, `chain ${chainId}: ${show(res)}`);
    }
    const n = await getNonce(server.url);
    const text = siweText(n, w.address, { chainId: 137 });
    assertError(await verify(server.url, text, await w.signMessage(text)), 401, 'siwe_chain_not_allowed');
  });

  it('an expired nonce is refused with siwe_invalid_nonce', async () => {
    const w = newWallet();
    const n = await getNonce(server.url);
    const expiresAt = Date.parse(n.expires_at);
    assert.ok(expiresAt - Date.now() <= 3_000, `nonce TTL not applied: expires_at ${n.expires_at}`);
    // Deliberate wait for the configured 2 s TTL to run out (the property under test is time).
    await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now()) + 1_500));
    const text = siweText(n, w.address);
    assertError(await verify(server.url, text, await w.signMessage(text)), 401, 'siwe_invalid_nonce');
  });
});
