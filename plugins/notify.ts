import fp from 'fastify-plugin'
import { Counter } from 'prom-client'
import type { Cluster, Redis } from 'ioredis'
import type { OpenedAlert } from '../src/notify/alert.js'
import { AlertNotifier } from '../src/notify/alert-notifier.js'
import { SharedAccessToken } from '../src/notify/access-token.js'
import { MemoryNotifyState } from '../src/notify/state.js'
import { RedisNotifyState } from '../src/notify/redis-state.js'
import { parseTemplateFields } from '../src/notify/template.js'
import { createWeChatApi } from '../src/notify/wechat-api.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** WeChat alert messages, or null when WECHAT_APPID, WECHAT_SECRET or WECHAT_ALERT_TEMPLATE_ID is not set. */
    alertNotifier: AlertNotifier | null
    /** An alert opened here (the instance whose write opened it): counted, and messaged when configured. */
    alertOpened (alert: OpenedAlert): void
  }
}

/** WeChat retries for this long on network errors, HTTP 5xx and errcode -1 (the alerts issue). */
const RETRY_FOR_MS = 10 * 60 * 1000
const FIRST_RETRY_MS = 1000

export default fp(async function notify (fastify) {
  const cfg = fastify.config
  const registers = [fastify.metrics.registry]
  const opened = new Counter({ name: 'heart_alerts_opened_total', help: 'Alert episodes opened by this instance, by kind', labelNames: ['kind'], registers })
  const messages = new Counter({ name: 'heart_alert_messages_total', help: 'WeChat alert messages, by result: sent or failed', labelNames: ['result'], registers })
  const failures = new Counter({ name: 'heart_alert_message_failures_total', help: 'WeChat alert messages that failed, by errcode (timeout: retried for 10 minutes; network: no answer)', labelNames: ['errcode'], registers })
  const consumed = new Counter({ name: 'heart_alert_allowance_consumed_total', help: 'Sends taken from the allowances of users', registers })

  let notifier: AlertNotifier | null = null
  const { WECHAT_APPID: appId, WECHAT_SECRET: secret, WECHAT_ALERT_TEMPLATE_ID: templateId, WECHAT_ALERT_FIELDS: fields } = cfg
  if (appId !== undefined && secret !== undefined && templateId !== undefined && fields !== undefined) {
    const api = createWeChatApi({ appId, secret, apiBase: cfg.WECHAT_API_BASE, timeoutMs: cfg.WECHAT_TIMEOUT_MS })
    const state = fastify.hasDecorator('redis') ? new RedisNotifyState(fastify.redis as Redis | Cluster, cfg.HEART_KEY_PREFIX) : new MemoryNotifyState()
    const store = fastify.heartStore
    const log = fastify.log.child({ component: 'alert-messages' })
    notifier = new AlertNotifier({
      api,
      state,
      tokens: new SharedAccessToken(api, state, cfg.WECHAT_TIMEOUT_MS * 2),
      viewersOf: async (ownerId) => await store.viewersOf(ownerId),
      templateId,
      fields: parseTemplateFields(fields),
      page: cfg.WECHAT_ALERT_PAGE,
      miniprogramState: cfg.WECHAT_MINIPROGRAM_STATE,
      retryForMs: RETRY_FOR_MS,
      firstRetryMs: FIRST_RETRY_MS,
      log: { info: (o, m) => log.info(o, m), warn: (o, m) => log.warn(o, m), error: (o, m) => log.error(o, m) },
      counted (event) {
        if (event.kind === 'consumed') consumed.inc()
        else if (event.kind === 'sent') messages.labels('sent').inc()
        else {
          messages.labels('failed').inc()
          failures.labels(event.errcode).inc()
        }
      }
    })
    const active = notifier
    fastify.addHook('onClose', async () => { active.close() })
  } else if (templateId !== undefined) {
    fastify.log.warn('WECHAT_ALERT_TEMPLATE_ID is set but WECHAT_APPID or WECHAT_SECRET is not: no alert messages are sent')
  }

  fastify.decorate('alertNotifier', notifier)
  const alertOpened = (alert: OpenedAlert): void => {
    opened.labels(alert.kind).inc()
    notifier?.opened(alert)
  }
  fastify.decorate('alertOpened', alertOpened)
  // The store tells this instance of every episode its own writes open (ingest, publish, offline).
  fastify.heartStore.onAlertOpened(alertOpened)
}, { name: 'notify', dependencies: ['config', 'metrics', 'store'] })
