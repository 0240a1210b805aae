/**
 * nginx's edge limits on /heart/current, per real client address (nginx.conf: limit_req burst 3000
 * at 20 r/s, limit_conn 4000): a NAT'd crowd at the service's default settings opens without a
 * refusal, while a flood past the burst and sockets past the connection limit get nginx's own 429
 * in the service's error shape. 127.0.0.2 and 127.0.0.3 are other client addresses on loopback.
 */
import https from 'node:https'
import t from 'tap'
import { bearer, eventually } from './helper.js'
import { HOST, Refused, startStack, type Stack } from './nginx-harness.js'

const CROWD = 2000
/** nginx.conf's burst for /heart/current. */
const BURST = 3000
/** Every limit of the instances at its default: the test helpers raise some of them for other tests. */
const DEFAULTS = { UPGRADE_RATE_LIMIT: undefined, MAX_CONNECTIONS_PER_USER: undefined, MESSAGE_RATE_LIMIT: undefined }
const EDGE_MESSAGE = 'too many connections from this address; retry later'

/** Whether an answer is nginx's own 429 for /heart/current, not an instance's. */
function isEdgeRefusal (status: number, body: string): boolean {
  if (status !== 429) return false
  try {
    const parsed = JSON.parse(body) as Record<string, unknown>
    return parsed.statusCode === 429 && parsed.error === 'Too Many Requests' && parsed.message === EDGE_MESSAGE
  } catch {
    return false
  }
}

async function getFrom (stack: Stack, agent: https.Agent, localAddress: string): Promise<{ status: number, body: string, headers: Record<string, unknown> }> {
  return await new Promise((resolve, reject) => {
    const req = https.get({ host: HOST, port: stack.ports.https, path: '/heart/current', agent, localAddress, timeout: 10000, ...stack.trust }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }))
    })
    req.on('timeout', () => req.destroy(new Error('GET /heart/current timed out')))
    req.on('error', reject)
  })
}

t.test('at the production limits', async (t) => {
  const stack = await startStack(t, DEFAULTS)

  t.test(`${CROWD} sockets from one address open through nginx with no refusal`, async (t) => {
    const started = performance.now()
    // A timed-out handshake would be the test machine's load, not a refusal: the storm gets time.
    const results = await Promise.allSettled(Array.from({ length: CROWD }, async (_, i) =>
      await stack.openWs(t, { localAddress: '127.0.0.1', handshakeTimeoutMs: 60000, headers: bearer(`edge-crowd-${i}`) })))
    const ms = Math.round(performance.now() - started)
    const opened = results.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])
    const failures = results.flatMap((r) => r.status === 'rejected' ? [r.reason instanceof Refused ? `HTTP ${r.reason.status} ${r.reason.body}` : String(r.reason)] : [])
    t.comment(`${opened.length} of ${CROWD} opened through nginx in ${ms} ms; refusals: ${failures.length}`)
    t.same(failures.slice(0, 5), [], 'no refusal')
    t.equal(opened.length, CROWD, 'all of them opened')
    const answers = await Promise.all(opened.slice(-20).map(async (f) => await f.ask({ type: 'ping' })))
    t.ok(answers.every((a) => a.type === 'pong'), 'and they answer')
  })

  t.test(`a flood of handshakes from one address past the burst of ${BURST} gets 429 from nginx; another address is not affected`, async (t) => {
    // Plain GETs on kept-alive connections: limit_req counts requests to the location, upgrade or not.
    const agent = new https.Agent({ keepAlive: true, maxSockets: 20 })
    t.teardown(() => agent.destroy())
    const AFTER = 500
    let sent = 0
    let passedBeforeRefusal = 0
    let firstRefusal: { status: number, body: string, headers: Record<string, unknown> } | null = null
    let sentAfter = 0
    let refusedAfter = 0
    const worker = async (): Promise<void> => {
      // Bounded: a config without the limit ends the flood instead of looping forever.
      while (sent < BURST * 3 && sentAfter < AFTER) {
        sent++
        const afterRefusal = firstRefusal !== null
        if (afterRefusal) sentAfter++
        const res = await getFrom(stack, agent, '127.0.0.3')
        if (isEdgeRefusal(res.status, res.body)) {
          if (firstRefusal === null) firstRefusal = res
          if (afterRefusal) refusedAfter++
        } else if (firstRefusal === null) {
          passedBeforeRefusal++
        }
      }
    }
    await Promise.all(Array.from({ length: 20 }, worker))
    t.comment(`${passedBeforeRefusal} passed before nginx's first 429; then ${refusedAfter} of ${sentAfter} refused`)
    t.ok(firstRefusal !== null, `nginx answered 429 within ${sent} requests`)
    t.ok(passedBeforeRefusal >= BURST, `the whole burst passed first (${passedBeforeRefusal})`)
    t.ok(refusedAfter > sentAfter / 2, 'a flood past the burst is mostly refused (the bucket refills at 20 per second)')
    const refusal = firstRefusal as { headers: Record<string, unknown> } | null
    t.match(refusal?.headers['content-type'], /^application\/json/)
    t.equal(refusal?.headers['retry-after'], '1')

    const other = await stack.openWs(t, { localAddress: '127.0.0.2', headers: bearer('edge-neighbour') })
    t.match(await other.ask({ type: 'ping' }), { type: 'pong' }, 'another address still connects')
  })
})

t.test('sockets past limit_conn from one address get 429 from nginx; a closed one frees its place', async (t) => {
  const LIMIT = 20
  // The production number (4000) is more sockets than a test should hold; the directive is the same.
  const stack = await startStack(t, DEFAULTS, { substitutions: [['limit_conn heart_ws_conn 4000;', `limit_conn heart_ws_conn ${LIMIT};`]] })
  const open = await Promise.all(Array.from({ length: LIMIT }, async (_, i) =>
    await stack.openWs(t, { localAddress: '127.0.0.1', headers: bearer(`edge-conn-${i}`) })))
  t.equal(open.length, LIMIT, `${LIMIT} sockets open`)

  const refused = await stack.openWs(t, { localAddress: '127.0.0.1', headers: bearer('edge-conn-extra') }).catch((e) => e)
  t.ok(refused instanceof Refused && isEdgeRefusal(refused.status, refused.body), `socket ${LIMIT + 1} is refused by nginx (${String(refused)})`)
  const other = await stack.openWs(t, { localAddress: '127.0.0.2', headers: bearer('edge-conn-other') })
  t.match(await other.ask({ type: 'ping' }), { type: 'pong' }, 'another address still connects')

  open[0].ws.close()
  const reopened = await eventually(async () => {
    try {
      await stack.openWs(t, { localAddress: '127.0.0.1', headers: bearer('edge-conn-extra') })
      return true
    } catch (err) {
      if (err instanceof Refused && isEdgeRefusal(err.status, err.body)) return false
      throw err
    }
  }, 5000)
  t.ok(reopened, 'once one closes, the address gets a place again')
})
