import { MAX_ANSWER_BYTES, failureReason, readText } from '../wechat.js'

/**
 * The two WeChat server APIs alerts use: the stable access token and the subscription message.
 * https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-access-token/getStableAccessToken.html
 * https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html
 * Neither the secret nor an access token ever leaves this module in an error or a log line.
 */

export interface WeChatApiOptions {
  appId: string
  secret: string
  apiBase: string
  timeoutMs: number
}

/** What a call came back with: WeChat's errcode (0 is success), or no usable answer at all. */
export type ApiOutcome<T> =
  | { ok: true, value: T }
  | { ok: false, errcode: number }
  | { ok: false, errcode: null, reason: string }

export interface AccessToken {
  token: string
  expiresInS: number
}

export interface SubscribeMessage {
  touser: string
  template_id: string
  page?: string
  data: Record<string, { value: string }>
  miniprogram_state: 'formal' | 'trial' | 'developer'
  lang: 'zh_CN'
}

export interface WeChatApi {
  stableToken (): Promise<ApiOutcome<AccessToken>>
  sendMessage (accessToken: string, message: SubscribeMessage): Promise<ApiOutcome<null>>
}

async function postJson (url: string, body: unknown, timeoutMs: number): Promise<ApiOutcome<Record<string, unknown>>> {
  let text: string | null
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
      // The URL or the body carries a credential: never follow it elsewhere.
      redirect: 'error'
    })
    if (!res.ok) {
      await res.body?.cancel()
      return { ok: false, errcode: null, reason: `HTTP ${res.status}` }
    }
    text = await readText(res, MAX_ANSWER_BYTES)
  } catch (err) {
    return { ok: false, errcode: null, reason: failureReason(err) }
  }
  if (text === null) return { ok: false, errcode: null, reason: 'answer too large' }
  let answer: unknown
  try {
    answer = JSON.parse(text)
  } catch {
    return { ok: false, errcode: null, reason: 'answer is not JSON' }
  }
  if (typeof answer !== 'object' || answer === null || Array.isArray(answer)) return { ok: false, errcode: null, reason: 'answer is not a JSON object' }
  const errcode = (answer as { errcode?: unknown }).errcode
  if (errcode !== undefined && errcode !== 0) {
    return typeof errcode === 'number' ? { ok: false, errcode } : { ok: false, errcode: null, reason: 'errcode is not a number' }
  }
  return { ok: true, value: answer as Record<string, unknown> }
}

export function createWeChatApi (opts: WeChatApiOptions): WeChatApi {
  const base = opts.apiBase.replace(/\/+$/, '')
  return {
    async stableToken () {
      // Normal mode (no force_refresh): within its validity every caller gets the same token, so
      // no fetch, from any instance, invalidates a token another one still uses.
      const res = await postJson(`${base}/cgi-bin/stable_token`, { grant_type: 'client_credential', appid: opts.appId, secret: opts.secret }, opts.timeoutMs)
      if (!res.ok) return res
      const { access_token: token, expires_in: expiresInS } = res.value
      if (typeof token !== 'string' || token === '' || typeof expiresInS !== 'number' || expiresInS <= 0) {
        return { ok: false, errcode: null, reason: 'answer has no usable access_token' }
      }
      return { ok: true, value: { token, expiresInS } }
    },

    async sendMessage (accessToken, message) {
      const res = await postJson(`${base}/cgi-bin/message/subscribe/send?access_token=${encodeURIComponent(accessToken)}`, message, opts.timeoutMs)
      return res.ok ? { ok: true, value: null } : res
    }
  }
}
