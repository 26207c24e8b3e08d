// Generations: the prompt box, one card per job with a live progress bar
// (everyone on the canvas sees every job: `generation` events go to all
// opted-in sockets), a placeholder on the canvas where the image will land,
// cancel, and the failure reason. The result is an ordinary `image` element
// written by the server (id "gen-<job id>").

import { randomId, el } from './util.js'
import { toast } from './toast.js'

const ACTIVE = new Set(['queued', 'running'])
const IMAGE_SIZE = 320
const KEEP_FINISHED_MS = 20000

const STATUS_TEXT = {
  queued: 'Queued', started: 'Starting…', running: 'Generating…', progress: 'Generating…',
  succeeded: 'Done', failed: 'Failed', cancelled: 'Cancelled'
}

const ERROR_TEXT = {
  invalid: 'the request was invalid', timeout: 'the generator timed out', unavailable: 'the generator is unavailable',
  upstream: 'the generator failed', too_large: 'the image was too large', internal: 'internal error',
  lease_expired: 'the worker stopped responding'
}

/**
 * @param {{ canvasId: string, api: ReturnType<import('./api.js').createApi>, events: ReturnType<import('./events.js').attachEvents>,
 *           camera: ReturnType<import('./camera.js').createCamera>, formEl: HTMLFormElement, promptEl: HTMLInputElement,
 *           listEl: HTMLElement, placeholdersEl: HTMLElement, canGenerate: () => boolean,
 *           onShow: (elementId: string) => void }} opts
 */
