// canvashub service worker: the app shell (pages, script, styles) stays
// available offline; generated images (/assets/…, immutable) are cached as they
// are seen. Network first for the shell, so a deploy is picked up on the next
// load while online. The API and the WebSocket are never touched.
/* global self, caches, fetch, Response, URL, __BUILD_ID__ */

const SHELL_CACHE = `canvashub-shell-${__BUILD_ID__}`
const ASSET_CACHE = 'canvashub-assets-v1'
const SHELL = ['', 'index.html', 'canvas.html', 'editor.js', 'home.js', 'style.css']

const scopePath = () => new URL(self.registration.scope).pathname

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL_CACHE)
    await Promise.all(SHELL.map((p) => cache.add(scopePath() + p).catch(() => {})))
    await self.skipWaiting()
  })())
})

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key.startsWith('canvashub-shell-') && key !== SHELL_CACHE) await caches.delete(key)
    }
    await self.clients.claim()
  })())
})

const networkFirst = async (request, fallbackPath) => {
  const cache = await caches.open(SHELL_CACHE)
  try {
    const response = await fetch(request)
    if (response.ok) cache.put(fallbackPath ? scopePath() + fallbackPath : request, response.clone())
    return response
  } catch (err) {
    const cached = await cache.match(fallbackPath ? scopePath() + fallbackPath : request, { ignoreSearch: true })
    if (cached) return cached
    throw err
  }
}

const cacheFirst = async (request) => {
  const cache = await caches.open(ASSET_CACHE)
  const cached = await cache.match(request)
  if (cached) return cached
  const response = await fetch(request)
  if (response.ok) cache.put(request, response.clone())
  return response
}

self.addEventListener('fetch', (event) => {
  const request = event.request
  if (request.method !== 'GET') return
  const url = new URL(request.url)
  if (url.origin !== self.location.origin) return
  const base = scopePath()
  if (!url.pathname.startsWith(base)) return
  const rel = url.pathname.slice(base.length)
  if (rel.startsWith('assets/')) {
    event.respondWith(cacheFirst(request))
  } else if (request.mode === 'navigate') {
    let fallback = null
    if (/^c\/[^/]+\/?$/.test(rel) || rel === 'canvas.html') fallback = 'canvas.html'
    else if (rel === '' || rel === 'index.html') fallback = 'index.html'
    if (fallback) event.respondWith(networkFirst(request, fallback))
  } else if (SHELL.includes(rel) && rel !== '') {
    event.respondWith(networkFirst(request, null))
  }
})
