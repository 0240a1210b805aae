/**
 * What alert messages keep between instances: each user's allowance (sends they consented to),
 * the claims that make a message go out once per (alert, recipient), and the shared access
 * token. In Redis for a deployment (redis-state.ts), in the process for the embedded store.
 */
export interface NotifyState {
  /** Adds one send to the user's allowance for the template, up to `max`; the allowance after it. */
  addAllowance (userId: string, templateId: string, max: number): Promise<number>
  allowance (userId: string, templateId: string): Promise<number>
  /** Takes one send if any is left: false when the allowance is 0. */
  consume (userId: string, templateId: string): Promise<boolean>
  /** Gives back a send that did not go out for a reason of ours (configuration, WeChat unreachable). */
  refund (userId: string, templateId: string): Promise<void>
  /** WeChat says the user refused or cancelled: nothing more goes to them until they accept again. */
  clearAllowance (userId: string, templateId: string): Promise<void>
  /** True for the one caller, on any instance, that may send this alert to this recipient. */
  claim (alertId: string, ownerId: string, recipient: string, ttlMs: number): Promise<boolean>

  cachedToken (): Promise<string | null>
  storeToken (token: string, ttlMs: number): Promise<void>
  /** Forgets the cached token if it is still `token` (WeChat said it expired). */
  dropToken (token: string): Promise<void>
  /** One fetch of a new token at a time across instances; `owner` identifies the holder. */
  lockToken (owner: string, ttlMs: number): Promise<boolean>
  unlockToken (owner: string): Promise<void>
}

interface Expiring { value: string, until: number }

/** The embedded store's state: one process, so plain maps do. */
export class MemoryNotifyState implements NotifyState {
  private readonly allowances = new Map<string, number>()
  private readonly claims = new Map<string, number>()
  private token: Expiring | null = null
  private lock: Expiring | null = null

  private static key (userId: string, templateId: string): string {
    return `${userId}\n${templateId}`
  }

  async addAllowance (userId: string, templateId: string, max: number): Promise<number> {
    const key = MemoryNotifyState.key(userId, templateId)
    const n = Math.min(max, (this.allowances.get(key) ?? 0) + 1)
    this.allowances.set(key, n)
    return n
  }

  async allowance (userId: string, templateId: string): Promise<number> {
    return this.allowances.get(MemoryNotifyState.key(userId, templateId)) ?? 0
  }

  async consume (userId: string, templateId: string): Promise<boolean> {
    const key = MemoryNotifyState.key(userId, templateId)
    const n = this.allowances.get(key) ?? 0
    if (n <= 0) return false
    this.allowances.set(key, n - 1)
    return true
  }

  async refund (userId: string, templateId: string): Promise<void> {
    const key = MemoryNotifyState.key(userId, templateId)
    this.allowances.set(key, (this.allowances.get(key) ?? 0) + 1)
  }

  async clearAllowance (userId: string, templateId: string): Promise<void> {
    this.allowances.delete(MemoryNotifyState.key(userId, templateId))
  }

  async claim (alertId: string, ownerId: string, recipient: string, ttlMs: number): Promise<boolean> {
    const now = Date.now()
    for (const [key, until] of this.claims) if (until <= now) this.claims.delete(key)
    const key = `${ownerId}\n${alertId}\n${recipient}`
    if (this.claims.has(key)) return false
    this.claims.set(key, now + ttlMs)
    return true
  }

  async cachedToken (): Promise<string | null> {
    return this.token !== null && this.token.until > Date.now() ? this.token.value : null
  }

  async storeToken (token: string, ttlMs: number): Promise<void> {
    this.token = { value: token, until: Date.now() + ttlMs }
  }

  async dropToken (token: string): Promise<void> {
    if (this.token?.value === token) this.token = null
  }

  async lockToken (owner: string, ttlMs: number): Promise<boolean> {
    if (this.lock !== null && this.lock.until > Date.now()) return false
    this.lock = { value: owner, until: Date.now() + ttlMs }
    return true
  }

  async unlockToken (owner: string): Promise<void> {
    if (this.lock?.value === owner) this.lock = null
  }
}
