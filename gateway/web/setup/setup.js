// The setup wizard (procedure ⑥-⑱ and ㉓-㉔): each screen sends one step to the gateway's /v1 API, and the
// enrollment's next step in the answer decides which screen comes next. Steps 1-4 carry the session token from
// step 1; from step 5 on, the browser presents the certificate made in step 4 and the wizard finds its enrollment
// with GET /v1/enrollments/current.

import { ApiError, api, formValues, showErrors, showScreen, submitting } from "/assets/api.js";
import { makeKeyAndCsr, packPkcs12 } from "./certificate.js";

const SAVED = "kagi-setup"; // sessionStorage: the enrollment and its session token, for a reload during steps 1-4
const STEP_SCREENS = {
  VERIFY_NOTICE: "screen-VERIFY_NOTICE",
  SUBMIT_PROFILE: "screen-SUBMIT_PROFILE",
  CONFIRM_REGISTRATION: "screen-CONFIRM_REGISTRATION",
  ISSUE_CERTIFICATE: "screen-ISSUE_CERTIFICATE",
  CERTIFICATE_LOGIN: "screen-CERTIFICATE_LOGIN",
  PASSWORD_LOGIN: "screen-PASSWORD_LOGIN",
  REQUEST_TOKEN: "screen-REQUEST_TOKEN",
  // Steps 8 and 9 happen in the app on the phone; this browser waits for its code (step 10).
  ACTIVATE_APP: "screen-VERIFY_FIRST_CODE",
  REGISTER_APP: "screen-VERIFY_FIRST_CODE",
  VERIFY_FIRST_CODE: "screen-VERIFY_FIRST_CODE",
};
const STOPPED = {
  EXPIRED: "有効期限が切れました。最初からやり直してください / the setup has expired: start again from the beginning",
  LOCKED: "誤入力が続いたためロックされました / locked after too many failed attempts",
  CANCELLED: "この初期設定は取り消されました / this setup was cancelled",
};
const MSG_FILE_PASSWORD =
  "半角英数記号8文字以上で入力してください / at least 8 half-width letters, digits or symbols (ASCII)";
const MSG_SAME_AGAIN = "同じものを入力してください / the two entries differ";

let setup = JSON.parse(sessionStorage.getItem(SAVED) || "{}");
let pkcs12Url = "";

function remember(changes) {
  setup = { ...setup, ...changes };
  sessionStorage.setItem(SAVED, JSON.stringify(setup));
}

/** Show the screen for the enrollment's state and next step (the state machine drives the wizard). */
function follow(enrollment) {
  if (enrollment.enrollment_id) remember({ enrollment_id: enrollment.enrollment_id });
  if (STOPPED[enrollment.state]) {
    sessionStorage.removeItem(SAVED);
    document.getElementById("stopped-reason").textContent = STOPPED[enrollment.state];
    showScreen("screen-stopped");
    return;
  }
  if (enrollment.state === "COMPLETED" || !enrollment.next_step) {
    sessionStorage.removeItem(SAVED);
    showScreen("screen-COMPLETED");
    return;
  }
  if (enrollment.next_step === "CONFIRM_REGISTRATION") showSummary();
  showScreen(STEP_SCREENS[enrollment.next_step] || "screen-start");
}

function enrollmentPath(suffix = "") {
  return `/v1/enrollments/${encodeURIComponent(setup.enrollment_id)}${suffix}`;
}

function showSummary() {
  for (const [name, value] of Object.entries(setup.summary || {})) {
    const slot = document.getElementById(`summary-${name}`);
    if (slot) slot.textContent = value;
  }
}

// -- ⑦ step 1 … ⑨ step 3: the session token ---------------------------------------------------------------

async function verifyNotice(form) {
  const answer = await api("POST", "/v1/enrollments", formValues(form));
  remember({ enrollment_id: answer.enrollment_id, session: answer.session_token });
  form.reset();
  follow(answer);
}

async function submitProfile(form) {
  const answer = await api("PUT", enrollmentPath("/profile"), formValues(form), { bearer: setup.session });
  remember({ summary: answer.summary });
  form.reset();
  follow(answer);
}

async function confirmRegistration() {
  follow(await api("POST", enrollmentPath("/registration"), {}, { bearer: setup.session }));
}

// -- ⑩-⑬ step 4: key, CSR and PKCS#12 in this page ---------------------------------------------------------

function checkFilePassword(form, values) {
  const fields = {};
  if (!/^[\x21-\x7e]{8,128}$/.test(values.file_password)) fields.file_password = MSG_FILE_PASSWORD;
  if (values.file_password !== values.file_password_confirmation) fields.file_password_confirmation = MSG_SAME_AGAIN;
  if (Object.keys(fields).length) {
    showErrors(form, { message: "", fields });
    return false;
  }
  return true;
}

