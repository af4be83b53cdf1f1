// The dashboard's webhooks section (spec §11): the account's endpoints, each secret shown once
// with a copy button, recent deliveries with their status, retry, enable/disable, rotate, delete.
import { del, get, post, request } from "./api.js";
import { $, dateTimeOf, el, setBusy, toast } from "./dom.js";
import { errorText } from "./errors.js";
import { t } from "./i18n.js";

const EVENT_LABEL = {
  "payment.succeeded": () => t("Payment received"),
  "payment.refunded": () => t("Payment refunded"),
  "code.paid": () => t("Code paid"),
  "agency.requested": () => t("Agent asked to collect"),
  "agency.activated": () => t("Agent may collect"),
  "agency.revoked": () => t("Agent revoked"),
  "deposit.succeeded": () => t("Deposit received"),
  "webhook.disabled": () => t("Endpoint switched off after failing"),
  "webhook.test": () => t("Test event"),
};

const DELIVERY_STATUS = {
  pending: () => t("pending"),
  succeeded: () => t("succeeded"),
  failed: () => t("failed"),
};

// How long after a live event the open delivery lists keep looking for its deliveries.
const WATCH_MS = 30_000;
const POLL_MS = 2_000;

const state = { endpoints: new Map(), open: new Set(), watchUntil: 0, timer: null };

function eventLabel(type) {
  return EVENT_LABEL[type] ? EVENT_LABEL[type]() : type;
}

// The API's own checks decide; a value that is not a URL at all is caught before asking.
function urlProblem(value) {
  if (!value) return t("Type the address that should receive the events.");
  try {
    new URL(value);
  } catch {
    return t("That is not a web address.");
  }
  return null;
}

// ---- the secret, shown once -------------------------------------------------------------

function showSecret(endpoint, rotated) {
  $("secret-what").textContent = rotated
    ? t("The new secret of {url}. The previous one keeps signing alongside it for 24 hours.", { url: endpoint.url })
    : t("The secret of {url}. Verify each delivery's signature with it.", { url: endpoint.url });
  $("secret-value").value = endpoint.secret;
  $("secret-copied").textContent = "";
  $("secret-dialog").showModal();
  $("secret-value").select();
}

async function copySecret() {
  const input = $("secret-value");
  try {
    await navigator.clipboard.writeText(input.value);
    $("secret-copied").textContent = t("Copied.");
  } catch {
    // No clipboard (an insecure origin, or refused): the selected text is ready for the keys.
    input.focus();
    input.select();
    $("secret-copied").textContent = t("Copying was refused here: the secret is selected, copy it with the keyboard.");
  }
}

function closeSecret() {
  // Gone from the page once closed: it cannot be shown again.
  $("secret-value").value = "";
  $("secret-copied").textContent = "";
  $("secret-dialog").close();
}

// ---- deliveries -------------------------------------------------------------------------

function deliveryRow(endpoint, delivery) {
  const status = DELIVERY_STATUS[delivery.status] ? DELIVERY_STATUS[delivery.status]() : delivery.status;
  const when = delivery.delivered_at || delivery.created_at;
  return el("tr", { dataset: { deliveryId: delivery.id, status: delivery.status } },
    el("td", { "data-label": t("Time") }, el("time", { datetime: when, text: dateTimeOf(when) })),
    el("td", { "data-label": t("Event"), text: eventLabel(delivery.type) }),
    el("td", { "data-label": t("Status") },
      el("span", { class: `badge badge-${delivery.status}`, text: status })),
    el("td", { class: "num", "data-label": t("Attempts"), text: String(delivery.attempts) }),
    el("td", { class: "num", "data-label": t("Answer"), text: delivery.last_status_code ? String(delivery.last_status_code) : "—" }),
    el("td", { class: "actions" },
      el("button", {
        type: "button",
        class: "btn btn-small",
        text: t("Retry"),
        "aria-label": t("Retry the delivery of {event}", { event: eventLabel(delivery.type) }),
        onclick: (event) => retryDelivery(endpoint, delivery, event.currentTarget),
      })),
  );
}

async function loadDeliveries(endpoint) {
  const panel = $(`deliveries-${endpoint.id}`);
  if (!panel) return [];
  try {
    const page = await get(`/webhooks/${encodeURIComponent(endpoint.id)}/deliveries?limit=20`);
    const body = panel.querySelector("tbody");
    body.replaceChildren(...page.data.map((delivery) => deliveryRow(endpoint, delivery)));
    panel.querySelector("table").hidden = page.data.length === 0;
    panel.querySelector(".deliveries-empty").hidden = page.data.length > 0;
    panel.querySelector(".form-error").textContent = "";
    return page.data;
  } catch (err) {
    panel.querySelector(".form-error").textContent = errorText(err);
    return [];
  }
}

