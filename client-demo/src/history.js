// History: the server keeps a snapshot version per compaction that changed
// something (GET /api/canvases/{id}/versions). Preview one read-only (rendered
// with the same code as the live canvas) and restore it (POST …/restore: the
// server applies the difference as a new change, so everyone sees it and
// nothing is rewritten).

import { readElement } from './model.js'
import { createElementNode, paintElement, stackOrder } from './render.js'
import { toast } from './toast.js'
import { el, formatBytes, relativeTime } from './util.js'

/**
 * @param {{ canvasId: string, api: ReturnType<import('./api.js').createApi>, panelEl: HTMLElement, listEl: HTMLElement,
 *           moreEl: HTMLButtonElement, refreshEl: HTMLButtonElement, previewEl: HTMLElement,
 *           canRestore: () => boolean, assetUrl: (src: string) => string }} opts
 */
export const createHistory = ({ canvasId, api, panelEl, listEl, moreEl, refreshEl, previewEl, canRestore, assetUrl }) => {
  let cursor = null
  let loading = false
  let previewing = null

  const load = async (reset) => {
    if (loading) return
    loading = true
    if (reset) { cursor = null; listEl.replaceChildren(el('li', { className: 'muted' }, 'Loading…')) }
    try {
      const page = await api.listVersions(canvasId, cursor)
      if (reset) listEl.replaceChildren()
      for (const v of page.versions) {
        listEl.append(el('li', {},
          el('button', {
            type: 'button', className: 'version', dataset: { testid: 'version', number: String(v.number) },
            title: new Date(v.created_at).toLocaleString(), onclick: () => preview(v.number)
          },
          el('span', { className: 'version-number' }, `Version ${v.number}`),
          el('span', { className: 'muted' }, `${relativeTime(v.created_at)} · ${formatBytes(v.size)}`))))
      }
      if (reset && page.versions.length === 0) {
        listEl.append(el('li', { className: 'muted empty-hint' },
          'No versions yet. The server saves a version when it compacts the canvas (about once a minute while it changes).'))
      }
      cursor = page.next_cursor
      moreEl.hidden = !cursor
    } catch (err) {
      if (reset) listEl.replaceChildren()
      listEl.append(el('li', { className: 'error-text' }, err.status === 404 ? 'Nothing saved on the server yet.' : `Could not load history: ${err.message}`))
    } finally {
      loading = false
    }
  }

  const closePreview = () => {
    previewing = null
    previewEl.hidden = true
    previewEl.replaceChildren()
    for (const b of listEl.querySelectorAll('.version')) b.classList.remove('active')
  }

  const renderPreview = (version) => {
    const stage = el('div', { className: 'preview-stage' })
    const world = el('div', { className: 'preview-world' })
    stage.append(world)
    const entries = Object.entries(version.elements || {})
      .filter(([, v]) => v && typeof v === 'object')
      .map(([id, v]) => ({ id, el: readElement(v) }))
    let x0 = Infinity; let y0 = Infinity; let x1 = -Infinity; let y1 = -Infinity
    for (const { el: e } of entries) {
      x0 = Math.min(x0, e.x); y0 = Math.min(y0, e.y); x1 = Math.max(x1, e.x + e.w); y1 = Math.max(y1, e.y + e.h)
    }
    for (const { id, el: e } of stackOrder(entries.map((x) => ({ ...x, z: x.el.z })))) {
      const node = createElementNode(id)
      node.dataset.testid = 'preview-element'
      paintElement(node, e, assetUrl)
      world.append(node)
    }
    const restoreBtn = el('button', {
      type: 'button', className: 'primary', dataset: { testid: 'version-restore' }, disabled: !canRestore(),
      title: canRestore() ? 'Make the canvas look like this version again (everyone sees it)' : 'You cannot restore versions',
      onclick: () => restore(version.number, restoreBtn)
    }, 'Restore this version')
    previewEl.replaceChildren(
      el('div', { className: 'preview-head' },
        el('div', {},
          el('strong', {}, `Version ${version.number}`),
          el('span', { className: 'muted' }, ` · ${new Date(version.created_at).toLocaleString()} · ${entries.length} element${entries.length === 1 ? '' : 's'} · read-only preview`)),
        el('div', { className: 'preview-actions' },
          restoreBtn,
          el('button', { type: 'button', dataset: { testid: 'version-preview-close' }, onclick: closePreview }, 'Close'))),
      stage)
    previewEl.hidden = false
    // fit the version's content into the stage
    requestAnimationFrame(() => {
      const r = stage.getBoundingClientRect()
      if (!entries.length || r.width === 0) return
      const w = Math.max(1, x1 - x0); const h = Math.max(1, y1 - y0)
      const zoom = Math.min((r.width - 48) / w, (r.height - 48) / h, 1)
      world.style.transform = `translate(${(r.width - w * zoom) / 2 - x0 * zoom}px, ${(r.height - h * zoom) / 2 - y0 * zoom}px) scale(${zoom})`
      world.style.setProperty('--zoom', String(zoom))
    })
  }

  const preview = async (number) => {
    previewing = number
    for (const b of listEl.querySelectorAll('.version')) b.classList.toggle('active', b.dataset.number === String(number))
    previewEl.hidden = false
    previewEl.dataset.number = String(number)
    previewEl.replaceChildren(el('div', { className: 'preview-head' }, el('span', { className: 'muted' }, `Loading version ${number}…`)))
    try {
      const version = await api.getVersion(canvasId, number)
      if (previewing === number) renderPreview(version)
    } catch (err) {
      if (previewing === number) {
        previewEl.replaceChildren(el('div', { className: 'preview-head' },
          el('span', { className: 'error-text' }, `Could not load version ${number}: ${err.message}`),
          el('button', { type: 'button', onclick: closePreview }, 'Close')))
      }
    }
  }

  const restore = async (number, button) => {
    button.disabled = true
    try {
      await api.restoreVersion(canvasId, number)
      toast(`Restored version ${number}`, { kind: 'ok' })
      closePreview()
    } catch (err) {
      toast(`Restore failed: ${err.message}`, { kind: 'error' })
      button.disabled = false
    }
  }

  refreshEl.addEventListener('click', () => load(true))
  moreEl.addEventListener('click', () => load(false))

  return {
    open () { panelEl.hidden = false; load(true) },
    close () { panelEl.hidden = true; closePreview() },
    toggle () { if (panelEl.hidden) this.open(); else this.close() },
    get isOpen () { return !panelEl.hidden },
    closePreview,
    get previewing () { return previewing }
  }
}
