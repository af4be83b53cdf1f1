// What every page shares: log in or sign up in place (the URL, /c/{token} included, stays as
// it is, so the page carries on after login), the account in the header, and log out.
import { ApiError, clearSession, currentSession, del, get, post, saveSession } from "./api.js";
import { $ } from "./dom.js";

const PAGE_DEVICE = {
  counter: "Counter tablet",
  code: "Phone",
  pay: "Phone",
  dashboard: "Dashboard",
  home: "Browser",
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
  $("auth-title").textContent = signup ? "Create an account" : "Log in";
  $("auth-switch").textContent = signup
    ? "Have an account? Log in"
    : "New here? Create an account";
}

async function logIn(handle, password) {
  const deviceName = `${PAGE_DEVICE[document.body.dataset.page] || "Browser"} (web)`;
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
      error.textContent = "Type your handle and password.";
      return;
    }
    const button = event.submitter || $("login-form").querySelector("button");
    button.disabled = true;
    try {
      await logIn(handle, password);
      $("login-password").value = "";
      onLoggedIn();
    } catch (err) {
      error.textContent =
        err instanceof ApiError && err.status === 401
          ? "Wrong handle or password."
          : err.status === 429
            ? "Too many attempts. Wait a few minutes and try again."
            : err.message;
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
      error.textContent = "A handle is 3–32 of a–z, 0–9, _ . and -.";
      return;
    }
    if (!displayName) {
      error.textContent = "Type your name as others will see it.";
      return;
    }
    if (password.length < 8) {
      error.textContent = "The password needs at least 8 characters.";
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
      error.textContent =
        err.code === "handle_taken" ? "This handle is taken; pick another." : err.message;
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

// Runs start(me) once the browser has a working session; shows the login form until then.
export function boot(start, { why } = {}) {
  let started = false;
  const begin = async () => {
    let me;
    try {
      me = await get("/me");
    } catch (err) {
      if (err.status === 401 || !currentSession()) {
        showAuth(why);
        return;
      }
      $("booting").textContent = `Cannot reach the server: ${err.message}`;
      return;
    }
    $("auth").hidden = true;
    $("booting").hidden = true;
    $("app").hidden = false;
    $("who").hidden = false;
    $("who-name").textContent = `${me.display_name} (@${me.handle})`;
    if (!started) {
      started = true;
      await start(me);
    }
  };
  wireAuth(begin);
  $("logout").addEventListener("click", logOut);
  window.addEventListener("paycode:logged-out", () => {
    if (started) location.reload();
    else showAuth("Your session ended. Log in again.");
  });
  if (currentSession()) begin();
  else showAuth(why);
}
