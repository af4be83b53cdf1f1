// The payee's dashboard: balance, live payments with the agent and code of each (C5), agents,
// a per-agent report, CSV export, refunds and the webhooks section (webhooks.js).
import { get, newIdempotencyKey, post, query, request } from "./api.js";
import { $, el, party, partyName, setBusy, timeOf, toast } from "./dom.js";
import { errorText } from "./errors.js";
import { LANG, t } from "./i18n.js";
import { connectLive, showStatus } from "./live.js";
import { formatMoney, parseMoney } from "./money.js";
import { boot } from "./shell.js";
import { initWebhooks, loadWebhooks, onAccountEvent } from "./webhooks.js";

const state = { me: null, rows: new Map(), refunding: null, refundKey: null, refundBody: null };

const STATUS_LABEL = {
  succeeded: () => t("paid"),
  partially_refunded: () => t("part refunded"),
  refunded: () => t("refunded"),
};

const AGENCY_STATUS = {
  pending: () => t("pending"),
  active: () => t("active"),
  revoked: () => t("revoked"),
};

const CODE_KIND = {
  static: () => t("static"),
  dynamic: () => t("dynamic"),
};

function statusLabel(status) {
  return STATUS_LABEL[status] ? STATUS_LABEL[status]() : status;
}

async function refreshBalance() {
  try {
    const me = await get("/me");
    state.me = me;
    $("balance").textContent = formatMoney(me.balance, me.currency);
  } catch (err) {
    toast(t("Balance did not load: {reason}", { reason: errorText(err) }));
  }
}

// ---- payments ---------------------------------------------------------------------------

function codeText(payment) {
  if (!payment.code_id) return t("direct");
  const kind = CODE_KIND[payment.code_kind] ? `${CODE_KIND[payment.code_kind]()} ` : "";
  return `${payment.code_label || t("code")} · ${kind}${payment.code_id.slice(-6)}`;
}

function paymentRow(payment) {
  const refundable = payment.amount - (payment.refunded_amount || 0);
  return el("tr", { dataset: { paymentId: payment.id } },
    el("td", { "data-label": t("Time") },
      el("time", { datetime: payment.created_at, text: timeOf(payment.created_at) })),
    el("td", { class: "num money", "data-label": t("Amount"), text: formatMoney(payment.amount, payment.currency) }),
    el("td", { "data-label": t("Payer"), text: partyName(payment.payer) }),
    el("td", { "data-label": t("Agent"), class: "agent", text: payment.agent ? partyName(payment.agent) : "—" }),
    el("td", { "data-label": t("Code"), class: "code", title: payment.code_id || "", text: codeText(payment) }),
    el("td", { "data-label": t("Status") },
      el("span", {
        class: `badge badge-${payment.status}`,
        text: payment.refunded_amount
          ? `${statusLabel(payment.status)} ${formatMoney(payment.refunded_amount, payment.currency)}`
          : statusLabel(payment.status),
      })),
    el("td", { class: "actions" },
      refundable > 0
        ? el("button", {
            type: "button",
            class: "btn btn-small",
            "aria-label": t("Refund {amount} from {payer}", {
              amount: formatMoney(payment.amount, payment.currency),
              payer: partyName(payment.payer),
            }),
            text: t("Refund"),
            onclick: () => openRefund(payment),
          })
        : null),
  );
}

function putPayment(payment, { live }) {
  if (!payment.payee || payment.payee.handle !== state.me.handle) return;
  const row = paymentRow(payment);
  const existing = state.rows.get(payment.id);
  const body = $("payments").tBodies[0];
  if (existing) existing.replaceWith(row);
  else if (live) {
    body.prepend(row);
    row.classList.add("fresh");
  } else body.append(row);
  state.rows.set(payment.id, row);
  $("payments-empty").hidden = state.rows.size > 0;
}

async function loadPayments() {
  try {
    const page = await get("/payments?role=payee&limit=100");
    for (const payment of page.data) {
      if (!state.rows.has(payment.id)) putPayment(payment, { live: false });
    }
    $("payments-empty").hidden = state.rows.size > 0;
  } catch (err) {
    toast(t("Payments did not load: {reason}", { reason: errorText(err) }));
  }
}

// ---- refunds ----------------------------------------------------------------------------

