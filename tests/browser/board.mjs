// board.mjs — drives order-api's live order board (GET /) in Debian's
// chromium through playwright-core, for tests/board_check.py.
//
// Environment: BOARD_URL (the page), BOARD_TOKEN (an API token), BOARD_OUT
// (the folder for the screenshots), BOARD_SERVICES (space-separated: the
// services the queue table must show), BOARD_LIVE (space-separated: those
// whose depth must be a number). The page must be clean under its
// Content-Security-Policy: every console error and every
// securitypolicyviolation event fails the run (the page's scripts and
// styles come from its own files, none inline). An order placed with plain
// HTTP (node's fetch, not the page) while the page is open must appear and
// reach CONFIRMED on it without a reload. Prints one JSON line per check:
// {"name": ..., "ok": true|false, "detail": ...}. Every wait is bounded.
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const url = process.env.BOARD_URL;
const token = process.env.BOARD_TOKEN;
const out = process.env.BOARD_OUT;
const services = (process.env.BOARD_SERVICES || "").split(" ").filter(Boolean);
const live = (process.env.BOARD_LIVE || "").split(" ").filter(Boolean);

function report(name, ok, detail = "") {
  console.log(JSON.stringify({ name, ok: Boolean(ok), detail: String(detail) }));
}

async function run(page, tag) {
  // The screenshot is saved however the run ends: a failed one needs it most.
  try {
    await runChecks(page, tag);
  } finally {
    await page.screenshot({ path: `${out}/board-${tag}.png`, fullPage: true }).catch(() => {});
  }
}

async function placeElsewhere(tag) {
  const r = await fetch(new URL("/orders", url), {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify({ customer_id: `curl-${tag}`, customer_email: "curl@example.com",
                           currency: "EUR", items: [{ sku: process.env.BOARD_SKU, quantity: 1 }] }),
  });
  const doc = await r.json().catch(() => ({}));
  return r.status === 201 ? doc.id : null;
}

// Runs sql with psql as OWNER_DATABASE_URL (password in PGPASSWORD, never on
// the command line); each of vars is a psql variable, used as :'name' (on
// stdin, where psql interpolates them); returns its output, trimmed.
function psql(sql, vars = {}) {
  const u = new URL(process.env.OWNER_DATABASE_URL);
  const bare = `postgresql://${u.username}@${u.hostname}:${u.port}${u.pathname}${u.search}`;
  const args = ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"];
  for (const [k, v] of Object.entries(vars)) args.push("-v", `${k}=${v}`);
  return execFileSync("psql", [...args, bare],
                      { input: sql, env: { ...process.env, PGPASSWORD: decodeURIComponent(u.password) },
                        encoding: "utf8", timeout: 30000 }).trim();
}

// An order of the board's client that the page first sees PENDING and that
// moves only after that (written here, as a consumer would: the status and
// a timeline entry, whose trigger NOTIFYs the streams). While the 4 stuck
// orders (board_check.py) held every stream slot, such an order waited for a
// slot and stayed PENDING on the page; an order placed with HTTP passed only
// when the page's first look already found it CONFIRMED.
async function movesAfterSeenPending(page, tag) {
  const id = psql("WITH o AS (INSERT INTO orders.orders (id, client_id, customer_id, customer_email,"
    + " currency, total_minor, status) VALUES (gen_random_uuid(), 'board', 'board-moved',"
    + " 'moved@example.com', 'EUR', 100, 'PENDING') RETURNING id)"
    + " INSERT INTO orders.order_timeline (order_id, status) SELECT id, 'PENDING' FROM o RETURNING order_id");
  const st = page.locator(`tr[data-order-id="${id}"] .status`);
  let pending = true;
  try {
    await st.filter({ hasText: "PENDING" }).waitFor({ timeout: 20000 });
  } catch (e) {
    pending = false;
  }
  report(`${tag}_an_order_first_seen_pending_appears`, pending,
         await st.count() ? await st.textContent() : "not on the page");
  if (!pending) return;
  psql("BEGIN; UPDATE orders.orders SET status = 'CONFIRMED' WHERE id = :'id';"
       + " INSERT INTO orders.order_timeline (order_id, status) VALUES (:'id', 'CONFIRMED'); COMMIT;",
       { id });
  let seen = true;
  try {
    await st.filter({ hasText: "CONFIRMED" }).waitFor({ timeout: 20000 });
  } catch (e) {
    seen = false;
  }
  report(`${tag}_an_order_first_seen_pending_reaches_confirmed_live`, seen,
         `status ${await st.textContent()}`);
}

