// The counter tablet of an agent: build a sale, show its dynamic code big, turn PAID the
// moment the payment commits, and keep a live feed of this agent's confirmations.
import { get, imageUrl, newIdempotencyKey, post } from "./api.js";
import { $, el, party, partyName, setBusy, timeOf, toast } from "./dom.js";
import { errorText } from "./errors.js";
import { LANG, t } from "./i18n.js";
import { connectLive, showStatus } from "./live.js";
import { currencySymbol, formatMoney, itemsTotal, parseMoney, spokenMoney } from "./money.js";
import { display } from "./shortcode.js";
import { boot } from "./shell.js";

const AGENCY_KEY = "paycode.counter.agency";
const SPEAK_KEY = "paycode.counter.speak";

const state = {
  me: null,
  agencies: [],
  code: null, // the dynamic code on screen
  paidPaymentId: null,
  countdown: null,
  issueKey: null,
  feed: new Map(), // payment id -> <li>, so a payment is listed once
  spoken: new Set(), // payment ids already said aloud: each is said once
  objectUrls: [],
};

function show(view) {
  for (const id of ["sale-setup", "sale-code", "sale-paid", "sale-expired"]) {
    $(id).hidden = id !== view;
  }
}

function agencyLabel(agency) {
  const label = agency.label ? ` — ${agency.label}` : "";
  return `${partyName(agency.payee)} (@${agency.payee.handle})${label}`;
}

function selectedAgency() {
  return state.agencies.find((a) => a.id === $("agency").value) || null;
}

async function loadAgencies() {
  const body = await get("/agencies?role=agent&status=active&limit=200");
  state.agencies = body.data;
  const select = $("agency");
  select.replaceChildren(...state.agencies.map((a) => el("option", { value: a.id, text: agencyLabel(a) })));
  const remembered = localStorage.getItem(AGENCY_KEY);
  if (state.agencies.some((a) => a.id === remembered)) select.value = remembered;
  const none = state.agencies.length === 0;
  $("no-agency").hidden = !none;
  $("sale-form").hidden = none;
  // Both stay disabled from the page's load until there is an agency to act for.
  select.disabled = none;
  $("static-open").disabled = none;
  $("issue").disabled = none;
}

// ---- sale form ----------------------------------------------------------------------------

function itemRow(name = "", quantity = "1", price = "") {
  const index = document.querySelectorAll(".item-row").length + 1;
  const row = el("div", { class: "item-row" });
  const ids = [`item-name-${index}`, `item-qty-${index}`, `item-price-${index}`];
  row.append(
    el("div", { class: "field" },
      el("label", { for: ids[0], text: t("Item {number}", { number: index }) }),
      el("input", { id: ids[0], class: "item-name", value: name, maxlength: "200", autocomplete: "off" })),
    el("div", { class: "field field-qty" },
      el("label", { for: ids[1], text: t("Qty") }),
      el("input", { id: ids[1], class: "item-qty", value: quantity, inputmode: "numeric", autocomplete: "off" })),
    el("div", { class: "field field-price" },
      el("label", { for: ids[2], text: t("Unit price ({currency})", { currency: currencySymbol() }) }),
      el("input", { id: ids[2], class: "item-price", value: price, inputmode: "decimal", autocomplete: "off", placeholder: "0.00" })),
    el("button", {
      type: "button",
      class: "btn btn-quiet item-remove",
      "aria-label": t("Remove item {number}", { number: index }),
      text: "✕",
      onclick: () => {
        row.remove();
        renumberItems();
        updateTotal();
      },
    }),
  );
  return row;
}

function renumberItems() {
  document.querySelectorAll(".item-row").forEach((row, i) => {
    row.querySelector("label").textContent = t("Item {number}", { number: i + 1 });
    row.querySelector(".item-remove").setAttribute("aria-label", t("Remove item {number}", { number: i + 1 }));
  });
}

