'use strict';
// A Butterfly client written only from docs/protocol.md and proto/, as a
// user of another language would: it loads the .proto files at run time
// (@grpc/proto-loader), finds intermediates and registers its consumer
// through etcd's HTTP/JSON gateway, and speaks the Publish and Subscribe
// streams by hand.
//
//   node conformance.js publish --etcd http://127.0.0.1:2379 --id nodep --count 1000
//   node conformance.js consume --etcd http://127.0.0.1:2379 --id nodec --expect p1 --count 1000
//
// The last line on stdout is a JSON summary. Exit 0 means every message was
// acknowledged (publish) or handled exactly once (consume), and the probe
// frame that breaks the contract was refused with INVALID_ARGUMENT.

const path = require('node:path');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const definition = protoLoader.loadSync(
  ['butterfly/delivery/v1/publish.proto', 'butterfly/delivery/v1/subscribe.proto'],
  {
    includeDirs: [path.resolve(__dirname, '../../proto')],
    longs: String, // uint64 travel as decimal strings: incarnations use all 64 bits
    enums: String,
    defaults: true,
    oneofs: true,
  },
);
const deliveryv1 = grpc.loadPackageDefinition(definition).butterfly.delivery.v1;

const TRANSIENT = new Set([
  'NACK_REASON_DRAINING', 'NACK_REASON_UNAVAILABLE', 'NACK_REASON_NO_CONSUMER', 'NACK_REASON_OWNER_UNREACHABLE',
]);
const OWN_HEARTBEAT_MS = 200;
const PROBE_TIMEOUT_MS = 10000; // a probe's deadline

function parseArgs(argv) {
  const o = {
    mode: argv[0], etcd: 'http://127.0.0.1:2379', prefix: 'butterfly', service: 'intermediate',
    group: 'default', id: '', count: 0, expect: '', credit: 100, timeout: 60,
  };
  for (let i = 1; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '');
    if (!(k in o) || i + 1 >= argv.length) throw new Error(`unknown or incomplete flag ${argv[i]}`);
    o[k] = typeof o[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!['publish', 'consume'].includes(o.mode)) throw new Error('mode must be publish or consume');
  if (!o.id) throw new Error('--id is required');
  if (!(o.count > 0)) throw new Error('--count must be positive');
  if (o.mode === 'consume' && !o.expect) throw new Error('--expect (the producer id to check) is required');
  if (!o.etcd.startsWith('http')) o.etcd = 'http://' + o.etcd;
  return o;
}

// Etcd speaks etcd's v3 HTTP/JSON gateway: keys and values are base64,
// 64-bit numbers are decimal strings.
class Etcd {
  constructor(base) { this.base = base; }

  async call(route, body) {
    const res = await fetch(this.base + route, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    });
    const text = await res.text();
    const json = text ? JSON.parse(text.split('\n')[0]) : {};
    if (!res.ok || json.error) throw new Error(`etcd ${route}: HTTP ${res.status}: ${text}`);
    return json.result || json;
  }

  async range(prefix) {
    const key = Buffer.from(prefix);
    const end = Buffer.from(prefix);
    end[end.length - 1]++;
    const r = await this.call('/v3/kv/range', { key: key.toString('base64'), range_end: end.toString('base64') });
    return (r.kvs || []).map((kv) => ({
      key: Buffer.from(kv.key, 'base64').toString(),
      value: Buffer.from(kv.value || '', 'base64').toString(),
      modRevision: kv.mod_revision,
    }));
  }

  async get(key) {
    const r = await this.call('/v3/kv/range', { key: b64(key) });
    const kv = (r.kvs || [])[0];
    return kv && { value: Buffer.from(kv.value || '', 'base64').toString(), modRevision: kv.mod_revision };
  }

  // putIf puts key=value (on lease) if the key's mod revision is rev, or if
  // it does not exist when rev is undefined.
  async putIf(key, value, rev, lease) {
    const compare = rev === undefined
      ? { key: b64(key), target: 'CREATE', result: 'EQUAL', create_revision: '0' }
      : { key: b64(key), target: 'MOD', result: 'EQUAL', mod_revision: rev };
    const put = { key: b64(key), value: b64(value) };
    if (lease) put.lease = lease;
    const r = await this.call('/v3/kv/txn', { compare: [compare], success: [{ request_put: put }] });
    return Boolean(r.succeeded);
  }
}

const b64 = (s) => Buffer.from(s).toString('base64');

// discover lists the service's intermediates: <prefix>/services/<service>/<instance>
// holds {"Addr":"host:port","Metadata":{"instance","epoch","draining",...}}.
async function discover(etcd, o) {
  const kvs = await etcd.range(`${o.prefix}/services/${o.service}/`);
  return kvs.map((kv) => JSON.parse(kv.value))
    .filter((v) => !(v.Metadata && v.Metadata.draining))
    .map((v) => ({ name: v.Metadata.instance, addr: v.Addr, epoch: Number(v.Metadata.epoch) }));
}

