// "Saving… / Saved / Retrying… / Offline" from the server's `save` events.
//
// Which local changes are durable (docs/protocol.md, "save"):
//  * every change this tab sends (any doc update whose origin is not the
//    provider: our edits, undo/redo, what IndexedDB restored) is recorded as
//    the Yjs clocks it reaches (Y.parseUpdateMeta);
//  * a `saved` event covers them once its `clock[client] >= clock`;
//  * what the server already holds when we (re)connect (its sync step 1 state
//    vector) counts as saved too — e.g. changes a previous socket sent;
//  * delete-only changes advance no clock: they count as saved once `through`
//    reaches the number of frames sent on this socket (or, if the server never
//    counts them because it already had them, once it reports nothing pending
//    a moment later).

import * as Y from 'yjs'
import { formatTime } from './util.js'

const DELETE_GRACE_MS = 1500

/**
 * @param {{ ydoc: Y.Doc, provider: import('y-websocket').WebsocketProvider, events: ReturnType<import('./events.js').attachEvents>,
 *           el: HTMLElement, textEl: HTMLElement, isOffline: () => boolean, isBlocked?: () => string | null }} opts
 */
export const createSaveStatus = ({ ydoc, provider, events, el, textEl, isOffline, isBlocked = () => null }) => {
  /** client id -> clock that must be durable */
  const required = new Map()
  /** delete-only changes: frame numbers on this socket (null = made while disconnected) */
  let deletes = []
  let framesSent = 0
  let through = 0
  let pending = 0
  let serverState = 'ok' // ok | retrying | failed
  let lastError = ''
  let lastSavedAt = 0
  let synced = false
  let hadConnection = false
  let refused = '' // the server refused a write of ours (`denied` event) on this socket
  let graceTimer = 0
  const listeners = new Set()

  const unsaved = () => required.size > 0 || deletes.length > 0

  const state = () => {
    if (isBlocked()) return 'blocked'
    if (isOffline()) return 'offline'
    // Between reconnect attempts the provider flips connecting/disconnected: once a connection
    // was lost (or the first attempts failed) we say "offline" until one succeeds again.
    if (!provider.wsconnected) return !hadConnection && provider.wsUnsuccessfulReconnects < 2 ? 'connecting' : 'offline'
    if (!synced) return 'connecting'
    if (refused && unsaved()) return 'refused'
    if (serverState === 'retrying' && (unsaved() || pending > 0)) return 'retrying'
    if (serverState === 'failed' && (unsaved() || pending > 0)) return 'failed'
    if (unsaved() || pending > 0) return 'saving'
    return 'saved'
  }

  let shown = ''
  const render = () => {
    const s = state()
    const text = {
      connecting: unsaved() ? 'Connecting… (changes kept on this device)' : 'Connecting…',
      offline: 'Offline — changes kept on this device',
      saving: 'Saving…',
      retrying: 'Retrying…',
      failed: 'Not saved yet — will retry',
      refused: 'Not saved — change refused',
      blocked: unsaved() ? 'Not connected — changes kept on this device' : 'Not connected',
      saved: lastSavedAt ? `Saved ${formatTime(lastSavedAt)}` : 'Saved'
    }[s]
    el.dataset.state = s
    el.title = s === 'retrying' || s === 'failed'
      ? `The server cannot write to its database right now: ${lastError}`
      : s === 'refused' ? `The server refused a change: ${refused}` : text
    if (text !== shown) { textEl.textContent = text; shown = text }
    for (const fn of listeners) fn(s)
  }

  const prune = (clock) => {
    for (const [client, need] of required) if ((clock.get(client) ?? -1) >= need) required.delete(client)
  }

  const armGrace = () => {
    clearTimeout(graceTimer)
    if (deletes.length === 0) return
    graceTimer = setTimeout(() => {
      // The server reports nothing pending, and our delete frames were sent a while ago:
      // it had those deletions already (nothing to count), so nothing is unsaved.
      if (provider.wsconnected && synced && pending === 0 && serverState === 'ok') { deletes = []; render() }
    }, DELETE_GRACE_MS)
  }

  ydoc.on('update', (update, origin) => {
    if (origin === provider) return
    const { to } = Y.parseUpdateMeta(update)
    const onSocket = provider.wsconnected && provider.ws && provider.ws.readyState === 1
    if (onSocket) framesSent++
    if (to.size === 0) {
      deletes.push(onSocket ? framesSent : null)
      armGrace()
    }
    for (const [client, clock] of to) if ((required.get(client) ?? -1) < clock) required.set(client, clock)
    render()
  })

  provider.on('status', ({ status }) => {
    if (status === 'connected') {
      framesSent = 0; through = 0; pending = 0; serverState = 'ok'; refused = ''
      // delete-only changes made offline travel in our sync step 2: the server's change #1
      deletes = deletes.length ? [1] : []
    }
    if (status === 'connected') hadConnection = true
    if (status !== 'connected') synced = false
    render()
  })
  provider.on('sync', (s) => { synced = s; if (s) armGrace(); render() })

  events.on('save', (event) => {
    through = Number(event.through) || 0
    pending = Number(event.pending) || 0
    const clock = new Map(Object.entries(event.clock || {}).map(([k, v]) => [Number(k), Number(v)]))
    if (event.status === 'saved') {
      serverState = 'ok'
      lastSavedAt = Date.now()
      prune(clock)
      deletes = deletes.filter((n) => n !== null && n > through)
      armGrace()
    } else if (event.status === 'retrying') {
      serverState = 'retrying'
      lastError = String(event.error || '')
    } else if (event.status === 'failed') {
      serverState = 'failed'
      lastError = String(event.reason || '')
    }
    render()
  })

  events.on('denied', (event) => { refused = String(event.reason || 'not allowed'); render() })

  const onServerStateVector = (sv) => { prune(sv); render() }

  window.addEventListener('online', render)
  window.addEventListener('offline', render)
  render()

  return {
    state,
    render,
    onServerStateVector,
    get unsaved () { return unsaved() },
    onChange (fn) { listeners.add(fn); return () => listeners.delete(fn) }
  }
}
