/**
 * bench/heap-summary.mjs, the heap summary of `npm run bench -- --scenarios=memory`: a hand-written
 * snapshot whose dominator tree is worked out below, the same graph in another field layout, and a
 * real snapshot of this process holding a known number of objects of a class of its own.
 */
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { formatHeapSummary, summariseHeap } from '../bench/heap-summary.mjs'

const script = fileURLToPath(new URL('../bench/heap-summary.mjs', import.meta.url))
const run = promisify(execFile)

/** snapshot.meta as Node 20's v8.writeHeapSnapshot writes it. */
const REAL_META = {
  node_fields: ['type', 'name', 'id', 'self_size', 'edge_count', 'trace_node_id', 'detachedness'],
  node_types: [['hidden', 'array', 'string', 'object', 'code', 'closure', 'regexp', 'number', 'native', 'synthetic', 'concatenated string', 'sliced string', 'symbol', 'bigint', 'object shape', 'wasm object'], 'string', 'number', 'number', 'number', 'number', 'number'],
  edge_fields: ['type', 'name_or_index', 'to_node'],
  edge_types: [['context', 'element', 'property', 'internal', 'hidden', 'shortcut', 'weak'], 'string_or_number', 'node'],
  trace_function_info_fields: ['function_id', 'name', 'script_name', 'script_id', 'line', 'column'],
  trace_node_fields: ['id', 'function_info_index', 'count', 'size', 'children'],
  sample_fields: ['timestamp_us', 'last_assigned_id'],
  location_fields: ['object_index', 'script_id', 'line', 'column']
}

type HandEdge = [type: string, name: string | number, to: number]
interface HandNode { type: string, name: string, self: number, edges?: HandEdge[] }

// The entry V8 writes for a WeakMap value, on both the key's edge and the table's (node 16, id 33).
const WEAK_MAP_EDGE = '1 / part of key (Key @35) -> value (Val @37) pair in WeakMap (table @33)'
const CACHE = 'Cache "\u00e9"'

/**
 * The graph, by ordinal (id = 2 × ordinal + 1). What retains what, by the rules at the top of
 * bench/heap-summary.mjs:
 *   - Holder 4 hangs off global, and off (GC roots) too; the GC roots' edge into the user's objects
 *     does not count, so global (not the root) dominates it.
 *   - Shared 6 is reachable from both Holders, so neither retains it: global does.
 *   - Cache 7 is held by Payload 5, and weakly by Holder 4: only Payload retains it.
 *   - Holder 9 sits inside Holder 3: the class's retained size counts 3's subtree once.
 *   - Ghost 12 has only a weak edge and a shortcut from a non-root node: unreachable; Orphan 11 has
 *     no retainer at all.
 *   - Val 18 is retained by its key (17), not by the WeakMap's table (16) as well.
 *   - The constructor function Holder (13) is a Function, not a Holder.
 */
const GRAPH: HandNode[] = [
  /* 0 */ { type: 'synthetic', name: '', self: 0, edges: [['element', 1, 1], ['shortcut', 'global', 2]] },
  /* 1 */ { type: 'synthetic', name: '(GC roots)', self: 0, edges: [['element', 1, 4], ['element', 2, 14]] },
  /* 2 */ {
    type: 'object',
    name: 'global',
    self: 40,
    edges: [['property', 'a', 3], ['property', 'b', 4], ['property', 'Holder', 13], ['property', 'self', 2], ['property', 'wm', 15], ['property', 'k', 17]]
  },
  /* 3 */ { type: 'object', name: 'Holder', self: 100, edges: [['property', 'p', 5], ['property', 's', 6], ['property', 'inner', 9], ['weak', 'w', 12]] },
  /* 4 */ { type: 'object', name: 'Holder', self: 100, edges: [['property', 's', 6], ['weak', 'c', 7]] },
  /* 5 */ { type: 'object', name: 'Payload', self: 1000, edges: [['property', 'tricky ] , " { }', 8], ['property', 'cache', 7], ['shortcut', 'x', 12]] },
  /* 6 */ { type: 'object', name: 'Shared', self: 500 },
  /* 7 */ { type: 'object', name: CACHE, self: 300 },
  /* 8 */ { type: 'string', name: 'say "h\u00e9" C:\\', self: 32 },
  /* 9 */ { type: 'object', name: 'Holder', self: 100, edges: [['internal', 'elements', 10]] },
  /* 10 */ { type: 'array', name: '(object elements)', self: 80 },
  /* 11 */ { type: 'object', name: 'Orphan', self: 50 },
  /* 12 */ { type: 'object', name: 'Ghost', self: 70 },
  /* 13 */ { type: 'closure', name: 'Holder', self: 60 },
  /* 14 */ { type: 'hidden', name: 'system / Context', self: 16 },
  /* 15 */ { type: 'object', name: 'WeakMap', self: 24, edges: [['internal', 'table', 16]] },
  /* 16 */ { type: 'hidden', name: 'system / EphemeronHashTable', self: 48, edges: [['weak', '1', 17], ['internal', WEAK_MAP_EDGE, 18]] },
  /* 17 */ { type: 'object', name: 'Key', self: 10, edges: [['internal', WEAK_MAP_EDGE, 18]] },
  /* 18 */ { type: 'object', name: 'Val', self: 200 }
]

