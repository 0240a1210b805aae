import type { FastifyInstance, FastifyError } from 'fastify'
import config, { type ConfigOptions } from '../plugins/config.js'
import redis from '../plugins/redis.js'
import store from '../plugins/store.js'
import hub from '../plugins/hub.js'
import auth, { type AuthOptions } from '../plugins/auth.js'
import lifecycle from '../plugins/lifecycle.js'
import metrics from '../plugins/metrics.js'
import access from '../plugins/access.js'
import devicesPlugin from '../plugins/devices.js'
import rateLimit from '../plugins/rate-limit.js'
import forwarded from '../plugins/forwarded.js'
import websocket from '../plugins/websocket.js'
import apiDocs from '../plugins/api-docs.js'
import notify from '../plugins/notify.js'
import health from '../routes/health.js'
import authRoutes from '../routes/auth.js'
import heartCurrent from '../routes/heart/current.js'
import heartReadings from '../routes/heart/readings.js'
import heartAlerts from '../routes/heart/alerts.js'
import alertRules from '../routes/heart/alert-rules.js'
import shares from '../routes/shares.js'
import devices from '../routes/devices.js'
import me from '../routes/me.js'
import metricsRoute from '../routes/metrics.js'
import demo from '../routes/demo.js'
import root from '../routes/root.js'
import { NotConfirmedError, StoreUnavailableError } from './heart/store.js'
import { sendError } from './http-errors.js'
import { redactUrl } from './logger.js'

export type AppOptions = ConfigOptions & AuthOptions

declare module 'fastify' {
  interface FastifyContextConfig {
    /** What the route's 503 says when the heart store does not answer, if a retry needs more than "try again". */
    storeUnavailableMessage?: string
  }
}

/**
 * The whole service as a plugin: tests build it without listening, src/server.ts runs it.
 * Order: config first (everything reads fastify.config while registering), auth next (it refuses
 * a weak production JWT_SECRET before Redis is dialled), then the plugins that own resources, then routes.
 */
export default async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  await fastify.register(config, { config: opts.config, env: opts.env })
  await fastify.register(auth, { devSecretFile: opts.devSecretFile })
  await fastify.register(lifecycle)
  await fastify.register(metrics)
  await fastify.register(redis)
  await fastify.register(store)
  await fastify.register(access)
  await fastify.register(devicesPlugin)
  await fastify.register(hub)
  await fastify.register(notify)
  await fastify.register(forwarded)
  await fastify.register(rateLimit)
  await fastify.register(websocket)
  await fastify.register(apiDocs)

  fastify.setErrorHandler((err: FastifyError, request, reply) => {
    if (err instanceof StoreUnavailableError) {
      request.log.warn({ err: err.cause }, 'heart store unavailable')
      const message = err.cause instanceof NotConfirmedError
        ? `${err.cause.message}; outcome unknown: resend the same readings with their ts`
        : request.routeOptions.config.storeUnavailableMessage ?? 'heart-rate store is unavailable, try again shortly'
      return sendError(reply, 503, message)
    }
    const status = err.statusCode ?? 500
    if (status < 500) return sendError(reply, status, err.message)
    request.log.error({ err }, 'request failed')
    return sendError(reply, 500, 'internal error')
  })

  // Fastify's own 404 logs and echoes the raw URL, which may carry ?access_token=.
  fastify.setNotFoundHandler((request, reply) => {
    return sendError(reply, 404, `Route ${request.method}:${redactUrl(request.url)} not found`)
  })

  await fastify.register(health)
  await fastify.register(metricsRoute)
  await fastify.register(authRoutes)
  await fastify.register(heartCurrent)
  await fastify.register(heartReadings)
  await fastify.register(heartAlerts)
  await fastify.register(alertRules)
  await fastify.register(shares)
  await fastify.register(devices)
  await fastify.register(me)
  await fastify.register(demo)
  // Last: it links to the pages registered before it.
  await fastify.register(root)
}
