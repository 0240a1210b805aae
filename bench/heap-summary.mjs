/**
 * A V8 heap snapshot (.heapsnapshot: the inspector's HeapProfiler.takeHeapSnapshot,
 * v8.writeHeapSnapshot, node --heapsnapshot-signal) summarised the way Chrome DevTools' Summary view
 * does: the objects grouped by class, each group's count, self (shallow) size and retained size, the
 * last from the dominator tree. The bench reports the heap's largest retainers per socket with it.
 *
 *   node bench/heap-summary.mjs FILE [--per=N] [--top=K] [--class=Name ...]
 *
 * Built for snapshots of hundreds of MB and millions of nodes, which are too big to JSON.parse (a
 * string is at most ~512 MB): the file is read into one Buffer and scanned. Only the "snapshot"
 * header is JSON.parse'd; "nodes" and "edges" are decoded from the bytes straight into typed arrays
 * (one per field, found through snapshot.meta), "strings" one string at a time.
 *
 * What retains what follows DevTools (front_end/entrypoints/heap_snapshot_worker/HeapSnapshot.ts):
 *   - weak edges and self edges retain nothing;
 *   - shortcut edges count only from the root (there they mark the user's global objects);
 *   - objects reachable from those globals are retained only from the root and from each other: an
 *     edge into them from anything else (the GC roots, the debugger's handles) does not count;
 *   - a WeakMap value is retained by its key, not also by the WeakMap's table.
 * The dominator tree (Lengauer–Tarjan) is rooted at the snapshot's root (root_index, else node 0); a
 * node's retained size is its self size plus the retained sizes of the nodes it immediately
 * dominates. Nodes the root cannot reach that way are left out of every figure (DevTools hangs them
 * off the root instead); `unreachable` says how many there were.
 *
 * A group's retained size is the sum of the retained sizes of its nodes that no other node of the
 * same group dominates (so nested instances are not counted twice), and like DevTools, only nodes
 * with a non-zero self size are counted at all.
 *
 * Where the figures differ from what DevTools shows: self sizes are V8's own (DevTools moves the
 * size of an array or hidden node one object alone owns, such as its properties' or elements'
 * backing store, onto that object, so its "(array)" and "(system)" rows are smaller and its
 * objects' shallow sizes larger; retained sizes hardly change); classes are grouped by name only
 * (DevTools splits same-named constructors by source location and plain Objects by their property
 * names, "{a, b}"); and the string kinds, and object shapes, are merged (see classNamer).
 */
import { open } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

// ---------------------------------------------------------------- scanning the file

const QUOTE = 0x22
const BACKSLASH = 0x5c
const COMMA = 0x2c
const COLON = 0x3a
const OPEN_BRACKET = 0x5b
const CLOSE_BRACKET = 0x5d
const OPEN_BRACE = 0x7b
const CLOSE_BRACE = 0x7d

function isSpace (c) {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09
}

function skipSpace (buf, p) {
  while (p < buf.length && isSpace(buf[p])) p++
  return p
}

function fail (p, what) {
  throw new Error(`heap snapshot: ${what} (at byte ${p})`)
}

/** The position after `c` (after any whitespace before it). */
function expect (buf, p, c, what) {
  p = skipSpace(buf, p)
  if (buf[p] !== c) fail(p, `expected ${what}`)
  return p + 1
}

/** Index of the quote closing the JSON string whose opening quote is at `p`. */
function stringEnd (buf, p) {
  let q = p
  for (;;) {
    q = buf.indexOf(QUOTE, q + 1)
    if (q === -1) fail(p, 'unterminated string')
    // The quote is escaped when an odd number of backslashes comes right before it.
    let slashes = 0
    while (buf[q - 1 - slashes] === BACKSLASH) slashes++
    if (slashes % 2 === 0) return q
  }
}

