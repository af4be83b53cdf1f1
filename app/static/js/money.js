// Money is integer minor units end to end; this module only turns it into text and back.
// The deployment has one currency with two minor digits (spec §1); the page's locale says how
// it is written (¥12.20 in 简体, the locale's own form in 繁體 and English).
import { LANG, t } from "./i18n.js";

export const CURRENCY = document.body.dataset.currency || "CNY";

const formatters = new Map();
function formatter(currency) {
  if (!formatters.has(currency)) {
    formatters.set(currency, new Intl.NumberFormat(LANG, {
      style: "currency",
      currency,
      minimumFractionDigits: 2,
      maximumFractionDigits: 2,
    }));
  }
  return formatters.get(currency);
}

// The decimal text of a minor-unit amount ("-1234.05"), exact: no float division on the way.
export function decimalOf(minor) {
  const value = Math.trunc(Number(minor) || 0);
  const sign = value < 0 ? "-" : "";
  const abs = Math.abs(value);
  return `${sign}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, "0")}`;
}

// A bare "$" does not say which dollar (繁體 writes TWD so); the English sign does: NT$, HK$.
function signOf(value, currency) {
  if (value !== "$") return value;
  const english = new Intl.NumberFormat("en", { style: "currency", currency })
    .formatToParts(1)
    .find((p) => p.type === "currency");
  return english ? english.value : value;
}

export function formatMoney(minor, currency = CURRENCY) {
  // Intl takes a decimal string exactly, so 10^12 minor units print without rounding.
  return formatter(currency)
    .formatToParts(decimalOf(minor))
    .map((p) => (p.type === "currency" ? signOf(p.value, currency) : p.value))
    .join("");
}

// The currency's sign in this locale (¥, CN¥, NT$, …), for labels such as "Unit price (¥)".
export function currencySymbol(currency = CURRENCY) {
  const part = formatter(currency).formatToParts(1).find((p) => p.type === "currency");
  return part ? signOf(part.value, currency) : currency;
}

// The amount as the spoken confirmation says it: "12.20 元" / "12.20 yuan" for the yuan, else
// the formatted amount, which a voice of the page's language reads in its own way.
export function spokenMoney(minor, currency = CURRENCY) {
  if (currency === "CNY") return t("{number} yuan", { number: decimalOf(minor) });
  return formatMoney(minor, currency);
}

// "12", "12.5", "12.50" or "12,50" -> 1250; anything else -> null. No floats on the way.
export function parseMoney(text) {
  const match = /^\s*(\d{1,10})(?:[.,](\d{1,2}))?\s*$/.exec(String(text ?? ""));
  if (!match) return null;
  const minor = Number(match[1]) * 100 + Number((match[2] || "0").padEnd(2, "0"));
  return minor >= 1 && minor <= 1e12 ? minor : null;
}

export function itemsTotal(items) {
  return items.reduce((sum, item) => sum + item.quantity * item.unit_amount, 0);
}
