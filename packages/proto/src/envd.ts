// E2B's envd services (process.Process, filesystem.Filesystem), served by
// mitosd's E2B front door. Kept apart from the runtime service's exports:
// both define ListRequest, ProcessInfo and the like.
export * as envdFilesystem from "./gen/filesystem/filesystem_pb.js";
export * as envdProcess from "./gen/process/process_pb.js";
