// Which protocol the editor speaks to the server: y-websocket (ws://HOST/ws/{id}, the default) or
// Hocuspocus (ws://HOST/hocuspocus, @hocuspocus/provider). Chosen in the connection settings (the
// Token popover), kept in localStorage; `?protocol=hocuspocus` overrides it for one page.

import { el } from './util.js'

export const PROTOCOLS = { 'y-websocket': 'y-websocket', hocuspocus: 'Hocuspocus' }
const KEY = 'canvashub.protocol'

/** @returns {'y-websocket' | 'hocuspocus'} */
export const getProtocol = (loc = window.location) => {
  const asked = new URLSearchParams(loc.search).get('protocol')
  let stored = null
  try { stored = localStorage.getItem(KEY) } catch { /* storage blocked: the default */ }
  const value = asked || stored
  return value === 'hocuspocus' ? 'hocuspocus' : 'y-websocket'
}

export const setProtocol = (value) => {
  try { localStorage.setItem(KEY, value) } catch { /* storage blocked: this page only */ }
}

/** The protocol switch: choosing another one reloads the editor with it (the document stays in IndexedDB). */
export const protocolField = (current) => {
  const select = el('select', { dataset: { testid: 'protocol-select' } },
    ...Object.entries(PROTOCOLS).map(([value, label]) => el('option', { value, selected: value === current }, label)))
  select.addEventListener('change', () => {
    setProtocol(select.value)
    const url = new URL(window.location.href)
    url.searchParams.delete('protocol')
    window.location.assign(url.toString())
  })
  return el('label', { className: 'protocol-field' }, 'Protocol ', select)
}
