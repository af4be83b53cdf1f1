// Typing rules of short codes (spec §6): case-insensitive, '-' and spaces ignored, O reads as 0
// and I, L as 1; the last character is a Luhn mod 32 check, so a slip is caught before asking.
import { t } from "./i18n.js";

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CONFUSABLE = { O: "0", I: "1", L: "1" };

export function canonical(typed) {
  return String(typed || "")
    .toUpperCase()
    .replace(/[\s-]/g, "")
    .replace(/[OIL]/g, (c) => CONFUSABLE[c]);
}

export function checkCharacter(data) {
  let total = 0;
  let factor = 2;
  for (let i = data.length - 1; i >= 0; i -= 1) {
    const addend = factor * ALPHABET.indexOf(data[i]);
    total += Math.floor(addend / 32) + (addend % 32);
    factor = factor === 2 ? 1 : 2;
  }
  return ALPHABET[(32 - (total % 32)) % 32];
}

// null when valid, else a sentence telling the payer what to fix.
export function problemWith(typed) {
  const code = canonical(typed);
  if (code.length === 0) return t("Type the code shown at the counter.");
  if ([...code].some((c) => !ALPHABET.includes(c))) {
    return t("A short code has only letters and digits (no U).");
  }
  if (code.length !== 10) return t("A short code has 10 characters; this has {count}.", { count: code.length });
  if (checkCharacter(code.slice(0, 9)) !== code[9]) {
    return t("This code has a typing mistake. Check each character.");
  }
  return null;
}

export function display(code) {
  const c = canonical(code);
  return [c.slice(0, 4), c.slice(4, 8), c.slice(8)].filter(Boolean).join("-");
}
