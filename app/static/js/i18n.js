// The page's language and its messages. The server renders each page in one language and puts
// the messages these modules use, from the same catalog as the template's, in a JSON block; an
// English page carries none, since every msgid is the English text.
const block = document.getElementById("i18n-messages");
const MESSAGES = (() => {
  try {
    return JSON.parse(block ? block.textContent : "{}") || {};
  } catch {
    return {};
  }
})();

// zh-CN, zh-TW or en: also the locale of every Intl formatter and of the spoken confirmation.
export const LANG = document.documentElement.lang || "en";

// t("Paid {amount} by {payer}.", { amount, payer }): a literal msgid (so the extractor finds it)
// with named placeholders filled after translation.
export function t(msgid, params = {}) {
  const text = Object.prototype.hasOwnProperty.call(MESSAGES, msgid) ? MESSAGES[msgid] : msgid;
  return text.replace(/\{(\w+)\}/g, (whole, name) =>
    Object.prototype.hasOwnProperty.call(params, name) ? String(params[name]) : whole,
  );
}

// The person's pick, remembered on this device in a cookie so the server renders it.
export function wireLanguagePicker() {
  const select = document.getElementById("lang");
  if (!select) return;
  select.addEventListener("change", () => {
    const name = select.dataset.cookie || "paycode_lang";
    const secure = location.protocol === "https:" ? "; secure" : "";
    document.cookie = `${name}=${encodeURIComponent(select.value)}; path=/; max-age=31536000; samesite=lax${secure}`;
    location.reload();
  });
}
