/**
 * bench/heap-classes.mjs, the heap summary of `npm run bench -- --scenarios=memory`: a real
 * snapshot of this process, holding a known number of objects of a class of its own.
 */
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import v8 from 'node:v8'
import { formatClasses, summariseHeap } from '../bench/heap-classes.mjs'

class BenchHeapProbe {
  readonly values: number[]
  readonly label: string
  constructor (i: number) {
    this.values = [i, i + 1, i + 2]
    this.label = `probe "\u00e9" ${i}`
  }
}

t.test('counts the objects of a class and divides sizes by the count asked for', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'heap-classes-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const held = Array.from({ length: 1000 }, (_, i) => new BenchHeapProbe(i))
  const file = v8.writeHeapSnapshot(path.join(dir, 'probe.heapsnapshot'))
  t.equal(held.length, 1000)

  const whole = summariseHeap(file, { top: 100000 })
  const probe = whole.byClass.find((c) => c.name === 'BenchHeapProbe')
  t.ok(probe, 'the class is found by its constructor name')
  // V8 names the prototype after its constructor too, so DevTools counts it as well.
  t.equal(probe?.count, 1001, 'the 1000 objects and their prototype')
  t.ok((probe?.selfBytes ?? 0) >= 1000 * 16, 'each object has its own bytes')
  t.ok(whole.byClass.some((c) => c.name === '(string)' && c.count >= 1000), 'the labels are grouped as strings')
  t.ok(whole.nodes > 1000)
  const sum = whole.byClass.reduce((s, c) => s + c.selfBytes, 0)
  t.equal(Math.round(sum), Math.round(whole.totalSelfBytes), 'every object is in one class')

  const per = summariseHeap(file, { top: 5, perCount: 1000 })
  t.equal(per.byClass.length, 5, 'top limits the list')
  t.ok(per.byClass[0].selfBytes >= per.byClass[4].selfBytes, 'largest first')
  t.equal(Math.round(per.totalSelfBytes * 1000), Math.round(whole.totalSelfBytes))
  t.match(formatClasses(per), per.byClass[0].name)
})

t.test('a file that is not a heap snapshot is refused', async (t) => {
  t.throws(() => summariseHeap(path.join(import.meta.dirname ?? '.', '..', 'package.json')))
})
