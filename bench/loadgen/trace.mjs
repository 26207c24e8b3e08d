#!/usr/bin/env node
// Editing-trace replay for bench/trace.py: one writer and one follower, stock y-websocket clients.
//
//   node trace.mjs replay --room-url 'ws://127.0.0.1:P/ws/{room}' --room NAME --trace FILE.json.gz
//                         [--window 0] [--timeout 600]
//   node trace.mjs reload --room-url ... --room NAME --trace FILE.json.gz [--timeout 120]
//
// replay: the writer applies every transaction of the trace ({endContent, txns: [{patches: [[pos,
// delete_count, insert_text], ...]}]}) to a Y.Text, one Yjs transaction each, so its provider sends
// one update per transaction, as an editor does per keystroke; while its socket is closed (the
// provider reconnects by itself) it waits. `--window N` bounds the transactions
// in flight (sent by the writer, not yet applied by the follower) to N; 0 = unlimited, in which case
// the writer only yields to the event loop every CHUNK transactions and while its socket holds more
// than HIGH_WATER bytes unsent (TCP backpressure: as fast as the server takes it). The follower's
// progress is read from its own state: after transaction i the writer has (own clock c_i, text
// length l_i); updates from one writer integrate in order, so the follower is at the last i with
// c_i = its clock of the writer and l_i = its text length (within a run of delete-only
// transactions the clock stays and the length strictly falls). Done when the follower has every
// transaction; it must then hold `endContent`.
// reload: a fresh client connects and waits until its text equals `endContent`.
//
// Prints one JSON line on stdout; "@phase NAME" markers on stderr let bench/trace.py read the
// server's CPU at the edges of the replay.
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { gunzipSync } from 'node:zlib'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { yWebsocketClient } from './clients.mjs'

const CHUNK = 256 // window 0: transactions between two yields to the event loop
const HIGH_WATER = 1 << 20 // window 0: pause while the writer's socket holds more than this unsent

const { positionals, values: opt } = parseArgs({
  allowPositionals: true,
  options: {
    'room-url': { type: 'string' },
    room: { type: 'string' },
    trace: { type: 'string' },
    window: { type: 'string', default: '0' },
    timeout: { type: 'string', default: '600' }
  }
})
const mode = positionals[0]
if (!['replay', 'reload'].includes(mode) || !opt['room-url']?.endsWith('/{room}') || !opt.room || !opt.trace) {
  console.error('usage: trace.mjs replay|reload --room-url URL/{room} --room NAME --trace FILE [--window N] [--timeout S]')
  process.exit(2)
}
const serverUrl = opt['room-url'].slice(0, -'/{room}'.length)
const windowSize = Math.max(0, Math.floor(Number(opt.window)))
const timeoutMs = Number(opt.timeout) * 1000
const log = (...a) => console.error('[trace]', ...a)
const phase = (name) => console.error(`@phase ${name}`)
const t0 = performance.now()
const now = () => performance.now() - t0
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const round = (v, d = 3) => Math.round(v * 10 ** d) / 10 ** d

const trace = JSON.parse(gunzipSync(readFileSync(opt.trace)).toString('utf8'))
const txns = trace.txns
const endContent = trace.endContent
const open = await yWebsocketClient(WebSocket)

// A client that counts its disconnects after the first sync and remembers the close codes.
const client = (name) => {
  const doc = new Y.Doc()
  const c = open(serverUrl, opt.room, doc)
  const s = { name, doc, text: doc.getText('text'), c, synced: false, disconnects: 0, closeCodes: [] }
  c.onClose((event) => {
    if (!s.synced) return
    s.disconnects++
    s.closeCodes.push(event?.code ?? null)
    log(`${name} disconnected (code ${event?.code}) at ${(now() / 1000).toFixed(1)} s`)
  })
  s.ready = new Promise((resolve) => c.onSynced(() => { s.synced = true; resolve() }))
  return s
}

const withTimeout = (promise, ms) => Promise.race([promise.then(() => true), sleep(ms).then(() => false)])
const finish = (result) => process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0))

