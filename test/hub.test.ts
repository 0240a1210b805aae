import type { Alert } from '../src/heart/episodes.js'
import t from 'tap'
import { Access, ForbiddenError } from '../src/heart/access.js'
import { Hub, Subscription } from '../src/heart/hub.js'
import { MemoryStore } from '../src/heart/memory-store.js'
import type { FeedListener, LiveReading } from '../src/heart/store.js'
import { eventually, recorder } from './helper.js'

const quiet = { warn () {} }
const HUB_OPTS = { offlineAfterMs: 15000 }

/** Stands between the store's feed and the hub and can drop what the feed delivers, as a dead connection does. */
function muteable (store: MemoryStore, hub: Hub): { muted: boolean } {
  const state = { muted: false }
  const gate: FeedListener = {
    reading (userId: string, r: LiveReading) { if (!state.muted) hub.reading(userId, r) },
    resumed (userIds) { hub.resumed(userIds) },
    revoked (ownerId: string, viewerId: string) { if (!state.muted) hub.revoked(ownerId, viewerId) },
    alert (userId: string, a: Alert) { if (!state.muted) hub.alert(userId, a) }
  }
  store.feed.setListener(gate)
  return state
}

t.test('a subscriber joining while the feed is away does not make existing watchers skip what they missed', async (t) => {
  const store = new MemoryStore(100)
  const hub = new Hub(store, new Access(store), quiet, HUB_OPTS)
  const feed = muteable(store, hub)
  const first = recorder('u1')
  await hub.subscribe(new Subscription(first, 'u1'), undefined, () => {})
  await store.append('u1', [{ bpm: 61, ts: 1 }])
  t.ok(await eventually(() => first.bpms().length === 1), 'live before the feed goes away')
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

t.test('a second feed outage while the fill after the first one runs: what it missed is filled too', async (t) => {
  const store = new MemoryStore(100)
  const hub = new Hub(store, new Access(store), quiet, HUB_OPTS)
  const feed = muteable(store, hub)
  const first = recorder('u1')
  await hub.subscribe(new Subscription(first, 'u1'), undefined, () => {})
  await store.append('u1', [{ bpm: 61, ts: 1 }])
  t.ok(await eventually(() => first.bpms().length === 1), 'live before the feed goes away')
  feed.muted = true
  await store.append('u1', [{ bpm: 62, ts: 2 }])
  feed.muted = false
  // The fill after the first outage has read history (62) and has not finished yet.
  const history = store.history.bind(store)
  let read: () => void = () => {}
  const hasRead = new Promise<void>((resolve) => { read = resolve })
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  store.history = async (userId, query) => {
    store.history = history
    const page = await history(userId, query)
    read()
    await held
    return page
  }
  hub.resumed()
  await hasRead
  feed.muted = true
  await store.append('u1', [{ bpm: 63, ts: 3 }])
  feed.muted = false
  hub.resumed()
  release()
  t.ok(await eventually(() => first.bpms().length === 3, 2000), 'the second gap is filled')
  await store.append('u1', [{ bpm: 64, ts: 4 }])
  t.ok(await eventually(() => first.bpms().length === 4, 2000), 'then live again')
  t.same(first.bpms(), [61, 62, 63, 64], 'each reading once, in order')
})

t.test('a grant withdrawn while the subscription is being set up: subscribed is still answered, then revoked', async (t) => {
  const store = new MemoryStore(100)
  const snapshot = store.snapshot.bind(store)
  let release: () => void = () => {}
  store.snapshot = async (userId) => {
    await new Promise<void>((resolve) => { release = resolve })
    return await snapshot(userId)
  }
  await store.grant('alice', 'bob', 100)
  const hub = new Hub(store, new Access(store), quiet, HUB_OPTS)
  const viewer = recorder('bob')
  const sub = new Subscription(viewer, 'alice')
  const subscribing = hub.subscribe(sub, undefined, () => viewer.frames.push('subscribed'))
  t.ok(await eventually(() => hub.topicCount === 1), 'the subscription is being set up')
  hub.revoked('alice', 'bob')
  release()
  await subscribing
  t.same(viewer.frames, ['subscribed', 'revoked:alice'])
  t.equal(hub.subscriptionCount, 0)
})

/** Makes `store.snapshot` wait until the returned function is called, once. */
function holdSnapshot (store: MemoryStore): () => void {
  const snapshot = store.snapshot.bind(store)
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  store.snapshot = async (userId) => {
    store.snapshot = snapshot
    await held
    return await snapshot(userId)
  }
  return () => release()
}

t.test('a watcher who may not read the user is refused with ForbiddenError before anything is watched', async (t) => {
  const store = new MemoryStore(100)
  const hub = new Hub(store, new Access(store), quiet, HUB_OPTS)
  const viewer = recorder('bob')
  const sub = new Subscription(viewer, 'alice')
  await t.rejects(hub.subscribe(sub, undefined, () => viewer.frames.push('subscribed')), new ForbiddenError('alice'))
  t.same(viewer.frames, [])
  t.equal(hub.topicCount, 0)
  t.equal(store.feed.watched.size, 0, 'the feed was never asked to watch')
})

t.test('a grant withdrawn while set-up runs, its announcement lost: the check before going live catches it', async (t) => {
  const store = new MemoryStore(100)
  await store.grant('alice', 'bob', 100)
  const hub = new Hub(store, new Access(store), quiet, HUB_OPTS)
  const feed = muteable(store, hub)
  const release = holdSnapshot(store)
  const viewer = recorder('bob')
  const sub = new Subscription(viewer, 'alice')
  const subscribing = hub.subscribe(sub, undefined, () => viewer.frames.push('subscribed'))
  t.ok(await eventually(() => hub.topicCount === 1), 'the subscription is being set up')
  feed.muted = true
  await store.revoke('alice', 'bob')
  feed.muted = false
  release()
  await subscribing
  t.same(viewer.frames, ['subscribed', 'revoked:alice'])
  t.equal(hub.topicCount, 0)
})

t.test('an unsubscribe while authorization is pending: nothing is watched or sent', async (t) => {
  const store = new MemoryStore(100)
  await store.grant('alice', 'bob', 100)
  let release: () => void = () => {}
  const access = new Access({
    areGranted: async (pairs) => {
      await new Promise<void>((resolve) => { release = resolve })
      return await store.areGranted(pairs)
    }
  })
  const hub = new Hub(store, access, quiet, HUB_OPTS)
  const viewer = recorder('bob')
  const sub = new Subscription(viewer, 'alice')
  const subscribing = hub.subscribe(sub, undefined, () => viewer.frames.push('subscribed'))
  hub.unsubscribe(sub)
  release()
  await subscribing
  t.same(viewer.frames, [])
  t.equal(hub.topicCount, 0)
})

t.test('resubscribe answers the current state of what is already watched, and is refused once the grant is gone', async (t) => {
  const store = new MemoryStore(100)
  await store.grant('alice', 'bob', 100)
  const hub = new Hub(store, new Access(store), quiet, HUB_OPTS)
  const sub = new Subscription(recorder('bob'), 'alice')
  await hub.subscribe(sub, undefined, () => {})
  const [id] = (await store.append('alice', [{ bpm: 72, ts: 5 }])).ids
  t.same(await hub.resubscribe(sub), { current: { bpm: 72, ts: 5 }, lastId: id, truncated: false, state: 'offline', lastTs: 5, alerts: [] })
  await store.revoke('alice', 'bob')
  await t.rejects(hub.resubscribe(new Subscription(recorder('bob'), 'alice')), new ForbiddenError('alice'))
})

t.test('re-checking a watcher ends only the subscriptions whose grant is gone', async (t) => {
  const store = new MemoryStore(100)
  await store.grant('alice', 'bob', 100)
  await store.grant('carol', 'bob', 100)
  const hub = new Hub(store, new Access(store), quiet, HUB_OPTS)
  const feed = muteable(store, hub)
  const bob = recorder('bob')
  for (const owner of ['alice', 'carol', 'bob']) await hub.subscribe(new Subscription(bob, owner), undefined, () => {})
  feed.muted = true
  await store.revoke('alice', 'bob')
  feed.muted = false
  await hub.recheck(bob)
  t.same(bob.frames, ['revoked:alice'])
  t.equal(hub.subscriptionCount, 2, 'carol and bob himself are still watched')
})

t.test('a grant withdrawn while the feed was away ends the subscription when the feed resumes', async (t) => {
  const store = new MemoryStore(100)
  await store.grant('alice', 'bob', 100)
  const hub = new Hub(store, new Access(store), quiet, HUB_OPTS)
  const feed = muteable(store, hub)
  const bob = recorder('bob')
  const alice = recorder('alice')
  await hub.subscribe(new Subscription(bob, 'alice'), undefined, () => {})
  await hub.subscribe(new Subscription(alice, 'alice'), undefined, () => {})
  feed.muted = true
  await store.revoke('alice', 'bob')
  feed.muted = false
  hub.resumed()
  t.ok(await eventually(() => bob.frames.includes('revoked:alice'), 2000))
  t.same(alice.frames, [], 'the owner watching herself is not revoked')
  t.equal(hub.subscriptionCount, 1)
})