/** Classes by self size, largest first (ties by name), as worked out from the graph above. */
const EXPECTED = [
  { name: 'Payload', count: 1, selfBytes: 1000, retainedBytes: 1000 + 32 + 300 },
  { name: 'Shared', count: 1, selfBytes: 500, retainedBytes: 500 },
  { name: CACHE, count: 1, selfBytes: 300, retainedBytes: 300 },
  { name: 'Holder', count: 3, selfBytes: 300, retainedBytes: (100 + 1332 + 180) + 100 },
  { name: 'Val', count: 1, selfBytes: 200, retainedBytes: 200 },
  { name: '(array)', count: 1, selfBytes: 80, retainedBytes: 80 },
  { name: '(system)', count: 2, selfBytes: 64, retainedBytes: 64 },
  { name: 'Function', count: 1, selfBytes: 60, retainedBytes: 60 },
  { name: 'global', count: 1, selfBytes: 40, retainedBytes: 40 + 1612 + 100 + 500 + 60 + 72 + 210 },
  { name: '(string)', count: 1, selfBytes: 32, retainedBytes: 32 },
  { name: 'WeakMap', count: 1, selfBytes: 24, retainedBytes: 72 },
  { name: 'Key', count: 1, selfBytes: 10, retainedBytes: 210 }
]

interface Layout {
  meta: typeof REAL_META
  counts: boolean
}

