/**
 * The `heart-gateway` CLI as users run it: the compiled dist/src/cli/main.js as a child process,
 * against the compiled server (embedded store) started by startServer().
 */
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { WebSocket } from 'ws'
import { HeartModel } from '../src/cli/heart-model.js'
import { Frames, ROOT, TEST_SECRET, bearer, build, eventually, freePort, openWebSocket, startServer, token, type ServerProcess } from './helper.js'

const KEY = 'cli-test-key'
const SERVER_ENV = { INGEST_API_KEYS: KEY }
const WAIT_MS = 10_000
const LINE = /^(\d\d):(\d\d):(\d\d)\.(\d{3}) {2}(\S+) {2}(\d+) bpm {2}(\d+-\d+)$/

type Env = Record<string, string | undefined>

/** The CLI's environment: nothing from this process but PATH, and the test secret unless replaced. */
function cliEnv (env: Env = {}): Env {
  return { PATH: process.env.PATH, JWT_SECRET: TEST_SECRET, ...env }
}

/** A running CLI process whose output is read line by line. */
class Cli {
  readonly stdout: string[] = []
  readonly stderr: string[] = []
  readonly exited: Promise<number | null>
  private waiters: Array<() => void> = []

  constructor (readonly proc: ChildProcess) {
    const lines = (into: string[]) => {
      let buffered = ''
      return (chunk: Buffer): void => {
        buffered += String(chunk)
        let nl
        while ((nl = buffered.indexOf('\n')) !== -1) {
          into.push(buffered.slice(0, nl))
          buffered = buffered.slice(nl + 1)
        }
        for (const w of this.waiters.splice(0)) w()
      }
    }
    proc.stdout?.on('data', lines(this.stdout))
    proc.stderr?.on('data', lines(this.stderr))
    this.exited = once(proc, 'close').then(([code]) => {
      for (const w of this.waiters.splice(0)) w()
      return code as number | null
    })
  }

  get output (): string {
    return `stdout:\n${this.stdout.join('\n')}\nstderr:\n${this.stderr.join('\n')}`
  }

  /** The first line (of stdout, or stderr) matching `re`; throws after `ms`, or if the process ends first. */
  async line (re: RegExp, from: 'stdout' | 'stderr' = 'stdout', ms = WAIT_MS): Promise<string> {
    const deadline = Date.now() + ms
    for (;;) {
      const found = this[from].find((l) => re.test(l))
      if (found !== undefined) return found
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) throw new Error(`exited before ${re} appeared\n${this.output}`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no line matching ${re} within ${ms} ms\n${this.output}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
  }

  async exit (ms = WAIT_MS): Promise<number | null> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`still running after ${ms} ms\n${this.output}`)), ms) })
    try {
      return await Promise.race([this.exited, timeout])
    } finally {
      clearTimeout(timer)
    }
  }
}

function start (tt: Test, args: string[], env: Env = {}, cwd = ROOT): Cli {
  const proc = spawn(process.execPath, [join(ROOT, 'dist/src/cli/main.js'), ...args], { cwd, env: cliEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
  const cli = new Cli(proc)
  tt.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL')
      await cli.exited
    }
  })
  return cli
}

/** Runs a command to its end. */
async function run (tt: Test, args: string[], env: Env = {}, ms = WAIT_MS, cwd = ROOT): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const cli = start(tt, args, env, cwd)
  const code = await cli.exit(ms)
  return { code, stdout: cli.stdout.join('\n'), stderr: cli.stderr.join('\n') }
}

interface Reading { id: string, bpm: number, ts: number }

async function history (server: ServerProcess, userId: string): Promise<Reading[]> {
  const res = await fetch(`${server.url}/heart/${userId}/readings?limit=1000`, {
    headers: { authorization: `Bearer ${token(userId)}` },
    signal: AbortSignal.timeout(WAIT_MS)
  })
  if (res.status !== 200) throw new Error(`history answered ${res.status}: ${await res.text()}`)
  return ((await res.json()) as { readings: Reading[] }).readings
}

