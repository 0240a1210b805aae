import type { Cluster, Redis } from 'ioredis'
import { legacyKey } from '../heart/redis-keys.js'
import type { NotifyState } from './state.js'

/**
 * The notification state in Redis (README, "Redis layout"):
 * - `{<prefix><userId>}:alert-allowance`          a hash: template id → sends the user consented to.
 * - `{<prefix><ownerId>}:notified:<alertId>:<to>` a claim: this alert went (or is going) to `to`.
 * - `<prefix>wechat:access-token`                 the shared access token, expiring before WeChat's.
 * - `<prefix>wechat:access-token:lock`            held by the one instance fetching a new token.
 * Every command is on one key, so all of it works on a cluster.
 */
export class RedisNotifyState implements NotifyState {
  private readonly tokenKey: string
  private readonly lockKey: string

  constructor (private readonly redis: Redis | Cluster, private readonly prefix: string) {
    this.tokenKey = `${prefix}wechat:access-token`
    this.lockKey = `${this.tokenKey}:lock`
  }

  private allowanceKey (userId: string): string {
    return `{${legacyKey(this.prefix, userId)}}:alert-allowance`
  }

  async addAllowance (userId: string, templateId: string, max: number): Promise<number> {
    const key = this.allowanceKey(userId)
    const n = await this.redis.hincrby(key, templateId, 1)
    if (n <= max) return n
    // Past the cap: take the extra back (a concurrent add may have done the same; never below max).
    await this.redis.hincrby(key, templateId, -1)
    return max
  }

  async allowance (userId: string, templateId: string): Promise<number> {
    return Math.max(0, Number(await this.redis.hget(this.allowanceKey(userId), templateId) ?? 0))
  }

  /*
   * Decrement, and undo it when it went below zero: two consumers racing for the last send both
   * decrement, and the one that sees -1 gives it back. No send is ever spent twice.
   */
  async consume (userId: string, templateId: string): Promise<boolean> {
    const key = this.allowanceKey(userId)
    if (await this.redis.hincrby(key, templateId, -1) >= 0) return true
    await this.redis.hincrby(key, templateId, 1)
    return false
  }

  async refund (userId: string, templateId: string): Promise<void> {
    await this.redis.hincrby(this.allowanceKey(userId), templateId, 1)
  }

  async clearAllowance (userId: string, templateId: string): Promise<void> {
    await this.redis.hdel(this.allowanceKey(userId), templateId)
  }

  async claim (alertId: string, ownerId: string, recipient: string, ttlMs: number): Promise<boolean> {
    const key = `{${legacyKey(this.prefix, ownerId)}}:notified:${alertId}:${recipient}`
    return await this.redis.set(key, '1', 'PX', ttlMs, 'NX') === 'OK'
  }

  async cachedToken (): Promise<string | null> {
    return await this.redis.get(this.tokenKey)
  }

  async storeToken (token: string, ttlMs: number): Promise<void> {
    await this.redis.set(this.tokenKey, token, 'PX', ttlMs)
  }

  async dropToken (token: string): Promise<void> {
    // Another instance may have stored a newer token meanwhile; dropping that one too only costs
    // one more fetch, which (normal mode) returns the same valid token.
    if (await this.redis.get(this.tokenKey) === token) await this.redis.del(this.tokenKey)
  }

  async lockToken (owner: string, ttlMs: number): Promise<boolean> {
    return await this.redis.set(this.lockKey, owner, 'PX', ttlMs, 'NX') === 'OK'
  }

  async unlockToken (owner: string): Promise<void> {
    if (await this.redis.get(this.lockKey) === owner) await this.redis.del(this.lockKey)
  }
}
