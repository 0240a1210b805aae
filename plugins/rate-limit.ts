import fp from 'fastify-plugin'
import fastifyRateLimit, { normalizeIP } from '@fastify/rate-limit'
import type { FastifyReply, FastifyRequest, onRequestAsyncHookHandler, onSendHookHandler } from 'fastify'
import { errorBody, sendError } from '../src/http-errors.js'

const MINUTE_MS = 60_000

/**
 * The client a limit counts against: its address as Fastify sees it (behind nginx, the real
 * client once TRUST_PROXY names nginx). IPv4 as it is, an IPv4-mapped IPv6 address as its IPv4,
 * other IPv6 addresses by their /64 (one subscriber's network: a phone can pick any address in
 * it). Requests made by `injectWS` have no socket address.
 */
export function addressKey (request: FastifyRequest): string {
  return normalizeIP(request.ip ?? request.raw.socket?.remoteAddress ?? 'unknown', 64)
}

/** Route hooks that count refused requests only; spread them into the route's options. */
export interface RefusalLimit {
  onRequest: onRequestAsyncHookHandler
  onSend: onSendHookHandler
}

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * At most `max` answers with one of `statuses` per client address per minute (per
     * instance); past that, every request from the address gets 429 until the minute is over.
     * Other answers never count: a crowd behind one address that is let in is never refused.
     */
    refusalLimit (max: number, statuses: readonly number[]): RefusalLimit
  }
}

/**
 * Per-client rate limits, counted per instance in memory and keyed by `addressKey`. Routes opt in:
 * `config.rateLimit` counts every request (logins), `fastify.refusalLimit` only the refused ones
 * (WebSocket upgrades).
 */
export default fp(async function rateLimit (fastify) {
  await fastify.register(fastifyRateLimit, {
    global: false,
    keyGenerator: addressKey,
    // Thrown by the plugin: the app's error handler answers with it.
    errorResponseBuilder: (_request, context) => errorBody(429, `rate limit exceeded: at most ${context.max} per window, retry in ${context.after}`)
  })

  fastify.decorate('refusalLimit', function refusalLimit (max: number, statuses: readonly number[]): RefusalLimit {
    const counts = new Set(statuses)
    // Its own counter (a child store of the plugin's), read before the request and raised after a refusal.
    const limiter = fastify.createRateLimit({ max, timeWindow: MINUTE_MS })
    // Our own 429 must not count: it would only say again what the count already says.
    const refusedHere = new WeakSet<FastifyRequest>()
    return {
      async onRequest (request: FastifyRequest, reply: FastifyReply) {
        const state = await limiter(request, { increment: false })
        if (state.isAllowed || state.remaining > 0) return
        refusedHere.add(request)
        const retry = Math.max(1, state.ttlInSeconds)
        return sendError(reply.header('retry-after', retry), 429, `rate limit exceeded: at most ${max} refused attempts per minute, retry in ${retry} s`)
      },
      onSend (request, reply, payload, done) {
        if (!counts.has(reply.statusCode) || refusedHere.has(request)) return done(null, payload)
        // Counted before the answer leaves, so a client retrying at once already sees it.
        limiter(request).then(() => done(null, payload), done)
      }
    }
  })
}, { name: 'rate-limit' })
