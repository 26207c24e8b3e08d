// The shared document schema. Server code and docs rely on it — keep it stable.
//
//   ydoc.getMap('elements') : Y.Map<elementId, Y.Map>
//     elementId : random 12-char string [A-Za-z0-9]
//     element   : Y.Map with keys
//       type : 'rect' | 'ellipse'
//       x, y : number   (top-left, board pixels)
//       w, h : number   (size, board pixels)
//       fill : string   (CSS colour, e.g. '#ef476f')
//       z    : number   (stacking order, higher is on top)

import * as Y from 'yjs'
import { randomId, safeColor, safeNumber } from './util.js'

export const ELEMENTS_KEY = 'elements'
export const SHAPE_TYPES = /** @type {const} */ (['rect', 'ellipse'])

/** Transaction origin for edits made by this tab (lets observers tell local from remote). */
export const LOCAL_ORIGIN = Symbol('canvashub-local')

/** @param {Y.Doc} ydoc */
export const getElements = (ydoc) => ydoc.getMap(ELEMENTS_KEY)

/**
 * Plain-object snapshot of one element, with defensive defaults for
 * malformed data coming from peers.
 * @param {Y.Map<any>} ymap
 */
export const readElement = (ymap) => ({
  type: SHAPE_TYPES.includes(ymap.get('type')) ? ymap.get('type') : 'rect',
  x: safeNumber(ymap.get('x')),
  y: safeNumber(ymap.get('y')),
  w: Math.max(1, safeNumber(ymap.get('w'), 100)),
  h: Math.max(1, safeNumber(ymap.get('h'), 100)),
  fill: safeColor(ymap.get('fill')),
  z: safeNumber(ymap.get('z'))
})

export const maxZ = (elements) => {
  let z = 0
  elements.forEach((el) => { z = Math.max(z, safeNumber(el.get('z'))) })
  return z
}

/**
 * Add a shape and return its id.
 * @param {Y.Doc} ydoc
 * @param {{ type: 'rect'|'ellipse', x: number, y: number, w: number, h: number, fill: string, z?: number }} props
 */
export const addElement = (ydoc, props) => {
  const elements = getElements(ydoc)
  const id = randomId(12)
  ydoc.transact(() => {
    const el = new Y.Map()
    el.set('type', props.type)
    el.set('x', props.x)
    el.set('y', props.y)
    el.set('w', props.w)
    el.set('h', props.h)
    el.set('fill', props.fill)
    el.set('z', props.z ?? maxZ(elements) + 1)
    elements.set(id, el)
  }, LOCAL_ORIGIN)
  return id
}

/**
 * Set some keys of an element in one transaction (no-op if it was deleted meanwhile).
 * @param {Y.Doc} ydoc
 * @param {string} id
 * @param {Record<string, unknown>} patch
 */
export const updateElement = (ydoc, id, patch) => {
  const el = getElements(ydoc).get(id)
  if (!(el instanceof Y.Map)) return
  ydoc.transact(() => {
    for (const [key, value] of Object.entries(patch)) {
      if (el.get(key) !== value) el.set(key, value)
    }
  }, LOCAL_ORIGIN)
}

/** @param {Y.Doc} ydoc @param {string[]} ids */
export const deleteElements = (ydoc, ids) => {
  const elements = getElements(ydoc)
  ydoc.transact(() => {
    for (const id of ids) elements.delete(id)
  }, LOCAL_ORIGIN)
}

/** Move an element to the top of the stack (if it is not already there). */
export const bringToFront = (ydoc, id) => {
  const elements = getElements(ydoc)
  const el = elements.get(id)
  if (!(el instanceof Y.Map)) return
  const top = maxZ(elements)
  const z = safeNumber(el.get('z'))
  let sharesTop = false
  elements.forEach((other, otherId) => {
    if (otherId !== id && safeNumber(other.get('z')) === top) sharesTop = true
  })
  if (z < top || sharesTop) updateElement(ydoc, id, { z: top + 1 })
}
