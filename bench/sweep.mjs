/**
 * The push sweep's figures, without any I/O: which steps a target sustains, its knee, the table
 * `npm run bench -- --sweep` prints, and the SVG chart written next to the results JSON. Pure
 * functions, so test/bench-sweep.test.ts checks them on a hand-made sweep.
 *
 * A sweep is `{ rates, subscribers, thresholdMs, targets: { ours: [step…], baseline: [step…] } }`,
 * one step per offered rate (readings/s), in rising order; a step is what bench/load.mjs measured
 * at that rate (see `pushStep` there), or `{ rate, error }` when the step failed outright.
 */

/** p99 ingest→frame latency a sustained step stays under. */
export const THRESHOLD_MS = 100
/** A step whose acknowledged readings/s fall below this share of the offered rate was not sustained. */
export const MIN_ACHIEVED = 0.95

/**
 * Why `step` does not count as sustained (empty when it does): latency over the threshold,
 * deliveries lost or duplicated, ingest refused, or readings acknowledged slower than offered.
 */
export function failures (step, thresholdMs = THRESHOLD_MS) {
  if (step.error !== undefined) return [`failed: ${String(step.error).split('\n')[0]}`]
  const why = []
  const p99 = step.latencyMs?.p99
  if (typeof p99 !== 'number') why.push('no deliveries')
  else if (p99 >= thresholdMs) why.push(`p99 ${round(p99)} ms`)
  if (step.lost > 0) why.push(`${step.lost} lost`)
  if (step.duplicates > 0) why.push(`${step.duplicates} duplicated`)
  if (step.ingestErrors > 0) why.push(`${step.ingestErrors} ingest errors`)
  if (step.readingsPerSecond < MIN_ACHIEVED * step.rate) why.push(`${Math.round(step.readingsPerSecond)}/s acknowledged of ${step.rate}/s`)
  return why
}

const round = (v) => (v >= 10 ? Math.round(v) : Math.round(v * 10) / 10)

/**
 * The knee of one target: the highest offered rate up to which every step is sustained (a pass
 * above a failed step is luck, not capacity, and does not move the knee). `rate` is null when the
 * lowest step already fails; `atTop` says the highest rate tried passed, so the true knee is at
 * least that.
 */
export function knee (steps, thresholdMs = THRESHOLD_MS) {
  const sorted = [...steps].sort((a, b) => a.rate - b.rate)
  let rate = null
  let atTop = false
  let firstFailure = null
  for (const [i, s] of sorted.entries()) {
    const why = failures(s, thresholdMs)
    if (why.length > 0) { firstFailure = { rate: s.rate, why }; break }
    rate = s.rate
    atTop = i === sorted.length - 1
  }
  return { rate, atTop, firstFailure }
}

/** Knee per target, and whether ours reaches the floor's (null when either has none). */
export function knees (sweep) {
  const threshold = sweep.thresholdMs ?? THRESHOLD_MS
  const targets = {}
  for (const [target, steps] of Object.entries(sweep.targets)) targets[target] = knee(steps, threshold)
  const o = targets.ours?.rate
  const b = targets.baseline?.rate
  return { targets, oursReachesBaseline: o === undefined || b === undefined || b === null ? null : o !== null && o >= b }
}

// ---------------------------------------------------------------- table

const COLUMNS = [
  ['rate/s', (s) => s.rate, 0],
  ['readings/s', (s) => s.readingsPerSecond, 0],
  ['deliveries/s', (s) => s.deliveredPerSecond, 0],
  ['p50 ms', (s) => s.latencyMs?.p50, 1],
  ['p99 ms', (s) => s.latencyMs?.p99, 1],
  ['srv CPU %', (s) => s.cpu?.serverCpuPercent, 0],
  ['µs/deliv.', (s) => s.serverCpuPerDeliveryUs, 1],
  ['lost', (s) => s.lost, 0],
  ['dup', (s) => s.duplicates, 0],
  ['gen CPU %', (s) => s.cpu?.generatorCpuPercent, 0],
  // Other processes of the machine on either core: above a few %, the step measured contention.
  ['others %', (s) => othersPercent(s), 0]
]

function othersPercent (s) {
  const o = [s.cpu?.othersOnServerCorePercent, s.cpu?.othersOnLoadCorePercent].filter((v) => typeof v === 'number')
  return o.length === 0 ? undefined : Math.max(...o)
}

function num (v, digits) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '-'
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function kneeText (k) {
  if (k.rate === null) return `none: the lowest rate already fails (${k.firstFailure.why.join(', ')})`
  if (k.atTop) return `≥ ${k.rate} readings/s (every rate tried passed)`
  return `${k.rate} readings/s (at ${k.firstFailure.rate}/s: ${k.firstFailure.why.join(', ')})`
}

