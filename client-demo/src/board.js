// The canvas: renders the shared elements and turns pointer input into edits.
//
//   select tool : click / shift-click / rubber band to select; drag to move;
//                 handles to resize (shift keeps the aspect ratio); double-click
//                 a text or sticky note to edit it
//   shape tools : drag out a rectangle, ellipse, text box or sticky note (a
//                 click makes a default-sized one); then back to select
//   pan         : space-drag, middle-drag, the hand tool (H), or any drag in view-only mode
//   zoom        : wheel / pinch (around the pointer), buttons and + / - / 0
//
// All writes go through model.js with LOCAL_ORIGIN, at most one transaction
// per animation frame while dragging, and each gesture is one undo step.

import * as Y from 'yjs'
import {
  TEXT_TYPES, addElement, bringToFront, deleteElements, duplicateElements, getElements, readElement, updateElements
} from './model.js'
import { createElementNode, paintElement, stackOrder } from './render.js'
import { clamp, rafThrottle } from './util.js'

const MIN_SIZE = 8
const CLICK_SLOP = 4 // screen px: below this a press is a click, not a drag
const DEFAULT_SIZE = { rect: [160, 110], ellipse: [140, 120], text: [240, 48], sticky: [180, 160] }
export const CREATE_TOOLS = ['rect', 'ellipse', 'text', 'sticky']
const HANDLES = ['nw', 'n', 'ne', 'e', 'se', 's', 'sw', 'w']
/** Controls floating over the canvas (they handle their own input). */
const UI_CONTROLS = '.text-editor, .props-bar, .zoom-controls, .version-preview, button, input, a'

/**
 * @param {{
 *   ydoc: Y.Doc,
 *   viewportEl: HTMLElement, worldEl: HTMLElement, elementsEl: HTMLElement, overlayEl: HTMLElement,
 *   camera: ReturnType<import('./camera.js').createCamera>,
 *   selection: ReturnType<import('./selection.js').createSelection>,
 *   undoManager: Y.UndoManager,
 *   canEdit: () => boolean,
 *   assetUrl: (src: string) => string,
 *   getFill: (type: string) => string | undefined,
 * }} opts
 */