/** The position just after the JSON value starting at `p` (any value: only its extent matters). */
function skipValue (buf, p) {
  p = skipSpace(buf, p)
  const first = buf[p]
  if (first === QUOTE) return stringEnd(buf, p) + 1
  if (first === OPEN_BRACKET || first === OPEN_BRACE) {
    let depth = 0
    while (p < buf.length) {
      const c = buf[p]
      if (c === QUOTE) {
        p = stringEnd(buf, p) + 1
        continue
      }
      if (c === OPEN_BRACKET || c === OPEN_BRACE) depth++
      else if ((c === CLOSE_BRACKET || c === CLOSE_BRACE) && --depth === 0) return p + 1
      p++
    }
    fail(p, 'unterminated array or object')
  }
  const start = p
  while (p < buf.length && !isSpace(buf[p]) && buf[p] !== COMMA && buf[p] !== CLOSE_BRACKET && buf[p] !== CLOSE_BRACE) p++
  if (p === start) fail(p, 'expected a value')
  return p
}

/** How many integers the array opening at `p` holds (for a header without node_count/edge_count). */
function countIntegers (buf, p) {
  p = expect(buf, p, OPEN_BRACKET, '[')
  let count = 0
  let inNumber = false
  for (; p < buf.length; p++) {
    const c = buf[p]
    if (c >= 0x30 && c <= 0x39) {
      if (!inNumber) count++
      inNumber = true
    } else if (c === CLOSE_BRACKET) {
      return count
    } else {
      inNumber = false
    }
  }
  return fail(p, 'unterminated integer array')
}

/**
 * Decodes the flat integer array opening at `p` (rows of `fields` values, `rows` of them) into one
 * typed array per field: `sinks[f]` (a Uint32Array, or null for a field nobody needs), except field
 * `wideField`, which goes to the Float64Array `wide` (sizes may exceed 32 bits). Returns the position
 * after the closing bracket.
 */
function decodeIntegers (buf, p, fields, rows, sinks, wideField, wide) {
  p = expect(buf, p, OPEN_BRACKET, '[')
  const total = fields * rows
  const end = buf.length
  let value = 0
  let digits = 0
  let field = 0
  let row = 0
  let seen = 0
  while (p < end) {
    const c = buf[p++]
    const d = c - 0x30
    if (d >= 0 && d <= 9) {
      value = value * 10 + d
      digits++
      continue
    }
    if (digits !== 0) {
      if (seen === total) fail(p, `more than the ${rows} rows the header announced`)
      if (field === wideField) {
        wide[row] = value
      } else {
        if (value > 0xffffffff) fail(p, `value ${value} out of range`)
        const sink = sinks[field]
        if (sink !== null) sink[row] = value
      }
      seen++
      if (++field === fields) {
        field = 0
        row++
      }
      value = 0
      digits = 0
    }
    if (c === COMMA || isSpace(c)) continue
    if (c === CLOSE_BRACKET) {
      if (seen !== total) fail(p, `${seen} values where the header announced ${rows} rows of ${fields}`)
      return p
    }
    fail(p - 1, `unexpected ${JSON.stringify(String.fromCharCode(c))} in an integer array`)
  }
  return fail(p, 'unterminated integer array')
}

/** Decodes the JSON array of strings opening at `p`. */
function decodeStrings (buf, p) {
  p = expect(buf, p, OPEN_BRACKET, '[')
  const strings = []
  p = skipSpace(buf, p)
  if (buf[p] === CLOSE_BRACKET) return { strings, end: p + 1 }
  for (;;) {
    p = skipSpace(buf, p)
    if (buf[p] !== QUOTE) fail(p, 'expected a string')
    const close = stringEnd(buf, p)
    let escaped = false
    for (let q = p + 1; q < close; q++) {
      if (buf[q] === BACKSLASH) {
        escaped = true
        break
      }
    }
    // Without escapes the bytes are the string's UTF-8; with any, JSON.parse undoes them.
    strings.push(escaped ? JSON.parse(buf.toString('utf8', p, close + 1)) : buf.toString('utf8', p + 1, close))
    p = skipSpace(buf, close + 1)
    if (buf[p] === COMMA) {
      p++
    } else if (buf[p] === CLOSE_BRACKET) {
      return { strings, end: p + 1 }
    } else {
      fail(p, 'expected , or ] in strings')
    }
  }
}

