import { createHash, randomBytes } from 'node:crypto'
import { isUserId } from './reading.js'
import type { DeviceInfo, HeartStore } from './store.js'

/** A wearer has a few bands and a bedside gateway, not a fleet; the cap keeps one owner's hash small. */
export const MAX_DEVICES_PER_OWNER = 20

/** Device ids are 12 random bytes in base64url. */
export const DEVICE_ID_PATTERN = '^[A-Za-z0-9_-]{16}$'
const deviceIdRe = new RegExp(DEVICE_ID_PATTERN)
/** 32 random bytes in base64url: unguessable, so a fast hash is enough to store it. */
const secretRe = /^[A-Za-z0-9_-]{43}$/
const KEY_TAG = 'hgd'

/** What the device store needs: the device half of a heart store. */
export type DeviceStore = Pick<HeartStore, 'addDevice' | 'devices' | 'removeDevice' | 'verifyDevice'>

/** A device just created: the only time its key is known to anyone but its holder. */
export interface IssuedDevice {
  deviceId: string
  name: string
  key: string
  createdAt: number
}

/** What a device key says about itself; only the store can tell whether it is real. */
interface ParsedKey {
  ownerId: string
  deviceId: string
  keyHash: string
}

function hashSecret (secret: string): string {
  return createHash('sha256').update(secret).digest('hex')
}

/**
 * `hgd.<ownerId>.<deviceId>.<secret>`. The owner id is in the key so the device is found on the
 * owner's own keys (one slot on a cluster) without a lookup table spanning every slot. None of the
 * three parts can contain a dot (user ids are [A-Za-z0-9_-], the others base64url), so a key
 * splits one way only.
 */
function parseKey (key: string): ParsedKey | null {
  const parts = key.split('.')
  if (parts.length !== 4 || parts[0] !== KEY_TAG) return null
  const [, ownerId, deviceId, secret] = parts
  if (!isUserId(ownerId) || !deviceIdRe.test(deviceId) || !secretRe.test(secret)) return null
  return { ownerId, deviceId, keyHash: hashSecret(secret) }
}

/**
 * Devices (a band, a bedside gateway) that write the readings of their owner alone, each with a
 * key of its own. Only a hash of the key's secret is stored, and only the hash is ever sent to
 * Redis, so neither Redis nor a logged command holds a usable key.
 */
export class Devices {
  constructor (private readonly store: DeviceStore, private readonly maxPerOwner = MAX_DEVICES_PER_OWNER) {}

  /** A new device and its key; null when the owner already has the maximum. */
  async create (ownerId: string, name: string): Promise<IssuedDevice | null> {
    const deviceId = randomBytes(12).toString('base64url')
    const secret = randomBytes(32).toString('base64url')
    const createdAt = Date.now()
    const added = await this.store.addDevice(ownerId, { deviceId, name, createdAt, keyHash: hashSecret(secret) }, this.maxPerOwner)
    if (!added) return null
    return { deviceId, name, key: `${KEY_TAG}.${ownerId}.${deviceId}.${secret}`, createdAt }
  }

  async list (ownerId: string): Promise<DeviceInfo[]> {
    return await this.store.devices(ownerId)
  }

  async remove (ownerId: string, deviceId: string): Promise<boolean> {
    return await this.store.removeDevice(ownerId, deviceId)
  }

  /**
   * The owner a device key writes for, or null when it is no device key or its device is unknown
   * or deleted. A string that is not shaped like a key never reaches the store.
   */
  async ownerOf (key: string): Promise<string | null> {
    const parsed = parseKey(key)
    if (parsed === null) return null
    const known = await this.store.verifyDevice(parsed.ownerId, parsed.deviceId, parsed.keyHash, Date.now())
    return known ? parsed.ownerId : null
  }
}