// ranges folds ids into the fewest sorted inclusive SeqRanges.
function ranges(ids) {
  const sorted = [...ids].sort((a, b) => a - b);
  const out = [];
  for (const id of sorted) {
    const last = out[out.length - 1];
    if (last && id === Number(last.last) + 1) last.last = String(id);
    else if (!last || id > Number(last.last)) out.push({ first: String(id), last: String(id) });
  }
  return out;
}

function statusName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);
}

// streamEnd resolves with the status a stream ends with.
function streamEnd(call) {
  return new Promise((resolve) => {
    call.on('error', () => {});
    call.on('status', (s) => resolve(s));
  });
}

// liveness sends a heartbeat at least as often as the intermediate holds
// us to (the welcome's peer_heartbeat_interval_ms), and cancels the stream
// when nothing arrived from the intermediate for five of its own intervals.
// Call seen() on every frame received; stop() when the stream ends.
function liveness(call, welcome) {
  const beatMs = Math.min(OWN_HEARTBEAT_MS, welcome.peerHeartbeatIntervalMs || OWN_HEARTBEAT_MS);
  const serverMs = welcome.heartbeatIntervalMs || OWN_HEARTBEAT_MS;
  let last = Date.now();
  const beat = setInterval(() => call.write({ heartbeat: { sendTimeUnixNano: String(BigInt(Date.now()) * 1000000n) } }), beatMs);
  const watch = setInterval(() => { if (Date.now() - last > 5 * serverMs) call.cancel(); }, serverMs);
  return {
    seen() { last = Date.now(); },
    stop() { clearInterval(beat); clearInterval(watch); },
  };
}

// ---------------------------------------------------------------- publish

async function publish(o) {
  const etcd = new Etcd(o.etcd);
  // A new incarnation at every start: a random 63-bit number, never 0.
  const incarnation = (crypto.randomBytes(8).readBigUInt64BE() >> 1n | 1n).toString();
  const acked = new Set();
  const pending = []; // message seqs to send, in order
  const routes = new Map(); // seq -> routes learned from transient nacks
  for (let s = 1; s <= o.count; s++) pending.push(s);
  let resent = 0;

  while (acked.size < o.count) {
    const insts = await discover(etcd, o);
    if (insts.length === 0) { await sleep(100); continue; }
    const inst = insts[0];
    const client = new deliveryv1.PublishService(inst.addr, grpc.credentials.createInsecure());
    await runPublishStream(client, inst, o, incarnation, pending, acked, routes, () => { resent++; });
    client.close();
    if (acked.size < o.count) await sleep(100); // then find the intermediates again
  }
  const probe = await probePublish(etcd, o, incarnation);
  return { sent: o.count, acked: acked.size, resent, probe };
}

// runPublishStream sends pending messages on one stream until every message
// is acknowledged or the stream ends; what the stream left unanswered goes
// back to pending.
function runPublishStream(client, inst, o, incarnation, pending, acked, routes, onResend) {
  return new Promise((resolve) => {
    const call = client.Publish();
    const inFlight = new Map(); // stream seq -> message seq
    let nextStreamSeq = 1;
    let welcome = null;
    let draining = false;
    let live = null;
    let done = false;

    const lowWater = () => {
      let low = Infinity;
      for (const s of inFlight.values()) low = Math.min(low, s);
      for (const s of pending) low = Math.min(low, s);
      return low === Infinity ? 0 : low;
    };
    const pump = () => {
      if (!welcome || draining || done) return;
      while (pending.length > 0 && inFlight.size < welcome.maxInFlight) {
        const n = Math.min(pending.length, welcome.maxBatchMessages, 100, welcome.maxInFlight - inFlight.size);
        const seqs = pending.splice(0, n);
        const low = Math.min(lowWater(), ...seqs);
        const first = nextStreamSeq;
        const messages = seqs.map((seq, i) => {
          inFlight.set(first + i, seq);
          return {
            id: { producerId: o.id, incarnation, seq: String(seq) },
            payload: Buffer.from(`node message ${seq}`),
            createTimeUnixNano: String(BigInt(Date.now()) * 1000000n),
            lowWaterSeq: String(low),
            routes: routes.get(seq) || [],
          };
        });
        nextStreamSeq += n;
        call.write({ batch: { firstSeq: String(first), messages } });
      }
    };
    const finish = () => {
      if (done) return;
      done = true;
      if (live) live.stop();
      // Messages this stream did not settle are sent again on the next one.
      for (const seq of inFlight.values()) if (!acked.has(seq)) { pending.push(seq); onResend(); }
      inFlight.clear();
      pending.sort((a, b) => a - b);
      resolve();
    };

    call.on('data', (resp) => {
      if (live) live.seen();
      switch (resp.kind) {
        case 'welcome':
          welcome = resp.welcome;
          live = liveness(call, welcome);
          pump();
          break;
        case 'ack': {
          for (const r of resp.ack.acked) {
            for (let s = Number(r.first); s <= Number(r.last); s++) {
              const seq = inFlight.get(s);
              if (seq === undefined) continue; // answered before: ignore
              inFlight.delete(s);
              acked.add(seq);
            }
          }
          for (const n of resp.ack.nacked) {
            const seq = inFlight.get(Number(n.seq));
            if (seq === undefined) continue;
            inFlight.delete(Number(n.seq));
            if (!TRANSIENT.has(n.reason)) {
              console.error(`message ${seq} handed back for good: ${n.reason}: ${n.detail}`);
              process.exit(1);
            }
            routes.set(seq, n.routes);
            pending.push(seq);
            onResend();
          }
          pending.sort((a, b) => a - b);
          if (acked.size === o.count) { call.end(); break; }
          pump();
          break;
        }
        case 'drain':
          // Send nothing new here; what is in flight is acknowledged or
          // handed back (DRAINING), then the intermediate ends the stream.
          draining = true;
          break;
        default: // heartbeat
      }
    });
    call.on('error', () => {});
    call.on('status', finish);
    call.write({ hello: { producerId: o.id, incarnation, instance: inst.name, heartbeatIntervalMs: OWN_HEARTBEAT_MS } });
  });
}

