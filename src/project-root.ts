import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The folder holding package.json. public/ and client/ are not compiled: they sit at the project
 * root, which is a different number of levels above a source file and its compiled copy in dist/.
 * Walking up finds it either way.
 */
export function projectRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('no package.json above ' + fileURLToPath(import.meta.url))
    dir = parent
  }
  return dir
}
