import type { Access, ReadQuestion } from './access.js'
import { presenceAt, type Presence } from './freshness.js'
import { compareIds } from './reading.js'
import { alertFrame, readingFrame, statusFrame, type SubscribedState } from './protocol.js'
import type { Alert } from './episodes.js'
import { SharedFrame } from './shared-frame.js'
import { HISTORY_PAGE_MAX, type FeedListener, type HeartStore, type LiveReading, type Snapshot } from './store.js'

/** Where a subscription's frames go: a socket session. */
export interface Watcher {
  /** Who is watching (the socket's user). */
  readonly userId: string
  /** The owner withdrew this watcher's grant: its subscription to `ownerId` is already gone. */
  revoked (ownerId: string): void
  /** A live reading frame for `userId`, encoded once for every watcher; the watcher may conflate these when it is slow. */
  push (userId: string, frame: SharedFrame): void
  /** A frame that must not be dropped (replay). */
  send (frame: string): void
  /**
   * A frame about `userId` that must be neither dropped nor conflated, and must stay in order
   * with its readings (`status`): readings still pending for that user go out before it.
   */
  notify (userId: string, frame: SharedFrame): void
}

type Held = { frame: SharedFrame, id: string | null } | { status: Presence, frame: SharedFrame } | { alert: string, frame: SharedFrame }

/** One socket watching one user. */
export class Subscription {
  /**
   * Readings up to this history id already reached the watcher (its replay, or `subscribed`):
   * anything at or before it is dropped. Null once a newer live reading has passed: from then on
   * the topic's own order (each id delivered once, ascending) is enough, and the check is skipped.
   */
  sentThrough: string | null = null
  /** Readings that arrived while the watcher was being caught up; null once it is live. */
  held: Held[] | null = []
  active = true
  /** The grant was withdrawn while this subscription was being set up: it ends once `subscribed` is sent. */
  revokedEarly = false
  /** The presence the watcher was last told (by `subscribed` or a status frame); null before `subscribed`. */
  told: Presence | null = null
  /**
   * Alert transitions (`<alertId>:<state>`) already told, by `subscribed` or a frame: each is sent
   * once. Made on the first alert: most subscriptions never see one, and an empty Set per
   * subscription was the largest thing a socket with ten of them kept.
   */
  private toldAlerts: Set<string> | null = null

  constructor (readonly watcher: Watcher, readonly userId: string) {}

  /**
   * A reading for this watcher. Anything at or before what it was already sent is dropped: pub/sub
   * runs on its own connection and can deliver a reading after the replay read it from history,
   * and a fill after the feed resumes can meet what a replay already sent.
   */
  offer (frame: SharedFrame, id: string | null): void {
    if (!this.active) return
    if (this.held !== null) {
      this.held.push({ frame, id })
      return
    }
    if (id !== null && this.sentThrough !== null) {
      if (compareIds(id, this.sentThrough) <= 0) return
      this.sentThrough = null
    }
    this.watcher.push(this.userId, frame)
  }

  /**
   * A change of the user's presence. Only a change from what the watcher was last told is sent:
   * `subscribed` may already report the state an offline timer firing a moment late announces.
   */
  offerStatus (state: Presence, frame: SharedFrame): void {
    if (!this.active) return
    if (this.held !== null) {
      this.held.push({ status: state, frame })
      return
    }
    if (state === this.told) return
    this.told = state
    this.watcher.notify(this.userId, frame)
  }

  /** An alert episode opened or closed: never dropped or conflated, and sent once per transition. */
  offerAlert (key: string, frame: SharedFrame): void {
    if (!this.active) return
    if (this.held !== null) {
      this.held.push({ alert: key, frame })
      return
    }
    this.toldAlerts ??= new Set()
    if (this.toldAlerts.has(key)) return
    this.toldAlerts.add(key)
    this.watcher.notify(this.userId, frame)
  }

