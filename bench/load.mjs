/**
 * The load generator of `npm run bench`: one scenario against one target (our service or the
 * baseline), in its own process so its work never lands on the servers' CPU figures. bench/run.mjs
 * forks it with a JSON config as argv[2] and gets the result back over IPC (or on stdout when run
 * by hand). Server CPU and memory are read from /proc/<pid> of the servers at the edges of the
 * measured window, by this process, so the window is exactly the one the counts cover.
 *
 * Scenarios (every wait has a deadline; counts are fixed up front):
 * - connect: N authenticated idle sockets, one user each; time to open, failures, RSS per socket.
 * - query:   C sockets × D original-protocol gets in flight (text frame = own user id); round
 *            trips/s, latency, server CPU per round trip, over a window after a warm-up.
 * - push:    U users × S subscribers spread over the instances, R readings/s through HTTP ingest;
 *            deliveries/s, ingest-to-frame latency, lost and duplicated deliveries, CPU per delivery.
 * - ingest:  the ways a reading enters, one after the other on the same instance (each twice for
 *            half the time, in the order A B C D E E D C B A), U users at R readings/s each
 *            time (every reading with its own ts, so the duplicate check runs):
 *            HTTP with a service key, HTTP with each user's device key, `publish` over each user's
 *            own socket, and `publish` by U other users who have alert rules set (the episode
 *            evaluation in the ingest script). Readings/s acknowledged, server and Redis CPU per reading, for each.
 *            And the reference the check and the rules are measured against: `publish` of
 *            readings without ts (server-stamped, so no duplicate check) and no rules.
 * - memory:  N sockets on one instance (one user each), then each subscribed to its own user, then
 *            to K-1 more users that shared with it (grants written into Redis up front, in the
 *            documented layout); RSS per socket idle, with 1 and with K subscriptions; then,
 *            when asked, a heap snapshot of the server (its largest retainers, per socket).
 * - sweep:   the push set-up opened once, then push's measurement at each rate of a list, on the
 *            same sockets; one result per step (`npm run bench -- --sweep`).
 */
import http from 'node:http'
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import WebSocket from 'ws'
import { Redis } from 'ioredis'
import { createSigner } from 'fast-jwt'
import { legacyKey, userKeys } from '../dist/src/heart/redis-keys.js'
import { windowProfilers } from './inspector.mjs'

const cfg = JSON.parse(process.argv[2])
const sign = createSigner({ key: cfg.secret, algorithm: 'HS256' })
const exp = Math.floor(Date.now() / 1000) + 3600
const tokenOf = (userId) => sign({ sub: userId, exp })

// ---------------------------------------------------------------- /proc

function procCpuTicks (pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(f[11]) + Number(f[12])
}

function procRssKiB (pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? NaN : Number(m[1])
}

/** Busy ticks per core (user, nice, system, irq, softirq, steal), from /proc/stat. */
function coreBusyTicks () {
  const busy = []
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(line)
    if (m === null) continue
    const f = m[2].split(' ').map(Number)
    busy[Number(m[1])] = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
  }
  return busy
}

/** CPU of the servers, of Redis, of this process and of each core at one moment. */
function sample () {
  const self = process.cpuUsage()
  return {
    at: performance.now(),
    servers: cfg.pids.map(procCpuTicks),
    redis: cfg.redisPid ? procCpuTicks(cfg.redisPid) : 0,
    selfUs: self.user + self.system,
    cores: coreBusyTicks()
  }
}

/** CPU spent between two samples: servers' in µs (summed), and the busy share of the generator's core. */
function cpuBetween (a, b) {
  const tickUs = 1e6 / cfg.clkTck
  const wallUs = (b.at - a.at) * 1000
  const serverUs = b.servers.reduce((s, t, i) => s + (t - a.servers[i]) * tickUs, 0)
  const redisUs = (b.redis - a.redis) * tickUs
  const genUs = b.selfUs - a.selfUs
  const coreBusyPercent = b.cores.map((t, i) => 100 * (t - a.cores[i]) * tickUs / wallUs)
  const out = {
    wallSeconds: wallUs / 1e6,
    serverCpuUs: serverUs,
    serverCpuPercent: 100 * serverUs / wallUs,
    redisCpuPercent: 100 * redisUs / wallUs,
    generatorCpuPercent: 100 * genUs / wallUs,
    coreBusyPercent
  }
  // What other processes of the machine took from each core while the bench ran on it.
  if (cfg.pinned) {
    out.othersOnServerCorePercent = Math.max(0, coreBusyPercent[cfg.serverCore] - out.serverCpuPercent)
    out.othersOnLoadCorePercent = Math.max(0, coreBusyPercent[cfg.loadCore] - out.generatorCpuPercent - out.redisCpuPercent)
  }
  return out
}

