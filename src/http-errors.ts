import { STATUS_CODES } from 'node:http'
import { Type, type Static } from '@fastify/type-provider-typebox'
import type { FastifyReply } from 'fastify'

/**
 * The body of every error answer: routes, hooks, refused WebSocket upgrades, the app's error and
 * not-found handlers. `code` names a cause a client can act on (login refusals).
 */
export const ErrorBody = Type.Object({
  statusCode: Type.Integer(),
  error: Type.String(),
  message: Type.String(),
  code: Type.Optional(Type.String())
})
export type ErrorBody = Static<typeof ErrorBody>

export function errorBody (statusCode: number, message: string, code?: string): ErrorBody {
  const body = { statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message }
  return code === undefined ? body : { ...body, code }
}

/** Answers with an error status and its body. */
export function sendError (reply: FastifyReply, statusCode: number, message: string, code?: string): FastifyReply {
  return reply.code(statusCode).send(errorBody(statusCode, message, code))
}

/** 401 for a missing or refused Bearer token, with the challenge RFC 6750 asks for. */
export function sendUnauthorized (reply: FastifyReply, message: string): FastifyReply {
  return sendError(reply.header('www-authenticate', 'Bearer'), 401, message)
}

/** `schema.response` entries for the error statuses a route answers. */
export function errorResponses<S extends number> (...statuses: S[]): Record<S, typeof ErrorBody> {
  return Object.fromEntries(statuses.map((s) => [s, ErrorBody])) as Record<S, typeof ErrorBody>
}
