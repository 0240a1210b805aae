import fp from 'fastify-plugin'
import { Hub } from '../src/heart/hub.js'

declare module 'fastify' {
  interface FastifyInstance {
    hub: Hub
  }
}

/** The subscription hub of this instance: fan-out of live readings and presence to local sockets. */
export default fp(async function hub (fastify) {
  const hub = new Hub(fastify.heartStore, fastify.access, fastify.log, { offlineAfterMs: fastify.config.OFFLINE_AFTER_MS, observer: fastify.metrics })
  fastify.decorate('hub', hub)
  fastify.metrics.gauge('heart_subscriptions', 'Live subscriptions (socket × watched user)', () => hub.subscriptionCount)
  fastify.metrics.gauge('heart_watched_users', 'Users this instance holds a Redis subscription for', () => hub.topicCount)
  // Every subscription to another user's readings is asked about again this often, in one batched
  // question: a withdrawal whose announcement on the feed was lost still ends it.
  const recheck = setInterval(() => { void hub.recheckGrants() }, fastify.config.GRANT_RECHECK_MS)
  recheck.unref()
  // Offline episodes of users nobody watches here: watched ones open from the hub's own timers.
  const { OFFLINE_AFTER_MS } = fastify.config
  const sweep = setInterval(() => {
    fastify.heartStore.sweepOffline(OFFLINE_AFTER_MS).catch((err) => fastify.log.warn({ err }, 'offline sweep failed; trying again'))
  }, Math.min(1000, OFFLINE_AFTER_MS / 2))
  sweep.unref()
  fastify.addHook('onClose', async () => {
    clearInterval(sweep)
    clearInterval(recheck)
    hub.close()
  })
}, { name: 'hub', dependencies: ['config', 'store', 'access', 'metrics'] })
