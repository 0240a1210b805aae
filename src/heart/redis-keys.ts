/**
 * The Redis layout, shared with other writers and readers (README, "Redis layout").
 *
 * - `<prefix><userId>`            the current bpm as a decimal string: the original system's key,
 *                                 so `HEART_KEY_PREFIX=""` gives `SET <userId> <bpm>` as before.
 * - `{<prefix><userId>}:ts`       `<ts>:<bpm>`: when the service last moved the current value, and to what.
 * - `{<prefix><userId>}:history`  a stream of readings (`bpm`, `ts` fields), trimmed to HISTORY_MAX.
 * - `{<prefix><userId>}:ids-by-ts` a hash `ts` → history id of the readings in history that carried
 *                                 their own ts: the duplicate check, trimmed with the history.
 * - `{<prefix><userId>}:live`     the pub/sub channel new readings (and revocations of grants) are published on.
 * - `{<prefix><userId>}:viewers`  a set: who may read this user (sharing).
 * - `{<prefix><userId>}:watching` a set: whom this user may read.
 * - `{<prefix><userId>}:devices`  a hash: device id -> JSON `{"name","createdAt","keyHash"}` of this user's devices.
 * - `{<prefix><userId>}:devices-seen` a hash: device id -> when its key last wrote (ms).
 * - `{<prefix><userId>}:alert-rules` a hash: the user's alert rules (`high`, `low`, `sustainS`, `offline` 1/0).
 * - `{<prefix><userId>}:alert-state`, `:alert-log`, `:alerts`: alert episodes (redis-episodes.ts).
 *
 * The braces are a cluster hash tag whose content is the legacy key itself, so all of them hash
 * to the legacy key's slot (and a prefix must not contain braces). User ids cannot contain
 * braces or colons, so these names never collide with a legacy key.
 */
export interface UserKeys {
  current: string
  meta: string
  history: string
  idsByTs: string
  channel: string
  viewers: string
  watching: string
  devices: string
  devicesSeen: string
  alertRules: string
  alertState: string
  alertLog: string
  alerts: string
}

/** The original system's key, read on the hot path on its own (no other key is built for it). */
export function legacyKey (prefix: string, userId: string): string {
  return prefix + userId
}

export function userKeys (prefix: string, userId: string): UserKeys {
  const current = legacyKey(prefix, userId)
  const tag = `{${current}}`
  return {
    current,
    meta: `${tag}:ts`,
    history: `${tag}:history`,
    idsByTs: `${tag}:ids-by-ts`,
    channel: `${tag}:live`,
    viewers: `${tag}:viewers`,
    watching: `${tag}:watching`,
    devices: `${tag}:devices`,
    devicesSeen: `${tag}:devices-seen`,
    alertRules: `${tag}:alert-rules`,
    alertState: `${tag}:alert-state`,
    alertLog: `${tag}:alert-log`,
    alerts: `${tag}:alerts`
  }
}

const CHANNEL_SUFFIX = '}:live'

/** The user id a live channel belongs to, or null for a channel that is not ours. */
export function userIdOfChannel (prefix: string, channel: string): string | null {
  const head = '{' + prefix
  if (!channel.startsWith(head) || !channel.endsWith(CHANNEL_SUFFIX)) return null
  return channel.slice(head.length, -CHANNEL_SUFFIX.length)
}
