import { get } from "./api.js";
import { $ } from "./dom.js";
import { t } from "./i18n.js";
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
    if (asAgent.data.length) parts.push(t("Payees you collect for: {count}.", { count: asAgent.data.length }));
    if (asPayee.data.length) parts.push(t("Agents who collect for you: {count}.", { count: asPayee.data.length }));
    $("home-roles").textContent = parts.join(" ");
  } catch {
    $("home-roles").textContent = "";
  }
}, { watch: true });
