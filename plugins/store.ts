import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { MemoryStore } from '../src/heart/memory-store.js'
import { RedisStore } from '../src/heart/redis-store.js'
import type { HeartStore } from '../src/heart/store.js'

declare module 'fastify' {
  interface FastifyInstance {
    heartStore: HeartStore
  }
}

/** The heart store: Redis when REDIS_URL is set, the embedded in-process store otherwise. */
export default fp(async function store (fastify) {
  const { HEART_KEY_PREFIX, HISTORY_MAX, LEGACY_KEYSPACE_EVENTS } = fastify.config
  let store: HeartStore
  if (fastify.hasDecorator('redis')) {
    const subscriber: Redis = fastify.redis.duplicate({ connectionName: 'heart-gateway-feed', commandTimeout: undefined, autoResubscribe: false })
    subscriber.on('error', (err: Error) => fastify.log.debug({ err }, 'redis feed connection error'))
    if (subscriber.status !== 'ready') await new Promise((resolve) => subscriber.once('ready', resolve))
    const redisStore = new RedisStore({ redis: fastify.redis, subscriber, prefix: HEART_KEY_PREFIX, historyMax: HISTORY_MAX, legacyKeyspaceEvents: LEGACY_KEYSPACE_EVENTS, onError: () => fastify.metrics.storeErrors.inc() })
    if (LEGACY_KEYSPACE_EVENTS) {
      try {
        await redisStore.enableKeyspaceEvents()
        fastify.log.info('LEGACY_KEYSPACE_EVENTS: values SET directly on the legacy keys are pushed to subscribers')
      } catch (err) {
        fastify.log.error({ err }, 'LEGACY_KEYSPACE_EVENTS: could not enable keyspace events; set notify-keyspace-events to include K$ on the Redis server')
      }
    }
    store = redisStore
  } else {
    if (LEGACY_KEYSPACE_EVENTS) fastify.log.warn('LEGACY_KEYSPACE_EVENTS has no effect on the embedded store')
    store = new MemoryStore(HISTORY_MAX)
    fastify.log.warn('REDIS_URL is not set: using the embedded store (one instance only; nothing survives a restart)')
  }
  fastify.decorate('heartStore', store)
  fastify.addHook('onClose', async () => { await store.close() })
}, { name: 'store', dependencies: ['config', 'redis', 'metrics'] })
