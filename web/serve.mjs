// A small static server for the demo page, on 127.0.0.1 only (a secure context, so the page gets
// navigator.gpu). Routes:
//   /                          web/ (index.html, parity.html, style.css, dist/app.js ...)
//   /data/fashion-mnist-subset/  data/fashion-mnist-subset/ (the shipped .gz files, served as bytes)
//   /lib/                      dist/ (the library bundle that `npm run build` writes)
// Run: node web/serve.mjs [--port N] (default 8080, or $PORT; 0 picks a free port).
// Import: const { url, close } = await startServer({ port: 0 }).
import { createServer } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));

const MOUNTS = [
  { prefix: '/data/fashion-mnist-subset/', dir: join(ROOT, 'data', 'fashion-mnist-subset') },
  { prefix: '/lib/', dir: join(ROOT, 'dist') },
  { prefix: '/', dir: join(ROOT, 'web') },
];

export const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
  // The IDX files are gzip bytes that the page decompresses itself (DecompressionStream): no
  // Content-Encoding, or the browser would inflate them first.
  '.gz': 'application/octet-stream',
};

/** Maps a URL path to a file under one of the mounts, or null when it escapes them. */
export function resolvePath(urlPath) {
  let path;
  try {
    path = decodeURIComponent(urlPath.split('?')[0].split('#')[0]);
  } catch {
    return null;
  }
  if (path.includes('\0')) return null;
  for (const { prefix, dir } of MOUNTS) {
    if (!path.startsWith(prefix)) continue;
    const rel = normalize(path.slice(prefix.length));
    const file = resolve(dir, '.' + sep + rel);
    if (file !== dir && !file.startsWith(dir + sep)) return null;
    return file;
  }
  return null;
}

async function handle(req, res, log) {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD' }).end();
    return;
  }
  let file = resolvePath(req.url ?? '/');
  if (!file) {
    res.writeHead(403, { 'Content-Type': 'text/plain; charset=utf-8' }).end('forbidden\n');
    return;
  }
  try {
    if ((await stat(file)).isDirectory()) file = join(file, 'index.html');
    const body = await readFile(file);
    const type = MIME[extname(file)] ?? 'application/octet-stream';
    res.writeHead(200, {
      'Content-Type': type,
      'Content-Length': body.length,
      'Cache-Control': 'no-cache',
      // Cross-origin isolation gives the page SharedArrayBuffer (the wasm backend's threads).
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
      'X-Content-Type-Options': 'nosniff',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  } catch (e) {
    const missing = e && (e.code === 'ENOENT' || e.code === 'ENOTDIR');
    if (!missing) log?.(`serve: ${req.url}: ${e.message}`);
    const hint = missing && (req.url ?? '').startsWith('/dist/') ? ' (build the page first: node scripts/build-web.mjs)' : '';
    res.writeHead(missing ? 404 : 500, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`${missing ? 'not found' : 'error'}: ${req.url}${hint}\n`);
  }
}

/** Starts the server; resolves once it listens. */
export async function startServer({ port = 8080, host = '127.0.0.1', log = null } = {}) {
  const server = createServer((req, res) => {
    handle(req, res, log).catch((e) => {
      log?.(`serve: ${e.message}`);
      if (!res.headersSent) res.writeHead(500).end();
    });
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok());
  });
  const addr = server.address();
  const url = `http://${host}:${addr.port}/`;
  return {
    url,
    port: addr.port,
    server,
    close: () =>
      new Promise((ok) => {
        server.closeAllConnections?.();
        server.close(() => ok());
      }),
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--port');
  const port = Number(i > 0 ? process.argv[i + 1] : (process.env.PORT ?? 8080));
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`serve: bad port ${JSON.stringify(i > 0 ? process.argv[i + 1] : process.env.PORT)}`);
    process.exit(2);
  }
  try {
    const { url } = await startServer({ port, log: (m) => console.error(m) });
    console.log(`flatgrad demo: ${url}  (parity checks: ${url}parity.html)  Ctrl-C stops it`);
  } catch (e) {
    console.error(e.code === 'EADDRINUSE' ? `serve: port ${port} is in use; try --port 0 or PORT=8081` : `serve: ${e.message}`);
    process.exit(1);
  }
}