// The items typed so far, or an error sentence naming the first bad field.
function readItems() {
  const items = [];
  for (const [i, row] of [...document.querySelectorAll(".item-row")].entries()) {
    const name = row.querySelector(".item-name").value.trim();
    const qtyText = row.querySelector(".item-qty").value.trim();
    const priceText = row.querySelector(".item-price").value.trim();
    if (!name && !priceText) continue;
    if (!name) return { error: t("Item {number} needs a name.", { number: i + 1 }) };
    const quantity = /^\d{1,7}$/.test(qtyText) ? Number(qtyText) : NaN;
    if (!(quantity >= 1 && quantity <= 1e6)) return { error: t("Item {number}: quantity 1 to 1,000,000.", { number: i + 1 }) };
    const unit = priceText === "0" ? 0 : parseMoney(priceText);
    if (unit === null) return { error: t("Item {number}: type a price such as 4.50.", { number: i + 1 }) };
    items.push({ name, quantity, unit_amount: unit });
  }
  return { items };
}

function updateTotal() {
  const { items } = readItems();
  const hasItems = items && items.length > 0;
  $("amount-field").hidden = hasItems;
  const total = hasItems ? itemsTotal(items) : parseMoney($("amount").value) || 0;
  $("sale-total").textContent = formatMoney(total);
  state.issueKey = null; // a changed sale is a new attempt
}

async function issue(event) {
  event.preventDefault();
  const error = $("sale-error");
  error.textContent = "";
  const agency = selectedAgency();
  if (!agency) {
    error.textContent = t("Pick who you collect for.");
    return;
  }
  const { items, error: itemError } = readItems();
  if (itemError) {
    error.textContent = itemError;
    return;
  }
  const body = { agency_id: agency.id, kind: "dynamic" };
  if (items.length) {
    if (itemsTotal(items) < 1) {
      error.textContent = t("The total must be more than zero.");
      return;
    }
    body.items = items;
  } else {
    const amount = parseMoney($("amount").value);
    if (amount === null) {
      error.textContent = t("Type an amount such as 12.50, or add items.");
      $("amount").focus();
      return;
    }
    body.amount = amount;
  }
  if (agency.label) body.label = agency.label;
  state.issueKey = state.issueKey || newIdempotencyKey();
  const button = $("issue");
  setBusy(button, true);
  try {
    const code = await post("/codes", body, { idempotencyKey: state.issueKey });
    state.issueKey = null;
    await showCode(code);
  } catch (err) {
    error.textContent = errorText(err);
  } finally {
    setBusy(button, false);
  }
}

// ---- the code on screen ----------------------------------------------------------------

function itemLines(items) {
  return (items || []).map((item) =>
    el("li", {},
      el("span", { class: "item-name", text: `${item.quantity} × ${item.name}` }),
      el("span", { class: "money", text: formatMoney(item.quantity * item.unit_amount) })),
  );
}

function dropObjectUrls() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

async function showCode(code) {
  state.code = code;
  state.paidPaymentId = null;
  $("code-payee").textContent = `${partyName(code.payee)}${code.label ? ` · ${code.label}` : ""}`;
  $("code-amount").textContent = formatMoney(code.amount, code.currency);
  $("code-short").textContent = display(code.short_code);
  $("code-items").replaceChildren(...itemLines(code.items));
  $("code-error").textContent = "";
  $("code-qr").removeAttribute("src");
  show("sale-code");
  tick();
  clearInterval(state.countdown);
  state.countdown = setInterval(tick, 1000);
  try {
    dropObjectUrls();
    const url = await imageUrl(`/codes/${encodeURIComponent(code.id)}/qr.svg`);
    state.objectUrls.push(url);
    if (state.code === code) $("code-qr").src = url;
  } catch (err) {
    $("code-error").textContent = t("The QR image did not load; the short code works.");
  }
}

