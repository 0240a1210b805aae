import fp from 'fastify-plugin'
import { Metrics } from '../src/metrics.js'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
}

/**
 * Prometheus metrics of this instance (served by routes/metrics.ts). The plugin owning a resource
 * registers its gauges (hub, websocket, redis); they are read when scraped, so they cost nothing between scrapes.
 */
export default fp(async function metrics (fastify) {
  fastify.decorate('metrics', new Metrics())
}, { name: 'metrics' })
