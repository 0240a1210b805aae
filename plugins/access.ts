import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyInstance {
    /** Whether `viewerId` may read `ownerId`'s heart rate: every read path (socket, history) asks this. */
    canRead (viewerId: string, ownerId: string): Promise<boolean>
  }
}

/** Authorization of reads: a user reads their own heart rate. */
export default fp(async function access (fastify) {
  fastify.decorate('canRead', async (viewerId: string, ownerId: string) => viewerId === ownerId)
}, { name: 'access' })
