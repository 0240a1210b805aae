import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { RULE_BPM_MAX, RULE_BPM_MIN, SUSTAIN_S_DEFAULT, SUSTAIN_S_MAX, type AlertRules } from '../../src/heart/alert-rules.js'
import { USER_ID_PATTERN } from '../../src/heart/reading.js'
import { errorResponses, sendError } from '../../src/http-errors.js'
import { formatSchemaErrors, strictAjv } from '../../src/validation.js'

const UserParams = Type.Object({ userId: Type.String({ pattern: USER_ID_PATTERN }) })

const fields = {
  high: Type.Optional(Type.Integer({ minimum: RULE_BPM_MIN, maximum: RULE_BPM_MAX, description: 'alert when readings stay above this bpm' })),
  low: Type.Optional(Type.Integer({ minimum: RULE_BPM_MIN, maximum: RULE_BPM_MAX, description: 'alert when readings stay below this bpm; below high' }))
}

/** All optional: an absent limit is no alert of that kind. Replaces the rules as a whole. */
const RulesBody = Type.Object({
  ...fields,
  sustainS: Type.Optional(Type.Integer({ minimum: 0, maximum: SUSTAIN_S_MAX, default: SUSTAIN_S_DEFAULT, description: 'seconds a limit must stay crossed before the alert opens' })),
  offline: Type.Optional(Type.Boolean({ default: false, description: 'alert when the user goes offline' }))
}, { additionalProperties: false })

const Rules = Type.Object({
  userId: Type.String(),
  ...fields,
  sustainS: Type.Integer(),
  offline: Type.Boolean()
})

/**
 * An owner's alert rules: the owner sets and removes them (Bearer; the token's user must be
 * `:userId`), the owner and their viewers read them. Episodes are decided from them at ingest.
 */
const alertRules: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.setValidatorCompiler(({ schema }) => strictAjv.compile(schema))
  fastify.setSchemaErrorFormatter(formatSchemaErrors)
  const store = fastify.heartStore

  /** Before the body is validated: someone else's rules are 403 whatever the body says. */
  const ownerOnly = async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> => {
    const { userId } = request.params as { userId: string }
    if (!fastify.access.canManage(request.principal!.userId, userId)) {
      return sendError(reply, 403, 'only the user themselves may change their alert rules')
    }
  }

  fastify.put('/heart/:userId/alert-rules', {
    preValidation: [fastify.authenticate, ownerOnly],
    schema: {
      summary: 'Set my alert rules (replaces them)',
      params: UserParams,
      body: RulesBody,
      response: { 200: Rules, ...errorResponses(400, 401, 403, 503) }
    }
  }, async (request, reply) => {
    const { userId } = request.params
    const { high, low, sustainS = SUSTAIN_S_DEFAULT, offline = false } = request.body
    if (high !== undefined && low !== undefined && low >= high) {
      return sendError(reply, 400, 'body/low must be below body/high')
    }
    const rules: AlertRules = { sustainS, offline }
    if (high !== undefined) rules.high = high
    if (low !== undefined) rules.low = low
    return { userId, ...await store.setAlertRules(userId, rules) }
  })

  fastify.get('/heart/:userId/alert-rules', {
    preValidation: fastify.authenticate,
    schema: {
      summary: 'Alert rules of a user (the user and their viewers)',
      params: UserParams,
      response: { 200: Rules, ...errorResponses(400, 401, 403, 404, 503) }
    }
  }, async (request, reply) => {
    const { userId } = request.params
    if (!await fastify.canRead(request.principal!.userId, userId)) {
      return sendError(reply, 403, `not allowed to read ${userId}`)
    }
    const rules = await store.alertRules(userId)
    if (rules === null) return sendError(reply, 404, `${userId} has no alert rules`)
    return { userId, ...rules }
  })

  fastify.delete('/heart/:userId/alert-rules', {
    preValidation: [fastify.authenticate, ownerOnly],
    schema: {
      summary: 'Remove my alert rules (204 also when there were none)',
      params: UserParams,
      response: { 204: Type.Null(), ...errorResponses(400, 401, 403, 503) }
    }
  }, async (request, reply) => {
    await store.deleteAlertRules(request.params.userId)
    return reply.code(204).send(null)
  })
}

export default alertRules
