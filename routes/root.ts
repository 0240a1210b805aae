import type { FastifyPluginAsync } from 'fastify'

/** A page of links, nothing to run. */
export const ROOT_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

const PAGES = [
  { path: '/demo/', probe: '/demo', text: 'Live demo: a user\'s heart rate as it arrives' },
  { path: '/docs', probe: '/docs', text: 'HTTP API reference (OpenAPI)' }
]

/**
 * `GET /` for a person who opens the service in a browser: links to the demo page and the API
 * docs, whichever this instance serves (both are off in production by default, and then so is
 * this page: `/` stays 404). Registered after them, so it asks the router what is there instead
 * of repeating their settings.
 */
const root: FastifyPluginAsync = async (fastify) => {
  const pages = PAGES.filter((p) => fastify.hasRoute({ method: 'GET', url: p.probe }))
  if (pages.length === 0) return
  const html = [
    '<!doctype html>',
    '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>heart-gateway</title></head>',
    '<body><h1>heart-gateway</h1>',
    '<p>A real-time heart-rate service. Clients keep a WebSocket open to <code>/heart/current</code>; devices post to <code>POST /heart/:userId/readings</code>.</p>',
    '<ul>',
    ...pages.map((p) => `<li><a href="${p.path}">${p.path}</a> — ${p.text}</li>`),
    '</ul></body></html>',
    ''
  ].join('\n')
  fastify.get('/', { schema: { hide: true } }, async (_request, reply) => {
    return reply.type('text/html; charset=utf-8').header('content-security-policy', ROOT_CSP).send(html)
  })
}

export default root
