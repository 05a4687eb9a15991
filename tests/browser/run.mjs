// Browser tests of the demos in real Chromium (Debian's), driven by playwright-core.
// usage: node run.mjs BASE_URL CONTROL_SOCKET API_KEY [SCREENSHOT_DIR]
// Prints one line per check and "N passed, M failed"; exits 1 on any failure.
import { chromium } from "playwright-core";
import net from "node:net";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const [base, controlSocket, apiKey, shots = fs.mkdtempSync(path.join(os.tmpdir(), "syncd-shots-"))] = process.argv.slice(2);
let passed = 0, failed = 0;
const deadline = (ms) => Date.now() + ms;

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok: ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAILED: ${name}: ${e.stack || e}`);
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

async function until(what, fn, ms = 15000) {
  const end = deadline(ms);
  for (;;) {
    try { if (await fn()) return; } catch {}
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function status() {
  return new Promise((resolve, reject) => {
    const socket = net.connect(controlSocket, () => socket.write('{"cmd":"status"}\n'));
    let text = "";
    socket.on("data", (d) => { text += d; if (text.includes("\n")) { socket.end(); resolve(JSON.parse(text)); } });
    socket.on("error", reject);
  });
}

async function api(method, p, body) {
  const r = await fetch(base + p, {
    method, body: body && JSON.stringify(body),
    headers: { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" },
  });
  return { status: r.status, body: await r.text() };
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

async function open(url) {
  const page = await (await browser.newContext({ viewport: { width: 760, height: 560 } })).newPage();
  page.on("pageerror", (e) => console.log(`page error on ${url}: ${e}`));
  await page.goto(base + url);
  await page.waitForSelector("body[data-ready='1']", { timeout: 15000 });
  return page;
}

const seatClass = (page, key) => page.getAttribute(`#seat-${key}`, "class");

await check("two pages racing for one seat: exactly one wins, both agree", async () => {
  const [a, b] = await Promise.all([open("/demo/seats?show=race&name=ann"), open("/demo/seats?show=race&name=ben")]);
  await Promise.all([a.click("#seat-C5"), b.click("#seat-C5")]);
  await until("both pages settle", async () => {
    const [ca, cb] = [await seatClass(a, "C5"), await seatClass(b, "C5")];
    return ca !== "seat" && cb !== "seat";
  });
  const [ca, cb] = [await seatClass(a, "C5"), await seatClass(b, "C5")];
  const winners = [ca, cb].filter((c) => c.includes("mine")).length;
  assert(winners === 1, `winners: ${winners} (${ca} / ${cb})`);
  const loser = ca.includes("mine") ? b : a;
  await until("the loser is told", async () => /just taken|already taken/.test(await loser.textContent("#toast")));
  const holderA = await a.getAttribute("#seat-C5", "title");
  const holderB = await b.getAttribute("#seat-C5", "title");
  assert(holderA === holderB, `pages disagree: ${holderA} / ${holderB}`);
  await a.click("#seat-A1");
  await until("the other page sees A1 taken", async () => (await seatClass(b, "A1")).includes("taken"));
  await b.screenshot({ path: path.join(shots, "seats.png") });
  await a.context().close(); await b.context().close();
});

await check("after kill -9 of every worker and a reload, pages reconnect and catch up", async () => {
  const [a, b] = await Promise.all([open("/demo/seats?show=kill&name=cat"), open("/demo/seats?show=kill&name=dan")]);
  const before = await status();
  for (const w of before.workers) if (w.pid) process.kill(w.pid, "SIGKILL");
  // Each page counts its drops: polling the state itself could miss a quick reconnect.
  for (const page of [a, b]) {
    await until("the page saw its connection drop", async () => Number(await page.getAttribute("body", "data-drops")) >= 1, 5000);
  }
  // Changed while the pages are away (retried until the owner is back).
  await until("the backend's write lands", async () =>
    (await api("PUT", "/api/state?channel=kill&key=D4", { value: { by: "box-office" }, version: 0 })).status === 200);
  for (const page of [a, b]) {
    await until("reconnected", async () => (await page.getAttribute("body", "data-state")) === "open");
    await until("caught up with D4", async () => (await seatClass(page, "D4")).includes("taken"));
  }
  await a.click("#seat-E2");
  await until("live again", async () => (await seatClass(b, "E2")).includes("taken"));
  const after = await status();
  assert(after.workers.every((w, i) => w.pid && w.pid !== before.workers[i].pid), "workers were replaced");
  // And through a rolling reload (SIGUSR1 to the master), without a page reload.
  process.kill(after.pid, "SIGUSR1");
  await until("the reload finished", async () => (await status()).reloads > after.reloads);
  for (const page of [a, b]) {
    await until("open after the reload", async () => (await page.getAttribute("body", "data-state")) === "open");
  }
  await until("a click after the reload reaches the other page", async () => {
    if (!(await seatClass(a, "F9")).includes("mine")) await a.click("#seat-F9");
    return (await seatClass(b, "F9")).includes("taken");
  });
  await a.context().close(); await b.context().close();
});

await check("chat messages appear in both pages", async () => {
  const [a, b] = await Promise.all([open("/demo/chat?room=test&name=eve"), open("/demo/chat?room=test&name=fay")]);
  await a.fill("input[name=text]", "hello from eve");
  await a.press("input[name=text]", "Enter");
  await b.fill("input[name=text]", "hi eve, fay here");
  await b.press("input[name=text]", "Enter");
  for (const page of [a, b]) {
    await until("both messages", async () => {
      const text = await page.textContent("#log");
      return text.includes("hello from eve") && text.includes("hi eve, fay here");
    });
  }
  await b.screenshot({ path: path.join(shots, "chat.png") });
  await a.context().close(); await b.context().close();
});

await browser.close();
console.log(`screenshots: ${shots}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
