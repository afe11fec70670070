"""The live worklist: the service's alerts kept current as facts arrive, without a batch refresh.

``LiveWorklist`` holds one ``LiveEvaluator`` per pack the service runs (the shipped default and
ANSM packs, as ``refresh_worklist`` compiles them; per pack and ward setting with a site
configuration) and the alerts it last wrote to the store's worklist (``AlertStore``):

- ``start(as_of)`` loads every fact of the store into the evaluators, evaluates them as of
  ``as_of`` (default: the clock) and reconciles the worklist with the result, for every
  patient: after a restart the worklist is the live state, whatever the process knew before.
- ``apply(facts, retractions)`` (what ``POST /ingest/*`` and the MLLP listener's parser give)
  re-evaluates the rules those facts can change, for their patients only, and writes what
  changed (``AlertStore.apply_diff``).
- ``tick(now)`` re-evaluates what time passing changed (windows closing, lines ending,
  patients leaving); ``start_ticking(seconds)`` does it in a background thread.

The site configuration (``site``, ``configure(site)``: ``vigie.engine.site_config``) applies per
ward, as ``vigie batch --config`` applies it: a patient's alerts are those of the settings of the
ward of the stay they are in at the evaluation time (``current_stay``; the hospital's settings
when in none, or in a ward the configuration does not name). There is one evaluator per pack and
distinct setting (wards whose settings select the same rules and parameter values for a pack
share one), each holding every patient's facts, so that a patient changing ward — a new stay, or
time passing into it — is shown the other evaluator's alerts at once, without re-reading facts.
``configure`` evaluates every patient again with the new settings: the evaluators of settings
that changed are loaded from the store's facts without holding the worklist (facts applied
meanwhile reach the current evaluators and are logged for the new ones), then swapped in.

The worklist is that of ``refresh_worklist`` at the same time: the alerts of the patients in a
stay at the evaluation time (scope ``inpatients``; ``all``: every patient), each with its
priority score (``vigie.engine.priority``: severity, distance past the threshold, age, renal
function, the patient's other open alerts). Scores are computed per patient from the facts they
read (patient record, stays, eGFR, clearance, creatinine, weight), kept here beside the
evaluators.

The clock is the real time by default, or a fixed ``as_of`` for a store whose data lie in the
past (``vigie serve --as-of``, a demo): facts are evaluated as of it, and time does not pass.

Every method takes one lock: the HTTP routes' threads, the MLLP listener's parser thread and the
ticking thread may call them at once. A failed write to the worklist (database down) is retried
by the next call, which reconciles every patient from the evaluators' state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from vigie.engine.alerts import Alert
from vigie.engine.evaluate import current_stay, normalise_time
from vigie.engine.factset import PatientRecord
from vigie.engine.live import AlertDiff, LiveEvaluator, same_content
from vigie.engine.load import LoadedPack
from vigie.engine.priority import worklist
from vigie.engine.site_config import SiteConfig, applied_under
from vigie.errors import VigieError
from vigie.facts import AnyFact, LabResult, Observation, Patient, Retraction, Stay
from vigie.store import AlertStore, FactStore
from vigie.store.alerts import Reconciled

if TYPE_CHECKING:
    from vigie.ingest.messages import MessageResult

__all__ = ["DEFAULT_TICK_SECONDS", "LiveWorklist"]

log = logging.getLogger("vigie.api.live")

DEFAULT_TICK_SECONDS = 30.0
"""How often the service re-evaluates what time passing changed (``vigie serve --tick``)."""

# What the priority score reads about a patient (``vigie.engine.priority.patient_context``).
_CONTEXT_LABS = frozenset({"egfr", "creatinine_clearance", "creatinine"})
_CONTEXT_OBSERVATIONS = frozenset({"weight"})
SCOPES = ("inpatients", "all")

# A pack (its position in the packs run) and the rules and parameter values a ward selects.
_Setting = tuple[int, tuple[int, ...], tuple[tuple[str, float], ...]]

# The bootstrap's first pass: every fact is added as of a moment after all of them (no line is
# active then, so almost no rule is evaluated), then one ``tick`` back to the evaluation time
# evaluates each patient once, in full (the evaluator's clock going back).
_AFTER_EVERYTHING = datetime(9000, 1, 1)


def _in_context(fact: AnyFact) -> bool:
    match fact:
        case Patient() | Stay():
            return True
        case LabResult(concept=str(concept)):
            return concept in _CONTEXT_LABS
        case Observation(concept=str(concept)):
            return concept in _CONTEXT_OBSERVATIONS
    return False


class LiveWorklist:
    """The service's worklist kept current from the facts (module docstring)."""

    def __init__(
        self,
        store: FactStore,
        packs: Sequence[LoadedPack] | None = None,
        *,
        as_of: datetime | None = None,
        clock: Callable[[], datetime] | None = None,
        scope: str = "inpatients",
        site: SiteConfig | None = None,
    ) -> None:
        """``packs`` default to the shipped default and ANSM packs (compiled at ``start``);
        ``as_of`` fixes the clock, else ``clock()`` (default: now) gives it; ``site``: the
        site configuration (checked against the packs), else the packs' defaults."""
        if scope not in SCOPES:
            raise VigieError(f"unknown scope {scope!r}: {' or '.join(SCOPES)}")
        self.store = store
        self.alerts = AlertStore(store)
        self.scope = scope
        self._packs = list(packs) if packs is not None else None
        self._shipped_packs = packs is None  # recorded at start (rule texts for the alerts)
        self._fixed = normalise_time(as_of) if as_of is not None else None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._site = site
        self._evaluators: list[LiveEvaluator] = []
        # The evaluators each ward runs, one per pack on there; key None: the hospital's
        # settings (every ward the configuration does not name, and patients in no stay).
        self._routes: dict[str | None, tuple[LiveEvaluator, ...]] = {None: ()}
        self._by_setting: dict[_Setting, LiveEvaluator] = {}
        # Facts the priority score reads, per patient, and the patient of each (versions and
        # retractions replace them).
        self._context: dict[str, dict[tuple[str, str], AnyFact]] = {}
        self._context_owner: dict[tuple[str, str], str] = {}
        self._shown: dict[str, dict[str, Alert]] = {}  # patient → alert id → as written
        # The version time of each fact's current version, or of its retraction (a tombstone),
        # when known: as in the store, an older version arriving later changes nothing.
        self._versions: dict[tuple[str, str], datetime] = {}
        # Logs of what ``apply`` took while ``configure`` loads new evaluators outside the lock:
        # (facts, retractions) in order, given to them before they replace the current ones.
        self._loading: list[list[tuple[list[AnyFact], list[Retraction]]]] = []
        self._configuring = threading.Lock()  # one configuration applied at a time
        self._stale = False  # a write failed: reconcile everything at the next call
        self._unreconciled: set[str] = set()  # patients a failed reload left to reconcile
        self._started = False
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.last_tick: datetime | None = None
        # Told what ``start`` did (``vigie serve`` prints it).
        self.on_start: Callable[[Reconciled, datetime], None] | None = None
        # Told when a configuration built evaluators, once they serve and the worklist's lock
        # is released (``vigie serve`` moves what they hold out of the collector's way).
        self.on_configured: Callable[[], None] | None = None

    # The clock -----------------------------------------------------------------------------

    def now(self) -> datetime:
        """The evaluation time: the fixed ``as_of``, else the clock's (naive UTC)."""
        return self._fixed if self._fixed is not None else normalise_time(self._clock())

    @property
    def started(self) -> bool:
        return self._started

    @property
    def site(self) -> SiteConfig | None:
        """The site configuration applied (``None``: the packs' defaults)."""
        return self._site

    @property
    def packs(self) -> list[LoadedPack]:
        """The packs evaluated (compiled on first use)."""
        if self._packs is None:
            from vigie.api.batch import load_packs

            self._packs = load_packs(())
        return self._packs

    # Start ---------------------------------------------------------------------------------

    def start(self, as_of: datetime | None = None) -> Reconciled:
        """Load the store's facts, evaluate them as of ``as_of`` (default: the clock) and
        reconcile the worklist with the result for every patient of the store."""
        with self._lock:
            at = normalise_time(as_of) if as_of is not None else self.now()
            self._record_packs()
            done = self._load(self._site, at)
            if self.on_start is not None:
                self.on_start(done, at)
            return done

    def configure(self, site: SiteConfig | None) -> Reconciled | None:
        """Apply another site configuration (``None``: the packs' defaults): once started,
        every patient is evaluated again with it, from the store's facts, as of the clock, and
        the worklist reconciled (an alert no longer raised — its rule turned off, a cursor
        moved past its value — is missed as by any evaluation: ``resolved_by_data`` when open,
        its decision kept otherwise). The evaluators of settings that did not change are kept
        (they hold the facts already); the others are loaded from the store's facts without
        holding the worklist: meanwhile ingested facts and ticks reach the worklist under the
        current configuration, and the facts are given to the new evaluators too before they
        replace the current ones (the worklist's lock is held for that and the reconciliation
        only). Before ``start``, only kept for it."""
        with self._configuring:
            with self._lock:
                if not self._started:
                    self._evaluators_for(site, self.now())  # a configuration the packs refuse
                    self._site = site
                    return None
                built, routes = self._evaluators_for(site, self.now(), self._by_setting)
                fresh = [e for key, e in built.items() if self._by_setting.get(key) is not e]
                meanwhile: list[tuple[list[AnyFact], list[Retraction]]] = []
                self._loading.append(meanwhile)
            try:
                patients = self._fill(fresh)  # the store read outside the lock
            except Exception:
                with self._lock:
                    self._loading.remove(meanwhile)
                raise
            with self._lock:
                self._loading.remove(meanwhile)
                try:
                    at, why = self.now(), applied_under(site)
                    done = self._swap(site, built, routes, fresh, meanwhile, patients, at, why)
                except Exception:
                    self._stale = True  # the next call that writes reconciles every patient
                    raise
            if fresh and self.on_configured is not None:
                self.on_configured()
            return done

    def _fill(self, evaluators: Sequence[LiveEvaluator]) -> set[str]:
        """Every fact of the store into ``evaluators`` (new, not yet read by anyone else);
        the patients read."""
        patients: set[str] = set()
        if not evaluators:
            return patients
        for fact in self.store.iter_facts():
            patients.add(fact.patient_id)
            for evaluator in evaluators:
                evaluator.add(fact, _AFTER_EVERYTHING)
        return patients

    def _swap(
        self,
        site: SiteConfig | None,
        built: dict[_Setting, LiveEvaluator],
        routes: dict[str | None, tuple[LiveEvaluator, ...]],
        fresh: Sequence[LiveEvaluator],
        applied: Sequence[tuple[list[AnyFact], list[Retraction]]],
        patients: set[str],
        at: datetime,
        why: str | None = None,
    ) -> Reconciled:
        """(Under the lock.) The new evaluators given what ``apply`` took while they were
        loaded, evaluated as of ``at``, then in force: every patient's alerts shown again and
        the worklist reconciled for ``patients`` and every patient shown before or now
        (``why``: said by the events of the alerts it resolves)."""
        for facts, retractions in applied:
            for evaluator in fresh:
                evaluator.add_many(facts, _AFTER_EVERYTHING)
                for retraction in retractions:
                    evaluator.retract(retraction.kind, retraction.fact_id, _AFTER_EVERYTHING)
            patients.update(f.patient_id for f in facts)
            patients.update(r.patient_id for r in retractions)
        for evaluator in fresh:
            evaluator.tick(at)
        shown_before = set(self._shown)
        self._site, self._evaluators, self._routes = site, list(built.values()), routes
        self._by_setting = built
        self._shown = {}
        for patient_id in {a.patient_id for e in self._evaluators for a in e.alerts()}:
            shown = self._worklist_of(patient_id, at)
            if shown:
                self._shown[patient_id] = shown
        raised = [alert for shown in self._shown.values() for alert in shown.values()]
        scope = patients | shown_before | set(self._shown) | set(self._context)
        try:
            done = self.alerts.reconcile(raised, at, scope=scope, why=why)
        except VigieError:
            self._unreconciled = scope  # reconciled by the next call that writes
            raise
        self._stale = False
        self._unreconciled = set()
        self.last_tick = at
        return done

    def _evaluators_for(
        self,
        site: SiteConfig | None,
        at: datetime,
        held: Mapping[_Setting, LiveEvaluator] | None = None,
    ) -> tuple[dict[_Setting, LiveEvaluator], dict[str | None, tuple[LiveEvaluator, ...]]]:
        """One evaluator per pack and distinct selection the configuration gives a ward (wards
        with the same rules and parameter values for a pack share its evaluator), by setting,
        and the evaluators of each ward the configuration names (key ``None``: the
        hospital's). An evaluator ``held`` for a setting is taken again, not made."""
        built: dict[_Setting, LiveEvaluator] = {}
        routes: dict[str | None, tuple[LiveEvaluator, ...]] = {}
        for ward in (None, *(site.wards if site is not None else ())):
            chosen = []
            for index, pack in enumerate(self.packs):
                arguments = {} if site is None else site.select_arguments(pack, ward)
                if arguments is None:
                    continue  # the pack is off in this ward
                selection = pack.select(**arguments)
                key = (
                    index,
                    tuple(rule.index for rule in selection.rules),
                    tuple(sorted(selection.params.items())),
                )
                if key not in built:
                    again = held.get(key) if held is not None else None
                    built[key] = again or LiveEvaluator(pack, **arguments, now=at)
                chosen.append(built[key])
            routes[ward] = tuple(chosen)
        return built, routes

    def _load(self, site: SiteConfig | None, at: datetime) -> Reconciled:
        """Every fact of the store into new evaluators (``site``'s), evaluated as of ``at``;
        the worklist reconciled with the result for every patient of the store."""
        built, routes = self._evaluators_for(site, at)
        fresh = list(built.values())
        before = (self._context, self._context_owner, self._versions)
        self._context, self._context_owner = {}, {}
        patients: set[str] = set()
        try:
            self._versions = self._tombstones()
            for fact in self.store.iter_facts():
                patients.add(fact.patient_id)
                self._newer(fact.kind, fact.fact_id, fact.source.version_time)
                for evaluator in fresh:
                    evaluator.add(fact, _AFTER_EVERYTHING)
                self._remember(fact)
        except Exception:  # the store unreadable: what was held stays as it was
            self._context, self._context_owner, self._versions = before
            raise
        done = self._swap(site, built, routes, fresh, (), patients, at)
        self._started = True
        return done

    def _record_packs(self) -> None:
        """Record the text of the packs run (the alerts show their rule's text and line)."""
        if not self._shipped_packs:
            return  # packs given by the caller: it records them if it wants
        from vigie.api.batch import record_packs

        record_packs(self.store, self.packs, ())

    # Updates -------------------------------------------------------------------------------

    def apply(
        self, facts: Iterable[AnyFact], retractions: Iterable[Retraction] = ()
    ) -> Reconciled | None:
        """Take new facts (and facts withdrawn by their sender) in, as of the clock, and write
        what changed to the worklist. ``None`` before ``start``: the facts are in the store,
        and ``start`` will read them."""
        with self._lock:
            if not self._started:
                return None
            # What the store kept: a version older than the one held (or than its retraction)
            # was not stored over it.
            facts = [f for f in facts if self._newer(f.kind, f.fact_id, f.source.version_time)]
            retractions = [
                r for r in retractions if self._newer(r.kind, r.fact_id, r.source.version_time)
            ]
            if not facts and not retractions:
                return None
            at = self.now()
            touched = {f.patient_id for f in facts} | {r.patient_id for r in retractions}
            for meanwhile in self._loading:  # evaluators being loaded get them before their swap
                meanwhile.append((facts, list(retractions)))
            for evaluator in self._evaluators:
                diff = evaluator.add_many(facts, at)
                for retraction in retractions:
                    diff = diff.merge(evaluator.retract(retraction.kind, retraction.fact_id, at))
                touched |= diff.patients()  # explained by _write
            for fact in facts:
                moved_from = self._remember(fact)
                if moved_from is not None:
                    touched.add(moved_from)
            for retraction in retractions:
                self._forget(retraction.kind, retraction.fact_id, touched)
            return self._write(touched, at)

    def apply_results(self, results: Iterable[MessageResult]) -> None:
        """``apply`` what ingested messages gave (``vigie.ingest.messages``; the MLLP
        listener's ``on_results`` hook)."""
        facts: list[AnyFact] = []
        retractions: list[Retraction] = []
        for result in results:
            facts.extend(result.facts)
            retractions.extend(result.retractions)
        if facts or retractions:
            self.apply(facts, retractions)

    def tick(self, now: datetime | None = None) -> Reconciled | None:
        """Re-evaluate what time passing until ``now`` (default: the clock) changed, and the
        priority of every patient with alerts (an age, a result dated later becoming visible)."""
        with self._lock:
            if not self._started:
                return None
            at = normalise_time(now) if now is not None else self.now()
            touched = set(self._shown)
            for evaluator in self._evaluators:
                touched |= evaluator.tick(at).patients()
            self.last_tick = at
            return self._write(touched, at)

    def worklist(self, patient_id: str | None = None) -> list[Alert]:
        """The alerts as last written to the store (one patient or all), with priorities."""
        with self._lock:
            if patient_id is not None:
                return list(self._shown.get(patient_id, {}).values())
            return [alert for shown in self._shown.values() for alert in shown.values()]

    # Ticking in the background -------------------------------------------------------------

    def start_ticking(self, seconds: float = DEFAULT_TICK_SECONDS) -> None:
        """Call ``tick`` every ``seconds`` in a daemon thread, until ``stop``."""
        if seconds <= 0:
            raise VigieError(f"the tick interval must be positive, not {seconds}")
        if self._ticker is not None:
            return
        self._stopping.clear()

        def run() -> None:
            while not self._stopping.wait(seconds):
                try:
                    self.tick()
                except Exception as error:  # logged by class only: messages may hold data
                    log.error("live worklist tick failed: %s", error.__class__.__name__)

        self._ticker = threading.Thread(target=run, name="vigie-live-tick", daemon=True)
        self._ticker.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the ticking thread (a tick under way finishes first)."""
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout)
            self._ticker = None

    # Internals -----------------------------------------------------------------------------

    def _write(self, touched: set[str], at: datetime) -> Reconciled | None:
        """Write the touched patients' changes; after a failed write, every patient's."""
        if self._stale:
            touched = touched | set(self._shown) | self._unreconciled
            touched |= {a.patient_id for e in self._evaluators for a in e.alerts()}
        diff = AlertDiff()
        fresh: dict[str, dict[str, Alert]] = {}
        for patient_id in touched:
            shown = self._worklist_of(patient_id, at)
            before = self._shown.get(patient_id, {})
            fresh[patient_id] = shown
            for alert_id, alert in shown.items():
                old = before.get(alert_id)
                if old is None:
                    diff.new.append(alert)
                elif not same_content(old, alert):
                    diff.updated.append(alert)
            diff.resolved.extend(a for i, a in before.items() if i not in shown)
        if not diff and not self._stale:
            return None
        try:
            if self._stale:
                raised = [a for p, s in {**self._shown, **fresh}.items() for a in s.values()]
                done = self.alerts.reconcile(raised, at, scope=touched)
            else:
                done = self.alerts.apply_diff(diff, at)
        except VigieError:
            self._stale = True
            raise
        self._stale = False
        self._unreconciled = set()
        for patient_id, shown in fresh.items():
            if shown:
                self._shown[patient_id] = shown
            else:
                self._shown.pop(patient_id, None)
        return done

    def _newer(self, kind: str, fact_id: str, version: datetime | None) -> bool:
        """Whether a version (of a fact, or its retraction) replaces the one held, by the
        store's rule (``FactStore._upsert``): unless both version times are known and it is
        the older; kept as the one held if so."""
        key = (kind, fact_id)
        held = self._versions.get(key)
        if held is not None and version is not None and version < held:
            return False
        if version is None:
            self._versions.pop(key, None)
        else:
            self._versions[key] = version
        return True

    def _tombstones(self) -> dict[tuple[str, str], datetime]:
        """The version times of the store's retractions (facts withdrawn, or withdrawn before
        they came)."""
        from sqlalchemy import select

        from vigie.store.database import FactRow

        query = select(FactRow.kind, FactRow.fact_id, FactRow.version_time).where(
            FactRow.retracted.is_(True), FactRow.version_time.is_not(None)
        )
        with self.store.session() as session:
            rows = session.execute(query).all()
        return {(kind, fid): moment for kind, fid, moment in rows if moment is not None}

    def _worklist_of(self, patient_id: str, at: datetime) -> dict[str, Alert]:
        """The patient's alerts in scope, each with its priority score: those of the
        evaluators of the ward of the stay the patient is in at ``at`` (``current_stay``, as
        ``evaluate`` and ``vigie batch --config`` attribute a patient to a ward)."""
        evaluators = self._routes[None]
        record: PatientRecord | None = None
        if len(self._routes) > 1:
            if not any(evaluator.alerts(patient_id) for evaluator in self._evaluators):
                return {}
            record = self._record(patient_id)
            stay = current_stay(record, at)
            ward = stay.ward if stay is not None else None
            evaluators = self._routes.get(ward, evaluators)
        raised = [
            alert
            for evaluator in evaluators
            for alert in evaluator.alerts(patient_id)
            if self.scope == "all" or alert.stay_id is not None
        ]
        if not raised:
            return {}
        records = {patient_id: record or self._record(patient_id)}
        return {
            item.alert.id: item.alert.model_copy(update={"priority": item.priority.score})
            for item in worklist(raised, records, at)
        }

    def _record(self, patient_id: str) -> PatientRecord:
        record = PatientRecord(patient_id)
        for fact in self._context.get(patient_id, {}).values():
            record.add(fact)
        record.sort()
        return record

    def _remember(self, fact: AnyFact) -> str | None:
        """Keep a fact the priority reads; the patient it moved from, if it did."""
        if not _in_context(fact):
            return None
        key = (fact.kind, fact.fact_id)
        owner = self._context_owner.get(key)
        previous = self._context.get(owner, {}).pop(key, None) if owner is not None else None
        if isinstance(fact, Patient) and isinstance(previous, Patient):
            fact = fact.merged_over(previous)  # as the store and the evaluators keep it
        self._context.setdefault(fact.patient_id, {})[key] = fact
        self._context_owner[key] = fact.patient_id
        return owner if owner is not None and owner != fact.patient_id else None

    def _forget(self, kind: str, fact_id: str, touched: set[str]) -> None:
        owner = self._context_owner.pop((kind, fact_id), None)
        if owner is not None:
            self._context.get(owner, {}).pop((kind, fact_id), None)
            touched.add(owner)
