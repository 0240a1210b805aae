import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyInstance {
    /** Whether `viewerId` may read `ownerId`'s heart rate: every read path (socket, history) asks this. */
    canRead (viewerId: string, ownerId: string): Promise<boolean>
  }
}

/**
 * Authorization of reads: a user reads their own heart rate, and another's when that person has
 * shared it with them (PUT /shares/:viewerId). Asked on every read, never cached, so a withdrawn
 * grant takes effect on the next request; live subscriptions end through the hub's `revoked`.
 */
export default fp(async function access (fastify) {
  const store = fastify.heartStore
  fastify.decorate('canRead', async (viewerId: string, ownerId: string) => viewerId === ownerId || await store.isGranted(ownerId, viewerId))
}, { name: 'access', dependencies: ['store'] })
