// A stock y-websocket client driven over stdin/stdout, for tests/test_interop_yjs.py.
//
//   node client.mjs <ws-url-base> <room> [options-json]
//
// One WebsocketProvider (y-websocket 3.x, WebSocketPolyfill = ws) on its own Y.Doc,
// connecting to `${base}/${room}`. options-json: {"connect": false} starts offline;
// {"events": true} opts into canvashub events (?events=1) and handles message type 100
// with the provider's documented per-instance `messageHandlers` hook. {"token": "..."} sends an
// access token as ?token=, {"protocols": [...]} offers WebSocket subprotocols (e.g. ["canvashub", token]).
//
// stdin:  one JSON command per line, {"id": 1, "cmd": "set", ...}
// stdout: one JSON object per line, either a reply {"id": 1, "ok": true, "result": ...}
//         / {"id": 1, "ok": false, "error": "..."} or an event {"event": ...}:
//   {"event":"status","status":"connecting"|"connected"|"disconnected"}
//   {"event":"synced"}
//   {"event":"update","origin":"remote"|"local","bytes":n}
//   {"event":"awareness","states":{clientId: state}}
//   {"event":"closed","code":n|null,"reason":s}   (every socket close; code null = closed locally)
//   {"event":"closed","code":n,"reason":s,"terminal":true}   (provider gave up: 4400-4499)
//   {"event":"ready","clientID":n}   (first line, before any command is read)
//   {"event":"canvashub","payload":{...}}   (a canvashub event, e.g. {"type":"save",...})
//   {"event":"unknown-message","type":n}   (the provider would have logged "Unable to compute message")
//
// Shared types: Y.Map('elements') of nested Y.Maps, and Y.Text('text').

import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'

import * as decoding from 'lib0/decoding'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

// stdout is the protocol channel: nothing else may print to it.
console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)

const [base, room, optionsJson] = process.argv.slice(2)
if (!base || !room) {
  console.error('usage: node client.mjs <ws-url-base> <room> [options-json]')
  process.exit(2)
}
const options = optionsJson ? JSON.parse(optionsJson) : {}

