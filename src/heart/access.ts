import type { HeartStore } from './store.js'

/** What the access rule needs from a store: the grants alone. */
export type GrantStore = Pick<HeartStore, 'areGranted'>

/** "May `viewerId` read `ownerId`?" */
export interface ReadQuestion {
  viewerId: string
  ownerId: string
}

/**
 * Who is writing readings. A service key (INGEST_API_KEYS) belongs to a trusted gateway that
 * writes for many users; a device key writes for the device's owner; a user's token (the wearer's
 * own mini program) writes for that user.
 */
export type Writer =
  | { kind: 'service' }
  | { kind: 'device', ownerId: string }
  | { kind: 'user', userId: string }

/** A user reads their own heart rate with no grant. */
function readsOwn (q: ReadQuestion): boolean {
  return q.viewerId === q.ownerId
}

/** `viewerId` may not read `ownerId`'s heart rate. */
export class ForbiddenError extends Error {
  constructor (readonly ownerId: string) {
    super(`not allowed to read ${ownerId}`)
    this.name = 'ForbiddenError'
  }
}

/**
 * Who may read whom, and who may write whose readings, decided here and nowhere else: a user
 * reads their own heart rate, and another's when that person has shared it with them
 * (PUT /shares/:viewerId). Every read path (get, subscribe, the legacy frame, history) and every
 * re-check of a live subscription asks this, and so does every ingest (`canWrite`) and every
 * change of alert rules (`canManage`).
 * It is asked each time, never cached, so a withdrawn grant takes effect at the next question.
 *
 * The argument order is always (viewerId, ownerId), "may viewer read owner"; the store's
 * primitive `areGranted` is called from here only.
 */
export class Access {
  constructor (private readonly grants: GrantStore) {}

  /** Whether `viewerId` may read `ownerId`'s heart rate. */
  async canRead (viewerId: string, ownerId: string): Promise<boolean> {
    return (await this.canReadAll([{ viewerId, ownerId }]))[0]
  }

  /**
   * The same question for many pairs at once, answered in order; the store is asked once, for the
   * pairs that need a grant (re-checking every open subscription costs one round trip).
   */
  async canReadAll (questions: readonly ReadQuestion[]): Promise<boolean[]> {
    const needGrant = questions.filter((q) => !readsOwn(q))
    const granted = needGrant.length === 0 ? [] : await this.grants.areGranted(needGrant)
    let next = 0
    return questions.map((q) => readsOwn(q) || granted[next++])
  }

  /** Whether `writer` may write `userId`'s readings: a service for anyone, a device for its owner alone, a user for themself alone. */
  canWrite (writer: Writer, userId: string): boolean {
    switch (writer.kind) {
      case 'service': return true
      case 'device': return writer.ownerId === userId
      case 'user': return writer.userId === userId
    }
  }

  /** Resolves when `viewerId` may read `ownerId`'s heart rate; rejects with ForbiddenError otherwise. */
  async authorize (viewerId: string, ownerId: string): Promise<void> {
    if (!await this.canRead(viewerId, ownerId)) throw new ForbiddenError(ownerId)
  }

  /**
   * Whether `userId` may change what concerns `ownerId` (alert rules): the owner alone. Viewers
   * read the rules (canRead) but never set them.
   */
  canManage (userId: string, ownerId: string): boolean {
    return userId === ownerId
  }
}
