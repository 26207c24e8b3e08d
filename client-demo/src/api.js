// Access token handling and the HTTP API client.
//
// A token comes from the URL fragment (#token=…, removed from the address bar
// at once so it does not end up in history or screenshots) or from the token
// field, and is kept in sessionStorage (per tab, gone when the tab closes).
// It is sent as `Authorization: Bearer …` on fetches and as `?token=` on the
// WebSocket (browsers cannot set headers on a WebSocket upgrade).

import { store } from './util.js'

const TOKEN_KEY = 'canvashub.token'
const session = store('sessionStorage')

/** Read `#token=…` into sessionStorage (and strip it from the URL); return the current token. */
export const initToken = () => {
  const hash = new URLSearchParams(window.location.hash.replace(/^#/, ''))
  const fromHash = hash.get('token')
  if (fromHash !== null) {
    setToken(fromHash)
    hash.delete('token')
    const rest = hash.toString()
    history.replaceState(history.state, '', window.location.pathname + window.location.search + (rest ? `#${rest}` : ''))
  }
  return getToken()
}

export const getToken = () => session.get(TOKEN_KEY) || ''
export const setToken = (token) => {
  const t = String(token || '').trim()
  if (t) session.set(TOKEN_KEY, t)
  else session.remove(TOKEN_KEY)
  return t
}

export class ApiError extends Error {
  constructor (status, type, message) {
    super(message)
    this.status = status
    this.type = type
  }
}

/** HTTP API client rooted at `httpBase`. Every method throws ApiError on failure. */
export const createApi = (httpBase) => {
  const request = async (path, { method = 'GET', body, accept = 'application/json', raw = false } = {}) => {
    const headers = { Accept: accept }
    const token = getToken()
    if (token) headers.Authorization = `Bearer ${token}`
    if (body !== undefined) headers['Content-Type'] = 'application/json'
    let res
    try {
      res = await fetch(httpBase + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' })
    } catch (err) {
      throw new ApiError(0, 'network', 'cannot reach the server (offline?)')
    }
    if (!res.ok) {
      let type = 'http'
      let message = `${res.status} ${res.statusText}`
      try {
        const data = await res.json()
        if (data && data.error) { type = data.error.type || type; message = data.error.message || message }
      } catch { /* not JSON */ }
      if (res.status === 401) type = 'unauthorized'
      if (res.status === 403) type = 'forbidden'
      throw new ApiError(res.status, type, message)
    }
    if (raw) return res
    if (res.status === 204) return null
    return res.json()
  }
  const enc = encodeURIComponent
  return {
    request,
    listCanvases: (cursor, limit = 50) =>
      request(`/api/canvases?limit=${limit}${cursor ? `&cursor=${enc(cursor)}` : ''}`),
    getCanvas: (id) => request(`/api/canvases/${enc(id)}`),
    getCanvasBinary: (id) => request(`/api/canvases/${enc(id)}`, { accept: 'application/octet-stream', raw: true }),
    probeCanvas: (id) => request(`/api/canvases/${enc(id)}`, { method: 'HEAD', raw: true }),
    listVersions: (id, cursor, limit = 50) =>
      request(`/api/canvases/${enc(id)}/versions?limit=${limit}${cursor ? `&cursor=${enc(cursor)}` : ''}`),
    getVersion: (id, n) => request(`/api/canvases/${enc(id)}/versions/${n}`),
    restoreVersion: (id, n) => request(`/api/canvases/${enc(id)}/versions/${n}/restore`, { method: 'POST' }),
    createGeneration: (id, body) => request(`/api/canvases/${enc(id)}/generations`, { method: 'POST', body }),
    listGenerations: (id, limit = 10) => request(`/api/canvases/${enc(id)}/generations?limit=${limit}`),
    cancelGeneration: (jobId) => request(`/api/generations/${enc(jobId)}/cancel`, { method: 'POST' })
  }
}
