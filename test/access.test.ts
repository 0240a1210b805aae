import t from 'tap'
import { Access, ForbiddenError } from '../src/heart/access.js'
import { MemoryStore } from '../src/heart/memory-store.js'

t.test('a user reads their own heart rate without the store being asked', async (t) => {
  const access = new Access({ areGranted: async () => { throw new Error('the store was asked') } })
  t.equal(await access.canRead('alice', 'alice'), true)
  await t.resolves(access.authorize('alice', 'alice'))
})

t.test('another user reads it only while the owner\'s grant holds, and a grant goes one way', async (t) => {
  const store = new MemoryStore(100)
  const access = new Access(store)
  t.equal(await access.canRead('bob', 'alice'), false, 'no grant yet')
  await store.grant('alice', 'bob', 100)
  t.equal(await access.canRead('bob', 'alice'), true, '(viewerId, ownerId): bob may read alice')
  t.equal(await access.canRead('alice', 'bob'), false, 'alice shared with bob, not bob with alice')
  await store.revoke('alice', 'bob')
  t.equal(await access.canRead('bob', 'alice'), false, 'withdrawn at the next question')
})

t.test('authorize rejects with ForbiddenError naming the owner', async (t) => {
  const access = new Access(new MemoryStore(100))
  await t.rejects(access.authorize('bob', 'alice'), { name: 'ForbiddenError', ownerId: 'alice', message: 'not allowed to read alice' })
  await t.rejects(access.authorize('bob', 'alice'), ForbiddenError)
})

t.test('a store that does not answer makes the question fail, not pass', async (t) => {
  const down = new Error('down')
  const access = new Access({ areGranted: async () => { throw down } })
  await t.rejects(access.canRead('bob', 'alice'), down)
  await t.rejects(access.authorize('bob', 'alice'), down)
})

t.test('a service writes anyone\'s readings, a device its owner\'s alone', async (t) => {
  const access = new Access({ areGranted: async () => { throw new Error('the store was asked') } })
  t.equal(access.canWrite({ kind: 'service' }, 'alice'), true)
  t.equal(access.canWrite({ kind: 'device', ownerId: 'alice' }, 'alice'), true)
  t.equal(access.canWrite({ kind: 'device', ownerId: 'alice' }, 'bob'), false)
  t.equal(access.canWrite({ kind: 'user', userId: 'alice' }, 'alice'), true)
  t.equal(access.canWrite({ kind: 'user', userId: 'alice' }, 'bob'), false)
})

t.test('alert rules are changed by their owner alone, a granted viewer included', async (t) => {
  const access = new Access({ areGranted: async (pairs) => pairs.map(() => true) })
  t.equal(access.canManage('alice', 'alice'), true)
  t.equal(access.canManage('bob', 'alice'), false)
})
