import type { FastifyPluginAsync } from 'fastify'
import { apiKeyChecker } from '../src/api-keys.js'
import { sendUnauthorized } from '../src/http-errors.js'

/**
 * GET /metrics in Prometheus text format. Scrape it on the instance's own port from the internal
 * network; nginx.conf does not expose it. With METRICS_TOKEN set, scrapers send it as a Bearer token.
 */
const metricsRoute: FastifyPluginAsync = async (fastify) => {
  const token = fastify.config.METRICS_TOKEN
  const validToken = apiKeyChecker(token === undefined ? [] : [token])
  const { registry } = fastify.metrics

  fastify.get('/metrics', { logLevel: 'warn' }, async (request, reply) => {
    if (token !== undefined) {
      const header = request.headers.authorization
      const given = header?.startsWith('Bearer ') === true ? header.slice(7) : undefined
      if (!validToken(given)) return sendUnauthorized(reply, 'metrics need Authorization: Bearer <METRICS_TOKEN>')
    }
    return reply.type(registry.contentType).send(await registry.metrics())
  })
}

export default metricsRoute
