// Browser tests of the demos in real Chromium (Debian's), driven by playwright-core.
// usage: node run.mjs BASE_URL CONTROL_SOCKET API_KEY [SCREENSHOT_DIR]
// SYNCD_SHARDS: the server's [storage] shards (default 16, syncd's default).
// Prints one line per check and "N passed, M failed"; exits 1 on any failure.
// tests/browser.rs runs it with TMPDIR and SCREENSHOT_DIR inside the server's
// temp dir, so neither Chromium's profile nor the screenshots outlive the test.
import { chromium } from "playwright-core";
import net from "node:net";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import crypto from "node:crypto";

const [base, controlSocket, apiKey, shotsArg] = process.argv.slice(2);
const shots = shotsArg ?? fs.mkdtempSync(path.join(os.tmpdir(), "syncd-shots-"));
fs.mkdirSync(shots, { recursive: true });
const shards = Number(process.env.SYNCD_SHARDS || 16);
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

// A request on the master's control socket: "status" or "connections".
function control(cmd) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(controlSocket, () => socket.write(JSON.stringify({ cmd }) + "\n"));
    let text = "";
    socket.on("data", (d) => { text += d; if (text.includes("\n")) { socket.end(); resolve(JSON.parse(text)); } });
    socket.on("error", reject);
  });
}
const status = () => control("status");

// The worker slot owning a channel: FNV-1a 64 of its bytes, % shards, %
// workers (src/sync/shard.rs).
function ownerSlot(channel, workers) {
  let h = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(channel)) h = ((h ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return Number(h % BigInt(shards)) % workers;
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

await check("kill -9 of a channel's owner five times: both pages get every next message", async () => {
  const channel = "owner-kill";
  const slot = ownerSlot(channel, (await status()).workers.length);
  // Two pages using syncd.js directly. state() right after connect() is the
  // docs' pattern: it waits in the queue until the socket is open.
  const refused = [0, 0]; // `unavailable` replies per page: the retry path at work
  const pages = await Promise.all([0, 1].map(async (i) => {
    const page = await (await browser.newContext()).newPage();
    page.on("pageerror", (e) => console.log(`page error: ${e}`));
    page.on("websocket", (ws) => ws.on("framereceived", ({ payload }) => {
      if (String(payload).includes('"code":"unavailable"')) refused[i]++;
    }));
    await page.goto(base + "/demo/");
    await page.evaluate(async (channel) => {
      const { SyncClient } = await import("/syncd.js");
      // A short backoff: the pages come back while the owner is still
      // restarting, so their resubscriptions meet `unavailable`.
      const client = new SyncClient(`ws://${location.host}/ws`, { minDelay: 20 });
      Object.assign(window, { client, seqs: [], states: [], resyncs: 0 });
      client.addEventListener("state", (e) => states.push(e.detail));
      client.addEventListener("resync", () => resyncs++);
      // Drops the connection and resolves once a new one is open with every
      // channel resubscribed (the kernel hands it to a random worker).
      window.reconnect = () => new Promise((resolve, reject) => {
        let dropped = false;
        const timer = setTimeout(() => reject(new Error(`no reconnect: ${client.status}`)), 15000);
        const on = (e) => {
          if (e.detail === "closed") dropped = true;
          if (dropped && e.detail === "open") {
            client.removeEventListener("state", on);
            clearTimeout(timer);
            resolve();
          }
        };
        client.addEventListener("state", on);
        client.close();
        client.connect();
      });
      client.connect();
      const snapshot = await client.state(channel);
      await client.subscribe(channel, (m) => { if (m.op === "msg") seqs.push(m.seq); },
                             { since: snapshot.seq, epoch: snapshot.epoch });
    }, channel);
    return page;
  }));
  // Publishes once (the idempotency key makes retries safe while the owner
  // is away), then waits for both pages to have every seq exactly once.
  let last = 0;
  async function publishAndSee(round) {
    let seq;
    await until(`publish ${round} accepted`, async () => {
      const r = await api("POST", "/api/publish", { channel, data: { round }, idempotency_key: `round-${round}` });
      if (r.status === 200) seq = JSON.parse(r.body).seq;
      return r.status === 200;
    });
    assert(seq === last + 1, `round ${round}: seq ${seq} after ${last}`);
    last = seq;
    for (const [i, page] of pages.entries()) {
      await until(`page ${i} gets seq ${seq} (round ${round})`, async () => (await page.evaluate(() => seqs)).includes(seq));
      const seqs = await page.evaluate(() => seqs);
      assert(seqs.join() === Array.from({ length: seq }, (_, k) => k + 1).join(),
             `page ${i} after round ${round}: seqs ${seqs.join()} (want 1..${seq}, no gap, no duplicate)`);
    }
  }
  // Both pages on the owner, so that each kill drops both connections and
  // both must resubscribe while the owner restarts (the flake's situation).
  // A page on the other worker would just stay subscribed.
  async function bothOnOwner(round) {
    for (let tries = 0; ; tries++) {
      let ws;
      await until("both pages listed", async () => {
        ws = (await control("connections")).connections.filter((c) => c.protocol === "ws");
        return ws.length === 2;
      });
      if (ws.every((c) => c.worker === slot)) return tries;
      assert(tries < 40, `round ${round}: pages never both landed on worker ${slot}`);
      await Promise.all(pages.map((page) => page.evaluate(() => reconnect())));
    }
  }
  let moves = 0;
  await publishAndSee(0);
  for (let round = 1; round <= 5; round++) {
    moves += await bothOnOwner(round);
    const pid = (await status()).workers[slot].pid;
    process.kill(pid, "SIGKILL");
    // Back once the master lists a new pid for the slot and it answers (ready).
    await until(`owner slot ${slot} restarted (round ${round})`, async () => {
      const w = (await status()).workers[slot];
      return w.pid && w.pid !== pid && w.stats;
    });
    await publishAndSee(round);
  }
  console.log(`  ${moves} reconnects to put both pages on the owner`);
  for (const [i, page] of pages.entries()) {
    await until(`page ${i} open`, async () => (await page.evaluate(() => client.status)) === "open");
    const { states, resyncs } = await page.evaluate(() => ({ states, resyncs }));
    assert(resyncs === 0, `page ${i}: ${resyncs} resync events (a resume lost messages)`);
    const count = (s) => states.filter((x) => x === s).length;
    console.log(`  page ${i}: ${count("closed")} drops, ${count("resubscribing")} times resubscribing, ${refused[i]} unavailable replies retried`);
  }
  for (const page of pages) await page.context().close();
});

// An HS256 token signed with the test server's secret (tests/common: "test-secret").
function mintToken(sub, exp) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp })}`;
  return `${body}.${crypto.createHmac("sha256", "test-secret").update(body).digest("base64url")}`;
}

await check("a page refreshes its token through getToken() when the server asks", async () => {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.log(`page error: ${e}`));
  const sent = [];
  page.on("websocket", (ws) => ws.on("framesent", ({ payload }) => sent.push(String(payload))));
  let minted = 0;
  await page.exposeFunction("freshToken", () => {
    minted++;
    return mintToken("ivy", Math.floor(Date.now() / 1000) + 600);
  });
  await page.goto(base + "/demo/");
  // 15 s left: enough not to be replaced before connecting (syncd.js
  // fetches first when under 10 s), and under the 30 s in which the server
  // sends refresh_needed at once.
  const exp = Math.floor(Date.now() / 1000) + 15;
  await page.evaluate(async (token) => {
    const { SyncClient } = await import("/syncd.js");
    const client = new SyncClient(`ws://${location.host}/ws`, { token, getToken: () => window.freshToken() });
    Object.assign(window, { client, drops: 0 });
    client.addEventListener("state", (e) => { if (e.detail === "closed") drops++; });
    client.connect();
    await client.state("refresh-room");
  }, mintToken("ivy", exp));
  await until("the page answered refresh_needed with a fresh token", async () =>
    minted >= 1 && sent.some((f) => f.includes('"op":"refresh"')));
  await until("the connection carries the fresh token", async () =>
    (await page.evaluate(() => client.token)) !== null &&
    JSON.parse(Buffer.from((await page.evaluate(() => client.token)).split(".")[1], "base64url")).exp > exp);
  const { drops, status } = await page.evaluate(() => ({ drops, status: client.status }));
  assert(drops === 0 && status === "open", `drops ${drops}, status ${status}`);
  await page.context().close();
});

