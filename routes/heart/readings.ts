import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Ajv } from 'ajv'
import { apiKeyChecker } from '../../src/api-keys.js'
import type { Writer } from '../../src/heart/access.js'
import { IngestBody, IngestError, readingsOf } from '../../src/heart/ingest.js'
import { HISTORY_ID_PATTERN, USER_ID_PATTERN, isHistoryId } from '../../src/heart/reading.js'
import { HISTORY_PAGE_MAX } from '../../src/heart/store.js'
import { errorResponses, sendError } from '../../src/http-errors.js'
import { formatSchemaErrors, strictAjv } from '../../src/validation.js'

const SERVICE: Writer = { kind: 'service' }

const UserParams = Type.Object({ userId: Type.String({ pattern: USER_ID_PATTERN }) })

const Accepted = Type.Object({
  accepted: Type.Integer({ description: 'readings stored by this request' }),
  duplicates: Type.Integer({ description: 'readings already in history with the same ts (resends): not stored again' }),
  ids: Type.Array(Type.String(), { description: 'history ids, one per reading in the order sent; a duplicate\'s is the stored reading\'s' })
})

const HistoryQuery = Type.Object({
  since: Type.Optional(Type.String({ pattern: HISTORY_ID_PATTERN, description: 'exclusive: readings strictly after this history id' })),
  limit: Type.Integer({ minimum: 1, maximum: HISTORY_PAGE_MAX, default: 100 })
})

const History = Type.Object({
  userId: Type.String(),
  readings: Type.Array(Type.Object({ id: Type.String(), bpm: Type.Integer(), ts: Type.Integer() })),
  truncated: Type.Optional(Type.Boolean({ description: 'readings after `since` were already trimmed from history' }))
})

/* Bodies are strict (src/validation.ts); query strings are text by nature, so `limit=5` is coerced as usual. */
const queryAjv = new Ajv({ coerceTypes: true, useDefaults: true, removeAdditional: true, allErrors: false, strict: false })

/**
 * Readings of a user: devices and gateways POST them (API key), viewers GET history (Bearer token,
 * same authorization as the socket). Ingest is atomic per request: all readings stored, current
 * value moved and published, or none of it. A 503 cannot say which: a Redis that stopped answering
 * may still run the write once it answers again (the store gives up waiting after about a second).
 */
const readings: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? strictAjv : queryAjv).compile(schema))
  fastify.setSchemaErrorFormatter(formatSchemaErrors)
  const { INGEST_API_KEYS } = fastify.config
  const serviceKey = apiKeyChecker(INGEST_API_KEYS)
  if (INGEST_API_KEYS.length === 0) fastify.log.warn('INGEST_API_KEYS is not set: only device keys (POST /devices) can write readings')

  /** Who the request writes as: a service key (INGEST_API_KEYS) or a device key; null for neither. */
  async function writerOf (request: FastifyRequest): Promise<Writer | null> {
    const key = request.headers['x-api-key']
    if (typeof key !== 'string') return null
    if (serviceKey(key)) return SERVICE
    const ownerId = await fastify.devices.ownerOf(key)
    return ownerId === null ? null : { kind: 'device', ownerId }
  }

  /**
   * Ingest's authorization, all of it: 401 without a known writer, 403 when the access rule says
   * it may not write this user. Before validation, so a refused writer learns nothing about the
   * body; the path is not validated yet either, but a userId that is no user id is nobody's device.
   */
  async function authorizeIngest (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    let writer: Writer | null
    if (request.headers['x-api-key'] === undefined && request.headers.authorization !== undefined) {
      // The wearer's own app: the token check every HTTP route uses (401 with its reason).
      await fastify.authenticate(request, reply)
      if (reply.sent) return
      writer = { kind: 'user', userId: request.principal!.userId }
    } else {
      writer = await writerOf(request)
      if (writer === null) return sendError(reply, 401, 'missing or unknown x-api-key (or send Authorization: Bearer <jwt> for your own readings)')
    }
    const { userId } = request.params as { userId: string }
    if (!fastify.access.canWrite(writer, userId)) {
      return sendError(reply, 403, 'not allowed to write this user\'s readings: a device key writes only its owner\'s, a token only its own user\'s')
    }
  }

  fastify.post('/heart/:userId/readings', {
    bodyLimit: 64 * 1024,
    config: { storeUnavailableMessage: 'heart-rate store did not answer; outcome unknown: resend the same readings with their ts' },
    schema: {
      summary: 'Ingest heart-rate readings of a user (a service key for anyone, a device key for its owner, a Bearer token for its own user)',
      headers: Type.Object({
        'x-api-key': Type.Optional(Type.String({ description: 'a service key (any user) or a device key (its owner); decides when present' })),
        authorization: Type.Optional(Type.String({ description: 'Bearer <jwt>: the token\'s user writes their own readings' }))
      }),
      params: UserParams,
      body: IngestBody,
      response: { 202: Accepted, ...errorResponses(400, 401, 403, 503) }
    },
    onResponse: async (_request, reply) => {
      if (reply.statusCode !== 202) fastify.metrics.ingestRejected.labels(String(reply.statusCode)).inc()
    },
    preValidation: authorizeIngest
  }, async (request, reply) => {
    let list
    try {
      list = readingsOf(request.body, Date.now(), 'body')
    } catch (err) {
      if (err instanceof IngestError) return sendError(reply, 400, err.message)
      throw err
    }
    const { ids, duplicates } = await fastify.heartStore.append(request.params.userId, list)
    fastify.metrics.ingested(ids.length, duplicates)
    return reply.code(202).send({ accepted: ids.length - duplicates, duplicates, ids })
  })

  fastify.get('/heart/:userId/readings', {
    preValidation: fastify.authenticate,
    // Per requesting user, so a NAT'd crowd shares nothing; counted once the token is known
    // (preHandler), which also counts requests that end in 403.
    config: { rateLimit: { max: fastify.config.HISTORY_RATE_LIMIT, timeWindow: '1 minute', hook: 'preHandler', keyGenerator: (request) => request.principal!.userId } },
    schema: {
      summary: 'History of a user, oldest first',
      params: UserParams,
      querystring: HistoryQuery,
      response: { 200: History, ...errorResponses(400, 401, 403, 429, 503) }
    }
  }, async (request, reply) => {
    const { userId } = request.params
    const viewer = request.principal!.userId
    if (!await fastify.canRead(viewer, userId)) {
      return sendError(reply, 403, `not allowed to read ${userId}`)
    }
    const { since, limit } = request.query
    if (since !== undefined && !isHistoryId(since)) {
      return sendError(reply, 400, 'querystring/since must be a history id: two numbers below 2^64 joined by "-"')
    }
    const page = await fastify.heartStore.history(userId, { since, limit })
    return page.truncated ? { userId, readings: page.readings, truncated: true } : { userId, readings: page.readings }
  })
}

export default readings
