import type { Alert } from './episodes.js'
import type { StoredReading } from './reading.js'
import type { FeedListener, ReadingFeed } from './store.js'

/** The live feed of one process: delivery is asynchronous, as it is through Redis pub/sub. */
export class MemoryFeed implements ReadingFeed {
  private listener: FeedListener | null = null
  readonly watched = new Set<string>()

  setListener (listener: FeedListener): void {
    this.listener = listener
  }

  async watch (userId: string): Promise<void> {
    this.watched.add(userId)
  }

  async unwatch (userId: string): Promise<void> {
    this.watched.delete(userId)
  }

  publish (userId: string, readings: StoredReading[]): void {
    if (!this.watched.has(userId)) return
    queueMicrotask(() => {
      for (const r of readings) this.listener?.reading(userId, r)
    })
  }

  publishAlert (userId: string, alert: Alert): void {
    if (!this.watched.has(userId)) return
    queueMicrotask(() => this.listener?.alert(userId, alert))
  }

  publishRevoked (ownerId: string, viewerId: string): void {
    if (!this.watched.has(ownerId)) return
    queueMicrotask(() => this.listener?.revoked(ownerId, viewerId))
  }
}
