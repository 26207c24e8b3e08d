// The demo over the Hocuspocus protocol (ws://HOST/hocuspocus, @hocuspocus/provider), chosen in the
// connection settings (protocol.js). The rest of the editor was written against y-websocket's
// WebsocketProvider, so this wraps a HocuspocusProvider in the few parts of that interface it uses:
//
//   awareness, on('status' | 'sync' | 'connection-close'), connect(), disconnect(), protocols (the
//   token), wsconnected / wsconnecting / synced / wsUnsuccessfulReconnects, ws.readyState,
//   messageHandlers (canvashub's type-100 events do not exist in Hocuspocus: nothing arrives there)
//
// What Hocuspocus says differently is translated:
//   * `authenticated` (scope read-write / readonly) -> an `access` event (viewer when readonly), which
//     the editor passes on to its event listeners;
//   * `authenticationFailed` -> a close with 4401/4403 (the connection panel asks for a token);
//   * a server CLOSE of the document (the socket stays open) -> 4404 / 4413 / 4401 from its reason;
//   * the save indicator uses `unsyncedChanges`: canvashub acknowledges an update (SyncStatus) only
//     once it is in the database (docs/protocol.md, "Durable SyncStatus").

import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'

const CLOSE_REASONS = [
  [/deleted/i, 4404],
  [/size limit/i, 4413],
  [/expired/i, 4401]
]

/**
 * @param {{ url: string, name: string, ydoc: import('yjs').Doc }} opts
 */
export const createHocuspocusConnection = ({ url, name, ydoc }) => {
  const listeners = new Map()
  const emit = (type, ...args) => { for (const fn of listeners.get(type) || []) fn(...args) }
  let token = ''
  let unsuccessful = 0

  const socket = new HocuspocusProviderWebsocket({ url, autoConnect: false, delay: 250, minDelay: 250, maxDelay: 2500 })
  const provider = new HocuspocusProvider({
    websocketProvider: socket, name, document: ydoc, token: () => token
  })

  const adapter = {
    kind: 'hocuspocus',
    provider,
    socket,
    awareness: provider.awareness,
    messageHandlers: {},
    on (type, fn) {
      if (!listeners.has(type)) listeners.set(type, new Set())
      listeners.get(type).add(fn)
    },
    off (type, fn) { listeners.get(type)?.delete(fn) },
    /** the token travels in Hocuspocus's auth message, not in the URL: `protocols` is y-websocket's */
    set protocols (value) { token = Array.isArray(value) && value.length ? value[value.length - 1] : '' },
    get protocols () { return token ? ['canvashub', token] : [] },
    get wsconnected () { return socket.status === 'connected' },
    get wsconnecting () { return socket.status === 'connecting' },
    get synced () { return provider.isSynced },
    get wsUnsuccessfulReconnects () { return unsuccessful },
    get ws () { return socket.webSocket },
    get unsyncedChanges () { return provider.unsyncedChanges },
    /** an update this provider applied from the server (not ours to save) */
    isRemote: (origin) => origin === provider,
    connect () {
      provider.attach()
      socket.connect()
    },
    disconnect () { socket.disconnect() }
  }

  socket.on('status', ({ status }) => {
    if (status === 'connected') unsuccessful = 0
    emit('status', { status })
  })
  socket.on('disconnect', ({ event }) => {
    unsuccessful++
    emit('connection-close', event ? { code: event.code, reason: event.reason } : null)
  })
  provider.on('synced', ({ state }) => emit('sync', state))
  provider.on('close', ({ event }) => {
    // code 1000 with a reason: the server closed this document (CLOSE message), the socket is open
    if (!event || event.code !== 1000 || socket.status !== 'connected') return
    const match = CLOSE_REASONS.find(([re]) => re.test(event.reason || ''))
    emit('connection-close', { code: match ? match[1] : 4400, reason: event.reason })
  })
  provider.on('authenticated', ({ scope }) => {
    const readonly = scope === 'readonly'
    emit('access', { type: 'access', role: readonly ? 'viewer' : 'editor', user: null, can: { edit: !readonly } })
  })
  provider.on('authenticationFailed', ({ reason }) => {
    emit('connection-close', { code: /not valid for|may not/i.test(reason || '') ? 4403 : 4401, reason })
  })
  provider.on('unsyncedChanges', ({ number }) => emit('unsynced', number))
  return adapter
}
