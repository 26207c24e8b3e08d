// A stock @hocuspocus/provider client driven over stdin/stdout, for tests/test_hocuspocus.py.
//
//   node hocuspocus_client.mjs <ws-url> <document[,document...]> [options-json]
//
// One HocuspocusProviderWebsocket (WebSocketPolyfill = ws) to <ws-url>, and one HocuspocusProvider
// per document on it, each with its own Y.Doc (Y.Map('elements') of nested Y.Maps, Y.Text('text')),
// as Tiptap's collaboration extension sets them up. options-json: {"token": "..."} (every document),
// {"tokens": {"doc": "..."}} (per document), {"connect": false} starts offline.
//
// stdin:  one JSON command per line, {"id": 1, "cmd": "set", "doc": "a", ...} ("doc" defaults to
//         the first document)
// stdout: replies {"id": 1, "ok": true, "result": ...} / {"id": 1, "ok": false, "error": "..."} and
//         events, one JSON object per line:
//   {"event":"ready","clientIDs":{doc: n}}   (first line)
//   {"event":"status","status":"connecting"|"connected"|"disconnected"}   (the socket)
//   {"event":"disconnect","code":n,"reason":s}                            (the socket closed)
//   {"event":"authenticated","doc":d,"scope":"read-write"|"readonly"}
//   {"event":"authenticationFailed","doc":d,"reason":s}
//   {"event":"synced","doc":d}
//   {"event":"unsynced","doc":d,"number":n}   (provider.unsyncedChanges changed)
//   {"event":"close","doc":d,"code":n,"reason":s}   (the socket closed, or the server closed d)
//   {"event":"stateless","doc":d,"payload":s}
//   {"event":"update","doc":d,"origin":"remote"|"local","bytes":n}
//   {"event":"awareness","doc":d,"states":{clientId: state}}

import { createInterface } from 'node:readline'

import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import WebSocket from 'ws'
import * as Y from 'yjs'

console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)

const [url, documentList, optionsJson] = process.argv.slice(2)
if (!url || !documentList) {
  console.error('usage: node hocuspocus_client.mjs <ws-url> <document[,document...]> [options-json]')
  process.exit(2)
}
const options = optionsJson ? JSON.parse(optionsJson) : {}
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const socket = new HocuspocusProviderWebsocket({
  url,
  WebSocketPolyfill: WebSocket,
  autoConnect: options.connect !== false,
  // Reconnect quickly in tests (the provider's default starts at 1 s).
  delay: 100,
  minDelay: 100,
  maxDelay: 1000
})
socket.on('status', ({ status }) => emit({ event: 'status', status }))
socket.on('disconnect', ({ event }) => emit({ event: 'disconnect', code: event?.code ?? null, reason: event?.reason ?? null }))

const providers = new Map()

const open = (name) => {
  const doc = new Y.Doc()
  const token = options.tokens?.[name] ?? options.token ?? null
  const provider = new HocuspocusProvider({ websocketProvider: socket, name, document: doc, token })
  provider.on('authenticated', ({ scope }) => emit({ event: 'authenticated', doc: name, scope }))
  provider.on('authenticationFailed', ({ reason }) => emit({ event: 'authenticationFailed', doc: name, reason }))
  provider.on('synced', ({ state }) => { if (state) emit({ event: 'synced', doc: name }) })
  provider.on('unsyncedChanges', ({ number }) => emit({ event: 'unsynced', doc: name, number }))
  provider.on('close', ({ event }) => emit({ event: 'close', doc: name, code: event?.code ?? null, reason: event?.reason ?? null }))
  provider.on('stateless', ({ payload }) => emit({ event: 'stateless', doc: name, payload }))
  doc.on('update', (update, origin) => {
    emit({ event: 'update', doc: name, origin: origin === provider ? 'remote' : 'local', bytes: update.length })
  })
  const states = () => {
    const out = {}
    for (const [clientId, state] of provider.awareness.getStates()) out[clientId] = state
    return out
  }
  provider.awareness.on('change', () => emit({ event: 'awareness', doc: name, states: states() }))
  provider.attach()
  providers.set(name, { provider, doc, states })
  return provider
}

const names = documentList.split(',').filter(Boolean)
for (const name of names) open(name)

const get = (name) => {
  const entry = providers.get(name ?? names[0])
  if (!entry) throw new Error(`no document ${JSON.stringify(name)}`)
  return entry
}
const nested = (doc, key) => {
  const value = doc.getMap('elements').get(key)
  if (!(value instanceof Y.Map)) throw new Error(`elements[${JSON.stringify(key)}] is not a Y.Map`)
  return value
}

const edits = {
  set (doc, { key, fields }) {
    const map = new Y.Map()
    for (const [field, value] of Object.entries(fields ?? {})) map.set(field, value)
    doc.getMap('elements').set(key, map)
  },
  update (doc, { key, field, value }) { nested(doc, key).set(field, value) },
  delete (doc, { key }) { doc.getMap('elements').delete(key) },
  insertText (doc, { index, text }) { doc.getText('text').insert(index, text) },
  deleteText (doc, { index, length }) { doc.getText('text').delete(index, length) }
}

const commands = {}
for (const [name, edit] of Object.entries(edits)) {
  commands[name] = ({ doc, ...args }) => { edit(get(doc).doc, args) }
}
Object.assign(commands, {
  read ({ doc }) {
    const d = get(doc).doc
    return { elements: d.getMap('elements').toJSON(), text: d.getText('text').toString(), clientID: d.clientID }
  },
  awareness ({ doc, state }) { get(doc).provider.awareness.setLocalState(state === undefined ? null : state) },
  awarenessStates ({ doc }) { return get(doc).states() },
  unsynced ({ doc }) { return get(doc).provider.unsyncedChanges },
  scope ({ doc }) { return get(doc).provider.authorizedScope ?? null },
  stateless ({ doc, payload }) { get(doc).provider.sendStateless(payload) },
  attach ({ doc }) { open(doc) },
  detach ({ doc }) {
    const entry = get(doc)
    entry.provider.detach()
    providers.delete(doc)
  },
  disconnect () { socket.disconnect() },
  connect () { socket.connect() },
  exit () {
    setImmediate(() => {
      try { for (const { provider } of providers.values()) provider.destroy() } catch (e) { console.error(e) }
      try { socket.destroy() } catch (e) { console.error(e) }
      process.exit(0)
    })
  }
})

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
rl.on('close', () => process.exit(0))
process.on('uncaughtException', (e) => emit({ event: 'error', error: String(e && e.stack ? e.stack : e) }))
process.on('unhandledRejection', (e) => emit({ event: 'error', error: String(e && e.stack ? e.stack : e) }))

emit({ event: 'ready', clientIDs: Object.fromEntries([...providers].map(([n, { doc }]) => [n, doc.clientID])) })
