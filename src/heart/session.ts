import type { WebSocket } from 'ws'
import type { FastifyBaseLogger } from 'fastify'
import { ForbiddenError, type Access } from './access.js'
import { Subscription, type Hub, type Watcher } from './hub.js'
import {
  CloseCode, FrameError, currentFrame, errorFrame, legacyReply, parseJsonFrame, pongFrame, publishedFrame, refreshedFrame, revokedFrame,
  subscribedFrame, unsubscribedFrame, type ErrorCode, type ParsedFrame, type ReqId
} from './protocol.js'
import type { FrameOutType, Metrics } from '../metrics.js'
import type { PublishLimiter } from './publish-limit.js'
import { sharedFrameSender, type SharedFrame } from './shared-frame.js'
import { isUserId, type NewReading } from './reading.js'
import { StoreUnavailableError, type HeartStore } from './store.js'

export interface SessionLimits {
  maxSubscriptions: number
  /** Past this many unsent bytes, live readings are conflated to the newest per watched user. */
  softBufferedBytes: number
  /** Past this many unsent bytes, the socket is closed with 1013. */
  maxBufferedBytes: number
  /** Frames per second a socket may send (token bucket, bursts up to one second's worth). */
  messageRate: number
}

export interface SessionDeps {
  store: HeartStore
  hub: Hub
  limits: SessionLimits
  /** PUBLISH_RATE_LIMIT, shared by every socket of this instance. */
  publishLimit: PublishLimiter
  /** Who may read whom, for `get` and the legacy frame (the hub asks it for subscriptions); who may write whom, for `publish`. */
  access: Access
  /** Verifies a token sent in a `refresh` frame; throws with a message safe to show. `validUntilMs`: exp plus the clock tolerance. */
  verifyToken (token: string): { userId: string, exp: number, validUntilMs: number }
  metrics: Metrics
}

const OPEN = 1
const LEFT_BRACE = 123
const DRAIN_POLL_MS = 20
/** A flood that has gone on this long (rejections in every second of it) closes the socket with 1008. */
const SUSTAINED_FLOOD_MS = 5000
/** setTimeout's ceiling; a later expiry is re-armed when it fires. */
const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * One authenticated socket on /heart/current: parses frames, answers them, and receives pushes
 * from the hub. Listeners are attached synchronously; each frame's async work has its own
 * try/catch, so a failing frame becomes an error frame and never closes the socket.
 */
export class HeartSession implements Watcher {
  private readonly subs = new Map<string, Subscription>()
  /** The last replay (a subscribe with `since`) asked for on this socket; the next one starts after it. */
  private replay: Promise<void> = Promise.resolve()
  /** Newest pending reading frame per user while the socket is too slow; null when not conflating. */
  private conflated: Map<string, SharedFrame> | null = null
  /** Writes a frame the hub encoded once for every watcher. */
  private readonly sendShared: (frame: SharedFrame) => void
  private drainTimer: NodeJS.Timeout | null = null
  private expiryTimer: NodeJS.Timeout | null = null
  private validUntilMs = 0
  /** Token bucket of the frame rate limit. */
  private allowance: number
  private refilledAt = Date.now()
  private floodSince = 0
  private lastRejectedAt = 0

  constructor (
    private readonly ws: WebSocket,
    readonly userId: string,
    validUntilMs: number,
    private readonly deps: SessionDeps,
    private readonly log: FastifyBaseLogger
  ) {
    this.allowance = deps.limits.messageRate
    this.sendShared = sharedFrameSender(ws)
    this.setExpiry(validUntilMs)
  }