export const createGenerations = ({ canvasId, api, events, camera, formEl, promptEl, listEl, placeholdersEl, canGenerate, onShow }) => {
  /** job id -> { job, status, elementId, errorType, finishedAt, card, placeholder } */
  const jobs = new Map()

  const upsert = (job, status = job.status, extra = {}) => {
    if (!job || typeof job.id !== 'string' || job.canvas_id !== canvasId) return
    let entry = jobs.get(job.id)
    if (entry && entry.job.updated_at > job.updated_at && !extra.force) return // stale
    if (entry && !ACTIVE.has(entry.job.status) && ACTIVE.has(job.status)) return // a late event after the end
    if (!entry) {
      entry = { job, status, card: null, placeholder: null }
      jobs.set(job.id, entry)
    }
    entry.job = job
    entry.status = status
    Object.assign(entry, extra)
    if (!ACTIVE.has(job.status) && !entry.finishedAt) {
      entry.finishedAt = Date.now()
      if (job.status !== 'failed') setTimeout(() => removeEntry(job.id), KEEP_FINISHED_MS)
    }
    render(entry)
  }

  const removeEntry = (id) => {
    const entry = jobs.get(id)
    if (!entry) return
    entry.card?.remove()
    entry.placeholder?.remove()
    jobs.delete(id)
    listEl.classList.toggle('empty', jobs.size === 0)
  }

  const render = (entry) => {
    const { job } = entry
    const active = ACTIVE.has(job.status)
    const pct = Math.round((job.status === 'succeeded' ? 1 : Number(job.progress) || 0) * 100)
    if (!entry.card) {
      entry.card = el('li', { className: 'generation', dataset: { testid: 'generation', jobId: job.id } })
      listEl.prepend(entry.card)
    }
    const card = entry.card
    card.dataset.status = job.status
    card.dataset.progress = String(pct)
    const error = job.status === 'failed'
      ? `${ERROR_TEXT[entry.errorType || job.error?.type] || 'failed'}${job.error?.message ? `: ${job.error.message}` : ''}`
      : ''
    const statusText = STATUS_TEXT[entry.status] || STATUS_TEXT[job.status] || job.status
    card.replaceChildren(...[
      el('div', { className: 'generation-head' },
        el('span', { className: 'generation-prompt', title: job.prompt }, job.prompt || '(no prompt)'),
        active && canGenerate()
          ? el('button', { type: 'button', className: 'small', dataset: { testid: 'generation-cancel' }, disabled: job.cancel_requested, onclick: () => cancel(job.id) }, job.cancel_requested ? 'Cancelling…' : 'Cancel')
          : null,
        job.status === 'succeeded' && entry.elementId
          ? el('button', { type: 'button', className: 'small', onclick: () => onShow(entry.elementId) }, 'Show')
          : null,
        !active ? el('button', { type: 'button', className: 'small icon', 'aria-label': 'Dismiss', onclick: () => removeEntry(job.id) }, '×') : null),
      el('div', { className: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': pct, dataset: { testid: 'generation-progress' } },
        el('div', { className: 'progress-bar', style: { width: `${pct}%` } })),
      el('div', { className: 'generation-status' },
        el('span', {}, `${statusText}${active && pct > 0 ? ` ${pct}%` : ''}`),
        job.attempts > 1 && active ? el('span', { className: 'muted' }, ` · attempt ${job.attempts}/${job.max_attempts}`) : null),
      error ? el('div', { className: 'generation-error', dataset: { testid: 'generation-error' } }, error) : null
    ].filter(Boolean))
    listEl.classList.toggle('empty', jobs.size === 0)

    // placeholder where the image will appear (everyone sees it)
    const p = job.params || {}
    if (active && Number.isFinite(p.x) && Number.isFinite(p.y)) {
      if (!entry.placeholder) {
        entry.placeholder = el('div', { className: 'generation-placeholder', dataset: { testid: 'generation-placeholder', jobId: job.id } },
          el('div', { className: 'placeholder-label' }), el('div', { className: 'progress' }, el('div', { className: 'progress-bar' })))
        placeholdersEl.append(entry.placeholder)
      }
      const ph = entry.placeholder
      ph.style.transform = `translate(${p.x}px, ${p.y}px)`
      ph.style.width = `${Number.isInteger(p.width) ? p.width : 512}px`
      ph.style.height = `${Number.isInteger(p.height) ? p.height : 512}px`
      ph.querySelector('.placeholder-label').textContent = `${statusText} ${pct}% · ${job.prompt}`
      ph.querySelector('.progress-bar').style.width = `${pct}%`
    } else if (entry.placeholder) {
      entry.placeholder.remove()
      entry.placeholder = null
    }
  }

  events.on('generation', (event) => {
    upsert(event.job, event.status, {
      elementId: event.element_id || undefined,
      errorType: event.error_type || undefined
    })
    if (event.status === 'failed' && event.job?.canvas_id === canvasId) {
      toast(`Generation failed: ${ERROR_TEXT[event.error_type] || event.error_type || 'error'}`, { kind: 'error' })
    }
  })

  const cancel = async (jobId) => {
    try {
      const job = await api.cancelGeneration(jobId)
      upsert(job, job.status, { force: true })
    } catch (err) {
      toast(`Could not cancel: ${err.message}`, { kind: 'error' })
    }
  }

  formEl.addEventListener('submit', async (e) => {
    e.preventDefault()
    if (!canGenerate()) return
    const prompt = promptEl.value.trim()
    if (!prompt) { promptEl.focus(); return }
    const c = camera.visibleCenter()
    const body = {
      generator: 'pattern',
      prompt,
      params: { x: Math.round(c.x - IMAGE_SIZE / 2), y: Math.round(c.y - IMAGE_SIZE / 2), width: IMAGE_SIZE, height: IMAGE_SIZE },
      idempotency_key: randomId(16)
    }
    const button = formEl.querySelector('button[type=submit]')
    button.disabled = true
    try {
      const { job } = await api.createGeneration(canvasId, body)
      upsert(job)
      promptEl.value = ''
    } catch (err) {
      toast(`Could not start the generation: ${err.message}`, { kind: 'error' })
    } finally {
      button.disabled = false
    }
  })

  return {
    jobs,
    refreshPermissions: () => jobs.forEach(render)
  }
}
