// Vite build of the meshtrace dashboard. The output in dist/ is embedded into the meshtrace
// binary (server/src/api/ui.rs); everything is bundled, nothing is loaded from another host.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    assetsInlineLimit: 0,
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:16686",
    },
  },
});
