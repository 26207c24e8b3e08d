// The canvas list (/): GET /api/canvases page by page, "New canvas", open by id.

import { carriedQuery, isValidCanvasId, newCanvasId, resolveConfig } from './config.js'
import { createApi, getToken, initToken, setToken } from './api.js'
import { el, relativeTime } from './util.js'

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))

const start = () => {
  const config = resolveConfig(window.location)
  initToken()
  const api = createApi(config.httpBase)
  const query = carriedQuery()

  // Editor URL: the server's /c/{id} route, or the static canvas.html?canvas= on a server without it.
  let useRoute = true
  const routeCheck = fetch(`${config.httpBase}/c/${newCanvasId()}`, { method: 'HEAD', cache: 'no-store' })
    .then((res) => { useRoute = res.ok }).catch(() => {})
  const editorHref = (id) => useRoute
    ? `./c/${encodeURIComponent(id)}${query}`
    : `./canvas.html?canvas=${encodeURIComponent(id)}${query ? `&${query.slice(1)}` : ''}`
  const open = async (id) => { await routeCheck; window.location.href = editorHref(id) }

  // old starter links (/?canvas=ID) open that canvas
  const legacy = new URLSearchParams(window.location.search).get('canvas')
  if (isValidCanvasId(legacy)) { routeCheck.then(() => window.location.replace(editorHref(legacy))); return }

  $('new-canvas').addEventListener('click', () => open(newCanvasId()))
  $('open-form').addEventListener('submit', (e) => {
    e.preventDefault()
    const id = /** @type {HTMLInputElement} */ ($('open-id')).value.trim()
    if (isValidCanvasId(id)) open(id)
    else $('open-id').focus()
  })

  // ---- list ---------------------------------------------------------------------
  const rows = $('canvas-rows')
  const status = $('list-status')
  const more = /** @type {HTMLButtonElement} */ ($('load-more'))
  const filter = /** @type {HTMLInputElement} */ ($('filter'))
  let cursor = null
  let loading = false
  let all = []

  const renderRows = () => {
    const q = filter.value.trim().toLowerCase()
    const shown = q ? all.filter((c) => c.id.toLowerCase().includes(q)) : all
    rows.replaceChildren(...shown.map((c) => el('tr', { dataset: { testid: 'canvas-row', id: c.id } },
      el('td', {}, el('a', { href: editorHref(c.id), className: 'canvas-link' }, c.id)),
      el('td', { title: c.updated_at ? new Date(c.updated_at).toLocaleString() : '' }, c.updated_at ? relativeTime(c.updated_at) : '—'),
      el('td', { className: 'num' }, String(c.version ?? '—')))))
    status.textContent = all.length === 0 ? 'No canvases yet — make the first one.' : shown.length === 0 ? 'No canvas matches.' : ''
  }

  const load = async (reset) => {
    if (loading) return
    loading = true
    if (reset) { cursor = null; all = []; status.textContent = 'Loading…' }
    try {
      await routeCheck
      const page = await api.listCanvases(cursor, 50)
      all = all.concat(page.canvases)
      cursor = page.next_cursor
      more.hidden = !cursor
      renderRows()
      hideNotice()
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        showAuth(err.status)
        status.textContent = ''
      } else {
        status.textContent = `Could not load the list: ${err.message}`
      }
    } finally {
      loading = false
    }
  }
  more.addEventListener('click', () => load(false))
  $('refresh').addEventListener('click', () => load(true))
  filter.addEventListener('input', renderRows)

  // ---- token ---------------------------------------------------------------------
  const notice = $('notice')
  const hideNotice = () => { notice.hidden = true; notice.replaceChildren() }
  const tokenForm = () => {
    const input = el('input', { type: 'password', placeholder: 'Access token', autocomplete: 'off', value: getToken(), dataset: { testid: 'token-input' } })
    const form = el('form', { className: 'token-form', dataset: { testid: 'auth-panel' } }, input,
      el('button', { type: 'submit', className: 'primary', dataset: { testid: 'token-apply' } }, 'Use token'))
    form.addEventListener('submit', (e) => {
      e.preventDefault()
      setToken(input.value)
      $('token-popover').hidden = true
      load(true)
    })
    return form
  }
  const showAuth = (code) => {
    notice.hidden = false
    notice.dataset.kind = 'error'
    notice.replaceChildren(
      el('div', { className: 'notice-text' }, el('strong', {}, code === 403 ? 'Your token may not list canvases.' : 'This server needs an access token.'), ' Paste one to continue:'),
      el('div', { className: 'notice-actions' }, tokenForm()))
  }
  $('token-toggle').addEventListener('click', () => {
    const pop = $('token-popover')
    if (!pop.hidden) { pop.hidden = true; return }
    pop.replaceChildren(el('p', {}, getToken() ? 'This tab uses an access token.' : 'No access token set.'), tokenForm())
    pop.hidden = false
  })

  load(true)
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start)
else start()
