// Local selection state (ids of selected elements) with change notifications.
// Kept separate so the board, toolbar and presence can all react to it.

export const createSelection = () => {
  /** @type {string[]} */
  let ids = []
  const listeners = new Set()
  const same = (a, b) => a.length === b.length && a.every((id, i) => id === b[i])

  return {
    get: () => ids,
    has: (id) => ids.includes(id),
    /** @param {string[]} next */
    set (next) {
      if (same(ids, next)) return
      ids = [...next]
      for (const fn of listeners) fn(ids)
    },
    /** Drop ids that no longer exist. @param {(id: string) => boolean} exists */
    prune (exists) {
      const kept = ids.filter(exists)
      if (kept.length !== ids.length) this.set(kept)
    },
    /** @param {(ids: string[]) => void} fn  @returns {() => void} unsubscribe */
    onChange (fn) {
      listeners.add(fn)
      return () => listeners.delete(fn)
    }
  }
}