  /**
   * `subscribed` reports `state` and the open alerts: it stands for every presence change so
   * far, so the changes held until now are not sent after it, nor an opening it already lists.
   */
  tell (state: Presence, openAlerts: Alert[]): void {
    this.told = state
    for (const a of openAlerts) (this.toldAlerts ??= new Set()).add(`${a.alertId}:open`)
    if (this.held !== null) this.held = this.held.filter((h) => !('status' in h))
  }

  /** Sends what was held, minus what the replay or `subscribed` already covered, and goes live. */
  goLive (): void {
    const held = this.held ?? []
    this.held = null
    for (const h of held) {
      if ('status' in h) this.offerStatus(h.status, h.frame)
      else if ('alert' in h) this.offerAlert(h.alert, h.frame)
      else this.offer(h.frame, h.id)
    }
  }
}

/** Everything this instance knows about one watched user. */
interface Topic {
  subs: Set<Subscription>
  /** Resolves once the feed subscription exists (or is remembered for when the feed reconnects). */
  ready: Promise<void>
  /** Newest id delivered live: anything older or equal is a duplicate. */
  lastDelivered: string | null
  /** Where to fill from after the feed resumes: the newest id this instance knows about. */
  cursor: string | null
  /** Readings that arrived while a fill was pending; null when live. */
  buffered: LiveReading[] | null
  filling: boolean
  /** The feed resumed again while a fill ran: what that fill read may predate the second gap, so it reads again. */
  refill: boolean
  /** Newest reading time known here (from readings or a snapshot): what presence is decided from. */
  lastTs: number | null
  /** Presence as last announced to the topic's watchers. */
  presence: Presence
  /** Fires when `lastTs` may have become too old; one per topic, re-armed lazily when it fires early. */
  offlineTimer: NodeJS.Timeout | null
}

/** `subscribed`'s content; `lastId` is where a client resumes if it gets no reading before it drops. */
export type SubscribeResult = SubscribedState

export interface HubOptions {
  /** OFFLINE_AFTER_MS: how old the newest reading may be while the user counts as online. */
  offlineAfterMs: number
  observer?: HubObserver
}

export interface HubLog {
  warn (obj: object, msg: string): void
}

/** Told once per reading this instance delivers live (for the push latency histogram). */
export interface HubObserver {
  pushed (id: string): void
}

const FILL_RETRY_MS = 1000

/**
 * Fan-out on one instance: one feed subscription per watched user however many local sockets
 * watch it (reference-counted), each reading serialised once and handed to every watcher, and
 * gap-free recovery both for a socket resuming with `since` and for this instance when its feed
 * connection comes back (it refills every topic from history, skipping what it already delivered).
 * It owns a subscription from authorization to live, and ends it when the grant behind it goes:
 * every grant check here asks the one access rule.
 */
export class Hub implements FeedListener {
  private readonly topics = new Map<string, Topic>()
  private closed = false

  private readonly offlineAfterMs: number
  private readonly observer: HubObserver | undefined

  constructor (
    private readonly store: HeartStore,
    private readonly access: Access,
    private readonly log: HubLog,
    opts: HubOptions
  ) {
    this.offlineAfterMs = opts.offlineAfterMs
    this.observer = opts.observer
    store.feed.setListener(this)
  }

  get topicCount (): number {
    return this.topics.size
  }

  get subscriptionCount (): number {
    let n = 0
    for (const t of this.topics.values()) n += t.subs.size
    return n
  }

