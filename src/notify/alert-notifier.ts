import { StoreUnavailableError } from '../heart/store.js'
import type { OpenedAlert } from './alert.js'
import type { SharedAccessToken } from './access-token.js'
import type { NotifyState } from './state.js'
import { messageData, type TemplateFields } from './template.js'
import type { ApiOutcome, SubscribeMessage, WeChatApi } from './wechat-api.js'

/** errcodes of subscribe/send (sendMessage.html) and what each means for us. */
const TOKEN_EXPIRED = new Set([40001, 42001])
const USER_REFUSED = 43101
/** Our configuration is wrong (openid, template, data, page): retrying cannot help. */
const CONFIG_ERRORS = new Set([40003, 40037, 47003, 41030])
/** "System busy": like a network error, worth retrying. */
const BUSY = -1

/** A user can accept many times; more sends than this waiting would be a client gone wrong. */
export const ALLOWANCE_MAX = 50
/** A claim outlives every retry of its message. */
const CLAIM_MS = 24 * 60 * 60 * 1000

export interface NotifierOptions {
  api: WeChatApi
  state: NotifyState
  tokens: SharedAccessToken
  /** Who may read the owner besides the owner: the viewers the owner shared with. */
  viewersOf: (ownerId: string) => Promise<string[]>
  templateId: string
  fields: TemplateFields
  page?: string | undefined
  miniprogramState: SubscribeMessage['miniprogram_state']
  /** How long a message is retried on network errors, HTTP 5xx and errcode -1. */
  retryForMs: number
  firstRetryMs: number
  log: { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void, error: (obj: object, msg: string) => void }
  /** Metrics: `sent`, or a failure by errcode (`timeout`, `network` when WeChat gave none). */
  counted: (event: { kind: 'sent' } | { kind: 'failed', errcode: string } | { kind: 'consumed' }) => void
}

type Outcome = 'sent' | 'retry' | 'final'

async function answered<T> (p: Promise<T>): Promise<T> {
  try {
    return await p
  } catch (err) {
    throw new StoreUnavailableError(err)
  }
}

/**
 * WeChat subscription messages for an alert that opened: one to the owner and one to each viewer
 * who has a send left, exactly once per (alert, recipient) across instances. Runs beside ingest,
 * never in its way: `opened` returns at once and a slow or failing WeChat delays nothing.
 */
export class AlertNotifier {
  private readonly timers = new Set<NodeJS.Timeout>()
  private readonly running = new Set<Promise<void>>()
  private closed = false

  constructor (private readonly opts: NotifierOptions) {}

  get templateId (): string {
    return this.opts.templateId
  }

  /** The user accepted the template once more. Rejects with StoreUnavailableError when the state does not answer. */
  async addAllowance (userId: string, max: number): Promise<number> {
    return await answered(this.opts.state.addAllowance(userId, this.opts.templateId, max))
  }

  async allowance (userId: string): Promise<number> {
    return await answered(this.opts.state.allowance(userId, this.opts.templateId))
  }

  opened (alert: OpenedAlert): void {
    if (this.closed) return
    this.track(this.notifyAll(alert))
  }

