// The stock providers the benchmark clients use (loadgen.mjs, trace.mjs), behind the few calls
// they make. Both providers apply remote document and awareness changes with the provider itself as
// the transaction origin. `WebSocket` is the `ws` package (Node 20 has no global WebSocket).

// y-websocket 3.x: `${url}/${room}`, one socket per provider.
// disableBc: Node has a global BroadcastChannel, and without this the providers of one thread
// would sync each other in-process, bypassing the server.
export const yWebsocketClient = async (WebSocket) => {
  const { WebsocketProvider } = await import('y-websocket')
  return (url, room, doc, params = {}) => {
    const provider = new WebsocketProvider(url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true, params })
    return {
      provider,
      awareness: provider.awareness,
      socket: () => provider.ws,
      connected: () => provider.wsconnected,
      onSynced: (fn) => provider.on('sync', (ok) => { if (ok) fn() }),
      onClose: (fn) => provider.on('connection-close', fn),
      onConnectionError: (fn) => provider.on('connection-error', fn),
      onFrame: (fn) => provider.on('status', ({ status }) => { if (status === 'connected') provider.ws.addEventListener('message', fn) })
    }
  }
}

// @hocuspocus/provider 4.x: `url` is the server, the document name is the room; without a
// `websocketProvider` option every HocuspocusProvider opens (and owns) its own socket, like one
// browser tab. No token: the server runs without an onAuthenticate hook.
export const hocuspocusClient = async (WebSocket) => {
  const { HocuspocusProvider } = await import('@hocuspocus/provider')
  return (url, room, document) => {
    const provider = new HocuspocusProvider({ url, name: room, document, WebSocketPolyfill: WebSocket })
    const socket = provider.configuration.websocketProvider
    return {
      provider,
      awareness: provider.awareness,
      socket: () => socket.webSocket,
      connected: () => socket.status === 'connected',
      onSynced: (fn) => provider.on('synced', fn),
      onClose: (fn) => provider.on('close', fn),
      onConnectionError: (fn) => provider.on('authenticationFailed', fn),
      onFrame: (fn) => provider.on('message', fn)
    }
  }
}
