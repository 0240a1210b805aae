import fp from 'fastify-plugin'
import fastifyJwt from '@fastify/jwt'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { isUserId } from '../src/heart/reading.js'

/** Who a request speaks for, once `authenticate` has accepted its token. */
export interface Principal {
  userId: string
  /** Token expiry, seconds since the epoch (the JWT's `exp`). */
  exp: number
}

declare module 'fastify' {
  interface FastifyInstance {
    /** preValidation hook: 401 unless the request carries a valid token. */
    authenticate (request: FastifyRequest, reply: FastifyReply): Promise<void>
  }
  interface FastifyRequest {
    principal: Principal | null
  }
}

const BEARER = /^Bearer +([^ ]+)$/i

/**
 * The token comes from `Authorization: Bearer <jwt>` (mini programs set it through
 * wx.connectSocket's header) or, for browsers, which cannot set headers on a WebSocket, from
 * `?access_token=<jwt>` (redacted from logs, see src/logger.ts).
 */
function tokenOf (request: FastifyRequest): string | null {
  const header = request.headers.authorization
  if (header !== undefined) return BEARER.exec(header)?.[1] ?? ''
  const query = request.query as { access_token?: unknown } | undefined
  return typeof query?.access_token === 'string' ? query.access_token : null
}

function unauthorized (reply: FastifyReply, message: string): FastifyReply {
  return reply.code(401).header('www-authenticate', 'Bearer').send({ statusCode: 401, error: 'Unauthorized', message })
}

/**
 * JWT authentication: HS256 with JWT_SECRET only (so `alg: none` and other algorithms fail),
 * `sub` is the user id and must follow the user id rule, `exp` is required.
 */
export default fp(async function auth (fastify) {
  await fastify.register(fastifyJwt, {
    secret: fastify.config.JWT_SECRET,
    sign: { algorithm: 'HS256' },
    verify: { algorithms: ['HS256'], requiredClaims: ['sub', 'exp'] }
  })
  fastify.decorateRequest('principal', null)

  fastify.decorate('authenticate', async function authenticate (request: FastifyRequest, reply: FastifyReply) {
    const token = tokenOf(request)
    if (token === null) return unauthorized(reply, 'missing token: send Authorization: Bearer <jwt> or ?access_token=<jwt>')
    if (token === '') return unauthorized(reply, 'malformed Authorization header: expected Bearer <jwt>')
    let claims: { sub?: unknown, exp?: unknown }
    try {
      claims = fastify.jwt.verify(token)
    } catch (err) {
      return unauthorized(reply, (err as { code?: string }).code === 'FAST_JWT_EXPIRED' ? 'token expired' : 'invalid token')
    }
    if (!isUserId(claims.sub) || typeof claims.exp !== 'number') return unauthorized(reply, 'invalid token: sub must be a user id')
    request.principal = { userId: claims.sub, exp: claims.exp }
  })
}, { name: 'auth', dependencies: ['config'] })