  /**
   * Closes the socket with 4001 when the token stops being accepted (its exp, plus the clock
   * tolerance the upgrade allowed it); a refresh moves the moment.
   */
  private setExpiry (validUntilMs: number): void {
    this.validUntilMs = validUntilMs
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer)
    const ms = validUntilMs - Date.now()
    if (ms <= 0) {
      this.expiryTimer = null
      this.ws.close(CloseCode.TOKEN_EXPIRED, 'token expired')
      return
    }
    this.expiryTimer = setTimeout(() => this.setExpiry(this.validUntilMs), Math.min(ms, MAX_TIMER_MS))
  }

  /** Spends one frame of the rate limit; past it, answers rate_limited, and closes with 1008 when the flood goes on. */
  private allowFrame (): boolean {
    const now = Date.now()
    const rate = this.deps.limits.messageRate
    this.allowance = Math.min(rate, this.allowance + (now - this.refilledAt) * rate / 1000)
    this.refilledAt = now
    if (this.allowance >= 1) {
      this.allowance -= 1
      return true
    }
    if (now - this.lastRejectedAt > 1000) this.floodSince = now
    this.lastRejectedAt = now
    if (now - this.floodSince >= SUSTAINED_FLOOD_MS) {
      this.log.warn({ userId: this.userId }, 'closing a socket that keeps sending over MESSAGE_RATE_LIMIT')
      this.ws.close(CloseCode.POLICY, 'message rate limit exceeded')
    } else {
      this.error('rate_limited', `at most ${rate} frames per second`)
    }
    return false
  }

  get subscriptionCount (): number {
    return this.subs.size
  }

  onMessage (data: Buffer, isBinary: boolean): void {
    if (!this.allowFrame()) return
    if (isBinary) {
      this.deps.metrics.frameIn('invalid')
      this.error('bad_request', 'binary frames are not accepted: send text')
      return
    }
    const text = data.toString()
    if (text.trimStart().charCodeAt(0) !== LEFT_BRACE) {
      this.deps.metrics.frameIn('legacy')
      this.legacyGet(text)
      return
    }
    let frame: ParsedFrame
    try {
      frame = parseJsonFrame(text)
    } catch (err) {
      this.deps.metrics.frameIn('invalid')
      this.fail(err, undefined)
      return
    }
    this.deps.metrics.frameIn(frame.type)
    void this.run(frame.reqId, () => this.dispatch(frame))
  }

  onClose (): void {
    for (const sub of this.subs.values()) this.deps.hub.unsubscribe(sub)
    this.subs.clear()
    this.conflated = null
    if (this.drainTimer !== null) clearInterval(this.drainTimer)
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer)
  }

  revoked (ownerId: string): void {
    this.subs.delete(ownerId)
    this.conflated?.delete(ownerId)
    this.reply(revokedFrame(ownerId))
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
      this.error(err.code, err.message, err.reqId ?? reqId)
    } else if (err instanceof ForbiddenError) {
      this.error('forbidden', err.message, reqId)
    } else if (err instanceof StoreUnavailableError) {
      this.log.warn({ err: err.cause }, 'heart store unavailable')
      this.error('unavailable', 'heart-rate store is unavailable, try again shortly', reqId)
    } else {
      this.log.error({ err }, 'frame handling failed')
      this.error('internal', 'internal error', reqId)
    }
  }

  /**
   * The original protocol: the text is a user id, the answer its heart rate or `0`. The hot path
   * of the service (mini programs poll with it): reading your own rate is one GET and one promise.
   */
  private legacyGet (userId: string): void {
    if (!isUserId(userId)) {
      this.error('bad_request', 'a text frame must be a user id (1-64 characters of A-Z a-z 0-9 _ -) or a JSON object')
      return
    }
    // Your own rate needs no grant (the access rule agrees); asking it would add a promise to the hot path.
    if (userId === this.userId) {
      this.deps.store.currentBpm(userId).then(this.replyBpm, this.failLegacy)
      return
    }
    void this.run(undefined, async () => {
      await this.deps.access.authorize(this.userId, userId)
      this.replyBpm(await this.deps.store.currentBpm(userId))
    })
  }

  private readonly replyBpm = (bpm: number | null): void => this.reply(legacyReply(bpm))
  private readonly failLegacy = (err: unknown): void => this.fail(err, undefined)

  private async dispatch (frame: ParsedFrame): Promise<void> {
    const { reqId } = frame
    switch (frame.type) {
      case 'ping':
        this.reply(pongFrame(reqId))
        return
      case 'get': {
        const userId = frame.userId as string
        await this.deps.access.authorize(this.userId, userId)
        this.reply(currentFrame(userId, await this.deps.store.current(userId), reqId))
        return
      }
      case 'subscribe':
        await this.subscribe(frame.userId as string, frame.since, reqId)
        return
      case 'publish':
        await this.publish(frame.userId ?? this.userId, frame.readings as NewReading[], reqId)
        return
      case 'refresh': {
        let principal
        try {
          principal = this.deps.verifyToken(frame.token as string)
        } catch (err) {
          throw new FrameError('unauthorized', `refresh refused: ${(err as Error).message}`, reqId)
        }
        if (principal.userId !== this.userId) throw new FrameError('unauthorized', 'refresh refused: the token is for another user', reqId)
        this.setExpiry(principal.validUntilMs)
        // A refresh is also when a client asks to be held to the grants of now: any it lost
        // comes as `revoked` before `refreshed`.
        await this.deps.hub.recheck(this)
        this.reply(refreshedFrame(principal.exp, reqId))
        return
      }
      case 'unsubscribe': {
        const userId = frame.userId as string
        const sub = this.subs.get(userId)
        if (sub !== undefined) {
          this.subs.delete(userId)
          this.conflated?.delete(userId)
          this.deps.hub.unsubscribe(sub)
        }
        this.reply(unsubscribedFrame(userId, reqId))
      }
    }
  }

  /** The wearer's own phone writes its readings: the same atomic append as HTTP ingest, so subscribers everywhere get them. */
  private async publish (userId: string, readings: NewReading[], reqId: ReqId | undefined): Promise<void> {
    if (!this.deps.access.canWrite({ kind: 'user', userId: this.userId }, userId)) {
      throw new FrameError('forbidden', 'a socket publishes only its own user\'s readings', reqId)
    }
    const limit = this.deps.publishLimit
    if (!limit.take(this.userId, readings.length)) {
      throw new FrameError('rate_limited', `at most ${limit.rate} readings per second per user, bursts up to ${limit.capacity}: nothing was stored, resend later`, reqId)
    }
    const { ids, duplicates } = await this.deps.store.append(userId, readings)
    this.deps.metrics.ingested(ids.length, duplicates)
    this.reply(publishedFrame(ids, duplicates, reqId))
  }

  /** The hub authorizes and runs the subscription; the session holds the per-socket cap and the map. */
  private async subscribe (userId: string, since: string | undefined, reqId: ReqId | undefined): Promise<void> {
    const existing = this.subs.get(userId)
    if (existing !== undefined) {
      const r = await this.deps.hub.resubscribe(existing)
      this.reply(subscribedFrame(userId, r, reqId))
      return
    }
    if (this.subs.size >= this.deps.limits.maxSubscriptions) {
      throw new FrameError('too_many_subscriptions', `at most ${this.deps.limits.maxSubscriptions} subscriptions per connection`, reqId)
    }
    // Recorded before any await, so an `unsubscribe` sent right after cancels it rather than overtaking it.
    const sub = new Subscription(this, userId)
    this.subs.set(userId, sub)
    const start = async (): Promise<void> => {
      if (sub.active) await this.deps.hub.subscribe(sub, since, (r) => this.reply(subscribedFrame(userId, r, reqId)))
    }
    try {
      if (since === undefined) {
        await start()
      } else {
        // One replay at a time, in the order asked: twenty subscribes with `since` on one socket
        // would otherwise read twenty histories at once and hold them all in its send buffer.
        const turn = this.replay.then(start)
        this.replay = turn.catch(() => {})
        await turn
      }
    } catch (err) {
      this.deps.hub.unsubscribe(sub)
      if (this.subs.get(userId) === sub) this.subs.delete(userId)
      throw err
    }
  }

  /** A replayed reading (from the hub): never dropped. */
  send (frame: string): void {
    this.write(frame, 'reading')
  }

  private reply (frame: string): void {
    this.write(frame, 'reply')
  }

  private error (code: ErrorCode, message: string, reqId?: ReqId): void {
    this.deps.metrics.error(code)
    this.write(errorFrame(code, message, reqId), 'error')
  }

  /** Writes a frame that must not be dropped; closes the socket with 1013 past the hard buffer limit. */
  private write (frame: string | SharedFrame, kind: FrameOutType): void {
    const ws = this.ws
    if (ws.readyState !== OPEN) return
    if (typeof frame === 'string') ws.send(frame)
    else this.sendShared(frame)
    this.deps.metrics.frameOut(kind)
    if (ws.bufferedAmount > this.deps.limits.maxBufferedBytes) {
      this.log.warn({ userId: this.userId, buffered: ws.bufferedAmount }, 'closing a socket that does not read what it is sent')
      ws.close(CloseCode.TRY_AGAIN_LATER, 'too slow: reconnect with since')
    }
  }

  /** Never conflated: a reading of that user still pending goes first, so the order is kept. */
  notify (userId: string, frame: SharedFrame): void {
    const pending = this.conflated?.get(userId)
    if (pending !== undefined) {
      this.conflated?.delete(userId)
      this.write(pending, 'reading')
    }
    this.write(frame, 'status')
  }

  /** A live reading: sent now, or, while the socket is slow, kept as the newest one for its user. */
  push (userId: string, frame: SharedFrame): void {
    if (this.conflated !== null) {
      this.conflated.set(userId, frame)
      return
    }
    const ws = this.ws
    if (ws.bufferedAmount > this.deps.limits.softBufferedBytes) {
      this.conflated = new Map([[userId, frame]])
      this.drainTimer = setInterval(() => this.flushConflated(), DRAIN_POLL_MS)
      return
    }
    // The hot path of push: below the soft limit the hard one cannot be reached by a frame this
    // small, and a socket that is closing is sent nothing.
    this.sendShared(frame)
    this.deps.metrics.frameOut('reading')
  }

  private flushConflated (): void {
    if (this.conflated === null || this.ws.bufferedAmount > this.deps.limits.softBufferedBytes) return
    const pending = this.conflated
    this.conflated = null
    if (this.drainTimer !== null) clearInterval(this.drainTimer)
    this.drainTimer = null
    for (const frame of pending.values()) this.write(frame, 'reading')
  }
}