async function ingest (url: string, userId: string, bpm: number): Promise<string> {
  const res = await fetch(`${url}/heart/${userId}/readings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY },
    body: JSON.stringify({ bpm }),
    signal: AbortSignal.timeout(WAIT_MS)
  })
  if (res.status !== 202) throw new Error(`ingest answered ${res.status}: ${await res.text()}`)
  return ((await res.json()) as { ids: string[] }).ids[0]
}

function payload (jwt: string): { sub: string, exp: number, iat: number, iss?: string, aud?: string } {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString())
}

async function portClosed (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(false) })
    socket.once('error', () => resolve(true))
  })
}

t.test('token carries JWT_ISSUER and JWT_AUDIENCE when they are set, as a server with them requires', async (t) => {
  const env = { JWT_ISSUER: 'https://login.example', JWT_AUDIENCE: 'heart-app' }
  const { code, stdout } = await run(t, ['token', 'u1'], env)
  t.equal(code, 0)
  const jwt = stdout.trim()
  t.match(payload(jwt), { sub: 'u1', iss: env.JWT_ISSUER, aud: env.JWT_AUDIENCE })
  const app = await build(t, env)
  t.equal(app.tokens.verify(jwt).userId, 'u1', 'such a server accepts it')
})

t.test('against a running server', async (t) => {
  // Each subtest waits mostly on its CLI process starting: run a few at once.
  t.jobs = 4
  const server = await startServer(t, SERVER_ENV)

  t.test('token prints a JWT for the user that the server accepts, expiring after --ttl', async (t) => {
    const { code, stdout } = await run(t, ['token', 'u1', '--ttl', '120'])
    t.equal(code, 0)
    const jwt = stdout.trim()
    const claims = payload(jwt)
    t.equal(claims.sub, 'u1')
    t.ok(Math.abs(claims.exp - (Date.now() / 1000 + 120)) < 5, `exp is about now + 120 s (${claims.exp})`)
    const res = await fetch(`${server.url}/heart/u1/readings`, { headers: { authorization: `Bearer ${jwt}` }, signal: AbortSignal.timeout(WAIT_MS) })
    t.equal(res.status, 200, 'accepted as a Bearer token')
  })

  t.test('token keeps the original `npm run token -- <userId> <ttl>` form', async (t) => {
    const { code, stdout } = await run(t, ['token', 'u1', '60'])
    t.equal(code, 0)
    t.ok(Math.abs(payload(stdout.trim()).exp - (Date.now() / 1000 + 60)) < 5)
  })

  t.test('token without a secret says where one comes from', async (t) => {
    const cwd = await mkdtemp(join(tmpdir(), 'hg-cli-'))
    t.teardown(() => rm(cwd, { recursive: true, force: true }))
    const cli = start(t, ['token', 'u1'], { JWT_SECRET: undefined }, cwd)
    t.equal(await cli.exit(), 1)
    t.match(cli.stderr.join('\n'), /JWT_SECRET is not set and \.heart-gateway\/dev-jwt-secret does not exist/)
  })

  t.test('send posts a reading: exit 0, the 202 body printed, the reading in history', async (t) => {
    const { code, stdout, stderr } = await run(t, ['send', 'u1', '72', '--url', server.url, '--key', KEY])
    t.equal(code, 0, stderr)
    const body = JSON.parse(stdout)
    t.match(body, { accepted: 1, ids: [/^\d+-\d+$/] })
    t.match(await history(server, 'u1'), [{ id: body.ids[0], bpm: 72 }])
  })

  t.test('send takes the key from INGEST_API_KEY', async (t) => {
    const { code, stdout } = await run(t, ['send', 'u1b', '65', '--url', server.url], { INGEST_API_KEY: KEY })
    t.equal(code, 0)
    t.match(JSON.parse(stdout), { accepted: 1 })
  })

  t.test('send with a wrong key fails with the server\'s message', async (t) => {
    const { code, stdout, stderr } = await run(t, ['send', 'u1', '72', '--url', server.url, '--key', 'wrong'])
    t.equal(code, 1)
    t.equal(stdout, '')
    t.match(stderr, 'heart-gateway send: 401 Unauthorized: missing or unknown x-api-key')
  })

  t.test('send with an impossible bpm fails with the validation message', async (t) => {
    const { code, stderr } = await run(t, ['send', 'u1', '300', '--url', server.url, '--key', KEY])
    t.equal(code, 1)
    t.match(stderr, /400 Bad Request: body\/bpm must be <= 250/)
  })

  t.test('send without a key, to no server, or with bad arguments says so', async (t) => {
    const noKey = await run(t, ['send', 'u1', '72', '--url', server.url])
    t.equal(noKey.code, 1)
    t.match(noKey.stderr, /no API key: pass --key or set INGEST_API_KEY/)
    const down = await run(t, ['send', 'u1', '72', '--url', `http://127.0.0.1:${await freePort()}`, '--key', KEY])
    t.equal(down.code, 1)
    t.match(down.stderr, /cannot reach http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/)
    const usage = await run(t, ['send', 'u1'])
    t.equal(usage.code, 2)
    t.match(usage.stderr, /usage: heart-gateway send <userId> <bpm>/)
  })

  t.test('watch prints readings posted after it starts, one line each', async (t) => {
    const cli = start(t, ['watch', 'w1', '--url', `ws://127.0.0.1:${server.port}`])
    await cli.line(/^watching w1 at ws:\/\/127\.0\.0\.1:\d+ \(no reading yet\)/, 'stderr')
    const id1 = await ingest(server.url, 'w1', 81)
    const id2 = await ingest(server.url, 'w1', 83)
    await ingest(server.url, 'other', 99)
    const line1 = await cli.line(new RegExp(`  w1  81 bpm  ${id1}$`))
    t.match(line1, LINE, 'HH:MM:SS.mmm  user  bpm  id')
    await cli.line(new RegExp(`  w1  83 bpm  ${id2}$`))
    t.equal(cli.stdout.length, 2, 'nothing else on stdout (other users are not printed)')
    cli.proc.kill('SIGINT')
    t.equal(await cli.exit(), 0, 'Ctrl-C stops it cleanly')
  })

  t.test('watch --since first replays what came after that id', async (t) => {
    const first = await ingest(server.url, 'w2', 70)
    const second = await ingest(server.url, 'w2', 71)
    const cli = start(t, ['watch', 'w2', '--url', server.url, '--since', first])
    await cli.line(new RegExp(`  w2  71 bpm  ${second}$`))
    t.notOk(cli.stdout.some((l) => l.includes(first)), 'not the reading at since itself')
    cli.proc.kill('SIGTERM')
    t.equal(await cli.exit(), 0)
  })

  t.test('watch exits with a message when the token expires (4001)', async (t) => {
    // Long enough for the CLI to start and connect on a busy machine; before that, the handshake would refuse it instead.
    const cli = start(t, ['watch', 'w3', '--url', `ws://127.0.0.1:${server.port}`, '--token', token('w3', { ttlS: 6 })])
    await cli.line(/^watching w3/, 'stderr')
    // The server closes with 4001 at exp + JWT_CLOCK_TOLERANCE_S (5 s by default): up to 11 s after the token was made.
    t.equal(await cli.exit(11_000 + WAIT_MS), 1)
    t.match(cli.stderr.join('\n'), /heart-gateway watch: token expired \(4001\): get a new one \(heart-gateway token w3\)/)
  })

  t.test('watch with a refused token shows the server\'s message', async (t) => {
    const cli = start(t, ['watch', 'w4', '--url', `ws://127.0.0.1:${server.port}`, '--token', token('w4', { secret: 'another-secret-of-at-least-32-characters' })])
    t.equal(await cli.exit(), 1)
    t.match(cli.stderr.join('\n'), 'heart-gateway watch: handshake refused: 401 Unauthorized: invalid token')
  })

  t.test('simulate --users 3 --rate 20 --duration 2 sends about 40 plausible readings', async (t) => {
    const { code, stdout, stderr } = await run(t, ['simulate', '--users', '3', '--rate', '20', '--duration', '2', '--url', server.url, '--key', KEY, '--prefix', 's20-'], {}, 20_000)
    t.equal(code, 0, stderr)
    const summary = /sent (\d+) readings for 3 users in ([\d.]+) s \(([\d.]+) readings\/s\), (\d+) errors$/.exec(stdout)
    t.ok(summary, `summary line: ${stdout}`)
    const [, sent, , , errors] = summary ?? []
    t.ok(Number(sent) >= 36 && Number(sent) <= 44, `about 40 sent (${sent})`)
    t.equal(Number(errors), 0, 'no errors')
    let total = 0
    for (const user of ['s20-1', 's20-2', 's20-3']) {
      const readings = await history(server, user)
      total += readings.length
      t.ok(readings.length >= 10, `${user} sent its share (${readings.length})`)
      const bpms = readings.map((r) => r.bpm)
      t.ok(bpms.every((b) => Number.isInteger(b) && b >= 20 && b <= 250), `${user}: integers within 20-250 (${bpms.join(' ')})`)
      const jumps = bpms.slice(1).map((b, i) => Math.abs(b - bpms[i]))
      t.ok(Math.max(...jumps) <= 15, `${user}: no jump over 15 bpm`)
      const gaps = readings.slice(1).map((r, i) => r.ts - readings[i].ts)
      t.ok(gaps.every((g) => g >= 140 && g <= 160), `${user}: one reading every 150 ms (${gaps.join(' ')})`)
    }
    t.equal(total, Number(sent), 'every reading counted as sent is in history')
  })

  t.test('simulate --via socket: each user publishes over its own socket with its own token, and everything sent is stored', async (t) => {
    const { code, stdout, stderr } = await run(t, ['simulate', '--via', 'socket', '--users', '3', '--rate', '20', '--duration', '2', '--url', server.url, '--prefix', 'sock-'], {}, 20_000)
    t.equal(code, 0, stderr)
    const summary = /sent (\d+) readings for 3 users in ([\d.]+) s \(([\d.]+) readings\/s\), (\d+) errors$/.exec(stdout)
    t.ok(summary, `summary line: ${stdout}`)
    const [, sent, , , errors] = summary ?? []
    t.ok(Number(sent) >= 30 && Number(sent) <= 44, `about 40 sent (${sent})`)
    t.equal(Number(errors), 0, 'no errors')
    let total = 0
    for (const user of ['sock-1', 'sock-2', 'sock-3']) {
      const readings = await history(server, user)
      total += readings.length
      t.ok(readings.length >= 8, `${user} published its share (${readings.length})`)
    }
    t.equal(total, Number(sent), 'every reading counted as sent is in history')
    const bad = await run(t, ['simulate', '--via', 'pigeon', '--url', server.url], {}, 10_000)
    t.equal(bad.code, 2)
    t.match(bad.stderr, /--via must be http or socket/)
  })

  t.test('simulate batches a user\'s readings when the rate is high', async (t) => {
    const before = server.logs.length
    const { code, stdout, stderr } = await run(t, ['simulate', '--users', '2', '--rate', '400', '--duration', '1', '--url', server.url, '--key', KEY, '--prefix', 'fast-'], {}, 20_000)
    t.equal(code, 0, stderr)
    const sent = Number(/sent (\d+) readings/.exec(stdout)?.[1])
    t.ok(sent >= 360 && sent <= 440, `about 400 sent (${sent})`)
    const requests = server.logs.slice(before).filter((l) => l.includes('incoming request') && l.includes('/heart/fast-1/readings')).length
    t.ok(requests > 0 && requests < 100, `fast-1: ${requests} requests for about 200 readings`)
    t.equal((await history(server, 'fast-1')).length + (await history(server, 'fast-2')).length, sent)
  })

  t.test('simulate stops on Ctrl-C with a summary', async (t) => {
    const cli = start(t, ['simulate', '--users', '2', '--rate', '10', '--url', server.url, '--key', KEY, '--prefix', 'int-'])
    // Readings arriving show it is running (and listening for the signal).
    t.ok(await eventually(async () => (await history(server, 'int-2')).length > 0, WAIT_MS, 50), 'it sends')
    cli.proc.kill('SIGINT')
    t.equal(await cli.exit(), 0)
    t.match(cli.stdout.join('\n'), /sent \d+ readings for 2 users in [\d.]+ s \([\d.]+ readings\/s\), 0 errors/)
  })

  t.test('simulate --episode high: normal readings, a run well above 120 for --episode-for, then normal again', async (t) => {
    const { code, stdout, stderr } = await run(t, ['simulate', '--users', '2', '--rate', '20', '--duration', '7', '--episode', 'high', '--episode-for', '2s', '--url', server.url, '--key', KEY, '--prefix', 'eph-'], {}, 30_000)
    t.equal(code, 0, stderr)
    t.match(stdout, /sent \d+ readings for 2 users .*, 0 errors$/)
    const runs = phases(await history(server, 'eph-1'), (bpm) => bpm > 120)
    t.same(runs.map((r) => r.crossed), [false, true, false], `normal, high, normal (${describe(runs)})`)
    const [before, episode, after] = runs
    t.ok(before.bpms.every((b) => b <= 100), 'at rest before it')
    t.ok(before.to - before.from >= 2500, `about 3 s of normal readings first (${before.to - before.from} ms)`)
    t.ok(episode.bpms.every((b) => b >= 140 && b <= 160), `around 150 during it: clear of 120 and of its hysteresis (${episode.bpms.join(' ')})`)
    t.ok(episode.bpms.length >= 18 && episode.bpms.length <= 21, `for 2 s at 10 Hz (${episode.bpms.length} readings)`)
    t.ok(after.bpms.every((b) => b <= 100), 'back at rest after it')
    t.match(stderr, /heart-gateway simulate: eph-1: high episode from \d\d:\d\d:\d\d\.\d{3}, readings around 150 bpm for 2 s/)
    t.match(stderr, /heart-gateway simulate: eph-1: episode over at \d\d:\d\d:\d\d\.\d{3}, back to normal/)
    t.ok((await history(server, 'eph-2')).every((r) => r.bpm <= 120), 'only the first user has it')
  })

  t.test('simulate --episode low --dropout: a run well below 45, then normal, then a gap of the dropout\'s length', async (t) => {
    const { code, stderr } = await run(t, ['simulate', '--users', '1', '--rate', '10', '--duration', '10', '--episode', 'low', '--episode-for', '1.5s', '--dropout', '1s', '--url', server.url, '--key', KEY, '--prefix', 'epl-'], {}, 30_000)
    t.equal(code, 0, stderr)
    const readings = await history(server, 'epl-1')
    const runs = phases(readings, (bpm) => bpm < 45)
    t.same(runs.map((r) => r.crossed), [false, true, false], `normal, low, normal (${describe(runs)})`)
    t.ok(runs[1].bpms.every((b) => b >= 34 && b <= 42), `around 38 during it (${runs[1].bpms.join(' ')})`)
    t.ok(runs[1].bpms.length >= 13 && runs[1].bpms.length <= 16, `for 1.5 s (${runs[1].bpms.length} readings)`)
    const gaps = readings.slice(1).map((r, i) => ({ ms: r.ts - readings[i].ts, at: r.ts })).filter((g) => g.ms > 150)
    t.equal(gaps.length, 1, `one gap (${gaps.map((g) => g.ms).join(' ')})`)
    t.ok(gaps[0].ms >= 1000 && gaps[0].ms <= 1200, `as long as the dropout (${gaps[0].ms} ms)`)
    t.ok(gaps[0].at - runs[1].to >= 3000, 'after the episode, with normal readings between')
    t.match(stderr, /epl-1: low episode from .*, readings around 38 bpm for 1\.5 s\n(.*\n)*.*epl-1: episode over at .*\n(.*\n)*.*epl-1: dropout from .*, no readings for 1 s\n(.*\n)*.*epl-1: readings again at .*, back to normal/)
  })

  t.test('simulate refuses a bad --episode or --dropout', async (t) => {
    const kind = await run(t, ['simulate', '--episode', 'fast', '--key', KEY])
    t.equal(kind.code, 2)
    t.match(kind.stderr, '--episode must be high or low, not "fast"')
    const dropout = await run(t, ['simulate', '--dropout', '20 seconds', '--key', KEY])
    t.equal(dropout.code, 2)
    t.match(dropout.stderr, '--dropout must be a duration like 20s, 1.5m or 500ms, not "20 seconds"')
    const alone = await run(t, ['simulate', '--episode-for', '10s', '--key', KEY])
    t.equal(alone.code, 2)
    t.match(alone.stderr, '--episode-for needs --episode high or --episode low')
  })

  t.test('simulate with a wrong key stops at once with the server\'s message', async (t) => {
    const { code, stderr } = await run(t, ['simulate', '--users', '2', '--rate', '10', '--url', server.url, '--key', 'wrong'])
    t.equal(code, 1)
    t.match(stderr, 'heart-gateway simulate: 401 Unauthorized: missing or unknown x-api-key')
  })
})

