// Short notifications in the corner (data-testid="toast").

import { el } from './util.js'

let container = null

/** @param {string} message @param {{ kind?: 'info'|'ok'|'warn'|'error', timeout?: number }} [opts] */
export const toast = (message, { kind = 'info', timeout = 5000 } = {}) => {
  if (!container) {
    container = el('div', { className: 'toasts', role: 'status', 'aria-live': 'polite', dataset: { testid: 'toasts' } })
    document.body.append(container)
  }
  const node = el('div', { className: `toast toast-${kind}`, dataset: { testid: 'toast', kind } },
    el('span', {}, message),
    el('button', { type: 'button', className: 'toast-close', 'aria-label': 'Dismiss', onclick: () => node.remove() }, '×'))
  container.append(node)
  while (container.children.length > 4) container.firstElementChild.remove()
  if (timeout > 0) setTimeout(() => node.remove(), timeout)
  return node
}
