import type { OpenedAlert } from './alert.js'

/**
 * The `data` of a subscription message, built from WECHAT_ALERT_FIELDS: each template key maps
 * to a text with placeholders. WeChat refuses a message whose values break the rules of the
 * key's type (errcode 47003), so each value is fitted to its type here.
 * https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html
 */

export const PLACEHOLDERS = ['owner', 'kind', 'bpm', 'time'] as const
type Placeholder = typeof PLACEHOLDERS[number]
export type TemplateFields = Record<string, string>

/** A template key is its type followed by a number: thing1, number2, time3, character_string4… */
const KEY = /^([a-z_]+?)(\d+)$/
const PLACEHOLDER = /\{([a-z]+)\}/g

/** The most characters WeChat takes per type; types not listed are passed as they are. */
const MAX_CHARS: Record<string, number> = { thing: 20, short_thing: 5, phrase: 5, character_string: 32, number: 32, letter: 32, symbol: 5, name: 10, amount: 20 }

const KIND_TEXT: Record<OpenedAlert['kind'], string> = { high: '心率过高', low: '心率过低', offline: '设备离线' }

/** Reads WECHAT_ALERT_FIELDS; throws a message naming what is wrong. */
export function parseTemplateFields (text: string): TemplateFields {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw new Error('env/WECHAT_ALERT_FIELDS must be a JSON object such as {"thing1":"{owner}","number2":"{bpm}","time3":"{time}"}')
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value) || Object.keys(value).length === 0) {
    throw new Error('env/WECHAT_ALERT_FIELDS must be a non-empty JSON object of template keys')
  }
  for (const [key, text] of Object.entries(value)) {
    if (!KEY.test(key)) throw new Error(`env/WECHAT_ALERT_FIELDS: "${key}" is not a template key (a type and a number, e.g. thing1)`)
    if (typeof text !== 'string') throw new Error(`env/WECHAT_ALERT_FIELDS: the value of "${key}" must be a string`)
    for (const [, name] of text.matchAll(PLACEHOLDER)) {
      if (!(PLACEHOLDERS as readonly string[]).includes(name)) {
        throw new Error(`env/WECHAT_ALERT_FIELDS: {${name}} in "${key}" is not one of ${PLACEHOLDERS.map((p) => `{${p}}`).join(', ')}`)
      }
    }
  }
  return value as TemplateFields
}

/** China time, as the people these messages reach read it: 2026年12月2日 15:01. */
const TIME = new Intl.DateTimeFormat('zh-CN', { timeZone: 'Asia/Shanghai', year: 'numeric', month: 'numeric', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false })
const DATE = new Intl.DateTimeFormat('zh-CN', { timeZone: 'Asia/Shanghai', year: 'numeric', month: 'numeric', day: 'numeric' })

function formatted (type: string, ms: number): string {
  const parts = Object.fromEntries((type === 'date' ? DATE : TIME).formatToParts(ms).map((p) => [p.type, p.value]))
  const date = `${parts.year}年${parts.month}月${parts.day}日`
  return type === 'date' ? date : `${date} ${parts.hour}:${parts.minute}`
}

/** Cuts by code points (a character WeChat counts), never in the middle of a surrogate pair. */
function fit (type: string, text: string): string {
  const max = MAX_CHARS[type]
  if (type === 'number') text = text.replace(/[^0-9.]/g, '') || '0'
  const chars = [...text]
  return max === undefined || chars.length <= max ? text : chars.slice(0, max).join('')
}

export function messageData (fields: TemplateFields, alert: OpenedAlert): Record<string, { value: string }> {
  const data: Record<string, { value: string }> = {}
  for (const [key, text] of Object.entries(fields)) {
    const type = KEY.exec(key)![1]
    // A time or date key takes the alert's time in WeChat's format, whatever its text says.
    if (type === 'time' || type === 'date') {
      data[key] = { value: formatted(type, alert.openedAt) }
      continue
    }
    const values: Record<Placeholder, string> = {
      owner: alert.userId,
      kind: KIND_TEXT[alert.kind],
      bpm: alert.bpm === null ? '0' : String(alert.bpm),
      time: formatted('time', alert.openedAt)
    }
    data[key] = { value: fit(type, text.replace(PLACEHOLDER, (_, name: Placeholder) => values[name])) }
  }
  return data
}