t.test('simulate --dropout: a watcher gets status offline, then online when the readings resume', async (t) => {
  const server = await startServer(t, { ...SERVER_ENV, OFFLINE_AFTER_MS: '1000' })
  const watcher = await openWebSocket(t, `ws://127.0.0.1:${server.port}/heart/current`, { headers: bearer('drop-1'), withStatus: true })
  t.match(await watcher.ask({ type: 'subscribe', userId: 'drop-1' }), { type: 'subscribed', state: 'offline', lastTs: null }, 'no readings yet')
  const cli = start(t, ['simulate', '--users', '1', '--rate', '10', '--duration', '8', '--dropout', '2.5s', '--url', server.url, '--key', KEY, '--prefix', 'drop-'])
  const frames: any[] = []
  const next = async (type: string): Promise<any> => {
    const frame = await watcher.until(() => true, WAIT_MS)
    frames.push(frame)
    return frame.type === type ? frame : await next(type)
  }
  const online = await next('status')
  t.match(online, { userId: 'drop-1', state: 'online' }, 'online with the first reading')
  const offline = await next('status')
  const before = frames.filter((f) => f.type === 'reading').at(-1)
  t.match(offline, { type: 'status', userId: 'drop-1', state: 'offline', lastTs: before.ts }, 'offline OFFLINE_AFTER_MS into the dropout, from the last reading before it')
  t.ok(before.ts - online.lastTs >= 2500, `after about 3 s of readings (${before.ts - online.lastTs} ms)`)
  const back = await next('status')
  t.match(back, { type: 'status', userId: 'drop-1', state: 'online' }, 'online again when the readings resume')
  const resumed = await next('reading')
  t.equal(resumed.ts, back.lastTs, 'just before the first reading after the dropout')
  t.ok(back.lastTs - offline.lastTs >= 2500 && back.lastTs - offline.lastTs <= 2700, `a gap as long as the dropout (${back.lastTs - offline.lastTs} ms)`)
  t.same(frames.filter((f) => f.type === 'status').map((f) => f.state), ['online', 'offline', 'online'], 'one dropout')
  await cli.line(/drop-1: readings again at .*, back to normal/, 'stderr')
  t.equal(await cli.exit(20_000), 0)
})

