// canvashub starter demo: drag shapes together and see each other's cursors.
//
// Wiring only — the pieces live in their own modules:
//   config.js    page URL -> canvas id + websocket URL
//   model.js     shared document schema (ydoc.getMap('elements'))
//   board.js     shape rendering, selection, dragging
//   presence.js  awareness: user name/colour, remote cursors, who's here
//   status.js    connection status indicator

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { newCanvasHref, resolveConfig } from './config.js'
import { getElements } from './model.js'
import { createSelection } from './selection.js'
import { createBoard } from './board.js'
import { createPresence } from './presence.js'
import { createStatusIndicator } from './status.js'

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))

const start = () => {
  const config = resolveConfig(window.location)

  // ---- header: canvas id + "new canvas" link ------------------------------
  const canvasIdEl = $('canvas-id')
  canvasIdEl.textContent = config.canvasId
  if (config.invalidCanvasId !== null) {
    canvasIdEl.classList.add('warning')
    canvasIdEl.title = `"${config.invalidCanvasId}" is not a valid canvas id ` +
      `(use 1–64 of A–Z a–z 0–9 _ -); opened "${config.canvasId}" instead`
  }
  document.title = `${config.canvasId} · canvashub demo`
  const newCanvas = /** @type {HTMLAnchorElement} */ ($('new-canvas'))
  newCanvas.href = newCanvasHref(window.location)

  // ---- shared document + provider -----------------------------------------
  const ydoc = new Y.Doc()
  // BroadcastChannel sync is disabled so that tabs really talk through the
  // server (otherwise same-browser tabs would sync even with the server down).
  const provider = new WebsocketProvider(config.wsBase + '/ws', config.canvasId, ydoc, { disableBc: true })

  createStatusIndicator({ provider, el: $('status'), textEl: $('status-text'), url: config.wsUrl })

  // ---- board ----------------------------------------------------------------
  const selection = createSelection()
  const board = createBoard({
    ydoc,
    viewportEl: $('viewport'),
    boardEl: $('board'),
    shapesEl: $('shapes'),
    selection
  })

  createPresence({
    awareness: provider.awareness,
    board,
    boardEl: $('board'),
    cursorsEl: $('cursors'),
    userListEl: $('user-list'),
    userCountEl: $('user-count'),
    nameInput: /** @type {HTMLInputElement} */ ($('user-name')),
    swatchEl: $('user-swatch'),
    selection
  })

  // ---- toolbar + keyboard ---------------------------------------------------
  const deleteBtn = /** @type {HTMLButtonElement} */ ($('delete-selected'))
  $('add-rect').addEventListener('click', () => board.addRandomShape('rect'))
  $('add-ellipse').addEventListener('click', () => board.addRandomShape('ellipse'))
  deleteBtn.addEventListener('click', () => board.deleteSelected())
  selection.onChange((ids) => { deleteBtn.disabled = ids.length === 0 })

  window.addEventListener('keydown', (e) => {
    const t = /** @type {HTMLElement} */ (e.target)
    if (t.closest('input, textarea, select, [contenteditable="true"]')) return
    if (e.key === 'Delete' || e.key === 'Backspace') {
      if (selection.get().length > 0) { e.preventDefault(); board.deleteSelected() }
    } else if (e.key === 'Escape') {
      selection.set([])
    }
  })

  // Handy for debugging in the console and for end-to-end tests.
  window.canvashub = { Y, ydoc, provider, elements: getElements(ydoc), selection, config }
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start)
else start()