// ---------------------------------------------------------------- statistics

function percentiles (values) {
  if (values.length === 0) return { n: 0, p50: null, p99: null, max: null, mean: null }
  const a = Float64Array.from(values).sort()
  const at = (q) => a[Math.min(a.length - 1, Math.floor(q * a.length))]
  let sum = 0
  for (const v of a) sum += v
  return { n: a.length, p50: at(0.5), p99: at(0.99), max: a[a.length - 1], mean: sum / a.length }
}

// ---------------------------------------------------------------- sockets

const wsUrl = (base) => base.replace(/^http/, 'ws') + '/heart/current'

/** Opens one authenticated socket; rejects on refusal, error or after `timeoutMs`. */
function openSocket (base, userId, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(base), { headers: { authorization: `Bearer ${tokenOf(userId)}` }, perMessageDeflate: false })
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('open timed out')) }, timeoutMs)
    ws.once('open', () => { clearTimeout(timer); ws.removeAllListeners('error'); ws.on('error', () => {}); resolve(ws) })
    ws.once('unexpected-response', (_req, res) => { clearTimeout(timer); ws.terminate(); reject(new Error(`HTTP ${res.statusCode}`)) })
    ws.once('error', (err) => { clearTimeout(timer); reject(err) })
  })
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` at once; returns failures by message. */
async function pool (count, concurrency, task, deadline) {
  let next = 0
  const failures = {}
  async function worker () {
    while (next < count) {
      const i = next++
      if (performance.now() > deadline) { failures['deadline passed'] = (failures['deadline passed'] ?? 0) + 1; continue }
      try {
        await task(i)
      } catch (err) {
        failures[err.message] = (failures[err.message] ?? 0) + 1
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker))
  return failures
}

const countOf = (failures) => Object.values(failures).reduce((a, b) => a + b, 0)

async function closeAll (sockets) {
  for (const ws of sockets) ws.terminate()
  await sleep(200)
}

// ---------------------------------------------------------------- measured windows

/**
 * Opens and closes a measured window: the CPU sample at each edge and, when the bench asked for
 * profiles (cfg.inspect: the servers' inspector URLs), the servers' CPU profilers started and
 * stopped at the same edges, so a profile holds the window and nothing else. One window at a time.
 */
let openWindow = null
const windowProfiles = {}
async function begin (label) {
  openWindow = { label, profilers: null }
  if (cfg.inspect !== undefined && label !== undefined) {
    openWindow.profilers = await windowProfilers(cfg.inspect)
    await openWindow.profilers.start()
  }
  return sample()
}
async function end () {
  const s = sample()
  const { label, profilers } = openWindow
  openWindow = null
  if (profilers !== null) {
    const profiles = await profilers.stop()
    windowProfiles[label] = profiles.map((profile, i) => {
      const file = `${cfg.profileDir}/${cfg.scenario}-${label}-${cfg.target}-${i}-${Date.now()}.cpuprofile`
      writeFileSync(file, JSON.stringify(profile))
      return file
    })
  }
  return s
}

// ---------------------------------------------------------------- connect

async function connect () {
  const { connections: n, concurrency } = cfg
  const base = cfg.urls[0]
  const pid = cfg.pids[0]
  // Warm-up: code paths compiled and lazy modules loaded, so the RSS delta is the sockets'.
  const warm = []
  await pool(100, 50, async (i) => { warm.push(await openSocket(base, `w${i}`)) }, performance.now() + 30000)
  await closeAll(warm)
  await sleep(1000)
  const rssBefore = procRssKiB(pid)
  const sockets = []
  const s0 = await begin('connect')
  const failures = await pool(n, concurrency, async (i) => { sockets.push(await openSocket(base, `c${i}`)) }, performance.now() + cfg.openDeadlineMs)
  const s1 = await end()
  await sleep(cfg.settleMs)
  const rssAfter = procRssKiB(pid)
  // Sockets that died while idle count as failures too.
  const dropped = sockets.filter((ws) => ws.readyState !== WebSocket.OPEN).length
  const cpu = cpuBetween(s0, s1)
  await closeAll(sockets)
  return {
    connections: n,
    opened: sockets.length - dropped,
    failures: countOf(failures) + dropped,
    failureReasons: dropped > 0 ? { ...failures, 'closed while idle': dropped } : failures,
    openSeconds: cpu.wallSeconds,
    opensPerSecond: sockets.length / cpu.wallSeconds,
    rssBeforeKiB: rssBefore,
    rssAfterKiB: rssAfter,
    rssPerConnectionKiB: (rssAfter - rssBefore) / Math.max(1, sockets.length),
    serverCpuPerOpenUs: cpu.serverCpuUs / Math.max(1, sockets.length),
    cpu
  }
}

// ---------------------------------------------------------------- memory

/** Polls `cond` every 50 ms until it holds or `ms` passed; whether it held. */
async function until (cond, ms) {
  const deadline = performance.now() + ms
  while (!cond()) {
    if (performance.now() > deadline) return false
    await sleep(50)
  }
  return true
}

/**
 * Sockets that each subscribe to K users: their own, and the K-1 next ones (mod N), who shared
 * with them. The snapshot (cfg.snapshotDir) is asked for with SIGUSR2, which the bench set up as
 * the server's --heapsnapshot-signal; it is complete once the server answers again (V8 writes it
 * on the main thread) and its size stops changing.
 */
async function memory () {
  const { connections: n, subscriptions: k, concurrency } = cfg
  const base = cfg.urls[0]
  const pid = cfg.pids[0]
  const users = Array.from({ length: n }, (_, i) => `m${i}`)
  const watched = (i) => Array.from({ length: k - 1 }, (_, j) => users[(i + 1 + j) % n])
  // The grants, as sharing writes them: the owner's viewers set and the viewer's watching set.
  const redis = new Redis(cfg.redisUrl)
  for (let i0 = 0; i0 < n; i0 += 1000) {
    const p = redis.pipeline()
    for (let i = i0; i < Math.min(n, i0 + 1000); i++) {
      const others = watched(i)
      if (others.length === 0) continue
      p.sadd(userKeys(cfg.prefix, users[i]).watching, ...others)
      for (const o of others) p.sadd(userKeys(cfg.prefix, o).viewers, users[i])
    }
    await p.exec()
  }
  redis.disconnect()

  // Warm-up, as in connect: the subscribe path compiled before the RSS baseline.
  const warm = []
  await pool(100, 50, async (i) => {
    const ws = await openSocket(base, `w${i}`)
    warm.push(ws)
    await new Promise((resolve) => { ws.once('message', resolve); ws.send(JSON.stringify({ type: 'subscribe', userId: `w${i}` })) })
  }, performance.now() + 30000)
  await closeAll(warm)
  await sleep(1000)
  const rss = { beforeKiB: procRssKiB(pid) }

  let subscribed = 0
  const failures = {}
  const sockets = []
  /** Answers (subscribed or error) each socket got so far. */
  const answers = new Uint32Array(n)
  const opened = await pool(n, concurrency, async (i) => {
    const ws = await openSocket(base, users[i])
    ws.on('message', (data) => {
      const f = JSON.parse(data)
      if (f.type === 'subscribed') subscribed++
      else if (f.type === 'error') failures[f.code] = (failures[f.code] ?? 0) + 1
      else return
      answers[i]++
    })
    sockets[i] = ws
  }, performance.now() + cfg.openDeadlineMs)
  if (countOf(opened) > 0) throw new Error(`memory: ${countOf(opened)} of ${n} sockets failed to open: ${JSON.stringify(opened)}`)
  await sleep(cfg.settleMs)
  rss.idleKiB = procRssKiB(pid)

  // One step: each socket sends its subscribes and waits for their answers, `concurrency` sockets at a time.
  const step = async (usersOf, ms) => {
    const stepFailures = await pool(n, concurrency, async (i) => {
      const list = usersOf(i)
      const want = answers[i] + list.length
      for (const userId of list) sockets[i].send(JSON.stringify({ type: 'subscribe', userId }))
      if (!await until(() => answers[i] >= want, 30000)) throw new Error('no answer to a subscribe within 30 s')
    }, performance.now() + ms)
    return countOf(stepFailures)
  }
  const unanswered1 = await step((i) => [users[i]], 120000)
  await sleep(cfg.settleMs)
  rss.oneKiB = procRssKiB(pid)
  const unansweredK = await step(watched, 300000)
  await sleep(cfg.settleMs)
  rss.manyKiB = procRssKiB(pid)
  // And after the server has been idle a while: what the same sockets hold at rest, once V8 has
  // had the chance to collect and give back what the subscribe burst left (it may not take it).
  await sleep(cfg.quietMs)
  rss.quietKiB = procRssKiB(pid)

  let snapshot = null
  if (cfg.snapshotDir !== undefined) {
    const before = new Set(readdirSync(cfg.snapshotDir))
    const t0 = performance.now()
    process.kill(pid, 'SIGUSR2')
    const fresh = () => readdirSync(cfg.snapshotDir).find((f) => f.endsWith('.heapsnapshot') && !before.has(f))
    if (!await until(() => fresh() !== undefined, 60000)) throw new Error('memory: no heap snapshot appeared within 60 s of SIGUSR2')
    const file = `${cfg.snapshotDir}/${fresh()}`
    // Written on the main thread: once /health answers and the size holds, it is complete.
    let size = -1
    for (;;) {
      await fetch(`${base}/health`)
      const now = statSync(file).size
      if (now === size) break
      size = now
      await sleep(500)
    }
    // Taken after the RSS figures: writing it grows the process (V8 builds the graph in native memory).
    snapshot = { file, bytes: size, seconds: (performance.now() - t0) / 1000 }
  }
  const open = sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length
  await closeAll(sockets)
  const per = (kib) => (kib - rss.beforeKiB) / n
  return {
    connections: n,
    subscriptions: k,
    opened: open,
    subscribed,
    subscribeWanted: n * k,
    subscribeFailures: n * k - subscribed,
    failureReasons: { ...failures, ...(unanswered1 + unansweredK > 0 ? { 'sockets with a subscribe unanswered': unanswered1 + unansweredK } : {}) },
    rssKiB: rss,
    rssPerSocketKiB: { idle: per(rss.idleKiB), one: per(rss.oneKiB), many: per(rss.manyKiB), quiet: per(rss.quietKiB) },
    snapshot
  }
}

// ---------------------------------------------------------------- query

async function query () {
  const { connections: c, inFlight: d } = cfg
  const base = cfg.urls[0]
  const redis = new Redis(cfg.redisUrl)
  const users = Array.from({ length: c }, (_, i) => `q${i}`)
  const expected = users.map((_, i) => String(40 + (i % 150)))
  await redis.mset(...users.flatMap((u, i) => [legacyKey(cfg.prefix, u), expected[i]]))
  redis.disconnect()

  const sockets = []
  const failures = await pool(c, cfg.concurrency, async (i) => { sockets[i] = await openSocket(base, users[i]) }, performance.now() + 60000)
  if (countOf(failures) > 0) throw new Error(`query: ${countOf(failures)} sockets failed to open: ${JSON.stringify(failures)}`)

  let running = true
  let measuring = false
  let done = 0
  let wrong = 0
  let inFlight = 0
  const latencies = []
  sockets.forEach((ws, i) => {
    const sentAt = []
    const frame = users[i]
    const want = Buffer.from(expected[i])
    ws.on('message', (data) => {
      const now = performance.now()
      const t = sentAt.shift()
      inFlight--
      if (!want.equals(data)) wrong++
      if (measuring) {
        done++
        latencies.push(now - t)
      }
      if (running) {
        sentAt.push(performance.now())
        inFlight++
        ws.send(frame)
      }
    })
    for (let k = 0; k < d; k++) {
      sentAt.push(performance.now())
      inFlight++
      ws.send(frame)
    }
  })
  await sleep(cfg.warmupMs)
  const wrongBefore = wrong
  measuring = true
  const s0 = await begin('query')
  const windowStart = Date.now()
  await sleep(cfg.durationMs)
  const s1 = await end()
  const windowEnd = Date.now()
  measuring = false
  running = false
  const measured = done
  const deadline = performance.now() + 5000
  while (inFlight > 0 && performance.now() < deadline) await sleep(10)
  const cpu = cpuBetween(s0, s1)
  await closeAll(sockets)
  const lat = percentiles(latencies)
  return {
    connections: c,
    inFlight: d,
    roundTrips: measured,
    roundTripsPerSecond: measured / cpu.wallSeconds,
    latencyMs: lat,
    wrongReplies: wrong,
    wrongRepliesInWindow: wrong - wrongBefore,
    unanswered: inFlight,
    serverCpuPerRoundTripUs: cpu.serverCpuUs / Math.max(1, measured),
    cpu,
    window: { startEpochMs: windowStart, endEpochMs: windowEnd }
  }
}

// ---------------------------------------------------------------- push

/**
 * U users × S subscribers spread over the instances, kept open across steps (the sweep steps
 * the rate on the same sockets). Every reading the generator posts is recorded with the step that
 * sent it, so a frame of one step arriving during another is counted against its own step.
 */
async function openPushRig (u, s, userPrefix) {
  const users = Array.from({ length: u }, (_, i) => `${userPrefix}${i}`)
  const rig = {
    users,
    subscribers: s,
    sockets: new Array(u * s).fill(null),
    /** `${userId}|${ts}|${bpm}` → { step, sentHr, got, acked, seen: one byte per subscriber }. */
    readings: new Map(),
    /** The step being measured, or null between steps. */
    current: null,
    unexpected: 0,
    seq: new Array(u).fill(0),
    lastTs: new Array(u).fill(0)
  }
  const subscribe = async (idx) => {
    const userIdx = idx % u
    const subIdx = Math.floor(idx / u)
    const userId = users[userIdx]
    const ws = await openSocket(cfg.urls[subIdx % cfg.urls.length], userId)
    rig.sockets[idx] = ws
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('subscribed not received')), 20000)
      ws.on('message', (data) => {
        const now = performance.now()
        const wall = Date.now()
        const f = JSON.parse(data)
        if (f.type === 'subscribed') { clearTimeout(timer); resolve(); return }
        if (f.type === 'status') return
        const r = f.type === 'reading' && f.userId === userId ? rig.readings.get(`${f.userId}|${f.ts}|${f.bpm}`) : undefined
        if (r === undefined) {
          rig.unexpected++
          if (rig.current !== null) rig.current.unexpected++
          return
        }
        const st = r.step
        if (r.seen[subIdx] === 1) {
          if (st.closed) st.duplicatesAfterDrain++
          else st.duplicates++
          return
        }
        r.seen[subIdx] = 1
        r.got++
        if (st.closed) { st.deliveriesAfterDrain++; return }
        st.deliveries++
        if (st.firstDeliveryAt === 0) st.firstDeliveryAt = now
        st.lastDeliveryAt = now
        st.latMs.push(wall - f.ts)
        st.latHr.push(now - r.sentHr)
      })
      ws.send(JSON.stringify({ type: 'subscribe', userId }))
    })
  }
  rig.subscribe = subscribe
  const failures = await pool(u * s, cfg.concurrency, subscribe, performance.now() + 90000)
  if (countOf(failures) > 0) throw new Error(`push: ${countOf(failures)} subscribers failed: ${JSON.stringify(failures)}`)
  rig.agent = new http.Agent({ keepAlive: true, maxSockets: 32 })
  return rig
}

/** Opens again the subscribers a server closed (ours closes a socket that does not read); how many. */
async function reopenClosed (rig) {
  const closed = []
  rig.sockets.forEach((ws, idx) => { if (ws === null || ws.readyState !== WebSocket.OPEN) closed.push(idx) })
  if (closed.length === 0) return 0
  const failures = await pool(closed.length, cfg.concurrency, (i) => rig.subscribe(closed[i]), performance.now() + 90000)
  if (countOf(failures) > 0) throw new Error(`push: ${countOf(failures)} of ${closed.length} closed subscribers failed to reopen: ${JSON.stringify(failures)}`)
  return closed.length
}

/** `rate` readings/s through HTTP ingest for `durationMs`, then the drain; the step's figures. */
async function pushStep (rig, rate, { durationMs, drainMs, quietMs }) {
  const { users, subscribers: s } = rig
  const u = users.length
  const st = {
    closed: false,
    deliveries: 0,
    duplicates: 0,
    unexpected: 0,
    deliveriesAfterDrain: 0,
    duplicatesAfterDrain: 0,
    firstDeliveryAt: 0,
    lastDeliveryAt: 0,
    latMs: [],
    latHr: [],
    records: []
  }
  rig.current = st
  const targets = cfg.urls.map((b) => new URL(b))
  let sent = 0
  let acked = 0
  let ingestErrors = 0
  let pending = 0
  let firstAckAt = 0
  let lastAckAt = 0
  const ingestLat = []
  const post = (i) => {
    const userIdx = i % u
    const userId = users[userIdx]
    const n = rig.seq[userIdx]++
    const bpm = 20 + (n % 231)
    const target = targets[i % targets.length]
    // Strictly increasing per user: two readings of one user in the same millisecond (a late
    // timer tick sends a burst) would be one reading twice to a server that drops duplicates.
    const ts = Math.max(Date.now(), rig.lastTs[userIdx] + 1)
    rig.lastTs[userIdx] = ts
    const r = { step: st, sentHr: performance.now(), got: 0, acked: false, seen: new Uint8Array(s) }
    rig.readings.set(`${userId}|${ts}|${bpm}`, r)
    st.records.push(r)
    const body = `{"bpm":${bpm},"ts":${ts}}`
    pending++
    const req = http.request({
      agent: rig.agent,
      host: target.hostname,
      port: target.port,
      method: 'POST',
      path: `/heart/${userId}/readings`,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-api-key': cfg.apiKey }
    }, (res) => {
      res.resume()
      res.on('end', () => {
        pending--
        if (res.statusCode === 202) {
          acked++
          r.acked = true
          lastAckAt = performance.now()
          if (firstAckAt === 0) firstAckAt = lastAckAt
          ingestLat.push(lastAckAt - r.sentHr)
        } else ingestErrors++
      })
    })
    req.on('error', () => { pending--; ingestErrors++ })
    req.end(body)
  }

  const s0 = await begin('push')
  const start = performance.now()
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const elapsed = performance.now() - start
      const due = Math.min(Math.floor(elapsed * rate / 1000), Math.round(rate * durationMs / 1000))
      while (sent < due) post(sent++)
      if (elapsed >= durationMs) { clearInterval(timer); resolve() }
    }, 2)
  })
  const ingestSeconds = (performance.now() - start) / 1000
  // Drain: every answer in and every expected delivery in; a delivery still missing when nothing
  // has moved for `quietMs` (or at the hard deadline) counts as lost, however late it might come.
  const deadline = performance.now() + drainMs
  let progress = -1
  let movedAt = performance.now()
  while (performance.now() < deadline && (pending > 0 || st.deliveries < acked * s)) {
    const now = performance.now()
    if (st.deliveries + acked + ingestErrors !== progress) { progress = st.deliveries + acked + ingestErrors; movedAt = now }
    if (now - movedAt > quietMs) break
    await sleep(10)
  }
  const s1 = await end()
  st.closed = true
  rig.current = null
  let lost = 0
  for (const r of st.records) if (r.acked) lost += s - r.got
  const cpu = cpuBetween(s0, s1)
  const deliveries = st.deliveries
  const latencyMs = percentiles(st.latMs)
  const latencyHrMs = percentiles(st.latHr)
  // A closed step only counts frames from here on: let the sweep's later steps have the memory.
  st.latMs = st.latHr = st.records = null
  return {
    st,
    result: {
      users: u,
      subscribers: s,
      sockets: u * s,
      instances: cfg.urls.length,
      readingsPerSecondTarget: rate,
      readingsSent: sent,
      readingsAcked: acked,
      ingestErrors,
      ingestSeconds,
      // Acknowledged readings and deliveries per second between the first and the last of them:
      // below the rate when answers or frames fall further behind as the step goes on.
      readingsPerSecond: perSecondOver(acked, 1, firstAckAt, lastAckAt),
      deliveredPerSecond: perSecondOver(deliveries, s, st.firstDeliveryAt, st.lastDeliveryAt),
      expectedDeliveries: acked * s,
      deliveries,
      deliveriesPerSecond: deliveries / ingestSeconds,
      lost,
      duplicates: st.duplicates,
      unexpected: st.unexpected,
      deliverySpanSeconds: (st.lastDeliveryAt - st.firstDeliveryAt) / 1000,
      latencyMs,
      latencyHrMs,
      ingestHttpMs: percentiles(ingestLat),
      serverCpuPerDeliveryUs: cpu.serverCpuUs / Math.max(1, deliveries),
      cpu
    }
  }
}

/** Events per second from the first batch of `batch` to the last event (the first batch starts the clock). */
function perSecondOver (count, batch, firstAt, lastAt) {
  if (count <= batch || lastAt <= firstAt) return 0
  return (count - batch) / ((lastAt - firstAt) / 1000)
}

async function closeRig (rig) {
  await closeAll(rig.sockets.filter((ws) => ws !== null))
  rig.agent.destroy()
}

async function push () {
  const rig = await openPushRig(cfg.users, cfg.subscribers, 'p')
  await sleep(500)
  const { result } = await pushStep(rig, cfg.rate, cfg)
  await closeRig(rig)
  return result
}

/**
 * The sweep: the push set-up opened once, then one step per rate in `cfg.rates`, each measured
 * as `push` measures its one. Stepped by run.mjs over IPC (`{ step: i }` starts step i, so it
 * can interleave two targets) or, run by hand, one step after the other with `pauseMs` between.
 * Frames of a step that arrive after its drain are counted on that step at the end
 * (`deliveriesAfterDrain`, `duplicatesAfterDrain`), never on the step running when they arrive.
 */
async function sweep () {
  const rig = await openPushRig(cfg.users, cfg.subscribers, cfg.userPrefix ?? 'p')
  // Not measured: the first step would otherwise pay for the servers' and the generator's JIT.
  await pushStep(rig, cfg.rates[0], { ...cfg, durationMs: Math.min(2000, cfg.durationMs) })
  const stepped = cfg.stepped === true && process.send !== undefined
  const orders = []
  if (stepped) process.on('message', (m) => { if (typeof m?.step === 'number') orders.push(m.step) })
  if (stepped) process.send({ ready: true })
  const steps = []
  for (let i = 0; i < cfg.rates.length; i++) {
    if (stepped) { while (!orders.includes(i)) await sleep(5) } else await sleep(cfg.pauseMs)
    const reopened = await reopenClosed(rig)
    const { st, result } = await pushStep(rig, cfg.rates[i], cfg)
    result.rate = cfg.rates[i]
    result.reopenedBefore = reopened
    steps.push({ st, result })
    if (stepped) process.send({ step: i, result })
  }
  await sleep(cfg.pauseMs)
  await closeRig(rig)
  return {
    steps: steps.map(({ st, result }) => ({ ...result, deliveriesAfterDrain: st.deliveriesAfterDrain, duplicatesAfterDrain: st.duplicatesAfterDrain })),
    unexpected: rig.unexpected
  }
}

/** Sends `rate` readings/s for `durationMs`, round-robin over users, through `send(userIdx, body)` → Promise<boolean>. */
async function paced (users, rate, durationMs, send, label) {
  const seq = new Array(users).fill(0)
  // Each reading at the time it is sent, as a strap's are (unique per user: at least 1 ms after the
  // user's previous one). Old ts would keep a user with the offline rule perpetually overdue, so
  // every reading would close an offline episode the sweep opens again.
  const lastTs = new Array(users).fill(0)
  let sent = 0
  let acked = 0
  let failed = 0
  let pending = 0
  const total = Math.round(rate * durationMs / 1000)
  const s0 = await begin(label)
  const start = performance.now()
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const due = Math.min(Math.floor((performance.now() - start) * rate / 1000), total)
      while (sent < due) {
        const u = sent % users
        const n = seq[u]++
        const ts = lastTs[u] = Math.max(Date.now(), lastTs[u] + 1)
        pending++
        send(u, { bpm: 60 + (n % 60), ts }).then((ok) => { if (ok) acked++; else failed++ }, () => { failed++ }).finally(() => { pending-- })
        sent++
      }
      if (sent >= total) { clearInterval(timer); resolve() }
    }, 2)
  })
  const deadline = performance.now() + 30000
  while (pending > 0 && performance.now() < deadline) await sleep(5)
  const s1 = await end()
  return readingFigures([{ sent, acked, failed, cpu: cpuBetween(s0, s1) }])
}

/**
 * The figures of one way in from its windows of `paced` (one, or the halves of a way measured
 * twice): counts and CPU summed over the windows, then per reading.
 */
function readingFigures (windows) {
  const sum = (f) => windows.reduce((s, w) => s + f(w), 0)
  const wallSeconds = sum((w) => w.cpu.wallSeconds)
  const weighted = (f) => sum((w) => f(w) * w.cpu.wallSeconds) / wallSeconds
  const acked = sum((w) => w.acked)
  const serverCpuUs = sum((w) => w.cpu.serverCpuUs)
  const redisUs = sum((w) => w.cpu.redisCpuPercent / 100 * w.cpu.wallSeconds * 1e6)
  const cpu = {
    wallSeconds,
    serverCpuUs,
    serverCpuPercent: 100 * serverCpuUs / (wallSeconds * 1e6),
    redisCpuPercent: weighted((w) => w.cpu.redisCpuPercent),
    generatorCpuPercent: weighted((w) => w.cpu.generatorCpuPercent),
    coreBusyPercent: windows[0].cpu.coreBusyPercent.map((_, i) => weighted((w) => w.cpu.coreBusyPercent[i]))
  }
  for (const key of ['othersOnServerCorePercent', 'othersOnLoadCorePercent']) {
    if (windows[0].cpu[key] !== undefined) cpu[key] = weighted((w) => w.cpu[key])
  }
  return {
    sent: sum((w) => w.sent),
    acked,
    failed: sum((w) => w.failed),
    readingsPerSecond: acked / wallSeconds,
    serverCpuPerReadingUs: serverCpuUs / Math.max(1, acked),
    redisCpuPerReadingUs: redisUs / Math.max(1, acked),
    cpu,
    windows: windows.length
  }
}

async function ingest () {
  const { users: u, rate, durationMs } = cfg
  const base = cfg.urls[0]
  const target = new URL(base)
  const users = Array.from({ length: u }, (_, i) => `i${i}`)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 })
  const request = (method, path, headers, body) => new Promise((resolve, reject) => {
    const req = http.request({ agent, host: target.hostname, port: target.port, method, path, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers } }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }))
    })
    req.on('error', reject)
    req.end(body)
  })
  const post = (u, key, reading) => request('POST', `/heart/${users[u]}/readings`, { 'x-api-key': key }, JSON.stringify(reading)).then((r) => r.status === 202)

  // Each user's device key, made by the user itself.
  const deviceKeys = []
  for (const userId of users) {
    const r = await request('POST', '/devices', { authorization: `Bearer ${tokenOf(userId)}` }, '{"name":"bench"}')
    if (r.status !== 201) throw new Error(`ingest: POST /devices answered ${r.status}`)
    deviceKeys.push(JSON.parse(r.body).key)
  }

  // Each user's own socket, publishing with a reqId and waiting for its published.
  const sockets = await Promise.all(users.map((userId) => openSocket(base, userId)))
  const waiting = sockets.map(() => new Map())
  const listen = (ws, i) => ws.on('message', (data) => {
    const f = JSON.parse(data)
    const w = waiting[i].get(f.reqId)
    if (w === undefined) return
    waiting[i].delete(f.reqId)
    w(f.type === 'published')
  })
  sockets.forEach(listen)
  let reqIds = 0
  const publish = (u, reading) => new Promise((resolve) => {
    const reqId = ++reqIds
    waiting[u].set(reqId, resolve)
    sockets[u].send(JSON.stringify({ type: 'publish', readings: [reading], reqId }))
  })

  // The alert rules are a user's own: a second set of users, with their own sockets, has them on.
  const ruled = Array.from({ length: u }, (_, i) => `r${i}`)
  for (const userId of ruled) {
    const r = await request('PUT', `/heart/${userId}/alert-rules`, { authorization: `Bearer ${tokenOf(userId)}` }, '{"high":200,"low":30,"sustainS":10,"offline":true}')
    if (r.status !== 200) throw new Error(`ingest: PUT alert-rules answered ${r.status}`)
  }
  const ruledSockets = await Promise.all(ruled.map((userId) => openSocket(base, userId)))
  sockets.push(...ruledSockets)
  ruledSockets.forEach((ws, i) => { waiting.push(new Map()); listen(ws, u + i) })

  const ways = {
    service: (i, r) => post(i, cfg.apiKey, r),
    device: (i, r) => post(i, deviceKeys[i], r),
    publish,
    // The reference: no ts (the server stamps it, and a server-stamped reading skips the duplicate check), no rules.
    reference: (i, r) => publish(i, { bpm: r.bpm }),
    publishWithRules: (i, r) => publish(u + i, r)
  }
  const order = Object.keys(ways)
  // Warm-up, not measured: the first path measured would otherwise pay for the JIT and connection set-up.
  await paced(u, rate, Math.min(2000, durationMs), ways.service)
  // Each way twice, for half the time, in the order A B C D E E D C B A: a drift over the run
  // (the heap, history growing) weighs on every way alike instead of on the last ones. Profiled: the first half.
  const halves = Object.fromEntries(order.map((k) => [k, []]))
  for (const [i, way] of [...order, ...[...order].reverse()].entries()) {
    halves[way].push(await paced(u, rate, Math.round(durationMs / 2), ways[way], i < order.length ? way : undefined))
  }
  const result = { users: u, readingsPerSecondTarget: rate }
  for (const way of order) result[way] = readingFigures(halves[way])
  result.rulesCostPercent = 100 * (result.publishWithRules.serverCpuPerReadingUs + result.publishWithRules.redisCpuPerReadingUs) /
    (result.publish.serverCpuPerReadingUs + result.publish.redisCpuPerReadingUs) - 100
  const cost = (v) => v.serverCpuPerReadingUs + v.redisCpuPerReadingUs
  result.checkAndRulesCostPercent = 100 * cost(result.publishWithRules) / cost(result.reference) - 100
  result.failedTotal = result.service.failed + result.device.failed + result.publish.failed + result.publishWithRules.failed
  await closeAll(sockets)
  agent.destroy()
  return result
}

// ---------------------------------------------------------------- main

const scenarios = { connect, query, push, ingest, memory, sweep }
try {
  const result = await scenarios[cfg.scenario]()
  if (cfg.inspect !== undefined) result.profiles = windowProfiles
  if (process.send) process.send({ ok: true, result })
  else process.stdout.write(JSON.stringify(result, null, 2) + '\n')
} catch (err) {
  if (process.send) process.send({ ok: false, error: err.stack ?? String(err) })
  else process.stderr.write(`${err.stack}\n`)
  process.exitCode = 1
}
if (process.connected) process.disconnect()
setTimeout(() => process.exit(), 100).unref()
