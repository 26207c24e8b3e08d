// canvashub editor (/c/{canvas_id}): wiring only — the pieces live in their own modules.
//
//   config.js      page URL -> canvas id, API / WebSocket URLs
//   api.js         access token + HTTP API client
//   model.js       shared document schema and every local write
//   board.js       rendering, tools, selection, drag / resize, text editing
//   camera.js      pan and zoom
//   presence.js    awareness: names, colours, cursors, who's here
//   events.js      canvashub event channel (type-100 frames)
//   savestatus.js  Saving… / Saved / Retrying… / Offline
//   connection.js  offline/online, close codes, auth errors, token field
//   protocol.js    y-websocket or Hocuspocus (the switch in the Token popover)
//   hocuspocus.js  the Hocuspocus provider behind the part of WebsocketProvider's interface we use
//   generations.js prompt box, jobs with live progress
//   history.js     versions: list, preview, restore

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { IndexeddbPersistence } from 'y-indexeddb'
import { carriedQuery, resolveConfig } from './config.js'
import { createApi, getToken, initToken } from './api.js'
import { LOCAL_ORIGIN, getElements, readElement, sendToBack } from './model.js'
import { createSelection } from './selection.js'
import { createCamera } from './camera.js'
import { CREATE_TOOLS, createBoard } from './board.js'
import { createPresence } from './presence.js'
import { attachEvents } from './events.js'
import { createSaveStatus, createUnsyncedSaveStatus } from './savestatus.js'
import { createHocuspocusConnection } from './hocuspocus.js'
import { getProtocol, protocolField } from './protocol.js'
import { createConnection } from './connection.js'
import { createGenerations } from './generations.js'
import { createHistory } from './history.js'
import { toast } from './toast.js'
import { PALETTE, el, pick } from './util.js'
import { registerServiceWorker } from './sw-register.js'

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))

const COLORS = ['#1f2328', '#6b7280', '#ef476f', '#f78c6b', '#ffd166', '#06d6a0', '#118ab2', '#4361ee', '#7209b7',
  '#fff3b0', '#caffbf', '#bde0fe', '#ffc6ff', '#ffffff']

const KEY_TOOLS = { v: 'select', h: 'hand', r: 'rect', o: 'ellipse', t: 'text', n: 'sticky' }

