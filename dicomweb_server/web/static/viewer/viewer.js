// The built-in study browser of dicomweb-server: plain JavaScript, no framework, no build.
//
// It is a client of the server's own DICOMweb API (PS3.18), on the same origin:
//   QIDO-RS  GET {root}/studies?...            study list and search (10.6)
//   WADO-RS  GET .../thumbnail, .../rendered   thumbnails and images (10.4.1.1.3)
//   STOW-RS  POST {root}/studies               upload, multipart/related (10.5)
// It sends no credentials, so it works when the server's auth.mode is "none".
// Every value from the archive is put in the page as text (textContent), never as HTML.
"use strict";

const CONFIG = JSON.parse(document.getElementById("page-config").textContent);
const ROOT = CONFIG.dicomweb; // DICOMweb root, same origin
const OHIF = CONFIG.ohif; // "/ohif/" when an OHIF build is installed, else ""
const PAGE_SIZE = 50;
const UPLOAD_BATCH = 20; // files per STOW-RS request, so progress shows as it goes

// DICOM JSON tags (PS3.18 Annex F) used below.
const TAG = {
  studyUid: "0020000D", seriesUid: "0020000E", sopUid: "00080018",
  patientName: "00100010", patientId: "00100020", studyDate: "00080020",
  modalities: "00080061", modality: "00080060", studyDescription: "00081030",
  accession: "00080050", seriesCount: "00201206", studyInstances: "00201208",
  seriesNumber: "00200011", seriesDescription: "0008103E", seriesInstances: "00201209",
  instanceNumber: "00200013", frames: "00280008",
  referenced: "00081199", failed: "00081198", failureReason: "00081197",
  warningReason: "00081196",
};

const $ = (id) => document.getElementById(id);
const uidUrl = (uid) => encodeURIComponent(uid);

function value(item, tag) {
  const element = item[tag];
  if (!element || !element.Value || !element.Value.length) return "";
  const first = element.Value[0];
  if (first && typeof first === "object") {
    return first.Alphabetic || first.Ideographic || first.Phonetic || ""; // PN (F.2.2)
  }
  return element.Value.join(", ");
}

function formatName(name) {
  // PN components: family^given^middle^prefix^suffix (PS3.5 6.2)
  const [family = "", given = ""] = name.split("^");
  return given ? `${family}, ${given}` : family;
}

function formatDate(text) {
  return /^\d{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6)}` : text;
}

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [key, val] of Object.entries(attributes)) node.setAttribute(key, val);
  return node;
}

async function qido(path, params) {
  const url = new URL(ROOT + path, location.href);
  for (const [key, val] of Object.entries(params)) if (val !== "") url.searchParams.set(key, val);
  const response = await fetch(url, { headers: { Accept: "application/dicom+json" } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message += `: ${(await response.json()).error}`; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.status === 204 ? [] : response.json();
}

// -- study list -------------------------------------------------------------------------

let offset = 0;

function searchParams() {
  const params = {
    limit: String(PAGE_SIZE + 1), // one more than shown: tells whether a next page exists
    offset: String(offset),
    includefield: [TAG.studyDescription, TAG.modalities, TAG.seriesCount, TAG.studyInstances,
      TAG.accession].join(","),
  };
  let name = $("patient-name").value.trim();
  // PS3.4 C.2.2.2.4 wildcards: a plain word matches anywhere in the name.
  if (name && !/[*?]/.test(name)) name = `*${name}*`;
  params.PatientName = name;
  params.PatientID = $("patient-id").value.trim();
  const from = $("date-from").value.replaceAll("-", "");
  const to = $("date-to").value.replaceAll("-", "");
  params.StudyDate = from || to ? (from === to ? from : `${from}-${to}`) : ""; // range, C.2.2.2.5
  params.ModalitiesInStudy = $("modality").value;
  return params;
}

function viewerLink(uid) {
  return OHIF ? `${OHIF}viewer?StudyInstanceUIDs=${uidUrl(uid)}` : `#view=${uidUrl(uid)}`;
}

function thumbnail(src, label) {
  const cell = element("td", null, { class: "thumb" });
  const img = element("img", null, { src, alt: label, loading: "lazy" });
  img.addEventListener("error", () => img.replaceWith(element("div", "no image", { class: "none" })));
  cell.append(img);
  return cell;
}

function studyRow(study) {
  const uid = value(study, TAG.studyUid);
  const row = element("tr", null, { "data-study": uid });
  row.append(
    thumbnail(`${ROOT}/studies/${uidUrl(uid)}/thumbnail?viewport=64,64`, "thumbnail"),
    element("td", formatName(value(study, TAG.patientName)), { class: "patient-name" }),
    element("td", value(study, TAG.patientId)),
    element("td", formatDate(value(study, TAG.studyDate))),
    element("td", value(study, TAG.modalities)),
    element("td", value(study, TAG.studyDescription)),
    element("td", value(study, TAG.accession)),
    element("td", `${value(study, TAG.seriesCount)} / ${value(study, TAG.studyInstances)}`),
  );
  const actions = element("td", null, { class: "actions" });
  actions.append(element("a", "Open in viewer", { href: viewerLink(uid), class: "open-viewer" }));
  if (OHIF) actions.append(element("a", "Quick view", { href: `#view=${uidUrl(uid)}`, class: "quick-view" }));
  row.append(actions);
  return row;
}

