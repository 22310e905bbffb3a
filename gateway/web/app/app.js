// The one-time-password app (procedure ⑳-㉒): activates with the service ID, user ID and usage-start password,
// imports the delivered seed into WebCrypto as a NON-extractable HMAC key, keeps that key in IndexedDB, and shows
// the current code (RFC 6238) with the seconds left in its window. Once registered, nothing here can read the
// seed again: the key only signs.

import { api, formValues, showScreen, submitting } from "/assets/api.js";

const DB_NAME = "kagi-otp";
const STORE = "tokens";
const RECORD = "current";
const HASHES = { SHA1: "SHA-1", SHA256: "SHA-256", SHA512: "SHA-512" };
const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

let pending = null; // between ⑳ Send and ㉑ Register: the imported key and what registers it
let ticker = 0;

// -- the key store: IndexedDB keeps the CryptoKey itself (structured clone), never its bytes ------------------

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function withStore(mode, work) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const transaction = db.transaction(STORE, mode);
      const request = work(transaction.objectStore(STORE));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  } finally {
    db.close();
  }
}

const loadToken = () => withStore("readonly", (store) => store.get(RECORD));
const saveToken = (record) => withStore("readwrite", (store) => store.put(record, RECORD));

// -- RFC 4226 / 6238 -------------------------------------------------------------------------------------------

function base32Decode(text) {
  const clean = text.replace(/[\s=]/g, "").toUpperCase();
  const bytes = new Uint8Array(Math.floor((clean.length * 5) / 8));
  let bits = 0;
  let value = 0;
  let index = 0;
  for (const char of clean) {
    const digit = BASE32.indexOf(char);
    if (digit < 0) throw new Error("the seed is not base32");
    value = (value << 5) | digit;
    bits += 5;
    if (bits >= 8) {
      bytes[index++] = (value >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
  }
  return bytes;
}

/** Return the code of `key` for the window `counter` (RFC 4226 dynamic truncation). */
async function hotp(key, counter, digits) {
  const message = new DataView(new ArrayBuffer(8));
  message.setUint32(0, Math.floor(counter / 2 ** 32));
  message.setUint32(4, counter >>> 0);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, message.buffer));
  const offset = mac[mac.length - 1] & 0x0f;
  const binary =
    ((mac[offset] & 0x7f) << 24) | (mac[offset + 1] << 16) | (mac[offset + 2] << 8) | mac[offset + 3];
  return String(binary % 10 ** digits).padStart(digits, "0");
}

// -- ⑳ Send: activation, the seed once ------------------------------------------------------------------------

async function activate(form) {
  const values = formValues(form);
  const answer = await api("POST", "/v1/app/activation", {
    service_id: values.service_id.trim(),
    user_id: values.user_id.trim(),
    usage_start_password: values.usage_start_password,
    agreed: values.agreed,
  });
  const hash = HASHES[answer.algorithm];
  if (!hash) throw new Error(`unsupported algorithm ${answer.algorithm}`);
  const seed = base32Decode(answer.secret);
  answer.secret = "";
  // Non-extractable: from here on the seed is only usable, never readable, by this page or any other script.
  const key = await crypto.subtle.importKey("raw", seed, { name: "HMAC", hash }, false, ["sign"]);
  seed.fill(0);
  form.reset();
  pending = {
    key,
    digits: answer.digits,
    period: answer.period,
    algorithm: answer.algorithm,
    service_id: values.service_id.trim(),
    user_id: values.user_id.trim(),
    activation_id: answer.activation_id,
    idempotencyKey: crypto.randomUUID(),
  };
  showScreen("screen-register");
}

// -- ㉑ Register: store the key, then tell the bank it is stored ----------------------------------------------

async function register() {
  if (!pending) throw new Error("送信からやり直してください / start again from Send");
  const record = { ...pending, registered: false };
  await saveToken(record); // stored first: registering tells the bank the app has the key
  await api(
    "POST",
    "/v1/app/registration",
    { service_id: record.service_id, user_id: record.user_id, activation_id: record.activation_id },
    { idempotencyKey: record.idempotencyKey },
  );
  record.registered = true;
  await saveToken(record);
  pending = null;
  showCode(record);
}

// -- ㉒ the code and its seconds ------------------------------------------------------------------------------

function showCode(record) {
  showScreen("screen-code");
  document.getElementById("ids").textContent = `サービスID / Service ID: ${record.service_id}`;
  const codeElement = document.getElementById("code");
  const secondsElement = document.getElementById("seconds");
  const progress = document.getElementById("remaining");
  progress.max = record.period;
  let shownCounter = -1;
  clearTimeout(ticker);
  const tick = async () => {
    const now = Date.now() / 1000;
    const counter = Math.floor(now / record.period);
    const left = record.period - Math.floor(now % record.period);
    if (counter !== shownCounter) {
      const code = await hotp(record.key, counter, record.digits);
      shownCounter = counter;
      codeElement.textContent = code;
      // The window the code belongs to (Unix seconds), for anyone checking it against another TOTP tool.
      codeElement.dataset.windowStart = String(counter * record.period);
    }
    secondsElement.textContent = String(left);
    progress.value = left;
    ticker = setTimeout(tick, 1000 - (Date.now() % 1000) + 5);
  };
  tick();
}

async function start() {
  if (!window.crypto || !crypto.subtle || !window.indexedDB) {
    showScreen("screen-unsupported");
    return;
  }
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("sw.js", { scope: "./" }).catch(() => {});
  }
  const activateForm = document.getElementById("activate-form");
  activateForm.addEventListener("submit", (event) => {
    event.preventDefault();
    submitting(activateForm, () => activate(activateForm));
  });
  const registerForm = document.getElementById("register-form");
  registerForm.addEventListener("submit", (event) => {
    event.preventDefault();
    submitting(registerForm, register);
  });
  const record = await loadToken().catch(() => undefined);
  if (record && record.registered) {
    showCode(record);
  } else if (record) {
    pending = record; // stored, but the registration did not get through: ㉑ again
    showScreen("screen-register");
  } else {
    showScreen("screen-activate");
  }
}

start();
