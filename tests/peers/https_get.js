// GET URL COUNT times with Node's own https module, as an app configured only by its
// environment: HTTPS_PROXY (fusebox, reached with CONNECT as a proxy agent does) and
// NODE_EXTRA_CA_CERTS (fusebox's CA, added to Node's roots). Prints one line per call:
// "<status> <x-fusebox-reason or -> <body>".
'use strict';
const http = require('http');
const https = require('https');
const tls = require('tls');

const proxy = new URL(process.env.HTTPS_PROXY);

function tunnel(host, port) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: proxy.hostname,
      port: proxy.port,
      method: 'CONNECT',
      path: `${host}:${port}`,
    });
    req.on('connect', (res, socket) => {
      if (res.statusCode === 200) resolve(socket);
      else reject(new Error(`CONNECT answered ${res.statusCode}`));
    });
    req.on('error', reject);
    req.end();
  });
}

async function get(url) {
  const target = new URL(url);
  const socket = await tunnel(target.hostname, target.port || 443);
  return new Promise((resolve, reject) => {
    const createConnection = () => tls.connect({ socket, servername: target.hostname });
    const req = https.request(url, { createConnection }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => {
        const reason = res.headers['x-fusebox-reason'] || '-';
        resolve(`${res.statusCode} ${reason} ${body.trim()}`);
      });
    });
    req.on('error', reject);
    req.end();
  });
}

(async () => {
  const count = Number(process.argv[3] || 1);
  for (let i = 0; i < count; i++) {
    console.log(await get(process.argv[2]));
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