/** V8 escapes every non-ASCII character as \uXXXX. */
function jsonString (s: string): string {
  return JSON.stringify(s).replace(/[^\x20-\x7e]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'))
}

/** The graph as a .heapsnapshot in the given layout, one row per line as V8 writes it. */
function snapshotText (graph: HandNode[], { meta, counts }: Layout): string {
  // Strings that would throw a naive scanner off come first, so every later index depends on them.
  const strings = ['<dummy>', 'C:\\"', 'tricky ] , " { }']
  const index = (s: string): number => {
    const i = strings.indexOf(s)
    return i !== -1 ? i : strings.push(s) - 1
  }
  const nodeFields = meta.node_fields
  const edgeFields = meta.edge_fields
  const nodeTypes = meta.node_types[nodeFields.indexOf('type')] as string[]
  const edgeTypes = meta.edge_types[edgeFields.indexOf('type')] as string[]
  const nodes: string[] = []
  const edges: string[] = []
  graph.forEach((node, ordinal) => {
    const values: Record<string, number> = {
      type: nodeTypes.indexOf(node.type),
      name: index(node.name),
      id: 2 * ordinal + 1,
      self_size: node.self,
      edge_count: node.edges?.length ?? 0,
      trace_node_id: 0,
      detachedness: 0
    }
    nodes.push(nodeFields.map((f) => values[f]).join(','))
    for (const [type, name, to] of node.edges ?? []) {
      const edge: Record<string, number> = {
        type: edgeTypes.indexOf(type),
        name_or_index: typeof name === 'number' ? name : index(name),
        to_node: to * nodeFields.length
      }
      edges.push(edgeFields.map((f) => edge[f]).join(','))
    }
  })
  const header = { meta, ...(counts ? { node_count: graph.length, edge_count: edges.length } : {}), trace_function_count: 0 }
  return `{"snapshot":${JSON.stringify(header)},\n"nodes":[${nodes.join('\n,')}],\n"edges":[${edges.join('\n,')}],\n` +
    `"trace_function_infos":[],\n"trace_tree":[],\n"samples":[],\n"locations":[0,1,2,3],\n"strings":[${strings.map(jsonString).join(',\n')}]}\n`
}

function tmp (t: Test, prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

t.test('a hand-written snapshot: dominators, weak and shortcut edges, per-class retained sizes', async (t) => {
  const dir = tmp(t, 'heap-summary-')
  const file = path.join(dir, 'hand.heapsnapshot')
  const text = snapshotText(GRAPH, { meta: REAL_META, counts: true })
  t.ok(text.includes('"Cache \\"\\u00e9\\""') && text.includes('"C:\\\\\\""'), 'the strings really are escaped in the file')
  writeFileSync(file, text)

  const all = await summariseHeap(file, { top: 100, classes: ['Holder', 'Payload', CACHE, 'Key', 'Ghost', 'Orphan'] })
  t.equal(all.nodes, GRAPH.length)
  t.equal(all.edges, GRAPH.reduce((s, n) => s + (n.edges?.length ?? 0), 0))
  t.equal(all.totalSelfBytes, 2610, 'the self sizes of everything reachable')
  t.same(all.unreachable, { count: 2, selfBytes: 50 + 70 }, 'Orphan and Ghost are not reachable over retaining edges')
  t.same(all.byConstructor, EXPECTED)
  t.same(all.classes.Holder, { count: 3, selfBytes: 300, retainedBytes: 1712 }, 'Holder 9 is inside Holder 3 and counted once')
  t.same(all.classes.Payload, { count: 1, selfBytes: 1000, retainedBytes: 1332 }, 'the weak edge from Holder 4 does not share Cache')
  t.same(all.classes[CACHE], { count: 1, selfBytes: 300, retainedBytes: 300 }, 'a name with \\" and \\u00e9 escapes')
  t.same(all.classes.Key, { count: 1, selfBytes: 10, retainedBytes: 210 }, 'a WeakMap value is retained by its key')
  t.same(all.classes.Ghost, { count: 0, selfBytes: 0, retainedBytes: 0 })
  t.same(all.classes.Orphan, { count: 0, selfBytes: 0, retainedBytes: 0 })

  const per = await summariseHeap(file, { top: 3, perCount: 2, classes: ['Holder'] })
  t.same(per.byConstructor.map((c) => c.name), ['Payload', 'Shared', CACHE], 'the top classes by self size')
  t.same(per.classes.Holder, { count: 3, selfBytes: 150, retainedBytes: 856 }, 'bytes are divided, counts are not')
  t.equal(per.totalSelfBytes, 1305)
  t.equal(per.unreachable.selfBytes, 60)
  t.match(formatHeapSummary(per), /Holder\s+3\s+150\s+856/)
})

t.test('the field layout comes from snapshot.meta, and the counts may be missing', async (t) => {
  const dir = tmp(t, 'heap-summary-')
  const file = path.join(dir, 'shuffled.heapsnapshot')
  // node_types and edge_types run parallel to the fields; the type names come in another order too.
  const meta = {
    ...REAL_META,
    node_fields: ['detachedness', 'edge_count', 'self_size', 'trace_node_id', 'id', 'name', 'type'],
    node_types: ['number', 'number', 'number', 'number', 'number', 'string', [...(REAL_META.node_types[0] as string[])].reverse()],
    edge_fields: ['to_node', 'name_or_index', 'type'],
    edge_types: ['node', 'string_or_number', ['weak', 'shortcut', 'hidden', 'internal', 'property', 'element', 'context']]
  }
  writeFileSync(file, snapshotText(GRAPH, { meta, counts: false }))
  const summary = await summariseHeap(file, { top: 100 })
  t.same(summary.byConstructor, EXPECTED)
  t.equal(summary.totalSelfBytes, 2610)
})

t.test('a file that is not a whole heap snapshot is refused', async (t) => {
  const dir = tmp(t, 'heap-summary-')
  const text = snapshotText(GRAPH, { meta: REAL_META, counts: true })
  const cut = path.join(dir, 'cut.heapsnapshot')
  writeFileSync(cut, text.slice(0, text.indexOf('"edges"') + 20))
  await t.rejects(summariseHeap(cut), /heap snapshot/)
  const short = path.join(dir, 'short.heapsnapshot')
  writeFileSync(short, text.replace('"edge_count":' + String(GRAPH.reduce((s, n) => s + (n.edges?.length ?? 0), 0)), '"edge_count":3'))
  await t.rejects(summariseHeap(short), /more than the 3 rows/)
  await t.rejects(summariseHeap(fileURLToPath(new URL('../package.json', import.meta.url))), /missing/)
  await t.rejects(summariseHeap(cut, { perCount: 0 }), RangeError)
})

t.test('the command line prints the table', async (t) => {
  const dir = tmp(t, 'heap-summary-')
  const file = path.join(dir, 'hand.heapsnapshot')
  writeFileSync(file, snapshotText(GRAPH, { meta: REAL_META, counts: true }))
  const { stdout } = await run(process.execPath, [script, file, '--per=2', '--top=4', '--class=Holder', '--class=Nobody'])
  t.match(stdout, /19 nodes, 24 edges; 1,305 B reachable \(2 unreachable nodes, 60 B, left out\), bytes per 2/)
  t.match(stdout, /Payload\s+1\s+500\s+666/)
  t.match(stdout, /asked for:\n\s+Holder\s+3\s+150\s+856\n\s+Nobody\s+0\s+0\s+0/)
  await t.rejects(run(process.execPath, [script]), { code: 2 })
})

/**
 * Writes a real snapshot of a child process holding 1000 objects of a class no other code has,
 * each with ~10 000 bytes of its own (an array of 1250 doubles). A child, because in this process
 * tap's TypeScript loader makes v8.writeHeapSnapshot take ~30 s; plain node takes well under one.
 */
const PROBE = `
const v8 = require('node:v8')
class HeapSummaryProbe {
  constructor (i) { this.payload = Array.from({ length: 1250 }, (_, k) => i + k + 0.5) }
}
const held = Array.from({ length: 1000 }, (_, i) => new HeapSummaryProbe(i))
process.stdout.write(v8.writeHeapSnapshot(process.argv.at(-1)))
if (held.length !== 1000) process.exitCode = 1
`

t.test('a real snapshot: 1000 objects of a class, each retaining its own payload', async (t) => {
  const dir = tmp(t, 'heap-summary-')
  const { stdout } = await run(process.execPath, ['--input-type=commonjs', '-e', PROBE, path.join(dir, 'probe.heapsnapshot')])
  const file = stdout.trim()
  t.equal(file, path.join(dir, 'probe.heapsnapshot'))

  const whole = await summariseHeap(file, { top: 1_000_000, classes: ['HeapSummaryProbe'] })
  const probe = whole.classes.HeapSummaryProbe
  t.equal(probe.count, 1000, 'every instance, and not the constructor function')
  t.ok(probe.retainedBytes / probe.count >= 10_000, `each retains its payload (${probe.retainedBytes / probe.count} B)`)
  t.ok(probe.retainedBytes > probe.selfBytes, 'retains more than itself')
  t.ok(probe.selfBytes / probe.count < 200, 'its own size is small: the payload is another object')
  t.same(whole.byConstructor.find((c) => c.name === 'HeapSummaryProbe'), { name: 'HeapSummaryProbe', ...probe })
  const selfSum = whole.byConstructor.reduce((s, c) => s + c.selfBytes, 0)
  t.equal(selfSum, whole.totalSelfBytes, 'every reachable byte is in one class')
  t.ok(whole.nodes > 1000)

  const per = await summariseHeap(file, { top: 5, perCount: 1000, classes: ['HeapSummaryProbe'] })
  t.equal(per.byConstructor.length, 5)
  t.equal(per.classes.HeapSummaryProbe.count, 1000)
  t.equal(per.classes.HeapSummaryProbe.retainedBytes, probe.retainedBytes / 1000)
  t.equal(per.totalSelfBytes, whole.totalSelfBytes / 1000)
})
