"""The python-hl7 reader of HL7 v2 messages (``VIGIE_HL7_PARSER=python-hl7``).

Same framing, decoding, header and segment checks as ``Hl7Message`` (it is a subclass), then
``hl7.parse`` builds the message tree and every field is read from python-hl7's containers
(``Message``/``Segment``/``Field``/``Repetition``/``Component``), behind the accessor interface
the clinical, pharmacy and history loaders use, so they give the same facts with either reader
(``tests/test_hl7v2.py::test_both_readers_give_identical_facts_and_errors``).

Escape sequences go through python-hl7's ``unescape`` where it reads them as we do: the
separators (``\\F\\ \\S\\ \\R\\ \\T\\ \\E\\``) and ``\\.br\\`` (mapped to a new line, python-hl7's
default being ``\\r``). Anything else (hex ``\\Xhh\\``, decoded in the message's character
set where python-hl7 takes each byte for a code point; highlighting and formatting codes,
dropped where python-hl7 writes ``_`` or spaces; an unpaired escape character, kept where
python-hl7 drops the rest of the field) keeps the connector's own reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import hl7

from vigie.connectors.hl7v2.message import Hl7Message, SegmentRef

__all__ = ["Hl7libMessage", "Hl7libSegment"]

# Escape codes python-hl7 unescapes the way the connector does (with ``_LINE_BREAK``).
_LIBRARY_ESCAPES = frozenset({"F", "S", "R", "T", "E", ".br"})
_LINE_BREAK = {".br": "\n"}
# hl7.parse strips the whole message, which would cut trailing blanks off the last field:
# an empty segment after the last one keeps them, and is dropped again.
_SENTINEL_SEGMENT = "ZZZ"


@dataclass(frozen=True)
class Hl7libSegment(SegmentRef):
    """A segment with its python-hl7 ``Segment``: ``node[n]`` is field n (MSH too)."""

    node: Any = field(compare=False, repr=False)


class Hl7libMessage(Hl7Message):
    """A raw HL7 v2 message read through python-hl7; raises ``FeedError`` if unreadable."""

    tree: Any  # hl7.Message

    def _segments(self, lines: list[str]) -> list[SegmentRef]:
        self.tree = self._hl7_parse(lines)
        self._escape_sequence = re.compile(f"{re.escape(self.escape)}(.*?){re.escape(self.escape)}")
        counts: dict[str, int] = {}
        refs: list[SegmentRef] = []
        for ordinal, node in enumerate(self.tree, start=1):
            name = str(node[0])
            counts[name] = counts.get(name, 0) + 1
            fields = [str(part) for part in node]
            refs.append(Hl7libSegment(name, counts[name], ordinal, fields, node))
        return refs

    def _hl7_parse(self, lines: list[str]) -> Any:
        text = "\r".join([*lines, _SENTINEL_SEGMENT])
        try:
            tree = hl7.parse(text)
        except Exception as error:  # python-hl7 raises ParseException, IndexError, ValueError...
            raise self.error(
                self._failing_segment(lines),
                "a message python-hl7 can read",
                f"{type(error).__name__}: {error}",
            ) from None
        del tree[-1]
        return tree

    def _failing_segment(self, lines: list[str]) -> str:
        """Where python-hl7 fails: the first segment it cannot read after the MSH."""
        for number, line in enumerate(lines[1:], start=2):
            try:
                hl7.parse(f"{lines[0]}\r{line}")
            except Exception:  # any python-hl7 failure, located by segment
                return f"segment {number}"
        return "segment 1"

    # Field access -------------------------------------------------------------------------

    def repetition_count(self, segment: SegmentRef, field: int) -> int:
        if not isinstance(segment, Hl7libSegment) or (segment.name == "MSH" and field <= 2):
            return super().repetition_count(segment, field)
        if field >= len(segment.node) or not segment.fields[field]:
            return 0
        return len(segment.node[field])

    def value(
        self,
        segment: SegmentRef | None,
        field: int,
        component: int = 1,
        subcomponent: int = 1,
        repetition: int = 1,
    ) -> str:
        """A field's text (unescaped, stripped); ``""`` when absent or HL7 null ``""``."""
        if not isinstance(segment, Hl7libSegment):
            return super().value(segment, field, component, subcomponent, repetition)
        if field >= len(segment.node):
            return ""
        if segment.name == "MSH" and field <= 2:
            return segment.fields[field]
        node: Any = segment.node[field]
        for index in (repetition, component, subcomponent):
            node = _child(node, index)
            if node is None:
                return ""
        text = str(node)
        if self.escape in text:
            text = self._unescape(text)
        text = text.strip()
        return "" if text == '""' else text

    def _unescape(self, text: str) -> str:
        codes = self._escape_sequence.findall(text)
        unpaired = self.escape in self._escape_sequence.sub("", text)
        if unpaired or not all(code in _LIBRARY_ESCAPES for code in codes):
            return self.unescape(text)
        return str(self.tree.unescape(text, _LINE_BREAK))


def _child(node: Any, index: int) -> Any:
    """The index-th (1-based) part of a python-hl7 container; a bare string is its own first part.

    python-hl7 stops splitting where no deeper separator occurs (``Field(['A'])``), so a
    string met above the subcomponent level is a value with a single part.
    """
    if isinstance(node, str):
        return node if index == 1 else None
    return node[index - 1] if index <= len(node) else None
