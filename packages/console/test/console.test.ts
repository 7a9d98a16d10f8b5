// The web console in a real browser (Debian's chromium driven by
// playwright-core) against a real mitosd and real VMs: sign in, create,
// fork 3 ways and see the tree, a terminal, upload and download, terminate,
// and a wrong token. Screenshots go to test-artifacts/console/.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { type Browser, chromium, type Page } from "playwright-core";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, repoRoot, startMitosd } from "../../../test-support/mitosd.js";

const CHROMIUM = process.env.MITOS_CHROMIUM ?? "/usr/bin/chromium";
const artifacts = path.join(repoRoot, "test-artifacts", "console");
const dataDir = tempDataDir("test-console");
let daemon: Daemon;
let browser: Browser;
let page: Page;
/** Every URL the signed-in page asked for: all must be mitosd's own (no CDN, no font service). */
const requested: string[] = [];

/** The terminal's screen as text, one line per row (xterm's DOM renderer). */
async function screen(): Promise<string> {
  return page.locator(".xterm-rows").innerText();
}

async function waitForScreen(re: RegExp, timeout = 60_000): Promise<RegExpMatchArray[]> {
  const until = Date.now() + timeout;
  for (;;) {
    const matches = [...(await screen()).matchAll(new RegExp(re.source, "g"))];
    if (matches.length > 0) return matches;
    if (Date.now() > until) throw new Error(`terminal never showed ${re}; it shows:\n${await screen()}`);
    await page.waitForTimeout(100);
  }
}

/** Types a command line into the terminal. */
async function run(command: string): Promise<void> {
  await page.locator(".xterm-helper-textarea").focus();
  await page.keyboard.type(command);
  await page.keyboard.press("Enter");
}

/** In the page: the contrast ratio of each visible text element's colour against its background. */
const CONTRAST = `(() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const bg = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest(".xterm") || el.closest("svg")) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    if (el.matches(":disabled") || el.closest("button:disabled")) continue;
    const a = lum(rgb(getComputedStyle(el).color).slice(0, 3));
    const b = lum(bg(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    out.push({ text: el.textContent.trim().slice(0, 40), ratio: Math.round(ratio * 100) / 100 });
  }
  return out;
})()`;

function node(id: string) {
  return page.locator(`li[role="treeitem"][data-id="${id}"]`);
}

