// Where the server is and which canvas to open, derived from the page URL.
//
//   editor      /c/{canvas_id}           (the server's route; also under a prefix: /foo/c/{id})
//               /canvas.html?canvas=ID   (fallback: the static file itself)
//   list page   /  (index.html)
//   base        the path the app lives under: "" at the root, "/foo" behind a
//               reverse proxy under /foo — API, WebSocket and asset URLs all
//               hang off it, so the demo works under a sub-path.
//   override    ?server=http://host:port  (or the older ?ws=ws://host:port): talk
//               to another server, e.g. when serving dist/ from `python3 -m http.server`.

import { randomId } from './util.js'

export const DEFAULT_CANVAS_ID = 'demo'
export const CANVAS_ID_RE = /^[A-Za-z0-9_-]{1,64}$/

export const isValidCanvasId = (id) => typeof id === 'string' && CANVAS_ID_RE.test(id)

/** A fresh random canvas id (10 chars of [A-Za-z0-9]). */
export const newCanvasId = () => randomId(10)

const EDITOR_PATH_RE = /^(.*)\/c\/([^/]+)\/?$/

/**
 * @param {Location} loc
 * @returns {{ canvasId: string, invalidCanvasId: string | null, fromPath: boolean,
 *             base: string, httpBase: string, wsBase: string, wsUrl: string }}
 */
export const resolveConfig = (loc = window.location) => {
  const params = new URLSearchParams(loc.search)
  let requested = null
  let base
  let fromPath = false
  const m = loc.pathname.match(EDITOR_PATH_RE)
  if (m) {
    base = m[1]
    requested = decodeURIComponent(m[2])
    fromPath = true
  } else {
    base = loc.pathname.replace(/[^/]*$/, '').replace(/\/+$/, '')
    requested = params.get('canvas')
  }
  const valid = isValidCanvasId(requested)
  const canvasId = valid ? requested : DEFAULT_CANVAS_ID
  const invalidCanvasId = requested !== null && !valid ? requested : null

  let httpBase = `${loc.protocol}//${loc.host}${base}`
  let wsBase = `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}${base}`
  const server = params.get('server') || params.get('ws')
  if (server && /^(https?|wss?):\/\/[^\s/]+(\/[^\s]*)?$/.test(server)) {
    const clean = server.replace(/\/+$/, '')
    httpBase = clean.replace(/^ws/, 'http')
    wsBase = clean.replace(/^http/, 'ws')
  }
  return { canvasId, invalidCanvasId, fromPath, base, httpBase, wsBase, wsUrl: `${wsBase}/ws/${canvasId}` }
}

/** Query string to carry over to other pages (only the server override). */
export const carriedQuery = (loc = window.location) => {
  const params = new URLSearchParams(loc.search)
  const keep = new URLSearchParams()
  for (const key of ['server', 'ws']) if (params.get(key)) keep.set(key, params.get(key))
  const s = keep.toString()
  return s ? `?${s}` : ''
}
