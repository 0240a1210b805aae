import globals from 'globals'
import neostandard from 'neostandard'

const base = neostandard({
  ts: true,
  ignores: ['dist/', 'node_modules/', '.tap/', 'bench/results/']
})

// neostandard grants Node's globals (and window, document, navigator) to every file; a file that
// runs elsewhere gets only what its platform has.
const granted = Object.keys(Object.assign({}, ...base.map((config) => config.languageOptions?.globals)))
const only = (available) => ({
  ...Object.fromEntries(granted.map((name) => [name, 'off'])),
  ...available
})

export default [
  ...base,
  {
    rules: {
      // `void promise()` as a statement marks a promise deliberately not awaited (its errors are
      // handled inside); `void` anywhere else is still an error.
      'no-void': ['error', { allowAsStatement: true }],
      // Our loops wait on flags that timers, sockets or signal handlers change between awaits,
      // which this rule cannot see: every report it made here was a false positive.
      'no-unmodified-loop-condition': 'off'
    }
  },
  {
    // A TypeBox schema and its Static<> type share a name on purpose; TypeScript itself rejects real redeclarations.
    files: ['**/*.ts'],
    rules: { '@typescript-eslint/no-redeclare': 'off' }
  },
  {
    // The mini-program client: plain ES2017 in CommonJS, required without a build step. Its platform
    // gives it CommonJS and the timers (a browser, `self`); `wx` is not listed, the client reads it behind a typeof check.
    files: ['client/*.js'],
    languageOptions: {
      ecmaVersion: 2017,
      sourceType: 'commonjs',
      globals: only({
        ...globals.es2017,
        module: 'readonly',
        exports: 'writable',
        require: 'readonly',
        console: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        // Read behind a typeof check: where the file is a browser <script>, the global object.
        self: 'readonly'
      })
    }
  },
  {
    // The demo page: a classic script loaded by <script defer>.
    files: ['public/demo/*.js'],
    languageOptions: {
      sourceType: 'script',
      globals: only({ ...globals.es2021, ...globals.browser })
    }
  }
]
