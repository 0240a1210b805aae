import fp from 'fastify-plugin'
import fastifyWebsocket from '@fastify/websocket'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { WebSocket } from 'ws'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import { CloseCode } from '../src/heart/protocol.js'
import { sendError } from '../src/http-errors.js'

/** How long sockets get to answer the 1001 close handshake at shutdown before they are cut. */
const CLOSE_HANDSHAKE_MS = 1000

/**
 * An upgrade request to a route that is not a WebSocket. @fastify/websocket would run the route's
 * hooks and then upgrade anyway, only to close the socket after logging the raw URL, with any
 * `?access_token=` in it: it is refused first.
 */
async function refuseUpgrade (request: FastifyRequest, reply: FastifyReply): Promise<void> {
  if (request.ws) await sendError(reply, 400, 'this route does not accept WebSocket upgrades')
}

/** An error on an established socket, or one its handler threw. */
function onSocketError (err: Error, socket: WebSocket, log: FastifyBaseLogger): void {
  // A protocol error (a frame too big, a bad frame): ws has already started the right close (1009, 1002).
  if (socket.readyState !== socket.OPEN) {
    log.info({ err }, 'websocket error')
    return
  }
  // Anything else escaped the handler: the socket cannot be trusted to work.
  log.error({ err }, 'websocket handler failed')
  socket.close(CloseCode.INTERNAL, 'internal error')
}

function hookList (hooks: onRequestHookHandler | onRequestHookHandler[] | undefined): onRequestHookHandler[] {
  return hooks === undefined ? [] : Array.isArray(hooks) ? hooks : [hooks]
}

/**
 * WebSocket support for every route: the frame size limit (ws closes with 1009 past it),
 * protocol-level pings every PING_INTERVAL_MS (below nginx's proxy_read_timeout) that terminate
 * peers which missed the previous one, close code 1001 for every socket at shutdown, and 400 for
 * an upgrade to any other route.
 */
export default fp(async function websocket (fastify) {
  const { MAX_PAYLOAD_BYTES, PING_INTERVAL_MS } = fastify.config
  await fastify.register(fastifyWebsocket, {
    options: { maxPayload: MAX_PAYLOAD_BYTES },
    errorHandler (err, socket, request) {
      onSocketError(err, socket, request.log)
    },
    preClose (done) {
      const clients = [...fastify.websocketServer.clients]
      if (clients.length === 0) {
        fastify.websocketServer.close(() => done())
        return
      }
      let open = clients.length
      const timer = setTimeout(finish, CLOSE_HANDSHAKE_MS)
      function finish (): void {
        clearTimeout(timer)
        for (const c of clients) c.terminate()
        fastify.websocketServer.close(() => done())
      }
      for (const client of clients) {
        client.once('close', () => { if (--open === 0) finish() })
        client.close(CloseCode.GOING_AWAY, 'server shutting down')
      }
    }
  })

  // Once upgraded, nothing of the handshake is needed again, but @fastify/websocket keeps all of it
  // for the socket's life: the TCP socket still points at the handshake's ServerResponse (which holds
  // the IncomingMessage with its headers, and Fastify's reply and request through its listeners),
  // and the error listener it adds to each WebSocket closes over the request and reply. About 3 KB
  // per socket (the bench's memory run, retained sizes). The response lets go of the TCP socket
  // when the upgrade completes, and the error listener is swapped for one that holds the logger only,
  // once @fastify/websocket has added it (synchronously after 'connection', before the handler runs).
  const handshakes = new WeakMap<IncomingMessage, { response: ServerResponse, log: FastifyBaseLogger }>()
  const recordHandshake: onRequestHookHandler = (request, reply, done) => {
    if (request.ws) handshakes.set(request.raw, { response: reply.raw, log: request.log })
    done()
  }

  // Routes are registered after this plugin, so every one of them passes here. A WebSocket route
  // records its handshakes (last among its hooks: only upgrades that got that far); any other
  // route refuses upgrades first among its own hooks, so no authentication or rate limit runs for
  // an upgrade that cannot succeed. Plain HTTP requests pay for neither.
  fastify.addHook('onRoute', (route) => {
    if (route.websocket === true || route.wsHandler !== undefined) {
      route.onRequest = [...hookList(route.onRequest), recordHandshake]
      return
    }
    route.onRequest = [refuseUpgrade as onRequestHookHandler, ...hookList(route.onRequest)]
  })
  fastify.websocketServer.on('connection', (ws: WebSocket, raw: IncomingMessage) => {
    const handshake = handshakes.get(raw)
    if (handshake === undefined) return
    handshakes.delete(raw)
    const { response, log } = handshake
    if (response.socket !== null) response.detachSocket(response.socket)
    queueMicrotask(() => {
      const [added] = ws.listeners('error')
      if (added !== undefined) ws.removeListener('error', added as (err: Error) => void)
      ws.on('error', function (this: WebSocket, err: Error) { onSocketError(err, this, log) })
    })
  })

  fastify.metrics.gauge('heart_connections_open', 'Open WebSocket connections', () => fastify.websocketServer.clients.size)

  // One timer for all sockets; a socket counts as alive when it answered a ping or sent anything.
  const alive = new WeakSet<WebSocket>()
  function markAlive (this: WebSocket): void {
    alive.add(this)
  }
  fastify.websocketServer.on('connection', (ws: WebSocket) => {
    alive.add(ws)
    ws.on('pong', markAlive)
    ws.on('message', markAlive)
  })
  const heartbeat = setInterval(() => {
    for (const ws of fastify.websocketServer.clients) {
      if (!alive.has(ws)) {
        ws.terminate()
        continue
      }
      alive.delete(ws)
      ws.ping()
    }
  }, PING_INTERVAL_MS)
  heartbeat.unref()
  fastify.addHook('onClose', async () => clearInterval(heartbeat))
}, { name: 'websocket', dependencies: ['config', 'metrics'] })
