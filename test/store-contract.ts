import type { Test } from 'tap'
import { compareIds, type NewReading } from '../src/heart/reading.js'
import type { Alert } from '../src/heart/episodes.js'
import type { DeviceRecord, FeedListener, HeartStore, LiveReading } from '../src/heart/store.js'
import { eventually } from './helper.js'

export interface StoreOptions {
  historyMax: number
}

/** Makes a fresh, empty store; the suite closes it when the test ends. */
export type MakeStore = (t: Test, opts: StoreOptions) => Promise<HeartStore>

/** Collects what a store's feed delivers, per user. */
export class Recorder implements FeedListener {
  readonly readings = new Map<string, LiveReading[]>()
  resumes = 0

  reading (userId: string, r: LiveReading): void {
    let list = this.readings.get(userId)
    if (list === undefined) this.readings.set(userId, list = [])
    list.push(r)
  }

  resumed (): void {
    this.resumes++
  }

  readonly alerts: Alert[] = []
  alert (_userId: string, a: Alert): void {
    this.alerts.push(a)
  }

  readonly revocations: Array<[ownerId: string, viewerId: string]> = []
  revoked (ownerId: string, viewerId: string): void {
    this.revocations.push([ownerId, viewerId])
  }

  of (userId: string): LiveReading[] {
    return this.readings.get(userId) ?? []
  }

  /** Waits (bounded) until `count` readings of `userId` have arrived. */
  async waitFor (userId: string, count: number, ms = 3000): Promise<LiveReading[]> {
    if (!await eventually(() => this.of(userId).length >= count, ms, 5)) {
      throw new Error(`${count} readings of ${userId} did not arrive within ${ms} ms (got ${this.of(userId).length})`)
    }
    return this.of(userId)
  }
}

function ascending (ids: string[]): boolean {
  return ids.every((id, i) => i === 0 || compareIds(ids[i - 1], id) < 0)
}

const ids = (readings: Array<{ id: string | null }>): Array<string | null> => readings.map((r) => r.id)

/** Appends and returns the ids alone, for the tests that are not about duplicates. */
async function add (store: HeartStore, userId: string, readings: NewReading[]): Promise<string[]> {
  return (await store.append(userId, readings)).ids
}

/**
 * The contract every HeartStore keeps (src/heart/store.ts): the embedded store and the Redis
 * store both run it, so routes and the hub can rely on it whichever is configured.
 */