  /**
   * Subscribes a watcher, once its user may read `sub.userId` (else rejects with ForbiddenError).
   * `onSubscribed` runs before any reading of this subscription is sent; then come the replayed
   * readings after `since`, then live ones, with no gap or duplicate at the seam. A subscription
   * unsubscribed meanwhile stops at the next step; one whose grant is withdrawn meanwhile still
   * answers `subscribed`, then the watcher hears `revoked`.
   */
  async subscribe (sub: Subscription, since: string | undefined, onSubscribed: (r: SubscribeResult) => void): Promise<void> {
    const { watcher, userId } = sub
    await this.access.authorize(watcher.userId, userId)
    if (!sub.active) return
    const topic = this.acquire(sub)
    try {
      await topic.ready
      const snap = await this.store.snapshot(userId)
      // Only a new topic takes its cursor from the snapshot: moving an existing one forward would
      // skip what its watchers missed if the feed is away right now.
      topic.cursor ??= snap.lastId ?? '0-0'
      // The client has everything up to `since`: nothing at or before it is sent again, replayed or late from pub/sub.
      if (since !== undefined) sub.sentThrough = since
      // A restarted instance knows the presence at once: from the store's newest reading, not from a fresh timer.
      this.seen(topic, userId, snap.current?.ts ?? null)
      let page = since === undefined ? null : await this.store.history(userId, { since, limit: HISTORY_PAGE_MAX })
      if (!sub.active) return
      onSubscribed(this.stateOf(sub, topic, snap, page?.truncated ?? false))
      // Without a replay, `subscribed` stands for everything up to lastId: only later readings follow.
      if (since === undefined) sub.sentThrough = snap.lastId
      while (page !== null && page.readings.length > 0) {
        for (const r of page.readings) watcher.send(readingFrame(userId, r))
        sub.sentThrough = page.readings[page.readings.length - 1].id
        page = page.readings.length < HISTORY_PAGE_MAX ? null : await this.store.history(userId, { since: sub.sentThrough, limit: HISTORY_PAGE_MAX })
        if (!sub.active) return
      }
      // A grant withdrawn before the feed subscription existed was announced to nobody: ask once
      // more, now that any later withdrawal marks this subscription. Readings stay held meanwhile.
      const granted = await this.access.canRead(watcher.userId, userId)
      if (!sub.active) return
      if (sub.revokedEarly || !granted) {
        this.unsubscribe(sub)
        watcher.revoked(userId)
        return
      }
      sub.goLive()
    } catch (err) {
      this.unsubscribe(sub)
      throw err
    }
  }

  /**
   * `subscribe` again for what `sub` already watches: nothing changes, the watcher is only told
   * the current state (rejects with ForbiddenError if it may no longer read it).
   */
  async resubscribe (sub: Subscription): Promise<SubscribeResult> {
    await this.access.authorize(sub.watcher.userId, sub.userId)
    const snap = await this.store.snapshot(sub.userId)
    const topic = this.topics.get(sub.userId)
    if (topic === undefined || !sub.active) {
      // Ended meanwhile (revoked): the answer stands alone, nothing follows it.
      const lastTs = snap.current?.ts ?? null
      return { current: snap.current, lastId: snap.lastId, truncated: false, state: presenceAt(lastTs, Date.now(), this.offlineAfterMs), lastTs, alerts: snap.alerts }
    }
    this.seen(topic, sub.userId, snap.current?.ts ?? null)
    return this.stateOf(sub, topic, snap, false)
  }

  /** What `subscribed` says, and what the watcher is from then on known to have been told. */
  private stateOf (sub: Subscription, topic: Topic, snap: Snapshot, truncated: boolean): SubscribeResult {
    const state = presenceAt(topic.lastTs, Date.now(), this.offlineAfterMs)
    sub.tell(state, snap.alerts)
    return { current: snap.current, lastId: snap.lastId, truncated, state, lastTs: topic.lastTs, alerts: snap.alerts }
  }

  /**
   * A reading time seen (live, filled, or in a snapshot). A newer one may bring the user online:
   * watchers hear `status` first, before the reading that did it. Offline comes from the timer.
   */
  private seen (topic: Topic, userId: string, ts: number | null): void {
    if (ts === null || (topic.lastTs !== null && ts <= topic.lastTs)) return
    topic.lastTs = ts
    if (presenceAt(ts, Date.now(), this.offlineAfterMs) === 'offline') return
    this.armOfflineTimer(topic, userId)
    if (topic.presence === 'online') return
    topic.presence = 'online'
    this.announce(topic, userId)
  }

