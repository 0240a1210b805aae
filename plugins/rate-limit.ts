import fp from 'fastify-plugin'
import fastifyRateLimit from '@fastify/rate-limit'
import type { FastifyRequest } from 'fastify'
import { errorBody } from '../src/http-errors.js'

/**
 * The client a limit counts against: its address as Fastify sees it (behind nginx, the real
 * client once TRUST_PROXY names nginx). Requests made by `injectWS` have no socket address.
 */
export function clientKey (request: FastifyRequest): string {
  return request.ip ?? request.raw.socket?.remoteAddress ?? 'unknown'
}

/**
 * Per-client rate limits, opted into route by route (`config.rateLimit`): login attempts and
 * WebSocket upgrades. Counted per instance, in memory.
 */
export default fp(async function rateLimit (fastify) {
  await fastify.register(fastifyRateLimit, {
    global: false,
    keyGenerator: clientKey,
    // Thrown by the plugin: the app's error handler answers with it.
    errorResponseBuilder: (_request, context) => errorBody(429, `rate limit exceeded: at most ${context.max} per window, retry in ${context.after}`)
  })
}, { name: 'rate-limit' })
