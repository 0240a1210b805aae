import type { WebSocket } from 'ws'

/**
 * A text frame that goes to many sockets (a reading, a `status`, an `alert`), encoded once: its
 * UTF-8 payload, and the whole WebSocket frame as a server writes it (RFC 6455 §5.2: FIN, opcode
 * 1 = text, unmasked, then the payload length in 7, 7+16 or 7+64 bits). The hub builds one per
 * event and every watching session writes the same bytes, so neither the JSON nor the frame
 * header is built again per socket — the pre-encoded frame socket.io's adapter makes for a
 * broadcast (engine.io writes it with ws's `sendFrame`, as `send` below does).
 */
export class SharedFrame {
  readonly payload: Buffer
  readonly wire: Buffer

  constructor (text: string) {
    const payload = Buffer.from(text)
    const n = payload.length
    const header = n < 126 ? 2 : n < 65536 ? 4 : 10
    const wire = Buffer.allocUnsafe(header + n)
    wire[0] = 0x81
    if (n < 126) {
      wire[1] = n
    } else if (n < 65536) {
      wire[1] = 126
      wire.writeUInt16BE(n, 2)
    } else {
      wire[1] = 127
      wire.writeBigUInt64BE(BigInt(n), 2)
    }
    payload.copy(wire, header)
    this.payload = payload
    this.wire = wire
  }

  toString (): string {
    return this.payload.toString()
  }
}

/** The part of ws's Sender that writes frames already built, in order with everything else it writes. */
interface FrameWriter {
  sendFrame (list: Buffer[], cb?: (err?: Error) => void): void
}

/**
 * How a socket is sent shared frames. The prepared bytes go through ws's own `sendFrame` (one
 * write, in order with ws's other frames) when ws writes frames as they come: no extension
 * negotiated (a compressed socket must compress every frame, and queues them while it does) and
 * the method present in this ws version. Otherwise, and for a socket that is no longer open,
 * `ws.send` does the framing, as for any other frame.
 */
export function sharedFrameSender (ws: WebSocket): (frame: SharedFrame) => void {
  const writer = (ws as unknown as { _sender?: Partial<FrameWriter> })._sender
  const direct = ws.extensions === '' && typeof writer?.sendFrame === 'function'
  const TEXT = { binary: false }
  if (!direct) return (frame) => ws.send(frame.payload, TEXT)
  const sender = writer as FrameWriter
  return (frame) => {
    if (ws.readyState === ws.OPEN) sender.sendFrame([frame.wire])
  }
}