async function issueCertificate(form) {
  const values = formValues(form);
  if (!checkFilePassword(form, values)) return;
  const lib = await import("/assets/vendor/pkijs.bundle.js");
  const name = (setup.summary && setup.summary.login_id) || "kagi";
  const { keys, csrPem } = await makeKeyAndCsr(lib, name);
  const answer = await api("POST", enrollmentPath("/certificate"), { csr_pem: csrPem }, { bearer: setup.session });
  const pkcs12 = await packPkcs12(lib, {
    privateKey: keys.privateKey,
    certificatePem: answer.certificate_pem,
    chainPem: answer.chain_pem,
    password: values.file_password,
    friendlyName: `kagi ${name}`,
  });
  form.reset();
  if (pkcs12Url) URL.revokeObjectURL(pkcs12Url);
  pkcs12Url = URL.createObjectURL(new Blob([pkcs12], { type: "application/x-pkcs12" }));
  const link = document.getElementById("download");
  link.href = pkcs12Url;
  link.download = `kagi-${name}.p12`;
  document.getElementById("issued-serial").textContent = answer.serial_number;
  // The session token has done its work: from step 5 on the certificate is the credential.
  sessionStorage.removeItem(SAVED);
  setup = {};
  document.body.dataset.state = answer.state;
  showScreen("screen-issued");
}

// -- ⑮-⑯ step 5 … ㉓ step 10: the client certificate ---------------------------------------------------------

/** Show an RFC 4514 name as people read it: the gateway escapes non-ASCII bytes as \hh (UTF-8). */
function readableName(name) {
  return name.replace(/(?:\\[0-9a-fA-F]{2})+/g, (run) => {
    const bytes = Uint8Array.from(run.match(/[0-9a-fA-F]{2}/g), (hex) => parseInt(hex, 16));
    return new TextDecoder().decode(bytes);
  });
}

async function findEnrollment(form) {
  // ⑮: the browser presented the certificate on this connection; which one, and which setup it belongs to.
  const certificate = await api("GET", "/v1/client-certificate");
  const enrollment = await api("GET", "/v1/enrollments/current");
  document.getElementById("certificate-subject").textContent = readableName(certificate.subject);
  document.getElementById("certificate-serial").textContent = certificate.serial_number;
  document.getElementById("certificate-not-after").textContent = certificate.not_after;
  remember({ enrollment_id: enrollment.enrollment_id, session: undefined });
  form.reset();
  follow(enrollment);
}

async function certificateLogin() {
  follow(await api("POST", enrollmentPath("/certificate-login"), {}));
}

async function passwordLogin(form) {
  const answer = await api("POST", enrollmentPath("/password-login"), formValues(form));
  form.reset();
  follow(answer);
}

async function requestToken(form) {
  const answer = await api("POST", enrollmentPath("/token"), formValues(form));
  form.reset();
  const note = document.getElementById("mail-note");
  note.textContent = answer.mail_note || "";
  note.hidden = !answer.mail_note;
  follow(answer);
}

async function verifyFirstCode(form) {
  const answer = await api("POST", enrollmentPath("/otp"), { otp: formValues(form).otp.trim() });
  form.reset();
  follow(answer);
}

// -- wiring --------------------------------------------------------------------------------------------------

function onSubmit(id, work) {
  const form = document.getElementById(id);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitting(form, () => work(form));
  });
}

async function start() {
  onSubmit("notice-form", verifyNotice);
  onSubmit("profile-form", submitProfile);
  onSubmit("register-form", confirmRegistration);
  onSubmit("certificate-form", issueCertificate);
  onSubmit("certificate-login-form", certificateLogin);
  onSubmit("password-form", passwordLogin);
  onSubmit("token-form", requestToken);
  onSubmit("otp-form", verifyFirstCode);
  const startForm = document.getElementById("start-form");
  document.getElementById("start-setup").addEventListener("click", () => showScreen("screen-VERIFY_NOTICE"));
  document
    .getElementById("start-certificate-login")
    .addEventListener("click", () => submitting(startForm, () => findEnrollment(startForm)));
  if (setup.enrollment_id && setup.session) {
    // A reload during steps 1-4: carry on where the enrollment is.
    try {
      follow(await api("GET", enrollmentPath(), undefined, { bearer: setup.session }));
      return;
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      sessionStorage.removeItem(SAVED);
      setup = {};
    }
  }
  showScreen("screen-start");
}

start();
