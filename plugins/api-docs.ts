import fp from 'fastify-plugin'
import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'

/**
 * OpenAPI for the HTTP endpoints, generated from the route schemas, served at /docs (the UI) and
 * /docs/json. On outside production unless ENABLE_API_DOCS says otherwise. Registered before the
 * routes: it collects them as they are added. The WebSocket protocol is in docs/protocol.md.
 */
export default fp(async function apiDocs (fastify) {
  const { ENABLE_API_DOCS, NODE_ENV } = fastify.config
  if (!(ENABLE_API_DOCS ?? NODE_ENV !== 'production')) return
  await fastify.register(fastifySwagger, {
    openapi: {
      info: {
        title: 'heart-gateway',
        description: 'Real-time heart rate for WeChat mini programs. The WebSocket protocol of /heart/current is described in docs/protocol.md.',
        version: '0.1.0'
      },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' },
          apiKey: { type: 'apiKey', in: 'header', name: 'x-api-key' }
        }
      }
    }
  })
  await fastify.register(fastifySwaggerUi, { routePrefix: '/docs' })
}, { name: 'api-docs', dependencies: ['config'] })
