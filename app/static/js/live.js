// The account's live events over the WebSocket of spec §8 (JSON subprotocol). It reconnects by
// itself and says hello with `after` = the last seq it handed on, so a drop loses nothing, and
// it never hands on a seq twice.
import { clearSession, currentSession } from "./api.js";
import { t } from "./i18n.js";

const PING_EVERY_MS = 20000;
const PONG_WITHIN_MS = 8000;
const FIRST_WELCOME_WITHIN_MS = 4000;

export function connectLive({ onEvent, onStatus = () => {} }) {
  let lastSeq = null;
  // The account's last seq when the current connection's welcome came: frames up to it are a
  // replay of what happened while away, after it they are news (said aloud, flashed).
  let liveAfter = null;
  let socket = null;
  let attempt = 0;
  let pingTimer = null;
  let pongTimer = null;
  let retryTimer = null;
  let resolveReady;
  const ready = new Promise((resolve) => {
    resolveReady = resolve;
  });
  // The page loads its lists once live events flow, so nothing falls between list and socket;
  // without a socket it loads them anyway.
  setTimeout(() => resolveReady(false), FIRST_WELCOME_WITHIN_MS);

  function clearTimers() {
    clearInterval(pingTimer);
    clearTimeout(pongTimer);
    pingTimer = null;
    pongTimer = null;
  }

  function scheduleReconnect() {
    clearTimeout(retryTimer);
    const delay = Math.min(5000, 400 * 2 ** attempt) + Math.floor(Math.random() * 250);
    attempt += 1;
    retryTimer = setTimeout(open, delay);
  }

  function open() {
    const session = currentSession();
    if (!session) return;
    clearTimeout(retryTimer);
    onStatus(attempt === 0 ? "connecting" : "reconnecting");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/ws`, "paycode.v1.json");
    socket = ws;
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "hello", token: session.token, after: lastSeq }));
    });
    ws.addEventListener("message", (message) => {
      if (ws !== socket) return;
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame.type === "welcome") {
        attempt = 0;
        if (lastSeq === null) lastSeq = Number(frame.last_seq) || 0;
        liveAfter = Number(frame.last_seq) || 0;
        onStatus("live");
        resolveReady(true);
        clearTimers();
        pingTimer = setInterval(ping, PING_EVERY_MS);
      } else if (frame.type === "event") {
        if (lastSeq !== null && frame.seq <= lastSeq) return;
        lastSeq = frame.seq;
        onEvent(frame.event, frame.seq, { replayed: liveAfter !== null && frame.seq <= liveAfter });
      } else if (frame.type === "pong") {
        clearTimeout(pongTimer);
      }
    });
    ws.addEventListener("close", (event) => {
      if (ws !== socket) return;
      clearTimers();
      if (event.code === 4401) {
        onStatus("logged-out");
        clearSession();
        window.dispatchEvent(new CustomEvent("paycode:logged-out"));
        return;
      }
      onStatus("offline");
      scheduleReconnect();
    });
  }

  // A dead network often leaves a socket looking open; an unanswered ping unmasks it.
  function ping() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ type: "ping" }));
    clearTimeout(pongTimer);
    const watched = socket;
    pongTimer = setTimeout(() => watched.close(), PONG_WITHIN_MS);
  }

  window.addEventListener("online", () => {
    if (!socket || socket.readyState === WebSocket.CLOSED) {
      attempt = 0;
      open();
    } else {
      ping();
    }
  });

  open();
  return {
    ready,
    get lastSeq() {
      return lastSeq;
    },
  };
}

const STATUS_TEXT = {
  connecting: () => t("connecting…"),
  reconnecting: () => t("reconnecting…"),
  live: () => t("live"),
  offline: () => t("offline — reconnecting"),
  "logged-out": () => t("logged out"),
};

// data-state is the machine-readable state (live, connecting, reconnecting, offline,
// logged-out); the text is the page's words for it.
export function showStatus(element) {
  return (status) => {
    element.textContent = STATUS_TEXT[status] ? STATUS_TEXT[status]() : status;
    element.dataset.state = status;
  };
}
