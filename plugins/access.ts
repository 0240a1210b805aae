import fp from 'fastify-plugin'
import { Access } from '../src/heart/access.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The access rule (src/heart/access.ts): the hub and the socket sessions ask it. */
    access: Access
    /** Whether `viewerId` may read `ownerId`'s heart rate: `access.canRead`, for routes. */
    canRead (viewerId: string, ownerId: string): Promise<boolean>
  }
}

/** Authorization of reads: the rule lives in src/heart/access.ts, this plugin only decorates it. */
export default fp(async function access (fastify) {
  const rule = new Access(fastify.heartStore)
  fastify.decorate('access', rule)
  fastify.decorate('canRead', async (viewerId: string, ownerId: string) => await rule.canRead(viewerId, ownerId))
}, { name: 'access', dependencies: ['store'] })
