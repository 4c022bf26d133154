// The README walkthrough: two random wallets sign in with SIWE, open a room and a DM, and chat.
// Usage: node chat.mjs [http://127.0.0.1:8080]
import { Wallet } from 'ethers';
import { SiweMessage } from 'siwe';
import { io } from 'socket.io-client';

const base = process.argv[2] ?? 'http://127.0.0.1:8080';

async function api(path, { token, method = 'GET', body } = {}) {
  const res = await fetch(base + path, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return json;
}

async function signIn(wallet) {
  const n = await api('/api/v1/auth/nonce');
  const message = new SiweMessage({
    domain: n.domain, address: wallet.address, statement: 'Sign in to CoolChat', uri: n.uri,
    version: '1', chainId: n.chain_id, nonce: n.nonce, issuedAt: new Date().toISOString(),
  }).prepareMessage();
  const signature = await wallet.signMessage(message);
  return api('/api/v1/auth/verify', { method: 'POST', body: { message, signature } });
}

function connect(token) {
  return new Promise((resolve, reject) => {
    const s = io(base, { auth: { token }, transports: ['websocket'], reconnection: false });
    s.once('connect', () => resolve(s));
    s.once('connect_error', (e) => reject(new Error(`${e.message} ${JSON.stringify(e.data)}`)));
  });
}

const alice = Wallet.createRandom();
const bob = Wallet.createRandom();
const a = await signIn(alice);
const b = await signIn(bob);
console.log(`alice ${a.address}\n  token ${a.token}\nbob   ${b.address}\n  token ${b.token}`);

const room = await api('/api/v1/rooms', { token: a.token, method: 'POST', body: { name: 'general', members: [b.address] } });
const dm = await api('/api/v1/dms', { token: a.token, method: 'POST', body: { address: b.address } });
console.log(`room ${room.id} (${room.members.length} members), dm ${dm.id}`);

const sa = await connect(a.token);
const sb = await connect(b.token);
const received = new Promise((resolve) => sb.on('message', (m) => m.body === 'hello bob' && resolve(m)));
const ack = await sa.emitWithAck('message:send', { room_id: room.id, body: 'hello bob', client_msg_id: 'walkthrough-1' });
console.log('alice sent, ack:', JSON.stringify(ack));
const m = await received;
console.log(`bob received seq ${m.seq} from ${m.sender}: ${m.body}`);
const dmAck = await sb.emitWithAck('message:send', { room_id: dm.id, body: 'hi alice (dm)', client_msg_id: 'walkthrough-2' });
console.log('bob sent a DM, seq', dmAck.message.seq);
const sync = await sa.emitWithAck('sync', { cursors: {} });
console.log(`alice sync: ${sync.messages.length} messages, has_more=${sync.has_more}`);
sa.close();
sb.close();
