#!/usr/bin/env node
/** The `heart-gateway` command (package.json `bin`): one entry, a subcommand per file of src/cli/. */
import { DEV_SECRET_FILE } from '../dev-secret.js'
import { CliError } from './common.js'
import { demoCommand } from './demo.js'
import { sendCommand } from './send.js'
import { simulateCommand } from './simulate.js'
import { tokenCommand } from './token.js'
import { watchCommand } from './watch.js'

const USAGE = `heart-gateway: tools for the heart-rate gateway

usage: heart-gateway <command> [options]

  token <userId> [--ttl S]
      Prints a token (HS256 JWT, sub = userId) valid for S seconds (default 7200), signed with
      JWT_SECRET or the development secret the server keeps in ${DEV_SECRET_FILE}.

  send <userId> <bpm> [--url URL] [--key KEY]
      Posts one reading through the ingest API and prints the server's answer.
      --url  default http://127.0.0.1:3000     --key  default $INGEST_API_KEY

  watch <userId> [--url URL] [--token T] [--since ID]
      Prints the user's live readings, one line each: time, user, bpm, history id.
      Reconnects (with since) when the server restarts; stops when the token expires.
      --url    default ws://127.0.0.1:3000
      --token  default: one minted as \`token\` does
      --since  also print the readings after this history id first

  simulate [--users N] [--rate HZ] [--url URL] [--key KEY] [--duration S] [--prefix P]
           [--episode high|low] [--episode-for D] [--dropout D] [--via http|socket]
      Heart-rate devices for N users (ids P1 … PN, default prefix sim-) sending realistic readings
      through the ingest API, HZ readings per second in all (default: one per user per second),
      batched per user when the rate is high. Shows progress; Ctrl-C or --duration ends it.
      --via socket: as wearers' phones, each user publishing over its own socket with its own
                  token (signed with JWT_SECRET or the development secret; no --key needed)
      --episode   3 s in, P1's readings jump to around 150 (high) or 38 bpm (low) for D (default
                  30s), then back to normal: an alert on limits like 120/45 opens and closes once
                  (P1 stays at rest otherwise, without the exercise bouts of the other users)
      --dropout   P1 sends nothing for D once (3 s in, or 3 s after the episode): longer than the
                  server's OFFLINE_AFTER_MS (15 s by default), P1 goes offline and comes back
      Durations: 20s, 1.5m, 500ms, or a number of seconds.

  demo [--port P] [--users N] [--rate HZ]
      Starts the compiled service on the embedded store (port 3000 by default, 127.0.0.1 only),
      simulates N users (default 3, demo-1 …), and prints the demo page's URL and a development
      token for demo-1. Ctrl-C stops everything.

  help
      This text. Exit codes: 0 done, 1 failed, 2 wrong arguments.
`

const commands: Record<string, (args: string[]) => Promise<void>> = {
  token: tokenCommand,
  send: sendCommand,
  watch: watchCommand,
  simulate: simulateCommand,
  demo: demoCommand
}

async function main (argv: string[]): Promise<number> {
  const [name, ...args] = argv
  if (name === 'help' || args.includes('--help') || args.includes('-h') || name === '--help' || name === '-h') {
    process.stdout.write(USAGE)
    return 0
  }
  const command = name !== undefined && Object.hasOwn(commands, name) ? commands[name] : undefined
  if (command === undefined) {
    process.stderr.write(`${name === undefined ? 'no command given' : `unknown command "${name}"`}\n\n${USAGE}`)
    return 2
  }
  try {
    await command(args)
    return 0
  } catch (err) {
    if (!(err instanceof CliError)) throw err
    process.stderr.write(`heart-gateway ${name}: ${err.message}\n`)
    if (err.exitCode === 2) process.stderr.write('see: heart-gateway help\n')
    return err.exitCode
  }
}

// Explicit exit: idle keep-alive connections of fetch would otherwise hold the process for seconds.
main(process.argv.slice(2)).then((code) => process.exit(code), (err: unknown) => {
  process.stderr.write(`heart-gateway: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
