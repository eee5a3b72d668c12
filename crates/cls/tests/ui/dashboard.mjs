// The /ui dashboard in headless Chromium against a running `cls up` (CLS_BASE, e.g. http://127.0.0.1:PORT).
// Run by crates/cls/tests/dashboard.rs; by hand: CLS_BASE=http://127.0.0.1:8080 node dashboard.mjs
//
// 1. Without a token the page asks for one; "Continue without" closes the form, and the API refuses it (token needed).
// 2. With #token=CLS_TOKEN it drops the token from the address bar and sends it as `Authorization: Bearer`.
// 3. A Cluster and a Service created through the API appear without a reload (watch), Pending.
// 4. A controller registers and reports Available=True: the card turns Ready and the report shows.
// Screenshots go to CLS_UI_ARTIFACTS (default ./artifacts). Exits non-zero on the first failed expectation.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.CLS_BASE;
const token = process.env.CLS_TOKEN;
if (!base || !token) {
  console.error("set CLS_BASE to the API's base URL and CLS_TOKEN to an admin token");
  process.exit(2);
}
const artifacts = process.env.CLS_UI_ARTIFACTS || "artifacts";
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const WAIT = 20_000;
mkdirSync(artifacts, { recursive: true });

const deadline = setTimeout(() => {
  console.error("FAIL: the dashboard test did not finish within 120 s");
  process.exit(1);
}, 120_000);

function expect(condition, message) {
  if (!condition) throw new Error(message);
  console.log("ok - " + message);
}

async function api(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { "content-type": "application/json", authorization: "Bearer " + token },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  page = await context.newPage();
  page.on("console", (message) => console.log("browser " + message.type() + ": " + message.text()));
  page.on("pageerror", (error) => console.log("browser error: " + error.message));

  // 1. no token: the page asks for one
  await page.goto(base + "/ui");
  await page.waitForSelector("#token-panel.open", { timeout: WAIT });
  expect(await page.isVisible("#token-input"), "without a token the page asks for one");
  await page.click("#token-skip");
  await page.waitForSelector("#token-panel", { state: "hidden", timeout: WAIT });
  expect(true, "'Continue without' closes the token form");
  await page.waitForSelector('#live[data-state="unauthorized"]', { timeout: WAIT });
  expect(true, "without a token the API refuses the page, which says a token is needed");

  // 2. a token in the fragment is used and removed from the address bar
  const authorizations = [];
  page.on("request", (request) => {
    if (request.url().includes("/apis/cls.dev/")) authorizations.push(request.headers()["authorization"] || "");
  });
  await page.goto("about:blank");
  await page.goto(base + "/ui#token=" + token);
  await page.waitForSelector('#live[data-state="live"]', { timeout: WAIT });
  expect(!page.url().includes("token"), "the token is removed from the address bar");
  expect(authorizations.length >= 3 && authorizations.every((value) => value === "Bearer " + token),
    `every API request carries the bearer token (${authorizations.length} requests)`);
  expect(!(await page.isVisible("#token-panel.open")), "with a token the page does not ask for one");

  // 3. objects created through the API appear live
  const cluster = await api("POST", "/apis/cls.dev/v1alpha1/namespaces/default/clusters", {
    apiVersion: "cls.dev/v1alpha1", kind: "Cluster",
    metadata: { name: "dash-demo", namespace: "default", labels: { env: "demo" } },
    spec: { platform: { type: "dashtest", region: "laptop-1" }, release: { version: "1.4.2", channel: "stable" } },
  });
  await api("POST", "/api/v1/services", {
    apiVersion: "cls.dev/v1alpha1", kind: "Service", metadata: { name: "web", namespace: "default" },
    spec: { clusterRef: { name: "dash-demo" }, run: { command: ["python3", "-m", "http.server"] },
      ports: [{ name: "http", port: 8000, protocol: "TCP" }] },
  });
  await api("POST", "/api/v1/services", {
    apiVersion: "cls.dev/v1alpha1", kind: "Service", metadata: { name: "api", namespace: "default" },
    spec: { clusterRef: { name: "dash-demo" }, dependsOn: ["web"], replicas: 2, image: "example/api:1.0",
      ports: [{ name: "grpc", port: 9000, protocol: "TCP" }] },
  });
  const card = '[data-kind="Cluster"][data-name="dash-demo"]';
  await page.waitForSelector(card + ' [data-kind="Service"][data-name="api"]', { timeout: WAIT });
  const before = await page.getAttribute(card, "data-phase");
  expect(before !== "Ready", `the new cluster is shown, not Ready (${before})`);
  expect((await page.textContent(card)).includes("laptop-1"), "the card shows the platform region");
  await page.screenshot({ path: join(artifacts, "dashboard-pending.png"), fullPage: true });

  // 4. a controller reports: the page turns Ready without a reload
  await api("PUT", "/api/v1/controllers/x", {
    apiVersion: "cls.dev/v1alpha1", kind: "Controller", metadata: { name: "x" },
    spec: { kinds: ["Cluster"], platforms: ["dashtest"], description: "dashboard test" },
  });
  await page.waitForSelector('[data-kind="Controller"][data-name="x"]', { timeout: WAIT });
  expect(true, "the registered controller is listed");
  await api("PUT", `/api/v1/clusters/${cluster.metadata.uid}/status`, {
    controller: "x", observedGeneration: 1,
    conditions: [{ type: "Available", status: "True", reason: "Provisioned", message: "all nodes up" }],
    data: { endpoint: "https://dash-demo.example" },
  });
  await page.waitForSelector(card + '[data-phase="Ready"]', { timeout: WAIT });
  expect(true, "the cluster turns Ready when the controller reports Available=True");
  const report = await page.textContent(card + ' [data-controller="x"]');
  expect(report.includes("Available=True"), "the controller's report is shown with its conditions");
  const events = await page.textContent("#events");
  expect(events.includes("→ Ready"), "the recent events show the transition to Ready");

  const metrics = await (await fetch(base + "/metrics")).text();
  const watchers = Number((metrics.match(/^cls_api_watchers (\d+)/m) || [])[1]);
  expect(watchers >= 3, `the page holds its watch streams open (cls_api_watchers ${watchers})`);

  await page.screenshot({ path: join(artifacts, "dashboard.png"), fullPage: true });
  console.log("screenshot: " + join(artifacts, "dashboard.png"));
  console.log("dashboard: every expectation met");
} catch (error) {
  console.error("FAIL: " + error.message);
  if (page) await page.screenshot({ path: join(artifacts, "dashboard-failure.png"), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
  clearTimeout(deadline);
}