/** Reads the whole file into one Buffer (fs.readFile stops at 2 GiB). */
async function readWhole (file) {
  const handle = await open(file, 'r')
  try {
    const { size } = await handle.stat()
    const buf = Buffer.allocUnsafe(size)
    let offset = 0
    while (offset < size) {
      const { bytesRead } = await handle.read(buf, offset, Math.min(size - offset, 1 << 30), offset)
      if (bytesRead === 0) break
      offset += bytesRead
    }
    return offset === size ? buf : buf.subarray(0, offset)
  } finally {
    await handle.close()
  }
}

function fieldIndex (list, name, where) {
  const i = list.indexOf(name)
  if (i === -1) throw new Error(`heap snapshot: meta.${where} has no "${name}"`)
  return i
}

/**
 * The flat integer array at `p` (a snapshot's "nodes" or "edges") as one Uint32Array per field
 * named in `wanted`, in that order, and the field `wideName` (self_size, which can pass 2^32) as a
 * Float64Array; the other fields are skipped. `rows` comes from the header when it has it.
 */
function decodeTable (buf, p, header, where, rows, wanted, wideName) {
  const fields = header.meta[where]
  const count = rows ?? countIntegers(buf, p) / fields.length
  const sinks = fields.map(() => null)
  const columns = wanted.map((name) => (sinks[fieldIndex(fields, name, where)] = new Uint32Array(count)))
  const wide = wideName === null ? null : new Float64Array(count)
  const end = decodeIntegers(buf, p, fields.length, count, sinks, wideName === null ? -1 : fieldIndex(fields, wideName, where), wide)
  return { rows: count, columns, wide, end }
}

/**
 * The graph of a snapshot held in `buf`: per-node and per-edge typed arrays, edges addressed by
 * ordinal (edge k of node u is firstEdge[u] + k), targets as node ordinals.
 */
function parseSnapshot (buf) {
  let header = null
  let nodes = null
  let edges = null
  let strings = null
  let p = expect(buf, 0, OPEN_BRACE, '{')
  for (;;) {
    p = skipSpace(buf, p)
    if (buf[p] === CLOSE_BRACE) break
    if (buf[p] !== QUOTE) fail(p, 'expected a key')
    const keyEnd = stringEnd(buf, p)
    const key = JSON.parse(buf.toString('utf8', p, keyEnd + 1))
    p = skipSpace(buf, expect(buf, keyEnd + 1, COLON, ':'))
    if (key === 'snapshot') {
      const end = skipValue(buf, p)
      header = JSON.parse(buf.toString('utf8', p, end))
      p = end
    } else if (key === 'nodes' || key === 'edges') {
      if (header === null) fail(p, `"${key}" before "snapshot"`)
      const table = key === 'nodes'
        ? decodeTable(buf, p, header, 'node_fields', header.node_count, ['type', 'name', 'id', 'edge_count'], 'self_size')
        : decodeTable(buf, p, header, 'edge_fields', header.edge_count, ['type', 'name_or_index', 'to_node'], null)
      p = table.end
      if (key === 'nodes') {
        const [type, name, id, edgeCount] = table.columns
        nodes = { count: table.rows, type, name, id, edgeCount, self: table.wide }
      } else {
        const [type, name, to] = table.columns
        edges = { count: table.rows, type, name, to }
      }
    } else if (key === 'strings') {
      const decoded = decodeStrings(buf, p)
      strings = decoded.strings
      p = decoded.end
    } else {
      p = skipValue(buf, p)
    }
    p = skipSpace(buf, p)
    if (buf[p] === COMMA) p++
    else if (buf[p] !== CLOSE_BRACE) fail(p, 'expected , or }')
  }
  if (header === null || nodes === null || edges === null || strings === null) {
    throw new Error('heap snapshot: "snapshot", "nodes", "edges" or "strings" is missing')
  }

  const meta = header.meta
  const n = nodes.count
  const m = edges.count
  const nodeFields = meta.node_fields.length
  // to_node is an index into the flat nodes array: make it an ordinal.
  const to = edges.to
  for (let e = 0; e < m; e++) {
    const target = to[e]
    if (target % nodeFields !== 0 || target / nodeFields >= n) fail(0, `edge ${e} points at ${target}, not at a node`)
    to[e] = target / nodeFields
  }
  const firstEdge = new Uint32Array(n + 1)
  let e = 0
  for (let u = 0; u < n; u++) {
    firstEdge[u] = e
    e += nodes.edgeCount[u]
  }
  firstEdge[n] = e
  if (e !== m) throw new Error(`heap snapshot: the nodes' edge counts add up to ${e}, but there are ${m} edges`)
  const rootIndex = header.root_index ?? 0
  if (rootIndex % nodeFields !== 0 || rootIndex / nodeFields >= n) throw new Error(`heap snapshot: root_index ${rootIndex} is not a node`)

  return {
    n,
    m,
    root: rootIndex / nodeFields,
    nodeTypes: meta.node_types[fieldIndex(meta.node_fields, 'type', 'node_fields')],
    edgeTypes: meta.edge_types[fieldIndex(meta.edge_fields, 'type', 'edge_fields')],
    type: nodes.type,
    name: nodes.name,
    id: nodes.id,
    self: nodes.self,
    firstEdge,
    edgeType: edges.type,
    edgeName: edges.name,
    edgeTo: to,
    strings
  }
}