export function storeContract (t: Test, name: string, makeStore: MakeStore): void {
  t.test(`${name} store contract`, async (t) => {
    const fresh = async (t: Test, historyMax = 1000): Promise<HeartStore> => {
      const store = await makeStore(t, { historyMax })
      t.teardown(() => store.close())
      return store
    }

    t.test('a user with no readings has no current value, no last id and an empty history', async (t) => {
      const store = await fresh(t)
      t.equal(await store.current('nobody'), null)
      t.same(await store.snapshot('nobody'), { current: null, lastId: null, alerts: [] })
      t.same(await store.history('nobody', { limit: 10 }), { readings: [], truncated: false })
      t.same(await store.history('nobody', { since: '0-0', limit: 10 }), { readings: [], truncated: false })
    })

    t.test('ping answers while the store is up', async (t) => {
      const store = await fresh(t)
      await t.resolves(store.ping())
    })

    t.test('append returns one id per reading, in order, and history holds them with their values', async (t) => {
      const store = await fresh(t)
      const now = Date.now()
      const batch = [{ bpm: 60, ts: now }, { bpm: 61, ts: now + 1 }, { bpm: 62, ts: now + 2 }]
      const first = await add(store, 'u1', batch)
      const second = await add(store, 'u1', [{ bpm: 63, ts: now + 3 }])
      t.equal(first.length, 3)
      t.equal(second.length, 1)
      const all = [...first, ...second]
      t.ok(ascending(all), `ids ascend: ${all.join(' ')}`)
      const page = await store.history('u1', { limit: 10 })
      t.same(page, {
        readings: [...batch, { bpm: 63, ts: now + 3 }].map((r, i) => ({ id: all[i], ...r })),
        truncated: false
      })
    })

    t.test('the current value is the reading with the newest ts', async (t) => {
      const store = await fresh(t)
      await add(store, 'u1', [{ bpm: 70, ts: 1000 }])
      t.same(await store.current('u1'), { bpm: 70, ts: 1000 })
      await add(store, 'u1', [{ bpm: 80, ts: 2000 }])
      t.same(await store.current('u1'), { bpm: 80, ts: 2000 })
    })

    t.test('an older reading appended later goes to history but does not replace the current value', async (t) => {
      const store = await fresh(t)
      const [newer] = await add(store, 'u1', [{ bpm: 70, ts: 2000 }])
      const [older] = await add(store, 'u1', [{ bpm: 55, ts: 1000 }])
      t.same(await store.current('u1'), { bpm: 70, ts: 2000 })
      t.same((await store.history('u1', { limit: 10 })).readings, [
        { id: newer, bpm: 70, ts: 2000 },
        { id: older, bpm: 55, ts: 1000 }
      ], 'history keeps arrival order')
    })

    t.test('within one batch the reading with the newest ts becomes current, wherever it is', async (t) => {
      const store = await fresh(t)
      await add(store, 'u1', [{ bpm: 90, ts: 3000 }, { bpm: 85, ts: 2500 }, { bpm: 88, ts: 2900 }])
      t.same(await store.current('u1'), { bpm: 90, ts: 3000 })
    })

    t.test('among readings with the same newest ts, the last in request order becomes current, as history lists it last', async (t) => {
      const store = await fresh(t)
      await add(store, 'u1', [{ bpm: 60, ts: 1000 }])
      // Server-stamped (a batch without ts): readings with their own equal ts would be duplicates.
      await add(store, 'u1', [{ bpm: 70, ts: 2000, serverTs: true }, { bpm: 71, ts: 2000, serverTs: true }, { bpm: 65, ts: 1500 }])
      t.same(await store.current('u1'), { bpm: 71, ts: 2000 })
      t.equal(await store.currentBpm('u1'), 71)
      const page = await store.history('u1', { limit: 10 })
      t.same(page.readings.filter((r) => r.ts === 2000).at(-1)?.bpm, 71)
    })

    t.test('users are kept apart', async (t) => {
      const store = await fresh(t)
      await add(store, 'u1', [{ bpm: 70, ts: 1000 }])
      t.equal(await store.current('u2'), null)
      t.same((await store.history('u2', { limit: 10 })).readings, [])
    })

    t.test('history without since gives the newest `limit` readings, oldest first', async (t) => {
      const store = await fresh(t)
      const all = await add(store, 'u1', [1, 2, 3, 4, 5].map((i) => ({ bpm: 60 + i, ts: 1000 + i })))
      const page = await store.history('u1', { limit: 3 })
      t.same(ids(page.readings), all.slice(2))
      t.same(page.readings.map((r) => r.bpm), [63, 64, 65])
      t.equal(page.truncated, false)
      t.same(ids((await store.history('u1', { limit: 100 })).readings), all, 'all of them when fewer than limit')
    })

    t.test('history with since gives the first `limit` readings strictly after it', async (t) => {
      const store = await fresh(t)
      const all = await add(store, 'u1', [1, 2, 3, 4, 5].map((i) => ({ bpm: 60 + i, ts: 1000 + i })))
      t.same(await store.history('u1', { since: all[1], limit: 2 }), {
        readings: [{ id: all[2], bpm: 63, ts: 1003 }, { id: all[3], bpm: 64, ts: 1004 }],
        truncated: false
      })
      t.same(ids((await store.history('u1', { since: all[1], limit: 100 })).readings), all.slice(2), 'to the end')
      t.same(ids((await store.history('u1', { since: '0-0', limit: 100 })).readings), all, 'since 0-0: everything')
      t.same(await store.history('u1', { since: all[4], limit: 10 }), { readings: [], truncated: false }, 'since the newest: nothing')
      const [ms] = all[4].split('-')
      t.same(await store.history('u1', { since: `${Number(ms) + 60000}-0`, limit: 10 }), { readings: [], truncated: false }, 'since a future id: nothing')
    })

    t.test('history is capped at historyMax and says when a replay since an old id is truncated', async (t) => {
      // Redis does not record which ids were trimmed, so `since` exactly at the newest trimmed id
      // may be reported truncated although nothing is missing: not checked here.
      const historyMax = 100
      const total = 500
      const store = await fresh(t, historyMax)
      const all = await add(store, 'u1', Array.from({ length: total }, (_v, i) => ({ bpm: 60 + (i % 100), ts: 10000 + i })))
      t.equal(all.length, total)
      t.ok(ascending(all))
      const kept = ids((await store.history('u1', { limit: 10000 })).readings) as string[]
      t.equal(kept.length, historyMax, `kept ${kept.length} of ${total}`)
      t.same(kept, all.slice(total - kept.length), 'the newest ones, in order')
      const firstKept = total - kept.length
      t.ok(firstKept >= 2, 'at least two readings were trimmed')

      const fromGap = await store.history('u1', { since: all[firstKept - 2], limit: 10 })
      t.equal(fromGap.truncated, true, 'since an id whose successor was trimmed: truncated')
      t.same(ids(fromGap.readings), all.slice(firstKept, firstKept + 10), 'and it resumes at the oldest kept reading')
      t.equal((await store.history('u1', { since: all[0], limit: 10 })).truncated, true, 'since the first id: truncated')
      t.equal((await store.history('u1', { since: '0-0', limit: 10 })).truncated, true, 'since 0-0: truncated')

      const fromOldest = await store.history('u1', { since: all[firstKept], limit: 10 })
      t.equal(fromOldest.truncated, false, 'since the oldest kept id: nothing after it is missing')
      t.same(ids(fromOldest.readings), all.slice(firstKept + 1, firstKept + 11))
      t.equal((await store.history('u1', { since: all[total - 50], limit: 10 })).truncated, false, 'since a newer kept id: not truncated')
      t.equal((await store.history('u1', { limit: 10 })).truncated, false, 'without since: never truncated')
    })

    t.test('history that was never trimmed is not truncated for any since', async (t) => {
      const store = await fresh(t, 3)
      const all = await add(store, 'u1', [{ bpm: 60, ts: 1 }, { bpm: 61, ts: 2 }])
      t.equal((await store.history('u1', { since: '0-0', limit: 10 })).truncated, false)
      t.equal((await store.history('u1', { since: all[0], limit: 10 })).truncated, false)
    })

    t.test('a reading sent again with its ts stores nothing, publishes nothing, and answers the stored id', async (t) => {
      const store = await fresh(t)
      const rec = new Recorder()
      store.feed.setListener(rec)
      await store.feed.watch('u1')
      const first = await store.append('u1', [{ bpm: 70, ts: 1000 }, { bpm: 72, ts: 2000 }])
      t.same(first.duplicates, 0)
      const again = await store.append('u1', [{ bpm: 72, ts: 2000 }, { bpm: 75, ts: 3000 }, { bpm: 70, ts: 1000 }])
      t.same(again.duplicates, 2)
      t.same(again.ids[0], first.ids[1], 'a duplicate answers the id it was stored under')
      t.same(again.ids[2], first.ids[0])
      t.ok(compareIds(again.ids[1], first.ids[1]) > 0, 'the new reading got a new id')
      const page = await store.history('u1', { limit: 10 })
      t.same(page.readings, [
        { id: first.ids[0], bpm: 70, ts: 1000 },
        { id: first.ids[1], bpm: 72, ts: 2000 },
        { id: again.ids[1], bpm: 75, ts: 3000 }
      ], 'each reading once')
      const all = await store.append('u1', [{ bpm: 75, ts: 3000 }])
      t.same(all, { ids: [again.ids[1]], duplicates: 1, alerts: [] }, 'a request of duplicates only')
      // A reading of another user, appended after, arrives after anything the resends could have published.
      await store.feed.watch('u2')
      await store.append('u2', [{ bpm: 60, ts: 1 }])
      await rec.waitFor('u2', 1)
      t.same(ids(rec.of('u1')), [first.ids[0], first.ids[1], again.ids[1]], 'only new readings were published')
    })

    t.test('a duplicate is identified by ts alone and leaves the current value alone', async (t) => {
      const store = await fresh(t)
      const [id] = await add(store, 'u1', [{ bpm: 80, ts: 5000 }])
      t.same(await store.append('u1', [{ bpm: 81, ts: 5000 }]), { ids: [id], duplicates: 1, alerts: [] })
      t.same(await store.current('u1'), { bpm: 80, ts: 5000 })
      t.same((await store.history('u1', { limit: 10 })).readings, [{ id, bpm: 80, ts: 5000 }])
    })

    t.test('readings sharing a ts within one batch: the first is stored, the rest are its duplicates', async (t) => {
      const store = await fresh(t)
      const res = await store.append('u1', [{ bpm: 70, ts: 1000 }, { bpm: 71, ts: 1000 }, { bpm: 72, ts: 1001 }])
      t.equal(res.duplicates, 1)
      t.equal(res.ids[1], res.ids[0])
      t.same((await store.history('u1', { limit: 10 })).readings.map((r) => r.bpm), [70, 72])
    })

    t.test('readings stamped with server time are never duplicates, of each other or of one with its own ts', async (t) => {
      const store = await fresh(t)
      const a = await store.append('u1', [{ bpm: 70, ts: 1000, serverTs: true }, { bpm: 71, ts: 1000, serverTs: true }])
      const b = await store.append('u1', [{ bpm: 72, ts: 1000 }, { bpm: 73, ts: 1000, serverTs: true }])
      t.equal(a.duplicates + b.duplicates, 0)
      t.equal(new Set([...a.ids, ...b.ids]).size, 4)
      t.same(await store.append('u1', [{ bpm: 74, ts: 1000 }]), { ids: [b.ids[0]], duplicates: 1, alerts: [] }, 'the one with its own ts is found again')
    })

    t.test('users are deduplicated apart: the same ts of another user is a new reading', async (t) => {
      const store = await fresh(t)
      await store.append('u1', [{ bpm: 70, ts: 1000 }])
      t.equal((await store.append('u2', [{ bpm: 70, ts: 1000 }])).duplicates, 0)
    })

    t.test('a reading trimmed from history is no longer a duplicate: sent again, it is stored again', async (t) => {
      const store = await fresh(t, 3)
      const [old] = await add(store, 'u1', [{ bpm: 60, ts: 1 }])
      const kept = await add(store, 'u1', [{ bpm: 61, ts: 2 }, { bpm: 62, ts: 3 }, { bpm: 63, ts: 4 }])
      t.same(await store.append('u1', [{ bpm: 62, ts: 3 }]), { ids: [kept[1]], duplicates: 1, alerts: [] }, 'still in history')
      const again = await store.append('u1', [{ bpm: 60, ts: 1 }])
      t.equal(again.duplicates, 0, 'trimmed: stored as new')
      t.not(again.ids[0], old)
      t.same((await store.history('u1', { limit: 10 })).readings.map((r) => r.ts), [3, 4, 1])
      t.equal((await store.append('u1', [{ bpm: 61, ts: 2 }])).duplicates, 0, 'the reading trimmed by that one is new again too')
    })

    t.test('an older reading with its own ts goes to history and is pushed but does not replace current', async (t) => {
      const store = await fresh(t)
      const rec = new Recorder()
      store.feed.setListener(rec)
      await store.feed.watch('u1')
      await store.append('u1', [{ bpm: 90, ts: 9000 }])
      const { ids: [older], duplicates } = await store.append('u1', [{ bpm: 50, ts: 1000 }])
      t.equal(duplicates, 0)
      t.same(await store.current('u1'), { bpm: 90, ts: 9000 })
      t.same((await rec.waitFor('u1', 2))[1], { id: older, bpm: 50, ts: 1000 })
    })

    t.test('snapshot gives the current value and the newest history id', async (t) => {
      const store = await fresh(t)
      const [a] = await add(store, 'u1', [{ bpm: 70, ts: 2000 }])
      t.same(await store.snapshot('u1'), { current: { bpm: 70, ts: 2000 }, lastId: a, alerts: [] })
      const [b] = await add(store, 'u1', [{ bpm: 50, ts: 1000 }])
      t.same(await store.snapshot('u1'), { current: { bpm: 70, ts: 2000 }, lastId: b, alerts: [] }, 'lastId follows history, current follows ts')
    })

    t.test('the feed delivers appended readings of a watched user, with their ids, in order', async (t) => {
      const store = await fresh(t)
      const rec = new Recorder()
      store.feed.setListener(rec)
      await store.feed.watch('u1')
      const first = await add(store, 'u1', [{ bpm: 60, ts: 1 }, { bpm: 61, ts: 2 }])
      const second = await add(store, 'u1', [{ bpm: 62, ts: 3 }])
      const got = await rec.waitFor('u1', 3)
      t.same(got, [
        { id: first[0], bpm: 60, ts: 1 },
        { id: first[1], bpm: 61, ts: 2 },
        { id: second[0], bpm: 62, ts: 3 }
      ])
      t.equal(rec.resumes, 0)
    })

    t.test('the feed delivers nothing for a user after unwatch', async (t) => {
      const store = await fresh(t)
      const rec = new Recorder()
      store.feed.setListener(rec)
      await store.feed.watch('u1')
      await store.feed.watch('u2')
      await add(store, 'u1', [{ bpm: 60, ts: 1 }])
      await rec.waitFor('u1', 1)
      await store.feed.unwatch('u1')
      await add(store, 'u1', [{ bpm: 61, ts: 2 }])
      // Published after u1's reading on the same feed: once it arrives, u1's would have too.
      await add(store, 'u2', [{ bpm: 70, ts: 2 }])
      await rec.waitFor('u2', 1)
      t.equal(rec.of('u1').length, 1, 'only the reading from before unwatch')
    })

    t.test('watching one user does not deliver another user\'s readings', async (t) => {
      const store = await fresh(t)
      const rec = new Recorder()
      store.feed.setListener(rec)
      await store.feed.watch('u1')
      await add(store, 'u2', [{ bpm: 70, ts: 1 }])
      await add(store, 'u1', [{ bpm: 60, ts: 2 }])
      await rec.waitFor('u1', 1)
      t.same([...rec.readings.keys()], ['u1'])
    })

    t.test('unwatching a user that is not watched is harmless', async (t) => {
      const store = await fresh(t)
      const rec = new Recorder()
      store.feed.setListener(rec)
      await t.resolves(store.feed.unwatch('nobody'))
      await store.feed.watch('u1')
      await add(store, 'u1', [{ bpm: 60, ts: 1 }])
      await rec.waitFor('u1', 1)
    })

    t.test('grants: granted, listed both ways, withdrawn', async (t) => {
      const store = await fresh(t)
      t.equal((await store.areGranted([{ ownerId: 'owner', viewerId: 'v1' }]))[0], false)
      await store.grant('owner', 'v2', 10)
      await store.grant('owner', 'v1', 10)
      await store.grant('owner', 'v1', 10)
      await store.grant('other', 'v1', 10)
      t.equal((await store.areGranted([{ ownerId: 'owner', viewerId: 'v1' }]))[0], true)
      t.equal((await store.areGranted([{ ownerId: 'v1', viewerId: 'owner' }]))[0], false, 'a grant goes one way')
      t.same(await store.viewersOf('owner'), ['v1', 'v2'])
      t.same(await store.areGranted([
        { ownerId: 'owner', viewerId: 'v1' }, { ownerId: 'other', viewerId: 'v2' }, { ownerId: 'owner', viewerId: 'v2' },
        { ownerId: 'other', viewerId: 'v1' }, { ownerId: 'owner', viewerId: 'v1' }, { ownerId: 'nobody', viewerId: 'v1' }
      ]), [true, false, true, true, true, false], 'many pairs at once, over several owners, answered in order')
      t.same(await store.areGranted([]), [], 'none asked, none answered')
      t.same(await store.watchedBy('v1'), ['other', 'owner'])
      t.equal(await store.revoke('owner', 'v1'), true)
      t.equal(await store.revoke('owner', 'v1'), false, 'a second revoke finds nothing')
      t.equal((await store.areGranted([{ ownerId: 'owner', viewerId: 'v1' }]))[0], false)
      t.same(await store.viewersOf('owner'), ['v2'])
      t.same(await store.watchedBy('v1'), ['other'])
      t.same(await store.viewersOf('nobody'), [])
    })

    t.test('grants stop at the cap, also when they arrive together; granting again is not counted', async (t) => {
      const store = await fresh(t)
      const results = await Promise.all(['a', 'b', 'c', 'd', 'e'].map(async (v) => await store.grant('owner', v, 3)))
      t.equal(results.filter(Boolean).length, 3, 'three of five simultaneous grants')
      t.equal((await store.viewersOf('owner')).length, 3)
      const granted = await store.viewersOf('owner')
      t.equal(await store.grant('owner', granted[0], 3), true, 'an existing viewer is granted again')
    })

    const device = (deviceId: string, createdAt = 1000): DeviceRecord => ({ deviceId, name: `band ${deviceId}`, createdAt, keyHash: `hash-of-${deviceId}` })

    t.test('devices: added, listed oldest first without their hash, removed', async (t) => {
      const store = await fresh(t)
      t.same(await store.devices('owner'), [])
      t.equal(await store.addDevice('owner', device('d2', 2000), 20), true)
      t.equal(await store.addDevice('owner', device('d1', 1000), 20), true)
      t.equal(await store.addDevice('other', device('d3'), 20), true)
      t.same(await store.devices('owner'), [
        { deviceId: 'd1', name: 'band d1', createdAt: 1000, lastSeenAt: null },
        { deviceId: 'd2', name: 'band d2', createdAt: 2000, lastSeenAt: null }
      ])
      t.equal(await store.removeDevice('owner', 'd3'), false, 'another owner\'s device is not mine to remove')
      t.equal(await store.removeDevice('owner', 'd1'), true)
      t.equal(await store.removeDevice('owner', 'd1'), false, 'a second remove finds nothing')
      t.same((await store.devices('owner')).map((d) => d.deviceId), ['d2'])
      t.same((await store.devices('other')).map((d) => d.deviceId), ['d3'])
      t.equal(await store.addDevice('owner', device('d5', 3000), 20), true)
      t.equal(await store.addDevice('owner', device('d4', 3000), 20), true)
      t.same((await store.devices('owner')).map((d) => d.deviceId), ['d2', 'd4', 'd5'], 'the same createdAt: by deviceId, whatever order they came in')
    })

    t.test('verifyDevice holds for the owner\'s device with its hash only, and records when it was seen', async (t) => {
      const store = await fresh(t)
      await store.addDevice('owner', device('d1'), 20)
      t.equal(await store.verifyDevice('owner', 'd1', 'wrong hash', 5000), false, 'another hash')
      t.equal(await store.verifyDevice('other', 'd1', 'hash-of-d1', 5000), false, 'the same id under another owner')
      t.equal(await store.verifyDevice('owner', 'nope', 'hash-of-d1', 5000), false, 'an unknown device')
      t.equal((await store.devices('owner'))[0].lastSeenAt, null, 'refused checks are not sightings')
      t.equal(await store.verifyDevice('owner', 'd1', 'hash-of-d1', 5000), true)
      t.equal((await store.devices('owner'))[0].lastSeenAt, 5000)
      t.equal(await store.verifyDevice('owner', 'd1', 'hash-of-d1', 6000), true)
      t.equal((await store.devices('owner'))[0].lastSeenAt, 6000)
      await store.removeDevice('owner', 'd1')
      t.equal(await store.verifyDevice('owner', 'd1', 'hash-of-d1', 7000), false, 'a removed device is refused at once')
      await store.addDevice('owner', device('d1'), 20)
      t.equal((await store.devices('owner'))[0].lastSeenAt, null, 'and its sightings went with it')
    })

    t.test('devices stop at the cap, also when they arrive together; removing one makes room', async (t) => {
      const store = await fresh(t)
      const results = await Promise.all(['a', 'b', 'c', 'd', 'e'].map(async (id) => await store.addDevice('owner', device(id), 3)))
      t.equal(results.filter(Boolean).length, 3, 'three of five simultaneous additions')
      const kept = (await store.devices('owner')).map((d) => d.deviceId)
      t.equal(kept.length, 3)
      t.equal(await store.addDevice('other', device('f'), 3), true, 'the cap is per owner')
      await store.removeDevice('owner', kept[0])
      t.equal(await store.addDevice('owner', device('g'), 3), true)
      t.equal(await store.addDevice('owner', device('h'), 3), false)
    })

    t.test('a revoke reaches the feed of instances watching the owner', async (t) => {
      const store = await fresh(t)
      const rec = new Recorder()
      store.feed.setListener(rec)
      await store.feed.watch('owner')
      await store.grant('owner', 'v1', 10)
      await store.revoke('owner', 'v1')
      t.ok(await eventually(() => rec.revocations.length === 1, 3000), 'delivered')
      t.same(rec.revocations, [['owner', 'v1']])
    })

    t.test('alert rules: none at first, replaced as a whole, kept per user, deleted once', async (t) => {
      const store = await fresh(t)
      t.equal(await store.alertRules('u1'), null)
      const full = { high: 120, low: 45, sustainS: 10, offline: true }
      t.same(await store.setAlertRules('u1', full), full, 'answers what it stored')
      t.same(await store.alertRules('u1'), full)
      const input = { high: 140, sustainS: 0, offline: false }
      t.same(await store.setAlertRules('u1', input), input)
      input.high = 99
      t.same(await store.alertRules('u1'), { high: 140, sustainS: 0, offline: false }, 'the old low is gone, and the caller\'s object is not the stored one')
      t.equal(await store.alertRules('u2'), null, 'another user has none')
      await store.deleteAlertRules('u1')
      t.equal(await store.alertRules('u1'), null)
      await t.resolves(store.deleteAlertRules('u1'), 'deleting what is not there is harmless')
    })

    const kindsAndStates = (alerts: Alert[]): string[] => alerts.map((a) => `${a.kind}:${a.state}`)
    const readingsAt = (t0: number, bpms: number[], stepMs = 1000): NewReading[] => bpms.map((bpm, i) => ({ bpm, ts: t0 + i * stepMs }))

    t.test('episodes: high opens at the first reading above it (sustainS 0) and closes at high - 5 or below, once each', async (t) => {
      const store = await fresh(t)
      const rec = new Recorder()
      store.feed.setListener(rec)
      await store.feed.watch('u1')
      const opened: Alert[] = []
      store.onAlertOpened((a) => opened.push(a))
      await store.setAlertRules('u1', { high: 120, sustainS: 0, offline: false })
      const t0 = 1_764_115_200_000
      const r1 = await store.append('u1', readingsAt(t0, [100, 121, 150]))
      t.same(kindsAndStates(r1.alerts), ['high:open'], 'opens once, at 121')
      t.match(r1.alerts[0], { userId: 'u1', kind: 'high', state: 'open', bpm: 121, ts: t0 + 1000, openedAt: t0 + 1000 })
      t.equal(r1.alerts[0].alertId, r1.alerts[0].alertId.match(/^\d+-\d+$/)?.[0])
      t.same((await store.snapshot('u1')).alerts, r1.alerts, 'the snapshot lists it while open')
      const r2 = await store.append('u1', readingsAt(t0 + 3000, [118, 116]))
      t.same(r2.alerts, [], 'hysteresis: 118 and 116 are above 115')
      const r3 = await store.append('u1', readingsAt(t0 + 5000, [115, 90]))
      t.same(kindsAndStates(r3.alerts), ['high:closed'])
      t.match(r3.alerts[0], { alertId: r1.alerts[0].alertId, state: 'closed', closedAt: t0 + 5000, openedAt: t0 + 1000, bpm: 121 })
      t.same((await store.snapshot('u1')).alerts, [])
      t.same(opened.map((a) => a.alertId), [r1.alerts[0].alertId], 'the sink hears the opening only')
      t.ok(await eventually(() => rec.alerts.length === 2, 3000), 'both transitions reach the feed')
      t.same(kindsAndStates(rec.alerts), ['high:open', 'high:closed'])
      const list = await store.alerts('u1', { limit: 10 })
      t.same(kindsAndStates(list), ['high:closed'], 'one episode, as it stands now')
      t.same(await store.alerts('u1', { since: list[0].alertId, limit: 10 }), [])
    })

    t.test('episodes: low with sustainS opens only after readings stay below it that long; a reading back inside resets it', async (t) => {
      const store = await fresh(t)
      await store.setAlertRules('u1', { low: 45, sustainS: 10, offline: false })
      const t0 = 1_764_115_200_000
      t.same((await store.append('u1', readingsAt(t0, [44, 43, 42, 41, 40, 39, 40, 41, 42, 43]))).alerts, [], '9 s below: not yet')
      t.same((await store.append('u1', readingsAt(t0 + 10_000, [46]))).alerts, [], 'back above the limit resets the clock')
      t.same((await store.append('u1', readingsAt(t0 + 11_000, [40, 40, 40, 40, 40, 40, 40, 40, 40, 40]))).alerts, [], '9 s again')
      const r = await store.append('u1', [{ bpm: 38, ts: t0 + 21_000 }])
      t.same(kindsAndStates(r.alerts), ['low:open'], 'open once 10 s below')
      t.match(r.alerts[0], { bpm: 38, ts: t0 + 21_000 })
      t.same((await store.append('u1', readingsAt(t0 + 22_000, [49]))).alerts, [], '49 is below low + 5')
      t.same(kindsAndStates((await store.append('u1', readingsAt(t0 + 23_000, [50]))).alerts), ['low:closed'])
    })

    t.test('episodes: no rules, no episodes; a late reading changes nothing; duplicates evaluate nothing; deleting the rules closes an open one', async (t) => {
      const store = await fresh(t)
      const t0 = 1_764_115_200_000
      t.same((await store.append('u1', readingsAt(t0, [200, 210]))).alerts, [], 'no rules')
      await store.setAlertRules('u1', { high: 120, sustainS: 0, offline: false })
      const opened = await store.append('u1', [{ bpm: 150, ts: t0 + 5000 }])
      t.same(kindsAndStates(opened.alerts), ['high:open'])
      t.same((await store.append('u1', [{ bpm: 60, ts: t0 + 4000 }])).alerts, [], 'older than what was evaluated: late, not news')
      const dup = await store.append('u1', [{ bpm: 150, ts: t0 + 5000 }])
      t.equal(dup.duplicates, 1)
      t.same(dup.alerts, [])
      await store.deleteAlertRules('u1')
      t.same(kindsAndStates((await store.append('u1', [{ bpm: 150, ts: t0 + 6000 }])).alerts), ['high:closed'], 'without rules an open episode closes at the next reading')
    })

    t.test('episodes: offline opens once for the last reading the callers saw, and closes at the next reading', async (t) => {
      const store = await fresh(t)
      const opened: Alert[] = []
      store.onAlertOpened((a) => opened.push(a))
      const t0 = Date.now() - 60_000
      await store.append('u1', [{ bpm: 72, ts: t0 }])
      t.equal(await store.openOffline('u1', t0, 15_000), null, 'the rule is off')
      await store.setAlertRules('u1', { offline: true, sustainS: 0 })
      const [a, b] = await Promise.all([store.openOffline('u1', t0, 15_000), store.openOffline('u1', t0, 15_000)])
      const one = a ?? b
      t.ok((a === null) !== (b === null), 'two callers at once: exactly one opens it')
      t.match(one, { kind: 'offline', state: 'open', bpm: 72, ts: t0, openedAt: t0 + 15_000 })
      t.same(opened.map((x) => x.alertId), [one!.alertId])
      t.equal(await store.openOffline('u1', t0, 15_000), null, 'already open')
      t.same((await store.snapshot('u1')).alerts, [one])
      const back = await store.append('u1', [{ bpm: 75, ts: Date.now() }])
      t.same(kindsAndStates(back.alerts), ['offline:closed'])
      t.equal(await store.openOffline('u1', t0, 15_000), null, 'a reading came after the one the caller saw')
    })

    t.test('episodes: the list pages by alertId, oldest first, and keeps the newest ones', async (t) => {
      const store = await fresh(t)
      await store.setAlertRules('u1', { high: 120, sustainS: 0, offline: false })
      const t0 = 1_764_115_200_000
      const readings: NewReading[] = []
      for (let i = 0; i < 6; i++) readings.push({ bpm: 150, ts: t0 + i * 2000 }, { bpm: 80, ts: t0 + i * 2000 + 1000 })
      const r = await store.append('u1', readings)
      t.equal(r.alerts.length, 12, 'six episodes, each opened and closed')
      const all = await store.alerts('u1', { limit: 100 })
      t.equal(all.length, 6)
      t.ok(ascending(all.map((a) => a.alertId)))
      t.same(all.map((a) => a.state), ['closed', 'closed', 'closed', 'closed', 'closed', 'closed'])
      t.same(await store.alerts('u1', { limit: 2 }), all.slice(4), 'without since: the newest')
      t.same(await store.alerts('u1', { since: all[1].alertId, limit: 3 }), all.slice(2, 5))
    })
  })
}
