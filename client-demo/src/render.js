// Element -> DOM. Used by the live board and by the read-only history preview,
// so a version preview looks exactly like the canvas did.

import { TEXT_TYPES } from './model.js'

/** A new (empty) node for one element. */
export const createElementNode = (id) => {
  const node = document.createElement('div')
  node.className = 'element'
  node.dataset.testid = 'element'
  node.dataset.id = id
  return node
}

/**
 * Paint a sanitised element (see model.readElement) onto its node.
 * @param {HTMLElement} node
 * @param {ReturnType<import('./model.js').readElement>} el
 * @param {(src: string) => string} assetUrl  "/assets/x" -> URL under the app's base path
 */
export const paintElement = (node, el, assetUrl) => {
  if (node.dataset.type !== el.type) {
    node.dataset.type = el.type
    node.replaceChildren()
    node.style.background = ''
    node.style.color = ''
  }
  node.style.transform = `translate(${el.x}px, ${el.y}px)`
  node.style.width = `${el.w}px`
  node.style.height = `${el.h}px`
  node.style.setProperty('--fill', el.fill)
  if (el.type === 'rect' || el.type === 'ellipse' || el.type === 'sticky') node.style.background = el.fill
  if (el.type === 'text') node.style.color = el.fill
  if (TEXT_TYPES.includes(el.type)) {
    let textEl = node.querySelector('.element-text')
    if (!textEl) {
      textEl = document.createElement('div')
      textEl.className = 'element-text'
      node.append(textEl)
    }
    if (textEl.textContent !== el.text) textEl.textContent = el.text
    node.classList.toggle('empty-text', el.text.trim() === '')
  } else if (el.type === 'image') {
    let img = node.querySelector('img')
    if (!img) {
      img = document.createElement('img')
      img.dataset.testid = 'image'
      img.draggable = false
      img.alt = 'generated image'
      img.decoding = 'async'
      node.append(img)
    }
    const url = el.src ? assetUrl(el.src) : ''
    if (img.getAttribute('src') !== url) {
      if (url) img.setAttribute('src', url)
      else img.removeAttribute('src')
    }
  }
}

/** Sort ids by (z, id) — the same stacking order on every client. */
export const stackOrder = (entries) =>
  [...entries].sort((a, b) => (a.z - b.z) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
