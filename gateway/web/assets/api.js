// Shared by the app (/app/) and the setup wizard (/setup/): JSON requests to the gateway's /v1 API, its error
// document shown beside each field, and the switch between screens. No third-party code, no inline script.

export const MSG_NETWORK =
  "通信できませんでした。接続を確認して、もう一度お試しください / could not reach the bank: check the connection and retry";

/** An error answer of the API: {code, reason, message, fields}. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.reason = error.reason;
    this.fields = error.fields || {};
  }
}

/**
 * Send one request to the API and return its JSON answer; an error answer throws ApiError.
 * Every POST and PUT carries a new Idempotency-Key (the gateway returns the first answer to a retry with it).
 */
export async function api(method, path, body, { bearer, idempotencyKey } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (method === "POST" || method === "PUT") headers["Idempotency-Key"] = idempotencyKey || crypto.randomUUID();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, { reason: "NETWORK", message: MSG_NETWORK, fields: {} });
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data && data.error ? data.error : { reason: `HTTP_${response.status}`, message: `${response.status}` };
    throw new ApiError(response.status, error);
  }
  return data;
}

/** Remove the messages a form shows. */
export function clearErrors(form) {
  for (const slot of form.querySelectorAll(".field-error, .form-error")) slot.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

/**
 * Show an error beside the fields it names (error.fields, by the API's field names) and its message at the
 * form's foot; a field the form does not show is listed there too.
 */
export function showErrors(form, error) {
  clearErrors(form);
  const unplaced = [];
  for (const [name, message] of Object.entries(error.fields || {})) {
    const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (slot) {
      slot.textContent = message;
      const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
      if (input) input.setAttribute("aria-invalid", "true");
    } else {
      unplaced.push(`${name}: ${message}`);
    }
  }
  const foot = form.querySelector(".form-error");
  if (foot) foot.textContent = [error.message, ...unplaced].filter(Boolean).join("\n");
  const first = form.querySelector('[aria-invalid="true"]');
  if (first) first.focus();
}

/** Show one screen (a section.screen by id) and hide the others. */
export function showScreen(id) {
  for (const screen of document.querySelectorAll("section.screen")) screen.hidden = screen.id !== id;
  document.body.dataset.screen = id;
  const heading = document.querySelector(`#${id} h2`);
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

/** Return a form's entries as an object of strings (checkboxes as booleans). */
export function formValues(form) {
  const values = {};
  for (const element of form.elements) {
    if (!element.name) continue;
    values[element.name] = element.type === "checkbox" ? element.checked : element.value;
  }
  return values;
}

/** Run `work` with the form's buttons disabled, showing any ApiError in the form. */
export async function submitting(form, work) {
  const buttons = form.querySelectorAll("button");
  for (const button of buttons) button.disabled = true;
  clearErrors(form);
  try {
    await work();
  } catch (error) {
    if (error instanceof ApiError) showErrors(form, error);
    else showErrors(form, { message: `${error && error.message ? error.message : error}`, fields: {} });
  } finally {
    for (const button of buttons) button.disabled = false;
  }
}