function tick() {
  const code = state.code;
  if (!code || !code.expires_at) {
    $("code-countdown").textContent = "—";
    return;
  }
  const left = Math.max(0, Math.round((new Date(code.expires_at) - Date.now()) / 1000));
  const minutes = Math.floor(left / 60);
  $("code-countdown").textContent = `${minutes}:${String(left % 60).padStart(2, "0")}`;
  if (left === 0 && !state.paidPaymentId) {
    clearInterval(state.countdown);
    $("expired-why").textContent = t("This code expired before it was paid. Issue a new one.");
    show("sale-expired");
  }
}

async function cancelCode() {
  const code = state.code;
  if (!code) return;
  const button = $("code-cancel");
  setBusy(button, true);
  try {
    await post(`/codes/${encodeURIComponent(code.id)}/cancel`, {});
    newSale();
    toast(t("Code cancelled."));
  } catch (err) {
    $("code-error").textContent = errorText(err);
  } finally {
    setBusy(button, false);
  }
}

function newSale() {
  clearInterval(state.countdown);
  state.code = null;
  state.paidPaymentId = null;
  dropObjectUrls();
  $("item-rows").replaceChildren(itemRow());
  $("amount").value = "";
  updateTotal();
  show("sale-setup");
  $("amount").focus();
}

// The till speaker: a short sentence in the page's language and voice, once per payment, and
// never for a payment replayed after a reconnect (it was news while the tablet was away).
function announce(payment) {
  if (state.spoken.has(payment.id)) return;
  state.spoken.add(payment.id);
  if (!$("speak").checked || !("speechSynthesis" in window)) return;
  try {
    const utterance = new SpeechSynthesisUtterance(
      t("Received {amount}", { amount: spokenMoney(payment.amount, payment.currency) }),
    );
    utterance.lang = LANG;
    const voice = window.speechSynthesis.getVoices().find((v) => v.lang.replace("_", "-") === LANG);
    if (voice) utterance.voice = voice;
    window.speechSynthesis.speak(utterance);
  } catch {
    // A tablet without a voice still shows PAID; speech is a courtesy.
  }
}

function showPaid(payment) {
  if (!state.code || payment.code_id !== state.code.id || state.paidPaymentId === payment.id) return;
  state.paidPaymentId = payment.id;
  clearInterval(state.countdown);
  $("paid-amount").textContent = formatMoney(payment.amount, payment.currency);
  $("paid-payer").textContent = party(payment.payer);
  $("paid-items").replaceChildren(...itemLines(payment.items));
  show("sale-paid");
  $("paid-new").focus();
}

// ---- static code ------------------------------------------------------------------------

async function openStatic() {
  const agency = selectedAgency();
  if (!agency) return;
  const dialog = $("static-dialog");
  $("static-for").textContent = agencyLabel(agency);
  $("static-short").textContent = "…";
  $("static-error").textContent = "";
  $("static-qr").removeAttribute("src");
  dialog.showModal();
  try {
    const codes = await get("/codes?role=agent&status=active&limit=200");
    let code = codes.data.find(
      (c) => c.kind === "static" && c.agency_id === agency.id && c.amount === null,
    );
    if (!code) {
      const body = { agency_id: agency.id, kind: "static" };
      if (agency.label) body.label = agency.label;
      code = await post("/codes", body, { idempotencyKey: newIdempotencyKey() });
    }
    $("static-short").textContent = display(code.short_code);
    const url = await imageUrl(`/codes/${encodeURIComponent(code.id)}/qr.svg`);
    state.objectUrls.push(url);
    $("static-qr").src = url;
  } catch (err) {
    $("static-error").textContent = errorText(err);
  }
}

// ---- feed -------------------------------------------------------------------------------

