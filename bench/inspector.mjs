/**
 * The CPU profiler of a server started with `--inspect=127.0.0.1:0`, driven over the inspector
 * protocol (loopback only), so a profile covers exactly the measured window: the load generator
 * starts it when its window opens and stops it when the window closes. Start-up, module loading,
 * socket opening, warm-up and shutdown stay out of the profile altogether.
 */
import WebSocket from 'ws'

/** The inspector URL a node process prints on stderr at start: `Debugger listening on ws://…`. */
export function inspectorUrlOf (line) {
  return /Debugger listening on (ws:\/\/127\.0\.0\.1:\d+\/[0-9a-f-]+)/.exec(line)?.[1] ?? null
}

/** One inspector session: `call(method, params)` resolves with the result. */
export async function openInspector (url) {
  const ws = new WebSocket(url, { perMessageDeflate: false })
  await new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
  })
  let next = 0
  const waiting = new Map()
  ws.on('message', (data) => {
    const m = JSON.parse(data)
    const w = waiting.get(m.id)
    if (w === undefined) return
    waiting.delete(m.id)
    if (m.error !== undefined) w.reject(new Error(`inspector: ${m.error.message}`))
    else w.resolve(m.result)
  })
  ws.on('close', () => {
    for (const w of waiting.values()) w.reject(new Error('inspector closed'))
    waiting.clear()
  })
  return {
    call (method, params = {}) {
      const id = ++next
      return new Promise((resolve, reject) => {
        waiting.set(id, { resolve, reject })
        ws.send(JSON.stringify({ id, method, params }))
      })
    },
    close () { ws.close() }
  }
}

/**
 * Profilers of several processes, started and stopped together. `stop()` resolves with one
 * profile per process (the .cpuprofile format, as `node --cpu-prof` writes it).
 */
export async function windowProfilers (urls, samplingIntervalUs = 1000) {
  const sessions = await Promise.all(urls.map(openInspector))
  await Promise.all(sessions.map(async (s) => {
    await s.call('Profiler.enable')
    await s.call('Profiler.setSamplingInterval', { interval: samplingIntervalUs })
  }))
  return {
    async start () {
      await Promise.all(sessions.map((s) => s.call('Profiler.start')))
    },
    async stop () {
      const profiles = await Promise.all(sessions.map(async (s) => (await s.call('Profiler.stop')).profile))
      for (const s of sessions) s.close()
      return profiles
    }
  }
}
