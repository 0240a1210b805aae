/**
 * A V8 heap snapshot (`.heapsnapshot`, as `--heapsnapshot-signal` writes it) summed by class, the
 * way DevTools' Summary view groups it: objects and closures by constructor name, strings as
 * "(string)", code as "(compiled code)", and so on. Sizes are shallow (each object's own bytes);
 * retained sizes would need the dominator tree, which this does not build.
 *
 * The file is read into a Buffer and scanned, never JSON.parse'd whole: a snapshot of a busy server
 * is larger than V8's longest string.
 *
 *   node bench/heap-classes.mjs FILE [--per=N] [--top=K]
 */
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

/** The index just after the `[` that opens the array named `name` at the top level. */
function arrayStart (buf, name, from = 0) {
  const at = buf.indexOf(`"${name}":[`, from)
  if (at === -1) throw new Error(`heap snapshot: no "${name}" array`)
  return at + name.length + 4
}

/** The integers of the array that starts at `start`, into a Float64Array of `count`. */
function readInts (buf, start, count) {
  const out = new Float64Array(count)
  let i = start
  for (let k = 0; k < count; k++) {
    let c = buf[i]
    while (c < 48 || c > 57) c = buf[++i]
    let v = 0
    while (c >= 48 && c <= 57) { v = v * 10 + (c - 48); c = buf[++i] }
    out[k] = v
  }
  return out
}

/** The strings of the array that starts at `start`, each JSON-decoded on its own. */
function readStrings (buf, start) {
  const strings = []
  let i = start
  for (;;) {
    while (buf[i] !== 34 && buf[i] !== 93) i++
    if (buf[i] === 93) return strings
    const s = i
    i++
    while (buf[i] !== 34) i += buf[i] === 92 ? 2 : 1
    strings.push(JSON.parse(buf.toString('utf8', s, i + 1)))
    i++
  }
}

const GROUPS = {
  string: '(string)',
  'concatenated string': '(string)',
  'sliced string': '(string)',
  code: '(compiled code)',
  hidden: '(system)',
  'object shape': '(system)',
  number: '(number)',
  'heap number': '(number)',
  bigint: '(bigint)',
  symbol: '(symbol)',
  regexp: '(regexp)'
}

/** An internal array keeps its own name when it has one in parentheses ("(object elements)"). */
function groupOfOther (type, name) {
  if (type === 'array' && typeof name === 'string' && name.startsWith('(')) return name
  return `(${type})`
}

/**
 * `{ nodes, totalSelfBytes, byClass: [{ name, count, selfBytes }] }`, the largest `top` classes by
 * shallow size; byte figures divided by `perCount` (the number of sockets, for per-socket figures).
 */
export function summariseHeap (file, { top = 15, perCount = 1 } = {}) {
  const buf = readFileSync(file)
  const headEnd = buf.indexOf('"nodes":[')
  const head = buf.toString('utf8', 0, headEnd).replace(/,\s*$/, '') + '}'
  const { snapshot } = JSON.parse(head)
  const fields = snapshot.meta.node_fields
  const types = snapshot.meta.node_types[fields.indexOf('type')]
  const width = fields.length
  const [fType, fName, fSize] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f))
  const nodes = readInts(buf, headEnd + 9, snapshot.node_count * width)
  const strings = readStrings(buf, arrayStart(buf, 'strings', headEnd))
  const groups = new Map()
  let total = 0
  for (let n = 0; n < nodes.length; n += width) {
    const type = types[nodes[n + fType]]
    const size = nodes[n + fSize]
    total += size
    const name = type === 'object' || type === 'closure' || type === 'native'
      ? strings[nodes[n + fName]] || '(anonymous)'
      : GROUPS[type] ?? groupOfOther(type, strings[nodes[n + fName]])
    const g = groups.get(name)
    if (g === undefined) groups.set(name, { name, count: 1, selfBytes: size })
    else { g.count++; g.selfBytes += size }
  }
  const byClass = [...groups.values()].sort((a, b) => b.selfBytes - a.selfBytes).slice(0, top)
  for (const g of byClass) g.selfBytes /= perCount
  return { nodes: snapshot.node_count, totalSelfBytes: total / perCount, byClass }
}

export function formatClasses (heap) {
  const lines = [`  ${'class'.padEnd(40)}${'count'.padStart(10)}${'self B'.padStart(10)}`]
  for (const c of heap.byClass) lines.push(`  ${c.name.slice(0, 40).padEnd(40)}${c.count.toLocaleString('en-US').padStart(10)}${c.selfBytes.toFixed(0).padStart(10)}`)
  return lines.join('\n')
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values, positionals } = parseArgs({ options: { per: { type: 'string' }, top: { type: 'string' } }, allowPositionals: true })
  const heap = summariseHeap(positionals[0], { perCount: Number(values.per ?? 1), top: Number(values.top ?? 15) })
  process.stdout.write(`${heap.nodes.toLocaleString('en-US')} objects, ${heap.totalSelfBytes.toFixed(0)} B in all${values.per === undefined ? '' : ' per unit'}\n${formatClasses(heap)}\n`)
}
