import t from 'tap'
import net from 'node:net'
import { Refused, eventually, openWebSocket, startServer, token, type ServerProcess } from './helper.js'

/** The proxy's own address: a second loopback address, so the server can tell it from direct clients on 127.0.0.1. */
const PROXY_ADDRESS = '127.0.0.2'

/**
 * A plain TCP proxy, as nginx is to the server: it listens on 127.0.0.2 and connects to the
 * server from 127.0.0.2. Clients set `X-Forwarded-For` themselves, standing in for nginx's header.
 */
async function startProxy (tt: { teardown: (fn: () => void) => void }, server: ServerProcess): Promise<string> {
  const conns = new Set<net.Socket>()
  const proxy = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: server.port, localAddress: PROXY_ADDRESS })
    for (const s of [client, upstream]) {
      conns.add(s)
      s.once('close', () => conns.delete(s))
      s.on('error', () => { client.destroy(); upstream.destroy() })
    }
    client.pipe(upstream).pipe(client)
  })
  await new Promise<void>((resolve, reject) => {
    proxy.once('error', reject)
    proxy.listen(0, PROXY_ADDRESS, () => resolve())
  })
  tt.teardown(() => {
    for (const s of conns) s.destroy()
    proxy.close()
  })
  return `${PROXY_ADDRESS}:${(proxy.address() as net.AddressInfo).port}`
}

/** The client address the server logged for the request to `url` (each test request has a URL of its own). */
async function loggedAddress (server: ServerProcess, url: string): Promise<string> {
  let address: string | undefined
  const found = await eventually(() => {
    for (const line of server.logs) {
      if (!line.startsWith('{')) continue
      const entry = JSON.parse(line)
      if (entry.msg === 'incoming request' && entry.req?.url === url) address = entry.req.remoteAddress
    }
    return address !== undefined
  }, 3000)
  if (!found) throw new Error(`no request to ${url} was logged`)
  return address as string
}

/** A request the server logs at info (/health logs only warnings): a route that does not exist. */
async function getVia (hostPort: string, url: string, forwardedFor?: string): Promise<number> {
  const headers: Record<string, string> = forwardedFor === undefined ? {} : { 'x-forwarded-for': forwardedFor }
  return (await fetch(`http://${hostPort}${url}`, { headers })).status
}

/** Opens /heart/current with a token the server refuses; resolves with the refusal's status. */
async function badUpgrade (tt: { teardown: (fn: () => void) => void }, hostPort: string, forwardedFor: string): Promise<number> {
  try {
    const frames = await openWebSocket(tt, `ws://${hostPort}/heart/current`, {
      headers: { authorization: `Bearer ${token('u1', { secret: 'not-the-secret-of-this-server-0123456789' })}`, 'x-forwarded-for': forwardedFor }
    })
    frames.ws.terminate()
    return 101
  } catch (err) {
    if (err instanceof Refused) return err.status
    throw err
  }
}

t.test('TRUST_PROXY names the proxy: the client address is the one it forwards, and only when it comes from the proxy', async (t) => {
  const server = await startServer(t, { TRUST_PROXY: PROXY_ADDRESS, UPGRADE_RATE_LIMIT: '2' })
  const direct = `127.0.0.1:${server.port}`
  const proxy = await startProxy(t, server)

  t.equal(await getVia(proxy, '/probe?via=proxy', '203.0.113.7'), 404)
  t.equal(await loggedAddress(server, '/probe?via=proxy'), '203.0.113.7', 'through the trusted proxy: the forwarded address')
  t.equal(await getVia(direct, '/probe?via=direct', '203.0.113.8'), 404)
  t.equal(await loggedAddress(server, '/probe?via=direct'), '127.0.0.1', 'a direct client cannot choose its address with the header')
  t.equal(await getVia(proxy, '/probe?via=proxy-no-header'), 404)
  t.equal(await loggedAddress(server, '/probe?via=proxy-no-header'), PROXY_ADDRESS, 'the proxy itself without the header')

  // Rate limits count per forwarded client behind the proxy: one client's failures do not refuse another.
  t.same([await badUpgrade(t, proxy, '203.0.113.10'), await badUpgrade(t, proxy, '203.0.113.10'), await badUpgrade(t, proxy, '203.0.113.10')], [401, 401, 429], 'a client behind the proxy is limited on its own')
  t.equal(await badUpgrade(t, proxy, '203.0.113.11'), 401, 'another client behind the same proxy is not')
  // A direct client changing the header every time is still one address.
  t.same([await badUpgrade(t, direct, '198.51.100.1'), await badUpgrade(t, direct, '198.51.100.2'), await badUpgrade(t, direct, '198.51.100.3')], [401, 401, 429], 'a spoofed header does not escape the limit')
})

t.test('TRUST_PROXY at its default: a forwarded address is ignored and every client behind the proxy is the proxy', async (t) => {
  const server = await startServer(t, { UPGRADE_RATE_LIMIT: '2' })
  const proxy = await startProxy(t, server)

  t.equal(await getVia(proxy, '/probe?via=untrusted', '203.0.113.7'), 404)
  t.equal(await loggedAddress(server, '/probe?via=untrusted'), PROXY_ADDRESS)
  t.same([await badUpgrade(t, proxy, '203.0.113.20'), await badUpgrade(t, proxy, '203.0.113.21'), await badUpgrade(t, proxy, '203.0.113.22')], [401, 401, 429], 'different forwarded clients share the proxy\'s limit')
})
