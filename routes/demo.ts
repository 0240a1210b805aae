import { existsSync } from 'node:fs'
import { join } from 'node:path'
import fastifyStatic from '@fastify/static'
import type { FastifyPluginAsync } from 'fastify'
import { projectRoot } from '../src/project-root.js'

/** Scripts, styles and sockets from this origin only; the page has no inline script or style. */
export const DEMO_CSP = "default-src 'self'; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/** What the page loads of client/: the protocol client and its WebSocket adapter, nothing else. */
const CLIENT_FILES = new Set(['/heart-client.js', '/ws-adapter.js'])

/**
 * The live demo page at /demo/ (public/demo): log in, see a user's heart rate and the last
 * minutes of it. ENABLE_DEMO turns it on or off; unset, it is on outside production. It is
 * static files calling the public API, so it grants nothing a token does not already grant. The
 * page connects through the mini-program client itself, served from client/ at /demo/client/.
 */
const demo: FastifyPluginAsync = async (fastify) => {
  const { ENABLE_DEMO, NODE_ENV } = fastify.config
  if (!(ENABLE_DEMO ?? NODE_ENV !== 'production')) return
  const root = join(projectRoot(), 'public', 'demo')
  if (!existsSync(join(root, 'index.html'))) throw new Error(`demo: ${root}/index.html is missing (ship public/ with dist/, or set ENABLE_DEMO=false)`)

  fastify.addHook('onSend', async (_request, reply) => {
    reply.header('content-security-policy', DEMO_CSP)
    reply.header('x-content-type-options', 'nosniff')
    reply.header('referrer-policy', 'no-referrer')
  })
  // decorateReply off: nothing here needs reply.sendFile, and other plugins may register @fastify/static too.
  await fastify.register(fastifyStatic, { root, prefix: '/demo/', decorateReply: false })
  await fastify.register(fastifyStatic, {
    root: join(projectRoot(), 'client'),
    prefix: '/demo/client/',
    decorateReply: false,
    allowedPath: (pathName) => CLIENT_FILES.has(pathName)
  })
  // Relative links in the page (demo.js, demo.css) need the trailing slash; the query string is kept.
  fastify.get('/demo', (request, reply) => {
    const query = request.url.indexOf('?')
    return reply.redirect('/demo/' + (query === -1 ? '' : request.url.slice(query)), 301)
  })
  fastify.log.info('demo page at /demo/ (ENABLE_DEMO=false turns it off)')
}

export default demo
