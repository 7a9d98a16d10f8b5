// The TypeScript example from the API contract, verbatim: fork a python
// sandbox into 8 and square each child's index in its own VM.
import { SandboxServer } from "@mitos/sdk";
const sb = await new SandboxServer().fork("python");
const swarm = await sb.fork(8);
const runs = await Promise.all(swarm.map((a, i) => a.exec(`python3 -c 'print(${i} ** 2)'`)));
runs.forEach((r) => console.log(r.stdout));
