/**
 * The live demo page: how /demo is served (in-process), and the page itself driven in headless
 * Chromium against the compiled server (history preloaded, then live readings from ingest).
 * Chromium is Debian's (/usr/bin/chromium; .ci/run installs it). Only 127.0.0.1 is contacted.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core'
import { DEMO_CSP } from '../routes/demo.js'
import { ROOT_CSP } from '../routes/root.js'
import { ROOT, build, freePort, startServer, token, type ServerProcess } from './helper.js'

const CHROMIUM = '/usr/bin/chromium'
const API_KEY = 'demo-test-ingest-key'
/** The longest any single step of the page may take. */
const WAIT_MS = 10000
const MINUTE = 60000

t.test('/demo/ serves the page and its files with a CSP', async (t) => {
  const app = await build(t)
  const page = await app.inject('/demo/')
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /^text\/html/)
  t.equal(page.headers['content-security-policy'], DEMO_CSP)
  t.match(page.body, /<canvas id="chart"/)
  t.notMatch(page.body, /<script(?![^>]*\bsrc=)/, 'no inline script: the CSP would block it')
  t.notMatch(page.body, /\sstyle=/, 'no inline style: the CSP would block it')
  const script = await app.inject('/demo/demo.js')
  t.equal(script.statusCode, 200)
  t.match(script.headers['content-type'], /javascript/)
  t.equal(script.headers['content-security-policy'], DEMO_CSP)
  t.equal((await app.inject('/demo/demo.css')).statusCode, 200)
  t.equal((await app.inject('/demo/missing.js')).statusCode, 404)
  t.equal((await app.inject('/demo/..%2Fpackage.json')).statusCode < 300, false, 'nothing outside public/demo')
})

t.test('/demo/client/ serves the protocol client and its adapter to the page, nothing else of client/', async (t) => {
  const app = await build(t)
  for (const file of ['heart-client.js', 'ws-adapter.js']) {
    const res = await app.inject(`/demo/client/${file}`)
    t.equal(res.statusCode, 200, file)
    t.match(res.headers['content-type'], /javascript/)
    t.equal(res.headers['content-security-policy'], DEMO_CSP)
  }
  for (const file of ['README.md', 'package.json', 'heart-client.d.ts']) t.equal((await app.inject(`/demo/client/${file}`)).statusCode, 404, file)
  const page = await app.inject('/demo/')
  t.match(page.body, /<script src="client\/heart-client\.js" defer><\/script>\s*<script src="client\/ws-adapter\.js" defer><\/script>\s*<script src="demo\.js" defer>/, 'the client, its adapter, then the page')
})

t.test('GET / points a browser at the demo page and the API docs, outside production only', async (t) => {
  const dev = await build(t)
  const root = await dev.inject({ url: '/', headers: { accept: 'text/html' } })
  t.equal(root.statusCode, 200)
  t.match(root.headers['content-type'], /^text\/html/)
  t.equal(root.headers['content-security-policy'], ROOT_CSP)
  t.match(root.body, /<a href="\/demo\/">/)
  t.match(root.body, /<a href="\/docs">/)
  t.equal((await dev.inject('/docs')).statusCode, 200, 'the docs link leads somewhere')
  t.notMatch(JSON.stringify(((await dev.inject('/docs/json')).json() as { paths: object }).paths), /"\/"/, 'not an API route in the docs')

  const production = await build(t, { NODE_ENV: 'production' })
  t.equal((await production.inject('/')).statusCode, 404, 'production: nothing at /')
  const demoOnly = await build(t, { NODE_ENV: 'production', ENABLE_DEMO: 'true' })
  const body = (await demoOnly.inject('/')).body
  t.match(body, /<a href="\/demo\/">/)
  t.notMatch(body, /\/docs/, 'only what this instance serves')
  const neither = await build(t, { ENABLE_DEMO: 'false', ENABLE_API_DOCS: 'false' })
  t.equal((await neither.inject('/')).statusCode, 404)
})

t.test('/demo redirects to /demo/ and keeps the query string', async (t) => {
  const app = await build(t)
  const plain = await app.inject('/demo')
  t.equal(plain.statusCode, 301)
  t.equal(plain.headers.location, '/demo/')
  t.equal((await app.inject('/demo?user=alice')).headers.location, '/demo/?user=alice')
})