async function retryDelivery(endpoint, delivery, button) {
  setBusy(button, true);
  try {
    await post(`/webhooks/${encodeURIComponent(endpoint.id)}/deliveries/${encodeURIComponent(delivery.id)}/retry`, {});
    toast(t("Sending it again now."));
    watch();
    await loadDeliveries(endpoint);
  } catch (err) {
    toast(errorText(err));
  } finally {
    setBusy(button, false);
  }
}

function deliveriesPanel(endpoint) {
  return el("div", { class: "deliveries", id: `deliveries-${endpoint.id}` },
    el("div", { class: "table-wrap" },
      el("table", { class: "deliveries-table", hidden: true },
        el("caption", { class: "sr-only", text: t("Recent deliveries to {url}", { url: endpoint.url }) }),
        el("thead", {}, el("tr", {},
          el("th", { scope: "col", text: t("Time") }),
          el("th", { scope: "col", text: t("Event") }),
          el("th", { scope: "col", text: t("Status") }),
          el("th", { scope: "col", class: "num", text: t("Attempts") }),
          el("th", { scope: "col", class: "num", text: t("Answer") }),
          el("th", { scope: "col" }, el("span", { class: "sr-only", text: t("Actions") })))),
        el("tbody"))),
    el("p", { class: "muted small deliveries-empty", hidden: true, text: t("Nothing sent yet.") }),
    el("p", { class: "form-error", role: "alert" }),
  );
}

// While a live event may still have deliveries to come, or one shown is pending, the open
// lists are read again every few seconds; otherwise they stay as they are.
function watch() {
  state.watchUntil = Date.now() + WATCH_MS;
  if (!state.timer) state.timer = setTimeout(poll, POLL_MS);
}

async function poll() {
  state.timer = null;
  let pending = false;
  for (const id of state.open) {
    const endpoint = state.endpoints.get(id);
    if (!endpoint) continue;
    const shown = await loadDeliveries(endpoint);
    pending ||= shown.some((delivery) => delivery.status === "pending");
  }
  if (state.open.size && (pending || Date.now() < state.watchUntil)) {
    state.timer = setTimeout(poll, POLL_MS);
  }
}

async function toggleDeliveries(endpoint, button) {
  const item = button.closest("li");
  const open = !state.open.has(endpoint.id);
  button.setAttribute("aria-expanded", open ? "true" : "false");
  if (!open) {
    state.open.delete(endpoint.id);
    $(`deliveries-${endpoint.id}`)?.remove();
    return;
  }
  state.open.add(endpoint.id);
  item.append(deliveriesPanel(endpoint));
  // A list just opened may be missing the delivery of a payment of a moment ago: it looks
  // again for a while.
  watch();
  await loadDeliveries(endpoint);
}

// ---- endpoints --------------------------------------------------------------------------

async function setEnabled(endpoint, enabled) {
  try {
    await request("PATCH", `/webhooks/${encodeURIComponent(endpoint.id)}`, { body: { enabled } });
    toast(enabled
      ? t("Sending to {url} again.", { url: endpoint.url })
      : t("Nothing more is sent to {url} until you enable it.", { url: endpoint.url }));
  } catch (err) {
    toast(errorText(err));
  }
  await loadWebhooks();
}

async function rotate(endpoint) {
  const question = t("Make a new secret for {url}? The current one keeps working for 24 hours.", { url: endpoint.url });
  if (!window.confirm(question)) return;
  try {
    showSecret(await post(`/webhooks/${encodeURIComponent(endpoint.id)}/rotate-secret`, {}), true);
  } catch (err) {
    toast(errorText(err));
  }
}

async function sendTest(endpoint) {
  try {
    await post(`/webhooks/${encodeURIComponent(endpoint.id)}/test`, {});
    toast(t("A test event is on its way to {url}.", { url: endpoint.url }));
    watch();
    if (state.open.has(endpoint.id)) await loadDeliveries(endpoint);
  } catch (err) {
    toast(errorText(err));
  }
}

async function remove(endpoint) {
  const question = t("Delete the endpoint {url} and its deliveries? This is final.", { url: endpoint.url });
  if (!window.confirm(question)) return;
  try {
    await del(`/webhooks/${encodeURIComponent(endpoint.id)}`);
    toast(t("Deleted."));
  } catch (err) {
    toast(errorText(err));
  }
  await loadWebhooks();
}