// probePublish breaks the contract on purpose: a batch whose first_seq is
// not 1 on a new stream must end it with INVALID_ARGUMENT. The probe
// closes its side after the batch, so the stream ends on the status alone,
// and has a deadline: a status that never comes is a DEADLINE_EXCEEDED
// here, not a run that hangs.
async function probePublish(etcd, o, incarnation) {
  const [inst] = await discover(etcd, o);
  const client = new deliveryv1.PublishService(inst.addr, grpc.credentials.createInsecure());
  const call = client.Publish({ deadline: Date.now() + PROBE_TIMEOUT_MS });
  const end = streamEnd(call);
  call.on('data', () => {});
  call.write({ hello: { producerId: o.id, incarnation, instance: inst.name, heartbeatIntervalMs: OWN_HEARTBEAT_MS } });
  call.write({ batch: { firstSeq: '5', messages: [{ id: { producerId: o.id, incarnation, seq: '1' } }] } });
  call.end();
  const s = await end;
  client.close();
  return `${statusName(s.code)}: ${s.details}`;
}

// ---------------------------------------------------------------- consume

// register declares the group if needed and registers the consumer on a
// lease with the next epoch, as docs/protocol.md describes.
async function register(etcd, o) {
  const groupKey = `${o.prefix}/groups/${o.service}/${o.group}`;
  await etcd.putIf(groupKey, JSON.stringify({ created: new Date().toISOString(), createdBy: o.id }), undefined);
  const lease = (await etcd.call('/v3/lease/grant', { TTL: 5 })).ID;
  const key = `${o.prefix}/consumers/${o.service}/${o.group}/${o.id}`;
  for (;;) {
    const cur = await etcd.get(key);
    const epoch = cur ? Number(JSON.parse(cur.value).epoch) + 1 : 1;
    const value = JSON.stringify({
      consumer: o.id, group: o.group, epoch, draining: false, started: new Date().toISOString(), host: 'node',
    });
    if (await etcd.putIf(key, value, cur && cur.modRevision, lease)) {
      const keepAlive = setInterval(() => etcd.call('/v3/lease/keepalive', { ID: lease }).catch(() => {}), 1000);
      return { lease, epoch, key, value, keepAlive };
    }
  }
}

