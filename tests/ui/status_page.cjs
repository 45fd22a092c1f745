// Load the status page in Debian's headless Chromium (playwright-core, no downloaded browser), wait until
// it lists the models, print what it shows as JSON and write a screenshot.
// Usage: NODE_PATH=.cache/npm/node_modules node tests/ui/status_page.cjs URL SCREENSHOT.png MODEL...
"use strict";
const { chromium } = require("playwright-core");

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function main() {
  const [url, screenshot, ...models] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args: FLAGS,
  });
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    page.on("pageerror", (err) => errors.push(String(err)));
    page.on("console", (msg) => { if (msg.type() === "error") errors.push(msg.text()); });
    await page.goto(url, { waitUntil: "load" });
    for (const id of models) {
      await page.locator(`#models tbody tr[data-id="${id}"]`).waitFor({ timeout: 30000 });
    }
    await page.locator("#state.ok").waitFor({ timeout: 30000 });
    const table = (id) => page.$$eval(`#${id} tbody tr`, (trs) => trs.map((tr) => ({
      id: tr.dataset.id || null, cells: [...tr.cells].map((td) => td.textContent.trim()),
    })));
    const result = {
      title: await page.title(),
      state: (await page.textContent("#state")).trim(),
      models: await table("models"),
      queues: await table("queues"),
      workers: await table("workers"),
      throughput: await table("throughput"),
      errors,
    };
    await page.screenshot({ path: screenshot, fullPage: true });
    process.stdout.write(JSON.stringify(result) + "\n");
  } finally {
    await browser.close();
  }
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
