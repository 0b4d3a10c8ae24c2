// The public HTTP API, as any client calls it. The API key travels in the X-API-Key header only
// (never in a URL); it is kept for this browser tab in sessionStorage.

const KEY_STORE = "striate.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setKey(value) {
  if (value) sessionStorage.setItem(KEY_STORE, value);
  else sessionStorage.removeItem(KEY_STORE);
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = getKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    const err = body.error ?? body.detail;
    message = typeof err === "string" ? err : err?.message ?? JSON.stringify(err);
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

async function request(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

/** GET a file (a figure, a report) with the key in its header, which an <img src> could not send. */
export async function getBlob(path) {
  return (await request(path)).blob();
}

/** POST one image (a Blob) as a raw body: the same bytes a curl --data-binary would send. */
export async function postImage(path, params, image) {
  const query = new URLSearchParams(params).toString();
  const type = image.type && image.type.startsWith("image/") ? image.type : "application/octet-stream";
  return request(`${path}?${query}`, { method: "POST", body: image, headers: { "Content-Type": type } });
}

export function modelPath(name, version) {
  const base = `/v1/models/${encodeURIComponent(name)}`;
  return version ? `${base}/versions/${encodeURIComponent(version)}` : base;
}