describe("web console (real browser, real mitosd)", { timeout: 900_000 }, () => {
  before(async () => {
    fs.mkdirSync(artifacts, { recursive: true });
    daemon = await startMitosd(dataDir);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    page = await browser.newPage({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true });
    page.setDefaultTimeout(120_000);
    page.on("request", (r) => requested.push(r.url()));
  });

  after(async () => {
    await browser?.close();
    await daemon?.stop();
    removeDataDir(dataDir);
  });

  it("a wrong token gets a clear sign-in error, not a blank page", async () => {
    await page.goto(`${daemon.url}/ui/`);
    await page.getByLabel("API token").fill("not-the-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    const error = page.getByTestId("signin-error");
    await error.waitFor();
    const text = await error.innerText();
    assert.match(text, /refused this token \(unauthorized\)/);
    assert.match(text, /token/);
    // The form is still there to try again, and the token is kept nowhere.
    assert.equal(await page.getByRole("button", { name: "Sign in" }).count(), 1);
    assert.equal(await page.evaluate("sessionStorage.getItem('mitos.token')"), null);
    await page.screenshot({ path: path.join(artifacts, "wrong-token.png") });
  });

  let parent = "";
  let parentToken = "";
  let children: string[] = [];

  it("signs in, creates a python sandbox and forks it 3 ways: the tree shows the children within a second", async () => {
    await page.getByLabel("API token").fill(daemon.token);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("button", { name: "New sandbox" }).waitFor();
    // The token is in session storage and never in the address.
    assert.equal(await page.evaluate("sessionStorage.getItem('mitos.token')"), daemon.token);
    assert.ok(!page.url().includes(daemon.token));

    await page.getByLabel("Template").selectOption("python");
    const created = page.waitForResponse((r) => r.url().endsWith("/v1/sandboxes") && r.request().method() === "POST");
    await page.getByRole("button", { name: "New sandbox" }).click();
    const res = await created;
    assert.ok(res.ok(), await res.text());
    const made = (await res.json()) as { id: string; token: string };
    parent = made.id;
    parentToken = made.token;
    await node(parent).waitFor();
    await page.getByTestId("sandbox-page").getByText(parent).waitFor();
    await page.locator(`li[data-id="${parent}"][data-state="ready"]`).waitFor();

    await page.getByLabel("Number of children").fill("3");
    const forked = page.waitForResponse((r) => r.url().endsWith(`/v1/sandboxes/${parent}/fork`));
    await page.getByRole("button", { name: "Fork", exact: true }).click();
    const forkRes = await forked;
    const returned = Date.now();
    assert.equal(forkRes.status(), 200, await forkRes.text());
    children = ((await forkRes.json()) as { sandboxes: Array<{ id: string }> }).sandboxes.map((s) => s.id);
    assert.equal(children.length, 3);
    // The children appear nested under the parent's node, from the live events.
    await page.locator(`li[data-id="${parent}"] li[data-parent="${parent}"]`).nth(2).waitFor({ timeout: 1000 });
    const seenAfter = Date.now() - returned;
    assert.ok(seenAfter < 1000, `the tree showed the children ${seenAfter} ms after the fork returned`);
    for (const c of children) assert.equal(await page.locator(`li[data-id="${parent}"] li[data-id="${c}"]`).count(), 1);
    await page.screenshot({ path: path.join(artifacts, "fork-tree.png"), fullPage: true });
  });

  it("a sandbox's own token is told it reaches only that sandbox, not the console", async () => {
    const other = await browser.newPage();
    await other.goto(`${daemon.url}/ui/`);
    await other.getByLabel("API token").fill(parentToken);
    await other.getByRole("button", { name: "Sign in" }).click();
    await other
      .getByTestId("signin-error")
      .getByText(/That is a sandbox's token/)
      .waitFor();
    await other.close();
  });

  it("opens a terminal on a child: echo runs, and a resize changes stty size", async () => {
    const child = children[0] as string;
    await node(child).locator("button.pick").first().click();
    await page.getByTestId("sandbox-page").getByText(child).waitFor();
    await page.getByRole("button", { name: "Open terminal" }).click();
    await page.getByTestId("terminal-status").getByText("connected").waitFor();
    // Wait for the shell's prompt before typing.
    await waitForScreen(/#/); // the shell's prompt
    await run("echo hi-$((6*7))");
    await waitForScreen(/hi-42/);

    await run("echo S=$(stty size)=");
    const [before] = await waitForScreen(/S=(\d+) (\d+)=/);
    await page.setViewportSize({ width: 1100, height: 800 });
    // The fit addon resizes the terminal, which sends resize; the guest's PTY takes it.
    await page.waitForTimeout(500);
    await run("clear; echo S=$(stty size)=");
    const deadline = Date.now() + 30_000;
    let after = before;
    while (after?.[0] === before?.[0] && Date.now() < deadline) {
      const all = await waitForScreen(/S=(\d+) (\d+)=/);
      after = all[all.length - 1];
      if (after?.[0] === before?.[0]) await page.waitForTimeout(200);
    }
    assert.notEqual(after?.[0], before?.[0], `stty size stayed ${before?.[0]}`);
    await page.screenshot({ path: path.join(artifacts, "terminal.png") });
  });

  it("uploads a file in the browser, cats it in the terminal, downloads it back byte-identical", async () => {
    const text = Buffer.from(`console-upload-${randomBytes(6).toString("hex")}\nsecond line: ünïcödé ✓\n`);
    const binary = randomBytes(1 << 20);
    await page.getByTestId("upload").setInputFiles([
      { name: "hello.txt", mimeType: "text/plain", buffer: text },
      { name: "blob.bin", mimeType: "application/octet-stream", buffer: binary },
    ]);
    await page.getByRole("button", { name: "Download blob.bin" }).waitFor();
    await page.getByRole("button", { name: "Download hello.txt" }).waitFor();

    await page.getByRole("button", { name: "View hello.txt" }).click();
    await page
      .locator(".viewer pre")
      .getByText(text.toString().split("\n")[1] as string)
      .waitFor();
    await page.locator(".viewer").getByRole("button", { name: "Close" }).click();

    await run("clear; cat /root/hello.txt");
    await waitForScreen(new RegExp(text.toString().split("\n")[0] as string));

    for (const [name, want] of [
      ["hello.txt", text],
      ["blob.bin", binary],
    ] as const) {
      const download = page.waitForEvent("download");
      await page.getByRole("button", { name: `Download ${name}` }).click();
      const d = await download;
      assert.equal(d.suggestedFilename(), name);
      const got = fs.readFileSync(await d.path());
      assert.ok(got.equals(want), `${name}: ${got.length} bytes back for ${want.length} sent, or different bytes`);
    }
  });

  it("works from the keyboard, and its text keeps a 4.5:1 contrast", async () => {
    await page.locator(`button.pick[data-node="${parent}"]`).focus();
    // Down the tree to the first child that is not the one shown now.
    let second = "";
    for (let i = 0; i < 3 && (second === "" || second === children[0]); i++) {
      await page.keyboard.press("ArrowDown");
      second = (await page.evaluate("document.activeElement?.dataset?.node")) as string;
    }
    assert.ok(children.includes(second) && second !== children[0], `focus is on ${second}`);
    await page.keyboard.press("Enter");
    await page.getByTestId("sandbox-page").getByText(second).waitFor();
    assert.equal(await node(second).getAttribute("aria-selected"), "true");
    // Every visible text element against the first opaque background behind it (WCAG 2 formula).
    const worst = (await page.evaluate(CONTRAST)) as Array<{ text: string; ratio: number }>;
    assert.ok(worst.length > 20, `only ${worst.length} text elements measured`);
    assert.deepEqual(
      worst.filter((w) => w.ratio < 4.5),
      [],
    );
    await node(children[0] as string)
      .locator("button.pick")
      .first()
      .click();
    await page
      .getByTestId("sandbox-page")
      .getByText(children[0] as string)
      .waitFor();
  });

  it("pauses, resumes and extends the deadline from the sandbox page", async () => {
    const other = children[2] as string;
    await node(other).locator("button.pick").first().click();
    const pageOf = page.getByTestId("sandbox-page");
    await pageOf.getByText(other).waitFor();
    const deadline = async () =>
      (await (
        await fetch(`${daemon.url}/v1/sandboxes/${other}`, { headers: { authorization: `Bearer ${daemon.token}` } })
      ).json()) as {
        state: string;
        deadline_unix: number;
      };
    await page.getByRole("button", { name: "Pause" }).click();
    await pageOf.getByTestId("state").getByText("paused").waitFor();
    await page.locator(`li[data-id="${other}"][data-state="paused"]`).waitFor();
    assert.equal((await deadline()).state, "paused");
    await page.getByRole("button", { name: "Resume" }).click();
    await pageOf.getByTestId("state").getByText("ready").waitFor();
    const before = (await deadline()).deadline_unix;
    await page.getByRole("button", { name: "Extend 10 min" }).click();
    await pageOf.getByText("deadline extended by 10 min").waitFor();
    const after = (await deadline()).deadline_unix;
    assert.ok(after >= before + 590, `deadline ${before} → ${after}`);
    // Back to the child the next test terminates.
    await node(children[0] as string)
      .locator("button.pick")
      .first()
      .click();
    await pageOf.getByText(children[0] as string).waitFor();
  });

  it("terminates a sandbox from the UI: its node leaves the tree", async () => {
    const child = children[0] as string;
    await page.getByRole("button", { name: "Terminate" }).click();
    await node(child).waitFor({ state: "detached", timeout: 30_000 });
    assert.equal(await node(parent).count(), 1);
    assert.equal(await page.locator(`li[data-id="${parent}"] li[data-parent="${parent}"]`).count(), 2);
    await page.screenshot({ path: path.join(artifacts, "after-terminate.png"), fullPage: true });
  });

  it("templates, pools and the host view draw from the API", async () => {
    await page.getByRole("link", { name: "Templates" }).click();
    await page.locator('tr[data-template="python"]').waitFor();
    // A build from the form, its log streamed into the page as it runs.
    await page.getByLabel("Id").fill("console-built");
    // A fresh command each run: the same spec would come from the template cache, with no step to log.
    await page
      .getByLabel("Init commands (one a line)")
      .fill(`echo from-the-build-$((20+22)) ${randomBytes(4).toString("hex")}`);
    await page.getByRole("button", { name: "Build" }).click();
    const log = page.getByTestId("build-log");
    await log.getByText("from-the-build-42").waitFor({ timeout: 300_000 });
    await log.getByText("== built console-built").waitFor({ timeout: 300_000 });
    await page.locator('tr[data-template="console-built"]').waitFor();
    await page.screenshot({ path: path.join(artifacts, "template-build.png"), fullPage: true });
    await page.getByRole("link", { name: "Host" }).click();
    await page.getByText(/ready: \d+/).waitFor();
    // One fork went through: the histogram from /metrics shows it.
    await page.getByRole("table", { name: "Fork latency histogram" }).waitFor();
    await page.getByRole("img", { name: /Host memory over time/ }).waitFor({ timeout: 30_000 });
    await page.screenshot({ path: path.join(artifacts, "host.png"), fullPage: true });
    const origin = new URL(daemon.url).origin;
    const foreign = requested.filter(
      (u) => !u.startsWith(`${origin}/`) && !u.startsWith("blob:") && !u.startsWith("data:"),
    );
    assert.deepEqual(foreign, []);
    assert.ok(requested.length > 10);
  });

  it("hundreds of children stay readable: the first few, a count of the rest, folding (events faked)", async () => {
    // The browser's view of a 300-way fork without 300 VMs: the events stream is replaced, the rest is real.
    const pg = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const at = (i: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString();
    const sb = (id: string, parentId: string | null, i: number) => ({
      id,
      template_id: "python",
      parent_id: parentId,
      state: i % 7 === 3 ? "paused" : "ready",
      created_at: at(i),
      deadline_unix: 2_000_000_000,
      fork_time_ms: 1,
      accel: "tcg",
      memory: { private_bytes: (i + 1) << 20, shared_bytes: 1 << 28 },
    });
    const kids = Array.from({ length: 300 }, (_, i) => sb(`sb-k${String(i).padStart(3, "0")}`, "sb-root", i + 1));
    const snapshot = {
      sandboxes: [sb("sb-root", null, 0), ...kids, sb("sb-g1", "sb-k000", 400), sb("sb-g2", "sb-k000", 401)],
    };
    await pg.route("**/v1/events", (route) =>
      route.fulfill({
        status: 200,
        headers: { "content-type": "text/event-stream" },
        body: `event: snapshot\ndata: ${JSON.stringify(snapshot)}\n\n`,
      }),
    );
    await pg.goto(`${daemon.url}/ui/`);
    await pg.getByLabel("API token").fill(daemon.token);
    await pg.getByRole("button", { name: "Sign in" }).click();
    const root = pg.locator('li[data-id="sb-root"]');
    await root.waitFor();
    assert.match(await root.locator("> .node").innerText(), /302 below/);
    const direct = root.locator('> ul > li[role="treeitem"]');
    assert.equal(await direct.count(), 12);
    await root.getByRole("button", { name: "show 288 more" }).click();
    assert.equal(await direct.count(), 300);
    assert.equal(await pg.locator('li[data-id="sb-k000"] li[role="treeitem"]').count(), 2);
    await pg.getByRole("button", { name: /^Fold sb-root/ }).click();
    assert.equal(await direct.count(), 0);
    assert.equal(await root.getAttribute("aria-expanded"), "false");
    await pg.screenshot({ path: path.join(artifacts, "many-children-folded.png") });
    await pg.close();
  });

  it("in the loopback no-auth mode there is no sign-in: create, and a terminal without a token", async () => {
    await daemon.stop();
    daemon = await startMitosd(dataDir, ["--auth", "none"]);
    const fresh = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page = fresh;
    await page.goto(`${daemon.url}/ui/`);
    await page.getByRole("button", { name: "New sandbox" }).waitFor();
    assert.equal(await page.getByRole("button", { name: "Sign out" }).count(), 0);
    await page.getByRole("button", { name: "New sandbox" }).click();
    await page.locator('li[role="treeitem"][data-state="ready"]').first().waitFor();
    await page.getByRole("button", { name: "Open terminal" }).click();
    await page.getByTestId("terminal-status").getByText("connected").waitFor();
    await waitForScreen(/#/); // the shell's prompt
    await run("echo open-$((40+2))");
    await waitForScreen(/open-42/);
  });
});
