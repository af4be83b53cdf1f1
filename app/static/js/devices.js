// The account's logged-in devices (spec §3, §10): name, when it logged in, when it was last
// seen; this one marked; revoke any. A revoked device's token stops at once and its sockets
// close with 4401, which sends its open pages back to the login form (shell.js).
import { clearSession, currentSession, del, get } from "./api.js";
import { $, dateTimeOf, el, setBusy, toast } from "./dom.js";
import { errorText } from "./errors.js";
import { t } from "./i18n.js";
import { boot } from "./shell.js";

function thisDeviceId() {
  const session = currentSession();
  return session && session.device ? session.device.id : null;
}

function deviceRow(device) {
  const mine = device.id === thisDeviceId();
  const button = el("button", {
    type: "button",
    class: "btn btn-small",
    text: mine ? t("Log out") : t("Revoke"),
    "aria-label": mine
      ? t("Log out this device ({name})", { name: device.name })
      : t("Revoke {name}", { name: device.name }),
  });
  button.addEventListener("click", () => revoke(device, button, mine));
  const seen = device.last_seen_at || device.created_at;
  return el("tr", { dataset: { deviceId: device.id }, class: mine ? "this-device" : "" },
    el("td", { "data-label": t("Name") },
      el("strong", { text: device.name }),
      mine ? el("span", { class: "badge badge-active", text: t("this device") }) : null),
    el("td", { "data-label": t("Logged in") },
      el("time", { datetime: device.created_at, text: dateTimeOf(device.created_at) })),
    el("td", { "data-label": t("Last seen") },
      el("time", { datetime: seen, text: dateTimeOf(seen) })),
    el("td", { class: "actions" }, button),
  );
}

async function load() {
  try {
    const page = await get("/devices?limit=200");
    $("devices").tBodies[0].replaceChildren(...page.data.map(deviceRow));
    $("devices-empty").hidden = page.data.length > 0;
    $("devices-error").textContent = "";
  } catch (err) {
    $("devices-error").textContent = errorText(err);
  }
}

async function revoke(device, button, mine) {
  const question = mine
    ? t("Log out this device?")
    : t("Revoke {name}? It is logged out at once.", { name: device.name });
  if (!window.confirm(question)) return;
  setBusy(button, true);
  try {
    await del(`/devices/${encodeURIComponent(device.id)}`);
    if (mine) {
      clearSession();
      window.dispatchEvent(new CustomEvent("paycode:logged-out"));
      return;
    }
    toast(t("{name} is logged out.", { name: device.name }));
    await load();
  } catch (err) {
    $("devices-error").textContent = errorText(err);
  } finally {
    setBusy(button, false);
  }
}

boot(async () => {
  await load();
  // Devices log in elsewhere without any event for this one; a visible page keeps current.
  setInterval(() => {
    if (document.visibilityState === "visible") load();
  }, 15000);
}, { watch: true });
