// Renders the shared elements as absolutely positioned divs and handles
// selecting / dragging them. All document writes go through model.js.

import * as Y from 'yjs'
import {
  addElement, bringToFront, deleteElements, getElements, readElement, updateElement
} from './model.js'
import { PALETTE, clamp, pick, randomInt, rafThrottle } from './util.js'

/** Logical board size in pixels (shared coordinate space for shapes and cursors). */
export const BOARD_SIZE = { w: 2400, h: 1600 }

/**
 * @param {{
 *   ydoc: Y.Doc,
 *   viewportEl: HTMLElement,
 *   boardEl: HTMLElement,
 *   shapesEl: HTMLElement,
 *   selection: ReturnType<import('./selection.js').createSelection>
 * }} opts
 */
export const createBoard = ({ ydoc, viewportEl, boardEl, shapesEl, selection }) => {
  const elements = getElements(ydoc)
  /** @type {Map<string, HTMLElement>} */
  const nodes = new Map()
  /** element id -> colour of a remote user selecting it */
  let remoteSelections = new Map()

  boardEl.style.width = `${BOARD_SIZE.w}px`
  boardEl.style.height = `${BOARD_SIZE.h}px`

  /** Pointer event -> board coordinates (independent of scroll position). */
  const toBoardPoint = (e) => {
    const rect = boardEl.getBoundingClientRect()
    return { x: Math.round(e.clientX - rect.left), y: Math.round(e.clientY - rect.top) }
  }

  // ---- rendering -----------------------------------------------------------

  const applyDecorations = (id, node) => {
    node.classList.toggle('selected', selection.has(id))
    const remote = remoteSelections.get(id)
    node.classList.toggle('remote-selected', remote !== undefined)
    if (remote !== undefined) node.style.setProperty('--remote-color', remote)
    else node.style.removeProperty('--remote-color')
  }

  const renderElement = (id) => {
    const ymap = elements.get(id)
    let node = nodes.get(id)
    if (!(ymap instanceof Y.Map)) {
      if (node) { node.remove(); nodes.delete(id) }
      return
    }
    if (!node) {
      node = document.createElement('div')
      node.className = 'shape'
      node.dataset.id = id
      shapesEl.append(node)
      nodes.set(id, node)
    }
    const el = readElement(ymap)
    node.dataset.type = el.type
    node.style.transform = `translate(${el.x}px, ${el.y}px)`
    node.style.width = `${el.w}px`
    node.style.height = `${el.h}px`
    node.style.background = el.fill
    applyDecorations(id, node)
  }

  // Stack by (z, id) so every client shows the same order even when z values tie.
  const restack = () => {
    const order = [...nodes.keys()].map((id) => ({ id, z: readElement(elements.get(id)).z }))
    order.sort((a, b) => (a.z - b.z) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    order.forEach(({ id }, i) => { nodes.get(id).style.zIndex = String(i + 1) })
  }

  const renderAll = () => {
    for (const id of nodes.keys()) if (!elements.has(id)) renderElement(id)
    elements.forEach((_, id) => renderElement(id))
    restack()
  }

  elements.observeDeep((events) => {
    const changed = new Set()
    let needsRestack = false
    for (const event of events) {
      if (event.target === elements) {
        // elements added / removed / replaced
        event.keysChanged.forEach((id) => changed.add(id))
        needsRestack = true
      } else if (event.path.length > 0) {
        // a key inside one element's Y.Map changed
        changed.add(String(event.path[0]))
        if (event.keysChanged.has('z')) needsRestack = true
      }
    }
    changed.forEach(renderElement)
    if (needsRestack) restack()
    selection.prune((id) => elements.has(id))
  })

  selection.onChange(() => nodes.forEach((node, id) => applyDecorations(id, node)))

  // ---- dragging --------------------------------------------------------------

  /** @type {null | { id: string, pointerId: number, node: HTMLElement, dx: number, dy: number, w: number, h: number }} */
  let drag = null

  // One Yjs transaction per animation frame at most.
  const commitMove = rafThrottle((id, x, y) => updateElement(ydoc, id, { x, y }))

  const endDrag = () => {
    if (!drag) return
    commitMove.flush()
    drag.node.classList.remove('dragging')
    drag = null
  }

  shapesEl.addEventListener('pointerdown', (e) => {
    const node = /** @type {HTMLElement} */ (e.target).closest('.shape')
    if (!node || e.button !== 0) return
    const id = node.dataset.id
    const ymap = elements.get(id)
    if (!(ymap instanceof Y.Map)) return
    e.preventDefault()
    selection.set([id])
    bringToFront(ydoc, id)
    const el = readElement(ymap)
    const p = toBoardPoint(e)
    drag = { id, pointerId: e.pointerId, node, dx: p.x - el.x, dy: p.y - el.y, w: el.w, h: el.h }
    node.setPointerCapture(e.pointerId)
    node.classList.add('dragging')
  })

  shapesEl.addEventListener('pointermove', (e) => {
    if (!drag || e.pointerId !== drag.pointerId) return
    const p = toBoardPoint(e)
    const x = clamp(p.x - drag.dx, 0, Math.max(0, BOARD_SIZE.w - drag.w))
    const y = clamp(p.y - drag.dy, 0, Math.max(0, BOARD_SIZE.h - drag.h))
    commitMove(drag.id, x, y)
  })

  shapesEl.addEventListener('pointerup', endDrag)
  shapesEl.addEventListener('pointercancel', endDrag)
  shapesEl.addEventListener('lostpointercapture', endDrag)

  // Clicking empty board space clears the selection.
  // Also take focus away from text fields so keyboard shortcuts apply to the board.
  boardEl.addEventListener('pointerdown', (e) => {
    const active = document.activeElement
    if (active instanceof HTMLElement && active !== document.body) active.blur()
    if (!/** @type {HTMLElement} */ (e.target).closest('.shape')) selection.set([])
  })

  // ---- commands ----------------------------------------------------------------

  let lastFill = ''

  /** Add a shape of the given type at a random spot (and colour) inside the visible area. */
  const addRandomShape = (type) => {
    const w = randomInt(80, 180)
    const h = type === 'ellipse' ? randomInt(70, 160) : randomInt(60, 140)
    const left = viewportEl.scrollLeft
    const top = viewportEl.scrollTop
    const visW = Math.min(viewportEl.clientWidth, BOARD_SIZE.w)
    const visH = Math.min(viewportEl.clientHeight, BOARD_SIZE.h)
    const x = clamp(randomInt(left + 16, left + Math.max(16, visW - w - 16)), 0, BOARD_SIZE.w - w)
    const y = clamp(randomInt(top + 16, top + Math.max(16, visH - h - 16)), 0, BOARD_SIZE.h - h)
    const fill = pick(PALETTE.filter((c) => c !== lastFill))
    lastFill = fill
    const id = addElement(ydoc, { type, x, y, w, h, fill })
    selection.set([id])
    return id
  }

  const deleteSelected = () => {
    const ids = selection.get()
    if (ids.length === 0) return
    if (drag && ids.includes(drag.id)) { commitMove.cancel(); drag.node.classList.remove('dragging'); drag = null }
    deleteElements(ydoc, ids)
    selection.set([])
  }

  /** @param {Map<string, string>} map element id -> remote user's colour */
  const setRemoteSelections = (map) => {
    remoteSelections = map
    nodes.forEach((node, id) => applyDecorations(id, node))
  }

  renderAll()

  return { toBoardPoint, addRandomShape, deleteSelected, setRemoteSelections, renderAll }
}
