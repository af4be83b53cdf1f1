// The payer's phone: /c/{token} (what the QR opens) and /pay (type a short code). The payer
// sees payee, agent, label, items and total before paying (C8), then the receipt.
import { get, newIdempotencyKey, post } from "./api.js";
import { $, dateTimeOf, el, party, setBusy } from "./dom.js";
import { errorText } from "./errors.js";
import { t } from "./i18n.js";
import { formatMoney, parseMoney } from "./money.js";
import { checkReceipt } from "./receipt.js";
import { canonical, display, problemWith } from "./shortcode.js";
import { boot } from "./shell.js";

// Why a code cannot be paid, by its status, in the page's words.
const STATUS_TEXT = {
  paid: () => t("This code has already been paid. Ask the counter for a new one."),
  expired: () => t("This code has expired. Ask the counter for a new one."),
  cancelled: () => t("The counter cancelled this code. Ask for a new one."),
  revoked: () => t("This code no longer takes payments: the shop stopped this counter collecting."),
};

const state = { reference: null, code: null, attemptKey: null, attemptBody: null, timer: null };

function messageOf(err) {
  return errorText(err, { not_found: () => t("No code matches. Check it and try again.") });
}

function showOnly(id) {
  for (const section of ["typing", "details", "receipt"]) $(section).hidden = section !== id;
}

function renderDetails(code, me) {
  state.code = code;
  $("details-title").textContent = party(code.payee);
  $("details-agent").textContent = t("Collected by {agent}", { agent: party(code.agent) });
  $("details-label").textContent = code.label || "";
  $("details-label").hidden = !code.label;
  const items = code.items || [];
  const table = $("details-items");
  table.hidden = items.length === 0;
  table.tBodies[0].replaceChildren(
    ...items.map((item) =>
      el("tr", {},
        el("td", { text: item.name }),
        el("td", { class: "num", text: String(item.quantity) }),
        el("td", { class: "num money", text: formatMoney(item.unit_amount, code.currency) })),
    ),
  );
  $("details-memo").textContent = code.memo || "";
  $("details-memo").hidden = !code.memo;
  const open = code.amount === null || code.amount === undefined;
  $("details-amount-field").hidden = !open;
  $("details-total").textContent = open ? t("you type it") : formatMoney(code.amount, code.currency);
  $("details-total").parentElement.hidden = open;
  const blocked = STATUS_TEXT[code.status] ? STATUS_TEXT[code.status]() : null;
  $("details-status").hidden = !blocked;
  $("details-status").textContent = blocked || "";
  $("pay-confirm").hidden = Boolean(blocked);
  $("details-amount-field").hidden = !open || Boolean(blocked);
  $("details-balance").textContent = me
    ? t("Your balance: {amount}", { amount: formatMoney(me.balance, me.currency) })
    : "";
  updateButton();
  clearInterval(state.timer);
  if (code.expires_at && !blocked) {
    const tick = () => {
      const left = Math.round((new Date(code.expires_at) - Date.now()) / 1000);
      if (left <= 0) {
        clearInterval(state.timer);
        renderDetails({ ...code, status: "expired" }, me);
        return;
      }
      const m = Math.floor(left / 60);
      $("details-expiry").textContent = t("Valid for {time}", { time: `${m}:${String(left % 60).padStart(2, "0")}` });
    };
    tick();
    state.timer = setInterval(tick, 1000);
  } else {
    $("details-expiry").textContent = "";
  }
  showOnly("details");
  $("details-title").focus?.();
}

function amountToPay() {
  const code = state.code;
  if (code.amount !== null && code.amount !== undefined) return code.amount;
  return parseMoney($("details-amount").value);
}

function updateButton() {
  const amount = amountToPay();
  $("pay-confirm").textContent = amount
    ? t("Pay {amount}", { amount: formatMoney(amount, state.code.currency) })
    : t("Pay");
}

async function confirmPay() {
  const error = $("pay-error");
  error.textContent = "";
  const code = state.code;
  const body = { code: state.reference };
  if (code.amount === null || code.amount === undefined) {
    const amount = parseMoney($("details-amount").value);
    if (amount === null) {
      error.textContent = t("Type the amount to pay, such as 12.50.");
      $("details-amount").focus();
      return;
    }
    body.amount = amount;
  }
  // The same attempt (same body) keeps its key, so a double tap or a retry pays once.
  const bodyText = JSON.stringify(body);
  if (state.attemptBody !== bodyText) {
    state.attemptKey = newIdempotencyKey();
    state.attemptBody = bodyText;
  }
  const button = $("pay-confirm");
  if (button.disabled) return;
  setBusy(button, true);
  try {
    const payment = await post("/payments", body, { idempotencyKey: state.attemptKey });
    showReceipt(payment);
  } catch (err) {
    error.textContent = messageOf(err);
    if (err.status !== 0) state.attemptBody = null; // a refused attempt is over; next is new
  } finally {
    setBusy(button, false);
  }
}

function showReceipt(payment) {
  clearInterval(state.timer);
  $("receipt-amount").textContent = formatMoney(payment.amount, payment.currency);
  $("receipt-payee").textContent = party(payment.payee);
  $("receipt-agent").textContent = payment.agent ? party(payment.agent) : "—";
  $("receipt-time").textContent = dateTimeOf(payment.created_at);
  $("receipt-id").textContent = payment.id;
  $("receipt-items").replaceChildren(
    ...(payment.items || []).map((item) =>
      el("li", {},
        el("span", { text: `${item.quantity} × ${item.name}` }),
        el("span", { class: "money", text: formatMoney(item.quantity * item.unit_amount, payment.currency) })),
    ),
  );
  showOnly("receipt");
  $("receipt-title").focus?.();
  checkReceipt(payment, $("receipt-check"));
}

async function lookUp(reference, me) {
  state.reference = reference;
  const code = await get(`/scan/${encodeURIComponent(reference)}`);
  renderDetails(code, me);
}

function wireTyping(me) {
  const input = $("short-code");
  input.addEventListener("input", () => {
    // Show the code the way the counter shows it while the payer types.
    const clean = canonical(input.value).slice(0, 10);
    const shown = display(clean);
    if (input.value !== shown && /^[\s\w-]*$/.test(input.value)) input.value = shown;
    $("typing-error").textContent = "";
  });
  $("typing-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const problem = problemWith(input.value);
    if (problem) {
      $("typing-error").textContent = problem;
      input.focus();
      return;
    }
    const button = event.submitter || $("typing-form").querySelector("button");
    setBusy(button, true);
    try {
      await lookUp(canonical(input.value), me);
    } catch (err) {
      $("typing-error").textContent = messageOf(err);
    } finally {
      setBusy(button, false);
    }
  });
}

boot(async (me) => {
  $("pay-confirm").addEventListener("click", confirmPay);
  $("details-amount").addEventListener("input", updateButton);
  $("details-amount").addEventListener("keydown", (event) => {
    if (event.key === "Enter") confirmPay();
  });
  if (document.body.dataset.page === "code") {
    const token = decodeURIComponent(location.pathname.replace(/^\/c\//, ""));
    try {
      await lookUp(token, me);
    } catch (err) {
      showOnly("typing");
      wireTyping(me);
      $("typing-error").textContent =
        err.status === 404 ? t("This QR code is not known. Type the short code instead.") : messageOf(err);
    }
  } else {
    wireTyping(me);
    showOnly("typing");
    $("short-code").focus();
  }
}, { watch: true });
