// Pan and zoom: screen = world * zoom + (x, y), screen relative to the viewport's top-left.
// The world layer gets one CSS transform; the dotted background follows it.

import { clamp, store } from './util.js'

export const MIN_ZOOM = 0.1
export const MAX_ZOOM = 5
const local = store('localStorage')

/**
 * @param {{ viewportEl: HTMLElement, worldEl: HTMLElement, storageKey?: string }} opts
 */
export const createCamera = ({ viewportEl, worldEl, storageKey }) => {
  let x = 0
  let y = 0
  let zoom = 1
  const listeners = new Set()

  if (storageKey) {
    try {
      const saved = JSON.parse(local.get(storageKey) || 'null')
      if (saved && [saved.x, saved.y, saved.zoom].every(Number.isFinite)) {
        x = saved.x; y = saved.y; zoom = clamp(saved.zoom, MIN_ZOOM, MAX_ZOOM)
      }
    } catch { /* ignore */ }
  }

  let saveTimer = 0
  const apply = () => {
    worldEl.style.transform = `translate(${x}px, ${y}px) scale(${zoom})`
    worldEl.style.setProperty('--zoom', String(zoom))
    const grid = 24 * zoom
    viewportEl.style.backgroundSize = `${grid}px ${grid}px`
    viewportEl.style.backgroundPosition = `${x}px ${y}px`
    viewportEl.classList.toggle('zoomed-out', zoom < 0.35)
    for (const fn of listeners) fn()
    if (storageKey) {
      clearTimeout(saveTimer)
      saveTimer = setTimeout(() => local.set(storageKey, JSON.stringify({ x, y, zoom })), 300)
    }
  }

  const viewportPoint = (clientX, clientY) => {
    const r = viewportEl.getBoundingClientRect()
    return { x: clientX - r.left, y: clientY - r.top }
  }

  const api = {
    get zoom () { return zoom },
    get state () { return { x, y, zoom } },
    /** client (page) coordinates -> world */
    toWorld (clientX, clientY) {
      const p = viewportPoint(clientX, clientY)
      return { x: (p.x - x) / zoom, y: (p.y - y) / zoom }
    },
    /** world -> viewport-relative screen coordinates */
    toScreen (wx, wy) { return { x: wx * zoom + x, y: wy * zoom + y } },
    panBy (dx, dy) { x += dx; y += dy; apply() },
    /** Zoom by `factor` keeping the viewport point (vx, vy) fixed (default: the centre). */
    zoomAt (factor, vx, vy) {
      const r = viewportEl.getBoundingClientRect()
      const cx = vx ?? r.width / 2
      const cy = vy ?? r.height / 2
      const next = clamp(zoom * factor, MIN_ZOOM, MAX_ZOOM)
      if (next === zoom) return
      x = cx - (cx - x) * (next / zoom)
      y = cy - (cy - y) * (next / zoom)
      zoom = next
      apply()
    },
    setZoom (next) { api.zoomAt(next / zoom) },
    /** Show the world rectangle {x, y, w, h} centred, with a margin. */
    fit (box, margin = 48) {
      const r = viewportEl.getBoundingClientRect()
      if (!box || box.w <= 0 || box.h <= 0 || r.width === 0) return
      zoom = clamp(Math.min((r.width - 2 * margin) / box.w, (r.height - 2 * margin) / box.h, 1), MIN_ZOOM, MAX_ZOOM)
      x = (r.width - box.w * zoom) / 2 - box.x * zoom
      y = (r.height - box.h * zoom) / 2 - box.y * zoom
      apply()
    },
    /** Centre of the visible area, in world coordinates. */
    visibleCenter () {
      const r = viewportEl.getBoundingClientRect()
      return { x: (r.width / 2 - x) / zoom, y: (r.height / 2 - y) / zoom }
    },
    onChange (fn) { listeners.add(fn); return () => listeners.delete(fn) },
    hasSavedState: () => Boolean(storageKey && local.get(storageKey))
  }
  apply()
  return api
}
