// @mitos/cli as a library: run the CLI in-process (used by the tests).
export { EXIT, exitCodeFor, formatError } from "./errors.js";
export { bufferIo, type Io } from "./io.js";
export { buildProgram, run, splitCommand } from "./program.js";
