// Media attachments: streamed upload (raw body, Content-Type = the media type), download by the
// uploader and by members of a room where a message carries the media, 404 for everyone else,
// the upload limit (413, nothing stored), 411 without Content-Length, and the attach rules.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import {
  useServer, api, newUser, connect, waitFor, send, sendOk, createRoom, cmid, assertError, assertAckError,
  assertMessage, show,
} from './lib/harness.js';

const LIMIT = 1024;
const ctx = useServer({ before, after }, {
  env: {
    COOLCHAT__MEDIA__MAX_UPLOAD_BYTES: String(LIMIT),
    COOLCHAT__LIMITS__MESSAGES_PER_SECOND: '10000',
    COOLCHAT__LIMITS__MESSAGE_BURST: '10000',
  },
});

async function upload(token, bytes, contentType = 'application/octet-stream', query = '') {
  return api.post(ctx.url, `/api/v1/media${query}`, { token, body: bytes, contentType });
}

async function uploadOk(token, bytes, contentType, query) {
  const res = await upload(token, bytes, contentType, query);
  assert.equal(res.status, 201, show(res));
  return res.json;
}

/** GET a media object as raw bytes. */
async function download(token, id) {
  const headers = token === undefined ? {} : { authorization: `Bearer ${token}` };
  const res = await fetch(`${ctx.url}/api/v1/media/${encodeURIComponent(id)}`, { headers });
  const buf = Buffer.from(await res.arrayBuffer());
  let json;
  try { json = JSON.parse(buf.toString('utf8')); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, bytes: buf, json, text: buf.toString('utf8') };
}

/** Every file under the data directory's media folder (temporary files included). */
function storedFiles() {
  const root = path.join(ctx.server.dataDir, 'media');
  const out = [];
  const walk = (dir) => {
    for (const e of fs.existsSync(dir) ? fs.readdirSync(dir, { withFileTypes: true }) : []) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p); else out.push(p);
    }
  };
  walk(root);
  return out;
}

