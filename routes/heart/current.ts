import type { FastifyPluginAsync } from 'fastify'
import { HeartSession, type SessionDeps } from '../../src/heart/session.js'

/** Conflation starts when this much is waiting to be sent (or a quarter of the hard limit, if smaller). */
const SOFT_BUFFERED_BYTES = 64 * 1024

/**
 * /heart/current: the WebSocket mini programs open. Authentication runs in preValidation, in this
 * plugin's scope only, so a rejected client gets an HTTP 401 and never an upgrade; frames are
 * handled by one HeartSession per socket (src/heart/session.ts, protocol in docs/protocol.md).
 */
const heartCurrent: FastifyPluginAsync = async (fastify) => {
  const { MAX_SUBSCRIPTIONS_PER_CONNECTION, MAX_BUFFERED_BYTES } = fastify.config
  const deps: SessionDeps = {
    store: fastify.heartStore,
    hub: fastify.hub,
    limits: {
      maxSubscriptions: MAX_SUBSCRIPTIONS_PER_CONNECTION,
      softBufferedBytes: Math.min(SOFT_BUFFERED_BYTES, MAX_BUFFERED_BYTES / 4),
      maxBufferedBytes: MAX_BUFFERED_BYTES
    },
    canRead: fastify.canRead
  }

  fastify.addHook('preValidation', async (_request, reply) => {
    if (fastify.lifecycle.draining) {
      return reply.code(503).send({ statusCode: 503, error: 'Service Unavailable', message: 'server is shutting down: reconnect' })
    }
  })
  fastify.addHook('preValidation', fastify.authenticate)

  fastify.get('/heart/current', { websocket: true }, (socket, request) => {
    const { userId } = request.principal!
    const log = request.log
    const session = new HeartSession(socket, userId, deps, log)
    socket.on('message', (data, isBinary) => session.onMessage(data as Buffer, isBinary))
    socket.on('close', (code) => {
      session.onClose()
      log.info({ userId, code }, 'socket closed')
    })
    log.info({ userId }, 'socket open')
  })
}

export default heartCurrent
