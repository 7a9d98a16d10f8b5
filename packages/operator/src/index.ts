export { CAPACITY_ANNOTATION, type NodeCapacity, type NodeView } from "./capacity.js";
export { Controller, type ControllerOptions } from "./controller.js";
export { Gateway, type GatewayOptions } from "./gateway.js";
export { Kube, loadKubeConfig } from "./kube.js";
export { NodeAgent, type NodeAgentOptions } from "./node-agent.js";
export * from "./resources.js";
export { freeBytes, pendingSlots, placePool, placeSandbox, reservations } from "./scheduler.js";