function openRefund(payment) {
  state.refunding = payment;
  state.refundBody = null;
  const left = payment.amount - (payment.refunded_amount || 0);
  $("refund-what").textContent = t("{amount} from {payer}; up to {left} can be refunded.", {
    amount: formatMoney(payment.amount, payment.currency),
    payer: party(payment.payer),
    left: formatMoney(left, payment.currency),
  });
  $("refund-amount").value = (left / 100).toFixed(2);
  $("refund-reason").value = "";
  $("refund-error").textContent = "";
  $("refund-dialog").showModal();
  $("refund-amount").select();
}

async function submitRefund(event) {
  event.preventDefault();
  const payment = state.refunding;
  if (!payment) return;
  const amount = parseMoney($("refund-amount").value);
  if (amount === null) {
    $("refund-error").textContent = t("Type an amount such as 5.00.");
    return;
  }
  const body = { amount };
  const reason = $("refund-reason").value.trim();
  if (reason) body.reason = reason;
  const bodyText = JSON.stringify([payment.id, body]);
  if (state.refundBody !== bodyText) {
    state.refundKey = newIdempotencyKey();
    state.refundBody = bodyText;
  }
  const button = $("refund-submit");
  setBusy(button, true);
  try {
    await post(`/payments/${encodeURIComponent(payment.id)}/refunds`, body, {
      idempotencyKey: state.refundKey,
    });
    $("refund-dialog").close();
    toast(t("Refunded {amount} to {payer}.", {
      amount: formatMoney(amount, payment.currency),
      payer: partyName(payment.payer),
    }));
    putPayment(await get(`/payments/${encodeURIComponent(payment.id)}`), { live: false });
    await refreshBalance();
  } catch (err) {
    $("refund-error").textContent = errorText(err);
    if (err.status !== 0) state.refundBody = null;
  } finally {
    setBusy(button, false);
  }
}

// ---- agencies ---------------------------------------------------------------------------

function agencyItem(agency) {
  const actions = [];
  const byAgent = agency.created_by && agency.created_by.handle === agency.agent.handle;
  if (agency.status === "pending" && byAgent) {
    actions.push(el("button", {
      type: "button", class: "btn btn-small btn-primary", text: t("Accept"),
      "aria-label": t("Accept {agent}", { agent: partyName(agency.agent) }),
      onclick: () => agencyAction(agency, "accept"),
    }));
  }
  if (agency.status !== "revoked") {
    actions.push(el("button", {
      type: "button", class: "btn btn-small", text: t("Revoke"),
      "aria-label": t("Revoke {agent}", { agent: partyName(agency.agent) }),
      onclick: () => agencyAction(agency, "revoke"),
    }));
  }
  return el("li", { class: `agency agency-${agency.status}` },
    el("div", {},
      el("strong", { text: partyName(agency.agent) }),
      el("span", { class: "muted small", text: ` @${agency.agent.handle}` }),
      el("div", { class: "small" },
        el("span", {
          class: `badge badge-${agency.status}`,
          text: AGENCY_STATUS[agency.status] ? AGENCY_STATUS[agency.status]() : agency.status,
        }),
        agency.label ? ` ${agency.label}` : "",
        agency.can_refund ? ` · ${t("may refund")}` : "")),
    el("div", { class: "row" }, actions),
  );
}

async function loadAgencies() {
  try {
    const page = await get("/agencies?role=payee&limit=200");
    const rank = { pending: 0, active: 1, revoked: 2 };
    const list = [...page.data].sort((a, b) => (rank[a.status] ?? 3) - (rank[b.status] ?? 3));
    $("agencies").replaceChildren(...list.map(agencyItem));
    if (!list.length) $("agencies").append(el("li", { class: "muted", text: t("No agents yet.") }));
  } catch (err) {
    toast(t("Agents did not load: {reason}", { reason: errorText(err) }));
  }
}

async function agencyAction(agency, action) {
  const question = t("Stop {agent} collecting for you? This is final.", { agent: partyName(agency.agent) });
  if (action === "revoke" && !window.confirm(question)) return;
  try {
    await post(`/agencies/${encodeURIComponent(agency.id)}/${action}`, {});
    toast(action === "accept"
      ? t("{agent} can collect now.", { agent: partyName(agency.agent) })
      : t("Revoked."));
  } catch (err) {
    toast(errorText(err));
  }
  await loadAgencies();
}