await check("the landing page links the demos and shows its live connection", async () => {
  const page = await (await browser.newContext({ viewport: { width: 760, height: 560 } })).newPage();
  page.on("pageerror", (e) => console.log(`page error on /: ${e}`));
  await page.goto(base + "/");
  await page.waitForSelector("body[data-state='open']", { timeout: 15000 });
  assert((await page.textContent("#status")) === "open", "the badge says open");
  assert(await page.$("a[href='/demo/seats']"), "links the seat demo");
  await page.screenshot({ path: path.join(shots, "landing.png") });
  await page.context().close();
});

await check("syncd.js follows history and state pages by itself", async () => {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.log(`page error: ${e}`));
  await page.goto(base + "/demo/");
  const got = await page.evaluate(async () => {
    const { SyncClient } = await import("/syncd.js");
    const client = new SyncClient(`ws://${location.host}/ws`);
    client.connect();
    // 2 KiB messages: a server page holds about 120 of them (a quarter of max_frame).
    const pad = "x".repeat(2048);
    for (let i = 0; i < 1000; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, k) => client.publish("paged", { n: i + k, pad })));
    }
    for (let i = 0; i < 1200; i += 200) {
      await Promise.all(Array.from({ length: 200 }, (_, k) => client.set("paged-keys", `k${String(i + k).padStart(4, "0")}`, i + k, 0)));
    }
    const all = await client.history("paged", 0, Infinity);
    const some = await client.history("paged", 0, 300);
    const state = await client.state("paged-keys");
    client.close();
    return {
      seqs: all.messages.map((m) => m.seq).join(), more: all.more,
      some: some.messages.length, someMore: some.more, cursor: some.cursor,
      keys: Object.keys(state.keys).length, seq: state.seq,
    };
  });
  const want = Array.from({ length: 1000 }, (_, k) => k + 1).join();
  assert(got.seqs === want && got.more === false, `history(Infinity): ${got.seqs.slice(0, 80)}… more ${got.more}`);
  assert(got.some === 300 && got.someMore === true && got.cursor === 300, `history(300): ${JSON.stringify(got)}`);
  assert(got.keys === 1200 && got.seq === 1200, `state: ${got.keys} keys at seq ${got.seq}`);
  await page.context().close();
});

await browser.close();
console.log(`screenshots: ${shots}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
