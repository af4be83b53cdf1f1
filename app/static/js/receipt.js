// The payer's receipt checked on the phone (spec §7, §10): its Ed25519 signature against the
// platform's public keys, with WebCrypto where the browser has Ed25519, else by the server's
// /receipts/verify; and its signed facts against what the page shows, so a receipt whose page
// data was altered is flagged even when its signature is sound.
import { get, post } from "./api.js";
import { t } from "./i18n.js";

function bytesOf(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

let keysLoaded = null;
function publicKeys() {
  keysLoaded = keysLoaded || get("/receipts/keys").then((body) => body.data);
  return keysLoaded;
}

// true or false from WebCrypto, or null when this browser cannot do Ed25519.
async function verifyInBrowser(receipt) {
  if (!(window.crypto && crypto.subtle)) return null;
  const keys = await publicKeys();
  const entry = keys.find((k) => k.key_id === receipt.key_id);
  if (!entry) return false;
  let key;
  try {
    key = await crypto.subtle.importKey("raw", bytesOf(entry.public_key), { name: "Ed25519" }, false, ["verify"]);
  } catch {
    return null;
  }
  return crypto.subtle.verify({ name: "Ed25519" }, key, bytesOf(receipt.signature), bytesOf(receipt.payload));
}

async function verifyOnServer(receipt) {
  const body = await post("/receipts/verify", { receipt });
  return body.valid === true;
}

function handleOf(party) {
  return party ? party.handle : null;
}

// The signed facts say what the page says: same payment, amount, parties, code and time.
function factsMatch(receipt, payment) {
  let facts;
  try {
    facts = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytesOf(receipt.payload)));
  } catch {
    return false;
  }
  return facts.payment_id === payment.id
    && facts.amount === payment.amount
    && facts.currency === payment.currency
    && facts.payer === handleOf(payment.payer)
    && facts.payee === handleOf(payment.payee)
    && facts.agent === handleOf(payment.agent)
    && (facts.code_id ?? null) === (payment.code_id ?? null)
    && new Date(facts.created_at).getTime() === new Date(payment.created_at).getTime();
}

// Resolves to "verified" or "invalid" (or "unchecked" when the keys cannot be reached) and
// says it on `node`; node.dataset.method tells which check ran (webcrypto or server).
export async function checkReceipt(payment, node) {
  node.dataset.state = "checking";
  node.textContent = t("Checking the receipt's signature…");
  const receipt = payment.receipt;
  let verdict;
  try {
    if (!receipt || typeof receipt.payload !== "string" || typeof receipt.signature !== "string") {
      verdict = false;
    } else {
      let valid = null;
      try {
        valid = await verifyInBrowser(receipt);
        node.dataset.method = "webcrypto";
      } catch {
        valid = null;
      }
      if (valid === null) {
        node.dataset.method = "server";
        valid = await verifyOnServer(receipt);
      }
      verdict = valid && factsMatch(receipt, payment);
    }
  } catch {
    node.dataset.state = "unchecked";
    node.textContent = t("The receipt's signature could not be checked now (no connection).");
    return "unchecked";
  }
  if (verdict) {
    node.dataset.state = "verified";
    node.textContent = t("Signature verified: this receipt was issued by the platform.");
    return "verified";
  }
  node.dataset.state = "invalid";
  node.textContent = t("Warning: this receipt's signature does not verify. Do not accept it as proof of payment.");
  return "invalid";
}
