// Operational endpoints: /healthz, /readyz, /metrics; the startup line; graceful SIGTERM.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, startServer, api, newUser, connect, waitFor, waitDisconnect, sendOk, createRoom, show } from './lib/harness.js';

const ctx = useServer({ before, after });

describe('health', () => {
  it('GET /healthz → 200 without a token', async () => {
    const res = await api.get(ctx.url, '/healthz');
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(res.json, { status: 'ok' }, show(res));
  });

  it('GET /readyz → 200 {"status":"ready", ...}', async () => {
    const res = await api.get(ctx.url, '/readyz');
    assert.equal(res.status, 200, show(res));
    assert.equal(res.json?.status, 'ready', show(res));
  });

  it('GET /metrics → Prometheus text with coolchat_ series, moving with traffic', async () => {
    const u = await newUser(ctx.url);
    const room = await createRoom(ctx.url, u.token, 'metrics', []);
    const s = await connect(ctx.url, u.token);
    await sendOk(s, room.id, 'count me');
    const res = await api.get(ctx.url, '/metrics');
    assert.equal(res.status, 200, show(res));
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/, `content-type: ${res.headers.get('content-type')}`);
    assert.match(res.text, /^coolchat_\w+/m, 'no coolchat_ series');
    for (const line of res.text.split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      assert.match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEInfNa]+( \d+)?$/, `not a Prometheus sample line: ${line}`);
    }
    s.close();
  });

  it('errors use the v1 envelope with JSON content type', async () => {
    const res = await api.get(ctx.url, '/api/v1/nope');
    assert.equal(res.status, 404, show(res));
    assert.match(res.headers.get('content-type') ?? '', /application\/json/);
    assert.equal(res.json?.error?.code, 'not_found');
  });
});

describe('shutdown', () => {
  it('SIGTERM with live sockets: session:end shutdown to each, exit code 0', async () => {
    const server = await startServer();
    try {
      const u = await newUser(server.url);
      const socks = await Promise.all([1, 2, 3].map(() => connect(server.url, u.token)));
      const res = await server.terminate();
      assert.equal(res.code, 0, `exit code ${res.code}, signal ${res.signal}\n${server.stderr().slice(-3000)}`);
      for (const s of socks) {
        assert.deepEqual(await waitFor(s, 'session:end'), { code: 'shutdown' });
        await waitDisconnect(s);
      }
    } finally {
      await server.dispose();
    }
  });
});