async function loadStudies() {
  const summary = $("summary");
  summary.className = "";
  summary.textContent = "Searching…";
  try {
    const studies = await qido("/studies", searchParams());
    const shown = studies.slice(0, PAGE_SIZE);
    $("study-rows").replaceChildren(...shown.map(studyRow));
    const first = shown.length ? offset + 1 : 0;
    summary.textContent = shown.length
      ? `Studies ${first}–${offset + shown.length}${studies.length > PAGE_SIZE ? " (more on the next page)" : ""}`
      : "No study matches.";
    $("previous-page").disabled = offset === 0;
    $("next-page").disabled = studies.length <= PAGE_SIZE;
  } catch (error) {
    $("study-rows").replaceChildren();
    summary.className = "error";
    summary.textContent = `Search failed: ${error.message}`;
  }
}

// -- upload (STOW-RS) ---------------------------------------------------------------------

function multipartBody(files, boundary) {
  // PS3.18 10.5.1.2 / 8.6.1.2: one application/dicom part per file.  A Blob of Blobs: the
  // browser streams the files, nothing is read into memory here.
  const parts = [];
  for (const file of files) {
    parts.push(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, file, "\r\n");
  }
  parts.push(`--${boundary}--\r\n`);
  return new Blob(parts);
}

async function stow(files) {
  const boundary = `dicomweb-server-${crypto.getRandomValues(new Uint32Array(4)).join("-")}`;
  const response = await fetch(`${ROOT}/studies`, {
    method: "POST",
    headers: {
      "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
      Accept: "application/dicom+json",
    },
    body: multipartBody(files, boundary),
  });
  // 200 all stored, 202 some failed or warnings, 409 none stored (PS3.18 Table 10.5.3-1).
  let body = {};
  try { body = await response.json(); } catch (_) { /* an error without a DICOM body */ }
  const stored = (body[TAG.referenced] && body[TAG.referenced].Value) || [];
  const failed = (body[TAG.failed] && body[TAG.failed].Value) || [];
  const reasons = failed.map((item) => value(item, TAG.failureReason));
  if (!stored.length && !failed.length && !response.ok) {
    return { stored: 0, failed: files.length, reasons: [`HTTP ${response.status} ${body.error || ""}`] };
  }
  return { stored: stored.length, failed: failed.length, reasons };
}

async function upload(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  const status = $("upload-status");
  const total = { stored: 0, failed: 0, reasons: new Set() };
  for (let i = 0; i < files.length; i += UPLOAD_BATCH) {
    status.textContent = `Uploading ${Math.min(i + UPLOAD_BATCH, files.length)} of ${files.length} files…`;
    try {
      const result = await stow(files.slice(i, i + UPLOAD_BATCH));
      total.stored += result.stored;
      total.failed += result.failed;
      result.reasons.forEach((r) => total.reasons.add(reasonText(r)));
    } catch (error) {
      total.failed += files.slice(i, i + UPLOAD_BATCH).length;
      total.reasons.add(error.message);
    }
  }
  const ok = element("span", `Stored ${total.stored}`, { class: "ok", id: "stored-count" });
  const bad = element("span", `failed ${total.failed}`, { class: total.failed ? "bad" : "", id: "failed-count" });
  status.replaceChildren(ok, ", ", bad);
  if (total.reasons.size) status.append(element("div", [...total.reasons].join("; "), { class: "bad" }));
  $("file-input").value = "";
  await loadStudies();
}

function reasonText(code) {
  // Failure Reason (0008,1197), PS3.18 Table I.2-2; the value is a US number.
  const number = Number(code);
  if (Number.isNaN(number) || code === "") return String(code);
  const hex = number.toString(16).toUpperCase().padStart(4, "0");
  const known = { A700: "out of resources", C122: "transfer syntax not supported",
    C000: "cannot understand", "0110": "processing failure", "0111": "duplicate instance",
    C409: "study differs from the request" };
  return `${hex}${known[hex] ? ` (${known[hex]})` : ""}`;
}

// -- built-in view: series thumbnails and /rendered images --------------------------------

let images = []; // [{url}] of the selected series, in instance order
let current = 0;