t.test('ENABLE_DEMO=false turns the page off', async (t) => {
  const app = await build(t, { ENABLE_DEMO: 'false' })
  t.equal((await app.inject('/demo/')).statusCode, 404)
  t.equal((await app.inject('/demo')).statusCode, 404)
})

t.test('with NODE_ENV=production the page is off unless ENABLE_DEMO=true', async (t) => {
  const off = await build(t, { NODE_ENV: 'production' })
  t.equal((await off.inject('/demo/')).statusCode, 404)
  t.equal((await off.inject('/demo')).statusCode, 404)
  const on = await build(t, { NODE_ENV: 'production', ENABLE_DEMO: 'true' })
  t.equal((await on.inject('/demo/')).statusCode, 200)
})

async function ingest (server: ServerProcess, userId: string, readings: Array<{ bpm: number, ts?: number }>): Promise<string[]> {
  const res = await fetch(`${server.url}/heart/${userId}/readings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
    body: JSON.stringify({ readings }),
    signal: AbortSignal.timeout(WAIT_MS)
  })
  if (res.status !== 202) throw new Error(`ingest answered ${res.status}: ${await res.text()}`)
  return (await res.json() as { ids: string[] }).ids
}

/** What the page shows, for failure messages. */
async function shown (page: Page): Promise<string> {
  const [state, bpm, points, closeCode, message] = await Promise.all([
    page.textContent('#state'), page.textContent('#bpm'), page.getAttribute('#chart', 'data-points'),
    page.textContent('#close-code'), page.textContent('#message')
  ])
  return JSON.stringify({ state, bpm, points, closeCode, message })
}

/**
 * Waits until `selector` matches (`#bpm:text-is("97")`, `#chart[data-points="3"]`). Playwright's
 * locators poll outside the page's CSP, which forbids the eval that waitForFunction needs.
 */
async function until (page: Page, selector: string): Promise<void> {
  try {
    await page.locator(selector).waitFor({ state: 'attached', timeout: WAIT_MS })
  } catch {
    throw new Error(`${selector}: not within ${WAIT_MS} ms; the page shows ${await shown(page)}`)
  }
}

/** A page that may reach 127.0.0.1 only, with its script errors and CSP violations collected. */
async function openPage (context: BrowserContext, url: string): Promise<{ page: Page, errors: string[] }> {
  const page = await context.newPage()
  page.setDefaultTimeout(WAIT_MS)
  page.setDefaultNavigationTimeout(WAIT_MS)
  const errors: string[] = []
  page.on('pageerror', (err) => errors.push(err.message))
  page.on('console', (msg) => {
    // The page probes POST /auth/dev with an empty body: its 400 (dev login available) is expected.
    if (msg.type() === 'error' && !msg.location().url.endsWith('/auth/dev')) errors.push(msg.text())
  })
  await page.goto(url)
  return { page, errors }
}

/** A heart rate that wanders like a real one, the same on every run. */
function walk (n: number): number[] {
  return Array.from({ length: n }, (_, i) => Math.round(74 + 9 * Math.sin(i / 6) + 4 * Math.sin(i / 2.3)))
}

t.test('the page in Chromium: history, then live readings', async (t) => {
  if (!existsSync(CHROMIUM)) {
    t.fail(`Chromium is missing at ${CHROMIUM}: apt-get install -y chromium (.ci/run installs it)`)
    return
  }
  const server = await startServer(t, { INGEST_API_KEYS: API_KEY, ENABLE_DEV_LOGIN: 'true' })
  const browser: Browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(() => browser.close())
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } })
  await context.route('**/*', async (route) => {
    if (new URL(route.request().url()).hostname === '127.0.0.1') await route.continue()
    else await route.abort()
  })

  t.test('dev login, preloaded history, live readings', async (t) => {
    const now = Date.now()
    const history = walk(53).map((bpm, i) => ({ bpm, ts: now - 270000 + i * 5000 }))
    // Older than the chart's 5 minutes: preloaded, not drawn.
    await ingest(server, 'alice', [{ bpm: 70, ts: now - 6 * MINUTE }, ...history])

    const { page, errors } = await openPage(context, `${server.url}/demo`)
    t.equal(new URL(page.url()).pathname, '/demo/', 'redirected to /demo/')
    await page.locator('#dev-login').waitFor({ state: 'visible' })
    await page.fill('#user', 'alice')
    await page.click('#dev-login')
    await until(page, '#message:has-text("dev token for alice")')
    await page.click('#connect')
    await until(page, '#state:text-is("open")')
    await until(page, `#chart[data-points="${history.length}"]`)
    t.equal(await page.textContent('#bpm'), String(history.at(-1)?.bpm), 'the newest preloaded reading is the current one')

    await ingest(server, 'alice', [{ bpm: 97 }])
    await until(page, '#bpm:text-is("97")')
    await ingest(server, 'alice', [{ bpm: 101 }])
    await until(page, '#bpm:text-is("101")')
    await until(page, `#chart[data-points="${history.length + 2}"]`)
    t.equal(await page.textContent('#state'), 'open')
    t.equal(await page.textContent('#reconnects'), '0')

    await mkdir(join(ROOT, 'test-artifacts'), { recursive: true })
    await page.screenshot({ path: join(ROOT, 'test-artifacts', 'demo.png'), timeout: WAIT_MS })
    t.same(errors, [], 'no script errors or CSP violations')
    await page.close()
  })

  t.test('a pasted token; readings posted before connecting are not lost or doubled', async (t) => {
    await ingest(server, 'bob', [{ bpm: 61, ts: Date.now() - MINUTE }, { bpm: 63, ts: Date.now() - 30000 }])
    const { page, errors } = await openPage(context, `${server.url}/demo/`)
    await page.fill('#user', 'bob')
    await page.fill('#token', token('bob'))
    await page.click('#connect')
    await until(page, '#state:text-is("open")')
    await until(page, '#chart[data-points="2"]')
    await until(page, '#bpm:text-is("63")')
    await ingest(server, 'bob', [{ bpm: 66 }, { bpm: 68 }])
    await until(page, '#bpm:text-is("68")')
    await until(page, '#chart[data-points="4"]')
    t.same(errors, [], 'no script errors or CSP violations')
    await page.close()
  })

  t.test('an expiring token ends in "token expired" with close code 4001', async (t) => {
    const { page } = await openPage(context, `${server.url}/demo/`)
    await page.fill('#user', 'carol')
    await page.fill('#token', token('carol', { ttlS: 3 }))
    await page.click('#connect')
    await until(page, '#state:text-is("open")')
    await until(page, '#message:has-text("token expired")')
    t.equal(await page.textContent('#close-code'), '4001')
    t.equal(await page.textContent('#state'), 'closed')
    t.equal(await page.textContent('#reconnects'), '0', 'no reconnect with a dead token')
    await page.close()
  })

  t.test('the link npm run demo prints connects at once, at phone width too', async (t) => {
    const port = await freePort()
    const cwd = await mkdtemp(join(tmpdir(), 'hg-demo-page-'))
    t.teardown(() => rm(cwd, { recursive: true, force: true }))
    const demo = spawn(process.execPath, [join(ROOT, 'dist/src/cli/main.js'), 'demo', '--port', String(port)], { cwd, env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = once(demo, 'close')
    t.teardown(async () => {
      if (demo.exitCode === null && demo.signalCode === null) demo.kill('SIGINT')
      await exited
    })
    let out = ''
    const link = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no demo page link within 30 s:\n${out}`)), 30000)
      demo.stdout.on('data', (chunk: Buffer) => {
        out += String(chunk)
        const m = /^ {2}demo page {3}(\S+)/m.exec(out)
        if (m !== null) { clearTimeout(timer); resolve(m[1]) }
      })
      demo.stderr.resume()
    })
    t.match(link, new RegExp(`^http://127\\.0\\.0\\.1:${port}/demo/#user=demo-1&token=ey`))

    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 })
    t.teardown(() => phone.close())
    await phone.route('**/*', async (route) => {
      if (new URL(route.request().url()).hostname === '127.0.0.1') await route.continue()
      else await route.abort()
    })
    const { page, errors } = await openPage(phone, link)
    await until(page, '#state:text-is("open")')
    t.equal(await page.inputValue('#user'), 'demo-1', 'the user from the link')
    t.equal(new URL(page.url()).hash, '', 'the token is gone from the address bar')
    // The simulator posts for demo-1 every second or so.
    await until(page, '#chart:not([data-points="0"])')
    t.match(await page.textContent('#bpm'), /^\d+$/, 'a live heart rate')
    t.equal(await page.textContent('#reconnects'), '0')
    await mkdir(join(ROOT, 'test-artifacts'), { recursive: true })
    await page.screenshot({ path: join(ROOT, 'test-artifacts', 'demo-390.png'), fullPage: true, timeout: WAIT_MS })
    t.same(errors, [], 'no script errors or CSP violations')
    await page.close()
  })

  t.test('offline: "offline since hh:mm:ss" over a greyed value, back to normal when readings resume; at phone width', async (t) => {
    const quick = await startServer(t, { INGEST_API_KEYS: API_KEY, OFFLINE_AFTER_MS: '1000' })
    // A time zone of its own, so the clock the page shows is checked against one computed here.
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, timezoneId: 'Asia/Shanghai' })
    t.teardown(() => phone.close())
    await phone.route('**/*', async (route) => {
      if (new URL(route.request().url()).hostname === '127.0.0.1') await route.continue()
      else await route.abort()
    })
    const hhmmss = (ms: number): string => new Date(ms).toLocaleTimeString('en-GB', { timeZone: 'Asia/Shanghai', hour12: false })
    const ts = Date.now()
    await ingest(quick, 'dave', [{ bpm: 77, ts }])
    const { page, errors } = await openPage(phone, `${quick.url}/demo/#user=dave&token=${token('dave')}`)
    await until(page, '#state:text-is("open")')
    await until(page, '#bpm:text-is("77")')
    await until(page, '#now[data-presence="offline"]')
    t.equal(await page.textContent('#presence'), `offline since ${hhmmss(ts)}`, 'when the last reading was taken')
    t.equal(await page.isVisible('#presence'), true)
    t.equal(await page.textContent('#bpm'), '77', 'the last value stays')
    t.equal(await page.locator('.reading').evaluate((el) => (globalThis as any).getComputedStyle(el).opacity), '0.45', 'greyed')
    const box = await page.locator('#presence').boundingBox()
    t.ok(box !== null && box.x >= 0 && box.x + box.width <= 390, `on screen at 390 px (${JSON.stringify(box)})`)
    t.equal(await page.evaluate(() => (globalThis as any).document.documentElement.scrollWidth), 390, 'no sideways scrolling at 390 px')
    await mkdir(join(ROOT, 'test-artifacts'), { recursive: true })
    await page.screenshot({ path: join(ROOT, 'test-artifacts', 'demo-offline-390.png'), fullPage: true, timeout: WAIT_MS })

    await ingest(quick, 'dave', [{ bpm: 81 }])
    await until(page, '#now[data-presence="online"]')
    await until(page, '#bpm:text-is("81")')
    t.equal(await page.isHidden('#presence'), true, 'no offline line once online')
    t.equal(await page.locator('.reading').evaluate((el) => (globalThis as any).getComputedStyle(el).opacity), '1', 'not greyed')

    // A viewer arriving while the user is offline is told so by subscribed, at once.
    const old = Date.now() - 5000
    await ingest(quick, 'erin', [{ bpm: 64, ts: old }])
    const late = await openPage(phone, `${quick.url}/demo/#user=erin&token=${token('erin')}`)
    await until(late.page, '#now[data-presence="offline"]')
    t.equal(await late.page.textContent('#presence'), `offline since ${hhmmss(old)}`)
    t.same([...errors, ...late.errors], [], 'no script errors or CSP violations')
    await late.page.close()
    await page.close()
  })

  t.test('a red banner for each open alert: from subscribed on load, live from alert frames, gone when closed; at phone width', async (t) => {
    const rules = await fetch(`${server.url}/heart/frank/alert-rules`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${token('frank')}`, 'content-type': 'application/json' },
      body: JSON.stringify({ high: 120, low: 45, sustainS: 0, offline: false }),
      signal: AbortSignal.timeout(WAIT_MS)
    })
    t.equal(rules.status, 200, await rules.text())
    await ingest(server, 'frank', [{ bpm: 72 }])
    const openedBefore = Date.now()
    await ingest(server, 'frank', [{ bpm: 150 }])
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, timezoneId: 'Asia/Shanghai' })
    t.teardown(() => phone.close())
    await phone.route('**/*', async (route) => {
      if (new URL(route.request().url()).hostname === '127.0.0.1') await route.continue()
      else await route.abort()
    })
    const { page, errors } = await openPage(phone, `${server.url}/demo/#user=frank&token=${token('frank')}`)
    await until(page, '#state:text-is("open")')
    await until(page, '#alerts .alert[data-kind="high"]')
    const high = await page.textContent('#alerts .alert[data-kind="high"]')
    const clock = /since (\d\d):(\d\d):(\d\d)$/.exec(high ?? '')
    t.match(high, /^High heart rate · 150 bpm · since \d\d:\d\d:\d\d$/, 'the one opened before the page connected (subscribed.alerts): kind, bpm, opened time')
    const shown = new Date(openedBefore).toLocaleTimeString('en-GB', { timeZone: 'Asia/Shanghai', hour12: false }).split(':').map(Number)
    const seconds = (hms: number[]): number => hms[0] * 3600 + hms[1] * 60 + hms[2]
    t.ok(clock !== null && Math.abs(seconds(clock.slice(1).map(Number)) - seconds(shown)) <= 2, `opened at about ${shown.join(':')} in the viewer's time zone`)
    t.equal(await page.locator('#alerts .alert').count(), 1)
    t.equal(await page.locator('.alert').evaluate((el) => (globalThis as any).getComputedStyle(el).backgroundColor), 'rgb(248, 81, 73)', 'red')

    await ingest(server, 'frank', [{ bpm: 100 }])
    await until(page, '#alerts:empty')
    t.equal(await page.isHidden('#alerts'), true, 'no banner once closed')

    await ingest(server, 'frank', [{ bpm: 40 }])
    await until(page, '#alerts .alert[data-kind="low"]')
    t.match(await page.textContent('#alerts .alert[data-kind="low"]'), /^Low heart rate · 40 bpm · since \d\d:\d\d:\d\d$/, 'one that opens while watching')
    const box = await page.locator('#alerts .alert').boundingBox()
    t.ok(box !== null && box.x >= 0 && box.x + box.width <= 390, `on screen at 390 px (${JSON.stringify(box)})`)
    t.equal(await page.evaluate(() => (globalThis as any).document.documentElement.scrollWidth), 390, 'no sideways scrolling at 390 px')
    await mkdir(join(ROOT, 'test-artifacts'), { recursive: true })
    await page.screenshot({ path: join(ROOT, 'test-artifacts', 'demo-alert-390.png'), fullPage: true, timeout: WAIT_MS })
    await ingest(server, 'frank', [{ bpm: 60 }])
    await until(page, '#alerts:empty')
    t.same(errors, [], 'no script errors or CSP violations')
    await page.close()
  })

  t.test('the dev login button stays hidden where POST /auth/dev answers 404', async (t) => {
    const app = await build(t)
    await app.listen({ host: '127.0.0.1', port: 0 })
    const { port } = app.server.address() as AddressInfo
    const page = await context.newPage()
    page.setDefaultTimeout(WAIT_MS)
    const probed = page.waitForResponse((res) => res.url().endsWith('/auth/dev'), { timeout: WAIT_MS })
    await page.goto(`http://127.0.0.1:${port}/demo/`, { timeout: WAIT_MS })
    t.equal((await probed).status(), 404)
    t.equal(await page.isHidden('#dev-login'), true)
    await page.close()
    // Chromium keeps (and pre-opens) connections for the browser context, not the page: a socket
    // that never carried a request is not "idle" to Node, and app.close() would wait for it.
    app.server.closeAllConnections()
  })
})