  private armOfflineTimer (topic: Topic, userId: string): void {
    if (topic.offlineTimer !== null || topic.lastTs === null) return
    const delay = Math.max(0, topic.lastTs + this.offlineAfterMs - Date.now())
    topic.offlineTimer = setTimeout(() => this.expire(topic, userId), delay)
    topic.offlineTimer.unref()
  }

  /** The timer fired: offline unless a newer reading moved `lastTs` meanwhile (then it waits for that one). */
  private expire (topic: Topic, userId: string): void {
    topic.offlineTimer = null
    if (this.topics.get(userId) !== topic) return
    if (presenceAt(topic.lastTs, Date.now(), this.offlineAfterMs) === 'online') {
      this.armOfflineTimer(topic, userId)
      return
    }
    topic.presence = 'offline'
    this.announce(topic, userId)
    // Every instance watching the user asks; the store opens the episode once, and its feed tells everyone.
    if (topic.lastTs !== null) {
      this.store.openOffline(userId, topic.lastTs, this.offlineAfterMs)
        .catch((err) => this.log.warn({ err, userId }, 'could not record the offline alert'))
    }
  }

  private announce (topic: Topic, userId: string): void {
    const frame = new SharedFrame(statusFrame(userId, topic.presence, topic.lastTs))
    for (const sub of topic.subs) sub.offerStatus(topic.presence, frame)
  }

  unsubscribe (sub: Subscription): void {
    sub.active = false
    const topic = this.topics.get(sub.userId)
    if (topic === undefined || !topic.subs.delete(sub) || topic.subs.size > 0) return
    this.topics.delete(sub.userId)
    if (topic.offlineTimer !== null) clearTimeout(topic.offlineTimer)
    this.store.feed.unwatch(sub.userId).catch((err) => this.log.warn({ err, userId: sub.userId }, 'unwatch failed'))
  }

  private acquire (sub: Subscription): Topic {
    let topic = this.topics.get(sub.userId)
    if (topic === undefined) {
      topic = {
        subs: new Set(),
        ready: this.store.feed.watch(sub.userId),
        lastDelivered: null,
        cursor: null,
        buffered: null,
        filling: false,
        refill: false,
        lastTs: null,
        presence: 'offline',
        offlineTimer: null
      }
      this.topics.set(sub.userId, topic)
    }
    topic.subs.add(sub)
    return topic
  }

  reading (userId: string, r: LiveReading): void {
    const topic = this.topics.get(userId)
    if (topic === undefined) return
    if (topic.buffered !== null) topic.buffered.push(r)
    else this.deliver(topic, userId, r)
  }

  private deliver (topic: Topic, userId: string, r: LiveReading): void {
    if (r.id !== null) {
      if (topic.lastDelivered !== null && compareIds(r.id, topic.lastDelivered) <= 0) return
      topic.lastDelivered = r.id
      if (topic.cursor === null || compareIds(r.id, topic.cursor) > 0) topic.cursor = r.id
    }
    this.seen(topic, userId, r.ts)
    // Encoded once, JSON and WebSocket frame: every local watcher is sent the same bytes.
    const frame = new SharedFrame(readingFrame(userId, r))
    for (const sub of topic.subs) sub.offer(frame, r.id)
    if (r.id !== null) this.observer?.pushed(r.id)
  }

  alert (userId: string, alert: Alert): void {
    const topic = this.topics.get(userId)
    if (topic === undefined) return
    const frame = new SharedFrame(alertFrame(alert))
    const key = `${alert.alertId}:${alert.state}`
    for (const sub of topic.subs) sub.offerAlert(key, frame)
  }

