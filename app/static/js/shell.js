// What every page shares: log in or sign up in place (the URL, /c/{token} included, stays as
// it is, so the page carries on after login), the account in the header, the language picker,
// log out, and the return to the login form the moment this device is revoked.
import { clearSession, currentSession, del, get, post, saveSession } from "./api.js";
import { $ } from "./dom.js";
import { errorText } from "./errors.js";
import { t, wireLanguagePicker } from "./i18n.js";
import { connectLive } from "./live.js";

// The device name a login from each page gets (shown on /devices).
// An open page says it is still here this often (the devices list's "last seen").
const STILL_HERE_MS = 5 * 60 * 1000;

const PAGE_DEVICE = {
  counter: () => t("Counter tablet (web)"),
  code: () => t("Phone (web)"),
  pay: () => t("Phone (web)"),
  dashboard: () => t("Dashboard (web)"),
  devices: () => t("Browser (web)"),
  home: () => t("Browser (web)"),
};

function showAuth(why) {
  $("booting").hidden = true;
  $("app").hidden = true;
  $("who").hidden = true;
  $("auth").hidden = false;
  if (why) $("auth-why").textContent = why;
  $("login-handle").focus();
}

function setMode(signup) {
  $("login-form").hidden = signup;
  $("signup-form").hidden = !signup;
  $("auth-title").textContent = signup ? t("Create an account") : t("Log in");
  $("auth-switch").textContent = signup
    ? t("Have an account? Log in")
    : t("New here? Create an account");
}

async function logIn(handle, password) {
  const deviceName = (PAGE_DEVICE[document.body.dataset.page] || PAGE_DEVICE.home)();
  const result = await post("/sessions", { handle, password, device_name: deviceName });
  saveSession({ token: result.token, device: result.device, account: result.account });
}

function wireAuth(onLoggedIn) {
  $("auth-switch").addEventListener("click", () => setMode($("signup-form").hidden));
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("login-error");
    error.textContent = "";
    const handle = $("login-handle").value.trim().toLowerCase();
    const password = $("login-password").value;
    if (!handle || !password) {
      error.textContent = t("Type your handle and password.");
      return;
    }
    const button = event.submitter || $("login-form").querySelector("button");
    button.disabled = true;
    try {
      await logIn(handle, password);
      $("login-password").value = "";
      onLoggedIn();
    } catch (err) {
      error.textContent = errorText(err, {
        unauthorized: () => t("Wrong handle or password."),
        not_found: () => t("Wrong handle or password."),
      });
    } finally {
      button.disabled = false;
    }
  });
  $("signup-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("signup-error");
    error.textContent = "";
    const handle = $("signup-handle").value.trim().toLowerCase();
    const displayName = $("signup-name").value.trim();
    const password = $("signup-password").value;
    if (!/^[a-z0-9_.-]{3,32}$/.test(handle)) {
      error.textContent = t("A handle is 3–32 of a–z, 0–9, _ . and -.");
      return;
    }
    if (!displayName) {
      error.textContent = t("Type your name as others will see it.");
      return;
    }
    if (password.length < 8) {
      error.textContent = t("The password needs at least 8 characters.");
      return;
    }
    const button = event.submitter || $("signup-form").querySelector("button");
    button.disabled = true;
    try {
      await post("/accounts", { handle, display_name: displayName, password });
      await logIn(handle, password);
      $("signup-password").value = "";
      onLoggedIn();
    } catch (err) {
      error.textContent = errorText(err);
    } finally {
      button.disabled = false;
    }
  });
}

async function logOut() {
  try {
    await del("/sessions/current");
  } catch {
    // The token is dropped from this browser whatever the server said.
  }
  clearSession();
  location.assign("/");
}

// Back to the login form in place, with nothing of the account left on the page.
function endSession() {
  $("who-name").textContent = "";
  showAuth(t("Your session ended. Log in again."));
  // The page's own state belongs to the account that left; a fresh load starts clean, and the
  // login form it shows is the one already on screen.
  setTimeout(() => location.reload(), 50);
}

// Runs start(me) once the browser has a working session; shows the login form until then.
// A page without live parts of its own (watch: true) still keeps a socket open, only so that a
// revoke of this device (close 4401) brings back the login form at once.
export function boot(start, { watch = false } = {}) {
  let started = false;
  wireLanguagePicker();
  const begin = async () => {
    let me;
    try {
      me = await get("/me");
    } catch (err) {
      if (err.status === 401 || !currentSession()) {
        showAuth();
        return;
      }
      $("booting").textContent = t("Cannot reach the server: {reason}", { reason: errorText(err) });
      return;
    }
    $("auth").hidden = true;
    $("booting").hidden = true;
    $("app").hidden = false;
    $("who").hidden = false;
    $("who-name").textContent = `${me.display_name} (@${me.handle})`;
    if (!started) {
      started = true;
      if (watch) connectLive({ onEvent: () => {} });
      setInterval(() => {
        if (document.visibilityState === "visible") get("/me").catch(() => {});
      }, STILL_HERE_MS);
      await start(me);
    }
  };
  wireAuth(begin);
  $("logout").addEventListener("click", logOut);
  window.addEventListener("paycode:logged-out", () => {
    if (started) endSession();
    else showAuth(t("Your session ended. Log in again."));
  });
  if (currentSession()) begin();
  else showAuth();
}
