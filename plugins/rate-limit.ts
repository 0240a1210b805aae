import fp from 'fastify-plugin'
import fastifyRateLimit, { normalizeIP } from '@fastify/rate-limit'
import type { FastifyRequest, onRequestHookHandler, onSendHookHandler } from 'fastify'
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
  onRequest: onRequestHookHandler
  onSend: onSendHookHandler
}

/**
 * Refusals per client address in fixed one-minute windows, in this instance's memory. Checked
 * synchronously on every upgrade: the common case (no refusals this minute) looks up nothing, and
 * an address with none is one Map lookup, not a store round trip. A window's counts are dropped
 * whole when the next one starts, so memory is bounded by the addresses refused within one minute.
 */
export class RefusalCounter {
  #counts = new Map<string, number>()
  #windowEnds = 0

  constructor (readonly max: number, readonly windowMs = MINUTE_MS, private readonly now: () => number = Date.now) {}

  /** True while no address has a refusal in this window: no address needs looking up. */
  get empty (): boolean {
    this.#roll()
    return this.#counts.size === 0
  }

  /** Seconds until the address may try again, or 0 when it may now. */
  retryAfter (key: string): number {
    this.#roll()
    return (this.#counts.get(key) ?? 0) >= this.max ? Math.max(1, Math.ceil((this.#windowEnds - this.now()) / 1000)) : 0
  }

  count (key: string): void {
    this.#roll()
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1)
  }

  #roll (): void {
    const now = this.now()
    if (now < this.#windowEnds) return
    this.#counts.clear()
    this.#windowEnds = now + this.windowMs
  }
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
 * `config.rateLimit` counts every request (logins, through @fastify/rate-limit), `fastify.refusalLimit`
 * only the refused ones (WebSocket upgrades, through a `RefusalCounter`).
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
    const refusals = new RefusalCounter(max)
    // Our own 429 must not count: it would only say again what the count already says.
    const refusedHere = new WeakSet<FastifyRequest>()
    return {
      onRequest (request, reply, done) {
        // The usual case, nobody refused this minute: the client's address is not even read.
        if (refusals.empty) return done()
        const retry = refusals.retryAfter(addressKey(request))
        if (retry === 0) return done()
        refusedHere.add(request)
        sendError(reply.header('retry-after', retry), 429, `rate limit exceeded: at most ${max} refused attempts per minute, retry in ${retry} s`)
      },
      onSend (request, reply, payload, done) {
        // Counted before the answer leaves, so a client retrying at once already sees it.
        if (counts.has(reply.statusCode) && !refusedHere.has(request)) refusals.count(addressKey(request))
        done(null, payload)
      }
    }
  })
}, { name: 'rate-limit' })