async function runChecks(page, tag) {
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(`console: ${m.text()}`); });
  // Registered before any of the page's own scripts run.
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`
                                  + ` (${e.sourceFile || ""}:${e.lineNumber || 0})`);
    });
  });
  await page.goto(url);
  await page.waitForSelector("#sku option", { state: "attached", timeout: 15000 });
  report(`${tag}_the_catalog_fills_the_form`, (await page.locator("#sku option").count()) > 0);

  // The token goes in by label, as a user would, and by keyboard (Enter).
  await page.getByLabel(/Bearer token/).fill(token);
  await page.getByLabel(/Bearer token/).press("Enter");
  const stored = await page.evaluate(() => sessionStorage.getItem("ordersuite-token"));
  report(`${tag}_the_token_is_kept_in_session_storage`, stored === token);
  // The field is emptied once the token is taken (a serialised page never
  // holds an input's value, so the field itself is asked).
  const field = await page.locator("#token").inputValue();
  const shown = await page.evaluate(() => document.body.innerText);
  report(`${tag}_the_page_does_not_show_the_token`, field === "" && !shown.includes(token),
         `field length ${field.length}`);

  await page.getByLabel("Quantity").fill("1");
  await page.getByLabel("Customer id").fill(`board-${tag}`);
  // The desktop page submits the form with the mouse, the phone page by
  // keyboard (Enter in a field of the form).
  if (tag === "phone") await page.getByLabel("Customer id").press("Enter");
  else await page.getByRole("button", { name: "Place order" }).click();
  const msg = page.locator("#message");
  await msg.filter({ hasText: /placed|Refused|did not/ }).waitFor({ timeout: 15000 }).catch(() => {});
  const text = await msg.textContent();
  const m = /Order ([0-9a-f-]{36}) placed/.exec(text || "");
  report(`${tag}_the_form_places_an_order` + (tag === "phone" ? "_submitted_by_keyboard" : ""),
         m, text);
  if (!m) return;
  const id = m[1];
  // No reload from here on: the status must change through the stream.
  const navigations = [];
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  const status = page.locator(`tr[data-order-id="${id}"] .status`);
  let confirmed = true;
  try {
    await status.filter({ hasText: "CONFIRMED" }).waitFor({ timeout: 45000 });
  } catch (e) {
    confirmed = false;
  }
  report(`${tag}_the_order_reaches_confirmed_live`, confirmed && navigations.length === 0,
         `status ${await status.textContent()}, navigations ${navigations.length}`);
  // A closed <details> still holds its entries (textContent reads them):
  // what Enter opened is asked of the element and of what is on screen.
  const det = page.locator(`tr[data-order-id="${id}"] details`);
  const before = await det.evaluate((d) => d.open);
  await page.locator(`tr[data-order-id="${id}"] summary`).focus();
  await page.keyboard.press("Enter");
  const opened = await det.evaluate((d) => d.open);
  const items = page.locator(`tr[data-order-id="${id}"] ol.timeline li`);
  const visible = [];
  for (let i = 0; i < await items.count(); i++)
    if (await items.nth(i).isVisible()) visible.push(await items.nth(i).textContent());
  report(`${tag}_enter_on_the_timeline_opens_it`, !before && opened,
         `open before ${before}, after ${opened}`);
  report(`${tag}_the_timeline_shows_each_status`,
         ["PENDING", "RESERVED", "CONFIRMED"].every((s) => visible.some((t) => t.startsWith(s))),
         `visible: ${visible.join(" | ")}`);

  // An order placed elsewhere (plain HTTP, not this page) while it is open.
  const other = await placeElsewhere(tag);
  report(`${tag}_an_order_placed_elsewhere_is_accepted`, other, other);
  if (other) {
    const st = page.locator(`tr[data-order-id="${other}"] .status`);
    let seen = true;
    try {
      await st.filter({ hasText: "CONFIRMED" }).waitFor({ timeout: 45000 });
    } catch (e) {
      seen = false;
    }
    report(`${tag}_an_order_placed_elsewhere_appears_and_reaches_confirmed_live`,
           seen && navigations.length === 0,
           `status ${await st.count() ? await st.textContent() : "not on the page"}, `
           + `navigations ${navigations.length}`);
  }

  await movesAfterSeenPending(page, tag);

  // The queue table refreshes every 3 s; wait for every service's row.
  let rows = {};
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    rows = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll("#queues tbody tr")]
      .map((tr) => [tr.dataset.service, [...tr.cells].slice(1).map((c) => c.textContent)])));
    if (services.every((s) => s in rows) && live.every((s) => /^\d+$/.test((rows[s] || [])[0] || "")
                                                         && /^\d+$/.test((rows[s] || [])[1] || ""))) break;
    await page.waitForTimeout(250);
  }
  report(`${tag}_the_queue_table_shows_every_service`, services.every((s) => s in rows),
         JSON.stringify(rows));
  report(`${tag}_the_running_services_queue_depths_are_numbers`,
         live.every((s) => /^\d+$/.test((rows[s] || [])[0] || "") && /^\d+$/.test((rows[s] || [])[1] || "")),
         JSON.stringify(rows));
  report(`${tag}_no_script_or_console_errors`, consoleErrors.length === 0, consoleErrors.join(" | "));
  const violations = await page.evaluate(() => window.__cspViolations || ["the listener never ran"]);
  report(`${tag}_no_content_security_policy_violations`, violations.length === 0,
         violations.join(" | "));
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const desktop = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await run(desktop, "desktop");
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await run(phone, "phone");
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  report("phone_the_page_does_not_scroll_sideways", !overflow);
} catch (e) {
  report("the_browser_run_finished", false, e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