/** The printed table: one block per target, a line per step with why it fails, then the knees. */
export function sweepTable (sweep) {
  const threshold = sweep.thresholdMs ?? THRESHOLD_MS
  const k = knees(sweep)
  const lines = []
  const w = 13
  lines.push('  ' + COLUMNS.map(([h]) => h.padStart(w)).join('') + '  not sustained because')
  for (const [target, steps] of Object.entries(sweep.targets)) {
    lines.push(target)
    for (const s of steps) {
      const why = failures(s, threshold)
      const cells = s.error !== undefined ? [num(s.rate, 0).padStart(w), '(failed)'.padStart(w)] : COLUMNS.map(([, f, d]) => num(f(s), d).padStart(w))
      lines.push('  ' + cells.join('') + '  ' + why.join(', '))
    }
  }
  lines.push('')
  lines.push(`knee (highest rate with every step up to it at p99 < ${threshold} ms, nothing lost or duplicated, ≥ ${MIN_ACHIEVED * 100} % of the rate acknowledged):`)
  for (const target of Object.keys(sweep.targets)) lines.push(`  ${target.padEnd(9)} ${kneeText(k.targets[target])}`)
  if (k.oursReachesBaseline !== null) lines.push(`  ours ${k.oursReachesBaseline ? 'reaches' : 'does not reach'} the baseline's knee`)
  return lines.join('\n')
}

// ---------------------------------------------------------------- chart

const COLORS = { ours: '#c0392b', baseline: '#2471a3' }
const FALLBACK_COLORS = ['#7d3c98', '#1e8449', '#b9770e']

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
const f1 = (v) => (Math.round(v * 10) / 10).toString()

/** A log axis from lo to hi (both > 0) onto [a, b] pixels. */
function logScale (lo, hi, a, b) {
  const l0 = Math.log10(lo)
  const l1 = Math.log10(hi)
  return (v) => a + (Math.log10(Math.min(Math.max(v, lo), hi)) - l0) / (l1 - l0) * (b - a)
}

/** 1, 2, 5 × powers of ten inside [lo, hi]; the decades alone when that makes too many. */
function logTicks (lo, hi) {
  const all = []
  const decades = []
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e
      if (v >= lo * 0.999 && v <= hi * 1.001) { all.push(v); if (m === 1) decades.push(v) }
    }
  }
  return all.length <= 8 || decades.length < 2 ? all : decades
}

function tickLabel (v) {
  if (v >= 1000) return `${(v / 1000).toLocaleString('en-US', { maximumFractionDigits: 1 })}k`
  return v.toLocaleString('en-US', { maximumFractionDigits: 2 })
}

const good = (v) => typeof v === 'number' && Number.isFinite(v) && v > 0

/**
 * The sweep as an SVG document: offered rate on a log x axis; above, p99 ingest→frame latency
 * (log) with the threshold drawn; below, deliveries/s achieved (log) with what the rate asks for
 * (rate × subscribers) dashed. One polyline per target in each panel; a filled dot is a sustained
 * step, a hollow one a step that was not; each knee is marked with a dashed vertical line.
 */
