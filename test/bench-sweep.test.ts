/**
 * bench/sweep.mjs, the pure half of `npm run bench -- --sweep`: the knee of each target on a
 * hand-made sweep, and the SVG chart's shape.
 */
import t from 'tap'
import { failures, knee, knees, sweepSvg, sweepTable, type Sweep, type SweepStep } from '../bench/sweep.mjs'

const SUBS = 50

/** A step that delivered everything at the rate, with the given p99 and losses. */
function step (rate: number, p99: number, extra: Partial<SweepStep> = {}): SweepStep {
  return {
    rate,
    readingsPerSecond: rate,
    deliveredPerSecond: rate * SUBS,
    latencyMs: { p50: p99 / 4, p99 },
    lost: 0,
    duplicates: 0,
    ingestErrors: 0,
    serverCpuPerDeliveryUs: 20,
    cpu: { serverCpuPercent: rate / 40, generatorCpuPercent: rate / 30 },
    ...extra
  }
}

const hand: Sweep = {
  rates: [250, 500, 1000, 2000, 4000],
  subscribers: SUBS,
  targets: {
    // Passes 250 and 500, then over the threshold at 1000; the pass at 2000 after it is luck.
    ours: [step(250, 8), step(500, 40), step(1000, 180), step(2000, 60), step(4000, 900, { lost: 120 })],
    baseline: [step(250, 5), step(500, 12), step(1000, 30), step(2000, 70, { lost: 3 }), step(4000, 400)]
  }
}

t.test('the knee is the highest rate up to which every step is under 100 ms with nothing lost', async (t) => {
  const k = knees(hand)
  t.equal(k.targets.ours.rate, 500)
  t.same(k.targets.ours.firstFailure, { rate: 1000, why: ['p99 180 ms'] })
  t.equal(k.targets.baseline.rate, 1000, 'a step with any loss is not sustained, whatever its latency')
  t.same(k.targets.baseline.firstFailure, { rate: 2000, why: ['3 lost'] })
  t.equal(k.oursReachesBaseline, false)
  t.equal(k.targets.ours.atTop, false)
})

t.test('duplicates, ingest errors, a rate not acknowledged in full and a failed step each fail a step', async (t) => {
  t.same(failures(step(500, 10, { duplicates: 2 })), ['2 duplicated'])
  t.same(failures(step(500, 10, { ingestErrors: 1 })), ['1 ingest errors'])
  t.same(failures(step(500, 10, { readingsPerSecond: 400 })), ['400/s acknowledged of 500/s'], 'a generator that cannot offer the rate does not prove it')
  t.same(failures(step(500, 100)), ['p99 100 ms'], 'the threshold itself is not under it')
  t.same(failures({ rate: 500, error: 'a baseline server died\nstack' }), ['failed: a baseline server died'])
  t.same(failures(step(500, 99.9)), [])
})

t.test('no knee when the lowest rate fails; at the top when every rate passes; order of steps does not matter', async (t) => {
  t.same(knee([step(250, 150), step(500, 20)]), { rate: null, atTop: false, firstFailure: { rate: 250, why: ['p99 150 ms'] } })
  t.same(knee([step(1000, 30), step(250, 5), step(500, 10)]), { rate: 1000, atTop: true, firstFailure: null })
  const k = knees({ targets: { ours: [step(250, 5), step(500, 10)], baseline: [step(250, 5), step(500, 200)] } })
  t.equal(k.oursReachesBaseline, true)
  t.equal(knees({ targets: { ours: [step(250, 5)] } }).oursReachesBaseline, null, 'nothing to compare without the baseline')
})

t.test('the table has a line per step, says why a step fails, and names each knee', async (t) => {
  const text = sweepTable(hand)
  t.match(text, /ours\n/)
  t.match(text, /1,000 .* p99 180 ms/)
  t.match(text, /ours\s+500 readings\/s \(at 1000\/s: p99 180 ms\)/)
  t.match(text, /baseline\s+1000 readings\/s \(at 2000\/s: 3 lost\)/)
  t.match(text, /ours does not reach the baseline's knee/)
})

/** Every tag closed in order, and the names of the elements, or throws. */
function elements (svg: string): string[] {
  const stack: string[] = []
  const names: string[] = []
  const text = svg.replace(/<!--[\s\S]*?-->/g, '')
  for (const m of text.matchAll(/<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g)) {
    const [, closing, name, , selfClosing] = m
    if (closing === '/') {
      const open = stack.pop()
      if (open !== name) throw new Error(`</${name}> closes <${open}>`)
    } else {
      names.push(name)
      if (selfClosing !== '/') stack.push(name)
    }
  }
  if (stack.length > 0) throw new Error(`unclosed: ${stack.join(', ')}`)
  // Nothing outside the tags but text: no stray < or malformed attributes left.
  const stray = text.replace(/<[^>]*>/g, '')
  if (stray.includes('<') || stray.includes('>')) throw new Error('stray angle bracket')
  return names
}

t.test('the chart is one well-formed SVG: a line per target in each panel, the threshold, a mark per knee', async (t) => {
  const svg = sweepSvg({ ...hand, note: 'hand-made <sweep> & co' })
  t.ok(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'))
  t.ok(svg.trimEnd().endsWith('</svg>'))
  const names = elements(svg)
  t.equal(names.filter((n) => n === 'svg').length, 1)
  for (const target of ['ours', 'baseline']) {
    const lines = [...svg.matchAll(new RegExp(`<polyline class="series" data-target="${target}" points="([^"]*)"`, 'g'))]
    t.equal(lines.length, 2, `${target}: one line for p99, one for deliveries/s`)
    for (const [, points] of lines) {
      const pts = points.split(' ')
      t.equal(pts.length, 5, `${target}: a point per rate`)
      for (const p of pts) t.match(p, /^\d+(\.\d)?,\d+(\.\d)?$/)
    }
    t.equal([...svg.matchAll(new RegExp(`<line class="knee" data-target="${target}"`, 'g'))].length, 1, `${target}: its knee marked`)
  }
  t.equal([...svg.matchAll(/<line class="threshold" /g)].length, 1)
  t.match(svg, />100 ms</)
  t.match(svg, /knee ours 500</)
  t.match(svg, /knee baseline 1k</)
  t.match(svg, /hand-made &lt;sweep&gt; &amp; co/, 'text is escaped')
})

t.test('the chart draws a target with no knee, and a failed step, without breaking', async (t) => {
  const svg = sweepSvg({ rates: [250, 500], subscribers: SUBS, targets: { ours: [step(250, 300), { rate: 500, error: 'died' }], baseline: [step(250, 5), step(500, 8)] } })
  elements(svg)
  t.equal([...svg.matchAll(/<line class="knee" /g)].length, 1, 'only the baseline has a knee')
  t.match(svg, /knee baseline 500\+</, 'a knee at the top rate tried is marked as a lower bound')
})
