import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ALLOWANCE_MAX } from '../src/notify/alert-notifier.js'
import { errorResponses, sendError } from '../src/http-errors.js'

const Allowance = Type.Object({
  templateId: Type.String(),
  /** Messages that may still be sent to the caller: one per acceptance, spent one per alert. */
  remaining: Type.Integer({ minimum: 0 })
})

/**
 * The caller's consent to alert messages. WeChat's one-time subscription allows one message per
 * acceptance of wx.requestSubscribeMessage: the mini program reports each `accept` here.
 */
const me: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.addHook('preValidation', fastify.authenticate)
  const notifier = fastify.alertNotifier

  fastify.post('/me/alert-subscriptions', {
    schema: {
      summary: 'Report that I accepted the alert template in wx.requestSubscribeMessage: one more alert message may reach me',
      body: Type.Object({ templateId: Type.String({ minLength: 1, maxLength: 128 }) }),
      response: { 200: Allowance, ...errorResponses(400, 401, 501, 503) }
    }
  }, async (request, reply) => {
    if (notifier === null) return sendError(reply, 501, 'alert messages are not configured on this service')
    if (request.body.templateId !== notifier.templateId) {
      return sendError(reply, 400, `body/templateId is not the alert template this service sends (${notifier.templateId})`)
    }
    const remaining = await notifier.addAllowance(request.principal!.userId, ALLOWANCE_MAX)
    return { templateId: notifier.templateId, remaining }
  })

  fastify.get('/me/alert-subscriptions', {
    schema: {
      summary: 'How many alert messages may still reach me',
      response: { 200: Allowance, ...errorResponses(401, 501, 503) }
    }
  }, async (request, reply) => {
    if (notifier === null) return sendError(reply, 501, 'alert messages are not configured on this service')
    return { templateId: notifier.templateId, remaining: await notifier.allowance(request.principal!.userId) }
  })
}

export default me
