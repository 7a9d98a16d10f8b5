#!/usr/bin/env node
// mitos: the Mitos command-line interface. See `mitos --help`.
import { run } from "../program.js";

const code = await run(process.argv.slice(2));
// Let buffered output reach pipes, then exit even if a connection lingers.
process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
