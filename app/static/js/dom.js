// Small DOM helpers: text goes in as text, never as HTML.
import { LANG } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function party(p) {
  if (!p) return "—";
  return p.display_name ? `${p.display_name} (@${p.handle})` : `@${p.handle}`;
}

export function partyName(p) {
  return p ? p.display_name || `@${p.handle}` : "—";
}

export function timeOf(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime())
    ? ""
    : date.toLocaleTimeString(LANG, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function dateTimeOf(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString(LANG, { dateStyle: "medium", timeStyle: "medium" });
}

let toastTimer = null;
export function toast(message) {
  const node = $("toast");
  node.textContent = message;
  node.dataset.show = "1";
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    node.dataset.show = "";
  }, 4000);
}

export function setBusy(button, busy) {
  button.disabled = busy;
  button.setAttribute("aria-busy", busy ? "true" : "false");
}
