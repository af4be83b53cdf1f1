// The payee's dashboard: balance, live payments with the agent and code of each (C5), agents,
// a per-agent report, CSV export and refunds.
import { get, newIdempotencyKey, post, query, request } from "./api.js";
import { $, el, party, partyName, setBusy, timeOf, toast } from "./dom.js";
import { connectLive, showStatus } from "./live.js";
import { formatMoney, parseMoney } from "./money.js";
import { boot } from "./shell.js";

const state = { me: null, rows: new Map(), refunding: null, refundKey: null, refundBody: null };

const STATUS_LABEL = {
  succeeded: "paid",
  partially_refunded: "part refunded",
  refunded: "refunded",
};

async function refreshBalance() {
  try {
    const me = await get("/me");
    state.me = me;
    $("balance").textContent = formatMoney(me.balance, me.currency);
  } catch (err) {
    toast(`Balance did not load: ${err.message}`);
  }
}

// ---- payments ---------------------------------------------------------------------------

function codeText(payment) {
  if (!payment.code_id) return "direct";
  const kind = payment.code_kind ? `${payment.code_kind} ` : "";
  return `${payment.code_label || "code"} · ${kind}${payment.code_id.slice(-6)}`;
}

function paymentRow(payment) {
  const refundable = payment.amount - (payment.refunded_amount || 0);
  return el("tr", { dataset: { paymentId: payment.id } },
    el("td", { "data-label": "Time" },
      el("time", { datetime: payment.created_at, text: timeOf(payment.created_at) })),
    el("td", { class: "num money", "data-label": "Amount", text: formatMoney(payment.amount, payment.currency) }),
    el("td", { "data-label": "Payer", text: partyName(payment.payer) }),
    el("td", { "data-label": "Agent", class: "agent", text: payment.agent ? partyName(payment.agent) : "—" }),
    el("td", { "data-label": "Code", class: "code", title: payment.code_id || "", text: codeText(payment) }),
    el("td", { "data-label": "Status" },
      el("span", {
        class: `badge badge-${payment.status}`,
        text: payment.refunded_amount
          ? `${STATUS_LABEL[payment.status] || payment.status} ${formatMoney(payment.refunded_amount, payment.currency)}`
          : STATUS_LABEL[payment.status] || payment.status,
      })),
    el("td", { class: "actions" },
      refundable > 0
        ? el("button", {
            type: "button",
            class: "btn btn-small",
            "aria-label": `Refund ${formatMoney(payment.amount, payment.currency)} from ${partyName(payment.payer)}`,
            text: "Refund",
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
    toast(`Payments did not load: ${err.message}`);
  }
}

// ---- refunds ----------------------------------------------------------------------------

function openRefund(payment) {
  state.refunding = payment;
  state.refundBody = null;
  const left = payment.amount - (payment.refunded_amount || 0);
  $("refund-what").textContent =
    `${formatMoney(payment.amount, payment.currency)} from ${party(payment.payer)}; ` +
    `up to ${formatMoney(left, payment.currency)} can be refunded.`;
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
    $("refund-error").textContent = "Type an amount such as 5.00.";
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
    toast(`Refunded ${formatMoney(amount, payment.currency)} to ${partyName(payment.payer)}.`);
    putPayment(await get(`/payments/${encodeURIComponent(payment.id)}`), { live: false });
    await refreshBalance();
  } catch (err) {
    $("refund-error").textContent =
      err.code === "refund_exceeds_payment" ? "That is more than is left to refund." : err.message;
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
      type: "button", class: "btn btn-small btn-primary", text: "Accept",
      "aria-label": `Accept ${partyName(agency.agent)}`,
      onclick: () => agencyAction(agency, "accept"),
    }));
  }
  if (agency.status !== "revoked") {
    actions.push(el("button", {
      type: "button", class: "btn btn-small", text: "Revoke",
      "aria-label": `Revoke ${partyName(agency.agent)}`,
      onclick: () => agencyAction(agency, "revoke"),
    }));
  }
  return el("li", { class: `agency agency-${agency.status}` },
    el("div", {},
      el("strong", { text: partyName(agency.agent) }),
      el("span", { class: "muted small", text: ` @${agency.agent.handle}` }),
      el("div", { class: "small" },
        el("span", { class: `badge badge-${agency.status}`, text: agency.status }),
        agency.label ? ` ${agency.label}` : "",
        agency.can_refund ? " · may refund" : "")),
    el("div", { class: "row" }, actions),
  );
}

async function loadAgencies() {
  try {
    const page = await get("/agencies?role=payee&limit=200");
    const rank = { pending: 0, active: 1, revoked: 2 };
    const list = [...page.data].sort((a, b) => (rank[a.status] ?? 3) - (rank[b.status] ?? 3));
    $("agencies").replaceChildren(...list.map(agencyItem));
    if (!list.length) $("agencies").append(el("li", { class: "muted", text: "No agents yet." }));
  } catch (err) {
    toast(`Agents did not load: ${err.message}`);
  }
}

async function agencyAction(agency, action) {
  if (action === "revoke" && !window.confirm(`Stop ${partyName(agency.agent)} collecting for you? This is final.`)) return;
  try {
    await post(`/agencies/${encodeURIComponent(agency.id)}/${action}`, {});
    toast(action === "accept" ? `${partyName(agency.agent)} can collect now.` : "Revoked.");
  } catch (err) {
    toast(err.message);
  }
  await loadAgencies();
}

async function invite(event) {
  event.preventDefault();
  const error = $("invite-error");
  error.textContent = "";
  const handle = $("invite-handle").value.trim().toLowerCase().replace(/^@/, "");
  if (!handle) {
    error.textContent = "Type the handle of the person or counter to invite.";
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
    toast(`@${handle} can collect for you now.`);
    await loadAgencies();
  } catch (err) {
    error.textContent =
      err.code === "not_found" ? `No account @${handle}.`
        : err.code === "agency_exists" ? `@${handle} is already your agent (or asked to be).`
          : err.message;
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
  if (!from || !to) return { error: "Pick both dates." };
  const start = new Date(`${from}T00:00:00`);
  const end = new Date(`${to}T00:00:00`);
  end.setDate(end.getDate() + 1);
  if (!(start < end)) return { error: "From must be on or before To." };
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
      el("td", { "data-label": "Agent", text: partyName(line.agent) }),
      el("td", { "data-label": "Code", text: line.label || (line.code_id ? line.code_id.slice(-6) : "direct") }),
      el("td", { class: "num", "data-label": "Count", text: String(line.count) }),
      el("td", { class: "num money", "data-label": "Gross", text: formatMoney(line.gross) }),
      el("td", { class: "num money", "data-label": "Refunded", text: formatMoney(line.refunded) }),
      el("td", { class: "num money", "data-label": "Net", text: formatMoney(line.net) }),
    )));
    $("report").hidden = page.data.length === 0;
    $("report-empty").hidden = page.data.length > 0;
  } catch (err) {
    $("report-error").textContent = err.message;
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
    $("report-error").textContent = err.message;
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
  if (event.type === "payment.succeeded" || event.type === "payment.refunded") {
    putPayment(data, { live: event.type === "payment.succeeded" });
    refreshReportSoon();
    await refreshBalance();
  } else if (event.type === "deposit.succeeded") {
    await refreshBalance();
  } else if (event.type.startsWith("agency.")) {
    await loadAgencies();
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
  await loadAgencies();
  await live.ready;
  await Promise.all([refreshBalance(), loadPayments(), showReport()]);
}, { why: "Log in with the account that receives the money." });
