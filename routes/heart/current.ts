import type { FastifyPluginAsync } from 'fastify'
import { PublishLimiter } from '../../src/heart/publish-limit.js'
import { HeartSession, type SessionDeps } from '../../src/heart/session.js'
import { sendError } from '../../src/http-errors.js'

/** Conflation starts when this much is waiting to be sent (or a quarter of the hard limit, if smaller). */
const SOFT_BUFFERED_BYTES = 64 * 1024

/** What UPGRADE_RATE_LIMIT counts: upgrades refused for the origin, the token, or the user's socket cap. */
const REFUSALS = [401, 403, 429]
/** Seconds a client (or nginx, which moves the handshake on) waits before asking a full instance again. */
const FULL_RETRY_AFTER_S = 5

/**
 * /heart/current: the WebSocket mini programs open. Every check runs before the upgrade, in this
 * plugin's scope only (so /health stays open): refused upgrades per client address (429),
 * draining (503), Origin (403), the token (401), sockets on this instance (503), sockets per user
 * (429), and a plain GET that is not a handshake (426). Frames are then handled by one
 * HeartSession per socket (src/heart/session.ts; protocol in docs/protocol.md).
 */
const heartCurrent: FastifyPluginAsync = async (fastify) => {
  const config = fastify.config
  const deps: SessionDeps = {
    store: fastify.heartStore,
    hub: fastify.hub,
    limits: {
      maxSubscriptions: config.MAX_SUBSCRIPTIONS_PER_CONNECTION,
      softBufferedBytes: Math.min(SOFT_BUFFERED_BYTES, config.MAX_BUFFERED_BYTES / 4),
      maxBufferedBytes: config.MAX_BUFFERED_BYTES,
      messageRate: config.MESSAGE_RATE_LIMIT
    },
    publishLimit: new PublishLimiter(config.PUBLISH_RATE_LIMIT),
    access: fastify.access,
    verifyToken: fastify.tokens.verify,
    metrics: fastify.metrics
  }
  // The setting is split on commas only: "https://a.example, https://b.example" must work too.
  const allowedOrigins = new Set(config.ALLOWED_ORIGINS.map((o) => o.trim()).filter((o) => o !== ''))
  /** Open sockets per user on this instance (MAX_CONNECTIONS_PER_USER counts per instance). */
  const sockets = new Map<string, number>()
  /** Places taken on this instance, by open sockets and by upgrades under way (MAX_CONNECTIONS). */
  let taken = 0
  const maxConnections = config.MAX_CONNECTIONS ?? Infinity

  fastify.addHook('preValidation', async (request, reply) => {
    if (fastify.lifecycle.draining) {
      return sendError(reply, 503, 'server is shutting down: reconnect')
    }
    const origin = request.headers.origin
    // Mini programs and devices send no Origin; browsers always do.
    if (allowedOrigins.size > 0 && origin !== undefined && !allowedOrigins.has(origin)) {
      return sendError(reply, 403, 'origin not allowed')
    }
  })
  fastify.addHook('preValidation', fastify.authenticateSocket)
  /** Takes one of the user's places; the returned function gives it back, once. */
  function reserve (userId: string): () => void {
    sockets.set(userId, (sockets.get(userId) ?? 0) + 1)
    taken++
    let held = true
    return () => {
      if (!held) return
      held = false
      taken--
      const left = (sockets.get(userId) ?? 1) - 1
      if (left === 0) sockets.delete(userId)
      else sockets.set(userId, left)
    }
  }
  const releases = new WeakMap<object, () => void>()
  // The place is taken before the upgrade, so simultaneous upgrades cannot all pass the check, and
  // given back when the connection closes, whether or not the upgrade went through.
  fastify.addHook('preValidation', async (request, reply) => {
    const { userId } = request.principal!
    if (taken >= maxConnections) {
      // 503, not 429: the instance is full, not the client at fault; nginx hands the handshake to another.
      return sendError(reply.header('retry-after', FULL_RETRY_AFTER_S), 503, `this instance holds its ${maxConnections} sockets: retry on another`)
    }
    if ((sockets.get(userId) ?? 0) >= config.MAX_CONNECTIONS_PER_USER) {
      return sendError(reply, 429, `at most ${config.MAX_CONNECTIONS_PER_USER} open sockets per user`)
    }
    // Last, so a plain GET shows what an upgrade would be refused for; it never holds a place.
    if (!request.ws) {
      return sendError(reply.header('upgrade', 'websocket'), 426, 'not a WebSocket handshake: /heart/current needs Upgrade: websocket')
    }
    const release = reserve(userId)
    releases.set(request.raw, release)
    request.raw.socket?.once('close', release)
  })

  fastify.get('/heart/current', {
    websocket: true,
    ...fastify.refusalLimit(config.UPGRADE_RATE_LIMIT, REFUSALS)
  }, (socket, request) => {
    const { userId, validUntilMs } = request.principal!
    const log = request.log
    const release = releases.get(request.raw)!
    const session = new HeartSession(socket, userId, validUntilMs, deps, log)
    socket.on('message', (data, isBinary) => session.onMessage(data as Buffer, isBinary))
    socket.on('close', (code) => {
      session.onClose()
      release()
      log.info({ userId, code }, 'socket closed')
    })
    log.info({ userId }, 'socket open')
  })
}

export default heartCurrent
