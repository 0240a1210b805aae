import fp from 'fastify-plugin'
import type { Cluster, Redis } from 'ioredis'
import { MemoryStore } from '../src/heart/memory-store.js'
import { RedisStore } from '../src/heart/redis-store.js'
import type { HeartStore } from '../src/heart/store.js'

declare module 'fastify' {
  interface FastifyInstance {
    heartStore: HeartStore
  }
}

/** The heart store: Redis when one is configured (plugins/redis.ts), the embedded in-process store otherwise. */
export default fp(async function store (fastify) {
  const { HEART_KEY_PREFIX, HISTORY_MAX, LEGACY_KEYSPACE_EVENTS, REDIS_WAIT_REPLICAS } = fastify.config
  let store: HeartStore
  if (fastify.hasDecorator('redis')) {
    store = await RedisStore.open({
      redis: fastify.redis as Redis | Cluster,
      prefix: HEART_KEY_PREFIX,
      historyMax: HISTORY_MAX,
      legacyKeyspaceEvents: LEGACY_KEYSPACE_EVENTS,
      waitReplicas: REDIS_WAIT_REPLICAS,
      onError: () => fastify.metrics.storeErrors.inc(),
      log: fastify.log
    })
  } else {
    if (LEGACY_KEYSPACE_EVENTS) fastify.log.warn('LEGACY_KEYSPACE_EVENTS has no effect on the embedded store')
    store = new MemoryStore(HISTORY_MAX)
    fastify.log.warn('no Redis configured (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES): using the embedded store (one instance only; nothing survives a restart)')
  }
  fastify.decorate('heartStore', store)
  fastify.addHook('onClose', async () => { await store.close() })
}, { name: 'store', dependencies: ['config', 'redis', 'metrics'] })
