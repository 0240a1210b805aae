import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { USER_ID_PATTERN } from '../src/heart/reading.js'
import { StoreUnavailableError } from '../src/heart/store.js'
import { errorResponses, sendError } from '../src/http-errors.js'

/** A person shares with family and carers, not with a crowd; the cap keeps a set small and its checks cheap. */
const MAX_VIEWERS = 100

const ViewerParams = Type.Object({ viewerId: Type.String({ pattern: USER_ID_PATTERN }) })
const Share = Type.Object({ ownerId: Type.String(), viewerId: Type.String() })

/**
 * Sharing: the caller (the token's `sub`) is the owner. Granting lets the viewer read the owner's
 * heart rate over the socket and history; withdrawing it ends the viewer's live subscriptions on
 * every instance with a `revoked` frame, and later requests get `forbidden`.
 */
const shares: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.addHook('preValidation', fastify.authenticate)
  const store = fastify.heartStore

  fastify.put('/shares/:viewerId', {
    schema: {
      summary: 'Let a viewer read my heart rate',
      params: ViewerParams,
      response: { 200: Share, ...errorResponses(400, 401, 409, 503) }
    }
  }, async (request, reply) => {
    const ownerId = request.principal!.userId
    const { viewerId } = request.params
    if (viewerId === ownerId) return sendError(reply, 400, 'params/viewerId is yourself: you can always read your own heart rate')
    if (!await store.grant(ownerId, viewerId, MAX_VIEWERS)) {
      return sendError(reply, 409, `at most ${MAX_VIEWERS} viewers; withdraw one first`)
    }
    return { ownerId, viewerId }
  })

  fastify.delete('/shares/:viewerId', {
    schema: {
      summary: 'Withdraw a viewer\'s access; their live subscriptions end at once',
      params: ViewerParams,
      response: { 204: Type.Null(), ...errorResponses(400, 401, 404, 503) }
    }
  }, async (request, reply) => {
    const ownerId = request.principal!.userId
    const { viewerId } = request.params
    // Revoking tells every instance to end the viewer's subscriptions to the owner: for yourself
    // that would end your own.
    if (viewerId === ownerId) return sendError(reply, 400, 'params/viewerId is yourself: your own access cannot be withdrawn')
    let had: boolean
    try {
      had = await store.revoke(ownerId, viewerId)
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err
      // The withdrawal is one step on the owner's set: it happened entirely or not at all.
      request.log.warn({ err: err.cause }, 'heart store unavailable')
      return sendError(reply, 503, `the store did not confirm the withdrawal: ${viewerId} has access until GET /shares no longer lists them; DELETE again is safe`)
    }
    if (!had) return sendError(reply, 404, `${viewerId} has no access to share`)
    return reply.code(204).send(null)
  })

  fastify.get('/shares', {
    schema: {
      summary: 'Who may read my heart rate',
      response: { 200: Type.Object({ ownerId: Type.String(), viewers: Type.Array(Type.String()) }), ...errorResponses(401, 503) }
    }
  }, async (request) => {
    const ownerId = request.principal!.userId
    return { ownerId, viewers: await store.viewersOf(ownerId) }
  })

  fastify.get('/shares/watching', {
    schema: {
      summary: 'Whose heart rate I may read',
      response: { 200: Type.Object({ viewerId: Type.String(), owners: Type.Array(Type.String()) }), ...errorResponses(401, 503) }
    }
  }, async (request) => {
    const viewerId = request.principal!.userId
    // The list is a second copy of the owners' sets (another slot on a cluster); the owners' sets decide.
    const listed = await store.watchedBy(viewerId)
    const granted = await fastify.access.canReadAll(listed.map((ownerId) => ({ viewerId, ownerId })))
    return { viewerId, owners: listed.filter((_, i) => granted[i]) }
  })
}

export default shares