// ---------------------------------------------------------------- dominators and retained sizes

// The name V8 gives the internal edge from a WeakMap's table to a value: the key has an edge with
// the same text, and DevTools counts only the key's as retaining.
const WEAK_MAP_EDGE = /^\d+ \/ part of key \(.*? @\d+\) -> value \(.*? @\d+\) pair in WeakMap \(table @(\d+)\)$/

/**
 * Which edges retain (1) and which do not (0), by DevTools' rules: see the top of the file.
 */
function retainingEdges (g) {
  const { n, m, root, nodeTypes, edgeTypes, type, name, id, firstEdge, edgeType, edgeName, edgeTo, strings } = g
  const weak = edgeTypes.indexOf('weak')
  const shortcut = edgeTypes.indexOf('shortcut')
  const internal = edgeTypes.indexOf('internal')
  const element = edgeTypes.indexOf('element')
  const synthetic = nodeTypes.indexOf('synthetic')

  // The user's objects: everything reachable over non-weak edges from the root's shortcut targets
  // (the global objects) and from a "(Document DOM trees)" root (in a browser).
  const user = new Uint8Array(n)
  const stack = new Uint32Array(n)
  let sp = 0
  for (let e = firstEdge[root]; e < firstEdge[root + 1]; e++) {
    const v = edgeTo[e]
    const t = edgeType[e]
    const entry = t === shortcut || (t === element && type[v] === synthetic && strings[name[v]] === '(Document DOM trees)')
    if (entry && user[v] === 0) {
      user[v] = 1
      stack[sp++] = v
    }
  }
  while (sp > 0) {
    const u = stack[--sp]
    for (let e = firstEdge[u], end = firstEdge[u + 1]; e < end; e++) {
      if (edgeType[e] === weak) continue
      const v = edgeTo[e]
      if (user[v] === 0) {
        user[v] = 1
        stack[sp++] = v
      }
    }
  }

  // For each string, the WeakMap table id in it (-1: not a WeakMap edge name; -2: not looked at yet).
  const tableOf = new Float64Array(strings.length).fill(-2)
  const tableIn = (s) => {
    if (s >= strings.length) return -1
    if (tableOf[s] === -2) {
      const text = strings[s]
      const match = text.includes(' pair in WeakMap (table @') ? WEAK_MAP_EDGE.exec(text) : null
      tableOf[s] = match === null ? -1 : Number(match[1])
    }
    return tableOf[s]
  }

  const retaining = new Uint8Array(m)
  for (let u = 0; u < n; u++) {
    const fromRoot = u === root
    const fromUser = user[u] === 1
    for (let e = firstEdge[u], end = firstEdge[u + 1]; e < end; e++) {
      const t = edgeType[e]
      if (t === weak) continue
      const v = edgeTo[e]
      if (v === u) continue
      if (!fromRoot && (t === shortcut || (user[v] === 1 && !fromUser))) continue
      if (t === internal && tableIn(edgeName[e]) === id[u]) continue
      retaining[e] = 1
    }
  }
  return retaining
}

/**
 * The dominator tree over the retaining edges, by Lengauer–Tarjan (the simple version, with path
 * compression), everything in DFS-number space: vertex i (1 = the root, up to `reached`) is node
 * vertex[i]; idom[i] is the DFS number of its immediate dominator. dfnum[u] is 0 for nodes the root
 * does not reach.
 */
