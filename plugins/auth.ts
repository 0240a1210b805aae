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
  /** When the token stops being accepted here, in ms since the epoch: `exp` plus JWT_CLOCK_TOLERANCE_S. */
  validUntilMs: number
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
    /** preValidation hook for HTTP routes: 401 unless `Authorization: Bearer` carries a valid token. */
    authenticate (request: FastifyRequest, reply: FastifyReply): Promise<unknown>
    /** preValidation hook for the WebSocket route: the token from the header or `?access_token=`. */
    authenticateSocket (request: FastifyRequest, reply: FastifyReply): Promise<unknown>
  }
  interface FastifyRequest {
    principal: Principal | null
  }
}

const BEARER = /^Bearer +([^ ]+)$/i

/** The token of `Authorization: Bearer <jwt>`: null without the header, '' when it is not Bearer. */
function headerToken (request: FastifyRequest): string | null {
  const header = request.headers.authorization
  return header === undefined ? null : BEARER.exec(header)?.[1] ?? ''
}

/**
 * On the WebSocket, the token comes from the header (mini programs set it through
 * wx.connectSocket's header) or, for browsers, which cannot set headers on a WebSocket, from
 * `?access_token=<jwt>` (redacted from logs, see src/logger.ts). HTTP clients can always send the
 * header, so HTTP routes take nothing else: a token in a URL ends up in histories and proxies' logs.
 */
function socketToken (request: FastifyRequest): string | null {
  const token = headerToken(request)
  if (token !== null) return token
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
  // The schema holds a JWT_SECRET that is set to JWT_SECRET_MIN characters, in every NODE_ENV.
  if (JWT_SECRET !== undefined) return JWT_SECRET
  if (NODE_ENV === 'production') {
    throw new Error(`env/JWT_SECRET must be set to at least ${JWT_SECRET_MIN} characters when NODE_ENV=production`)
  }
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

/** Why fast-jwt refused a token, in words safe to show the client. */
function refusal (err: unknown): string {
  const { code, message } = err as { code?: string, message?: string }
  if (code === 'FAST_JWT_EXPIRED') return 'token expired'
  if (code === 'FAST_JWT_INACTIVE') return 'token not valid yet (nbf)'
  const claim = /\b(iss|aud)\b/.exec(message ?? '')?.[1]
  if (claim !== undefined) return `invalid token: ${claim === 'iss' ? 'issuer' : 'audience'} missing or not accepted`
  return 'invalid token'
}

/**
 * JWT authentication. Either HS256 with JWT_SECRET (this service mints tokens at login), or, with
 * JWT_PUBLIC_KEY, RS256/ES256 tokens minted by another service. Each mode accepts its own
 * algorithm only, so `alg: none` and algorithm confusion (an HS256 token "signed" with the public
 * key) fail. `sub` is the user id and must follow the user id rule; `exp` is required. With
 * JWT_ISSUER / JWT_AUDIENCE, `iss` / `aud` are required too and must match (in both modes), so a
 * token another service minted for the same key is not accepted by accident; tokens minted here
 * carry them. `exp` and `nbf` allow JWT_CLOCK_TOLERANCE_S of clock difference between machines.
 * Registered early: a JWT setting production refuses stops start-up before Redis is dialled.
 */
export default fp(async function auth (fastify, opts: AuthOptions) {
  const { JWT_PUBLIC_KEY, TOKEN_TTL_S, JWT_ISSUER, JWT_AUDIENCE, JWT_CLOCK_TOLERANCE_S } = fastify.config
  const toleranceMs = JWT_CLOCK_TOLERANCE_S * 1000
  const required = ['sub', 'exp']
  const claimChecks: { allowedIss?: string, allowedAud?: string } = {}
  const minted: { iss?: string, aud?: string } = {}
  if (JWT_ISSUER !== undefined) {
    required.push('iss')
    claimChecks.allowedIss = minted.iss = JWT_ISSUER
  }
  if (JWT_AUDIENCE !== undefined) {
    required.push('aud')
    claimChecks.allowedAud = minted.aud = JWT_AUDIENCE
  }
  const verify = { requiredClaims: required, clockTolerance: toleranceMs, ...claimChecks }
  if (JWT_PUBLIC_KEY !== undefined) {
    // JWT_SECRET plays no part: tokens come from another service and are only verified here.
    const pem = JWT_PUBLIC_KEY.replace(/\\n/g, '\n')
    const algorithm = publicKeyAlgorithm(pem)
    await fastify.register(fastifyJwt, { secret: { public: pem }, verify: { algorithms: [algorithm], ...verify } })
    fastify.log.info({ algorithm }, 'JWT_PUBLIC_KEY: verifying tokens minted by another service; login endpoints are off')
  } else {
    await fastify.register(fastifyJwt, {
      secret: await signingSecret(fastify, opts.devSecretFile ?? DEV_SECRET_FILE),
      sign: { algorithm: 'HS256', ...minted },
      verify: { algorithms: ['HS256'], ...verify }
    })
  }

  const tokens: Tokens = {
    verify (token) {
      if (!canonicalSignature(token)) throw new AuthError('invalid token')
      let claims: { sub?: unknown, exp?: unknown }
      try {
        claims = fastify.jwt.verify(token)
      } catch (err) {
        throw new AuthError(refusal(err))
      }
      if (!isUserId(claims.sub) || typeof claims.exp !== 'number') throw new AuthError('invalid token: sub must be a user id')
      return { userId: claims.sub, exp: claims.exp, validUntilMs: claims.exp * 1000 + toleranceMs }
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

  /** A preValidation hook taking the token where `tokenOf` finds it; `missing` says where to put it. */
  function authenticateWith (tokenOf: (request: FastifyRequest) => string | null, missing: string) {
    return async function (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> {
      const token = tokenOf(request)
      if (token === null) return sendUnauthorized(reply, missing)
      if (token === '') return sendUnauthorized(reply, 'malformed Authorization header: expected Bearer <jwt>')
      try {
        request.principal = tokens.verify(token)
      } catch (err) {
        if (!(err instanceof AuthError)) throw err
        return sendUnauthorized(reply, err.message)
      }
    }
  }
  fastify.decorate('authenticate', authenticateWith(headerToken, 'missing token: send Authorization: Bearer <jwt> (?access_token= is for the WebSocket only)'))
  fastify.decorate('authenticateSocket', authenticateWith(socketToken, 'missing token: send Authorization: Bearer <jwt> or ?access_token=<jwt>'))
}, { name: 'auth', dependencies: ['config'] })