async function invite(event) {
  event.preventDefault();
  const error = $("invite-error");
  error.textContent = "";
  const handle = $("invite-handle").value.trim().toLowerCase().replace(/^@/, "");
  if (!handle) {
    error.textContent = t("Type the handle of the person or counter to invite.");
    return;
  }
  const body = { agent: handle, can_refund: $("invite-refund").checked };
  const label = $("invite-label").value.trim();
  if (label) body.label = label;
  const button = event.submitter || $("invite-form").querySelector("button[type=submit]");
  setBusy(button, true);
  try {
    await post("/agencies", body);
    $("invite-form").reset();
    toast(t("@{handle} can collect for you now.", { handle }));
    await loadAgencies();
  } catch (err) {
    error.textContent = errorText(err, {
      not_found: () => t("No account @{handle}.", { handle }),
      agency_exists: () => t("@{handle} is already your agent (or asked to be).", { handle }),
    });
  } finally {
    setBusy(button, false);
  }
}

// ---- report and CSV ---------------------------------------------------------------------

function localDate(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

// The chosen local days as an RFC 3339 UTC range: from the first midnight to the one after.
function range() {
  const from = $("report-from").value;
  const to = $("report-to").value;
  if (!from || !to) return { error: t("Pick both dates.") };
  const start = new Date(`${from}T00:00:00`);
  const end = new Date(`${to}T00:00:00`);
  end.setDate(end.getDate() + 1);
  if (!(start < end)) return { error: t("The first date must be on or before the last.") };
  return { from: start.toISOString(), to: end.toISOString() };
}

async function showReport(event) {
  event?.preventDefault();
  const r = range();
  $("report-error").textContent = r.error || "";
  if (r.error) return;
  try {
    const page = await get(`/reports/agents${query({ from: r.from, to: r.to, limit: 200 })}`);
    const body = $("report").tBodies[0];
    body.replaceChildren(...page.data.map((line) => el("tr", {},
      el("td", { "data-label": t("Agent"), text: partyName(line.agent) }),
      el("td", { "data-label": t("Code"), text: line.label || (line.code_id ? line.code_id.slice(-6) : t("direct")) }),
      el("td", { class: "num", "data-label": t("Count"), text: new Intl.NumberFormat(LANG).format(line.count) }),
      el("td", { class: "num money", "data-label": t("Gross"), text: formatMoney(line.gross) }),
      el("td", { class: "num money", "data-label": t("Refunded"), text: formatMoney(line.refunded) }),
      el("td", { class: "num money", "data-label": t("Net"), text: formatMoney(line.net) }),
    )));
    $("report").hidden = page.data.length === 0;
    $("report-empty").hidden = page.data.length > 0;
  } catch (err) {
    $("report-error").textContent = errorText(err);
  }
}

async function downloadCsv() {
  const r = range();
  $("report-error").textContent = r.error || "";
  if (r.error) return;
  const button = $("csv");
  setBusy(button, true);
  try {
    const response = await request(
      "GET", `/payments.csv${query({ role: "payee", from: r.from, to: r.to })}`, { raw: true },
    );
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", {
      href: url,
      download: `payments-${$("report-from").value}-to-${$("report-to").value}.csv`,
    });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    $("report-error").textContent = errorText(err);
  } finally {
    setBusy(button, false);
  }
}

// ---- live -------------------------------------------------------------------------------

let reportTimer = null;
// A burst of payments refreshes the report once, not once per payment.
function refreshReportSoon() {
  clearTimeout(reportTimer);
  reportTimer = setTimeout(() => showReport(), 800);
}

async function onEvent(event) {
  const data = event.data || {};
  onAccountEvent();
  if (event.type === "payment.succeeded" || event.type === "payment.refunded") {
    putPayment(data, { live: event.type === "payment.succeeded" });
    refreshReportSoon();
    await refreshBalance();
  } else if (event.type === "deposit.succeeded") {
    await refreshBalance();
  } else if (event.type.startsWith("agency.")) {
    await loadAgencies();
  } else if (event.type === "webhook.disabled") {
    await loadWebhooks();
  }
}

boot(async (me) => {
  state.me = me;
  $("balance").textContent = formatMoney(me.balance, me.currency);
  $("invite-form").addEventListener("submit", invite);
  $("refund-form").addEventListener("submit", submitRefund);
  $("refund-cancel").addEventListener("click", () => $("refund-dialog").close());
  $("report-form").addEventListener("submit", showReport);
  $("csv").addEventListener("click", downloadCsv);
  const today = new Date();
  $("report-to").value = localDate(today);
  $("report-from").value = localDate(new Date(today.getFullYear(), today.getMonth(), 1));

  const live = connectLive({ onEvent, onStatus: showStatus($("live-status")) });
  await Promise.all([loadAgencies(), initWebhooks()]);
  await live.ready;
  await Promise.all([refreshBalance(), loadPayments(), showReport()]);
});
