import type { WebSocket } from 'ws'
import type { FastifyBaseLogger } from 'fastify'
import { Subscription, type Hub, type Watcher } from './hub.js'
import {
  CloseCode, FrameError, currentFrame, errorFrame, legacyReply, parseJsonFrame, pongFrame, subscribedFrame, unsubscribedFrame,
  type ParsedFrame, type ReqId
} from './protocol.js'
import { isUserId } from './reading.js'
import { StoreUnavailableError, type HeartStore } from './store.js'

export interface SessionLimits {
  maxSubscriptions: number
  /** Past this many unsent bytes, live readings are conflated to the newest per watched user. */
  softBufferedBytes: number
  /** Past this many unsent bytes, the socket is closed with 1013. */
  maxBufferedBytes: number
}

export interface SessionDeps {
  store: HeartStore
  hub: Hub
  limits: SessionLimits
  /** Whether `viewerId` may read `ownerId`'s heart rate. */
  canRead (viewerId: string, ownerId: string): Promise<boolean>
}

const OPEN = 1
const LEFT_BRACE = 123
const DRAIN_POLL_MS = 20

/**
 * One authenticated socket on /heart/current: parses frames, answers them, and receives pushes
 * from the hub. Listeners are attached synchronously; each frame's async work has its own
 * try/catch, so a failing frame becomes an error frame and never closes the socket.
 */
export class HeartSession implements Watcher {
  private readonly subs = new Map<string, Subscription>()
  /** Newest pending reading frame per user while the socket is too slow; null when not conflating. */
  private conflated: Map<string, string> | null = null
  private drainTimer: NodeJS.Timeout | null = null
  private closed = false

  constructor (
    private readonly ws: WebSocket,
    readonly userId: string,
    private readonly deps: SessionDeps,
    private readonly log: FastifyBaseLogger
  ) {}

  get subscriptionCount (): number {
    return this.subs.size
  }

  onMessage (data: Buffer, isBinary: boolean): void {
    if (isBinary) {
      this.send(errorFrame('bad_request', 'binary frames are not accepted: send text'))
      return
    }
    const text = data.toString()
    if (text.trimStart().charCodeAt(0) !== LEFT_BRACE) {
      void this.run(undefined, () => this.legacyGet(text))
      return
    }
    let frame: ParsedFrame
    try {
      frame = parseJsonFrame(text)
    } catch (err) {
      this.fail(err, undefined)
      return
    }
    void this.run(frame.reqId, () => this.dispatch(frame))
  }

  onClose (): void {
    this.closed = true
    for (const sub of this.subs.values()) this.deps.hub.unsubscribe(sub)
    this.subs.clear()
    this.conflated = null
    if (this.drainTimer !== null) clearInterval(this.drainTimer)
  }

  private async run (reqId: ReqId | undefined, work: () => Promise<void>): Promise<void> {
    try {
      await work()
    } catch (err) {
      this.fail(err, reqId)
    }
  }

  private fail (err: unknown, reqId: ReqId | undefined): void {
    if (err instanceof FrameError) {
      this.send(errorFrame(err.code, err.message, err.reqId ?? reqId))
    } else if (err instanceof StoreUnavailableError) {
      this.log.warn({ err: err.cause }, 'heart store unavailable')
      this.send(errorFrame('unavailable', 'heart-rate store is unavailable, try again shortly', reqId))
    } else {
      this.log.error({ err }, 'frame handling failed')
      this.send(errorFrame('internal', 'internal error', reqId))
    }
  }

  private async authorize (ownerId: string, reqId?: ReqId): Promise<void> {
    if (ownerId === this.userId || await this.deps.canRead(this.userId, ownerId)) return
    throw new FrameError('forbidden', `not allowed to read ${ownerId}`, reqId)
  }

  /** The original protocol: the text is a user id, the answer its heart rate or `0`. */
  private async legacyGet (text: string): Promise<void> {
    if (!isUserId(text)) throw new FrameError('bad_request', 'a text frame must be a user id (1-64 characters of A-Z a-z 0-9 _ -) or a JSON object')
    await this.authorize(text)
    this.send(legacyReply(await this.deps.store.current(text)))
  }

  private async dispatch (frame: ParsedFrame): Promise<void> {
    const { reqId } = frame
    switch (frame.type) {
      case 'ping':
        this.send(pongFrame(reqId))
        return
      case 'get': {
        const userId = frame.userId as string
        await this.authorize(userId, reqId)
        this.send(currentFrame(userId, await this.deps.store.current(userId), reqId))
        return
      }
      case 'subscribe':
        await this.subscribe(frame.userId as string, frame.since, reqId)
        return
      case 'unsubscribe': {
        const userId = frame.userId as string
        const sub = this.subs.get(userId)
        if (sub !== undefined) {
          this.subs.delete(userId)
          this.deps.hub.unsubscribe(sub)
        }
        this.send(unsubscribedFrame(userId, reqId))
      }
    }
  }

  private async subscribe (userId: string, since: string | undefined, reqId: ReqId | undefined): Promise<void> {
    await this.authorize(userId, reqId)
    if (this.closed) return
    if (this.subs.has(userId)) {
      this.send(subscribedFrame(userId, await this.deps.store.current(userId), false, reqId))
      return
    }
    if (this.subs.size >= this.deps.limits.maxSubscriptions) {
      throw new FrameError('too_many_subscriptions', `at most ${this.deps.limits.maxSubscriptions} subscriptions per connection`, reqId)
    }
    const sub = new Subscription(this, userId)
    this.subs.set(userId, sub)
    try {
      await this.deps.hub.subscribe(sub, since, (r) => this.send(subscribedFrame(userId, r.current, r.truncated, reqId)))
    } catch (err) {
      if (this.subs.get(userId) === sub) this.subs.delete(userId)
      throw err
    }
  }

  /** Sends a frame that must not be dropped; closes the socket with 1013 past the hard buffer limit. */
  send (frame: string): void {
    const ws = this.ws
    if (ws.readyState !== OPEN) return
    ws.send(frame)
    if (ws.bufferedAmount > this.deps.limits.maxBufferedBytes) {
      this.log.warn({ userId: this.userId, buffered: ws.bufferedAmount }, 'closing a socket that does not read what it is sent')
      ws.close(CloseCode.TRY_AGAIN_LATER, 'too slow: reconnect with since')
    }
  }

  /** A live reading: sent now, or, while the socket is slow, kept as the newest one for its user. */
  push (userId: string, frame: string): void {
    if (this.conflated !== null) {
      this.conflated.set(userId, frame)
      return
    }
    if (this.ws.bufferedAmount > this.deps.limits.softBufferedBytes) {
      this.conflated = new Map([[userId, frame]])
      this.drainTimer = setInterval(() => this.flushConflated(), DRAIN_POLL_MS)
      return
    }
    this.send(frame)
  }

  private flushConflated (): void {
    if (this.conflated === null || this.ws.bufferedAmount > this.deps.limits.softBufferedBytes) return
    const pending = this.conflated
    this.conflated = null
    if (this.drainTimer !== null) clearInterval(this.drainTimer)
    this.drainTimer = null
    for (const frame of pending.values()) this.send(frame)
  }
}
