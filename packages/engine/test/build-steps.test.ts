// Template build steps on real microVMs (docs/templates.md "Build steps"):
// the step cache keeps the guest after each init step under a key chained on
// the steps before it, so a rebuild whose step 3 of 4 changed goes on from
// step 2's guest; a failing step says which one, with its exit code and
// stderr; the build log reports each step, cached or run, with its output.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { suiteEngine } from "../../../test-support/suite-engine.js";
import type { BuildEvent } from "../src/build-log.js";
import { MitosError, type TemplateSpec } from "../src/index.js";

const suite = suiteEngine("test-steps");

// New in every run, so the first build's steps are not in the step cache yet.
const marker = `m-${randomBytes(6).toString("hex")}`;
const spec = (third: string): TemplateSpec => ({
  image: "base",
  resources: { memSizeMib: 256 },
  init: [
    `echo ${marker} > /tmp/s1`,
    "date +%s%N > /tmp/s2",
    `echo ${third} | tee /tmp/s3`,
    "cat /tmp/s1 /tmp/s3 > /tmp/all",
  ],
});

const build = async (id: string, s: TemplateSpec) => {
  const events: BuildEvent[] = [];
  const t0 = Date.now();
  const info = await suite.engine.createTemplate(id, s, { onEvent: (e) => events.push(e) });
  return { info, events, ms: Date.now() - t0 };
};
const cachedSteps = (events: BuildEvent[]) =>
  events.flatMap((e) => (e.type === "step" ? [`${e.step}/${e.of}:${e.cached ? "cached" : "run"}`] : []));
const sh = async (id: string, command: string) => {
  const r = await suite.engine.exec(id, { command, timeoutMs: 30_000 }).result;
  assert.equal(r.exitCode, 0, `${command}: ${r.stderr.toString()}`);
  return r.stdout.toString();
};

describe("template build steps", () => {
  it("rebuilding with step 3 of 4 changed reuses steps 1-2 from the step cache", async (t) => {
    const a = await build("steps-a", spec("three-a"));
    assert.deepEqual(cachedSteps(a.events), ["1/4:run", "2/4:run", "3/4:run", "4/4:run"]);
    assert.ok(
      a.events.some((e) => e.type === "output" && e.step === 3 && e.data.includes("three-a")),
      "a step's output is in the build log",
    );
    assert.ok(a.events.some((e) => e.type === "step_done" && e.step === 4 && e.exit_code === 0));
    assert.equal(a.info.steps, 4);

    const b = await build("steps-b", spec("three-b"));
    assert.deepEqual(cachedSteps(b.events), ["1/4:cached", "2/4:cached", "3/4:run", "4/4:run"]);
    assert.ok(b.events.some((e) => e.type === "phase" && e.phase === "restore" && /after step 2/.test(e.message)));
    assert.notEqual(a.info.version, b.info.version, "a changed step is a new version");
    t.diagnostic(`cold build ${a.ms} ms; step 3 changed ${b.ms} ms (steps 1-2 from the step cache)`);

    const sa = (await suite.engine.create("steps-a")).id;
    const sb = (await suite.engine.create("steps-b")).id;
    assert.equal(await sh(sa, "cat /tmp/all"), `${marker}\nthree-a\n`);
    assert.equal(await sh(sb, "cat /tmp/all"), `${marker}\nthree-b\n`);
    // Step 2 stamped the time: the rebuild did not run it again.
    assert.equal(await sh(sb, "cat /tmp/s2"), await sh(sa, "cat /tmp/s2"));

    // The same inputs under another id: the whole template from the cache, same version.
    const again = await build("steps-a-again", spec("three-a"));
    assert.equal(again.info.version, a.info.version);
    assert.ok(again.events.some((e) => e.type === "phase" && e.phase === "cache"));
    assert.deepEqual(cachedSteps(again.events), [], "no step ran or was replayed");
    for (const id of [sa, sb]) await suite.engine.terminate(id);

    // The record survives a restart with what shaped it.
    const reopened = await suite.reopen();
    const kept = reopened.listTemplates().find((x) => x.id === "steps-a");
    assert.equal(kept?.version, a.info.version);
    assert.equal(kept?.steps, 4);
    assert.deepEqual(reopened.templateRecord("steps-a")?.recipe.init, spec("three-a").init);
  });

  it("a failing step returns its index, exit code and stderr; the steps before it stay cached", async () => {
    const broken = spec("three-c");
    broken.init = [...(broken.init ?? [])];
    broken.init[2] = "echo broken-step >&2; exit 7";
    const events: BuildEvent[] = [];
    await assert.rejects(
      suite.engine.createTemplate("steps-c", broken, { onEvent: (e) => events.push(e) }),
      (e: unknown) => {
        assert.ok(e instanceof MitosError);
        assert.equal(e.code, "invalid_input");
        assert.match(e.message, /init step 3 of 4 failed with exit 7/);
        assert.equal(e.context.step, 3);
        assert.equal(e.context.exit_code, 7);
        assert.match(String(e.context.stderr), /broken-step/);
        return true;
      },
    );
    assert.deepEqual(cachedSteps(events), ["1/4:cached", "2/4:cached", "3/4:run"]);
    assert.ok(events.some((e) => e.type === "output" && e.stream === "stderr" && e.data.includes("broken-step")));
    assert.equal(suite.engine.templateRecord("steps-c"), undefined, "nothing half-built is left");
    const fixed = await build("steps-c", spec("three-c"));
    assert.deepEqual(cachedSteps(fixed.events), ["1/4:cached", "2/4:cached", "3/4:run", "4/4:run"]);
  });
});
