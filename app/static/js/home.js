import { get } from "./api.js";
import { $ } from "./dom.js";
import { formatMoney } from "./money.js";
import { boot } from "./shell.js";

boot(async (me) => {
  $("home-name").textContent = me.display_name;
  $("home-handle").textContent = `@${me.handle}`;
  $("home-balance").textContent = formatMoney(me.balance, me.currency);
  try {
    const [asAgent, asPayee] = await Promise.all([
      get("/agencies?role=agent&status=active&limit=200"),
      get("/agencies?role=payee&limit=200"),
    ]);
    const parts = [];
    if (asAgent.data.length) parts.push(`You collect for ${asAgent.data.length} payee(s).`);
    if (asPayee.data.length) parts.push(`${asPayee.data.length} agent(s) collect for you.`);
    $("home-roles").textContent = parts.join(" ");
  } catch {
    $("home-roles").textContent = "";
  }
}, { why: "Log in or create an account to take or make payments." });
