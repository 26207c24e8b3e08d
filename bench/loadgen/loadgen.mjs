#!/usr/bin/env node
// Load generator for the canvashub benchmark.
//
// Opens R rooms x C stock y-websocket clients (one Y.Doc + WebsocketProvider each), makes every
// client set its own key in doc.getMap('elements') U times a second, and measures how long each
// update takes until every other client of the room has applied it. Prints exactly one JSON
// line on stdout; logs and phase markers ("@phase NAME", read by bench/run.py to window its CPU
// sampling) go to stderr. See bench/README.md for the meaning of every field.
// With --client hocuspocus the clients are stock @hocuspocus/provider HocuspocusProviders (one
// socket each, document name = room) instead of y-websocket providers; everything else is the same.
// With --events (canvashub only) every client opts in to save events (?events=1) and the output
// also carries the durable-ack latency: edit -> the `saved` event whose clock covers it.
//
// Why worker threads: a stock client pays ~50-100 us of Yjs work per received update in a
// 100-client room (state vectors are recomputed per transaction), so one thread running 100
// clients saturates on the fan-out shape and measures its own queue. Clients are spread over
// --threads workers (round-robin, so every room's receivers are split too); all timestamps use
// process.hrtime (one monotonic clock for every thread) and the per-update bookkeeping lives in
// SharedArrayBuffers updated with Atomics.
import { parseArgs } from 'node:util'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'
import { hocuspocusClient, yWebsocketClient } from './clients.mjs'

