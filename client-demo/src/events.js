// canvashub's event channel: binary frames [100, varString(JSON)] sent to
// sockets opened with ?events=1 (see docs/protocol.md, "Events").
// y-websocket 3.x keeps a per-instance copy of its handler table, so we add
// type 100 to this provider only.

import * as decoding from 'lib0/decoding'

export const MESSAGE_EVENT = 100

/** @param {import('y-websocket').WebsocketProvider} provider */
export const attachEvents = (provider) => {
  /** @type {Map<string, Set<(event: any) => void>>} */
  const listeners = new Map()
  const emit = (event) => {
    for (const key of [event.type, '*']) {
      for (const fn of listeners.get(key) || []) {
        try { fn(event) } catch (err) { console.error('event handler failed', event.type, err) }
      }
    }
  }
  provider.messageHandlers[MESSAGE_EVENT] = (_encoder, decoder) => {
    let event
    try { event = JSON.parse(decoding.readVarString(decoder)) } catch { return }
    if (event && typeof event === 'object' && typeof event.type === 'string') emit(event)
  }
  return {
    /** @param {string} type event type, or '*' for all */
    on (type, fn) {
      if (!listeners.has(type)) listeners.set(type, new Set())
      listeners.get(type).add(fn)
      return () => listeners.get(type).delete(fn)
    },
    emit
  }
}
