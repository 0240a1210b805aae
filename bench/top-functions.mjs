/**
 * The functions a .cpuprofile (node --cpu-prof, or the inspector's Profiler.stop) spent most self
 * time in, and the same time grouped by where the code lives (our dist/, a package, Node internals).
 * Several profiles (one per instance) are summed.
 *
 *   node bench/top-functions.mjs <file.cpuprofile> [count=25] [fromMs toMs]
 *
 * With fromMs and toMs, only samples taken that long after the profile started count (the
 * bench passes its measured window, so start-up and shutdown stay out).
 */
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/** Where a function's code lives: a package, our compiled code, Node's internals, or the VM itself. */
function placeOf (url) {
  if (url === '') return 'native (V8 builtins, C++ bindings)'
  if (url.startsWith('node:')) return 'node internals'
  const nm = url.lastIndexOf('/node_modules/')
  if (nm !== -1) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/')
    return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]
  }
  const dist = url.indexOf('/dist/')
  if (dist !== -1) return 'ours (' + url.slice(dist + 1).split('/').slice(0, 3).join('/') + ')'
  return url.replace(/^file:\/\//, '')
}

function shortUrl (url) {
  if (url === '') return ''
  const nm = url.lastIndexOf('/node_modules/')
  if (nm !== -1) return url.slice(nm + '/node_modules/'.length)
  const dist = url.indexOf('/dist/')
  if (dist !== -1) return url.slice(dist + 1)
  return url.replace(/^file:\/\//, '')
}

/**
 * Self time per function (summed over every node of the call tree with the same name, file and
 * line) and per place. A sample's time is the gap to the next sample, as DevTools counts it.
 */
export function topFunctions (profiles, count = 25, windowMs = null) {
  // Several profiles (one per instance) count as one: the same function sums over them.
  const self = new Map()
  for (const profile of Array.isArray(profiles) ? profiles : [profiles]) {
    const byId = new Map(profile.nodes.map((n) => [n.id, n]))
    const { samples, timeDeltas } = profile
    let at = 0
    for (let i = 0; i < samples.length; i++) {
      at += timeDeltas[i]
      if (windowMs !== null && (at < windowMs[0] * 1000 || at > windowMs[1] * 1000)) continue
      const us = i + 1 < timeDeltas.length ? timeDeltas[i + 1] : 0
      const { callFrame } = byId.get(samples[i])
      const key = `${callFrame.functionName}\u0000${callFrame.url}\u0000${callFrame.lineNumber}`
      const s = self.get(key) ?? { callFrame, us: 0 }
      s.us += us
      self.set(key, s)
    }
  }
  let total = 0
  let idle = 0
  const fns = new Map()
  const places = new Map()
  for (const [key, { callFrame, us }] of self) {
    total += us
    if (callFrame.functionName === '(idle)') { idle += us; continue }
    const name = callFrame.functionName || '(anonymous)'
    const f = fns.get(key) ?? { name, where: callFrame.url === '' ? '' : `${shortUrl(callFrame.url)}:${callFrame.lineNumber + 1}`, selfUs: 0 }
    f.selfUs += us
    fns.set(key, f)
    const place = name.startsWith('(') && callFrame.url === '' ? name : placeOf(callFrame.url)
    places.set(place, (places.get(place) ?? 0) + us)
  }
  const busy = total - idle
  const withShare = (x) => ({ ...x, selfMs: x.selfUs / 1000, percentOfBusy: 100 * x.selfUs / busy })
  return {
    windowMs,
    totalMs: total / 1000,
    idleMs: idle / 1000,
    busyMs: busy / 1000,
    functions: [...fns.values()].sort((a, b) => b.selfUs - a.selfUs).slice(0, count).map(withShare),
    places: [...places].map(([place, selfUs]) => withShare({ place, selfUs })).sort((a, b) => b.selfUs - a.selfUs).slice(0, 15)
  }
}

export function formatTop (top) {
  const window = top.windowMs === null ? '' : ` from ${(top.windowMs[0] / 1000).toFixed(1)} s to ${(top.windowMs[1] / 1000).toFixed(1)} s after start`
  const lines = [`profile: ${top.totalMs.toFixed(0)} ms sampled${window}, ${top.busyMs.toFixed(0)} ms busy (shares below are of busy time)`, '']
  lines.push('  self ms   busy %  function  (file:line)')
  for (const f of top.functions) {
    lines.push(`${f.selfMs.toFixed(1).padStart(9)} ${f.percentOfBusy.toFixed(1).padStart(7)}%  ${f.name}${f.where === '' ? '' : `  (${f.where})`}`)
  }
  lines.push('', '  self ms   busy %  where the code lives')
  for (const p of top.places) lines.push(`${p.selfMs.toFixed(1).padStart(9)} ${p.percentOfBusy.toFixed(1).padStart(7)}%  ${p.place}`)
  return lines.join('\n')
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [file, count = '25', from, to] = process.argv.slice(2)
  // node bench/top-functions.mjs a.cpuprofile,b.cpuprofile sums both.
  if (file === undefined) {
    process.stderr.write('usage: node bench/top-functions.mjs <file.cpuprofile> [count=25]\n')
    process.exit(2)
  }
  process.stdout.write(formatTop(topFunctions(file.split(',').map((f) => JSON.parse(readFileSync(f, 'utf8'))), Number(count), from === undefined ? null : [Number(from), Number(to)])) + '\n')
}
