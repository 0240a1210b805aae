import type { Socket } from 'node:net'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import app from './app.js'
import { loadConfig, trustProxyOption, type Config } from '../plugins/config.js'
import { loggableError, loggerOptions } from './logger.js'

/** Past the drain and the close, a shutdown that still hangs is cut short. */
const FORCE_EXIT_MS = 10000
/** How long requests in flight at the end of the drain may take to finish. */
const IN_FLIGHT_MS = 3000

async function main (): Promise<void> {
  let config: Config
  try {
    config = loadConfig(process.env)
  } catch (err) {
    process.stderr.write(`heart-gateway: invalid configuration: ${(err as Error).message}\n`)
    process.exit(1)
  }

  const fastify = Fastify({
    logger: loggerOptions(config.LOG_LEVEL),
    trustProxy: trustProxyOption(config.TRUST_PROXY),
    // Long-lived sockets are not requests: only plain HTTP is bounded by these.
    requestTimeout: 30000,
    connectionTimeout: 0,
    return503OnClosing: true
  })
  // fp: the app's decorators (config, lifecycle) must be visible here, outside its scope.
  fastify.register(fp(app), { config })

  try {
    await fastify.ready()
    await fastify.listen({ host: config.HOST, port: config.PORT })
  } catch (err) {
    fastify.log.fatal({ err }, 'could not start')
    // Also on stderr: with LOG_LEVEL=silent (or above fatal) the log line above is dropped.
    process.stderr.write(`heart-gateway: could not start: ${(loggableError(err) as Error).message}\n`)
    process.exit(1)
  }

  // Every TCP connection, upgraded ones included (Node's closeAllConnections skips those).
  const sockets = new Set<Socket>()
  fastify.server.on('connection', (socket: Socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })

  let stopping = false
  const stop = async (signal: string): Promise<void> => {
    if (stopping) {
      fastify.log.warn({ signal }, 'second signal: exiting now')
      process.exit(1)
    }
    stopping = true
    // The drain gives load balancers time to move traffic away. Development has none, and with
    // nothing connected there is nothing to move (behind nginx, its keep-alive connections count).
    const grace = config.NODE_ENV === 'development' || sockets.size === 0 ? 0 : config.SHUTDOWN_GRACE_MS
    fastify.log.info({ signal, graceMs: grace }, grace === 0 ? 'shutting down' : 'shutting down: draining')
    setTimeout(() => {
      fastify.log.error('shutdown did not finish in time: exiting')
      process.exit(1)
    }, grace + FORCE_EXIT_MS).unref()
    // Health turns 503 and new sockets are refused; existing ones keep working while load balancers move traffic away.
    fastify.lifecycle.draining = true
    if (grace > 0) await new Promise((resolve) => setTimeout(resolve, grace))
    try {
      // close() waits for requests in flight, but also for connections that never carried one
      // (browsers open them ahead of use) and for any socket still open: every connection is cut
      // once the requests in flight have had their time.
      const cut = setTimeout(() => { for (const socket of sockets) socket.destroy() }, IN_FLIGHT_MS)
      await fastify.close()
      clearTimeout(cut)
      fastify.log.info('shut down')
      process.exit(0)
    } catch (err) {
      fastify.log.error({ err }, 'error while shutting down')
      process.exit(1)
    }
  }
  process.on('SIGTERM', () => { void stop('SIGTERM') })
  process.on('SIGINT', () => { void stop('SIGINT') })
}

void main()
