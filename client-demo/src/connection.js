// Connection lifecycle around the y-websocket provider:
//  * the browser's offline/online events disconnect/reconnect at once (an open
//    socket is not closed by the OS when the network goes away, and stays
//    silent until the 30 s watchdog fires);
//  * close codes the server uses for good: 4401 (token missing/expired),
//    4403 (no access), 4404 (canvas deleted), 4413 (canvas size limit);
//  * an upgrade refused with HTTP 401/403 shows up in the browser only as an
//    abnormal close (1006) before the socket opened: we ask the HTTP API the
//    same question to tell "no access" from "server down";
//  * the access token field (shown whenever access is the problem).

import { getToken, setToken } from './api.js'
import { el } from './util.js'

/**
 * @param {{ provider: import('y-websocket').WebsocketProvider, api: ReturnType<import('./api.js').createApi>,
 *           canvasId: string, noticeEl: HTMLElement, listHref: string, onDeleted: () => void,
 *           connectionEl: HTMLElement }} opts
 */
export const createConnection = ({ provider, api, canvasId, noticeEl, listHref, onDeleted, connectionEl }) => {
  let opened = false
  let lastProbe = 0
  let blocked = null // why we stopped connecting (auth, deleted, too large, ...)
  const listeners = new Set()

  const isOffline = () => navigator.onLine === false

  const showNotice = (kind, title, body, actions = []) => {
    noticeEl.hidden = false
    noticeEl.dataset.kind = kind
    noticeEl.replaceChildren(
      el('div', { className: 'notice-text' }, el('strong', {}, title), body ? el('span', {}, ' ', body) : null),
      el('div', { className: 'notice-actions' }, ...actions))
  }
  const hideNotice = () => { noticeEl.hidden = true; noticeEl.replaceChildren() }

  const tokenForm = (submitLabel = 'Connect') => {
    const input = el('input', {
      type: 'password', placeholder: 'Access token', autocomplete: 'off', spellcheck: false,
      dataset: { testid: 'token-input' }, value: getToken()
    })
    const form = el('form', { className: 'token-form', dataset: { testid: 'auth-panel' } }, input,
      el('button', { type: 'submit', className: 'primary', dataset: { testid: 'token-apply' } }, submitLabel))
    form.addEventListener('submit', (e) => {
      e.preventDefault()
      applyToken(input.value)
    })
    return form
  }

  const reconnect = () => {
    blocked = null
    hideNotice()
    provider.disconnect()
    if (!isOffline()) provider.connect()
    emit()
  }

  const applyToken = (token) => {
    const t = setToken(token)
    // Sent as a WebSocket subprotocol, not in the URL: URLs end up in proxy logs and browser consoles.
    provider.protocols = t ? ['canvashub', t] : []
    reconnect()
  }

  const block = (reason, kind, title, body, actions) => {
    blocked = reason
    provider.disconnect()
    showNotice(kind, title, body, actions)
    emit()
  }

  const authProblem = (status) => {
    const hasToken = Boolean(getToken())
    block('auth', 'error',
      status === 403 ? 'No access to this canvas.' : hasToken ? 'Your access token was refused or has expired.' : 'This canvas needs an access token.',
      status === 403 ? 'Use a token that grants access:' : 'Paste a token to connect:',
      [tokenForm()])
  }

  const reconnectButton = (label = 'Reconnect') =>
    el('button', { type: 'button', dataset: { testid: 'reconnect' }, onclick: reconnect }, label)

  provider.on('status', ({ status }) => {
    if (status === 'connecting') opened = false
    if (status === 'connected') {
      opened = true
      if (blocked === null) hideNotice()
    }
    emit()
  })

  provider.on('connection-close', (event) => {
    if (!event) return // closed by us
    const code = event.code
    if (code === 4401) return authProblem(401)
    if (code === 4403) return authProblem(403)
    if (code === 4404) {
      onDeleted()
      return block('deleted', 'error', 'This canvas was deleted.', 'Its content is gone from the server and from this device.',
        [el('a', { href: listHref, className: 'button' }, 'All canvases')])
    }
    if (code === 4413) {
      return block('too-large', 'error', 'This canvas reached its size limit.',
        'Your latest changes were not saved. Remove something (undo your last change) and reconnect.', [reconnectButton()])
    }
    if (code >= 4400 && code < 4500) {
      return block('closed', 'error', `Disconnected by the server (${code}).`, event.reason || '', [reconnectButton()])
    }
    if (!opened && !isOffline() && Date.now() - lastProbe > 4000) {
      // The upgrade failed: is it access (401/403) or is the server just down?
      lastProbe = Date.now()
      api.probeCanvas(canvasId).catch((err) => {
        if (err.status === 401 || err.status === 403) authProblem(err.status)
      })
    }
  })

  window.addEventListener('offline', () => {
    if (blocked) return
    provider.disconnect() // sends our awareness removal if the socket still works, then closes
    emit()
  })
  window.addEventListener('online', () => {
    if (blocked) return
    provider.disconnect()
    provider.connect()
    emit()
  })

  const emit = () => {
    const s = blocked ? 'blocked' : isOffline() ? 'offline' : provider.wsconnected ? (provider.synced ? 'synced' : 'connected') : provider.wsconnecting ? 'connecting' : 'disconnected'
    connectionEl.dataset.status = s
    connectionEl.title = {
      blocked: 'Not connected', offline: 'Offline: the browser has no network', synced: 'Connected',
      connected: 'Connected, syncing…', connecting: 'Connecting…', disconnected: 'Disconnected — retrying'
    }[s]
    for (const fn of listeners) fn(s)
  }
  provider.on('sync', emit)

  /** Start connecting (unless the browser is offline: then we wait for `online`). */
  const start = () => {
    const token = getToken()
    provider.protocols = token ? ['canvashub', token] : []
    if (!isOffline()) provider.connect()
    emit()
  }

  return {
    start,
    isOffline,
    reconnect,
    applyToken,
    showNotice,
    hideNotice,
    tokenForm,
    authProblem,
    get blocked () { return blocked },
    onChange (fn) { listeners.add(fn); return () => listeners.delete(fn) }
  }
}