function dominators (g, retaining) {
  const { n, root, firstEdge, edgeTo } = g
  const dfnum = new Uint32Array(n)
  const vertex = new Uint32Array(n + 1)
  const parent = new Uint32Array(n + 1)
  const stack = new Uint32Array(n)
  const cursor = new Uint32Array(n + 2)

  // Iterative depth-first search in preorder.
  let reached = 0
  dfnum[root] = ++reached
  vertex[reached] = root
  cursor[root] = firstEdge[root]
  let sp = 0
  stack[sp++] = root
  while (sp > 0) {
    const u = stack[sp - 1]
    const end = firstEdge[u + 1]
    let e = cursor[u]
    while (e < end && (retaining[e] === 0 || dfnum[edgeTo[e]] !== 0)) e++
    if (e === end) {
      sp--
      continue
    }
    cursor[u] = e + 1
    const v = edgeTo[e]
    dfnum[v] = ++reached
    vertex[reached] = v
    parent[reached] = dfnum[u]
    cursor[v] = firstEdge[v]
    stack[sp++] = v
  }
  const N = reached

  // Predecessors over retaining edges, by DFS number (only reached nodes have reached successors).
  const predStart = new Uint32Array(N + 2)
  for (let i = 1; i <= N; i++) {
    const u = vertex[i]
    for (let e = firstEdge[u], end = firstEdge[u + 1]; e < end; e++) {
      if (retaining[e] === 1) predStart[dfnum[edgeTo[e]] + 1]++
    }
  }
  for (let i = 1; i <= N + 1; i++) predStart[i] += predStart[i - 1]
  const preds = new Uint32Array(predStart[N + 1])
  const fill = cursor // reused: no longer needed for the search
  fill.set(predStart.subarray(0, N + 1))
  for (let i = 1; i <= N; i++) {
    const u = vertex[i]
    for (let e = firstEdge[u], end = firstEdge[u + 1]; e < end; e++) {
      if (retaining[e] === 1) preds[fill[dfnum[edgeTo[e]]]++] = i
    }
  }

  const semi = new Uint32Array(N + 1)
  const label = new Uint32Array(N + 1)
  const ancestor = new Uint32Array(N + 1)
  const idom = new Uint32Array(N + 1)
  const bucketHead = new Uint32Array(N + 1)
  const bucketNext = new Uint32Array(N + 1)
  const trail = stack // reused: the compression path is never longer than the tree is deep
  for (let i = 1; i <= N; i++) semi[i] = label[i] = i

  // eval(v): the vertex of least semi-dominator on the forest path above v, compressing the path.
  const evaluate = (v) => {
    if (ancestor[v] === 0) return v
    let depth = 0
    let x = v
    while (ancestor[ancestor[x]] !== 0) {
      trail[depth++] = x
      x = ancestor[x]
    }
    while (depth > 0) {
      x = trail[--depth]
      const a = ancestor[x]
      if (semi[label[a]] < semi[label[x]]) label[x] = label[a]
      ancestor[x] = ancestor[a]
    }
    return label[v]
  }

  for (let w = N; w >= 2; w--) {
    for (let k = predStart[w], end = predStart[w + 1]; k < end; k++) {
      const u = evaluate(preds[k])
      if (semi[u] < semi[w]) semi[w] = semi[u]
    }
    const s = semi[w]
    bucketNext[w] = bucketHead[s]
    bucketHead[s] = w
    const p = parent[w]
    ancestor[w] = p
    for (let v = bucketHead[p]; v !== 0; v = bucketNext[v]) {
      const u = evaluate(v)
      idom[v] = semi[u] < semi[v] ? u : p
    }
    bucketHead[p] = 0
  }
  for (let w = 2; w <= N; w++) {
    if (idom[w] !== semi[w]) idom[w] = idom[idom[w]]
  }
  idom[1] = 0
  return { reached: N, dfnum, vertex, idom }
}

// ---------------------------------------------------------------- classes

