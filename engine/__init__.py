"""The Vigie engine: canonical facts, the rule evaluator (batch and live) and alerts.

Entry points: ``compile_ir(ir)`` compiles a rule pack's IR (from ``rules.compile_pack``) once;
``evaluate(pack, facts, as_of)`` returns the explained alerts of a ``FactSet`` or one
``PatientRecord`` as of a time; ``LiveEvaluator(pack)`` re-evaluates incrementally as facts
arrive (``add``) and as time passes (``tick``). ``vigie.engine.evaluate`` is the function (the
module of the same name is reached with ``from vigie.engine.evaluate import ...``).
"""

from vigie.engine.alerts import Alert, AlertDrug, Evidence, alert_id
from vigie.engine.compile import CompiledPack, EngineError, PackError, RuleRuntimeError, compile_ir
from vigie.engine.evaluate import evaluate  # binds the function over the submodule attribute
from vigie.engine.factset import FactSet, PatientRecord
from vigie.engine.live import AlertDiff, LiveEvaluator

__all__ = [
    "Alert",
    "AlertDiff",
    "AlertDrug",
    "CompiledPack",
    "EngineError",
    "Evidence",
    "FactSet",
    "LiveEvaluator",
    "PackError",
    "PatientRecord",
    "RuleRuntimeError",
    "alert_id",
    "compile_ir",
    "evaluate",
]
