// envd's filesystem.Filesystem service (E2B-COMPAT.md §7) on the agent's
// file calls. Paths resolve as envd's do (relative to the user's home, `~`
// expanded); what is created belongs to the calling user; results and errors
// follow envd: MakeDir of an existing directory is already_exists, Remove of
// a missing path succeeds (os.RemoveAll), Move returns the moved entry.

import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import type { FileInfo } from "@mitos/engine";
import { envdFilesystem as pb } from "@mitos/proto/envd";
import { StreamQueue } from "../stream-queue.js";
import { type DirEvent, DirWatch } from "./dir-watch.js";
import { callSandbox, callUser, type EnvdDeps, envdError, unary } from "./envd-context.js";
import { entryInfo, type FsAgent, GuestNames, isMissing, ownerOf, statFollow, walk } from "./envd-entries.js";
import { PollWatchers } from "./poll-watchers.js";
import { type GuestUser, resolvePath } from "./users.js";

/** ListDir answers at most this many entries (envd has no bound; mitosd's memory does). */
const LIST_LIMIT = 100_000;
/** WatchDir events held for a slow client before polling waits for it. */
const WATCH_QUEUE = 1024;

interface Call {
  id: string;
  user: GuestUser;
  agent: FsAgent;
}

export function registerFilesystem(router: ConnectRouter, deps: EnvdDeps): void {
  const names = new GuestNames();
  const watchers = new PollWatchers();
  const agentOf = (id: string) => (): FsAgent => deps.engine.agent(id);
  const call = async (ctx: HandlerContext): Promise<Call> => {
    const id = callSandbox(ctx);
    const user = await callUser(deps, id, ctx);
    return { id, user, agent: deps.engine.agent(id) };
  };
  const entry = async (c: Pick<Call, "id" | "agent">, f: FileInfo) => entryInfo(f, await names.get(c.id, c.agent));
  const toEvent = async (id: string, e: DirEvent, includeEntry: boolean) =>
    create(pb.FilesystemEventSchema, {
      name: e.name,
      type: e.type,
      ...(includeEntry && e.info ? { entry: await entry({ id, agent: deps.engine.agent(id) }, e.info) } : {}),
    });
  const openWatch = async (c: Call, req: { path: string; recursive: boolean }) =>
    DirWatch.open(agentOf(c.id), resolvePath(req.path, c.user), { recursive: req.recursive });

  router.service(pb.Filesystem, {
    stat: unary(async (req: pb.StatRequest, ctx) => {
      const c = await call(ctx);
      // lstat, as envd: a symlink is reported as itself.
      const f = await c.agent.stat(resolvePath(req.path, c.user));
      return create(pb.StatResponseSchema, { entry: await entry(c, f) });
    }),

    makeDir: unary(async (req: pb.MakeDirRequest, ctx) => {
      const c = await call(ctx);
      const dir = resolvePath(req.path, c.user);
      const existing = await statFollow(c.agent, dir).catch((err: unknown) => {
        if (isMissing(err)) return undefined;
        throw err;
      });
      if (existing?.type === "dir") throw new ConnectError(`directory already exists: ${dir}`, Code.AlreadyExists);
      if (existing)
        throw new ConnectError(`path already exists but it is not a directory: ${dir}`, Code.InvalidArgument);
      await c.agent.mkdir(dir, undefined, ownerOf(c.user));
      return create(pb.MakeDirResponseSchema, {
        entry: { name: path.posix.basename(dir), type: pb.FileType.DIRECTORY, path: dir },
      });
    }),

    move: unary(async (req: pb.MoveRequest, ctx) => {
      const c = await call(ctx);
      const from = resolvePath(req.source, c.user);
      const to = resolvePath(req.destination, c.user);
      await c.agent.mkdir(path.posix.dirname(to), undefined, ownerOf(c.user));
      await c.agent.rename(from, to);
      return create(pb.MoveResponseSchema, { entry: await entry(c, await c.agent.stat(to)) });
    }),

    listDir: unary(async (req: pb.ListDirRequest, ctx) => {
      const c = await call(ctx);
      const dir = resolvePath(req.path, c.user);
      const root = await statFollow(c.agent, dir);
      if (root.type !== "dir") throw new ConnectError(`path is not a directory: ${dir}`, Code.InvalidArgument);
      const found = await walk(c.agent, root.path, req.depth === 0 ? 1 : req.depth, LIST_LIMIT);
      const n = await names.get(c.id, c.agent);
      // Paths under the path asked for, not under where its symlinks lead.
      const entries = found.map((e) => entryInfo({ ...e.info, path: path.posix.join(dir, e.rel) }, n));
      return create(pb.ListDirResponseSchema, { entries });
    }),

    remove: unary(async (req: pb.RemoveRequest, ctx) => {
      const c = await call(ctx);
      try {
        await c.agent.remove(resolvePath(req.path, c.user), true);
      } catch (err) {
        if (!isMissing(err)) throw err;
      }
      return create(pb.RemoveResponseSchema);
    }),

    async *watchDir(req: pb.WatchDirRequest, ctx: HandlerContext): AsyncGenerator<pb.WatchDirResponse> {
      let c: Call;
      let watch: DirWatch;
      try {
        c = await call(ctx);
        watch = await openWatch(c, req);
      } catch (err) {
        throw envdError(err);
      }
      const queue = new StreamQueue<pb.WatchDirResponse>(WATCH_QUEUE);
      // envd's keepalive: one message after every idle interval (Keepalive-Ping-Interval, seconds).
      const idleMs = Number(ctx.requestHeader.get("keepalive-ping-interval") ?? "") * 1000;
      let keepalive: NodeJS.Timeout | undefined;
      const arm = () => {
        if (!(idleMs > 0)) return;
        clearTimeout(keepalive);
        keepalive = setTimeout(
          () => void send({ case: "keepalive", value: create(pb.WatchDirResponse_KeepAliveSchema) }),
          idleMs,
        );
      };
      const send = (event: pb.WatchDirResponse["event"]): Promise<void> => {
        arm();
        return queue.push(create(pb.WatchDirResponseSchema, { event }));
      };
      const onAbort = () => {
        const reason: unknown = ctx.signal.reason;
        queue.end(reason instanceof Error ? reason : undefined);
      };
      ctx.signal.addEventListener("abort", onAbort, { once: true });
      if (ctx.signal.aborted) onAbort();
      watch.start(
        async (events) => {
          for (const e of events) await send({ case: "filesystem", value: await toEvent(c.id, e, req.includeEntry) });
        },
        (err) => queue.end(envdError(err)),
      );
      try {
        yield create(pb.WatchDirResponseSchema, {
          event: { case: "start", value: create(pb.WatchDirResponse_StartEventSchema) },
        });
        arm();
        yield* queue;
      } finally {
        watch.stop();
        clearTimeout(keepalive);
        ctx.signal.removeEventListener("abort", onAbort);
        queue.end();
      }
    },

    createWatcher: unary(async (req: pb.CreateWatcherRequest, ctx) => {
      const c = await call(ctx);
      const watch = await openWatch(c, req);
      const watcherId = watchers.add(c.id, watch, (e) => toEvent(c.id, e, req.includeEntry));
      return create(pb.CreateWatcherResponseSchema, { watcherId });
    }),

    getWatcherEvents: unary(async (req: pb.GetWatcherEventsRequest, ctx) => {
      const events = watchers.take(callSandbox(ctx), req.watcherId);
      return create(pb.GetWatcherEventsResponseSchema, { events });
    }),

    removeWatcher: unary(async (req: pb.RemoveWatcherRequest, ctx) => {
      watchers.remove(callSandbox(ctx), req.watcherId);
      return create(pb.RemoveWatcherResponseSchema);
    }),
  });
}

/** A unary handler whose errors reach the client in envd's codes. */
