import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

// `npm run dev` proxies the API to a corrald started with `--listen 127.0.0.1:8443`.
export default defineConfig({
  plugins: [preact()],
  // noVNC uses top-level await.
  build: { target: "es2022" },
  server: {
    proxy: {
      "/api": { target: process.env.CORRAL_URL ?? "https://127.0.0.1:8443", secure: false, ws: true },
    },
  },
});
