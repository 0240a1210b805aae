import { test, type Test } from 'tap'
import { once } from 'node:events'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import WebSocket, { WebSocketServer } from 'ws'
import { SharedFrame, sharedFrameSender } from '../src/heart/shared-frame.js'

// ws's own framer, as a server (unmasked) would frame a text message: the reference.
const Sender = (createRequire(import.meta.url)('ws') as { Sender: { frame (data: Buffer, o: object): Buffer[] } }).Sender
function wsFrame (text: string): Buffer {
  return Buffer.concat(Sender.frame(Buffer.from(text), { fin: true, rsv1: false, opcode: 1, mask: false, readOnly: false }))
}

test('a shared frame is the frame ws would write, at every length encoding', async (t) => {
  for (const n of [0, 1, 125, 126, 127, 65535, 65536, 70000]) {
    const text = 'x'.repeat(n)
    const f = new SharedFrame(text)
    t.same(f.wire, wsFrame(text), `${n} bytes`)
    t.equal(f.payload.toString(), text)
  }
  const utf8 = '{"name":"心率 ❤"}'
  t.same(new SharedFrame(utf8).wire, wsFrame(utf8), 'multi-byte UTF-8: the length counts bytes')
  t.equal(String(new SharedFrame(utf8)), utf8)
})

/** A server socket and the client at its other end, with or without permessage-deflate. */
async function pair (t: Test, perMessageDeflate: boolean): Promise<{ server: WebSocket, client: WebSocket }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate })
  await once(wss, 'listening')
  t.teardown(() => { for (const c of wss.clients) c.terminate(); wss.close() })
  const accepted = once(wss, 'connection')
  const client = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}`, { perMessageDeflate })
  t.teardown(() => client.terminate())
  await once(client, 'open')
  const [server] = await accepted as [WebSocket]
  return { server, client }
}

async function received (client: WebSocket, count: number): Promise<string[]> {
  const got: string[] = []
  return await new Promise((resolve) => {
    client.on('message', (data, isBinary) => {
      got.push(`${isBinary ? 'binary' : 'text'}:${String(data)}`)
      if (got.length === count) resolve(got)
    })
  })
}

for (const compressed of [false, true]) {
  test(`shared frames arrive as text, in order with ws's own sends (${compressed ? 'permessage-deflate: through ws.send' : 'prepared bytes'})`, async (t) => {
    const { server, client } = await pair(t, compressed)
    t.equal(server.extensions === '', !compressed)
    const send = sharedFrameSender(server)
    const frames = received(client, 5)
    send(new SharedFrame('{"n":1}'))
    server.send('{"n":2}')
    send(new SharedFrame('é'.repeat(200)))
    server.send('{"n":4}')
    send(new SharedFrame('{"n":5}'))
    t.same(await frames, ['text:{"n":1}', 'text:{"n":2}', `text:${'é'.repeat(200)}`, 'text:{"n":4}', 'text:{"n":5}'])
  })
}
