import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { DEVICE_ID_PATTERN, MAX_DEVICES_PER_OWNER } from '../src/heart/devices.js'
import { errorResponses, sendError } from '../src/http-errors.js'
import { formatSchemaErrors, strictAjv } from '../src/validation.js'

const DeviceParams = Type.Object({ deviceId: Type.String({ pattern: DEVICE_ID_PATTERN }) })

const NewDevice = Type.Object({
  // Printable: the name is shown in the owner's device list.
  name: Type.String({ minLength: 1, maxLength: 64, pattern: '^[^\\u0000-\\u001f\\u007f]*$', description: 'for the owner to tell devices apart' })
}, { additionalProperties: false })

const Created = Type.Object({
  deviceId: Type.String(),
  name: Type.String(),
  key: Type.String({ description: 'send as x-api-key to POST /heart/<you>/readings; shown only in this answer' }),
  createdAt: Type.Integer({ description: 'milliseconds since the epoch' })
})

const Device = Type.Object({
  deviceId: Type.String(),
  name: Type.String(),
  createdAt: Type.Integer(),
  lastSeenAt: Type.Union([Type.Integer(), Type.Null()], { description: 'when its key last wrote readings; null when never' })
})

/**
 * Device keys: the caller (the token's `sub`) is the owner, and a device key writes the owner's
 * readings only (POST /heart/:userId/readings). A key is shown once, in the answer that creates
 * it; the store keeps only a hash. Deleting a device refuses its key on every instance at once.
 */
const devices: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.setValidatorCompiler(({ schema }) => strictAjv.compile(schema))
  fastify.setSchemaErrorFormatter(formatSchemaErrors)
  fastify.addHook('preValidation', fastify.authenticate)
  const registry = fastify.devices

  fastify.post('/devices', {
    schema: {
      summary: 'Create a device key that writes my readings only',
      body: NewDevice,
      response: { 201: Created, ...errorResponses(400, 401, 409, 503) }
    }
  }, async (request, reply) => {
    const device = await registry.create(request.principal!.userId, request.body.name)
    if (device === null) return sendError(reply, 409, `at most ${MAX_DEVICES_PER_OWNER} devices; delete one first`)
    // The one answer that carries the key: no cache may keep it.
    return reply.code(201).header('cache-control', 'no-store').send(device)
  })

  fastify.get('/devices', {
    schema: {
      summary: 'My devices (never their keys)',
      response: { 200: Type.Array(Device), ...errorResponses(401, 503) }
    }
  }, async (request) => await registry.list(request.principal!.userId))

  fastify.delete('/devices/:deviceId', {
    schema: {
      summary: 'Delete a device: its key stops working on every instance at once',
      params: DeviceParams,
      response: { 204: Type.Null(), ...errorResponses(400, 401, 404, 503) }
    }
  }, async (request, reply) => {
    if (!await registry.remove(request.principal!.userId, request.params.deviceId)) {
      return sendError(reply, 404, 'no such device')
    }
    return reply.code(204).send(null)
  })
}

export default devices
