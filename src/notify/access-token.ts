import { randomUUID } from 'node:crypto'
import type { ApiOutcome, WeChatApi } from './wechat-api.js'
import type { NotifyState } from './state.js'

/** Replaced this long before WeChat's expiry, so a message never goes out with a token about to die. */
const EARLY_MS = 5 * 60 * 1000
const LOCK_MS = 10_000
const WAIT_STEP_MS = 100

/** The access token every instance shares: at most one of them fetches it at a time. */
export class SharedAccessToken {
  private readonly me = randomUUID()

  constructor (private readonly api: WeChatApi, private readonly state: NotifyState, private readonly maxWaitMs: number) {}

  /** The cached token, or a new one: only the lock's holder asks WeChat, the others wait for its result. */
  async get (): Promise<ApiOutcome<string>> {
    const deadline = Date.now() + this.maxWaitMs
    for (;;) {
      const cached = await this.state.cachedToken()
      if (cached !== null) return { ok: true, value: cached }
      if (await this.state.lockToken(this.me, LOCK_MS)) {
        try {
          const again = await this.state.cachedToken()
          if (again !== null) return { ok: true, value: again }
          const res = await this.api.stableToken()
          if (!res.ok) return res
          const ttlMs = Math.max(res.value.expiresInS * 1000 - EARLY_MS, res.value.expiresInS * 500)
          await this.state.storeToken(res.value.token, ttlMs)
          return { ok: true, value: res.value.token }
        } finally {
          await this.state.unlockToken(this.me)
        }
      }
      if (Date.now() >= deadline) return { ok: false, errcode: null, reason: 'waited too long for another instance to fetch the access token' }
      await new Promise((resolve) => setTimeout(resolve, WAIT_STEP_MS))
    }
  }

  /** WeChat called `token` expired or invalid (40001, 42001): the next get fetches again. */
  async expired (token: string): Promise<void> {
    await this.state.dropToken(token)
  }
}
