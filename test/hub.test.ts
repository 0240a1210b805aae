import t from 'tap'
import { Hub, Subscription, type Watcher } from '../src/heart/hub.js'
import { MemoryStore } from '../src/heart/memory-store.js'
import type { FeedListener, LiveReading } from '../src/heart/store.js'
import { eventually } from './helper.js'

const quiet = { warn () {} }

/** A watcher that records what it is sent, in order. */
function recorder (userId: string): Watcher & { frames: string[], bpms: () => number[] } {
  const frames: string[] = []
  return {
    userId,
    frames,
    push (_owner, frame) { frames.push(frame.toString()) },
    send (frame) { frames.push(frame) },
    revoked (ownerId) { frames.push(`revoked:${ownerId}`) },
    bpms: () => frames.filter((f) => f.startsWith('{')).map((f) => JSON.parse(f).bpm)
  }
}

/** Stands between the store's feed and the hub and can drop what the feed delivers, as a dead connection does. */
function muteable (store: MemoryStore, hub: Hub): { muted: boolean } {
  const state = { muted: false }
  const gate: FeedListener = {
    reading (userId: string, r: LiveReading) { if (!state.muted) hub.reading(userId, r) },
    resumed () { hub.resumed() },
    revoked (ownerId: string, viewerId: string) { if (!state.muted) hub.revoked(ownerId, viewerId) }
  }
  store.feed.setListener(gate)
  return state
}

t.test('a subscriber joining while the feed is away does not make existing watchers skip what they missed', async (t) => {
  const store = new MemoryStore(100)
  const hub = new Hub(store, quiet)
  const feed = muteable(store, hub)
  const first = recorder('u1')
  await hub.subscribe(new Subscription(first, 'u1'), undefined, () => {})
  await store.append('u1', [{ bpm: 61, ts: 1 }])
  await eventually(() => first.bpms().length === 1)
  feed.muted = true
  await store.append('u1', [{ bpm: 62, ts: 2 }])
  await store.append('u1', [{ bpm: 63, ts: 3 }])
  // A second socket subscribes while the feed is still away: its snapshot sees 63.
  await hub.subscribe(new Subscription(recorder('u1'), 'u1'), undefined, () => {})
  feed.muted = false
  hub.resumed()
  await store.append('u1', [{ bpm: 64, ts: 4 }])
  t.ok(await eventually(() => first.bpms().length === 4, 2000))
  t.same(first.bpms(), [61, 62, 63, 64], 'the refill starts where the first watcher was')
})

t.test('a grant withdrawn while the subscription is being set up: subscribed is still answered, then revoked', async (t) => {
  const store = new MemoryStore(100)
  const snapshot = store.snapshot.bind(store)
  let release: () => void = () => {}
  store.snapshot = async (userId) => {
    await new Promise<void>((resolve) => { release = resolve })
    return await snapshot(userId)
  }
  const hub = new Hub(store, quiet)
  const viewer = recorder('bob')
  const sub = new Subscription(viewer, 'alice')
  const subscribing = hub.subscribe(sub, undefined, () => viewer.frames.push('subscribed'))
  await eventually(() => hub.topicCount === 1)
  hub.revoked('alice', 'bob')
  release()
  await subscribing
  t.same(viewer.frames, ['subscribed', 'revoked:alice'])
  t.equal(hub.subscriptionCount, 0)
})