  revoked (ownerId: string, viewerId: string): void {
    const topic = this.topics.get(ownerId)
    if (topic === undefined) return
    for (const sub of [...topic.subs]) {
      if (sub.watcher.userId !== viewerId) continue
      if (sub.held !== null) {
        sub.revokedEarly = true
        continue
      }
      this.unsubscribe(sub)
      sub.watcher.revoked(ownerId)
    }
  }

  resumed (userIds?: Iterable<string>): void {
    const refilled = new Set<string>()
    for (const userId of userIds ?? [...this.topics.keys()]) {
      const topic = this.topics.get(userId)
      if (topic === undefined) continue
      refilled.add(userId)
      void this.fill(userId, topic)
    }
    // A revocation published while the feed was away was missed.
    void this.recheckGrants((sub) => refilled.has(sub.userId), 'after the feed resumed')
  }

  /** Asks the access rule again for every user `watcher` watches (a `refresh`), ending what it no longer may read. */
  async recheck (watcher: Watcher): Promise<void> {
    await this.recheckGrants((sub) => sub.watcher === watcher, 'on refresh')
  }

  /**
   * Asks again, in one batched question, for every live subscription `which` selects to another
   * user's readings, and ends those whose grant no longer holds, as a withdrawal announced by the
   * feed would: a withdrawal whose announcement was lost is caught here. A check that fails is
   * logged and leaves the subscriptions; the next one asks again.
   */
  async recheckGrants (which: (sub: Subscription) => boolean = () => true, when = 'periodically'): Promise<void> {
    const questions = new Map<string, ReadQuestion>()
    for (const [ownerId, topic] of this.topics) {
      for (const sub of topic.subs) {
        const viewerId = sub.watcher.userId
        if (which(sub)) questions.set(`${viewerId} ${ownerId}`, { viewerId, ownerId })
      }
    }
    if (questions.size === 0) return
    const asked = [...questions.values()]
    try {
      const answers = await this.access.canReadAll(asked)
      asked.forEach((q, i) => { if (!answers[i]) this.revoked(q.ownerId, q.viewerId) })
    } catch (err) {
      this.log.warn({ err, subscriptions: asked.length }, `could not re-check grants ${when}`)
    }
  }

  /**
   * Delivers from history what was published while the feed was away, then what arrived meanwhile.
   * Until a fill succeeds, live readings stay buffered: delivering them first would move the
   * topic past the gap and hide it.
   */
  private async fill (userId: string, topic: Topic): Promise<void> {
    if (topic.cursor === null) return
    if (topic.filling) {
      topic.refill = true
      return
    }
    topic.filling = true
    topic.buffered ??= []
    try {
      do {
        topic.refill = false
        let since = topic.cursor
        for (;;) {
          const page = await this.store.history(userId, { since, limit: HISTORY_PAGE_MAX })
          for (const r of page.readings) this.deliver(topic, userId, r)
          if (page.readings.length < HISTORY_PAGE_MAX) break
          since = page.readings[page.readings.length - 1].id
        }
      } while (topic.refill)
      const buffered = topic.buffered
      topic.buffered = null
      for (const r of buffered) this.deliver(topic, userId, r)
      // An episode that opened while the feed was away: watchers hear it now (each transition once).
      for (const alert of (await this.store.snapshot(userId)).alerts) this.alert(userId, alert)
    } catch (err) {
      this.log.warn({ err, userId }, 'could not fill readings missed while the feed was away; retrying')
      if (!this.closed) {
        setTimeout(() => {
          if (this.topics.get(userId) === topic) void this.fill(userId, topic)
        }, FILL_RETRY_MS).unref()
      }
    } finally {
      topic.filling = false
    }
  }

  close (): void {
    this.closed = true
    for (const topic of this.topics.values()) {
      for (const sub of topic.subs) sub.active = false
      if (topic.offlineTimer !== null) clearTimeout(topic.offlineTimer)
    }
    this.topics.clear()
  }
}
