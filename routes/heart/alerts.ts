import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { HISTORY_ID_PATTERN, USER_ID_PATTERN, isHistoryId } from '../../src/heart/reading.js'
import { errorResponses, sendError } from '../../src/http-errors.js'

const AlertsQuery = Type.Object({
  since: Type.Optional(Type.String({ pattern: HISTORY_ID_PATTERN, description: 'exclusive: episodes opened after this alertId' })),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 })
})

const Episode = Type.Object({
  alertId: Type.String(),
  userId: Type.String(),
  kind: Type.Union([Type.Literal('high'), Type.Literal('low'), Type.Literal('offline')]),
  state: Type.Union([Type.Literal('open'), Type.Literal('closed')]),
  bpm: Type.Union([Type.Integer(), Type.Null()]),
  ts: Type.Union([Type.Integer(), Type.Null()]),
  openedAt: Type.Integer(),
  closedAt: Type.Optional(Type.Integer())
})

/** The alert episodes of a user, for the owner and the viewers the owner shared with (the history's rule). */
const alerts: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/heart/:userId/alerts', {
    preValidation: fastify.authenticate,
    schema: {
      summary: 'Alert episodes of a user, oldest first, open and closed',
      params: Type.Object({ userId: Type.String({ pattern: USER_ID_PATTERN }) }),
      querystring: AlertsQuery,
      response: { 200: Type.Object({ userId: Type.String(), alerts: Type.Array(Episode) }), ...errorResponses(400, 401, 403, 503) }
    }
  }, async (request, reply) => {
    const { userId } = request.params
    if (!await fastify.canRead(request.principal!.userId, userId)) {
      return sendError(reply, 403, `not allowed to read ${userId}`)
    }
    const { since, limit } = request.query
    if (since !== undefined && !isHistoryId(since)) {
      return sendError(reply, 400, 'querystring/since must be an alertId: two numbers below 2^64 joined by "-"')
    }
    return { userId, alerts: await fastify.heartStore.alerts(userId, { since, limit }) }
  })
}

export default alerts
