/**
 * Loads client/*.js as a mini program does: a CommonJS script in a context that has timers and
 * the language's built-ins, and nothing of Node (no require, process, Buffer) or of a browser.
 * `globals` adds what the platform would (a global `wx`, a device clock that is off).
 */
import { readFileSync } from 'node:fs'
import vm from 'node:vm'
import type * as HeartClientModule from '../client/heart-client.js'

export function loadScript (file: string, globals: Record<string, unknown> = {}): unknown {
  const source = readFileSync(new URL(`../client/${file}`, import.meta.url), 'utf8')
  const module = { exports: {} }
  const context = vm.createContext({ module, exports: module.exports, setTimeout, clearTimeout, setInterval, clearInterval, console, ...globals })
  vm.runInContext(source, context, { filename: `client/${file}` })
  return module.exports
}

export function loadClient (globals: Record<string, unknown> = {}): typeof HeartClientModule {
  return loadScript('heart-client.js', globals) as typeof HeartClientModule
}
