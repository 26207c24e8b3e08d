// "Saving… / Saved / Retrying… / Offline" from the server's `save` events.
//
// Which local changes are durable (docs/protocol.md, "save"): only what a
// `save` event says. The server's sync step 1 state vector says what its
// memory holds — during a database outage that is more than its database.
//  * every change this tab sends (any doc update whose origin is not the
//    provider: our edits, undo/redo, what IndexedDB restored) is recorded as
//    the Yjs clocks it reaches (Y.parseUpdateMeta);
//  * every `save` event's `clock` is durable: the socket's own changes, or
//    (`scope: "canvas"`) everything the canvas has in storage. A change is
//    saved once those clocks cover it (`durable` keeps the highest seen:
//    durability does not expire);
//  * after (re)connecting nothing is "saved" before the canvas's storage state
//    (the `scope: "canvas"` event right after joining) arrived; while it is
//    not `saved` the server sends it again after each commit of the canvas;
//  * delete-only changes advance no clock: one made on this socket counts as
//    saved once `through` reaches its frame number; deletions made before
//    this socket travel in our sync step 2 (maybe the server's change #1, so
//    our own frames are numbered from 2 then) and count once `through` ≥ 1, or
//    — if the server already had them and counts nothing — once the canvas is
//    `saved` with nothing of ours pending, a grace period after the last event
//    (long enough for the server to report a change it did count).

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
  /** client id -> highest clock a save event reported durable */
  const durable = new Map()
  /** delete-only changes: frame numbers on this socket (null = made while disconnected) */
  let deletes = []
  let framesSent = 0
  let through = 0
  let pending = 0
  let serverState = 'ok' // this socket's changes: ok | retrying | failed
  let canvasState = 'unknown' // the canvas's storage state: unknown (not told yet) | saved | saving | retrying
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
    if (!synced || canvasState === 'unknown') return 'connecting'
    const mine = unsaved() || pending > 0
    if (refused && unsaved()) return 'refused'
    if (mine && (serverState === 'retrying' || canvasState === 'retrying')) return 'retrying'
    if (mine && serverState === 'failed') return 'failed'
    if (mine) return 'saving'
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

  const covered = (client, clock) => (durable.get(client) ?? -1) >= clock

  const armGrace = () => {
    clearTimeout(graceTimer)
    if (deletes.length === 0) return
    graceTimer = setTimeout(() => {
      // Nothing of the canvas is pending on the server and nothing of ours was counted since:
      // the server had these deletions already (in storage, as the canvas is saved).
      if (provider.wsconnected && synced && pending === 0 && serverState === 'ok' && canvasState === 'saved') {
        deletes = []
        render()
      }
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
    for (const [client, clock] of to) {
      if (!covered(client, clock) && (required.get(client) ?? -1) < clock) required.set(client, clock)
    }
    render()
  })

  provider.on('status', ({ status }) => {
    if (status === 'connected') {
      // Whatever we hold that is not known durable travels in our sync step 2, which the server may
      // count as this socket's change #1: our own frames are then numbered from 2 (never too low).
      framesSent = unsaved() ? 1 : 0
      through = 0; pending = 0; serverState = 'ok'; canvasState = 'unknown'; refused = ''
      deletes = deletes.length ? [1] : []
      hadConnection = true
    } else {
      synced = false
    }
    render()
  })
  provider.on('sync', (s) => { synced = s; if (s) armGrace(); render() })

  events.on('save', (event) => {
    through = Number(event.through) || 0
    pending = Number(event.pending) || 0
    for (const [k, v] of Object.entries(event.clock || {})) {
      const client = Number(k)
      const clock = Number(v)
      if (!covered(client, clock)) durable.set(client, clock)
    }
    for (const [client, need] of required) if (covered(client, need)) required.delete(client)
    deletes = deletes.filter((n) => n === null || n > through)
    if (event.scope === 'canvas') {
      canvasState = event.status === 'saved' || event.status === 'retrying' ? event.status : 'saving'
      if (event.status === 'retrying') lastError = String(event.error || '')
    } else if (event.status === 'saved') {
      serverState = 'ok'
    } else if (event.status === 'retrying') {
      serverState = 'retrying'
      lastError = String(event.error || '')
    } else if (event.status === 'failed') {
      serverState = 'failed'
      lastError = String(event.reason || '')
    }
    if (event.status === 'saved') lastSavedAt = Date.now()
    armGrace()
    render()
  })

  events.on('denied', (event) => { refused = String(event.reason || 'not allowed'); render() })

  window.addEventListener('online', render)
  window.addEventListener('offline', render)
  render()

  return {
    state,
    render,
    get unsaved () { return unsaved() },
    onChange (fn) { listeners.add(fn); return () => listeners.delete(fn) }
  }
}

/**
 * The save indicator over the Hocuspocus protocol: the provider's `unsyncedChanges`. canvashub
 * acknowledges an update (SyncStatus) only once it is in the database, so 0 means everything this tab
 * sent is saved; while the database is down it stays above 0 ("Saving…").
 *
 * @param {{ provider: ReturnType<import('./hocuspocus.js').createHocuspocusConnection>, ydoc: Y.Doc,
 *           el: HTMLElement, textEl: HTMLElement, isOffline: () => boolean, isBlocked?: () => string | null }} opts
 */
export const createUnsyncedSaveStatus = ({ provider, ydoc, el, textEl, isOffline, isBlocked = () => null }) => {
  let synced = false
  let readonly = false
  let localSinceSync = false // edits made while not connected: kept on this device until synced
  let lastSavedAt = 0
  const listeners = new Set()

  const state = () => {
    if (isBlocked()) return 'blocked'
    if (isOffline()) return 'offline'
    if (!provider.wsconnected) return provider.wsUnsuccessfulReconnects < 2 ? 'connecting' : 'offline'
    if (!synced) return 'connecting'
    if (provider.unsyncedChanges > 0) return readonly ? 'refused' : 'saving'
    return 'saved'
  }
  let shown = ''
  const render = () => {
    const s = state()
    const text = {
      connecting: localSinceSync ? 'Connecting… (changes kept on this device)' : 'Connecting…',
      offline: 'Offline — changes kept on this device',
      saving: 'Saving…',
      refused: 'Not saved — read-only',
      blocked: 'Not connected',
      saved: lastSavedAt ? `Saved ${formatTime(lastSavedAt)}` : 'Saved'
    }[s]
    el.dataset.state = s
    el.title = text
    if (text !== shown) { textEl.textContent = text; shown = text }
    for (const fn of listeners) fn(s)
  }
  ydoc.on('update', (_update, origin) => {
    if (!provider.isRemote(origin) && !provider.wsconnected) localSinceSync = true
    render()
  })
  provider.on('status', ({ status }) => { if (status !== 'connected') synced = false; render() })
  provider.on('sync', (s) => { synced = s; render() })
  provider.on('access', (event) => { readonly = event.can && event.can.edit === false; render() })
  provider.on('unsynced', (number) => {
    if (number === 0) { lastSavedAt = Date.now(); localSinceSync = false }
    render()
  })
  window.addEventListener('online', render)
  window.addEventListener('offline', render)
  render()
  return {
    state,
    render,
    get unsaved () { return provider.unsyncedChanges > 0 || localSinceSync },
    onChange (fn) { listeners.add(fn); return () => listeners.delete(fn) }
  }
}
