// Verify a paycode webhook delivery in Node.js (18+) with nothing but the standard library.
// Usage as a module: verify(secret, headers, rawBody) -> parsed event, or throws.
// Try it: node verify_webhook.mjs <secret> <webhook-id> <webhook-timestamp> <webhook-signature> <body-file>
import { createHmac, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";

const TOLERANCE_SECONDS = 5 * 60;

export function verify(secret, headers, rawBody, now = Date.now() / 1000) {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = headers["webhook-signature"];
  if (!id || !timestamp || !signatures) throw new Error("missing webhook headers");
  const sent = Number(timestamp);
  if (!Number.isInteger(sent) || Math.abs(now - sent) > TOLERANCE_SECONDS) {
    throw new Error("timestamp outside the tolerance: a replay or a wrong clock");
  }
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  // Sign the body exactly as received: raw bytes, never a re-serialized object.
  const expected = createHmac("sha256", key)
    .update(Buffer.concat([Buffer.from(`${id}.${timestamp}.`), Buffer.from(rawBody)]))
    .digest();
  // During a secret rotation there are several signatures, separated by spaces.
  for (const versioned of signatures.split(" ")) {
    const [version, signature] = versioned.split(",");
    if (version !== "v1" || !signature) continue;
    const given = Buffer.from(signature, "base64");
    if (given.length === expected.length && timingSafeEqual(given, expected)) {
      return JSON.parse(Buffer.from(rawBody).toString("utf8"));
    }
  }
  throw new Error("no valid signature");
}

if (process.argv.length === 7) {
  const [secret, id, timestamp, signature, bodyFile] = process.argv.slice(2);
  const headers = { "webhook-id": id, "webhook-timestamp": timestamp, "webhook-signature": signature };
  const event = verify(secret, headers, readFileSync(bodyFile));
  console.log(`verified ${event.type} seq=${event.seq}`);
}
