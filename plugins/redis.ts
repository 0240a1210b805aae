import fp from 'fastify-plugin'
import fastifyRedis from '@fastify/redis'
import { Redis } from 'ioredis'

/** How long a command may take before the caller gets `unavailable` instead of waiting on a stuck Redis. */
const COMMAND_TIMEOUT_MS = 2000

/**
 * The Redis connection, when REDIS_URL is set (otherwise the embedded store is used).
 * Commands fail fast while Redis is unreachable (no offline queue): a socket gets `unavailable`
 * and ingest 503 at once, instead of piling up work that would run minutes later.
 * Start-up waits for Redis to answer (up to Fastify's plugin timeout) and fails otherwise,
 * so a process manager restarts the instance rather than serving from nothing.
 */
export default fp(async function redis (fastify) {
  const url = fastify.config.REDIS_URL
  if (url === undefined) return
  const client = new Redis(url, {
    enableOfflineQueue: false,
    commandTimeout: COMMAND_TIMEOUT_MS,
    maxRetriesPerRequest: 1,
    connectionName: 'heart-gateway'
  })
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
  // The client is ours to close: QUIT needs a live connection, and shutting down while Redis is away must not fail.
  fastify.addHook('onClose', async () => {
    if (client.status === 'ready') await client.quit().catch(() => client.disconnect())
    else client.disconnect()
  })
  await fastify.register(fastifyRedis, { client })
}, { name: 'redis', dependencies: ['config'] })