/**
 * Class names, as DevTools' Summary groups them but for two merges: objects and native objects by
 * their constructor name; every string kind as (string) (DevTools keeps (concatenated string) and
 * (sliced string) apart); hidden and object-shape nodes as (system) (DevTools: (object shape));
 * functions as Function and regular expressions as RegExp, so a class's constructor function is not
 * counted among its instances; code as (compiled code); anything else as (its type): (array), (number)…
 */
function classNamer (nodeTypes) {
  return nodeTypes.map((t) => {
    switch (t) {
      case 'object':
      case 'native':
        return null // by the node's name
      case 'string':
      case 'concatenated string':
      case 'sliced string':
        return '(string)'
      case 'hidden':
      case 'object shape':
        return '(system)'
      case 'closure':
        return 'Function'
      case 'regexp':
        return 'RegExp'
      case 'code':
        return '(compiled code)'
      case 'number':
      case 'heap number':
        return '(number)'
      default:
        return `(${t})`
    }
  })
}

// ---------------------------------------------------------------- the summary

function summarise (g, { top, perCount, classes }) {
  const { n, m, type, name, self, strings } = g
  const retaining = retainingEdges(g)
  const { reached, dfnum, vertex, idom } = dominators(g, retaining)

  // Retained sizes, children before their dominators (a dominator has the smaller DFS number).
  const retained = new Float64Array(reached + 1)
  for (let i = 1; i <= reached; i++) retained[i] = self[vertex[i]]
  for (let i = reached; i >= 2; i--) retained[idom[i]] += retained[i]

  // Each reached node's class, as a small integer.
  const names = []
  const ids = new Map()
  const classId = (text) => {
    let c = ids.get(text)
    if (c === undefined) {
      c = names.length
      names.push(text)
      ids.set(text, c)
    }
    return c
  }
  const byType = classNamer(g.nodeTypes).map((text) => text === null ? -1 : classId(text))
  const byName = new Int32Array(strings.length).fill(-1)
  const classOf = new Uint32Array(reached + 1)
  for (let i = 1; i <= reached; i++) {
    const u = vertex[i]
    let c = byType[type[u]] ?? classId(`(type ${type[u]})`)
    if (c === -1) {
      const s = name[u]
      c = byName[s]
      if (c === -1) c = byName[s] = classId(strings[s] ?? `(string ${s})`)
    }
    classOf[i] = c
  }

  const C = names.length
  const count = new Float64Array(C)
  const selfOf = new Float64Array(C)
  const retainedOf = new Float64Array(C)
  for (let i = 1; i <= reached; i++) {
    const size = self[vertex[i]]
    if (size === 0) continue
    count[classOf[i]]++
    selfOf[classOf[i]] += size
  }

  // A class's retained size: walk the dominator tree from the root, counting a node of the class
  // only when no node of the class above it was counted (owner[c] is that node while inside it).
  const childStart = new Uint32Array(reached + 2)
  for (let i = 2; i <= reached; i++) childStart[idom[i] + 1]++
  for (let i = 1; i <= reached + 1; i++) childStart[i] += childStart[i - 1]
  const children = new Uint32Array(Math.max(reached - 1, 0))
  const next = childStart.slice(0, reached + 1)
  for (let i = 2; i <= reached; i++) children[next[idom[i]]++] = i
  next.set(childStart.subarray(0, reached + 1))
  const owner = new Uint32Array(C)
  const stack = new Uint32Array(reached + 1)
  let sp = 0
  stack[sp++] = 1
  if (self[vertex[1]] > 0) {
    owner[classOf[1]] = 1
    retainedOf[classOf[1]] += retained[1]
  }
  while (sp > 0) {
    const v = stack[sp - 1]
    if (next[v] < childStart[v + 1]) {
      const w = children[next[v]++]
      if (self[vertex[w]] > 0) {
        const c = classOf[w]
        if (owner[c] === 0) {
          owner[c] = w
          retainedOf[c] += retained[w]
        }
      }
      stack[sp++] = w
    } else {
      const c = classOf[v]
      if (owner[c] === v) owner[c] = 0
      sp--
    }
  }

  let unreachableCount = 0
  let unreachableBytes = 0
  for (let u = 0; u < n; u++) {
    if (dfnum[u] !== 0) continue
    unreachableCount++
    unreachableBytes += self[u]
  }

  const figures = (c) => ({ count: count[c], selfBytes: selfOf[c] / perCount, retainedBytes: retainedOf[c] / perCount })
  const order = []
  for (let c = 0; c < C; c++) if (count[c] > 0) order.push(c)
  order.sort((a, b) => selfOf[b] - selfOf[a] || (names[a] < names[b] ? -1 : 1))
  return {
    nodes: n,
    edges: m,
    perCount,
    totalSelfBytes: retained[1] / perCount,
    unreachable: { count: unreachableCount, selfBytes: unreachableBytes / perCount },
    byConstructor: order.slice(0, top).map((c) => ({ name: names[c], ...figures(c) })),
    classes: Object.fromEntries(classes.map((wanted) => {
      const c = ids.get(wanted)
      return [wanted, c === undefined ? { count: 0, selfBytes: 0, retainedBytes: 0 } : figures(c)]
    }))
  }
}

