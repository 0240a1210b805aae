import fp from 'fastify-plugin'
import fastifyJwt from '@fastify/jwt'
import { createPublicKey } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { DEV_SECRET_FILE, JWT_SECRET_MIN, loadDevSecret } from '../src/dev-secret.js'
import { isUserId } from '../src/heart/reading.js'
import { sendUnauthorized } from '../src/http-errors.js'

/** Who a request speaks for, once its token has been accepted. */
export interface Principal {
  userId: string
  /** Token expiry, seconds since the epoch (the JWT's `exp`). */
  exp: number
}

export interface IssuedToken {
  token: string
  /** Seconds the token is valid for. */
  expiresIn: number
  exp: number
}

export class AuthError extends Error {}

export interface Tokens {
  /** Verifies a token and returns who it speaks for; throws AuthError with a message safe to show. */
  verify (token: string): Principal
  /** Mints a token for a user; null in public-key mode, where another service mints them. */
  issue: ((userId: string) => IssuedToken) | null
}

declare module 'fastify' {
  interface FastifyInstance {
    tokens: Tokens
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

export interface AuthOptions {
  /** Where a development JWT secret is kept when JWT_SECRET is not set (never in production). */
  devSecretFile?: string
}

/**
 * The HS256 secret. Production needs a JWT_SECRET strong enough; elsewhere an unset one is
 * replaced by a generated secret kept in a file, so tokens survive restarts and the CLI can sign.
 */
async function signingSecret (fastify: FastifyInstance, file: string): Promise<string> {
  const { JWT_SECRET, NODE_ENV } = fastify.config
  if (NODE_ENV === 'production') {
    if (JWT_SECRET === undefined || JWT_SECRET.length < JWT_SECRET_MIN) {
      throw new Error(`env/JWT_SECRET must be set to at least ${JWT_SECRET_MIN} characters when NODE_ENV=production`)
    }
    return JWT_SECRET
  }
  if (JWT_SECRET !== undefined) return JWT_SECRET
  const secret = await loadDevSecret(file)
  fastify.log.warn({ file }, 'JWT_SECRET is not set: using a generated development secret (npm run token uses the same file); set JWT_SECRET in production')
  return secret
}

/**
 * Whether the signature is spelt as base64url must spell it (RFC 7515). fast-jwt decodes it
 * leniently, ignoring the unused low bits of the last character, so without this check every
 * valid token would have other spellings that verify too (3 for HS256).
 */
function canonicalSignature (token: string): boolean {
  const signature = token.slice(token.lastIndexOf('.') + 1)
  return Buffer.from(signature, 'base64url').toString('base64url') === signature
}

/** The algorithm a public key verifies: RS256 for RSA keys, ES256 for P-256 keys. */
function publicKeyAlgorithm (pem: string): 'RS256' | 'ES256' {
  let key
  try {
    key = createPublicKey(pem)
  } catch {
    throw new Error('env/JWT_PUBLIC_KEY must be a PEM public key (RSA, or EC on P-256)')
  }
  if (key.asymmetricKeyType === 'rsa') return 'RS256'
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ES256'
  throw new Error('env/JWT_PUBLIC_KEY must be an RSA key or an EC key on P-256 (RS256 or ES256)')
}

/**
 * JWT authentication. Either HS256 with JWT_SECRET (this service mints tokens at login), or, with
 * JWT_PUBLIC_KEY, RS256/ES256 tokens minted by another service. Each mode accepts its own
 * algorithm only, so `alg: none` and algorithm confusion (an HS256 token "signed" with the public
 * key) fail. `sub` is the user id and must follow the user id rule; `exp` is required.
 * Registered early: a JWT setting production refuses stops start-up before Redis is dialled.
 */
export default fp(async function auth (fastify, opts: AuthOptions) {
  const { JWT_PUBLIC_KEY, TOKEN_TTL_S } = fastify.config
  if (JWT_PUBLIC_KEY !== undefined) {
    // JWT_SECRET plays no part: tokens come from another service and are only verified here.
    const pem = JWT_PUBLIC_KEY.replace(/\\n/g, '\n')
    const algorithm = publicKeyAlgorithm(pem)
    await fastify.register(fastifyJwt, { secret: { public: pem }, verify: { algorithms: [algorithm], requiredClaims: ['sub', 'exp'] } })
    fastify.log.info({ algorithm }, 'JWT_PUBLIC_KEY: verifying tokens minted by another service; login endpoints are off')
  } else {
    await fastify.register(fastifyJwt, {
      secret: await signingSecret(fastify, opts.devSecretFile ?? DEV_SECRET_FILE),
      sign: { algorithm: 'HS256' },
      verify: { algorithms: ['HS256'], requiredClaims: ['sub', 'exp'] }
    })
  }

  const tokens: Tokens = {
    verify (token) {
      if (!canonicalSignature(token)) throw new AuthError('invalid token')
      let claims: { sub?: unknown, exp?: unknown }
      try {
        claims = fastify.jwt.verify(token)
      } catch (err) {
        throw new AuthError((err as { code?: string }).code === 'FAST_JWT_EXPIRED' ? 'token expired' : 'invalid token')
      }
      if (!isUserId(claims.sub) || typeof claims.exp !== 'number') throw new AuthError('invalid token: sub must be a user id')
      return { userId: claims.sub, exp: claims.exp }
    },
    issue: JWT_PUBLIC_KEY !== undefined
      ? null
      : (userId) => {
          const exp = Math.floor(Date.now() / 1000) + TOKEN_TTL_S
          return { token: fastify.jwt.sign({ sub: userId, exp }), expiresIn: TOKEN_TTL_S, exp }
        }
  }
  fastify.decorate('tokens', tokens)
  fastify.decorateRequest('principal', null)

  fastify.decorate('authenticate', async function authenticate (request: FastifyRequest, reply: FastifyReply) {
    const token = tokenOf(request)
    if (token === null) return sendUnauthorized(reply, 'missing token: send Authorization: Bearer <jwt> or ?access_token=<jwt>')
    if (token === '') return sendUnauthorized(reply, 'malformed Authorization header: expected Bearer <jwt>')
    try {
      request.principal = tokens.verify(token)
    } catch (err) {
      if (!(err instanceof AuthError)) throw err
      return sendUnauthorized(reply, err.message)
    }
  })
}, { name: 'auth', dependencies: ['config'] })
