import fp from 'fastify-plugin'
import { Cluster, type Redis } from 'ioredis'
import { MemoryStore } from '../src/heart/memory-store.js'
import { RedisStore } from '../src/heart/redis-store.js'
import type { HeartStore } from '../src/heart/store.js'

declare module 'fastify' {
  interface FastifyInstance {
    heartStore: HeartStore
  }
}

/** A connection of its own for pub/sub (standalone and Sentinel), ready before the store is used. */
async function feedConnection (redis: Redis, log: (err: Error) => void): Promise<Redis> {
  // autoResubscribe off: the feed resubscribes what is watched now, not what was watched before the drop.
  const subscriber = redis.duplicate({ connectionName: 'heart-gateway-feed', commandTimeout: undefined, autoResubscribe: false })
  subscriber.on('error', log)
  if (subscriber.status !== 'ready') await new Promise((resolve) => subscriber.once('ready', resolve))
  return subscriber
}

/** The heart store: Redis when one is configured (plugins/redis.ts), the embedded in-process store otherwise. */
export default fp(async function store (fastify) {
  const { HEART_KEY_PREFIX, HISTORY_MAX, LEGACY_KEYSPACE_EVENTS } = fastify.config
  let store: HeartStore
  if (fastify.hasDecorator('redis')) {
    const client = fastify.redis as Redis | Cluster
    const cluster = client instanceof Cluster
    const subscriber = cluster ? client : await feedConnection(client, (err) => fastify.log.debug({ err }, 'redis feed connection error'))
    const legacyKeyspaceEvents = LEGACY_KEYSPACE_EVENTS && !cluster
    if (LEGACY_KEYSPACE_EVENTS && cluster) fastify.log.warn('LEGACY_KEYSPACE_EVENTS is not supported on Redis Cluster (keyspace events are per node)')
    const redisStore = new RedisStore({
      redis: client,
      subscriber,
      cluster,
      prefix: HEART_KEY_PREFIX,
      historyMax: HISTORY_MAX,
      legacyKeyspaceEvents,
      onError: () => fastify.metrics.storeErrors.inc()
    })
    if (legacyKeyspaceEvents) {
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
    fastify.log.warn('no Redis configured (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES): using the embedded store (one instance only; nothing survives a restart)')
  }
  fastify.decorate('heartStore', store)
  fastify.addHook('onClose', async () => { await store.close() })
}, { name: 'store', dependencies: ['config', 'redis', 'metrics'] })
