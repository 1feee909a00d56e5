// What Node's own clients do with HTTPS_PROXY alone: GET URL once with `https.get` and once
// with the global `fetch`, and print how each ended, one line each: "https.get <status or
// error code>" and "fetch <status or error code>". Neither reads HTTPS_PROXY (tests/trust.rs
// checks it on the Node installed): both resolve the URL's host themselves, so an app needs a
// proxy agent that sends CONNECT, as https_get.js makes one.
'use strict';
const https = require('https');

const url = process.argv[2];

function viaHttpsGet() {
  return new Promise((resolve) => {
    https
      .get(url, (res) => {
        res.resume();
        resolve(String(res.statusCode));
      })
      .on('error', (error) => resolve(error.code || String(error)));
  });
}

async function viaFetch() {
  try {
    const res = await fetch(url);
    return String(res.status);
  } catch (error) {
    return (error.cause && error.cause.code) || String(error);
  }
}

(async () => {
  console.log(`https.get ${await viaHttpsGet()}`);
  console.log(`fetch ${await viaFetch()}`);
})();
