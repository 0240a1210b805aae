import { Ajv } from 'ajv'
import type { FastifySchemaValidationError } from 'fastify'

/**
 * Request bodies are validated without type coercion or silent stripping: a client sending "72"
 * for 72, or a property the route does not know, has a bug worth a 400.
 */
export const strictAjv = new Ajv({ coerceTypes: false, useDefaults: true, allErrors: false, strict: false })

/** Fastify's message, except that an unknown property is named (Ajv's own message only names the object holding it). */
export function formatSchemaErrors (errors: FastifySchemaValidationError[], dataVar: string): Error {
  return new Error(errors.map((e) => {
    const extra = e.keyword === 'additionalProperties' ? (e.params as { additionalProperty?: unknown }).additionalProperty : undefined
    if (typeof extra === 'string') return `${dataVar}${e.instancePath}/${extra} is not an accepted property`
    return `${dataVar}${e.instancePath} ${e.message ?? 'is invalid'}`
  }).join(', '))
}
