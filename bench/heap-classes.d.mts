/** Types of bench/heap-classes.mjs, for test/bench-heap-classes.test.ts. */
export interface HeapClass { name: string, count: number, selfBytes: number }
export interface HeapSummary { nodes: number, totalSelfBytes: number, byClass: HeapClass[] }
export function summariseHeap (file: string, options?: { top?: number, perCount?: number }): HeapSummary
export function formatClasses (heap: HeapSummary): string