function feedEntry(payment) {
  const items = payment.items || [];
  const what = items.length
    ? items.map((i) => `${i.quantity} × ${i.name}`).join(", ")
    : payment.code_kind === "static" ? t("static code") : "";
  return el("li", { class: "feed-item", dataset: { paymentId: payment.id } },
    el("div", { class: "feed-top" },
      el("strong", { class: "money", text: formatMoney(payment.amount, payment.currency) }),
      el("time", { datetime: payment.created_at, text: timeOf(payment.created_at) })),
    el("div", { class: "feed-who", text: `${partyName(payment.payer)} → ${partyName(payment.payee)}` }),
    what ? el("div", { class: "feed-what muted small", text: what }) : null,
    payment.refunded_amount
      ? el("div", { class: "badge badge-warn", text: t("refunded {amount}", { amount: formatMoney(payment.refunded_amount, payment.currency) }) })
      : null,
  );
}

function addToFeed(payment, { live }) {
  const existing = state.feed.get(payment.id);
  const node = feedEntry(payment);
  if (existing) {
    existing.replaceWith(node);
  } else if (live) {
    $("feed").prepend(node);
    if (live) node.classList.add("fresh");
  } else {
    $("feed").append(node);
  }
  state.feed.set(payment.id, node);
  $("feed-empty").hidden = state.feed.size > 0;
}

async function loadFeed() {
  try {
    const body = await get("/payments?role=agent&limit=30");
    for (const payment of body.data) {
      if (!state.feed.has(payment.id)) addToFeed(payment, { live: false });
    }
  } catch (err) {
    toast(t("Payments did not load: {reason}", { reason: errorText(err) }));
  }
}

async function onEvent(event, seq, { replayed = false } = {}) {
  const data = event.data || {};
  const isPayment = (event.type === "payment.succeeded" || event.type === "payment.refunded")
    && data.agent && data.agent.handle === state.me.handle;
  if (isPayment) {
    addToFeed(data, { live: event.type === "payment.succeeded" && !replayed });
    if (event.type === "payment.succeeded") {
      if (replayed) state.spoken.add(data.id);
      else announce(data);
      showPaid(data);
    }
  } else if (event.type === "code.paid" && state.code && data.id === state.code.id) {
    if (data.paid_payment_id && !state.paidPaymentId) {
      try {
        const payment = await get(`/payments/${encodeURIComponent(data.paid_payment_id)}`);
        if (replayed) state.spoken.add(payment.id);
        else announce(payment);
        showPaid(payment);
      } catch {
        // payment.succeeded carries the same news.
      }
    }
  } else if (event.type.startsWith("agency.")) {
    await loadAgencies();
  }
}

// ---- start ------------------------------------------------------------------------------

boot(async (me) => {
  state.me = me;
  $("speak").checked = localStorage.getItem(SPEAK_KEY) === "1";
  $("speak").addEventListener("change", () => {
    localStorage.setItem(SPEAK_KEY, $("speak").checked ? "1" : "0");
  });
  $("agency").addEventListener("change", () => localStorage.setItem(AGENCY_KEY, $("agency").value));
  $("add-item").addEventListener("click", () => {
    const row = itemRow();
    $("item-rows").append(row);
    row.querySelector("input").focus();
    updateTotal();
  });
  $("item-rows").addEventListener("input", updateTotal);
  $("amount").addEventListener("input", updateTotal);
  $("sale-form").addEventListener("submit", issue);
  $("code-cancel").addEventListener("click", cancelCode);
  $("paid-new").addEventListener("click", newSale);
  $("expired-new").addEventListener("click", newSale);
  $("static-open").addEventListener("click", openStatic);
  $("static-close").addEventListener("click", () => $("static-dialog").close());
  $("ask-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const payee = $("ask-payee").value.trim().toLowerCase();
    if (!payee) return;
    try {
      await post("/agencies", { payee });
      toast(t("Asked @{handle}. You can collect once they accept.", { handle: payee }));
      $("ask-payee").value = "";
    } catch (err) {
      toast(errorText(err, { not_found: () => t("No account @{handle}.", { handle: payee }) }));
    }
  });
  $("item-rows").replaceChildren(itemRow());
  updateTotal();
  show("sale-setup");

  const live = connectLive({ onEvent, onStatus: showStatus($("live-status")) });
  await loadAgencies();
  await live.ready;
  await loadFeed();
});
