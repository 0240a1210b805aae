import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyInstance {
    lifecycle: {
      /** Set on SIGTERM/SIGINT: /health answers 503 and new sockets are refused while existing ones drain. */
      draining: boolean
    }
  }
}

export default fp(async function lifecycle (fastify) {
  fastify.decorate('lifecycle', { draining: false })
}, { name: 'lifecycle' })
