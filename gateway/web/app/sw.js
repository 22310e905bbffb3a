// The app's service worker: keeps the app's files so that, once installed, it opens and shows codes offline.
// Network first (a fixed page reaches the customer at once), the kept copy when the network is away. The API
// (/v1/) is never kept: its answers carry seeds and must not be stored anywhere.

const CACHE = "kagi-app-v1";
const SHELL = [
  "./",
  "app.js",
  "manifest.webmanifest",
  "icon-192.png",
  "icon-512.png",
  "/assets/kagi.css",
  "/assets/api.js",
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((name) => name !== CACHE).map((name) => caches.delete(name))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin || url.pathname.startsWith("/v1/")) {
    return;
  }
  event.respondWith(
    (async () => {
      const cache = await caches.open(CACHE);
      try {
        const response = await fetch(event.request);
        if (response.ok) await cache.put(event.request, response.clone());
        return response;
      } catch (error) {
        const kept = await cache.match(event.request, { ignoreSearch: true });
        if (kept) return kept;
        throw error;
      }
    })(),
  );
});