const OPTIONS = {
  'room-url': { type: 'string' }, // e.g. ws://127.0.0.1:8000/ws/{room}
  rooms: { type: 'string', default: '1' },
  clients: { type: 'string', default: '2' }, // per room (idle mode: room size)
  rate: { type: 'string', default: '1' }, // updates per second per client
  'awareness-rate': { type: 'string', default: '0' }, // cursor moves per second per client
  duration: { type: 'string', default: '15' }, // measurement window, s
  warmup: { type: 'string', default: '3' }, // sending before the window, s
  drain: { type: 'string', default: '5' }, // max wait after the window for late deliveries, s
  idle: { type: 'string', default: '0' }, // N > 0: idle mode with N connections
  settle: { type: 'string', default: '3' }, // idle mode: wait after all synced, s
  threads: { type: 'string', default: '2' },
  'connect-concurrency': { type: 'string', default: '64' },
  'connect-timeout': { type: 'string', default: '60' }, // s, per connect stage
  'room-prefix': { type: 'string', default: '' },
  seed: { type: 'string', default: '1' },
  client: { type: 'string', default: 'y-websocket' }, // or 'hocuspocus' (@hocuspocus/provider)
  events: { type: 'boolean', default: false } // opt in to canvashub save events (?events=1), report durable-ack latency
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const log = (...a) => console.error('[loadgen]', ...a)

// Shared counters (Int32Array slots)
const PENDING = 0 // measured updates not yet applied by every receiver
const ACK_PENDING = 1 // --events: measured edits not yet covered by a `saved` event
const MSG_EVENT = 100 // canvashub event frame: [100, varString(json)]
const RENEW_MS = 15000 // y-protocols awareness: outdatedTimeout / 2
const MAX_US = 2 ** 31 - 1
const CLIENTS = ['y-websocket', 'hocuspocus']

const config = () => {
  const { values: opt } = parseArgs({ options: OPTIONS })
  const num = (k) => {
    const v = Number(opt[k])
    if (!Number.isFinite(v) || v < 0) throw new Error(`--${k} must be a non-negative number`)
    return v
  }
  // Several comma-separated URLs (several server processes): a room's clients are spread over them.
  const templates = (opt['room-url'] || '').split(',').filter(Boolean)
  if (!templates.length || !templates.every((t) => t.endsWith('/{room}'))) {
    throw new Error("--room-url must be given and end with '/{room}', e.g. ws://127.0.0.1:8000/ws/{room}")
  }
  const template = templates.join(',')
  const idle = Math.floor(num('idle'))
  const C = Math.max(1, Math.floor(num('clients')))
  const R = idle > 0 ? Math.ceil(idle / C) : Math.max(1, Math.floor(num('rooms')))
  if (!CLIENTS.includes(opt.client)) throw new Error(`--client: one of ${CLIENTS.join(', ')}`)
  if (opt.client === 'hocuspocus' && opt.events) throw new Error('--events needs --client y-websocket (canvashub)')
  const prefix = opt['room-prefix'] || `b${Date.now().toString(36)}`
  if (!/^[A-Za-z0-9_-]{1,40}$/.test(prefix)) throw new Error('--room-prefix: [A-Za-z0-9_-]{1,40}')
  const cfg = {
    template,
    serverUrls: templates.map((t) => t.slice(0, -'/{room}'.length)), // the provider appends '/' + room
    idle,
    C,
    R,
    N: idle > 0 ? idle : R * C,
    rate: idle > 0 ? 0 : num('rate'),
    arate: idle > 0 ? 0 : num('awareness-rate'),
    duration: num('duration') * 1000,
    warmup: num('warmup') * 1000,
    drain: num('drain') * 1000,
    settle: num('settle') * 1000,
    threads: Math.max(1, Math.floor(num('threads'))),
    conc: Math.max(1, Math.floor(num('connect-concurrency'))),
    connectTimeout: num('connect-timeout') * 1000,
    prefix,
    seed: Math.floor(num('seed')),
    client: opt.client,
    events: Boolean(opt.events)
  }
  // seq slots per client: every send the schedule can make
  cfg.maxSeq = Math.ceil((cfg.rate * (cfg.warmup + cfg.duration)) / 1000) + 2
  return cfg
}

const pct = (arr, p) => {
  if (arr.length === 0) return null
  const i = Math.min(arr.length - 1, Math.max(0, Math.ceil((p / 100) * arr.length) - 1))
  return Math.round(arr[i] * 1000) / 1000
}
const summary = (arr) => {
  arr.sort((a, b) => a - b)
  return { n: arr.length, p50: pct(arr, 50), p95: pct(arr, 95), p99: pct(arr, 99), max: pct(arr, 100) }
}

// =============================================================================== coordinator
const coordinator = async () => {
  const cfg = config()
  const base = process.hrtime.bigint()
  const now = () => Number(process.hrtime.bigint() - base) / 1e6
  const phase = (name) => console.error(`@phase ${name}`)
  const slots = cfg.N * Math.max(1, cfg.maxSeq)
  const shared = {
    sendT: new SharedArrayBuffer(8 * slots), // ms since base at send, 0 = not sent
    remaining: new SharedArrayBuffer(4 * slots), // receivers still to apply a measured update
    maxLatUs: new SharedArrayBuffer(4 * slots), // slowest receiver so far, microseconds
    synced: new SharedArrayBuffer(4 * cfg.N),
    counters: new SharedArrayBuffer(4 * 4)
  }
  const counters = new Int32Array(shared.counters)
  log(`${cfg.idle > 0 ? 'idle' : 'load'}: ${cfg.N} clients in ${cfg.R} rooms of ${cfg.C} at ${cfg.template}, ${cfg.threads} threads`)

  const workers = Array.from({ length: cfg.threads }, (_, w) => {
    const worker = new Worker(new URL(import.meta.url), { workerData: { cfg, base, shared, w } })
    worker.on('error', (e) => { log('worker failed:', e?.stack ?? e); process.exit(2) })
    worker.on('exit', (code) => { if (code !== 0) { log(`worker exited with ${code}`); process.exit(2) } })
    return worker
  })
  const ask = (msg) => Promise.all(workers.map((worker) => new Promise((resolve) => {
    worker.once('message', resolve)
    worker.postMessage(msg)
  })))

  await ask({ cmd: 'init' })
  phase('connect_start')
  const t0c = now()
  // stage 0: the first client of every room; stage 1: the rest. Opening a brand-new room from
  // many sockets in the same instant is a separate (pathological) test, not this one.
  for (const stage of [0, 1]) await ask({ cmd: 'connect', stage, deadline: now() + cfg.connectTimeout })
  const connectTotal = now() - t0c
  const connected = Int32Array.from(new Int32Array(shared.synced)).reduce((a, b) => a + b, 0)
  log(`connected ${connected}/${cfg.N} in ${connectTotal.toFixed(0)} ms`)
  phase('connected')

  const t0 = now() + 50 // time for the start message to reach every worker
  const win = cfg.idle > 0
    ? { start: t0 + cfg.settle, end: t0 + cfg.settle + cfg.duration }
    : { start: t0 + cfg.warmup, end: t0 + cfg.warmup + cfg.duration }
  await ask({ cmd: 'start', t0, win })
  await sleep(Math.max(0, win.start - now()))
  phase('measure_start')
  const cpu0 = process.cpuUsage() // process-wide: all threads
  await sleep(Math.max(0, win.end - now()))
  phase('measure_end')
  const cpu = process.cpuUsage(cpu0)
  const windowMs = now() - win.start
  // drain: wait (bounded) for measured updates still in flight
  const drainEnd = now() + cfg.drain
  while ((Atomics.load(counters, PENDING) > 0 || Atomics.load(counters, ACK_PENDING) > 0) && now() < drainEnd) await sleep(20)

  const reports = await ask({ cmd: 'report' })
  const remaining = new Int32Array(shared.remaining)
  const errors = { connect_failed: 0, connection_errors: 0, disconnects: 0, undelivered_updates: 0, undelivered_applications: 0 }
  for (const r of reports) for (const k in r.errors) errors[k] += r.errors[k]
  for (let k = 0; k < remaining.length; k++) {
    if (remaining[k] > 0) {
      errors.undelivered_updates++
      errors.undelivered_applications += remaining[k]
    }
  }
  const cat = (key) => reports.flatMap((r) => Array.from(r[key]))
  const sum = (key) => reports.reduce((a, r) => a + r[key], 0)
  const windowS = windowMs / 1000
  const perReceiver = summary(cat('receiverLat'))
  const roomSizes = Array.from({ length: cfg.R }, (_, r) => Math.floor((cfg.N - 1 - r) / cfg.R) + 1)
  const result = {
    mode: cfg.idle > 0 ? 'idle' : 'load',
    rooms: cfg.R,
    clients_per_room: cfg.C,
    connections: cfg.N,
    rate: cfg.rate,
    awareness_rate: cfg.arate,
    threads: cfg.threads,
    window_s: Math.round(windowS * 100) / 100,
    connect_total_ms: Math.round(connectTotal),
    connect_ms: summary(cat('connectMs')),
    connected,
    permessage_deflate: sum('deflate'),
    sent_updates: sum('sentMeasured'),
    delivered_updates_per_s: Math.round(sum('appsInWindow') / windowS),
    expected_updates_per_s: Math.round(roomSizes.reduce((a, n) => a + n * (n - 1), 0) * cfg.rate),
    latency_ms: summary(cat('updateLat')),
    receiver_latency_ms: { n: perReceiver.n, p50: perReceiver.p50, p99: perReceiver.p99 },
    awareness_per_s: Math.round(sum('awarenessInWindow') / windowS),
    awareness_latency_ms: cfg.arate > 0 ? summary(cat('awarenessLat')) : null,
    frames_in_per_s: Math.round(sum('framesInWindow') / windowS),
    errors: { total: Object.values(errors).reduce((a, b) => a + b, 0) - errors.undelivered_applications, ...errors },
    // this process's CPU (all threads, 100 = one core) and worst event-loop lag of its
    // threads: high values mean the load generator itself is the bottleneck
    loadgen_cpu_pct: Math.round(((cpu.user + cpu.system) / 1000 / windowMs) * 1000) / 10,
    loadgen_loop_lag_ms: {
      p99: Math.max(...reports.map((r) => r.lagP99)),
      max: Math.max(...reports.map((r) => r.lagMax))
    }
  }
  if (cfg.events) {
    // durable acks: per measured edit, edit -> the first `saved` event whose clock covers it
    const acks = cat('ackLat').sort((a, b) => a - b)
    Object.assign(result, {
      ack_p50_ms: pct(acks, 50),
      ack_p99_ms: pct(acks, 99),
      ack_max_ms: pct(acks, 100),
      acks: acks.length,
      unacked: sum('unacked'),
      save_events: {
        saved: sum('evSaved'),
        retrying: sum('evRetrying'),
        failed: sum('evFailed'),
        other: sum('evOther')
      }
    })
  }
  phase('done')
  await Promise.race([ask({ cmd: 'close' }), sleep(3000)]) // close sockets politely, bounded
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0))
}

