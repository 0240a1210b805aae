import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { USER_ID_PATTERN } from '../src/heart/reading.js'
import { errorResponses, sendError } from '../src/http-errors.js'
import { strictAjv } from '../src/validation.js'
import { WeChatError, createWeChatClient } from '../src/wechat.js'

const WeChatBody = Type.Object({
  code: Type.String({ minLength: 1, maxLength: 128, description: 'the code from wx.login()' })
}, { additionalProperties: false })

const DevBody = Type.Object({
  userId: Type.String({ pattern: USER_ID_PATTERN })
}, { additionalProperties: false })

const Login = Type.Object({
  token: Type.String({ description: 'JWT (HS256); send it as Authorization: Bearer <token>' }),
  expiresIn: Type.Integer({ description: 'seconds until the token expires' }),
  userId: Type.String()
})

const errors = errorResponses(400, 401, 403, 429, 501, 502)

/**
 * Login: `POST /auth/wechat` trades a mini program's wx.login() code for a token; `POST /auth/dev`
 * mints one for any user id, for trying the service without WeChat (never in production).
 * Bodies are never logged (src/logger.ts): they carry login codes.
 */
const auth: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.setValidatorCompiler(({ schema }) => strictAjv.compile(schema))
  const { WECHAT_APPID, WECHAT_SECRET, WECHAT_API_BASE, WECHAT_TIMEOUT_MS, LOGIN_RATE_LIMIT, ENABLE_DEV_LOGIN, NODE_ENV } = fastify.config
  const issue = fastify.tokens.issue
  const wechat = WECHAT_APPID !== undefined && WECHAT_SECRET !== undefined
    ? createWeChatClient({ appId: WECHAT_APPID, secret: WECHAT_SECRET, apiBase: WECHAT_API_BASE, timeoutMs: WECHAT_TIMEOUT_MS })
    : null
  if (issue !== null && wechat === null) fastify.log.warn('WECHAT_APPID and WECHAT_SECRET are not set: POST /auth/wechat answers 501')
  const rateLimit = { max: LOGIN_RATE_LIMIT, timeWindow: '1 minute' }
  const NO_ISSUER = 'login is off: tokens are minted by the account service (JWT_PUBLIC_KEY is set)'

  fastify.post('/auth/wechat', {
    config: { rateLimit },
    schema: { summary: 'Log in with the code from wx.login()', body: WeChatBody, response: { 200: Login, ...errors } }
  }, async (request, reply) => {
    if (issue === null) return sendError(reply, 501, NO_ISSUER)
    if (wechat === null) return sendError(reply, 501, 'WeChat login is not configured: set WECHAT_APPID and WECHAT_SECRET')
    let openid: string
    try {
      ({ openid } = await wechat.code2Session(request.body.code))
    } catch (err) {
      if (!(err instanceof WeChatError)) throw err
      request.log[err.statusCode === 502 ? 'warn' : 'info']({ wechat: err.detail }, `wechat login refused: ${err.code}`)
      return sendError(reply, err.statusCode, err.message, err.code)
    }
    const { token, expiresIn } = issue(openid)
    request.log.info({ userId: openid }, 'wechat login')
    return { token, expiresIn, userId: openid }
  })

  if (!ENABLE_DEV_LOGIN) return
  if (NODE_ENV === 'production') {
    fastify.log.warn('ENABLE_DEV_LOGIN is ignored with NODE_ENV=production: POST /auth/dev is not available')
    return
  }
  fastify.log.warn('dev login is on (ENABLE_DEV_LOGIN): POST /auth/dev mints a token for any user id; never enable it where real users connect')
  fastify.post('/auth/dev', {
    config: { rateLimit },
    schema: { summary: 'Development only: a token for any user id', body: DevBody, response: { 200: Login, ...errors } }
  }, async (request, reply) => {
    if (issue === null) return sendError(reply, 501, NO_ISSUER)
    const { userId } = request.body
    const { token, expiresIn } = issue(userId)
    request.log.warn({ userId }, 'dev login')
    return { token, expiresIn, userId }
  })
}

export default auth