t.test('watch reconnects with since when the server restarts (1001)', async (t) => {
  const port = await freePort()
  const env = { ...SERVER_ENV, PORT: String(port) }
  const url = `http://127.0.0.1:${port}`
  const first = await startServer(t, env)
  const cli = start(t, ['watch', 'r1', '--url', `ws://127.0.0.1:${port}`])
  await cli.line(/^watching r1/, 'stderr')
  const before = await ingest(url, 'r1', 75)
  await cli.line(new RegExp(`  r1  75 bpm  ${before}$`))
  t.equal(await first.stop('SIGTERM'), 0)
  await cli.line(new RegExp(`connection closed \\(1001 .*\\); reconnecting in [\\d.]+ s since ${before}`), 'stderr')

  await startServer(t, env)
  await cli.line(new RegExp(`^watching r1 .*resuming after ${before}`), 'stderr')
  const after = await ingest(url, 'r1', 77)
  await cli.line(new RegExp(`  r1  77 bpm  ${after}$`))
  cli.proc.kill('SIGINT')
  t.equal(await cli.exit(), 0)
})

interface Phase { crossed: boolean, bpms: number[], from: number, to: number }

/** Readings cut into runs that cross a limit (`crossed`) or do not. */
function phases (readings: Reading[], crossed: (bpm: number) => boolean): Phase[] {
  const runs: Phase[] = []
  for (const r of readings) {
    const last = runs.at(-1)
    if (last !== undefined && last.crossed === crossed(r.bpm)) {
      last.bpms.push(r.bpm)
      last.to = r.ts
    } else {
      runs.push({ crossed: crossed(r.bpm), bpms: [r.bpm], from: r.ts, to: r.ts })
    }
  }
  return runs
}

