// Where to connect and which canvas to open, derived from the page URL.
//
//   canvas id : ?canvas=ID  (charset [A-Za-z0-9_-], 1–64 chars), default "demo"
//   websocket : ws(s)://<location.host><base path>/ws/<canvas id>
//               where <base path> is the directory the page is served from
//               ("" when served at "/", "/foo" when served at "/foo/"), so the
//               demo also works behind a reverse proxy under a sub-path.
//   override  : ?ws=ws://host:port  (handy when serving dist/ from a separate
//               static server during development)

import { randomId } from './util.js'

export const DEFAULT_CANVAS_ID = 'demo'
export const CANVAS_ID_RE = /^[A-Za-z0-9_-]{1,64}$/

export const isValidCanvasId = (id) => typeof id === 'string' && CANVAS_ID_RE.test(id)

/**
 * @param {Location} loc
 * @returns {{ canvasId: string, invalidCanvasId: string | null, wsBase: string, wsUrl: string }}
 */
export const resolveConfig = (loc = window.location) => {
  const params = new URLSearchParams(loc.search)

  const requested = params.get('canvas')
  const valid = isValidCanvasId(requested)
  const canvasId = valid ? requested : DEFAULT_CANVAS_ID
  const invalidCanvasId = requested !== null && !valid ? requested : null

  let wsBase
  const override = params.get('ws')
  if (override && /^wss?:\/\/[^\s]+$/.test(override)) {
    wsBase = override.replace(/\/+$/, '')
  } else {
    const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:'
    // directory of the current page, without the trailing slash
    const basePath = loc.pathname.replace(/[^/]*$/, '').replace(/\/+$/, '')
    wsBase = `${scheme}//${loc.host}${basePath}`
  }

  return { canvasId, invalidCanvasId, wsBase, wsUrl: `${wsBase}/ws/${canvasId}` }
}

/** Relative link (keeps the current path and other query params) to a fresh random canvas. */
export const newCanvasHref = (loc = window.location) => {
  const params = new URLSearchParams(loc.search)
  params.set('canvas', randomId(10))
  return `?${params.toString()}`
}
