/**
 * No leaks (issue 5, item 5): after 2 000 cycles of connect → subscribe → disconnect, the hub
 * holds no topic or subscription, the websocket server no socket, Redis no subscription to any of
 * the users' live channels, and the heap is back near where it started.
 *
 * In process (injectWS), so the hub and the heap can be looked at directly. Cycles run 20 at a
 * time over 5 users, so topics are shared, released and re-created while others still use them;
 * every other cycle disconnects without waiting for `subscribed`, racing the close against the
 * subscription being set up. And an open socket holds nothing of its handshake.
 */
import t from 'tap'
import type { IncomingMessage } from 'node:http'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { bearer, build, buildWithRedis, eventually, openSocket, openWebSocket, sharedRedis, type Frames } from './helper.js'

// A gc() without --expose-gc on the command line (tap has no per-file node arguments).
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

const USERS = ['leak-a', 'leak-b', 'leak-c', 'leak-d', 'leak-e']
const CYCLES = 2000
const CONCURRENCY = 20
/** Enough for V8, ioredis and Fastify to reach their steady size before the heap is measured. */
const WARM_UP = 1000
/*
 * Measured on the development VM (Node 20, under tap with coverage): heapUsed after a forced GC
 * ~63 MB; over the 2 000 cycles after the warm-up it grew by 0.4–0.95 MB, and a 20 000-cycle run
 * levelled off (+1.05 MB after 4 000 cycles, +1.36 MB after 20 000), so that is warm-up, not a
 * leak. 3 MB fails a leak of about 1.5 KB per cycle, less than one leaked socket or session;
 * smaller leaks in the hub show in its counts.
 */
const MAX_GROWTH_BYTES = 3 * 1024 * 1024

async function settledHeap (): Promise<number> {
  // Several rounds: finalizers and weak callbacks of one collection free more in the next.
  for (let i = 0; i < 4; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
  }
  return process.memoryUsage().heapUsed
}

t.test('2 000 connect → subscribe → disconnect cycles leave nothing behind', async (t) => {
  const app = await buildWithRedis(t)
  const redis = (await sharedRedis()).client()
  t.teardown(() => { redis.disconnect() })
  const prefix = app.config.HEART_KEY_PREFIX
  const channels = USERS.map((u) => `{${prefix}${u}}:live`)

  async function numsub (): Promise<number[]> {
    const reply = await redis.pubsub('NUMSUB', ...channels) as Array<string | number>
    return reply.filter((_, i) => i % 2 === 1).map(Number)
  }

  let unexpected = 0
  async function cycle (i: number): Promise<void> {
    const userId = USERS[i % USERS.length]
    const frames: Frames = await openSocket(app, userId)
    frames.ws.send(JSON.stringify({ type: 'subscribe', userId, reqId: i }))
    if (i % 2 === 0) {
      const ack = await frames.json()
      if (ack.type !== 'subscribed' || ack.reqId !== i) unexpected++
    }
    frames.ws.terminate()
    await frames.closed
  }

  async function run (from: number, count: number): Promise<void> {
    for (let i = from; i < from + count; i += CONCURRENCY) {
      await Promise.all(Array.from({ length: Math.min(CONCURRENCY, from + count - i) }, async (_, j) => await cycle(i + j)))
    }
  }

  const empty = async (): Promise<boolean> =>
    app.hub.topicCount === 0 && app.hub.subscriptionCount === 0 && app.websocketServer.clients.size === 0 &&
    (await numsub()).every((n) => n === 0)

  await run(0, WARM_UP)
  t.ok(await eventually(empty, 5000), 'empty after the warm-up')
  const before = await settledHeap()

  const started = Date.now()
  await run(WARM_UP, CYCLES)
  const elapsed = Date.now() - started
  t.equal(unexpected, 0, 'every awaited subscribe was answered with its subscribed frame')

  t.ok(await eventually(empty, 5000), 'the hub, the websocket server and Redis let go of everything')
  t.equal(app.hub.topicCount, 0, 'no topic left in the hub')
  t.equal(app.hub.subscriptionCount, 0, 'no subscription left in the hub')
  t.equal(app.websocketServer.clients.size, 0, 'no socket left in the websocket server')
  t.same(await numsub(), USERS.map(() => 0), 'PUBSUB NUMSUB is 0 for every user\'s live channel')

  const after = await settledHeap()
  const growth = after - before
  t.comment(`${CYCLES} cycles in ${elapsed} ms; heapUsed after GC: ${(before / 2 ** 20).toFixed(1)} MB before, ${(after / 2 ** 20).toFixed(1)} MB after (${growth >= 0 ? '+' : ''}${(growth / 2 ** 20).toFixed(2)} MB)`)
  t.ok(growth < MAX_GROWTH_BYTES, `heap grew by less than ${MAX_GROWTH_BYTES / 2 ** 20} MB`)

  // Still working after all that: a fresh subscriber gets a published reading.
  const frames = await openSocket(app, USERS[0])
  t.match(await frames.ask({ type: 'subscribe', userId: USERS[0] }), { type: 'subscribed' })
  await app.heartStore.append(USERS[0], [{ bpm: 77, ts: Date.now() }])
  t.match(await frames.json(), { type: 'reading', userId: USERS[0], bpm: 77 })
  frames.ws.terminate()
})

t.test('an open socket keeps nothing of its handshake, and its errors are still logged with the request id', async (t) => {
  const logs: string[] = []
  const app = await build(t, { MAX_PAYLOAD_BYTES: '256' }, { logs })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as { port: number }
  // The handshake's IncomingMessage: Fastify's request and reply, and the ServerResponse, all hold it.
  let handshake: WeakRef<IncomingMessage> | undefined
  app.websocketServer.once('connection', (_ws, request: IncomingMessage) => { handshake = new WeakRef(request) })
  const frames = await openWebSocket(t, `ws://127.0.0.1:${port}/heart/current`, { headers: bearer('leak-handshake') })
  t.match(await frames.ask({ type: 'ping', reqId: 1 }), { type: 'pong', reqId: 1 })
  t.ok(handshake, 'the upgrade was seen')

  let collected = false
  for (let i = 0; i < 10 && !collected; i++) {
    await settledHeap()
    collected = handshake!.deref() === undefined
  }
  t.ok(collected, 'the handshake request was collected while its socket is open')
  t.match(await frames.ask({ type: 'ping', reqId: 2 }), { type: 'pong', reqId: 2 }, 'the socket still answers')

  const opened = logs.map((l) => JSON.parse(l)).find((l) => l.msg === 'socket open')
  t.ok(opened?.reqId, 'the open was logged with a request id')
  frames.ws.send(`{"type":"ping","pad":"${'x'.repeat(256)}"}`)
  t.equal(await frames.closed, 1009, 'a frame past MAX_PAYLOAD_BYTES still closes with 1009')
  t.ok(await eventually(() => logs.some((l) => {
    const line = JSON.parse(l)
    return line.msg === 'websocket error' && line.reqId === opened.reqId
  })), 'the error is logged under the socket\'s request id')
})