const start = async () => {
  const config = resolveConfig(window.location)
  initToken()
  const api = createApi(config.httpBase)
  const assetUrl = (src) => config.httpBase + src
  const listHref = `${config.fromPath ? '../' : './'}${carriedQuery()}`

  // ---- header ---------------------------------------------------------------
  const canvasIdEl = $('canvas-id')
  canvasIdEl.textContent = config.canvasId
  if (config.invalidCanvasId !== null) {
    canvasIdEl.classList.add('warning')
    canvasIdEl.title = `"${config.invalidCanvasId}" is not a valid canvas id (use 1–64 of A–Z a–z 0–9 _ -); opened "${config.canvasId}" instead`
  }
  document.title = `${config.canvasId} · canvashub`
  $('home-link').setAttribute('href', listHref)
  $('copy-link').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(window.location.href.replace(/#.*$/, ''))
      toast('Link copied — anyone with it can join', { kind: 'ok', timeout: 2500 })
    } catch { toast(window.location.href.replace(/#.*$/, ''), { timeout: 8000 }) }
  })

  // ---- document, undo, persistence, provider ----------------------------------
  const ydoc = new Y.Doc()
  const elements = getElements(ydoc)
  // Undo/redo reverts only this tab's own edits: everything local uses LOCAL_ORIGIN.
  const undoManager = new Y.UndoManager(elements, { trackedOrigins: new Set([LOCAL_ORIGIN]), captureTimeout: 400 })

  const idb = new IndexeddbPersistence(`canvashub:${config.httpBase}:${config.canvasId}`, ydoc)
  // BroadcastChannel sync is disabled so that tabs really talk through the server.
  const protocol = getProtocol()
  const provider = protocol === 'hocuspocus'
    ? createHocuspocusConnection({ url: config.wsBase + '/hocuspocus', name: config.canvasId, ydoc })
    : new WebsocketProvider(config.wsBase + '/ws', config.canvasId, ydoc, {
      connect: false, disableBc: true, params: { events: '1' }
    })
  const events = attachEvents(provider)
  if (protocol === 'hocuspocus') provider.on('access', (event) => events.emit(event))
  document.body.dataset.protocol = protocol

  /** What the server lets us do (the `access` event; absent in open mode: everything). */
  let access = null
  const can = (what) => !access || !access.can || access.can[what] !== false
  const canEdit = () => can('edit')

  // ---- connection + save status ---------------------------------------------------
  const connection = createConnection({
    provider, api, canvasId: config.canvasId, noticeEl: $('notice'), listHref,
    connectionEl: $('connection-dot'),
    onDeleted: () => { idb.clearData().catch(() => {}) }
  })
  const saveStatus = protocol === 'hocuspocus'
    ? createUnsyncedSaveStatus({
      ydoc, provider, el: $('save-status'), textEl: $('save-text'),
      isOffline: connection.isOffline, isBlocked: () => connection.blocked
    })
    : createSaveStatus({
      ydoc, provider, events, el: $('save-status'), textEl: $('save-text'),
      isOffline: connection.isOffline, isBlocked: () => connection.blocked
    })
  connection.onChange(() => saveStatus.render())

  // ---- canvas -----------------------------------------------------------------
  const viewportEl = $('viewport')
  const selection = createSelection()
  const camera = createCamera({ viewportEl, worldEl: $('world'), storageKey: `canvashub.camera.${config.canvasId}` })
  let currentFill = null
  const getFill = (type) => (type === 'rect' || type === 'ellipse') ? (currentFill || pick(PALETTE)) : undefined
  const board = createBoard({
    ydoc, viewportEl, worldEl: $('world'), elementsEl: $('elements'), overlayEl: $('overlay'),
    camera, selection, undoManager, canEdit, assetUrl, getFill
  })

  const presence = createPresence({
    awareness: provider.awareness, board, camera, viewportEl, cursorsEl: $('cursors'),
    userListEl: $('user-list'), userCountEl: $('user-count'),
    nameInput: /** @type {HTMLInputElement} */ ($('user-name')), swatchEl: $('user-swatch'), selection
  })

  // ---- toolbar ----------------------------------------------------------------
  const toolButtons = [...document.querySelectorAll('.tool[data-tool]')]
  for (const b of toolButtons) b.addEventListener('click', () => board.setTool(b.dataset.tool))
  const showTool = (tool) => toolButtons.forEach((b) => {
    b.classList.toggle('active', b.dataset.tool === tool)
    b.setAttribute('aria-pressed', String(b.dataset.tool === tool))
  })
  board.onToolChange(showTool)
  showTool(board.tool)

  const undoBtn = /** @type {HTMLButtonElement} */ ($('undo'))
  const redoBtn = /** @type {HTMLButtonElement} */ ($('redo'))
  const deleteBtn = /** @type {HTMLButtonElement} */ ($('delete-selected'))
  const undo = () => { if (canEdit()) { board.stopEditing(true); undoManager.undo() } }
  const redo = () => { if (canEdit()) { board.stopEditing(true); undoManager.redo() } }
  undoBtn.addEventListener('click', undo)
  redoBtn.addEventListener('click', redo)
  const refreshUndo = () => {
    undoBtn.disabled = !canEdit() || undoManager.undoStack.length === 0
    redoBtn.disabled = !canEdit() || undoManager.redoStack.length === 0
  }
  for (const ev of ['stack-item-added', 'stack-item-popped', 'stack-cleared']) undoManager.on(ev, refreshUndo)
  deleteBtn.addEventListener('click', () => board.deleteSelected())

  // properties bar: colours, order, duplicate
  const propsEl = $('props')
  const swatchesEl = $('swatches')
  swatchesEl.append(...COLORS.map((c) => el('button', {
    type: 'button', className: 'color-swatch', title: c, style: { background: c },
    dataset: { testid: `color-${c.slice(1)}`, color: c },
    onclick: () => { currentFill = c; board.recolor(c) }
  })))
  const customColor = /** @type {HTMLInputElement} */ ($('custom-color'))
  customColor.addEventListener('input', () => { currentFill = customColor.value; board.recolor(customColor.value) })
  $('bring-front').addEventListener('click', () => board.bringSelectionToFront())
  $('send-back').addEventListener('click', () => { if (canEdit()) sendToBack(ydoc, selection.get()) })
  $('duplicate').addEventListener('click', () => board.duplicateSelected())

  const refreshSelectionUi = () => {
    const ids = selection.get()
    deleteBtn.disabled = ids.length === 0 || !canEdit()
    propsEl.hidden = ids.length === 0 || !canEdit()
    const fills = new Set(ids.map((id) => elements.get(id)).filter((m) => m instanceof Y.Map).map((m) => readElement(m)).filter((e) => e.type !== 'image').map((e) => e.fill))
    for (const s of swatchesEl.children) s.classList.toggle('active', fills.size === 1 && fills.has(s.dataset.color))
  }
  selection.onChange(refreshSelectionUi)
  elements.observeDeep(refreshSelectionUi)

  // zoom controls
  const zoomLevel = $('zoom-reset')
  camera.onChange(() => { zoomLevel.textContent = `${Math.round(camera.zoom * 100)}%` })
  zoomLevel.textContent = `${Math.round(camera.zoom * 100)}%`
  $('zoom-in').addEventListener('click', () => camera.zoomAt(1.25))
  $('zoom-out').addEventListener('click', () => camera.zoomAt(0.8))
  zoomLevel.addEventListener('click', () => camera.setZoom(1))
  $('zoom-fit').addEventListener('click', () => board.fitAll())

  // empty-canvas hint
  const emptyHint = $('empty-hint')
  const refreshEmpty = () => { emptyHint.hidden = elements.size > 0 }
  elements.observe(refreshEmpty)

  // ---- generations, history, export ----------------------------------------------
  const generations = createGenerations({
    canvasId: config.canvasId, api, events, camera,
    formEl: /** @type {HTMLFormElement} */ ($('generate-form')), promptEl: /** @type {HTMLInputElement} */ ($('generate-prompt')),
    listEl: $('generation-list'), placeholdersEl: $('placeholders'), canGenerate: () => can('generate'),
    onShow: (id) => { if (elements.has(id)) { selection.set([id]); const b = board.boundsOf([id]); if (b) camera.fit({ x: b.x - 200, y: b.y - 200, w: b.w + 400, h: b.h + 400 }) } }
  })

  const history = createHistory({
    canvasId: config.canvasId, api, panelEl: $('history-panel'), listEl: $('version-list'),
    moreEl: /** @type {HTMLButtonElement} */ ($('history-more')), refreshEl: /** @type {HTMLButtonElement} */ ($('history-refresh')),
    previewEl: $('version-preview'), canRestore: () => can('restore'), assetUrl
  })
  const historyToggle = $('history-toggle')
  const syncHistoryButton = () => historyToggle.setAttribute('aria-pressed', String(history.isOpen))
  historyToggle.addEventListener('click', () => {
    history.toggle(); syncHistoryButton()
    if (history.isOpen) document.body.classList.add('sidebar-open')
  })
  $('history-close').addEventListener('click', () => { history.close(); syncHistoryButton() })

  const download = async (accept, filename) => {
    $('export-menu').removeAttribute('open')
    try {
      const res = accept === 'json' ? null : await api.getCanvasBinary(config.canvasId)
      const blob = res ? await res.blob() : new Blob([JSON.stringify(await api.getCanvas(config.canvasId), null, 2)], { type: 'application/json' })
      const url = URL.createObjectURL(blob)
      const a = el('a', { href: url, download: filename })
      document.body.append(a)
      a.click()
      a.remove()
      setTimeout(() => URL.revokeObjectURL(url), 10000)
    } catch (err) {
      toast(err.status === 404 ? 'Nothing saved on the server yet.' : `Export failed: ${err.message}`, { kind: 'error' })
    }
  }
  $('export-json').addEventListener('click', () => download('json', `${config.canvasId}.json`))
  $('export-ydoc').addEventListener('click', () => download('binary', `${config.canvasId}.yjs`))

  // token popover (also reachable when access is fine, e.g. to switch identity)
  const tokenPopover = $('token-popover')
  $('token-toggle').addEventListener('click', () => {
    if (!tokenPopover.hidden) { tokenPopover.hidden = true; return }
    tokenPopover.replaceChildren(
      el('p', {}, getToken() ? 'This tab uses an access token.' : 'No access token set (fine when the server runs in open mode).'),
      connection.tokenForm(getToken() ? 'Use this token' : 'Connect with token'),
      protocolField(protocol))
    tokenPopover.hidden = false
    tokenPopover.querySelector('input').focus()
  })
  tokenPopover.addEventListener('submit', () => { tokenPopover.hidden = true })

  // menus and popovers close on a click elsewhere
  document.addEventListener('pointerdown', (e) => {
    const t = /** @type {HTMLElement} */ (e.target)
    if (!t.closest('#export-menu')) $('export-menu').removeAttribute('open')
    if (!t.closest('#token-popover, #token-toggle')) tokenPopover.hidden = true
  })

  $('sidebar-toggle').addEventListener('click', () => document.body.classList.toggle('sidebar-open'))

  // ---- access (roles) and refused writes ----------------------------------------
  const applyAccess = () => {
    const editable = canEdit()
    document.body.classList.toggle('readonly', !editable)
    document.body.classList.toggle('no-generate', !can('generate'))
    $('view-only').hidden = editable
    board.refreshPermissions()
    refreshUndo()
    refreshSelectionUi()
    generations.refreshPermissions()
  }
  events.on('access', (event) => {
    access = event
    if (event.user) presence.setIdentity(event.user)
    applyAccess()
  })
  events.on('denied', (event) => {
    // The change stays in this tab (and its IndexedDB) but not on the server: say so, offer to drop it.
    connection.showNotice('warn', 'The server refused your change:', `${event.reason || 'not allowed'}.`, [
      el('button', {
        type: 'button', dataset: { testid: 'discard-local' },
        onclick: async () => { provider.disconnect(); await idb.clearData().catch(() => {}); window.location.reload() }
      }, 'Discard my unsaved changes'),
      el('button', { type: 'button', onclick: () => connection.hideNotice() }, 'Dismiss')
    ])
  })
  applyAccess()

  // ---- keyboard -------------------------------------------------------------------------
  window.addEventListener('keydown', (e) => {
    const t = /** @type {HTMLElement} */ (e.target)
    if (t.closest('input, textarea, select, [contenteditable="true"]')) return
    if ((e.key === 'Enter' || e.key === ' ') && t.closest('button, a, summary')) return // activate the control
    const mod = e.ctrlKey || e.metaKey
    const key = e.key.toLowerCase()
    if (e.key === ' ') { e.preventDefault(); if (!e.repeat) board.setSpaceHeld(true); return }
    if (mod && key === 'z') { e.preventDefault(); if (e.shiftKey) redo(); else undo(); return }
    if (mod && key === 'y') { e.preventDefault(); redo(); return }
    if (mod && key === 'a') { e.preventDefault(); board.selectAll(); return }
    if (mod && key === 'd') { e.preventDefault(); board.duplicateSelected(); return }
    if (mod || e.altKey) return
    if (e.key === 'Delete' || e.key === 'Backspace') {
      if (selection.get().length > 0) { e.preventDefault(); board.deleteSelected() }
    } else if (e.key === 'Escape') {
      if (!$('version-preview').hidden) history.closePreview()
      else if (board.tool !== 'select') board.setTool('select')
      else selection.set([])
      $('export-menu').removeAttribute('open')
      tokenPopover.hidden = true
    } else if (e.key === 'Enter' && selection.get().length === 1) {
      e.preventDefault(); board.startEditing(selection.get()[0])
    } else if (e.key === '+' || e.key === '=') {
      camera.zoomAt(1.25)
    } else if (e.key === '-' || e.key === '_') {
      camera.zoomAt(0.8)
    } else if (e.key === '0') {
      camera.setZoom(1)
    } else if (e.key === '!' || (e.shiftKey && e.code === 'Digit1')) {
      board.fitAll()
    } else if (e.key === ']') {
      board.bringSelectionToFront()
    } else if (e.key === '[') {
      if (canEdit()) sendToBack(ydoc, selection.get())
    } else if (e.key.startsWith('Arrow') && selection.get().length > 0) {
      e.preventDefault()
      const step = e.shiftKey ? 10 : 1
      board.nudge(e.key === 'ArrowLeft' ? -step : e.key === 'ArrowRight' ? step : 0, e.key === 'ArrowUp' ? -step : e.key === 'ArrowDown' ? step : 0)
    } else if (KEY_TOOLS[key] && !e.shiftKey) {
      const tool = KEY_TOOLS[key]
      if (CREATE_TOOLS.includes(tool) && !canEdit()) return
      board.setTool(tool)
    }
  })
  window.addEventListener('keyup', (e) => { if (e.key === ' ') board.setSpaceHeld(false) })
  window.addEventListener('blur', () => board.setSpaceHeld(false))

  // ---- start: local copy first, then the server ---------------------------------------------
  let fitted = camera.hasSavedState()
  const fitOnce = () => {
    refreshEmpty()
    if (!fitted && elements.size > 0) { fitted = true; board.fitAll() }
  }
  provider.on('sync', (s) => { if (s) fitOnce() })

  // Handy for debugging in the console and for end-to-end tests.
  window.canvashub = {
    Y, doc: ydoc, ydoc, provider, protocol, undoManager, elements, selection, board, camera, config, events,
    saveStatus, connection, idb, presence, generations, history, get access () { return access }
  }

  // IndexedDB first (so offline edits travel in our sync step 2), but never wait long for it.
  await Promise.race([idb.whenSynced, new Promise((resolve) => setTimeout(resolve, 1500))])
  board.renderAll()
  fitOnce()
  connection.start()
  registerServiceWorker(config)
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start)
else start()