export function sweepSvg (sweep, { title = 'heart-gateway push sweep', width = 760, height = 560 } = {}) {
  const threshold = sweep.thresholdMs ?? THRESHOLD_MS
  const targets = Object.keys(sweep.targets)
  const color = (t, i) => COLORS[t] ?? FALLBACK_COLORS[i % FALLBACK_COLORS.length]
  const k = knees(sweep).targets
  const rates = [...new Set([...(sweep.rates ?? []), ...targets.flatMap((t) => sweep.targets[t].map((s) => s.rate))])].filter(good).sort((a, b) => a - b)
  const subs = sweep.subscribers ?? 1
  const steps = targets.flatMap((t) => sweep.targets[t]).filter((s) => s.error === undefined)

  const m = { left: 70, right: 150, top: 76, gap: 56, bottom: 52 }
  const panelH = (height - m.top - m.gap - m.bottom) / 2
  const x0 = m.left
  const x1 = width - m.right
  const xLo = rates.length > 0 ? rates[0] / 1.25 : 1
  const xHi = rates.length > 0 ? rates[rates.length - 1] * 1.25 : 10
  const x = logScale(xLo, xHi, x0, x1)

  const lats = steps.map((s) => s.latencyMs?.p99).filter(good)
  const latLo = Math.min(1, ...lats) / 1.5
  const latHi = Math.max(threshold * 3, ...lats) * 1.5
  const latTop = m.top
  const latBottom = m.top + panelH
  const yLat = logScale(latLo, latHi, latBottom, latTop)

  const dels = [...steps.map((s) => s.deliveredPerSecond), ...rates.map((r) => r * subs)].filter(good)
  const delLo = (dels.length > 0 ? Math.min(...dels) : 1) / 1.5
  const delHi = (dels.length > 0 ? Math.max(...dels) : 10) * 1.5
  const delTop = latBottom + m.gap
  const delBottom = delTop + panelH
  const yDel = logScale(delLo, delHi, delBottom, delTop)

  const out = []
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`)
  out.push(`<title>${esc(title)}</title>`)
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`)
  out.push(`<text x="${x0}" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`)
  if (sweep.note) out.push(`<text x="${x0}" y="38" fill="#555555">${esc(sweep.note)}</text>`)

  const panel = (top, bottom, y, ticks, label) => {
    out.push('<g class="axes">')
    out.push(`<rect x="${x0}" y="${f1(top)}" width="${f1(x1 - x0)}" height="${f1(bottom - top)}" fill="none" stroke="#888888"/>`)
    for (const v of ticks) {
      out.push(`<line x1="${x0}" y1="${f1(y(v))}" x2="${x1}" y2="${f1(y(v))}" stroke="#e5e5e5"/>`)
      out.push(`<text x="${x0 - 6}" y="${f1(y(v) + 4)}" text-anchor="end">${esc(tickLabel(v))}</text>`)
    }
    for (const r of rates) {
      out.push(`<line x1="${f1(x(r))}" y1="${f1(top)}" x2="${f1(x(r))}" y2="${f1(bottom)}" stroke="#f0f0f0"/>`)
      out.push(`<text x="${f1(x(r))}" y="${f1(bottom + 16)}" text-anchor="middle">${esc(tickLabel(r))}</text>`)
    }
    const cy = (top + bottom) / 2
    out.push(`<text x="18" y="${f1(cy)}" text-anchor="middle" transform="rotate(-90 18 ${f1(cy)})">${esc(label)}</text>`)
    out.push('</g>')
  }
  panel(latTop, latBottom, yLat, logTicks(latLo, latHi), 'p99 ingest→frame (ms, log)')
  panel(delTop, delBottom, yDel, logTicks(delLo, delHi), 'deliveries/s (log)')
  out.push(`<text x="${f1((x0 + x1) / 2)}" y="${height - 12}" text-anchor="middle">offered rate (readings/s, log)</text>`)

  // The threshold, and what the rate asks for.
  out.push(`<line class="threshold" x1="${x0}" y1="${f1(yLat(threshold))}" x2="${x1}" y2="${f1(yLat(threshold))}" stroke="#000000" stroke-dasharray="6 4"/>`)
  out.push(`<text x="${x0 + 6}" y="${f1(yLat(threshold) - 5)}">${threshold} ms</text>`)
  if (rates.length > 0) {
    const pts = rates.map((r) => `${f1(x(r))},${f1(yDel(r * subs))}`).join(' ')
    out.push(`<polyline class="offered" points="${pts}" fill="none" stroke="#999999" stroke-dasharray="3 3"/>`)
    out.push(`<text x="${x1 + 6}" y="${f1(yDel(rates[rates.length - 1] * subs) + 4)}" fill="#777777">rate × ${subs}</text>`)
  }

  targets.forEach((t, i) => {
    const c = color(t, i)
    const mine = sweep.targets[t].filter((s) => s.error === undefined).sort((a, b) => a.rate - b.rate)
    const series = (y, value) => {
      const pts = mine.filter((s) => good(value(s)))
      out.push(`<polyline class="series" data-target="${esc(t)}" points="${pts.map((s) => `${f1(x(s.rate))},${f1(y(value(s)))}`).join(' ')}" fill="none" stroke="${c}" stroke-width="2"/>`)
      for (const s of pts) {
        const ok = failures(s, threshold).length === 0
        out.push(`<circle cx="${f1(x(s.rate))}" cy="${f1(y(value(s)))}" r="4" stroke="${c}" stroke-width="2" fill="${ok ? c : '#ffffff'}"/>`)
      }
    }
    series(yLat, (s) => s.latencyMs?.p99)
    series(yDel, (s) => s.deliveredPerSecond)
    const kr = k[t].rate
    if (kr !== null) {
      const kx = f1(x(kr))
      out.push(`<line class="knee" data-target="${esc(t)}" x1="${kx}" y1="${latTop}" x2="${kx}" y2="${f1(delBottom)}" stroke="${c}" stroke-dasharray="2 4" stroke-width="1.5"/>`)
      out.push(`<text x="${kx}" y="${f1(latTop - 6 - 13 * i)}" text-anchor="middle" fill="${c}">knee ${esc(t)} ${esc(tickLabel(kr))}${k[t].atTop ? '+' : ''}</text>`)
    }
    // Legend.
    const ly = latTop + 14 + 34 * i
    out.push(`<line x1="${x1 + 10}" y1="${ly + 30}" x2="${x1 + 34}" y2="${ly + 30}" stroke="${c}" stroke-width="2"/>`)
    out.push(`<text x="${x1 + 40}" y="${ly + 34}">${esc(t)}</text>`)
    out.push(`<text x="${x1 + 40}" y="${ly + 48}" fill="#555555">knee ${kr === null ? 'none' : esc(tickLabel(kr)) + (k[t].atTop ? '+' : '')}</text>`)
  })
  const ly = latTop + 14 + 34 * targets.length + 40
  out.push(`<text x="${x1 + 10}" y="${ly}" fill="#555555">● sustained</text>`)
  out.push(`<text x="${x1 + 10}" y="${ly + 14}" fill="#555555">○ not sustained</text>`)
  out.push('</svg>')
  return out.join('\n') + '\n'
}