// =============================================================================== worker
const workerMain = async () => {
  const { default: WebSocket } = await import('ws')
  const Y = await import('yjs')
  const { cfg, base, shared, w } = workerData
  const openClient = await (cfg.client === 'hocuspocus' ? hocuspocusClient : yWebsocketClient)(WebSocket)
  const decoding = cfg.events ? await import('lib0/decoding') : null // lib0 comes with yjs
  process.setMaxListeners(0) // every provider adds a process 'exit' listener
  const now = () => Number(process.hrtime.bigint() - base) / 1e6
  const sendT = new Float64Array(shared.sendT)
  const remaining = new Int32Array(shared.remaining)
  const maxLatUs = new Int32Array(shared.maxLatUs)
  const synced = new Int32Array(shared.synced)
  const counters = new Int32Array(shared.counters)
  const M = cfg.maxSeq

  // mulberry32: a seeded PRNG so start jitter and cursor positions are reproducible
  let seed = ((cfg.seed * 1000003 + w) >>> 0) || 1
  const rand = () => {
    seed = (seed + 0x6D2B79F5) >>> 0
    let t = seed
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  let win = { start: Infinity, end: Infinity }
  const inWindow = (t) => t >= win.start && t < win.end
  const errors = { connect_failed: 0, connection_errors: 0, disconnects: 0 }
  const updateLat = []
  const receiverLat = []
  const awarenessLat = []
  const connectMs = []
  let appsInWindow = 0
  let awarenessInWindow = 0
  let framesInWindow = 0
  let sentMeasured = 0
  const ackLat = [] // --events: edit -> covering `saved` event, ms (measured edits only)
  let evSaved = 0
  let evRetrying = 0
  let evFailed = 0
  let evOther = 0

  // Client idx is member j = floor(idx / R) of room idx % R: rooms differ in size by at most
  // one (a lone client would get no traffic and the provider drops sockets silent for 30 s),
  // and member j runs on thread j % threads, so every room's receivers are split over threads.
  const mine = []
  for (let idx = 0; idx < cfg.N; idx++) {
    const j = Math.floor(idx / cfg.R)
    if (j % cfg.threads !== w) continue
    // unacked (--events): measured edits not yet durable, in clock order: [clock after the edit, edit time]
    mine.push({ idx, room: idx % cfg.R, first: j === 0, doc: null, provider: null, client: null, synced: false, seq: 0, others: 0, lastSeen: new Map(), unacked: [], ackHead: 0 })
  }

  // Yjs integrates a client's updates in order, so when seq n of a sender shows up every
  // earlier seq of that sender is applied too (a server may also merge several updates).
  const onApplied = (receiver, sender, seq, t) => {
    const from = (receiver.lastSeen.get(sender) ?? 0) + 1
    if (seq < from || seq >= M) return
    receiver.lastSeen.set(sender, seq)
    for (let s = from; s <= seq; s++) {
      const k = sender * M + s
      const sent = sendT[k]
      if (!(sent > 0)) continue // never sent (or beyond the slots)
      if (inWindow(t)) appsInWindow++
      if (Atomics.load(remaining, k) <= 0) continue // not a measured update
      const lat = t - sent
      receiverLat.push(lat)
      const us = Math.min(MAX_US, Math.round(lat * 1000))
      for (let cur = Atomics.load(maxLatUs, k); us > cur; cur = Atomics.load(maxLatUs, k)) {
        if (Atomics.compareExchange(maxLatUs, k, cur, us) === cur) break
      }
      if (Atomics.sub(remaining, k, 1) === 1) { // we were the last receiver
        updateLat.push(Atomics.load(maxLatUs, k) / 1000)
        Atomics.sub(counters, PENDING, 1)
      }
    }
  }

  const setup = (c) => {
    c.doc = new Y.Doc()
    const started = now()
    const serverUrl = cfg.serverUrls[Math.floor(c.idx / cfg.R) % cfg.serverUrls.length]
    const client = openClient(serverUrl, `${cfg.prefix}-r${c.room}`, c.doc, cfg.events ? { events: '1' } : {})
    const provider = client.provider
    c.provider = provider
    c.client = client
    if (cfg.events) {
      // canvashub save events: {"type":"save","status":"saved",...,"clock":{"<clientID>": C}}. An
      // edit after which this doc's own clock was c is durable once a saved event has clock >= c.
      const me = String(c.doc.clientID)
      provider.messageHandlers[MSG_EVENT] = (_encoder, decoder) => {
        const t = now()
        let ev
        try { ev = JSON.parse(decoding.readVarString(decoder)) } catch { evOther++; return }
        if (ev?.type !== 'save') { evOther++; return }
        if (ev.status === 'retrying') { evRetrying++; return }
        if (ev.status === 'failed') { evFailed++; return }
        if (ev.status !== 'saved') { evOther++; return }
        evSaved++
        const clock = Number(ev.clock?.[me] ?? 0)
        const q = c.unacked
        while (c.ackHead < q.length && q[c.ackHead][0] <= clock) {
          ackLat.push(t - q[c.ackHead][1])
          c.ackHead++
          Atomics.sub(counters, ACK_PENDING, 1)
        }
      }
    }
    client.onConnectionError(() => { errors.connection_errors++ })
    client.onClose(() => { if (c.synced) errors.disconnects++ })
    client.onFrame(() => { if (inWindow(now())) framesInWindow++ })
    c.doc.getMap('elements').observe((event, tr) => {
      if (tr.origin !== provider) return // only remote changes, delivered through the server
      const t = now()
      for (const key of event.keysChanged) {
        const sender = Number(key.slice(1))
        const v = event.target.get(key)
        if (Number.isInteger(sender) && sender < cfg.N && sender !== c.idx && v && Number.isInteger(v.s)) onApplied(c, sender, v.s, t)
      }
    })
    client.awareness.on('change', ({ added, updated }, origin) => {
      if (origin !== provider) return
      const t = now()
      if (!inWindow(t)) return
      for (const id of added.concat(updated)) {
        const cur = client.awareness.getStates().get(id)?.cursor
        if (id === c.doc.clientID || !cur || typeof cur.t !== 'number') continue
        awarenessInWindow++
        awarenessLat.push(t - cur.t)
      }
    })
    return new Promise((resolve) => {
      client.onSynced(() => {
        if (!c.synced) {
          c.synced = true
          Atomics.store(synced, c.idx, 1)
          connectMs.push(now() - started)
          resolve()
        }
      })
    })
  }

  const connectStage = async (stage, deadline) => {
    const todo = mine.filter((c) => c.first === (stage === 0))
    let next = 0
    const worker = async () => {
      while (next < todo.length && now() < deadline) {
        const c = todo[next++]
        let timer
        await Promise.race([setup(c), new Promise((resolve) => { timer = setTimeout(resolve, Math.max(0, deadline - now())) })])
        clearTimeout(timer)
      }
    }
    await Promise.all(Array.from({ length: Math.min(Math.ceil(cfg.conc / cfg.threads), todo.length) }, worker))
    for (const c of todo) {
      if (!c.synced) {
        errors.connect_failed++
        if (c.provider) c.provider.destroy()
        c.provider = null
      }
    }
  }

  // Every client sends on its own fixed-period schedule with a random phase, so the total
  // load is spread evenly instead of arriving in bursts; late timers catch up without
  // drifting. Bounded: each chain ends by itself at `stop`.
  const schedule = (perSec, start, stop, fn) => {
    if (perSec <= 0) return
    const period = 1000 / perSec
    let next = start + rand() * period
    const tick = () => {
      if (next >= stop) return
      fn(now())
      next += period
      setTimeout(tick, Math.max(0, next - now()))
    }
    setTimeout(tick, Math.max(0, next - now()))
  }

  const sendUpdate = (c, t) => {
    const seq = ++c.seq
    if (seq >= M) return
    const k = c.idx * M + seq
    if (inWindow(t) && c.others > 0) {
      Atomics.store(remaining, k, c.others)
      Atomics.add(counters, PENDING, 1)
      sentMeasured++
    }
    sendT[k] = t // before the send: receivers only read it after the update crossed the network
    // a small element move: a ~50-byte Yjs update
    c.doc.getMap('elements').set(`c${c.idx}`, { s: seq, t, x: Math.floor(rand() * 4000), y: Math.floor(rand() * 4000) })
    if (cfg.events && inWindow(t)) {
      // the provider sent the update synchronously inside set(): t is the edit time
      c.unacked.push([Y.getState(c.doc.store, c.doc.clientID), t])
      Atomics.add(counters, ACK_PENDING, 1)
    }
  }

  const sendCursor = (c, t) => {
    c.client.awareness.setLocalStateField('cursor', { x: Math.floor(rand() * 4000), y: Math.floor(rand() * 4000), t })
  }

  const lag = monitorEventLoopDelay({ resolution: 10 })
  // monitorEventLoopDelay reports the timer interval (10 ms resolution + lag) in ns
  const lagMs = (ns) => Math.round(Math.max(0, ns / 1e6 - 10) * 100) / 100

  parentPort.on('message', async (msg) => {
    if (msg.cmd === 'init') {
      parentPort.postMessage('ok')
    } else if (msg.cmd === 'connect') {
      await connectStage(msg.stage, msg.deadline)
      parentPort.postMessage('ok')
    } else if (msg.cmd === 'start') {
      win = msg.win
      const live = mine.filter((c) => c.synced)
      for (const c of live) {
        for (let i = c.room; i < cfg.N; i += cfg.R) c.others += i !== c.idx ? Atomics.load(synced, i) : 0
        schedule(cfg.rate, msg.t0, win.end, (t) => sendUpdate(c, t))
        schedule(cfg.arate, msg.t0, win.end, (t) => sendCursor(c, t))
        // All clients connected within a second, so the provider's 15 s awareness renewals
        // would fire as one burst (a 100-client room: 9,900 applies in this process within
        // ~3 s), unlike a real room whose clients joined at different times. Renew each client
        // once at a random moment of the first 15 s - the very call the awareness timer makes -
        // so later renewals are spread as in a real room.
        if (cfg.arate === 0) {
          const aw = c.client.awareness
          setTimeout(() => { if (c.provider) aw.setLocalState(aw.getLocalState()) }, Math.max(0, msg.t0 + rand() * RENEW_MS - now()))
        }
      }
      setTimeout(() => lag.enable(), Math.max(0, win.start - now()))
      setTimeout(() => lag.disable(), Math.max(0, win.end - now()))
      parentPort.postMessage('ok')
    } else if (msg.cmd === 'report') {
      const live = mine.filter((c) => c.synced)
      parentPort.postMessage({
        errors,
        connectMs: Float64Array.from(connectMs),
        updateLat: Float64Array.from(updateLat),
        receiverLat: Float64Array.from(receiverLat),
        awarenessLat: Float64Array.from(awarenessLat),
        appsInWindow,
        awarenessInWindow,
        framesInWindow,
        sentMeasured,
        ackLat: Float64Array.from(ackLat),
        unacked: live.reduce((a, c) => a + c.unacked.length - c.ackHead, 0),
        evSaved,
        evRetrying,
        evFailed,
        evOther,
        deflate: live.filter((c) => /permessage-deflate/.test(c.client.socket()?.extensions ?? '')).length,
        lagP99: lagMs(lag.percentile(99)),
        lagMax: lagMs(lag.max)
      })
    } else if (msg.cmd === 'close') {
      for (const c of mine) if (c.provider) c.provider.destroy()
      parentPort.postMessage('ok')
    }
  })
}

if (isMainThread) {
  coordinator().catch((e) => {
    log('fatal:', e?.stack ?? e)
    process.exit(2)
  })
} else {
  workerMain().catch((e) => {
    console.error('[loadgen worker] fatal:', e?.stack ?? e)
    process.exit(2)
  })
}
