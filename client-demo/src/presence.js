// Presence via the provider's awareness:
//   local state = { user: { name, color }, cursor: { x, y } | null, selection: [ids] }
// Renders remote cursors on the board and the "here now" list.

import { PALETTE, pick, safeColor, safeNumber, throttle } from './util.js'

const NAME_KEY = 'canvashub.user.name'
const COLOR_KEY = 'canvashub.user.color'
const CURSOR_INTERVAL_MS = 33 // ~30 updates per second

const ADJECTIVES = ['Blue', 'Swift', 'Quiet', 'Brave', 'Sunny', 'Clever', 'Lucky', 'Misty', 'Jolly', 'Gentle', 'Bold', 'Cosmic']
const ANIMALS = ['Fox', 'Otter', 'Panda', 'Heron', 'Lynx', 'Koala', 'Badger', 'Falcon', 'Seal', 'Tiger', 'Owl', 'Gecko']

export const randomName = () => `${pick(ADJECTIVES)} ${pick(ANIMALS)}`

const storage = {
  get (key) { try { return localStorage.getItem(key) } catch { return null } },
  set (key, value) { try { localStorage.setItem(key, value) } catch { /* private mode etc. */ } }
}

/** The local user's identity, persisted in localStorage. */
export const loadUser = () => {
  let name = (storage.get(NAME_KEY) || '').trim().slice(0, 32)
  if (!name) { name = randomName(); storage.set(NAME_KEY, name) }
  let color = storage.get(COLOR_KEY)
  if (!color || safeColor(color, '') === '') { color = pick(PALETTE); storage.set(COLOR_KEY, color) }
  return { name, color }
}

const SVG_NS = 'http://www.w3.org/2000/svg'

const createCursorNode = () => {
  const node = document.createElement('div')
  node.className = 'cursor'
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
 *   boardEl: HTMLElement,
 *   cursorsEl: HTMLElement,
 *   userListEl: HTMLElement,
 *   userCountEl: HTMLElement,
 *   nameInput: HTMLInputElement,
 *   swatchEl: HTMLElement,
 *   selection: ReturnType<import('./selection.js').createSelection>
 * }} opts
 */
export const createPresence = ({
  awareness, board, boardEl, cursorsEl, userListEl, userCountEl, nameInput, swatchEl, selection
}) => {
  const user = loadUser()
  const localState = () => ({ user: { ...user }, cursor: null, selection: [...selection.get()] })
  awareness.setLocalState(localState())

  // ---- local user ------------------------------------------------------------

  nameInput.value = user.name
  swatchEl.style.background = user.color
  nameInput.addEventListener('input', () => {
    const name = nameInput.value.trim().slice(0, 32)
    if (!name) return
    user.name = name
    storage.set(NAME_KEY, name)
    awareness.setLocalStateField('user', { ...user })
  })
  nameInput.addEventListener('blur', () => { nameInput.value = user.name })
  nameInput.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === 'Escape') nameInput.blur() })

  selection.onChange((ids) => awareness.setLocalStateField('selection', [...ids]))

  // ---- local cursor ----------------------------------------------------------

  const sendCursor = throttle((point) => awareness.setLocalStateField('cursor', point), CURSOR_INTERVAL_MS)
  boardEl.addEventListener('pointermove', (e) => sendCursor(board.toBoardPoint(e)))
  boardEl.addEventListener('pointerleave', () => {
    sendCursor.cancel()
    awareness.setLocalStateField('cursor', null)
  })

  // Tell peers we left right away instead of waiting for the awareness timeout.
  window.addEventListener('pagehide', () => awareness.setLocalState(null))
  window.addEventListener('pageshow', (e) => { if (e.persisted) awareness.setLocalState(localState()) })

  // ---- remote rendering ------------------------------------------------------

  /** @type {Map<number, HTMLElement>} */
  const cursorNodes = new Map()

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
        for (const id of state.selection) if (typeof id === 'string') remoteSelections.set(id, color)
      }

      const c = state.cursor
      if (c && typeof c === 'object' && Number.isFinite(c.x) && Number.isFinite(c.y)) {
        let node = cursorNodes.get(clientId)
        if (!node) {
          node = createCursorNode()
          cursorsEl.append(node)
          cursorNodes.set(clientId, node)
        }
        node.style.transform = `translate(${safeNumber(c.x)}px, ${safeNumber(c.y)}px)`
        node.style.setProperty('--cursor-color', color)
        node.querySelector('.cursor-label').textContent = name
        seen.add(clientId)
      }
    })

    cursorNodes.forEach((node, clientId) => {
      if (!seen.has(clientId)) { node.remove(); cursorNodes.delete(clientId) }
    })

    board.setRemoteSelections(remoteSelections)

    people.sort((a, b) => (b.isLocal - a.isLocal) || a.name.localeCompare(b.name) || a.clientId - b.clientId)
    userListEl.replaceChildren(...people.map((p) => {
      const li = document.createElement('li')
      if (p.isLocal) li.className = 'me'
      const swatch = document.createElement('span')
      swatch.className = 'swatch'
      swatch.style.background = p.color
      const label = document.createElement('span')
      label.className = 'name'
      label.textContent = p.name
      li.append(swatch, label)
      if (p.isLocal) {
        const you = document.createElement('span')
        you.className = 'tag'
        you.textContent = 'you'
        li.append(you)
      }
      return li
    }))
    userCountEl.textContent = String(people.length)
  }

  awareness.on('change', render)
  render()

  return { user, render }
}
