// Hocuspocus reference server for the benchmark (bench/run.py copies this file into its npm dir
// in bench/.cache/hocuspocus-server/, next to the pinned @hocuspocus/server, and runs it there).
//
// Public API only, as in the Hocuspocus docs: `new Server({port, address, quiet})`, no extensions,
// so documents live in memory (no persistence, no auth hook: a client needs no token). Every
// other setting is the 4.x default (documents unloaded as soon as the last client leaves,
// ws without permessage-deflate). The document name the client sends is the room.
// `stopOnSignals` (default true) makes SIGINT/SIGTERM close connections and exit.
//
//     node hocuspocus_server.mjs --host 127.0.0.1 --port 1234
import { parseArgs } from 'node:util'
import { Server } from '@hocuspocus/server'

const { values: opt } = parseArgs({ options: { host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string', default: '1234' } } })
const server = new Server({ address: opt.host, port: Number(opt.port), quiet: true })
await server.listen()
console.error(`hocuspocus listening on ${opt.host}:${opt.port}`)