export const createBoard = ({ ydoc, viewportEl, worldEl, elementsEl, overlayEl, camera, selection, undoManager, canEdit, assetUrl, getFill }) => {
  const elements = getElements(ydoc)
  /** @type {Map<string, HTMLElement>} */
  const nodes = new Map()
  /** element id -> colour of a remote user selecting it */
  let remoteSelections = new Map()
  let tool = 'select'
  let spaceHeld = false
  const toolListeners = new Set()

  // ---- rendering -------------------------------------------------------------

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
      node = createElementNode(id)
      elementsEl.append(node)
      nodes.set(id, node)
    }
    paintElement(node, readElement(ymap), assetUrl)
    applyDecorations(id, node)
  }

  const restack = () => {
    const order = stackOrder([...nodes.keys()].map((id) => ({ id, z: readElement(elements.get(id)).z })))
    order.forEach(({ id }, i) => { nodes.get(id).style.zIndex = String(i + 1) })
  }

  const renderAll = () => {
    for (const id of [...nodes.keys()]) if (!elements.has(id)) renderElement(id)
    elements.forEach((_, id) => renderElement(id))
    restack()
    scheduleOverlay()
  }

  elements.observeDeep((events) => {
    const changed = new Set()
    let needsRestack = false
    for (const event of events) {
      if (event.target === elements) {
        event.keysChanged.forEach((id) => changed.add(id))
        needsRestack = true
      } else if (event.path.length > 0) {
        changed.add(String(event.path[0]))
        if (event.keysChanged.has('z')) needsRestack = true
      }
    }
    changed.forEach(renderElement)
    if (needsRestack) restack()
    selection.prune((id) => elements.get(id) instanceof Y.Map)
    if (editing && !(elements.get(editing.id) instanceof Y.Map)) stopEditing(false)
    scheduleOverlay()
  })

  selection.onChange(() => {
    nodes.forEach((node, id) => applyDecorations(id, node))
    scheduleOverlay()
  })

  // ---- selection box + handles (screen space) ---------------------------------

  const selBox = document.createElement('div')
  selBox.className = 'selection-box'
  selBox.dataset.testid = 'selection-box'
  for (const dir of HANDLES) {
    const h = document.createElement('div')
    h.className = `handle handle-${dir}`
    h.dataset.handle = dir
    h.dataset.testid = `handle-${dir}`
    selBox.append(h)
  }
  const band = document.createElement('div')
  band.className = 'rubber-band'
  band.dataset.testid = 'rubber-band'
  const ghost = document.createElement('div')
  ghost.className = 'create-ghost'
  overlayEl.append(selBox, band, ghost)

  const boundsOf = (ids) => {
    let x0 = Infinity; let y0 = Infinity; let x1 = -Infinity; let y1 = -Infinity
    for (const id of ids) {
      const ymap = elements.get(id)
      if (!(ymap instanceof Y.Map)) continue
      const el = readElement(ymap)
      x0 = Math.min(x0, el.x); y0 = Math.min(y0, el.y)
      x1 = Math.max(x1, el.x + el.w); y1 = Math.max(y1, el.y + el.h)
    }
    return Number.isFinite(x0) ? { x: x0, y: y0, w: x1 - x0, h: y1 - y0 } : null
  }

  const placeScreenBox = (node, box) => {
    const a = camera.toScreen(box.x, box.y)
    node.style.transform = `translate(${a.x}px, ${a.y}px)`
    node.style.width = `${box.w * camera.zoom}px`
    node.style.height = `${box.h * camera.zoom}px`
  }

  const updateOverlay = () => {
    const ids = selection.get()
    const box = ids.length ? boundsOf(ids) : null
    if (!box || (editing && ids.length === 1)) {
      selBox.hidden = true
      return
    }
    selBox.hidden = false
    selBox.classList.toggle('readonly', !canEdit())
    selBox.classList.toggle('multi', ids.length > 1)
    placeScreenBox(selBox, box)
  }
  const scheduleOverlay = rafThrottle(updateOverlay)
  camera.onChange(() => { updateOverlay(); if (editing) placeEditor() })

  // ---- commits (one transaction per frame) ----------------------------------

  const commitPatches = rafThrottle((patches) => updateElements(ydoc, patches))

  // ---- gestures -----------------------------------------------------------------

  /** @type {null | { kind: string, pointerId: number, startClient: {x:number,y:number}, startWorld: {x:number,y:number}, moved: boolean, [k: string]: any }} */
  let gesture = null

  const elementIdAt = (target) => {
    const node = /** @type {HTMLElement} */ (target).closest?.('.element')
    return node && node.dataset.id && elements.get(node.dataset.id) instanceof Y.Map ? node.dataset.id : null
  }

  const beginGesture = (e, kind, extra = {}) => {
    gesture = { kind, pointerId: e.pointerId, startClient: { x: e.clientX, y: e.clientY }, startWorld: camera.toWorld(e.clientX, e.clientY), moved: false, ...extra }
    try { viewportEl.setPointerCapture(e.pointerId) } catch { /* synthetic events */ }
    viewportEl.classList.add(`gesture-${kind}`)
  }

  viewportEl.addEventListener('pointerdown', (e) => {
    if (gesture) return
    const target = /** @type {HTMLElement} */ (e.target)
    if (target.closest(UI_CONTROLS)) return
    if (editing) stopEditing(true)
    // take focus away from text fields so keyboard shortcuts apply to the canvas
    const active = document.activeElement
    if (active instanceof HTMLElement && active !== document.body && active !== viewportEl) active.blur()
    viewportEl.focus({ preventScroll: true })

    const editable = canEdit()
    if (e.button === 1 || (e.button === 0 && (spaceHeld || tool === 'hand'))) {
      e.preventDefault()
      beginGesture(e, 'pan', { last: { x: e.clientX, y: e.clientY } })
      return
    }
    if (e.button !== 0) return
    e.preventDefault()

    const handle = target.closest('.handle')
    if (handle && editable && selection.get().length > 0) {
      const ids = selection.get().filter((id) => elements.get(id) instanceof Y.Map)
      const box = boundsOf(ids)
      if (!box) return
      const originals = new Map(ids.map((id) => [id, readElement(elements.get(id))]))
      undoManager.stopCapturing()
      beginGesture(e, 'resize', { dir: handle.dataset.handle, box, originals })
      return
    }

    if (editable && CREATE_TOOLS.includes(tool)) {
      beginGesture(e, 'create', { type: tool })
      return
    }

    const id = elementIdAt(target)
    if (id) {
      if (e.shiftKey) {
        if (selection.has(id)) { selection.set(selection.get().filter((s) => s !== id)); return }
        selection.set([...selection.get(), id])
      } else if (!selection.has(id)) {
        selection.set([id])
      }
      if (!editable) return
      const ids = selection.get().filter((s) => elements.get(s) instanceof Y.Map)
      const originals = new Map(ids.map((s) => [s, readElement(elements.get(s))]))
      undoManager.stopCapturing()
      beginGesture(e, 'move', { ids, originals, clickedId: id })
      return
    }

    // empty canvas: a finger pans (rubber-band selection is for mice and pens)
    if (!editable || e.pointerType === 'touch') {
      if (!e.shiftKey) selection.set([])
      beginGesture(e, 'pan', { last: { x: e.clientX, y: e.clientY } })
      return
    }
    beginGesture(e, 'band', { additive: e.shiftKey, base: e.shiftKey ? selection.get() : [] })
    if (!e.shiftKey) selection.set([])
  })

  viewportEl.addEventListener('pointermove', (e) => {
    if (!gesture || e.pointerId !== gesture.pointerId) return
    const g = gesture
    if (!g.moved && Math.hypot(e.clientX - g.startClient.x, e.clientY - g.startClient.y) < CLICK_SLOP) return
    const firstMove = !g.moved
    g.moved = true
    const p = camera.toWorld(e.clientX, e.clientY)
    const dx = p.x - g.startWorld.x
    const dy = p.y - g.startWorld.y

    if (g.kind === 'pan') {
      camera.panBy(e.clientX - g.last.x, e.clientY - g.last.y)
      g.last = { x: e.clientX, y: e.clientY }
    } else if (g.kind === 'move') {
      if (firstMove) bringToFront(ydoc, g.ids)
      commitPatches([...g.originals].map(([id, o]) => [id, { x: o.x + dx, y: o.y + dy }]))
    } else if (g.kind === 'resize') {
      commitPatches(resizePatches(g, p, e.shiftKey))
    } else if (g.kind === 'band' || g.kind === 'create') {
      const box = normBox(g.startWorld, p)
      const target = g.kind === 'band' ? band : ghost
      target.style.display = 'block'
      target.dataset.type = g.type || ''
      placeScreenBox(target, box)
      if (g.kind === 'band') {
        const hits = []
        elements.forEach((ymap, id) => {
          if (!(ymap instanceof Y.Map)) return
          const el = readElement(ymap)
          if (el.x < box.x + box.w && el.x + el.w > box.x && el.y < box.y + box.h && el.y + el.h > box.y) hits.push(id)
        })
        selection.set([...new Set([...g.base, ...hits])])
      }
    }
  })

  const endGesture = (e) => {
    if (!gesture || (e && e.pointerId !== gesture.pointerId)) return
    const g = gesture
    gesture = null
    viewportEl.classList.remove(`gesture-${g.kind}`)
    band.style.display = 'none'
    ghost.style.display = 'none'
    if (g.kind === 'move' || g.kind === 'resize') {
      commitPatches.flush()
      undoManager.stopCapturing()
      if (g.kind === 'move' && !g.moved && !e?.shiftKey && selection.get().length > 1 && e?.type === 'pointerup') {
        selection.set([g.clickedId]) // a plain click inside a multi-selection selects just that element
      }
    } else if (g.kind === 'create' && e?.type === 'pointerup') {
      const end = camera.toWorld(e.clientX, e.clientY)
      let box = normBox(g.startWorld, end)
      if (!g.moved || box.w < MIN_SIZE || box.h < MIN_SIZE) {
        const [w, h] = DEFAULT_SIZE[g.type]
        box = { x: g.startWorld.x - (g.type === 'text' ? 8 : w / 2), y: g.startWorld.y - (g.type === 'text' ? h / 2 : h / 2), w, h }
      }
      undoManager.stopCapturing()
      const id = addElement(ydoc, { type: g.type, ...box, fill: getFill(g.type) })
      undoManager.stopCapturing()
      selection.set([id])
      setTool('select')
      if (TEXT_TYPES.includes(g.type)) startEditing(id)
    }
  }
  viewportEl.addEventListener('pointerup', endGesture)
  viewportEl.addEventListener('pointercancel', endGesture)
  viewportEl.addEventListener('lostpointercapture', endGesture)

  const normBox = (a, b) => ({ x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), w: Math.abs(b.x - a.x), h: Math.abs(b.y - a.y) })

  const resizePatches = (g, p, keepAspect) => {
    const { box, dir } = g
    let x0 = box.x; let y0 = box.y; let x1 = box.x + box.w; let y1 = box.y + box.h
    if (dir.includes('w')) x0 = Math.min(p.x, x1 - MIN_SIZE)
    if (dir.includes('e')) x1 = Math.max(p.x, x0 + MIN_SIZE)
    if (dir.includes('n')) y0 = Math.min(p.y, y1 - MIN_SIZE)
    if (dir.includes('s')) y1 = Math.max(p.y, y0 + MIN_SIZE)
    let sx = (x1 - x0) / box.w
    let sy = (y1 - y0) / box.h
    const corner = dir.length === 2
    const images = [...g.originals.values()].every((o) => o.type === 'image')
    if ((keepAspect || (images && g.originals.size === 1)) && corner) {
      const s = Math.max(sx, sy)
      sx = sy = s
      if (dir.includes('w')) x0 = x1 - box.w * s
      if (dir.includes('n')) y0 = y1 - box.h * s
    }
    return [...g.originals].map(([id, o]) => [id, {
      x: x0 + (o.x - box.x) * sx,
      y: y0 + (o.y - box.y) * sy,
      w: Math.max(1, o.w * sx),
      h: Math.max(1, o.h * sy)
    }])
  }

  // ---- zoom ---------------------------------------------------------------------------

  viewportEl.addEventListener('wheel', (e) => {
    if (/** @type {HTMLElement} */ (e.target).closest('.version-preview, .props-bar')) return
    e.preventDefault()
    const r = viewportEl.getBoundingClientRect()
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1
    const k = e.ctrlKey ? 0.01 : 0.0015 // pinch gestures arrive as ctrl+wheel with small deltas
    camera.zoomAt(Math.exp(-e.deltaY * unit * k), e.clientX - r.left, e.clientY - r.top)
  }, { passive: false })

  // ---- text editing -----------------------------------------------------------------

  /** @type {null | { id: string, textarea: HTMLTextAreaElement }} */
  let editing = null
  const commitText = rafThrottle((id, text) => updateElements(ydoc, [[id, { text }]]))

  const placeEditor = () => {
    if (!editing) return
    const ymap = elements.get(editing.id)
    if (!(ymap instanceof Y.Map)) return
    const el = readElement(ymap)
    const ta = editing.textarea
    ta.style.transform = `translate(${el.x}px, ${el.y}px)`
    ta.style.width = `${el.w}px`
    ta.style.height = `${el.h}px`
    ta.dataset.type = el.type
    ta.style.color = el.type === 'text' ? el.fill : ''
    ta.style.background = el.type === 'sticky' ? el.fill : 'transparent'
  }

  const startEditing = (id) => {
    if (!canEdit()) return
    const ymap = elements.get(id)
    if (!(ymap instanceof Y.Map) || !TEXT_TYPES.includes(readElement(ymap).type)) return
    if (editing) stopEditing(true)
    const textarea = document.createElement('textarea')
    textarea.className = 'text-editor'
    textarea.dataset.testid = 'text-editor'
    textarea.spellcheck = true
    textarea.value = readElement(ymap).text
    editing = { id, textarea }
    nodes.get(id)?.classList.add('editing')
    worldEl.append(textarea)
    placeEditor()
    undoManager.stopCapturing()
    textarea.addEventListener('input', () => commitText(id, textarea.value))
    textarea.addEventListener('keydown', (e) => {
      e.stopPropagation()
      if (e.key === 'Escape' || (e.key === 'Enter' && (e.metaKey || e.ctrlKey))) { e.preventDefault(); stopEditing(true) }
    })
    textarea.addEventListener('blur', () => stopEditing(true))
    textarea.focus()
    textarea.select()
    scheduleOverlay()
  }

  const stopEditing = (commit) => {
    if (!editing) return
    const { id, textarea } = editing
    editing = null
    if (commit) {
      commitText(id, textarea.value)
      commitText.flush()
    } else {
      commitText.cancel()
    }
    undoManager.stopCapturing()
    nodes.get(id)?.classList.remove('editing')
    textarea.remove()
    viewportEl.focus({ preventScroll: true })
    scheduleOverlay()
  }

  viewportEl.addEventListener('dblclick', (e) => {
    // with pointer capture on the viewport the event targets the viewport: look under the pointer
    const under = document.elementFromPoint(e.clientX, e.clientY)
    const id = under ? elementIdAt(/** @type {HTMLElement} */ (under)) : null
    if (id && tool === 'select') startEditing(id)
  })

  // ---- tools + commands ---------------------------------------------------------------

  const setTool = (next) => {
    if (next !== 'select' && next !== 'hand' && !canEdit()) next = 'select'
    tool = next
    viewportEl.dataset.tool = tool
    for (const fn of toolListeners) fn(tool)
  }

  const setSpaceHeld = (held) => {
    spaceHeld = held
    viewportEl.classList.toggle('space-held', held)
  }

  /** Add an element of `type` at the centre of the view (toolbar double action / keyboard with Shift). */
  const addAtCenter = (type, props = {}) => {
    const c = camera.visibleCenter()
    const [w, h] = DEFAULT_SIZE[type] || [160, 110]
    undoManager.stopCapturing()
    const id = addElement(ydoc, { type, x: c.x - w / 2, y: c.y - h / 2, w, h, fill: getFill(type), ...props })
    undoManager.stopCapturing()
    selection.set([id])
    return id
  }

  const deleteSelected = () => {
    const ids = selection.get()
    if (ids.length === 0 || !canEdit()) return
    if (gesture && (gesture.kind === 'move' || gesture.kind === 'resize')) { commitPatches.cancel(); gesture = null }
    if (editing && ids.includes(editing.id)) stopEditing(false)
    undoManager.stopCapturing()
    deleteElements(ydoc, ids)
    undoManager.stopCapturing()
    selection.set([])
  }

  const duplicateSelected = () => {
    const ids = selection.get()
    if (ids.length === 0 || !canEdit()) return
    undoManager.stopCapturing()
    selection.set(duplicateElements(ydoc, ids))
    undoManager.stopCapturing()
  }

  const nudge = (dx, dy) => {
    const ids = selection.get()
    if (ids.length === 0 || !canEdit()) return
    updateElements(ydoc, ids.map((id) => {
      const el = readElement(elements.get(id))
      return [id, { x: el.x + dx, y: el.y + dy }]
    }))
  }

  const recolor = (fill) => {
    const ids = selection.get().filter((id) => readElement(elements.get(id)).type !== 'image')
    if (ids.length === 0 || !canEdit()) return
    undoManager.stopCapturing()
    updateElements(ydoc, ids.map((id) => [id, { fill }]))
    undoManager.stopCapturing()
  }

  const selectAll = () => {
    const ids = []
    elements.forEach((v, id) => { if (v instanceof Y.Map) ids.push(id) })
    selection.set(ids)
  }

  const fitAll = () => {
    const ids = []
    elements.forEach((v, id) => { if (v instanceof Y.Map) ids.push(id) })
    const box = boundsOf(ids)
    if (box) camera.fit(box)
    else camera.setZoom(1)
  }

  /** @param {Map<string, string>} map element id -> remote user's colour */
  const setRemoteSelections = (map) => {
    const same = map.size === remoteSelections.size && [...map].every(([id, c]) => remoteSelections.get(id) === c)
    if (same) return // awareness changes ~30 times a second, mostly cursor moves
    const changed = new Set([...map.keys(), ...remoteSelections.keys()])
    remoteSelections = map
    for (const id of changed) { const node = nodes.get(id); if (node) applyDecorations(id, node) }
  }

  /** Called when edit rights change (access event). */
  const refreshPermissions = () => {
    if (!canEdit()) {
      if (editing) stopEditing(false)
      if (tool !== 'select' && tool !== 'hand') setTool('select')
    }
    scheduleOverlay()
  }

  renderAll()
  setTool('select')

  return {
    renderAll,
    setTool,
    get tool () { return tool },
    onToolChange (fn) { toolListeners.add(fn); return () => toolListeners.delete(fn) },
    setSpaceHeld,
    get isEditingText () { return editing !== null },
    stopEditing,
    startEditing,
    addAtCenter,
    deleteSelected,
    duplicateSelected,
    nudge,
    recolor,
    selectAll,
    fitAll,
    boundsOf,
    setRemoteSelections,
    refreshPermissions,
    toWorld: (e) => camera.toWorld(e.clientX, e.clientY),
    bringSelectionToFront: () => { if (canEdit()) bringToFront(ydoc, selection.get()) },
    clampZoom: (z) => clamp(z, 0.1, 5)
  }
}
