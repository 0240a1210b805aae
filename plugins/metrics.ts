import fp from 'fastify-plugin'
import { Metrics } from '../src/metrics.js'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
}

/**
 * Prometheus metrics of this instance (served by routes/metrics.ts). Gauges read the state of the
 * hub, the sockets and Redis when scraped, so they cost nothing between scrapes.
 */
export default fp(async function metrics (fastify) {
  const metrics = new Metrics()
  fastify.decorate('metrics', metrics)
  fastify.addHook('onReady', async () => {
    metrics.gauge('heart_connections_open', 'Open WebSocket connections', () => fastify.websocketServer.clients.size)
    metrics.gauge('heart_subscriptions', 'Live subscriptions (socket × watched user)', () => fastify.hub.subscriptionCount)
    metrics.gauge('heart_watched_users', 'Users this instance holds a Redis subscription for', () => fastify.hub.topicCount)
    if (fastify.hasDecorator('redis')) {
      metrics.gauge('heart_redis_up', '1 while the Redis command connection is ready', () => fastify.redis.status === 'ready' ? 1 : 0)
    }
  })
}, { name: 'metrics' })
