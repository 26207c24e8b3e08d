// The shared document schema and every local write. Server code and docs rely
// on it — keep it stable (see "Shared document schema" in ../README.md).
//
//   ydoc.getMap('elements') : Y.Map<elementId, Y.Map>
//     elementId : random 12-char [A-Za-z0-9] (client-made); "gen-<job id>" (generation results)
//     type : 'rect' | 'ellipse' | 'text' | 'sticky' | 'image'
//     x, y : number   top-left, board units
//     w, h : number   size, board units
//     fill : string   CSS colour: shape fill, sticky background, text colour (not used by images)
//     z    : number   stacking order, higher on top (missing = 0; ties broken by id)
//     text : string   'text' and 'sticky' only (plain string, last writer wins)
//     src  : string   'image' only: "/assets/<id>" (resolved against the app's base path)
//     generation_id : string  'image' elements written by a generation job
//
// Every local transaction uses LOCAL_ORIGIN: the undo manager tracks exactly
// that origin (so undo only ever reverts this tab's own changes).

import * as Y from 'yjs'
import { randomId, safeColor, safeNumber } from './util.js'

export const ELEMENTS_KEY = 'elements'
export const ELEMENT_TYPES = /** @type {const} */ (['rect', 'ellipse', 'text', 'sticky', 'image'])
export const TEXT_TYPES = ['text', 'sticky']

/** Transaction origin of every edit made by this tab. */
export const LOCAL_ORIGIN = Symbol('canvashub-local')

export const DEFAULT_FILL = { rect: '#4361ee', ellipse: '#ef476f', text: '#1f2328', sticky: '#ffd166', image: '#ffffff' }

/** @param {Y.Doc} ydoc @returns {Y.Map<any>} */
export const getElements = (ydoc) => ydoc.getMap(ELEMENTS_KEY)

const ASSET_SRC_RE = /^\/assets\/[A-Za-z0-9_-]{1,128}$/

/**
 * Plain, sanitised snapshot of one element (Y.Map or plain JSON object from the
 * HTTP API), with defaults for missing or malformed fields written by peers.
 */
export const readElement = (value) => {
  const get = value instanceof Y.Map ? (k) => value.get(k) : (k) => (value && typeof value === 'object' ? value[k] : undefined)
  const type = ELEMENT_TYPES.includes(get('type')) ? get('type') : 'rect'
  const text = get('text')
  const src = get('src')
  return {
    type,
    x: safeNumber(get('x')),
    y: safeNumber(get('y')),
    w: Math.max(1, safeNumber(get('w'), 100)),
    h: Math.max(1, safeNumber(get('h'), 100)),
    fill: safeColor(get('fill'), DEFAULT_FILL[type]),
    z: safeNumber(get('z')),
    text: typeof text === 'string' ? text.slice(0, 10000) : '',
    src: typeof src === 'string' && ASSET_SRC_RE.test(src) ? src : ''
  }
}

export const maxZ = (elements) => {
  let z = 0
  elements.forEach((el) => { if (el instanceof Y.Map) z = Math.max(z, safeNumber(el.get('z'))) })
  return z
}

const round = (v) => Math.round(v * 100) / 100

/**
 * Add an element; returns its id.
 * @param {Y.Doc} ydoc
 * @param {{ type: string, x: number, y: number, w: number, h: number, fill?: string, z?: number, text?: string, src?: string }} props
 */
export const addElement = (ydoc, props) => {
  const elements = getElements(ydoc)
  const id = randomId(12)
  ydoc.transact(() => {
    const el = new Y.Map()
    el.set('type', props.type)
    el.set('x', round(props.x))
    el.set('y', round(props.y))
    el.set('w', round(props.w))
    el.set('h', round(props.h))
    el.set('fill', props.fill ?? DEFAULT_FILL[props.type] ?? '#888888')
    el.set('z', props.z ?? maxZ(elements) + 1)
    if (TEXT_TYPES.includes(props.type)) el.set('text', props.text ?? '')
    if (props.src) el.set('src', props.src)
    elements.set(id, el)
  }, LOCAL_ORIGIN)
  return id
}

/** Add copies of existing elements (offset a little); returns the new ids. */
export const duplicateElements = (ydoc, ids, offset = 24) => {
  const elements = getElements(ydoc)
  const out = []
  ydoc.transact(() => {
    let z = maxZ(elements)
    for (const id of ids) {
      const src = elements.get(id)
      if (!(src instanceof Y.Map)) continue
      const copy = new Y.Map()
      src.forEach((value, key) => copy.set(key, value))
      copy.set('x', safeNumber(src.get('x')) + offset)
      copy.set('y', safeNumber(src.get('y')) + offset)
      copy.set('z', ++z)
      copy.delete('generation_id')
      const newId = randomId(12)
      elements.set(newId, copy)
      out.push(newId)
    }
  }, LOCAL_ORIGIN)
  return out
}

/**
 * Set keys of several elements in one transaction; elements deleted meanwhile are skipped.
 * @param {Y.Doc} ydoc
 * @param {Map<string, Record<string, unknown>> | Array<[string, Record<string, unknown>]>} patches
 */
export const updateElements = (ydoc, patches) => {
  const elements = getElements(ydoc)
  ydoc.transact(() => {
    for (const [id, patch] of patches) {
      const el = elements.get(id)
      if (!(el instanceof Y.Map)) continue
      for (const [key, raw] of Object.entries(patch)) {
        const value = typeof raw === 'number' ? round(raw) : raw
        if (el.get(key) !== value) el.set(key, value)
      }
    }
  }, LOCAL_ORIGIN)
}

export const updateElement = (ydoc, id, patch) => updateElements(ydoc, [[id, patch]])

/** @param {Y.Doc} ydoc @param {string[]} ids */
export const deleteElements = (ydoc, ids) => {
  const elements = getElements(ydoc)
  ydoc.transact(() => {
    for (const id of ids) if (elements.has(id)) elements.delete(id)
  }, LOCAL_ORIGIN)
}

/** Move elements to the top of the stack, keeping their relative order; no-op if already there. */
export const bringToFront = (ydoc, ids) => {
  const elements = getElements(ydoc)
  const chosen = ids.filter((id) => elements.get(id) instanceof Y.Map)
  if (chosen.length === 0) return
  const zOf = (id) => safeNumber(elements.get(id).get('z'))
  const chosenSet = new Set(chosen)
  let othersTop = -Infinity
  elements.forEach((el, id) => { if (!chosenSet.has(id) && el instanceof Y.Map) othersTop = Math.max(othersTop, safeNumber(el.get('z'))) })
  if (chosen.every((id) => zOf(id) > othersTop)) return
  const top = maxZ(elements)
  const ordered = [...chosen].sort((a, b) => (zOf(a) - zOf(b)) || (a < b ? -1 : 1))
  updateElements(ydoc, ordered.map((id, i) => [id, { z: top + 1 + i }]))
}

/** Move elements below everything else. */
export const sendToBack = (ydoc, ids) => {
  const elements = getElements(ydoc)
  let min = Infinity
  elements.forEach((el) => { if (el instanceof Y.Map) min = Math.min(min, safeNumber(el.get('z'))) })
  if (!Number.isFinite(min)) return
  const ordered = ids.filter((id) => elements.get(id) instanceof Y.Map)
  updateElements(ydoc, ordered.map((id, i) => [id, { z: min - ordered.length + i }]))
}
