import fp from 'fastify-plugin'
import fastifyRedis from '@fastify/redis'
import { Cluster, Redis, type RedisOptions } from 'ioredis'
import type { Config } from './config.js'

/** How long a command may take before the caller gets `unavailable` instead of waiting on a stuck Redis. */
const COMMAND_TIMEOUT_MS = 2000

/*
 * Commands fail fast while Redis is unreachable (no offline queue): a socket gets `unavailable`
 * and ingest 503 at once, instead of piling up work that would run minutes later.
 */
const COMMAND_OPTIONS: RedisOptions = {
  enableOfflineQueue: false,
  commandTimeout: COMMAND_TIMEOUT_MS,
  maxRetriesPerRequest: 1,
  connectionName: 'heart-gateway',
  enableAutoPipelining: true
}

function hostPorts (list: string): Array<{ host: string, port: number }> {
  return list.split(',').map((item) => {
    const sep = item.lastIndexOf(':')
    return { host: item.slice(0, sep), port: Number(item.slice(sep + 1)) }
  })
}

/** The client for whichever way to reach Redis is configured, or null for the embedded store. */
function createClient (cfg: Config): Redis | Cluster | null {
  const password = cfg.REDIS_PASSWORD
  if (cfg.REDIS_URL !== undefined) return new Redis(cfg.REDIS_URL, COMMAND_OPTIONS)
  if (cfg.REDIS_SENTINELS !== undefined) {
    return new Redis({ ...COMMAND_OPTIONS, sentinels: hostPorts(cfg.REDIS_SENTINELS), name: cfg.REDIS_SENTINEL_NAME, password, sentinelPassword: password })
  }
  if (cfg.REDIS_CLUSTER_NODES !== undefined) {
    return new Cluster(hostPorts(cfg.REDIS_CLUSTER_NODES), {
      enableOfflineQueue: false,
      // Sharded pub/sub: each instance subscribes on the shard that owns a user's slot only.
      shardedSubscribers: true,
      redisOptions: { ...COMMAND_OPTIONS, password }
    })
  }
  return null
}

/**
 * The Redis connection: REDIS_URL (one server), REDIS_SENTINELS (+ REDIS_SENTINEL_NAME), or
 * REDIS_CLUSTER_NODES; with none of them the embedded store is used. Start-up waits for Redis to
 * answer (up to Fastify's plugin timeout) and fails otherwise, so a process manager restarts the
 * instance rather than serving from nothing.
 */
export default fp(async function redis (fastify) {
  const client = createClient(fastify.config)
  if (client === null) return
  let up = true
  client.on('error', (err: Error) => fastify.log.debug({ err }, 'redis connection error'))
  client.on('close', () => {
    if (up) fastify.log.warn('redis connection lost; reconnecting')
    up = false
  })
  client.on('ready', () => {
    if (!up) fastify.log.info('redis connection re-established')
    up = true
  })
  fastify.metrics.gauge('heart_redis_up', '1 while the Redis command connection is ready', () => client.status === 'ready' ? 1 : 0)
  // The client is ours to close: QUIT needs a live connection, and shutting down while Redis is away must not fail.
  fastify.addHook('onClose', async () => {
    if (client.status === 'ready') await client.quit().catch(() => client.disconnect())
    else client.disconnect()
  })
  // @fastify/redis types its client as Redis; a Cluster answers the same commands the store uses.
  await fastify.register(fastifyRedis, { client: client as Redis })
}, { name: 'redis', dependencies: ['config', 'metrics'] })
