// Presence via the provider's awareness:
//   local state = { user: { name, color }, cursor: { x, y } | null, selection: [ids] }
// (cursor in world/board units). Renders remote cursors (screen space, so they
// keep their size at any zoom), the "here now" list and remote selections.
// When the server authenticates users it overwrites user.name / user.id in
// what it relays: we simply display whatever arrives.

import { PALETTE, pick, safeColor, safeNumber, store, throttle } from './util.js'

const NAME_KEY = 'canvashub.user.name'
const COLOR_KEY = 'canvashub.user.color'
const CURSOR_INTERVAL_MS = 33 // ~30 updates per second
const local = store('localStorage')

const ADJECTIVES = ['Blue', 'Swift', 'Quiet', 'Brave', 'Sunny', 'Clever', 'Lucky', 'Misty', 'Jolly', 'Gentle', 'Bold', 'Cosmic']
const ANIMALS = ['Fox', 'Otter', 'Panda', 'Heron', 'Lynx', 'Koala', 'Badger', 'Falcon', 'Seal', 'Tiger', 'Owl', 'Gecko']

export const randomName = () => `${pick(ADJECTIVES)} ${pick(ANIMALS)}`

/** The local user's identity, persisted in localStorage. */
export const loadUser = () => {
  let name = (local.get(NAME_KEY) || '').trim().slice(0, 32)
  if (!name) { name = randomName(); local.set(NAME_KEY, name) }
  let color = local.get(COLOR_KEY)
  if (!color || safeColor(color, '') === '') { color = pick(PALETTE); local.set(COLOR_KEY, color) }
  return { name, color }
}

const SVG_NS = 'http://www.w3.org/2000/svg'

const createCursorNode = () => {
  const node = document.createElement('div')
  node.className = 'cursor'
  node.dataset.testid = 'remote-cursor'
  const svg = document.createElementNS(SVG_NS, 'svg')
  svg.setAttribute('viewBox', '0 0 16 20')
  svg.setAttribute('width', '16')
  svg.setAttribute('height', '20')
  const path = document.createElementNS(SVG_NS, 'path')
  path.setAttribute('d', 'M1 1 L1 16 L5 12 L8 19 L10.5 18 L7.6 11.2 L13 11.2 Z')
  svg.append(path)
  const label = document.createElement('span')
  label.className = 'cursor-label'
  node.append(svg, label)
  return node
}

/**
 * @param {{
 *   awareness: import('y-protocols/awareness').Awareness,
 *   board: ReturnType<import('./board.js').createBoard>,
 *   camera: ReturnType<import('./camera.js').createCamera>,
 *   viewportEl: HTMLElement,
 *   cursorsEl: HTMLElement,
 *   userListEl: HTMLElement,
 *   userCountEl: HTMLElement,
 *   nameInput: HTMLInputElement,
 *   swatchEl: HTMLElement,
 *   selection: ReturnType<import('./selection.js').createSelection>
 * }} opts
 */
