// Registers the service worker (sw.js) that keeps the app shell available
// offline, so a reload without network still opens the editor (the canvas
// content itself comes from IndexedDB). Only on secure contexts (https or
// localhost) and only for the page's own server.

export const registerServiceWorker = (config) => {
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return
  if (!config.httpBase.startsWith(window.location.origin)) return // ?server= override: not our origin
  const scope = `${config.base}/`
  navigator.serviceWorker.register(`${scope}sw.js`, { scope }).catch((err) => {
    console.warn('service worker not registered:', err)
  })
}
