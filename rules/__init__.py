"""The Vigie rule language: text → syntax tree → checked pack → IR (JSON).

Stages, one module each: ``grammar.lark`` and ``parser`` (text → ``nodes``), ``check`` (names,
types, units, codes, structure → diagnostics), ``ir`` (checked tree → JSON-ready dict, in the
shape of ``vigie.ir_schema``). The engine loads only the IR (``vigie.engine.load_pack``).

>>> from vigie.rules import compile_pack
>>> ir, diagnostics = compile_pack('''
... pack "demo" version "1.0.0"
... set acei = atc C09A, C09B
... rule demo.k "Hyperkaliémie sous IEC"
...   problem 7 intervention 2 severity major
...   when
...     d = active drug in acei
...     k = latest potassium within 48 h
...     k > 5.5 mmol/L
...   say "K+ {k} sous {d.label}"
... ''', "demo.rules")
>>> diagnostics
[]
>>> ir["rules"][0]["depends_on"]
{'kinds': ['lab', 'medication_order'], 'concepts': ['potassium']}
"""

from vigie.rules.check import CheckResult, check
from vigie.rules.compile import (
    CompiledPack,
    check_command,
    compile_files,
    compile_pack,
    compile_pack_or_raise,
)
from vigie.rules.diagnostics import Diagnostic, render, render_all
from vigie.rules.errors import RuleCheckError, RuleError, RuleSyntaxError
from vigie.rules.ir import IR_VERSION, dumps_ir
from vigie.rules.parser import parse

__all__ = [
    "IR_VERSION",
    "CheckResult",
    "CompiledPack",
    "Diagnostic",
    "RuleCheckError",
    "RuleError",
    "RuleSyntaxError",
    "check",
    "check_command",
    "compile_files",
    "compile_pack",
    "compile_pack_or_raise",
    "dumps_ir",
    "parse",
    "render",
    "render_all",
]