export const createPresence = ({
  awareness, board, camera, viewportEl, cursorsEl, userListEl, userCountEl, nameInput, swatchEl, selection
}) => {
  const user = loadUser()
  let lastCursor = null
  const localState = () => ({ user: { ...user }, cursor: lastCursor, selection: [...selection.get()] })
  awareness.setLocalState(localState())

  // ---- local user ------------------------------------------------------------

  nameInput.value = user.name
  swatchEl.style.background = user.color
  nameInput.addEventListener('input', () => {
    const name = nameInput.value.trim().slice(0, 32)
    if (!name) return
    user.name = name
    local.set(NAME_KEY, name)
    awareness.setLocalStateField('user', { ...user })
  })
  nameInput.addEventListener('blur', () => { nameInput.value = user.name })
  nameInput.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === 'Escape') nameInput.blur() })
  // clicking the swatch picks the next colour
  swatchEl.addEventListener('click', () => {
    user.color = PALETTE[(PALETTE.indexOf(user.color) + 1) % PALETTE.length]
    local.set(COLOR_KEY, user.color)
    swatchEl.style.background = user.color
    awareness.setLocalStateField('user', { ...user })
  })

  selection.onChange((ids) => awareness.setLocalStateField('selection', [...ids]))

  /** The server told us who we are (token mode): show that name; it is not ours to change. */
  const setIdentity = (identity) => {
    if (!identity || typeof identity.name !== 'string' || !identity.name) return
    user.name = identity.name.slice(0, 32)
    nameInput.value = user.name
    nameInput.readOnly = true
    nameInput.title = 'Your name comes from your access token'
    awareness.setLocalStateField('user', { ...user })
  }

  // ---- local cursor ----------------------------------------------------------

  const sendCursor = throttle((point) => awareness.setLocalStateField('cursor', point), CURSOR_INTERVAL_MS)
  viewportEl.addEventListener('pointermove', (e) => {
    const p = board.toWorld(e)
    lastCursor = { x: Math.round(p.x * 10) / 10, y: Math.round(p.y * 10) / 10 }
    sendCursor(lastCursor)
  })
  viewportEl.addEventListener('pointerleave', () => {
    sendCursor.cancel()
    lastCursor = null
    awareness.setLocalStateField('cursor', null)
  })

  // Tell peers we left right away instead of waiting for the awareness timeout.
  window.addEventListener('pagehide', () => awareness.setLocalState(null))
  window.addEventListener('pageshow', (e) => { if (e.persisted) awareness.setLocalState(localState()) })

  // ---- remote rendering ------------------------------------------------------

  /** @type {Map<number, { node: HTMLElement, x: number, y: number }>} */
  const cursors = new Map()
  let listKey = ''

  const placeCursor = (c) => {
    const s = camera.toScreen(c.x, c.y)
    c.node.style.transform = `translate(${s.x}px, ${s.y}px)`
  }
  camera.onChange(() => cursors.forEach(placeCursor))

  const render = () => {
    const states = awareness.getStates()
    const seen = new Set()
    const people = []
    const remoteSelections = new Map()

    states.forEach((state, clientId) => {
      if (!state || typeof state.user !== 'object' || state.user === null) return
      const isLocal = clientId === awareness.clientID
      const name = String(state.user.name ?? 'Anonymous').slice(0, 32) || 'Anonymous'
      const color = safeColor(state.user.color)
      people.push({ clientId, name, color, isLocal })
      if (isLocal) return

      if (Array.isArray(state.selection)) {
        for (const id of state.selection.slice(0, 1000)) if (typeof id === 'string') remoteSelections.set(id, color)
      }

      const c = state.cursor
      if (c && typeof c === 'object' && Number.isFinite(c.x) && Number.isFinite(c.y)) {
        let entry = cursors.get(clientId)
        if (!entry) {
          entry = { node: createCursorNode(), x: 0, y: 0 }
          cursorsEl.append(entry.node)
          cursors.set(clientId, entry)
        }
        entry.x = safeNumber(c.x)
        entry.y = safeNumber(c.y)
        placeCursor(entry)
        entry.node.style.setProperty('--cursor-color', color)
        entry.node.dataset.name = name
        entry.node.querySelector('.cursor-label').textContent = name
        seen.add(clientId)
      }
    })

    cursors.forEach((entry, clientId) => {
      if (!seen.has(clientId)) { entry.node.remove(); cursors.delete(clientId) }
    })

    board.setRemoteSelections(remoteSelections)

    people.sort((a, b) => (b.isLocal - a.isLocal) || a.name.localeCompare(b.name) || a.clientId - b.clientId)
    // cursor moves change awareness ~30 times a second: rebuild the list only when it changed
    const key = JSON.stringify(people)
    if (key === listKey) return
    listKey = key
    userListEl.replaceChildren(...people.map((p) => {
      const li = document.createElement('li')
      li.dataset.testid = 'presence-user'
      li.dataset.name = p.name
      if (p.isLocal) li.className = 'me'
      li.title = p.name
      const avatar = document.createElement('span')
      avatar.className = 'avatar'
      avatar.style.background = p.color
      avatar.textContent = p.name.trim().slice(0, 1).toUpperCase()
      const label = document.createElement('span')
      label.className = 'name'
      label.textContent = p.isLocal ? `${p.name} (you)` : p.name
      li.append(avatar, label)
      return li
    }))
    userCountEl.textContent = String(people.length)
  }

  awareness.on('change', render)
  render()

  return { user, render, setIdentity }
}
