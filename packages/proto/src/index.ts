export * from "./error-codes.js";
export * from "./gen/sandbox/v1/sandbox_pb.js";
