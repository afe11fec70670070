"""The Vigie engine: canonical facts, the rule evaluator (batch and live) and alerts.

Entry points: ``load_pack(ir)`` loads a rule pack's IR (from ``rules.compile_pack``) once;
``evaluate(pack, facts, as_of)`` returns the explained alerts of a ``FactSet`` or one
``PatientRecord`` as of a time; ``LiveEvaluator(pack)`` re-evaluates incrementally as facts
arrive (``add``) and as time passes (``tick``). ``vigie.engine.evaluate`` is the function (the
module of the same name is reached with ``from vigie.engine.evaluate import ...``).
"""

from vigie.engine.alerts import Alert, AlertDrug, Evidence, alert_id
from vigie.engine.evaluate import evaluate  # binds the function over the submodule attribute
from vigie.engine.factset import FactSet, PatientRecord
from vigie.engine.live import AlertDiff, LiveEvaluator
from vigie.engine.load import EngineError, LoadedPack, PackError, RuleRuntimeError, load_pack

__all__ = [
    "Alert",
    "AlertDiff",
    "AlertDrug",
    "EngineError",
    "Evidence",
    "FactSet",
    "LiveEvaluator",
    "LoadedPack",
    "PackError",
    "PatientRecord",
    "RuleRuntimeError",
    "alert_id",
    "evaluate",
    "load_pack",
]