async function consume(o) {
  const etcd = new Etcd(o.etcd);
  const reg = await register(etcd, o);
  const handled = new Map(); // seq of the expected producer -> times the handler ran
  const dedup = new Map(); // "producer/incarnation" -> { low, seen:Set }
  let duplicates = 0;
  let unexpected = 0;
  let complete;
  const allHandled = new Promise((resolve) => { complete = resolve; });

  // handle runs the "application" for one message unless it is a duplicate.
  const handle = (msg) => {
    const k = `${msg.id.producerId}/${msg.id.incarnation}`;
    const seq = Number(msg.id.seq);
    let w = dedup.get(k);
    if (!w) { w = { low: 0, seen: new Set() }; dedup.set(k, w); }
    const low = Number(msg.lowWaterSeq);
    if (low > w.low) {
      w.low = low;
      for (const s of w.seen) if (s < low) w.seen.delete(s); // exact state only above the mark
    }
    if (seq < w.low || w.seen.has(seq)) { duplicates++; return; }
    w.seen.add(seq);
    if (msg.id.producerId !== o.expect) { unexpected++; return; }
    handled.set(seq, (handled.get(seq) || 0) + 1);
    if (handled.size === o.count) complete();
  };

  const insts = await discover(etcd, o);
  if (insts.length === 0) throw new Error(`no intermediate of ${o.service} in etcd`);
  const streams = insts.map((inst) => subscribeStream(inst, o, reg, handle));
  await allHandled;
  const probe = await probeSubscribe(insts[0], o, reg);
  // Leave: mark the registration draining (the group's other consumers own
  // our keys from now on), drain every stream (its acknowledgements went
  // before), wait for the intermediates to end them, then give the
  // registration up.
  const draining = JSON.stringify({ ...JSON.parse(reg.value), draining: true });
  await etcd.call('/v3/kv/put', { key: b64(reg.key), value: b64(draining), lease: reg.lease });
  for (const s of streams) s.leave();
  await Promise.all(streams.map((s) => s.ended));
  clearInterval(reg.keepAlive);
  await etcd.call('/v3/lease/revoke', { ID: reg.lease });

  const missing = [];
  const doubled = [];
  for (let s = 1; s <= o.count; s++) {
    const n = handled.get(s) || 0;
    if (n === 0) missing.push(s);
    if (n > 1) doubled.push(s);
  }
  return { handled: handled.size, duplicates, unexpected, missing, doubled, epoch: reg.epoch, probe };
}

function subscribeStream(inst, o, reg, handle) {
  const client = new deliveryv1.SubscribeService(inst.addr, grpc.credentials.createInsecure());
  const call = client.Subscribe();
  const ended = streamEnd(call).then((s) => { if (live) live.stop(); client.close(); return s; });
  let live = null;
  let leaving = false;
  let maxAck = 1;
  call.on('data', (resp) => {
    if (live) live.seen();
    switch (resp.kind) {
      case 'welcome':
        maxAck = resp.welcome.maxAckRanges || Infinity;
        live = liveness(call, resp.welcome);
        break;
      case 'batch': {
        if (leaving) break; // left unanswered: they go to the group's next owner
        const ids = [];
        for (const d of resp.batch.deliveries) {
          handle(d.message);
          ids.push(Number(d.deliveryId)); // duplicates are acknowledged too
        }
        const acked = ranges(ids);
        for (let i = 0; i < acked.length; i += maxAck) call.write({ ack: { acked: acked.slice(i, i + maxAck) } });
        call.write({ credit: { messages: ids.length } }); // acks give no credit back
        break;
      }
      case 'drain':
        // The intermediate leaves: it sends nothing new here; the
        // consumer keeps its registration and streams to the others.
        break;
      default: // heartbeat
    }
  });
  call.write({
    hello: {
      consumerId: o.id, group: o.group, instance: inst.name, heartbeatIntervalMs: OWN_HEARTBEAT_MS,
      initialCredit: o.credit, registrationEpoch: String(reg.epoch),
    },
  });
  return {
    ended,
    leave() {
      leaving = true;
      call.write({ drain: { reason: 'DRAIN_REASON_SHUTDOWN' } });
      call.end();
    },
  };
}

// probeSubscribe breaks the contract on purpose: an acknowledgement frame
// that names no delivery must end the stream with INVALID_ARGUMENT. Like
// probePublish, it closes its side after the frame and has a deadline.
async function probeSubscribe(inst, o, reg) {
  const client = new deliveryv1.SubscribeService(inst.addr, grpc.credentials.createInsecure());
  const call = client.Subscribe({ deadline: Date.now() + PROBE_TIMEOUT_MS });
  const end = streamEnd(call);
  call.on('data', (resp) => {
    if (resp.kind === 'welcome') {
      call.write({ ack: { acked: [], nacked: [] } });
      call.end();
    }
  });
  call.write({
    hello: {
      consumerId: o.id, group: o.group, instance: inst.name, heartbeatIntervalMs: OWN_HEARTBEAT_MS,
      initialCredit: 0, registrationEpoch: String(reg.epoch),
    },
  });
  const s = await end;
  client.close();
  return `${statusName(s.code)}: ${s.details}`;
}

// ---------------------------------------------------------------- main

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const timer = setTimeout(() => {
    console.error(`timed out after ${o.timeout}s`);
    process.exit(3);
  }, o.timeout * 1000);
  const summary = o.mode === 'publish' ? await publish(o) : await consume(o);
  clearTimeout(timer);
  console.log(JSON.stringify(summary));
  const ok = o.mode === 'publish'
    ? summary.acked === o.count
    : summary.handled === o.count && summary.missing.length === 0 && summary.doubled.length === 0 && summary.unexpected === 0;
  process.exit(ok && summary.probe.startsWith('INVALID_ARGUMENT') ? 0 : 1);
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(2);
});
