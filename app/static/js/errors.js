// The page's own words for each API error code (spec §2): the API's English `message` is for
// developers and logs, never shown on a page.
import { t } from "./i18n.js";

// Functions, not strings: t() must run after the page's catalog is read, and each call is a
// literal the extractor finds.
const BY_CODE = {
  insufficient_funds: () => t("Not enough money in your account for this payment."),
  code_already_paid: () => t("This code has already been paid. Ask the counter for a new one."),
  code_expired: () => t("This code has expired. Ask the counter for a new one."),
  code_cancelled: () => t("The counter cancelled this code. Ask for a new one."),
  code_not_active: () => t("This code does not take payments now."),
  agency_revoked: () => t("This code no longer takes payments: the shop stopped this counter collecting."),
  agency_not_active: () => t("This counter is not yet allowed to collect for the shop."),
  agency_not_pending: () => t("This request was already answered."),
  agency_exists: () => t("This agent already collects for you, or has asked to."),
  refund_exceeds_payment: () => t("That is more than is left to refund."),
  handle_taken: () => t("This handle is taken; pick another."),
  validation_error: () => t("Something you typed is not valid. Check it and try again."),
  amount_required: () => t("Type the amount to pay."),
  amount_mismatch: () => t("The amount differs from the code's amount."),
  self_payment: () => t("This code collects for your own account; you cannot pay yourself."),
  idempotency_key_reused: () => t("This attempt changed while it was being sent. Try again."),
  invalid_credentials: () => t("Wrong handle or password."),
  unauthorized: () => t("Your session ended. Log in again."),
  forbidden: () => t("This account may not do that."),
  not_found: () => t("Not found. Check it and try again."),
  payload_too_large: () => t("That is too much to send at once."),
  rate_limited: () => t("Too many attempts. Wait a few minutes and try again."),
  network: () => t("No connection to the server. Check the network and retry."),
  webhook_limit: () => t("An account has at most 10 webhook endpoints. Delete one you no longer use first."),
  webhook_disabled: () => t("This endpoint is disabled. Enable it first."),
};

// A field whose validation error needs more than "check it": what the rule is.
const FIELD_RULES = {
  url: () => t("This address cannot receive webhooks: it must be an https:// address of a server on the internet (not a private, local or loopback one), at most 2048 characters."),
  events: () => t("Pick at least one event to send."),
};

// A field the API names in a validation error, in the page's words.
const FIELDS = {
  handle: () => t("handle"),
  display_name: () => t("name"),
  password: () => t("password"),
  amount: () => t("amount"),
  items: () => t("items"),
  label: () => t("label"),
  memo: () => t("memo"),
  reason: () => t("reason"),
  description: () => t("description"),
  agent: () => t("agent handle"),
  payee: () => t("payee handle"),
};

export function errorText(err, overrides = {}) {
  const code = err && err.code;
  if (code && overrides[code]) return overrides[code]();
  if (code === "validation_error" && err.field && FIELD_RULES[err.field]) {
    return FIELD_RULES[err.field]();
  }
  if (code === "validation_error" && err.field && FIELDS[err.field]) {
    return t("Check the {field} and try again.", { field: FIELDS[err.field]() });
  }
  if (code && BY_CODE[code]) return BY_CODE[code]();
  const status = err && err.status;
  if (status >= 500) return t("The server could not do that just now. Try again shortly.");
  return t("That did not work (error {code}). Try again.", { code: code || status || "?" });
}
