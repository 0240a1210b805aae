/** Types of bench/heap-summary.mjs, for test/heap-summary.test.ts. */
export interface ClassFigures {
  /** Nodes of the class with a non-zero self size, reachable from the root: never divided. */
  count: number
  /** Their self sizes, summed, divided by perCount. */
  selfBytes: number
  /** The retained sizes of those no other node of the class dominates, summed, divided by perCount. */
  retainedBytes: number
}
export interface ConstructorFigures extends ClassFigures { name: string }
export interface HeapSummary {
  /** Nodes and edges in the snapshot, reachable or not. */
  nodes: number
  edges: number
  perCount: number
  /** Self sizes of every node reachable from the root (the root's retained size), divided by perCount. */
  totalSelfBytes: number
  /** Nodes the root does not reach over retaining edges, left out of every other figure. */
  unreachable: { count: number, selfBytes: number }
  /** The `top` classes of largest self size, largest first. */
  byConstructor: ConstructorFigures[]
  /** Each class asked for, all zeros when the heap has none. */
  classes: Record<string, ClassFigures>
}
export interface SummaryOptions { top?: number, perCount?: number, classes?: string[] }
export function summariseHeap (file: string, options?: SummaryOptions): Promise<HeapSummary>
export function formatHeapSummary (summary: HeapSummary): string