describe('media', () => {
  it('upload, download by the uploader, attach over the socket, the other member downloads the same bytes', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'pics', [b.address]);
    const bytes = randomBytes(700);

    const ref = await uploadOk(a.token, bytes, 'image/png', '?name=cat%20photo.png');
    assert.match(ref.id, /^[0-9a-f]{32}$/, JSON.stringify(ref));
    assert.deepEqual(ref, { id: ref.id, content_type: 'image/png', size: 700, name: 'cat photo.png' });

    const mine = await download(a.token, ref.id);
    assert.equal(mine.status, 200, mine.text);
    assert.equal(mine.headers.get('content-type'), 'image/png');
    assert.equal(mine.headers.get('content-length'), '700');
    assert.equal(mine.headers.get('x-content-type-options'), 'nosniff');
    assert.ok(mine.bytes.equals(bytes), 'the uploader gets the exact bytes back');

    // Before any message carries it, only the uploader sees it.
    assertError(await download(b.token, ref.id), 404, 'not_found', 'member before attach');

    const sa = await connect(ctx.url, a.token);
    const sb = await connect(ctx.url, b.token);
    const msg = await sendOk(sa, room.id, 'look', { media: [ref.id] });
    assertMessage(msg, { body: 'look', media: [ref] });
    const got = await waitFor(sb, 'message', (m) => m.id === msg.id);
    assert.deepEqual(got.media, [{ id: ref.id, content_type: 'image/png', size: 700, name: 'cat photo.png' }]);

    const theirs = await download(b.token, ref.id);
    assert.equal(theirs.status, 200, theirs.text);
    assert.ok(theirs.bytes.equals(bytes), 'the other member gets the exact bytes');
    sa.close();
    sb.close();
  });

  it('a non-member, an unknown id and an anonymous caller get nothing', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const c = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'private', [b.address]);
    const ref = await uploadOk(a.token, Buffer.from('secret'), 'text/plain');
    const sa = await connect(ctx.url, a.token);
    await sendOk(sa, room.id, 'see attached', { media: [ref.id] });
    assertError(await download(c.token, ref.id), 404, 'not_found', 'non-member');
    assertError(await download(c.token, 'ffffffffffffffffffffffffffffffff'), 404, 'not_found', 'unknown id');
    assertError(await download(undefined, ref.id), 401, 'missing_token', 'anonymous');
    sa.close();
  });

  it('REST send carries media; a media-only message may have an empty body; history shows it', async () => {
    const a = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'rest', []);
    const ref = await uploadOk(a.token, Buffer.from([0, 1, 2, 3]), 'application/octet-stream');
    const res = await api.post(ctx.url, `/api/v1/rooms/${room.id}/messages`, {
      token: a.token, json: { body: '', client_msg_id: cmid(), media: [ref.id] },
    });
    assert.equal(res.status, 201, show(res));
    assert.deepEqual(res.json.media, [{ id: ref.id, content_type: 'application/octet-stream', size: 4 }]);
    const hist = await api.get(ctx.url, `/api/v1/rooms/${room.id}/messages`, { token: a.token });
    assert.deepEqual(hist.json.messages[0].media, res.json.media);
  });

  it('over the limit: 413 payload_too_large and nothing stored', async () => {
    const a = await newUser(ctx.url);
    const before = storedFiles().length;
    assertError(await upload(a.token, randomBytes(LIMIT + 1)), 413, 'payload_too_large', 'over-limit upload');
    assert.equal(storedFiles().length, before, 'no file was stored');
    // Exactly the limit is fine.
    await uploadOk(a.token, randomBytes(LIMIT), 'application/octet-stream');
    assert.equal(storedFiles().length, before + 1);
  });

  it('Content-Length is required (411), the Content-Type must be a media type, auth is required', async () => {
    const a = await newUser(ctx.url);
    // A chunked upload (no Content-Length), with node:http since fetch sets the length itself.
    const status = await new Promise((resolve, reject) => {
      const req = http.request(`${ctx.url}/api/v1/media`, {
        method: 'POST',
        headers: { authorization: `Bearer ${a.token}`, 'content-type': 'image/png', 'transfer-encoding': 'chunked' },
      }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
      req.on('error', reject);
      req.write('abc');
      req.end();
    });
    assert.equal(status, 411);
    for (const ct of ['image', 'image/png; charset=x', 'a/b c', `x/${'y'.repeat(130)}`]) {
      assertError(await upload(a.token, Buffer.from('x'), ct), 400, 'invalid_request', `content type ${ct}`);
    }
    assertError(await upload(undefined, Buffer.from('x'), 'image/png'), 401, 'missing_token', 'anonymous upload');
  });

  it('attaching someone else\'s media, an unknown id, or too many is invalid_request', async () => {
    const a = await newUser(ctx.url);
    const b = await newUser(ctx.url);
    const room = await createRoom(ctx.url, a.token, 'steal', [b.address]);
    const refB = await uploadOk(b.token, Buffer.from('b owns this'), 'text/plain');
    const sa = await connect(ctx.url, a.token);
    assertAckError(await send(sa, room.id, 'mine now', { media: [refB.id] }), 'invalid_request');
    assertAckError(await send(sa, room.id, 'ghost', { media: ['00000000000000000000000000000000'] }), 'invalid_request');
    const ids = [];
    for (let i = 0; i < 11; i += 1) ids.push((await uploadOk(a.token, Buffer.from([i]), 'application/octet-stream')).id);
    assertAckError(await send(sa, room.id, 'too many', { media: ids }), 'invalid_request');
    const ten = await sendOk(sa, room.id, 'ten', { media: ids.slice(0, 10) });
    assert.equal(ten.media.length, 10);
    // A retry with different media is an idempotency conflict.
    const id = cmid();
    await sendOk(sa, room.id, 'once', { client_msg_id: id, media: [ids[10]] });
    assertAckError(await send(sa, room.id, 'once', { client_msg_id: id, media: [] }), 'idempotency_conflict');
    // B, a member of the room, now sees what the message carries.
    assert.equal((await download(b.token, ids[0])).status, 200);
    sa.close();
  });
});