function endpointItem(endpoint) {
  const small = (text, label, onclick, extra = {}) => el("button", {
    type: "button", class: "btn btn-small", text, "aria-label": label, onclick, ...extra,
  });
  const events = endpoint.events.map(eventLabel).join(t(", "));
  const open = state.open.has(endpoint.id);
  const item = el("li", {
    class: `webhook webhook-${endpoint.enabled ? "enabled" : "disabled"}`,
    dataset: { webhookId: endpoint.id },
  },
    el("div", { class: "webhook-head" },
      el("span", { class: "webhook-url mono", text: endpoint.url }),
      el("span", {
        class: `badge badge-${endpoint.enabled ? "active" : "revoked"}`,
        text: endpoint.enabled ? t("enabled") : t("disabled"),
      })),
    endpoint.description ? el("div", { class: "small", text: endpoint.description }) : null,
    el("div", { class: "muted small", text: t("Sends: {events}", { events }) }),
    el("div", { class: "row" },
      small(t("Deliveries"), t("Recent deliveries to {url}", { url: endpoint.url }),
        (event) => toggleDeliveries(endpoint, event.currentTarget),
        { "aria-expanded": open ? "true" : "false", "aria-controls": `deliveries-${endpoint.id}` }),
      endpoint.enabled
        ? small(t("Send test"), t("Send a test event to {url}", { url: endpoint.url }), () => sendTest(endpoint))
        : null,
      endpoint.enabled
        ? small(t("Disable"), t("Disable {url}", { url: endpoint.url }), () => setEnabled(endpoint, false))
        : small(t("Enable"), t("Enable {url}", { url: endpoint.url }), () => setEnabled(endpoint, true)),
      small(t("Rotate secret"), t("Make a new secret for {url}", { url: endpoint.url }), () => rotate(endpoint)),
      small(t("Delete"), t("Delete {url}", { url: endpoint.url }), () => remove(endpoint))),
  );
  if (open) item.append(deliveriesPanel(endpoint));
  return item;
}

export async function loadWebhooks() {
  try {
    const page = await get("/webhooks?limit=100");
    state.endpoints = new Map(page.data.map((endpoint) => [endpoint.id, endpoint]));
    for (const id of [...state.open]) if (!state.endpoints.has(id)) state.open.delete(id);
    $("webhooks").replaceChildren(...page.data.map(endpointItem));
    $("webhooks-empty").hidden = page.data.length > 0;
    await Promise.all([...state.open].map((id) => loadDeliveries(state.endpoints.get(id))));
  } catch (err) {
    toast(t("Webhooks did not load: {reason}", { reason: errorText(err) }));
  }
}

async function addEndpoint(event) {
  event.preventDefault();
  const error = $("webhook-error");
  error.textContent = "";
  const url = $("webhook-url").value.trim();
  const problem = urlProblem(url);
  if (problem) {
    error.textContent = problem;
    return;
  }
  const events = [...$("webhook-events").querySelectorAll("input:checked")].map((box) => box.value);
  if (!events.length) {
    error.textContent = t("Pick at least one event to send.");
    return;
  }
  const body = { url, events };
  const description = $("webhook-description").value.trim();
  if (description) body.description = description;
  const button = event.submitter || $("webhook-form").querySelector("button[type=submit]");
  setBusy(button, true);
  try {
    const made = await post("/webhooks", body);
    $("webhook-form").reset();
    await loadWebhooks();
    showSecret(made, false);
  } catch (err) {
    error.textContent = errorText(err);
  } finally {
    setBusy(button, false);
  }
}

function eventChoices() {
  const fieldset = $("webhook-events");
  const types = (fieldset.dataset.events || "").split(" ").filter(Boolean);
  fieldset.append(...types.map((type, index) => el("div", { class: "check" },
    el("input", { type: "checkbox", id: `webhook-event-${index}`, value: type, checked: true }),
    el("label", { for: `webhook-event-${index}`, text: eventLabel(type) }))));
}

// A live event of the account may owe deliveries: the open lists look for them for a while.
export function onAccountEvent() {
  if (state.open.size) watch();
}

export async function initWebhooks() {
  eventChoices();
  $("webhook-form").addEventListener("submit", addEndpoint);
  $("secret-copy").addEventListener("click", copySecret);
  $("secret-done").addEventListener("click", closeSecret);
  $("secret-dialog").addEventListener("cancel", (event) => {
    event.preventDefault();
    closeSecret();
  });
  await loadWebhooks();
}
