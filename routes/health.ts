import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'

const Health = Type.Object({
  status: Type.Union([Type.Literal('ok'), Type.Literal('unavailable')]),
  store: Type.Union([Type.Literal('redis'), Type.Literal('memory')]),
  uptime: Type.Number({ description: 'seconds since the process started' }),
  reason: Type.Optional(Type.String())
})

/**
 * For nginx and load balancers: 200 while this instance can serve, 503 while its store does not
 * answer or while it is shutting down, so traffic moves to other instances. No authentication.
 */
const health: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/health', {
    logLevel: 'warn',
    schema: { response: { 200: Health, 503: Health } }
  }, async (_request, reply) => {
    const store = fastify.heartStore
    const uptime = Math.round(process.uptime())
    if (fastify.lifecycle.draining) {
      return reply.code(503).send({ status: 'unavailable', store: store.kind, uptime, reason: 'shutting down' })
    }
    try {
      // The store bounds the wait itself (about a second): a stuck Redis is reported, not waited for.
      await store.ping()
    } catch {
      return reply.code(503).send({ status: 'unavailable', store: store.kind, uptime, reason: 'store not answering' })
    }
    return { status: 'ok' as const, store: store.kind, uptime }
  })
}

export default health
