// Connection status indicator driven by the provider's `status` / `sync` events.
//   connecting -> connected -> synced ; disconnected (retrying) ; closed by server

/**
 * @param {{ provider: import('y-websocket').WebsocketProvider, el: HTMLElement, textEl: HTMLElement, url: string }} opts
 */
export const createStatusIndicator = ({ provider, el, textEl, url }) => {
  let current = ''

  const show = (state, text = state) => {
    current = state
    el.dataset.status = state
    textEl.textContent = text
    el.title = `${text} — ${url}`
  }

  const fromProvider = () => {
    if (provider.wsconnected) return provider.synced ? 'synced' : 'connected'
    return provider.wsconnecting ? 'connecting' : 'disconnected'
  }

  provider.on('status', ({ status }) => {
    if (status === 'connecting' && current === 'disconnected') {
      // reconnect attempt after a failure: stay red, but say we're retrying
      show('disconnected', 'disconnected · retrying')
    } else {
      show(status === 'connected' && provider.synced ? 'synced' : status)
    }
  })
  provider.on('sync', (synced) => {
    if (provider.wsconnected) show(synced ? 'synced' : 'connected')
  })
  provider.on('connection-close', () => {
    if (!provider.wsconnected && current !== 'closed') show('disconnected')
  })
  // The server refused the connection for good (close code 4400–4499).
  provider.on('closed', ({ code, reason }) => {
    show('closed', `closed by server${reason ? `: ${reason}` : ` (${code})`}`)
  })

  show(fromProvider())
  return { show }
}