  /** Resolves when every message started so far has gone out or given up (tests, shutdown). */
  async idle (): Promise<void> {
    while (this.running.size > 0 || this.timers.size > 0) {
      await Promise.all([...this.running])
      if (this.timers.size > 0) await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }

  /** Stops retrying: shutdown. A message still waiting for a retry is not sent. */
  close (): void {
    this.closed = true
    for (const timer of this.timers) clearTimeout(timer)
    this.timers.clear()
  }

  private track (work: Promise<void>): void {
    const p = work.catch((err: unknown) => {
      this.opts.log.error({ reason: err instanceof Error ? err.message : String(err) }, 'alert message failed')
    }).finally(() => this.running.delete(p))
    this.running.add(p)
  }

  private async notifyAll (alert: OpenedAlert): Promise<void> {
    const viewers = await this.opts.viewersOf(alert.userId)
    await Promise.all([alert.userId, ...viewers].map(async (to) => await this.notify(alert, to)))
  }

  private async notify (alert: OpenedAlert, to: string): Promise<void> {
    const { state, templateId } = this.opts
    if (!await state.claim(alert.alertId, alert.userId, to, CLAIM_MS)) return
    if (!await state.consume(to, templateId)) return
    this.opts.counted({ kind: 'consumed' })
    const message: SubscribeMessage = {
      touser: to,
      template_id: templateId,
      ...(this.opts.page === undefined ? {} : { page: this.opts.page }),
      data: messageData(this.opts.fields, alert),
      miniprogram_state: this.opts.miniprogramState,
      lang: 'zh_CN'
    }
    this.attempt(alert, message, Date.now() + this.opts.retryForMs, this.opts.firstRetryMs)
  }

  private attempt (alert: OpenedAlert, message: SubscribeMessage, deadline: number, delayMs: number): void {
    this.track((async () => {
      const outcome = await this.sendOnce(alert, message)
      if (outcome !== 'retry') return
      if (this.closed) return
      if (Date.now() + delayMs > deadline) {
        this.failed(alert, message.touser, 'timeout')
        await this.opts.state.refund(message.touser, message.template_id)
        return
      }
      // Jitter spreads the retries of many messages that failed together.
      const timer = setTimeout(() => {
        this.timers.delete(timer)
        this.attempt(alert, message, deadline, Math.min(delayMs * 2, 60_000))
      }, delayMs * (0.5 + Math.random() / 2))
      this.timers.add(timer)
    })())
  }

  private async sendOnce (alert: OpenedAlert, message: SubscribeMessage): Promise<Outcome> {
    const { tokens, api, state } = this.opts
    let res: ApiOutcome<null> | null = null
    for (let tokenTries = 0; tokenTries < 2; tokenTries++) {
      const token = await tokens.get()
      if (!token.ok) {
        if (token.errcode === null || token.errcode === BUSY) return 'retry'
        // WeChat refused the app's credentials (e.g. 40013, 40125): no message can go out.
        this.opts.log.error({ errcode: token.errcode }, 'WeChat refused the access token request: check WECHAT_APPID and WECHAT_SECRET')
        this.failed(alert, message.touser, String(token.errcode))
        await state.refund(message.touser, message.template_id)
        return 'final'
      }
      res = await api.sendMessage(token.value, message)
      if (res.ok || res.errcode === null || !TOKEN_EXPIRED.has(res.errcode)) break
      // Fetch again once and retry once.
      await tokens.expired(token.value)
    }
    if (res === null) return 'retry'
    if (res.ok) {
      this.opts.counted({ kind: 'sent' })
      this.opts.log.info({ alertId: alert.alertId, to: message.touser }, 'alert message sent')
      return 'sent'
    }
    if (res.errcode === null || res.errcode === BUSY) {
      this.opts.log.warn({ alertId: alert.alertId, to: message.touser, errcode: res.errcode ?? undefined, reason: res.errcode === null ? res.reason : undefined }, 'alert message not sent yet: retrying')
      return 'retry'
    }
    this.failed(alert, message.touser, String(res.errcode))
    if (res.errcode === USER_REFUSED) {
      await state.clearAllowance(message.touser, message.template_id)
    } else {
      if (CONFIG_ERRORS.has(res.errcode)) this.opts.log.error({ alertId: alert.alertId, errcode: res.errcode }, 'alert message refused: check WECHAT_ALERT_TEMPLATE_ID, WECHAT_ALERT_FIELDS and WECHAT_ALERT_PAGE')
      await state.refund(message.touser, message.template_id)
    }
    return 'final'
  }

  private failed (alert: OpenedAlert, to: string, errcode: string): void {
    this.opts.counted({ kind: 'failed', errcode })
    this.opts.log.warn({ alertId: alert.alertId, to, errcode }, 'alert message failed')
  }
}
