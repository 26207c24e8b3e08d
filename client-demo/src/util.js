// Small, dependency-free helpers shared by the demo modules.

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'

/** Random id from [A-Za-z0-9] (default 12 chars), e.g. for element ids. */
export const randomId = (length = 12) => {
  const bytes = crypto.getRandomValues(new Uint8Array(length))
  let out = ''
  // 62 does not divide 256; the tiny bias is irrelevant for ids like these.
  for (const b of bytes) out += ALPHABET[b % ALPHABET.length]
  return out
}

export const randomInt = (min, max) => min + Math.floor(Math.random() * (max - min + 1))
export const pick = (list) => list[Math.floor(Math.random() * list.length)]
export const clamp = (v, min, max) => Math.min(max, Math.max(min, v))

/** Pleasant fills for new shapes and user colours. */
export const PALETTE = [
  '#ef476f', '#f78c6b', '#ffd166', '#06d6a0', '#1b9aaa', '#118ab2',
  '#4361ee', '#7209b7', '#b5179e', '#f72585', '#2a9d8f', '#e76f51'
]

// Accept only plain colour syntaxes from peers (no url(), var(), etc.).
const COLOR_RE = /^(#[0-9a-fA-F]{3,8}|(rgb|rgba|hsl|hsla)\([0-9.,%\s/+-]+\)|[a-zA-Z]{3,20})$/
export const safeColor = (value, fallback = '#888888') =>
  typeof value === 'string' && COLOR_RE.test(value.trim()) ? value.trim() : fallback

export const safeNumber = (value, fallback = 0) =>
  typeof value === 'number' && Number.isFinite(value) ? value : fallback

/**
 * Coalesce calls to at most one per animation frame; the latest arguments win.
 * Returns a function with `.flush()` and `.cancel()`.
 */
export const rafThrottle = (fn) => {
  let frame = 0
  let lastArgs = null
  const run = () => {
    frame = 0
    const args = lastArgs
    lastArgs = null
    if (args) fn(...args)
  }
  const throttled = (...args) => {
    lastArgs = args
    if (!frame) frame = requestAnimationFrame(run)
  }
  throttled.flush = () => {
    if (frame) cancelAnimationFrame(frame)
    run()
  }
  throttled.cancel = () => {
    if (frame) cancelAnimationFrame(frame)
    frame = 0
    lastArgs = null
  }
  return throttled
}

/**
 * Leading + trailing throttle: at most one call per `ms`; the latest arguments win.
 * Returns a function with `.cancel()`.
 */
export const throttle = (fn, ms) => {
  let last = 0
  let timer = 0
  let lastArgs = null
  const run = () => {
    timer = 0
    last = performance.now()
    const args = lastArgs
    lastArgs = null
    if (args) fn(...args)
  }
  const throttled = (...args) => {
    lastArgs = args
    const wait = ms - (performance.now() - last)
    if (wait <= 0) {
      if (timer) { clearTimeout(timer); timer = 0 }
      run()
    } else if (!timer) {
      timer = setTimeout(run, wait)
    }
  }
  throttled.cancel = () => {
    if (timer) clearTimeout(timer)
    timer = 0
    lastArgs = null
  }
  return throttled
}

/** `el('div', { className: 'x', dataset: { testid: 'y' } }, child, 'text')` — tiny DOM builder. */
export const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue
    if (key === 'dataset') Object.assign(node.dataset, value)
    else if (key === 'style') Object.assign(node.style, value)
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value)
    else if (key in node && key !== 'list') node[key] = value
    else node.setAttribute(key, value === true ? '' : String(value))
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue
    node.append(child instanceof Node ? child : String(child))
  }
  return node
}

/** "just now", "5 min ago", "3 h ago", else a local date/time. */
export const relativeTime = (iso, now = Date.now()) => {
  const t = typeof iso === 'number' ? iso : Date.parse(iso)
  if (!Number.isFinite(t)) return '—'
  const s = Math.round((now - t) / 1000)
  if (s < 10) return 'just now'
  if (s < 60) return `${s} s ago`
  if (s < 3600) return `${Math.floor(s / 60)} min ago`
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`
  return new Date(t).toLocaleString()
}

export const formatTime = (t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })

export const formatBytes = (n) => n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`

/** Browser storage that never throws (private mode, disabled storage). */
export const store = (kind) => ({
  get (key) { try { return window[kind].getItem(key) } catch { return null } },
  set (key, value) { try { window[kind].setItem(key, value) } catch { /* ignore */ } },
  remove (key) { try { window[kind].removeItem(key) } catch { /* ignore */ } }
})