function describe (runs: Phase[]): string {
  return runs.map((r) => `${r.crossed ? 'crossed' : 'normal'} x${r.bpms.length}`).join(', ')
}

t.test('the heart model: plausible, smooth, with exercise bouts', async (t) => {
  // A seeded generator, so the hour below is the same on every run.
  let seed = 42
  const random = (): number => {
    seed = (seed + 0x6d2b79f5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
  const model = new HeartModel(random)
  const t0 = 1_764_115_200_000
  const trace: Array<{ bpm: number, exercising: boolean }> = []
  for (let s = 0; s < 3600; s++) trace.push({ bpm: model.next(t0 + s * 1000), exercising: model.exercising })
  const bpms = trace.map((r) => r.bpm)
  t.ok(bpms.every((b) => Number.isInteger(b) && b >= 20 && b <= 250), 'integers within 20-250')
  t.ok(Math.max(...bpms.slice(1).map((b, i) => Math.abs(b - bpms[i]))) <= 8, 'at 1 Hz, consecutive readings differ by a few bpm at most')
  const restingBpms = trace.filter((r, i) => !r.exercising && i > 0 && trace.slice(Math.max(0, i - 300), i).every((p) => !p.exercising)).map((r) => r.bpm)
  t.ok(restingBpms.length > 0 && restingBpms.every((b) => b >= 48 && b <= 92), 'at rest, near a 55-85 baseline')
  t.ok(Math.max(...bpms) >= 105 && Math.max(...bpms) <= 170, `bouts of exercise up to about 160 (peak ${Math.max(...bpms)})`)
  const bouts = trace.filter((r, i) => r.exercising && (i === 0 || !trace[i - 1].exercising)).length
  t.ok(bouts >= 3, `several bouts in an hour (${bouts})`)
})

/**
 * The README's `npx heart-gateway …` examples, run as written against a demo (from the directory
 * it keeps its development secret in), with two changes: the demo's port instead of the default
 * 3000, and a simulate shortened to 2 s.
 */
async function readmeExamples (t: Test, port: number, cwd: string): Promise<void> {
  const readme = await readFile(join(ROOT, 'README.md'), 'utf8')
  const examples = [...readme.matchAll(/^npx heart-gateway (token|send|watch|simulate)\b(.*?)(?:\s+#.*)?$/gm)].map((m) => [m[1], ...m[2].trim().split(/\s+/)])
  t.same(examples.map((e) => e[0]), ['token', 'send', 'watch', 'simulate'], 'the README shows each command')
  const withPort = (args: string[]): string[] => {
    t.notOk(args.includes('--url'), `${args[0]}: the example relies on the default URL, where npm run demo listens`)
    return [...args, '--url', `${args[0] === 'watch' ? 'ws' : 'http'}://127.0.0.1:${port}`]
  }
  const [token, send, watch, simulate] = examples
  const env = { JWT_SECRET: undefined }

  const minted = await run(t, token, env, WAIT_MS, cwd)
  t.equal(minted.code, 0, `${token.join(' ')}: ${minted.stderr}`)
  t.equal(payload(minted.stdout.trim()).sub, 'u1')

  const watching = start(t, withPort(watch), env, cwd)
  await watching.line(/^watching u1 at /, 'stderr')
  const sent = await run(t, withPort(send), env, WAIT_MS, cwd)
  t.equal(sent.code, 0, `${send.join(' ')}: ${sent.stderr}`)
  const { ids } = JSON.parse(sent.stdout) as { ids: string[] }
  await watching.line(new RegExp(`  u1  72 bpm  ${ids[0]}$`))
  watching.proc.kill('SIGINT')
  t.equal(await watching.exit(), 0, `${watch.join(' ')} prints what send posted`)

  const duration = simulate.indexOf('--duration')
  t.ok(duration !== -1, 'the simulate example ends by itself')
  const short = [...simulate.slice(0, duration + 1), '2', ...simulate.slice(duration + 2)]
  const simulated = await run(t, withPort(short), env, 20_000, cwd)
  t.equal(simulated.code, 0, `${simulate.join(' ')}: ${simulated.stderr}`)
  t.match(simulated.stdout, /sent \d+ readings for 20 users .*, 0 errors/)
}

t.test('demo starts the service and a simulator, prints the URL and a token, and stops on SIGINT', async (t) => {
  const port = await freePort()
  // A fresh directory and no JWT_SECRET: the demo makes the development secret there, as on a new checkout.
  const cwd = await mkdtemp(join(tmpdir(), 'hg-demo-'))
  t.teardown(() => rm(cwd, { recursive: true, force: true }))
  const cli = start(t, ['demo', '--port', String(port)], { JWT_SECRET: undefined }, cwd)
  const urlLine = await cli.line(/^ {2}demo page {3}http:\/\/127\.0\.0\.1:\d+\/demo\//, 'stdout', 30_000)
  const base = `http://127.0.0.1:${port}`
  t.match(urlLine, `${base}/demo/`)
  const jwt = (await cli.line(/^ {2}token {7}\S+$/)).trim().split(/\s+/)[1]
  t.match(cli.stdout.join('\n'), /development token for demo-1/)
  t.ok(urlLine.includes(`${base}/demo/#user=demo-1&token=${jwt}`), 'the page link carries the user and the token, so it connects at once')
  t.ok(existsSync(join(cwd, '.heart-gateway/dev-jwt-secret')), 'the development secret is kept in the working directory')

  const health = await fetch(`${base}/health`, { signal: AbortSignal.timeout(WAIT_MS) })
  t.equal(health.status, 200, '/health answers')
  t.match(await health.json(), { status: 'ok', store: 'memory' })
  if (existsSync(join(ROOT, 'public/demo/index.html'))) {
    const page = await fetch(`${base}/demo/`, { signal: AbortSignal.timeout(WAIT_MS) })
    t.equal(page.status, 200, 'the demo page is served')
    t.match(page.headers.get('content-type'), /text\/html/)
    await page.arrayBuffer()
  }

  const ws = new WebSocket(`ws://127.0.0.1:${port}/heart/current`, { headers: { authorization: `Bearer ${jwt}` }, handshakeTimeout: WAIT_MS })
  t.teardown(() => ws.terminate())
  const frames = new Frames(ws)
  await once(ws, 'open')
  t.match(await frames.ask({ type: 'subscribe', userId: 'demo-1', reqId: 1 }), { type: 'subscribed', userId: 'demo-1' }, 'the printed token opens /heart/current')
  t.match(await frames.until((f) => f.type === 'reading', 5000), { userId: 'demo-1', bpm: Number }, 'and the simulator feeds demo-1')

  await readmeExamples(t, port, cwd)

  cli.proc.kill('SIGINT')
  t.equal(await cli.exit(20_000), 0, 'exits 0')
  t.match(cli.stdout.join('\n'), /sent \d+ readings for 3 users .*, 0 errors\nserver stopped \(exit code 0\)/)
  t.ok(await portClosed(port), 'the server is gone')
  t.equal(await frames.closed, 1001, 'its sockets were closed as a shutdown')
})

t.test('help lists every command; an unknown one is a usage error', async (t) => {
  const help = await run(t, ['help'])
  t.equal(help.code, 0)
  for (const command of ['token', 'send', 'watch', 'simulate', 'demo']) t.match(help.stdout, new RegExp(`^ {2}${command} `, 'm'))
  const unknown = await run(t, ['fly'])
  t.equal(unknown.code, 2)
  t.match(unknown.stderr, /unknown command "fly"/)
})
