/** A reconnecting phone flushes what it queued while offline: the bucket holds this many seconds' worth. */
const BACKLOG_S = 60
/** How often buckets that have refilled are forgotten (a full bucket is the same as none). */
const SWEEP_MS = 60_000

interface Bucket { tokens: number, at: number }

/**
 * PUBLISH_RATE_LIMIT: readings per second a user may `publish`, on this instance, whatever
 * number of sockets they spread them over. A token bucket per user that holds a minute's backlog.
 */
export class PublishLimiter {
  readonly capacity: number
  private readonly buckets = new Map<string, Bucket>()
  private sweptAt = Date.now()

  constructor (readonly rate: number) {
    this.capacity = rate * BACKLOG_S
  }

  private level (b: Bucket, now: number): number {
    return Math.min(this.capacity, b.tokens + (now - b.at) * this.rate / 1000)
  }

  /** Takes `n` readings' worth, all or none: a batch is stored whole or refused whole. */
  take (userId: string, n: number, now = Date.now()): boolean {
    if (now - this.sweptAt >= SWEEP_MS) this.sweep(now)
    const b = this.buckets.get(userId)
    const tokens = b === undefined ? this.capacity : this.level(b, now)
    if (tokens < n) return false
    this.buckets.set(userId, { tokens: tokens - n, at: now })
    return true
  }

  private sweep (now: number): void {
    this.sweptAt = now
    for (const [userId, b] of this.buckets) {
      if (this.level(b, now) >= this.capacity) this.buckets.delete(userId)
    }
  }
}
