import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Test } from 'tap'

/**
 * A stand-in for api.weixin.qq.com on 127.0.0.1 that answers the alert APIs as WeChat documents
 * them: getStableAccessToken (POST /cgi-bin/stable_token, normal mode: the same token while it is
 * valid) and subscribeMessage.send (POST /cgi-bin/message/subscribe/send?access_token=…), with
 * their errcodes. Knobs make it expire a token, refuse a user, be busy or slow.
 */
export const APPID = 'wx0123456789abcdef'
export const APP_SECRET = 'wechat-app-secret-5f0c2b9e7d1a4c38'
export const TEMPLATE_ID = 'vX1MxRmoPiYcPcmQSrmCMePMvVAFhTaDL-nZNQCELDQ'

export interface SentMessage {
  token: string
  touser: string
  template_id: string
  page?: string
  miniprogram_state?: string
  data: Record<string, { value: string }>
}

export interface StandIn {
  base: string
  tokenFetches: number
  /** Every subscribe/send request, answered or not. */
  attempts: SentMessage[]
  /** The messages WeChat accepted. */
  delivered: SentMessage[]
  /** Tokens ever issued (none may appear in a log). */
  issued: string[]
  expiresInS: number
  /** openids that refused or cancelled the subscription: 43101. */
  refusing: Set<string>
  /** The next n sends answer errcode -1 (system busy). */
  busy: number
  /** The next n sends answer HTTP 502. */
  failing: number
  /** Each send is answered after this long. */
  delayMs: number
  /** Called when a send arrives, before it is answered. */
  onSend?: (msg: SentMessage) => void
  /** The current token stops working: the next send with it gets 42001, a later fetch a new one. */
  expireToken: () => void
  /** Invalidate the current token without WeChat's normal expiry: 40001 for it. */
  revokeToken: () => void
}

async function body (req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  for await (const c of req) chunks.push(c as Buffer)
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    return null
  }
}

const THING_MAX = 20

export async function startStandIn (t: Test): Promise<StandIn> {
  let current: { token: string, until: number } | null = null
  const expired = new Set<string>()
  let serial = 0
  const s: StandIn = {
    base: '',
    tokenFetches: 0,
    attempts: [],
    delivered: [],
    issued: [],
    expiresInS: 7200,
    refusing: new Set(),
    busy: 0,
    failing: 0,
    delayMs: 0,
    expireToken () {
      if (current !== null) expired.add(current.token)
      current = null
    },
    revokeToken () {
      current = null
    }
  }
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1')
    const answer = (obj: unknown, status = 200): void => {
      // WeChat labels JSON as text/plain at times; the service must not care.
      res.writeHead(status, { 'content-type': 'text/plain' })
      res.end(JSON.stringify(obj))
    }
    void (async () => {
      const json = await body(req) as Record<string, unknown> | null
      if (req.method === 'POST' && url.pathname === '/cgi-bin/stable_token') {
        s.tokenFetches++
        if (json?.grant_type !== 'client_credential') return answer({ errcode: 40002, errmsg: 'invalid grant_type' })
        if (json.appid !== APPID) return answer({ errcode: 40013, errmsg: 'invalid appid' })
        if (json.secret !== APP_SECRET) return answer({ errcode: 40125, errmsg: 'invalid appsecret' })
        const now = Date.now()
        if (current === null || current.until <= now || json.force_refresh === true) {
          current = { token: `ACCESS_TOKEN_${++serial}_${Math.random().toString(36).slice(2)}`, until: now + s.expiresInS * 1000 }
          s.issued.push(current.token)
        }
        return answer({ access_token: current.token, expires_in: Math.round((current.until - now) / 1000) })
      }
      if (req.method === 'POST' && url.pathname === '/cgi-bin/message/subscribe/send') {
        const token = url.searchParams.get('access_token') ?? ''
        const msg = { ...(json ?? {}), token } as SentMessage
        s.attempts.push(msg)
        s.onSend?.(msg)
        if (s.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, s.delayMs))
        if (s.failing > 0) {
          s.failing--
          res.writeHead(502).end('Bad Gateway')
          return
        }
        if (s.busy > 0) {
          s.busy--
          return answer({ errcode: -1, errmsg: 'system error' })
        }
        if (expired.has(token)) return answer({ errcode: 42001, errmsg: 'access_token expired rid: 6565f0a1-00000001' })
        if (current === null || token !== current.token) return answer({ errcode: 40001, errmsg: 'invalid credential, access_token is invalid or not latest rid: 6565f0a1-00000002' })
        if (typeof msg.touser !== 'string' || !/^[A-Za-z0-9_-]+$/.test(msg.touser)) return answer({ errcode: 40003, errmsg: 'invalid openid' })
        if (msg.template_id !== TEMPLATE_ID) return answer({ errcode: 40037, errmsg: 'invalid template_id' })
        if (typeof msg.data !== 'object' || msg.data === null) return answer({ errcode: 47003, errmsg: 'argument invalid! data.thing1.value is empty' })
        for (const [key, v] of Object.entries(msg.data)) {
          if (typeof v?.value !== 'string' || (key.startsWith('thing') && [...v.value].length > THING_MAX)) {
            return answer({ errcode: 47003, errmsg: `argument invalid! data.${key}.value invalid` })
          }
          if (key.startsWith('number') && !/^[0-9.]+$/.test(v.value)) return answer({ errcode: 47003, errmsg: `argument invalid! data.${key}.value invalid` })
        }
        if (s.refusing.has(msg.touser)) return answer({ errcode: 43101, errmsg: 'user refuse to accept the msg rid: 6565f0a1-00000003' })
        s.delivered.push(msg)
        return answer({ errcode: 0, errmsg: 'ok', msgid: 1000 + s.delivered.length })
      }
      res.writeHead(404).end()
    })()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  s.base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  return s
}