if (mode === 'reload') {
  const reader = client('reader')
  let done
  const complete = new Promise((resolve) => { done = resolve })
  const check = () => { if (reader.text.length === endContent.length && reader.text.toString() === endContent) done() }
  reader.doc.on('update', check)
  const synced = await withTimeout(reader.ready, timeoutMs)
  const syncedS = now() / 1000
  check()
  const ok = synced && await withTimeout(complete, Math.max(0, timeoutMs - now()))
  const result = {
    reload_ok: ok,
    reload_s: ok ? round(now() / 1000) : null,
    reload_synced_s: synced ? round(syncedS) : null,
    reload_chars: reader.text.length,
    reload_disconnects: reader.disconnects
  }
  reader.c.provider.destroy()
  finish(result)
} else {
  const n = txns.length
  const writer = client('writer')
  const follower = client('follower')
  if (!(await withTimeout(Promise.all([writer.ready, follower.ready]), 30000))) {
    finish({ error: 'writer or follower did not sync within 30 s' })
  } else {
    const me = writer.doc.clientID
    const clockAt = new Float64Array(n)
    const lenAt = new Float64Array(n)
    let sent = 0
    let progress = 0 // transactions the follower has applied
    let maxInFlight = 0
    let wake = null // resolves when the follower advanced
    let finished
    const complete = new Promise((resolve) => { finished = resolve })
    follower.doc.on('update', (_update, origin) => {
      if (origin !== follower.c.provider) return
      const clock = Y.getState(follower.doc.store, me)
      const len = follower.text.length
      while (progress < sent && (clockAt[progress] < clock || (clockAt[progress] === clock && lenAt[progress] >= len))) progress++
      if (wake) { wake(); wake = null }
      if (progress === n) finished()
    })
    const advanced = () => new Promise((resolve) => { wake = resolve })
    const socket = () => writer.c.socket()

    phase('replay_start')
    const start = now()
    const deadline = start + timeoutMs
    let reconnectWaitMs = 0
    for (let i = 0; i < n && now() < deadline; i++) {
      if (!writer.c.connected()) {
        // closed by the server (e.g. a rate limit): the provider reconnects and resends what the
        // server lacks in one sync step 2; keep typing only once the socket is back
        const t = now()
        while (!writer.c.connected() && now() < deadline) await sleep(1)
        reconnectWaitMs += now() - t
      }
      if (windowSize > 0) {
        while (i - progress >= windowSize && now() < deadline) await Promise.race([advanced(), sleep(1000)])
      } else if (i % CHUNK === 0) {
        await new Promise(setImmediate)
        while ((socket()?.bufferedAmount ?? 0) > HIGH_WATER && now() < deadline) await sleep(1)
      }
      writer.doc.transact(() => {
        for (const [pos, del, ins] of txns[i].patches) {
          if (del > 0) writer.text.delete(pos, del)
          if (ins) writer.text.insert(pos, ins)
        }
      })
      clockAt[i] = Y.getState(writer.doc.store, me)
      lenAt[i] = writer.text.length
      sent = i + 1
      maxInFlight = Math.max(maxInFlight, sent - progress)
    }
    const sentAt = now()
    const lagAtSendEnd = sent - progress
    const ok = sent === n && (progress === n || await withTimeout(complete, Math.max(0, deadline - now())))
    const end = now()
    phase('replay_end')
    const followerText = follower.text.toString()
    const result = {
      transactions: n,
      window: windowSize,
      sent,
      replay_ok: ok,
      replay_s: ok ? round((end - start) / 1000) : null,
      txn_per_s: ok ? Math.round(n / ((end - start) / 1000)) : null,
      send_s: round((sentAt - start) / 1000),
      follower_lag_txns_at_send_end: lagAtSendEnd,
      follower_catchup_s: ok ? round((end - sentAt) / 1000) : null,
      max_in_flight: maxInFlight,
      writer_text_ok: writer.text.toString() === endContent,
      follower_text_ok: followerText === endContent,
      follower_chars: followerText.length,
      end_chars: endContent.length,
      follower_disconnects: follower.disconnects,
      follower_close_codes: [...follower.closeCodes], // copies: destroy() below closes once more
      writer_disconnects: writer.disconnects,
      writer_reconnect_wait_s: round(reconnectWaitMs / 1000),
      writer_close_codes: [...writer.closeCodes]
    }
    writer.c.provider.destroy()
    follower.c.provider.destroy()
    finish(result)
  }
}
