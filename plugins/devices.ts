import fp from 'fastify-plugin'
import { Devices } from '../src/heart/devices.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Device keys bound to one owner (src/heart/devices.ts): the devices routes and ingest use it. */
    devices: Devices
  }
}

/** Device keys, kept in the heart store: the rules live in src/heart/devices.ts, this plugin only decorates them. */
export default fp(async function devices (fastify) {
  fastify.decorate('devices', new Devices(fastify.heartStore))
}, { name: 'devices', dependencies: ['store'] })
