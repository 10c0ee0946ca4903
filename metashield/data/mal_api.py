"""Mal-API-2019 (Çatak & Yazı, arXiv:1905.01999, 2019): Windows API-call sequences of PE malware recorded
in a Cuckoo sandbox, in the format of the ``other/data`` subset of ``ocatak/malware_api_class``.

Format: ``100_calls.zip`` holds ``100_calls.txt``, one sample per line as comma-separated integer API ids
(12 to 1,485,396 of them); ``100_types.zip`` holds ``100_types.txt``, one malware type per line (Adware,
Backdoor, ...), aligned line by line with the calls; ``ApiIndex.txt`` maps API names to ids, one ``name=id``
per line. Its ids run 0-341 but ids 109 and 111 have no line (blank lines stand in their place): their
vocab entries are placeholders (``UNNAMED``) so that a token's index stays its published API id, and a
call using one is rejected.

There is NO benign class: every sample is malware and ``family`` holds its type as written, so the data
serves N-way family classification (the authors call the 8 types families), not detection.

Threat model: none is evaluated for this set, since it is used for family classification, not detection.
An evasion attacker on API sequences could insert calls (padding a sequence with harmless API calls
without changing what the malware does); a future sequence attack would model that.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from metashield.data.archive import read_zip_member
from metashield.data.errors import DataFormatError
from metashield.data.sequences import SequenceData

logger = logging.getLogger(__name__)

MAL_API_CALLS = "100_calls.zip"
MAL_API_TYPES = "100_types.zip"
MAL_API_INDEX = "ApiIndex.txt"

CALLS_MEMBER = "100_calls.txt"
TYPES_MEMBER = "100_types.txt"
"""The one member of each zip."""

MAX_API_ID = 99_999
"""Largest id an index may give: the vocab is a list indexed by id, so one absurd id would allocate a list
of that length (Mal-API's largest is 341)."""

MAX_DIGITS = 9
"""Longest token parsed as a number; longer ones cannot be an index id, and 9 digits stay exact in int64."""

UNNAMED = "<unnamed {}>"
"""Vocab name of an id below the largest that the index gives no name."""

_INDEX_LINE = re.compile(r"(?P<name>[^=\s]+)=(?P<id>\d+)")


def read_api_index(path: str | os.PathLike) -> dict[int, str]:
    """API id -> name from an ``ApiIndex.txt``-format file (``name=id`` lines; blank lines are skipped).

    Raises ``DataFormatError`` naming the file and line for a line that is not ``name=id``, an id above
    ``MAX_API_ID``, or an id or name that an earlier line already gave.
    """
    names: dict[int, str] = {}
    line_of_name: dict[str, int] = {}
    for number, line in enumerate(_text_lines(Path(path).read_bytes(), str(path)), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        match = _INDEX_LINE.fullmatch(line)
        if match is None:
            raise DataFormatError(
                f"{where}: {line[:80]!r} is not name=id, expected an API name, '=', a number"
            )
        api_id, name = int(match["id"]), match["name"]
        if api_id > MAX_API_ID:
            raise DataFormatError(f"{where}: id {api_id} is above the largest allowed, {MAX_API_ID}")
        if api_id in names:
            raise DataFormatError(
                f"{where}: id {api_id} repeats, expected a new id ({names[api_id]!r} has it)"
            )
        if name in line_of_name:
            raise DataFormatError(
                f"{where}: name {name!r} repeats line {line_of_name[name]}, expected a new name"
            )
        names[api_id] = name
        line_of_name[name] = number
    if not names:
        raise DataFormatError(f"{path}: no name=id lines, expected an API index")
    return names


def vocabulary(names: dict[int, str]) -> list[str]:
    """Token names [max id + 1], index = API id; ids without a name get ``UNNAMED``."""
    return [names.get(api_id, UNNAMED.format(api_id)) for api_id in range(max(names) + 1)]


def _split_lines(data: bytes) -> list[bytes]:
    """The lines of ``data`` without ``\\n`` or ``\\r\\n``; a final line end does not start another line."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line.removesuffix(b"\r") for line in lines]


def _text_lines(data: bytes, source: str) -> list[str]:
    """The lines of a UTF-8 text file; raises ``DataFormatError`` naming the first line that is not UTF-8."""
    lines = []
    for number, line in enumerate(_split_lines(data), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"{source}: line {number}: not UTF-8 text ({exc.reason})") from None
    return lines


def parse_calls(line: bytes, where: str) -> np.ndarray:
    """int64 [k] the comma-separated ids of one line of a calls file, parsed by numpy on the whole line.

    ``where`` starts each message (file and line). Raises ``DataFormatError`` for an empty line or a token
    that is not 1 to ``MAX_DIGITS`` digits, giving its 1-based position.
    """
    if not line:
        raise DataFormatError(f"{where}: empty line, expected comma-separated API ids")
    buf = np.frombuffer(line, dtype=np.uint8)
    comma = buf == ord(",")
    commas = np.flatnonzero(comma)
    starts = np.concatenate([[0], commas + 1])
    lengths = np.concatenate([commas, [len(buf)]]) - starts
    bad = (lengths == 0) | (lengths > MAX_DIGITS)
    stray = np.flatnonzero(~comma & ((buf < ord("0")) | (buf > ord("9"))))
    # A byte's token index is the number of commas before it.
    bad[np.searchsorted(commas, stray)] = True
    if bad.any():
        k = int(bad.argmax())
        token = line[starts[k] : starts[k] + lengths[k]].decode("utf-8", errors="replace")
        raise DataFormatError(
            f"{where}, call {k + 1}: {token[:40]!r} is not an API id, expected 1 to {MAX_DIGITS} digits"
        )
    values = np.zeros(len(starts), dtype=np.int64)
    # Horner's rule one digit position at a time: a few vector passes instead of a Python int() per token.
    for position in range(int(lengths.max())):
        longer = lengths > position
        values[longer] = values[longer] * 10 + (buf[starts[longer] + position] - ord("0"))
    return values


def read_call_sequences(zip_path: str | os.PathLike, names: dict[int, str]) -> list[np.ndarray]:
    """int32 [k] ids of each line of the calls file in ``zip_path``, every id a key of ``names``.

    Raises ``DataFormatError`` naming the file, line and call position for an empty line, a token that is
    not an integer, or an id the index does not name.
    """
    source = f"{zip_path}[{CALLS_MEMBER}]"
    # named[id] says whether the index names id; ids past the largest all map to the False at the end.
    named = np.zeros(max(names) + 2, dtype=bool)
    named[list(names)] = True
    lines = _split_lines(read_zip_member(zip_path, CALLS_MEMBER))
    if not lines:
        raise DataFormatError(f"{source}: no lines, expected one API-call sequence per line")
    sequences = []
    for number, line in enumerate(lines, start=1):
        where = f"{source}: line {number}"
        ids = parse_calls(line, where)
        unknown = ~named[np.minimum(ids, len(named) - 1)]
        if unknown.any():
            k = int(unknown.argmax())
            raise DataFormatError(f"{where}, call {k + 1}: API id {ids[k]} is not named in {MAL_API_INDEX}")
        sequences.append(ids.astype(np.int32))
    return sequences


def read_types(zip_path: str | os.PathLike, expected: int, calls_source: str) -> np.ndarray:
    """object [expected] the malware type on each line of the types file in ``zip_path``.

    Raises ``DataFormatError`` naming the file and line for an empty or space-padded type, or when the
    file has another number of lines than the ``expected`` sequences of ``calls_source``.
    """
    source = f"{zip_path}[{TYPES_MEMBER}]"
    labels = _text_lines(read_zip_member(zip_path, TYPES_MEMBER), source)
    if len(labels) < expected:
        raise DataFormatError(
            f"{source}: ends after line {len(labels)}, expected {expected} lines, one per line of "
            f"{calls_source}"
        )
    if len(labels) > expected:
        raise DataFormatError(
            f"{source}: line {expected + 1} is past the last of the {expected} lines of {calls_source}"
        )
    for number, label in enumerate(labels, start=1):
        if not label or label != label.strip():
            raise DataFormatError(
                f"{source}: line {number}: {label!r}, expected a type name without spaces around it"
            )
    return np.array(labels, dtype=object)


def load_mal_api(folder: Path) -> SequenceData:
    """The Mal-API-2019 subset from ``folder`` holding ``100_calls.zip``, ``100_types.zip`` and the index."""
    folder = Path(folder)
    names = read_api_index(folder / MAL_API_INDEX)
    calls = read_call_sequences(folder / MAL_API_CALLS, names)
    family = read_types(folder / MAL_API_TYPES, len(calls), f"{folder / MAL_API_CALLS}[{CALLS_MEMBER}]")
    data = SequenceData(calls=calls, family=family, vocab=vocabulary(names), name="mal-api")
    logger.info(
        "%s: %d sequences of %d types, %d to %d calls",
        folder,
        len(calls),
        len(set(family.tolist())),
        int(data.lengths.min()),
        int(data.lengths.max()),
    )
    return data
