// Money is integer minor units end to end; this module only turns it into text and back.
export const CURRENCY = document.body.dataset.currency || "CNY";

export function formatMoney(minor, currency = CURRENCY) {
  const value = Math.trunc(Number(minor) || 0);
  const sign = value < 0 ? "-" : "";
  const abs = Math.abs(value);
  const units = Math.floor(abs / 100).toLocaleString("en-US");
  const cents = String(abs % 100).padStart(2, "0");
  return `${sign}${units}.${cents} ${currency}`;
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
