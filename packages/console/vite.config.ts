// The console is a static build mitosd serves at /ui (packages/server/src/console-routes.ts).
import { defineConfig } from "vite";

export default defineConfig({
  base: "/ui/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Everything offline: fonts, styles and scripts are files of the build, never a CDN.
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 1024,
  },
});