async function showStudy(uid) {
  $("browser").hidden = true;
  $("view").hidden = false;
  $("view-title").textContent = uid;
  $("series-list").replaceChildren();
  $("frame").removeAttribute("src");
  try {
    const [study] = await qido("/studies", { StudyInstanceUID: uid, includefield: TAG.studyDescription });
    if (study) {
      $("view-title").textContent = [formatName(value(study, TAG.patientName)),
        formatDate(value(study, TAG.studyDate)), value(study, TAG.studyDescription)]
        .filter(Boolean).join(" · ");
    }
    const series = await qido(`/studies/${uidUrl(uid)}/series`, {
      includefield: [TAG.seriesDescription, TAG.seriesInstances].join(","),
    });
    series.sort((a, b) => Number(value(a, TAG.seriesNumber)) - Number(value(b, TAG.seriesNumber)));
    const items = series.map((s) => seriesItem(uid, s));
    $("series-list").replaceChildren(...items);
    if (items.length) items[0].click();
  } catch (error) {
    $("view-title").textContent = `Cannot load study ${uid}: ${error.message}`;
  }
}

function seriesItem(studyUid, series) {
  const uid = value(series, TAG.seriesUid);
  const base = `${ROOT}/studies/${uidUrl(studyUid)}/series/${uidUrl(uid)}`;
  const item = element("li", null, { "data-series": uid });
  item.append(
    element("img", null, { src: `${base}/thumbnail?viewport=128,128`, alt: "series thumbnail", loading: "lazy" }),
    element("span", `${value(series, TAG.modality)} #${value(series, TAG.seriesNumber)} ${value(series, TAG.seriesDescription)}`),
    element("span", `${value(series, TAG.seriesInstances)} images`, { class: "label" }),
  );
  item.addEventListener("click", () => selectSeries(item, base));
  return item;
}

async function selectSeries(item, base) {
  for (const other of $("series-list").children) other.classList.toggle("selected", other === item);
  const instances = await qido(base.slice(ROOT.length) + "/instances", {
    includefield: [TAG.instanceNumber, TAG.frames].join(","),
  });
  instances.sort((a, b) => Number(value(a, TAG.instanceNumber)) - Number(value(b, TAG.instanceNumber)));
  images = [];
  for (const instance of instances) {
    const url = `${base}/instances/${uidUrl(value(instance, TAG.sopUid))}`;
    const frames = Number(value(instance, TAG.frames)) || 1;
    if (frames > 1) {
      for (let f = 1; f <= frames; f++) images.push(`${url}/frames/${f}/rendered`);
    } else {
      images.push(`${url}/rendered`);
    }
  }
  $("slider").max = String(Math.max(images.length, 1));
  show(Math.floor((images.length - 1) / 2));
}

function show(index) {
  if (!images.length) {
    $("position").textContent = "no images";
    return;
  }
  current = Math.min(Math.max(index, 0), images.length - 1);
  $("frame").src = images[current];
  $("slider").value = String(current + 1);
  $("position").textContent = `${current + 1} / ${images.length}`;
  // Fetch the neighbours ahead of time, so scrolling does not wait.
  for (const next of [current + 1, current - 1]) if (images[next]) new Image().src = images[next];
}

// -- wiring ---------------------------------------------------------------------------------

function route() {
  const match = /^#view=(.+)$/.exec(location.hash);
  if (match) {
    showStudy(decodeURIComponent(match[1]));
  } else {
    $("view").hidden = true;
    $("browser").hidden = false;
  }
}

function init() {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    offset = 0;
    loadStudies();
  });
  $("search").addEventListener("reset", () => setTimeout(() => { offset = 0; loadStudies(); }));
  $("previous-page").addEventListener("click", () => { offset = Math.max(offset - PAGE_SIZE, 0); loadStudies(); });
  $("next-page").addEventListener("click", () => { offset += PAGE_SIZE; loadStudies(); });

  $("file-input").addEventListener("change", (event) => upload(event.target.files));
  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    upload(event.dataTransfer.files);
  });

  $("frame").addEventListener("error", () => {
    if (images.length) $("position").textContent = `${current + 1} / ${images.length}: cannot be rendered`;
  });
  $("slider").addEventListener("input", (event) => show(Number(event.target.value) - 1));
  $("frame-box").addEventListener("wheel", (event) => {
    event.preventDefault();
    show(current + Math.sign(event.deltaY));
  }, { passive: false });
  document.addEventListener("keydown", (event) => {
    if ($("view").hidden || event.target.tagName === "INPUT" && event.target.type !== "range") return;
    const step = { ArrowDown: 1, ArrowRight: 1, PageDown: 10, ArrowUp: -1, ArrowLeft: -1, PageUp: -10 }[event.key];
    if (step) {
      event.preventDefault();
      show(current + step);
    }
  });
  $("back").addEventListener("click", (event) => {
    event.preventDefault();
    history.pushState(null, "", location.pathname + location.search);
    route();
  });
  window.addEventListener("hashchange", route);
  route();
  loadStudies();
}

init();