/**
 * The summary of the heap snapshot `file`: its largest classes by self size (`top` of them), and
 * the classes named in `classes`, with every byte figure divided by `perCount` (counts are not).
 */
export async function summariseHeap (file, { top = 15, perCount = 1, classes = [] } = {}) {
  if (!(perCount > 0) || !Number.isFinite(perCount)) throw new RangeError(`perCount must be a positive number, not ${perCount}`)
  let buf = await readWhole(file)
  const graph = parseSnapshot(buf)
  buf = null // the file's bytes can go before the big arrays of the analysis are allocated
  return summarise(graph, { top, perCount, classes })
}

// ---------------------------------------------------------------- the table

function bytes (value, perCount) {
  return value.toLocaleString('en-US', { maximumFractionDigits: perCount === 1 ? 0 : 1 })
}

/** The summary as the table the command line prints. */
export function formatHeapSummary (summary) {
  const per = summary.perCount === 1 ? '' : `, bytes per ${summary.perCount.toLocaleString('en-US')}`
  const lines = [
    `${summary.nodes.toLocaleString('en-US')} nodes, ${summary.edges.toLocaleString('en-US')} edges; ` +
      `${bytes(summary.totalSelfBytes, summary.perCount)} B reachable` +
      (summary.unreachable.count > 0 ? ` (${summary.unreachable.count.toLocaleString('en-US')} unreachable nodes, ${bytes(summary.unreachable.selfBytes, summary.perCount)} B, left out)` : '') +
      per,
    ''
  ]
  const row = (name, c) => `  ${name.length > 40 ? name.slice(0, 39) + '…' : name.padEnd(40)}${c.count.toLocaleString('en-US').padStart(12)}` +
    `${bytes(c.selfBytes, summary.perCount).padStart(16)}${bytes(c.retainedBytes, summary.perCount).padStart(16)}`
  lines.push(`  ${'class'.padEnd(40)}${'count'.padStart(12)}${'self B'.padStart(16)}${'retained B'.padStart(16)}`)
  for (const c of summary.byConstructor) lines.push(row(c.name, c))
  const asked = Object.entries(summary.classes)
  if (asked.length > 0) {
    lines.push('', '  asked for:')
    for (const [name, c] of asked) lines.push(row(name, c))
  }
  return lines.join('\n')
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2)
  const files = args.filter((a) => !a.startsWith('--'))
  const option = (key) => args.filter((a) => a.startsWith(`--${key}=`)).map((a) => a.slice(key.length + 3))
  const unknown = args.filter((a) => a.startsWith('--') && !/^--(per|top|class)=/.test(a))
  if (files.length !== 1 || unknown.length > 0) {
    process.stderr.write('usage: node bench/heap-summary.mjs FILE.heapsnapshot [--per=N] [--top=K] [--class=Name ...]\n')
    process.exit(2)
  }
  const started = process.hrtime.bigint()
  const summary = await summariseHeap(files[0], {
    top: Number(option('top').at(-1) ?? 15),
    perCount: Number(option('per').at(-1) ?? 1),
    classes: option('class')
  })
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  process.stdout.write(`${files[0]}: summarised in ${seconds.toFixed(1)} s\n${formatHeapSummary(summary)}\n`)
}
