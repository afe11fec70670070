"""HL7 v2 framing at the byte level: cutting a document into messages and choosing an encoding.

Everything here works on bytes, before any decoding, because the separators that matter
(``MSH``, ``\\r``, ``\\n``, the MLLP block bytes 0x0b and 0x1c) are ASCII and the encodings we
accept (UTF-8, ISO 8859-x, ASCII) are all ASCII-compatible. Nothing here raises on bad content:
a message that cannot be read is still cut out and handed to ``parse``, which reports it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "MLLP_END",
    "MLLP_START",
    "MessageSlice",
    "MshHeader",
    "charset_encoding",
    "choose_encoding",
    "content_hash_id",
    "cut_messages",
    "declared_charset",
    "guess_encoding",
    "locate_byte",
    "msh_fields",
    "read_header",
]

MLLP_START = 0x0B
MLLP_END = 0x1C
_FRAMING = b"\x0b\x1c \t"
_SEGMENT_BREAK = re.compile(rb"\r\n|\r|\n")
_WRAPPERS = (b"FHS", b"BHS", b"BTS", b"FTS")
_UTF8_BOM = b"\xef\xbb\xbf"

# HL7 table 0211 (alternate character sets) -> Python codec. Only ASCII-compatible ones:
# a UTF-16 message cannot even be cut into segments byte-wise.
_CHARSETS = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "ISO IR192": "utf-8",
    # Not in table 0211 but met in the field.
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "CP1252": "cp1252",
    "WINDOWS-1252": "cp1252",
}


@dataclass(frozen=True)
class MessageSlice:
    """A message's bytes inside its document, and its rank (1-based)."""

    number: int
    content: bytes
    is_message: bool  # False for stray lines before any MSH (they still go to parse)


@dataclass
class _Group:
    start: int
    end: int
    is_message: bool


def _lines(content: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) byte spans of the lines of a document, separators excluded."""
    for start, end, _ in _terminated_lines(content):
        yield start, end


def _terminated_lines(content: bytes) -> Iterator[tuple[int, int, int]]:
    """(start, end, after) of each line: ``after`` is past its separator, if it has one."""
    start = 0
    for match in _SEGMENT_BREAK.finditer(content):
        yield start, match.start(), match.end()
        start = match.end()
    if start < len(content):
        yield start, len(content), len(content)


def _segment_start(content: bytes, start: int, end: int) -> int:
    """Offset of the segment id on a line, past MLLP framing bytes and blanks."""
    offset = start
    while offset < end and content[offset] in _FRAMING:
        offset += 1
    return offset


def _group_start(content: bytes, line_start: int, segment_start: int) -> int:
    """Where a message begins: its MSH, or the MLLP start byte right before it."""
    if segment_start > line_start and content[segment_start - 1] == MLLP_START:
        return segment_start - 1
    return segment_start


def _groups(content: bytes) -> list[_Group]:
    groups: list[_Group] = []
    current: _Group | None = None
    for start, end, after in _terminated_lines(content):
        seg = _segment_start(content, start, end)
        if seg >= end:
            if current is not None:
                current.end = after
            continue
        head = content[seg : seg + 3]
        if head in _WRAPPERS:
            current = None
        elif head == b"MSH":
            current = _Group(_group_start(content, start, seg), after, True)
            groups.append(current)
        elif current is None:
            current = _Group(start, after, False)
            groups.append(current)
        else:
            current.end = after
    return groups


def cut_messages(content: bytes) -> list[MessageSlice]:
    """Cut a document into messages at each MSH; batch wrappers (FHS/BHS/BTS/FTS) dropped.

    Lines before the first MSH that are not wrappers form a slice of their own (``parse``
    rejects it with a located error) so that nothing is silently lost. Each slice keeps the
    terminator of its last line, as received: a message without one ends its document
    mid-segment, which ``parse`` needs to tell a truncated OBX from omitted trailing fields.
    """
    if content.startswith(_UTF8_BOM):
        content = content[len(_UTF8_BOM) :]
    slices = []
    for number, group in enumerate(_groups(content), start=1):
        slices.append(MessageSlice(number, content[group.start : group.end], group.is_message))
    return slices


def msh_fields(content: bytes) -> list[bytes] | None:
    """The MSH fields of a message (index n is MSH-(n+1) for n >= 1), or None without MSH."""
    start = content.find(b"MSH")
    if start < 0 or start + 4 > len(content):
        return None
    match = _SEGMENT_BREAK.search(content, start)
    line = content[start : match.start() if match else len(content)]
    separator = line[3:4]
    if separator.isalnum() or separator in (b"", b" ", b"\x1c"):
        return None
    return line.split(separator)


def content_hash_id(content: bytes) -> str:
    """A message id for messages without MSH-10: a hash of their bytes."""
    return "sha256:" + hashlib.sha256(content).hexdigest()[:32]


@dataclass(frozen=True)
class MshHeader:
    """What ``split`` needs from MSH before decoding: MSH-3/4, MSH-10 and MSH-18, as text."""

    control_id: str | None
    charset: str | None
    sender: str | None = None  # MSH-3 and MSH-4 (first components), e.g. "LAB^CHU"


def read_header(content: bytes) -> MshHeader:
    """MSH-10 and MSH-18 (first repetition, first component) read from the raw bytes."""
    fields = msh_fields(content)
    if fields is None:
        return MshHeader(None, None)
    control_id = fields[9].strip().decode("latin-1") if len(fields) > 9 else ""
    charset = fields[17].decode("latin-1") if len(fields) > 17 else ""
    encoding_chars = fields[1].decode("latin-1") if len(fields) > 1 else ""
    sender_parts = [fields[i].decode("latin-1") if len(fields) > i else "" for i in (2, 3)]
    for separator in encoding_chars[:2]:  # component, repetition
        charset = charset.split(separator, 1)[0]
        sender_parts = [part.split(separator, 1)[0] for part in sender_parts]
    sender = "^".join(part.strip() for part in sender_parts).strip("^")
    return MshHeader(control_id or None, charset.strip() or None, sender or None)


def declared_charset(content: bytes) -> str | None:
    """MSH-18 as text, or None."""
    return read_header(content).charset


def charset_encoding(charset: str | None) -> str | None:
    """The Python codec for an MSH-18 character set, or None when unknown."""
    if not charset:
        return None
    return _CHARSETS.get(charset.strip().upper())


def guess_encoding(content: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else Latin-1 (common in French feeds)."""
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def choose_encoding(content: bytes) -> str:
    """MSH-18 when it names a known character set, else the UTF-8 / Latin-1 guess."""
    return charset_encoding(declared_charset(content)) or guess_encoding(content)


def locate_byte(content: bytes, offset: int) -> str:
    """Segment and field of a byte offset, e.g. ``PID-5 (byte 123)``."""
    line_start = 0
    for start, end in _lines(content):
        if start <= offset <= end:
            line_start = start
            break
    seg_start = _segment_start(content, line_start, offset)
    line = content[seg_start:offset]
    name = line[:3].decode("latin-1", "replace") or "segment"
    msh = content.find(b"MSH")
    separator = content[msh + 3 : msh + 4] if msh >= 0 else b"|"
    field = line.count(separator) if separator else 0
    if name == "MSH":
        field += 1
    return f"{name}-{field} (byte {offset})" if field else f"{name} (byte {offset})"
