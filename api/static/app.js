// Vigie: the pharmacist's page. Plain JavaScript, no build step, no library.
//
// It reads and writes through the service's JSON API with the bearer token the pharmacist
// types in (kept in this tab's sessionStorage). Every value from the API reaches the page as
// text (textContent, createTextNode, attributes): never as markup.
"use strict";

(function () {
  const TOKEN_KEY = "vigie.token";
  const PAGE_SIZE = 25;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const SEVERITY = {
    critical: "critique",
    major: "majeure",
    moderate: "modérée",
    minor: "mineure",
  };
  const STATUS = {
    open: "ouverte",
    intervention: "intervention enregistrée",
    dismissed: "écartée",
    resolved_by_data: "résolue par les données",
  };
  const KIND = {
    lab: "biologie",
    medication_order: "prescription",
    medication_administration: "administration",
    derived: "valeur calculée",
    patient: "patient",
    stay: "séjour",
    condition: "diagnostic",
    allergy: "allergie",
    observation: "observation",
  };
  const OPERATOR = { lt: "<", le: "≤", gt: ">", ge: "≥" };
  const DECISION = { intervention: "Intervention", dismissal: "Alerte écartée" };

  let codes = null; // /static/codes.json: the codes the API accepts, with French labels
  let current = null; // the alert on screen

  // Small helpers ------------------------------------------------------------------------------

  function $(id) {
    return document.getElementById(id);
  }

  function text(value) {
    return value === null || value === undefined || value === "" ? "—" : String(value);
  }

  function el(tag, content, className) {
    const node = document.createElement(tag);
    if (content !== undefined) {
      node.textContent = text(content);
    }
    if (className) {
      node.className = className;
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) {
      node.removeChild(node.firstChild);
    }
  }

  function setText(id, value) {
    $(id).textContent = text(value);
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      tr.appendChild(cell instanceof Node ? wrapCell(cell) : el("td", cell));
    }
    return tr;
  }

  function wrapCell(node) {
    if (node.tagName === "TD") {
      return node;
    }
    const td = document.createElement("td");
    td.appendChild(node);
    return td;
  }

  function numberCell(value, digits) {
    const td = el("td", formatNumber(value, digits), "num");
    return td;
  }

  function formatNumber(value, digits) {
    if (typeof value !== "number" || !isFinite(value)) {
      return text(value);
    }
    const options = digits === undefined ? { maximumFractionDigits: 3 } : {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    };
    return value.toLocaleString("fr-FR", options);
  }

  // The API's times are naive UTC (ISO 8601 without an offset): shown in the browser's time.
  function parseTime(value) {
    if (typeof value !== "string" || !/^\d{4}-\d{2}-\d{2}/.test(value)) {
      return null;
    }
    const withZone = /(Z|[+-]\d{2}:?\d{2})$/.test(value) || value.length === 10
      ? value
      : value + "Z";
    const moment = new Date(withZone);
    return isNaN(moment.getTime()) ? null : moment;
  }

  function formatTime(value) {
    const moment = parseTime(value);
    if (moment === null) {
      return text(value);
    }
    if (typeof value === "string" && value.length === 10) {
      return moment.toLocaleDateString("fr-FR", { timeZone: "UTC" });
    }
    return moment.toLocaleString("fr-FR", {
      day: "2-digit",
      month: "2-digit",
      year: "numeric",
      hour: "2-digit",
      minute: "2-digit",
    });
  }

  function formatMonth(value) {
    const match = /^(\d{4})-(\d{2})/.exec(String(value));
    if (!match) {
      return text(value);
    }
    const moment = new Date(Date.UTC(Number(match[1]), Number(match[2]) - 1, 1));
    return moment.toLocaleDateString("fr-FR", { month: "short", year: "numeric", timeZone: "UTC" });
  }

  function severityBadge(severity) {
    const known = Object.prototype.hasOwnProperty.call(SEVERITY, severity);
    const badge = el("span", known ? SEVERITY[severity] : severity, "sev");
    if (known) {
      badge.classList.add("sev-" + severity);
    }
    return badge;
  }

  function link(href, label) {
    const a = el("a", label);
    a.setAttribute("href", href);
    return a;
  }

  function alertHref(id) {
    return "#/alerts/" + encodeURIComponent(id);
  }

  // The API ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) {
      headers.Authorization = "Bearer " + token;
    }
    const options = { method: method, headers: headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let answer;
    try {
      answer = await fetch(path, options);
    } catch (error) {
      throw new ApiError(0, "le service ne répond pas");
    }
    let data = null;
    try {
      data = await answer.json();
    } catch (error) {
      data = null;
    }
    if (!answer.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : answer.statusText;
      throw new ApiError(answer.status, detail);
    }
    return data;
  }

  // What a refusal means, in French (the API's own detail, in English, follows).
  function explain(error) {
    if (!(error instanceof ApiError)) {
      return "Erreur inattendue de la page : " + String(error && error.message);
    }
    const detail = error.detail ? " (" + error.detail + ")" : "";
    switch (error.status) {
      case 0:
        return "Le service Vigie ne répond pas. Vérifiez qu'il est démarré (vigie serve).";
      case 401:
        return "Jeton refusé : inconnu ou révoqué. Saisissez le jeton donné par « vigie users add »."
          + detail;
      case 403:
        return "Accès refusé : ce jeton n'a pas le rôle pharmacien." + detail;
      case 404:
        return "Introuvable." + detail;
      case 409:
        return "Décision refusée : l'alerte a changé depuis sa lecture. Rechargez-la." + detail;
      case 413:
        return "Saisie trop longue." + detail;
      case 422:
        return "Saisie refusée." + detail;
      case 503:
        return "La base de données est indisponible. Réessayez dans un instant." + detail;
      default:
        return "Erreur du service (" + error.status + ")." + detail;
    }
  }

  // A refused token sends back to the login form, with the reason.
  function handle(error, target) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(explain(error));
      return;
    }
    showError(target, explain(error));
  }

  function showError(target, message) {
    const node = target || $("message");
    node.textContent = message;
    node.classList.add("is-error");
    node.hidden = false;
  }

  function flash(message, href, label) {
    sessionStorage.setItem("vigie.flash", JSON.stringify({ message: message, href: href, label: label }));
  }

  function showFlash() {
    const node = $("message");
    clear(node);
    node.classList.remove("is-error");
    node.hidden = true;
    const saved = sessionStorage.getItem("vigie.flash");
    if (!saved) {
      return;
    }
    sessionStorage.removeItem("vigie.flash");
    const note = JSON.parse(saved);
    node.appendChild(document.createTextNode(note.message));
    if (note.href) {
      node.appendChild(document.createTextNode(" "));
      node.appendChild(link(note.href, note.label));
    }
    node.hidden = false;
  }

  async function loadCodes() {
    if (codes === null) {
      codes = await api("GET", "/static/codes.json");
    }
    return codes;
  }

  // Views ----------------------------------------------------------------------------------------

  function show(view) {
    for (const section of document.querySelectorAll(".view")) {
      section.hidden = section.id !== "view-" + view;
    }
    $("nav").hidden = view === "login";
    $("nav-worklist").classList.toggle("active", view === "worklist" || view === "alert");
    $("nav-metrics").classList.toggle("active", view === "metrics");
  }

  function showLogin(error) {
    show("login");
    $("message").hidden = true;
    const node = $("login-error");
    node.textContent = error || "";
    node.hidden = !error;
    $("token").focus();
  }

  async function login(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      showLogin("Saisissez votre jeton.");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login-submit").disabled = true;
    try {
      await api("GET", "/worklist?limit=1");
      $("token").value = "";
      $("login-error").hidden = true;
      if (location.hash === "#/worklist") {
        route();
      } else {
        location.hash = "#/worklist";
      }
    } catch (error) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(explain(error));
    } finally {
      $("login-submit").disabled = false;
    }
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    location.hash = "";
    showLogin("");
  }

  // Worklist -------------------------------------------------------------------------------------

  function hashParams() {
    const query = location.hash.split("?")[1] || "";
    return new URLSearchParams(query);
  }

  function worklistHash(ward, severity, offset) {
    const params = new URLSearchParams();
    if (ward) {
      params.set("ward", ward);
    }
    if (severity) {
      params.set("severity", severity);
    }
    if (offset > 0) {
      params.set("offset", String(offset));
    }
    const query = params.toString();
    return "#/worklist" + (query ? "?" + query : "");
  }

  async function showWorklist() {
    show("worklist");
    const params = hashParams();
    const ward = params.get("ward") || "";
    const severity = params.get("severity") || "";
    const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    $("filter-ward").value = ward;
    $("filter-severity").value = severity;
    const query = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(offset) });
    if (ward) {
      query.set("ward", ward);
    }
    if (severity) {
      query.set("severity", severity);
    }
    let page;
    try {
      page = await api("GET", "/worklist?" + query.toString());
    } catch (error) {
      handle(error);
      return;
    }
    const body = $("worklist").querySelector("tbody");
    clear(body);
    const wards = new Set();
    for (const item of page.items) {
      const title = link(alertHref(item.id), item.title || item.rule_id);
      const tr = row([
        numberCell(item.priority, 0),
        severityBadge(item.severity),
        title,
        item.patient_id,
        item.ward,
        formatTime(item.first_seen),
        item.message,
      ]);
      tr.dataset.alertId = item.id;
      tr.addEventListener("click", function (event) {
        if (event.target.tagName !== "A") {
          location.hash = alertHref(item.id);
        }
      });
      body.appendChild(tr);
      if (item.ward) {
        wards.add(item.ward);
      }
    }
    const seen = $("wards-seen");
    clear(seen);
    for (const code of Array.from(wards).sort()) {
      const option = document.createElement("option");
      option.value = code;
      seen.appendChild(option);
    }
    $("worklist").hidden = page.items.length === 0;
    $("worklist-empty").hidden = page.items.length !== 0;
    const last = offset + page.items.length;
    $("worklist-count").textContent = page.total === 0
      ? "Aucune alerte ouverte ne correspond."
      : page.total + " alerte" + (page.total > 1 ? "s" : "") + " ouverte"
        + (page.total > 1 ? "s" : "") + ", par priorité.";
    $("page-info").textContent = page.total === 0 ? "" : (offset + 1) + "–" + last + " sur " + page.total;
    $("page-prev").disabled = offset === 0;
    $("page-next").disabled = last >= page.total;
    $("page-prev").onclick = function () {
      location.hash = worklistHash(ward, severity, Math.max(0, offset - PAGE_SIZE));
    };
    $("page-next").onclick = function () {
      location.hash = worklistHash(ward, severity, offset + PAGE_SIZE);
    };
  }

  function filter(event) {
    event.preventDefault();
    location.hash = worklistHash($("filter-ward").value.trim(), $("filter-severity").value, 0);
  }

  function clearFilters() {
    location.hash = worklistHash("", "", 0);
  }

  // Alert ----------------------------------------------------------------------------------------

  function sourceText(source) {
    if (!source || typeof source !== "object") {
      return null;
    }
    const parts = [source.feed, source.document];
    if (source.message_id) {
      parts.push("message " + source.message_id);
    }
    if (source.position) {
      parts.push(source.position);
    }
    return parts.filter(function (part) { return part; }).join(" / ");
  }

  function evidenceRows(body, items, depth) {
    for (const item of items || []) {
      const name = (depth > 0 ? "\u00a0\u00a0".repeat(depth) + "↳ " : "") + text(item.name);
      let origin = sourceText(item.source);
      if (!origin && item.kind === "derived") {
        origin = "calculée à partir des éléments ci-dessous";
      }
      const tr = row([
        name,
        KIND[item.kind] || item.kind,
        item.code,
        typeof item.value === "number" ? numberCell(item.value) : item.value,
        item.unit,
        formatTime(item.time),
        origin,
      ]);
      if (item.fact_id) {
        tr.title = "fait " + item.fact_id;
      }
      body.appendChild(tr);
      if (Array.isArray(item.inputs) && item.inputs.length) {
        evidenceRows(body, item.inputs, depth + 1);
      }
    }
  }

  function coded(value) {
    if (!value || typeof value !== "object") {
      return null;
    }
    return value.code + (value.display ? " — " + value.display : "");
  }

  function fill(select, items, chosen) {
    clear(select);
    for (const item of items) {
      const option = document.createElement("option");
      option.value = item.code;
      option.textContent = /^[0-9.]+$/.test(item.code) ? item.code + " — " + item.label : item.label;
      select.appendChild(option);
    }
    if (chosen && items.some(function (item) { return item.code === chosen; })) {
      select.value = chosen;
    }
  }

  function labelOf(list, code) {
    const found = (list || []).find(function (item) { return item.code === code; });
    return found ? found.label : code;
  }

  async function showAlert(id) {
    show("alert");
    $("decide-error").hidden = true;
    $("decide").hidden = true;
    $("form-outcome").hidden = true;
    let alert;
    try {
      await loadCodes();
      alert = await api("GET", "/alerts/" + encodeURIComponent(id));
    } catch (error) {
      handle(error, $("decide-error"));
      return;
    }
    current = alert;
    setText("alert-title", alert.title || alert.rule_id);
    const badge = $("alert-severity");
    badge.textContent = SEVERITY[alert.severity] || alert.severity;
    badge.className = "sev sev-" + alert.severity;
    setText("alert-status", STATUS[alert.status] || alert.status);
    setText("alert-patient", alert.patient_id);
    setText("alert-ward", alert.ward);
    setText("alert-first-seen", formatTime(alert.first_seen));
    setText("alert-message", alert.message);

    const rule = alert.rule || {};
    setText("rule-id", rule.id);
    setText("rule-version", rule.version);
    const where = rule.file ? rule.file + (rule.line ? ", ligne " + rule.line : "") : null;
    setText("rule-source", [where, rule.pack ? rule.pack + " " + (rule.pack_version || "") : null]
      .filter(function (part) { return part; }).join(" · ") || null);
    setText("rule-problem", coded(alert.problem));
    setText("rule-intervention", coded(alert.intervention));
    setText("rule-reference", alert.reference);
    $("rule-text").textContent = rule.text || "(texte de la règle non disponible)";

    const evidence = $("evidence").querySelector("tbody");
    clear(evidence);
    evidenceRows(evidence, alert.evidence, 0);

    const thresholds = $("thresholds").querySelector("tbody");
    clear(thresholds);
    for (const t of alert.thresholds || []) {
      thresholds.appendChild(row([
        t.name,
        numberCell(t.value),
        (OPERATOR[t.op] || t.op) + " " + formatNumber(t.threshold) + (t.param ? " (" + t.param + ")" : ""),
        t.unit,
      ]));
    }
    $("thresholds").hidden = !(alert.thresholds && alert.thresholds.length);

    showPatient(alert.patient || {});
    showDecisions(alert);

    if (alert.status === "open") {
      fill($("ip-problem"), codes.problems, alert.problem && alert.problem.code);
      fill($("ip-intervention"), codes.interventions, alert.intervention && alert.intervention.code);
      fill($("dismiss-reason"), codes.dismiss_reasons);
      $("ip-comment").value = "";
      $("ip-contacted").checked = false;
      $("dismiss-comment").value = "";
      tab("intervention");
      $("decide").hidden = false;
    }
    const pending = (alert.decisions || []).find(function (d) {
      return d.kind === "intervention" && !d.outcome;
    });
    if (alert.status === "intervention" && pending) {
      fill($("outcome"), codes.outcomes);
      $("outcome-comment").value = "";
      $("form-outcome").hidden = false;
    }
  }

  function showPatient(patient) {
    const parts = ["Patient " + text(patient.patient_id)];
    if (patient.sex) {
      parts.push({ male: "homme", female: "femme", M: "homme", F: "femme" }[patient.sex] || patient.sex);
    }
    if (patient.birth_date) {
      parts.push("né(e) le " + formatTime(patient.birth_date));
    }
    if (patient.stay) {
      parts.push("séjour " + text(patient.stay.stay_id) + " en " + text(patient.stay.ward)
        + " depuis le " + formatTime(patient.stay.admit_time));
    }
    if (patient.as_of) {
      parts.push("données au " + formatTime(patient.as_of));
    }
    setText("patient-line", parts.join(", "));

    const labs = $("labs").querySelector("tbody");
    clear(labs);
    for (const lab of patient.labs || []) {
      const name = lab.concept || (lab.code && (lab.code.display || lab.code.code));
      const value = lab.value !== null && lab.value !== undefined ? lab.value : lab.original_value;
      labs.appendChild(row([
        name,
        typeof value === "number" ? numberCell(value) : value,
        lab.unit || lab.original_unit,
        formatTime(lab.time),
      ]));
    }
    const orders = $("orders").querySelector("tbody");
    clear(orders);
    for (const order of patient.active_orders || []) {
      const drug = order.label || (order.drug && (order.drug.display || order.drug.code));
      let dose = null;
      if (order.dose !== null && order.dose !== undefined) {
        dose = formatNumber(order.dose) + " " + text(order.dose_unit);
        if (order.frequency_per_day) {
          dose += " × " + formatNumber(order.frequency_per_day) + "/j";
        }
      } else if (order.frequency_text) {
        dose = order.frequency_text;
      }
      orders.appendChild(row([drug, order.atc, dose, order.route, formatTime(order.start)]));
    }
  }

  function showDecisions(alert) {
    const body = $("decisions").querySelector("tbody");
    clear(body);
    const decisions = alert.decisions || [];
    for (const d of decisions) {
      const what = d.kind === "intervention"
        ? [coded(d.problem), coded(d.intervention)].filter(function (x) { return x; }).join(" ; ")
        : labelOf(codes && codes.dismiss_reasons, d.dismiss_reason);
      let outcome = null;
      if (d.outcome) {
        outcome = labelOf(codes && codes.outcomes, d.outcome) + " (" + text(d.outcome_by) + ", "
          + formatTime(d.outcome_at) + ")" + (d.outcome_comment ? " : " + d.outcome_comment : "");
      } else if (d.kind === "intervention") {
        outcome = "en attente";
      }
      const contacted = d.prescriber_contacted === null || d.prescriber_contacted === undefined
        ? null : (d.prescriber_contacted ? "oui" : "non");
      body.appendChild(row([
        formatTime(d.decided_at),
        d.actor,
        DECISION[d.kind] || d.kind,
        what,
        d.comment,
        contacted,
        outcome,
      ]));
    }
    $("decisions").hidden = decisions.length === 0;
    $("decisions-empty").hidden = decisions.length !== 0;
  }

  function tab(which) {
    $("tab-intervention").classList.toggle("active", which === "intervention");
    $("tab-dismissal").classList.toggle("active", which === "dismissal");
    $("form-intervention").hidden = which !== "intervention";
    $("form-dismissal").hidden = which !== "dismissal";
  }

  async function decide(body, button, done) {
    $("decide-error").hidden = true;
    button.disabled = true;
    const alert = current;
    try {
      await api("POST", "/alerts/" + encodeURIComponent(alert.id) + "/decision", body);
    } catch (error) {
      handle(error, $("decide-error"));
      return;
    } finally {
      button.disabled = false;
    }
    done(alert);
  }

  function submitIntervention(event) {
    event.preventDefault();
    const comment = $("ip-comment").value.trim();
    if (!comment) {
      showError($("decide-error"), "Décrivez l'intervention dans le commentaire.");
      return;
    }
    const body = {
      kind: "intervention",
      problem: $("ip-problem").value,
      intervention: $("ip-intervention").value,
      comment: comment,
      prescriber_contacted: $("ip-contacted").checked,
      evidence_key: current.evidence_key,
    };
    decide(body, $("ip-submit"), function (alert) {
      flash("Intervention enregistrée : « " + text(alert.title) + " » (patient " + text(alert.patient_id)
        + ") a quitté la liste de travail.", alertHref(alert.id), "Saisir son devenir plus tard");
      location.hash = "#/worklist";
    });
  }

  function submitDismissal(event) {
    event.preventDefault();
    const reason = $("dismiss-reason").value;
    const comment = $("dismiss-comment").value.trim();
    if (reason === "other" && !comment) {
      showError($("decide-error"), "Précisez le motif « autre » dans le commentaire.");
      return;
    }
    const body = { kind: "dismissal", reason: reason, comment: comment, evidence_key: current.evidence_key };
    decide(body, $("dismiss-submit"), function (alert) {
      flash("Alerte écartée : « " + text(alert.title) + " » (patient " + text(alert.patient_id) + ").",
        alertHref(alert.id), "Voir l'alerte");
      location.hash = "#/worklist";
    });
  }

  function submitOutcome(event) {
    event.preventDefault();
    const comment = $("outcome-comment").value.trim();
    const body = { kind: "outcome", outcome: $("outcome").value, comment: comment || null };
    decide(body, $("outcome-submit"), function (alert) {
      flash("Devenir enregistré : " + labelOf(codes.outcomes, body.outcome) + ".");
      showAlert(alert.id).then(showFlash);
    });
  }

  // Interventions awaiting the prescriber's answer (the worklist shows open alerts only: this is
  // the way back to an intervention whose outcome is to be recorded).
  async function showAwaiting() {
    let box = $("awaiting");
    if (!box) {
      box = el("div", undefined, "card");
      box.id = "awaiting";
      box.appendChild(el("h2", "Interventions en attente de devenir"));
      box.appendChild(document.createElement("ul"));
      $("view-worklist").appendChild(box);
    }
    const list = box.querySelector("ul");
    let waiting = [];
    try {
      waiting = await api("GET", "/interventions/awaiting-outcome?limit=20");
    } catch (error) {
      waiting = [];  // the worklist above says what went wrong
    }
    clear(list);
    for (const d of waiting) {
      const item = document.createElement("li");
      item.appendChild(link(alertHref(d.alert_id), d.rule_id + " — patient " + d.patient_id));
      const when = " — intervention du " + String(d.decided_at).slice(0, 10);
      item.appendChild(document.createTextNode(when + (d.ward ? " (" + d.ward + ")" : "")));
      list.appendChild(item);
    }
    box.hidden = waiting.length === 0;
  }

  // Metrics --------------------------------------------------------------------------------------

  const MONTH_KEYS = ["month", "period", "mois"];
  const IP_KEYS = ["ip", "interventions", "ip_count", "intervention_count", "count", "n"];
  const BEDS_KEYS = ["beds", "bed_count", "lits"];
  const RATE_KEYS = [
    "ip_per_100_beds", "per_100_beds", "ip_per_100", "rate", "value",
  ];

  function first(object, keys) {
    for (const key of keys) {
      if (object[key] !== undefined && object[key] !== null) {
        return object[key];
      }
    }
    return undefined;
  }

  function monthOf(value) {
    const match = /^(\d{4}-\d{2})/.exec(String(value === undefined ? "" : value));
    return match ? match[1] : null;
  }

  // The rows {month, hospital, ward, label, ip, beds, rate, partial, note} of the IP per 100 beds
  // per month. GET /metrics gives them as {ip_per_100_beds: {hospitals: [...], wards: [...]}}
  // (vigie.store.metrics.IpRates); another shape (a list of rows, rows nested by hospital and
  // ward, maps keyed by month) is searched for rows holding a month and a count or a rate.
  function ipRows(data) {
    const rates = data && data.ip_per_100_beds;
    if (rates && Array.isArray(rates.hospitals) && Array.isArray(rates.wards)) {
      const rows = [];
      for (const r of rates.hospitals) {
        rows.push(ipRow(r, r.hospital, null, null));
      }
      for (const r of rates.wards) {
        rows.push(ipRow(r, r.hospital, r.ward || "?", r.label));
      }
      return rows.filter(function (r) { return r.month; });
    }
    let section = data;
    if (data && typeof data === "object" && !Array.isArray(data)) {
      const key = Object.keys(data).find(function (k) {
        return /^ip.*100|per_100_beds/i.test(k);
      });
      if (key !== undefined) {
        section = data[key];
      }
    }
    const rows = [];
    walk(section, {}, rows, 0);
    return rows;
  }

  function ipRow(r, hospital, ward, label) {
    return {
      month: monthOf(r.month),
      hospital: hospital,
      ward: ward,
      label: label,
      ip: r.ip,
      beds: r.beds,
      rate: r.ip_per_100_beds,
      partial: r.partial === true,
      note: r.note,
    };
  }

  function walk(node, context, rows, depth) {
    if (depth > 6 || node === null || typeof node !== "object") {
      return;
    }
    if (Array.isArray(node)) {
      for (const item of node) {
        walk(item, context, rows, depth + 1);
      }
      return;
    }
    const here = Object.assign({}, context);
    const hospital = first(node, ["hospital", "hospital_code", "etablissement"]);
    const ward = first(node, ["ward", "ward_code", "uf"]);
    if (typeof hospital === "string") {
      here.hospital = hospital;
    }
    if (typeof ward === "string") {
      here.ward = ward;
    }
    if (first(node, ["beds", "bed_count"]) !== undefined) {
      here.beds = first(node, BEDS_KEYS);
    }
    const month = monthOf(first(node, MONTH_KEYS)) || here.month;
    if (month && (first(node, IP_KEYS) !== undefined || first(node, RATE_KEYS) !== undefined)) {
      const ip = first(node, IP_KEYS);
      const beds = first(node, BEDS_KEYS) !== undefined ? first(node, BEDS_KEYS) : here.beds;
      let rate = first(node, RATE_KEYS);
      if (typeof rate !== "number" && typeof ip === "number" && typeof beds === "number" && beds > 0) {
        rate = (100 * ip) / beds;
      }
      rows.push({ month: month, hospital: here.hospital, ward: here.ward, ip: ip, beds: beds, rate: rate });
      return;
    }
    for (const key of Object.keys(node)) {
      const value = node[key];
      if (/^\d{4}-\d{2}/.test(key)) {
        if (typeof value === "number") {
          rows.push({ month: monthOf(key), hospital: here.hospital, ward: here.ward, ip: undefined,
            beds: here.beds, rate: value });
        } else {
          walk(value, Object.assign({}, here, { month: monthOf(key) }), rows, depth + 1);
        }
      } else if (value !== null && typeof value === "object") {
        walk(value, here, rows, depth + 1);
      }
    }
  }

  function seriesKey(r) {
    return (r.hospital || "") + "\u001f" + (r.ward || "");
  }

  function seriesLabel(r) {
    if (!r.ward) {
      return (r.hospital ? r.hospital + " — " : "") + "tout l'établissement";
    }
    return (r.hospital ? r.hospital + " / " : "") + r.ward;
  }

  async function showMetrics() {
    show("metrics");
    let data;
    try {
      data = await api("GET", "/metrics");
    } catch (error) {
      handle(error);
      return;
    }
    const rows = ipRows(data).sort(function (a, b) {
      return a.month < b.month ? -1 : a.month > b.month ? 1 : seriesKey(a) < seriesKey(b) ? -1 : 1;
    });
    const body = $("ip-table").querySelector("tbody");
    clear(body);
    for (const r of rows) {
      const ward = r.ward ? r.ward + (r.label ? " — " + r.label : "") : "tout l'établissement";
      const tr = row([
        formatMonth(r.month) + (r.partial ? " (partiel)" : ""),
        r.hospital,
        ward,
        numberCell(r.ip),
        numberCell(r.beds),
        numberCell(r.rate, 1),
      ]);
      if (r.note) {
        tr.title = r.note;
      }
      if (!r.ward) {
        tr.className = "total";
      }
      tr.dataset.month = r.month;
      tr.dataset.ward = r.ward || "";
      body.appendChild(tr);
    }
    $("ip-table").hidden = rows.length === 0;
    $("metrics-empty").hidden = rows.length !== 0;

    const select = $("metrics-series");
    const series = new Map();
    for (const r of rows) {
      if (!series.has(seriesKey(r))) {
        series.set(seriesKey(r), seriesLabel(r));
      }
    }
    const previous = select.value;
    clear(select);
    for (const [key, label] of series) {
      const option = document.createElement("option");
      option.value = key;
      option.textContent = label;
      select.appendChild(option);
    }
    if (series.has(previous)) {
      select.value = previous;
    }
    select.onchange = function () {
      chart(rows.filter(function (r) { return seriesKey(r) === select.value; }));
    };
    select.parentElement.hidden = series.size < 2;
    chart(rows.filter(function (r) { return seriesKey(r) === select.value; }));
    showFigures(data);
  }

  // The other figures of GET /metrics, when the answer has them: the funnel, the PPV, the median
  // time to decision, the IPs by SFPC problem.
  function showFigures(data) {
    const box = $("figures");
    clear(box);
    const funnel = data && data.funnel && data.funnel.total;
    const items = [];
    if (funnel && typeof funnel === "object") {
      items.push(["Alertes ouvertes", funnel.alerts], ["Décidées", funnel.decided],
        ["Pertinentes", funnel.relevant], ["IP", funnel.ip], ["IP acceptées", funnel.accepted]);
    }
    const ppv = data && data.ppv_total;
    if (ppv && typeof ppv === "object") {
      items.push(["Valeur prédictive positive",
        typeof ppv.ppv === "number" ? formatNumber(100 * ppv.ppv, 0) + " %" : null]);
    }
    const times = data && data.time_to_decision && data.time_to_decision.overall;
    if (times && typeof times === "object") {
      items.push(["Délai médian de décision",
        typeof times.median_hours === "number" ? formatNumber(times.median_hours, 1) + " h" : null]);
    }
    for (const [label, value] of items) {
      const figure = el("div", undefined, "figure");
      figure.appendChild(el("span", typeof value === "number" ? formatNumber(value) : value, "figure-value"));
      figure.appendChild(el("span", label, "figure-label"));
      box.appendChild(figure);
    }
    box.hidden = items.length === 0;

    const problems = Array.isArray(data && data.ip_by_problem) ? data.ip_by_problem : [];
    const body = $("ip-problems").querySelector("tbody");
    clear(body);
    for (const p of problems) {
      body.appendChild(row([p.code, p.label, numberCell(p.ip)]));
    }
    $("ip-problems-block").hidden = problems.length === 0;
  }

  function svg(tag, attributes, content) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const name of Object.keys(attributes)) {
      node.setAttribute(name, String(attributes[name]));
    }
    if (content !== undefined) {
      node.textContent = content;
    }
    return node;
  }

  // Bars of IP per 100 beds, one per month, drawn as inline SVG.
  function chart(rows) {
    const box = $("chart");
    clear(box);
    if (rows.length === 0) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const width = 760;
    const height = 280;
    const margin = { top: 24, right: 16, bottom: 40, left: 48 };
    const inner = { w: width - margin.left - margin.right, h: height - margin.top - margin.bottom };
    const values = rows.map(function (r) { return typeof r.rate === "number" ? r.rate : 0; });
    const top = niceMax(Math.max.apply(null, values));
    const root = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      role: "img",
      "aria-label": "IP pour 100 lits par mois",
    });
    root.appendChild(svg("title", {}, "Interventions pharmaceutiques pour 100 lits, par mois"));
    const ticks = 4;
    for (let i = 0; i <= ticks; i += 1) {
      const value = (top * i) / ticks;
      const y = margin.top + inner.h - (inner.h * i) / ticks;
      root.appendChild(svg("line", { x1: margin.left, x2: width - margin.right, y1: y, y2: y,
        class: i === 0 ? "axis" : "gridline" }));
      root.appendChild(svg("text", { x: margin.left - 6, y: y + 4, "text-anchor": "end" },
        formatNumber(value, value < 10 && top <= 4 ? 1 : 0)));
    }
    const slot = inner.w / rows.length;
    const barWidth = Math.min(60, slot * 0.6);
    rows.forEach(function (r, i) {
      const value = values[i];
      const h = top > 0 ? (inner.h * value) / top : 0;
      const x = margin.left + slot * i + (slot - barWidth) / 2;
      const y = margin.top + inner.h - h;
      const bar = svg("rect", { x: x, y: y, width: barWidth, height: Math.max(h, 0), class: "bar" });
      bar.setAttribute("data-month", r.month);
      bar.appendChild(svg("title", {}, formatMonth(r.month) + " : " + formatNumber(r.ip) + " IP, "
        + formatNumber(r.beds) + " lits, " + formatNumber(value, 1) + " IP pour 100 lits"));
      root.appendChild(bar);
      root.appendChild(svg("text", { x: x + barWidth / 2, y: y - 6, "text-anchor": "middle",
        class: "value" }, formatNumber(value, 1)));
      root.appendChild(svg("text", { x: x + barWidth / 2, y: margin.top + inner.h + 18,
        "text-anchor": "middle" }, formatMonth(r.month)));
    });
    root.appendChild(svg("text", { x: margin.left, y: 14 }, "IP / 100 lits"));
    box.appendChild(root);
  }

  function niceMax(value) {
    if (!(value > 0)) {
      return 1;
    }
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * power >= value * 1.1) {
        return step * power;
      }
    }
    return 10 * power;
  }

  // Routing --------------------------------------------------------------------------------------

  function route() {
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      showLogin("");
      return;
    }
    showFlash();
    const hash = location.hash || "#/worklist";
    const alertMatch = /^#\/alerts\/([^?]+)/.exec(hash);
    if (alertMatch) {
      showAlert(decodeURIComponent(alertMatch[1]));
    } else if (hash.startsWith("#/metrics")) {
      showMetrics();
    } else {
      showAwaiting();
      showWorklist();
    }
  }

  function start() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("filters").addEventListener("submit", filter);
    $("filters-clear").addEventListener("click", clearFilters);
    $("tab-intervention").addEventListener("click", function () { tab("intervention"); });
    $("tab-dismissal").addEventListener("click", function () { tab("dismissal"); });
    $("form-intervention").addEventListener("submit", submitIntervention);
    $("form-dismissal").addEventListener("submit", submitDismissal);
    $("form-outcome").addEventListener("submit", submitOutcome);
    $("metrics-filters").addEventListener("submit", function (event) { event.preventDefault(); });
    window.addEventListener("hashchange", route);
    route();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