const emit = (obj) => {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const doc = new Y.Doc()
const elements = doc.getMap('elements')
const text = doc.getText('text')

const provider = new WebsocketProvider(base, room, doc, {
  WebSocketPolyfill: WebSocket,
  connect: options.connect !== false,
  params: { ...(options.events ? { events: '1' } : {}), ...(options.token ? { token: options.token } : {}) },
  protocols: options.protocols ?? []
})
const MESSAGE_EVENT = 100
if (options.events) {
  provider.messageHandlers[MESSAGE_EVENT] = (_encoder, decoder) => {
    emit({ event: 'canvashub', payload: JSON.parse(decoding.readVarString(decoder)) })
  }
}
// Anything else the stock provider cannot handle is reported, so tests can assert it never happens.
for (let type = 0; type < 256; type++) {
  if (!provider.messageHandlers[type]) {
    provider.messageHandlers[type] = () => emit({ event: 'unknown-message', type })
  }
}
const awareness = provider.awareness

provider.on('status', ({ status }) => emit({ event: 'status', status }))
provider.on('synced', (state) => { if (state) emit({ event: 'synced' }) })
provider.on('connection-close', (event) => {
  emit({ event: 'closed', code: event ? event.code : null, reason: event ? event.reason : null })
})
provider.on('closed', ({ code, reason }) => emit({ event: 'closed', code, reason, terminal: true }))

// Cheap: no payload, only its size (the 1 MB test must not echo megabytes).
doc.on('update', (update, origin) => {
  emit({ event: 'update', origin: origin === provider ? 'remote' : 'local', bytes: update.length })
})

const awarenessStates = () => {
  const states = {}
  for (const [clientId, state] of awareness.getStates()) states[clientId] = state
  return states
}
awareness.on('change', () => emit({ event: 'awareness', states: awarenessStates() }))

const nested = (key) => {
  const value = elements.get(key)
  if (!(value instanceof Y.Map)) throw new Error(`elements[${JSON.stringify(key)}] is not a Y.Map`)
  return value
}

const sha256 = (s) => createHash('sha256').update(s, 'utf8').digest('hex')

// Edits, usable on their own or inside "batch".
const edits = {
  // elements[key] = new Y.Map(fields)
  set ({ key, fields }) {
    const map = new Y.Map()
    for (const [field, value] of Object.entries(fields ?? {})) map.set(field, value)
    elements.set(key, map)
  },
  // elements[key][field] = value
  update ({ key, field, value }) {
    nested(key).set(field, value)
  },
  // delete elements[key], or elements[key][field] when field is given
  delete ({ key, field }) {
    if (field === undefined) elements.delete(key)
    else nested(key).delete(field)
  },
  insertText ({ index, text: value }) {
    text.insert(index, value)
  },
  // {index, length}
  deleteText ({ index, length }) {
    text.delete(index, length)
  },
  // Insert `pattern` repeated `count` times (a large text without a large stdin line).
  insertRepeat ({ index, pattern, count }) {
    text.insert(index, pattern.repeat(count))
  }
}

const read = ({ digest = false } = {}) => {
  const s = text.toString()
  const result = {
    elements: elements.toJSON(),
    clientID: doc.clientID,
    stateVector: Buffer.from(Y.encodeStateVector(doc)).toString('base64'),
    sv: Object.fromEntries(Y.decodeStateVector(Y.encodeStateVector(doc)))
  }
  if (digest) {
    result.textLength = s.length
    result.textSha256 = sha256(s)
  } else {
    result.text = s
  }
  return result
}

let exiting = false
const exit = (code = 0) => {
  if (exiting) return
  exiting = true
  try { provider.destroy() } catch (e) { console.error(e) }
  // stdout to a pipe is synchronous on Linux, so every line written is out already.
  process.exit(code)
}

const commands = {
  ...edits,
  // {ops: [{op: "set", ...}, ...], transact: true}: several edits in one go (one transaction
  // by default, so one update), so two clients can edit "at the same time".
  batch ({ ops, transact = true }) {
    const run = () => {
      for (const { op, ...args } of ops) {
        const edit = edits[op]
        if (!edit) throw new Error(`unknown batch op ${JSON.stringify(op)}`)
        edit(args)
      }
    }
    if (transact) doc.transact(run)
    else run()
    return { ops: ops.length }
  },
  awareness ({ state }) {
    awareness.setLocalState(state === undefined ? null : state)
    return { clientID: doc.clientID }
  },
  read,
  // This client's own Yjs clock (what canvashub's save events report as "clock")
  clock: () => Y.decodeStateVector(Y.encodeStateVector(doc)).get(doc.clientID) ?? 0,
  awarenessStates: () => awarenessStates(),
  probe: () => ({
    wsLastMessageReceived: provider.wsLastMessageReceived,
    now: Date.now(),
    wsconnected: provider.wsconnected,
    wsconnecting: provider.wsconnecting,
    synced: provider.synced,
    shouldConnect: provider.shouldConnect,
    wsUnsuccessfulReconnects: provider.wsUnsuccessfulReconnects
  }),
  disconnect () { provider.disconnect() },
  connect () { provider.connect() },
  destroy () { provider.destroy() },
  exit () { setImmediate(() => exit(0)) }
}

const handle = (line) => {
  if (!line.trim()) return
  let msg
  try {
    msg = JSON.parse(line)
  } catch (e) {
    emit({ event: 'error', error: `bad JSON on stdin: ${e.message}` })
    return
  }
  const { id, cmd, ...args } = msg
  const fn = commands[cmd]
  if (!fn) {
    emit({ id, ok: false, error: `unknown command ${JSON.stringify(cmd)}` })
    return
  }
  try {
    const result = fn(args)
    emit({ id, ok: true, result: result === undefined ? null : result })
  } catch (e) {
    emit({ id, ok: false, error: String(e && e.stack ? e.stack : e) })
  }
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', handle)
rl.on('close', () => exit(0)) // the test process went away: do not linger
process.on('uncaughtException', (e) => {
  emit({ event: 'error', error: String(e && e.stack ? e.stack : e) })
})

emit({ event: 'ready', clientID: doc.clientID })
