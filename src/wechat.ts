import { isUserId } from './heart/reading.js'

/**
 * WeChat's code2Session (`GET /sns/jscode2session`): trades the `code` from a mini program's
 * `wx.login()` for the user's openid. The answer also carries `session_key`, which this service
 * has no use for: it is read nowhere and never leaves this module.
 * https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/user-login/code2Session.html
 */

export interface WeChatOptions {
  appId: string
  secret: string
  /** e.g. https://api.weixin.qq.com; a path (a forward proxy's prefix) is kept. */
  apiBase: string
  timeoutMs: number
}

export interface WeChatSession {
  openid: string
}

export type WeChatErrorCode = 'invalid_code' | 'wechat_rate_limited' | 'user_blocked' | 'wechat_unavailable'

/**
 * A login WeChat did not confirm. `statusCode`, `code` and `message` are ours and safe to send
 * to the client; `detail` is for the log and holds nothing from WeChat beyond an errcode or an
 * HTTP status.
 */
export class WeChatError extends Error {
  constructor (
    readonly statusCode: 401 | 403 | 429 | 502,
    readonly code: WeChatErrorCode,
    message: string,
    readonly detail: { errcode?: number, httpStatus?: number, reason?: string } = {}
  ) {
    super(message)
    this.name = 'WeChatError'
  }
}

/** WeChat's answers are a few hundred bytes; anything far larger is not one. */
export const MAX_ANSWER_BYTES = 16 * 1024

const unavailable = (detail: WeChatError['detail']): WeChatError =>
  new WeChatError(502, 'wechat_unavailable', 'WeChat login is unavailable right now, try again shortly', detail)

/** Maps WeChat's documented errcodes; everything else (including -1, "system busy") is a 502. */
function errorFor (errcode: number): WeChatError {
  switch (errcode) {
    case 40029:
    case 40163:
      return new WeChatError(401, 'invalid_code', 'the login code is invalid or was already used: call wx.login() again', { errcode })
    case 45011:
      return new WeChatError(429, 'wechat_rate_limited', 'WeChat is rate limiting logins for this user, try again in a minute', { errcode })
    case 40226:
      return new WeChatError(403, 'user_blocked', 'WeChat refused the login of this user', { errcode })
    default:
      return unavailable({ errcode })
  }
}

/** The body as text, or null when it exceeds `max` bytes. */
export async function readText (res: Response, max: number): Promise<string | null> {
  if (res.body === null) return ''
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of res.body) {
    size += chunk.byteLength
    if (size > max) return null
    chunks.push(chunk)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** Why a request got no answer, for the log: `timeout`, a socket error code, or the error's name. */
export function failureReason (err: unknown): string {
  const e = err as { name?: string, cause?: { code?: unknown } }
  if (e.name === 'TimeoutError') return 'timeout'
  return typeof e.cause?.code === 'string' ? e.cause.code : (e.name ?? 'error')
}

export interface WeChatClient {
  /** Resolves with the openid, or rejects with a WeChatError. */
  code2Session (code: string): Promise<WeChatSession>
}

export function createWeChatClient (opts: WeChatOptions): WeChatClient {
  const endpoint = `${opts.apiBase.replace(/\/+$/, '')}/sns/jscode2session`
  return {
    async code2Session (code) {
      const query = new URLSearchParams({ appid: opts.appId, secret: opts.secret, js_code: code, grant_type: 'authorization_code' })
      let text: string | null
      let httpStatus: number
      try {
        // The timeout covers the body as well as the headers. No redirects: the query carries the secret.
        const res = await fetch(`${endpoint}?${query.toString()}`, { signal: AbortSignal.timeout(opts.timeoutMs), redirect: 'error' })
        httpStatus = res.status
        if (!res.ok) {
          await res.body?.cancel()
          throw unavailable({ httpStatus })
        }
        text = await readText(res, MAX_ANSWER_BYTES)
      } catch (err) {
        if (err instanceof WeChatError) throw err
        throw unavailable({ reason: failureReason(err) })
      }
      if (text === null) throw unavailable({ httpStatus, reason: 'answer too large' })

      // WeChat sometimes labels its JSON text/plain: the content type is not trusted either way.
      let answer: unknown
      try {
        answer = JSON.parse(text)
      } catch {
        throw unavailable({ httpStatus, reason: 'answer is not JSON' })
      }
      if (typeof answer !== 'object' || answer === null || Array.isArray(answer)) throw unavailable({ httpStatus, reason: 'answer is not a JSON object' })
      const { errcode, openid } = answer as { errcode?: unknown, openid?: unknown }
      if (errcode !== undefined && errcode !== 0) {
        throw typeof errcode === 'number' ? errorFor(errcode) : unavailable({ httpStatus, reason: 'errcode is not a number' })
      }
      if (!isUserId(openid)) throw unavailable({ httpStatus, reason: 'answer has no usable openid' })
      return { openid }
    }
  }
}
