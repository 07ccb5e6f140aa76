"""What every importer shares: the format error, the attribute drop list, slugs, timestamps and file opening."""

from __future__ import annotations

import codecs
import gzip
import io
import re
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TypeVar, cast

from schemas.screen import ScreenSchema
from schemas.trace import Trace

DEFAULT_HISTORY = 16
"""How many past actions a state carries in ``recent_actions`` unless told otherwise."""

END_OF_CASE = "case_end"
"""The resolution code of the ``CloseChat`` step appended after the last event of every case."""

DROPPED_ATTRIBUTES: frozenset[str] = frozenset({"variant", "variant-index", "variant_index", "variant index"})
"""Attributes that are never carried into a state, because they are derived from the whole case (a variant id
names the complete activity sequence, so it leaks the future) or from the file layout (see also
``DROPPED_ATTRIBUTE_PATTERN``). Matched case-insensitively (``Variant`` is dropped too), ignoring a ``case:``
prefix (pm4py's CSV convention for case attributes)."""

DROPPED_ATTRIBUTE_PATTERN = re.compile(r"^(?:Unnamed:.*|)$")
"""Attribute / column names dropped by pattern: ``Unnamed: 0`` and its kind are row numbers left by a pandas CSV
conversion (in the BPI files they follow the file order, so they encode the case's position in the split), and an
empty CSV header is a pandas index column."""

_SLUG_BAD = re.compile(r"[^a-z0-9_]+")
_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]+")
_SPLIT_PREFIXES = ("train_val_", "train_", "val_", "test_")
_LOG_SUFFIXES = (".xes.gz", ".xes", ".csv.gz", ".csv")
_MAX_ID = 100  # ScreenSchema ids may be 120 characters; leave room for a uniqueness suffix
_GZIP_MAGIC = b"\x1f\x8b"

K = TypeVar("K", bound=Hashable)


class LogFormatError(ValueError):
    """An input log is malformed. The message names the file, the line (CSV) or XML element and line (XES), and
    the reason. A ValueError, so ``autopilot`` prints it as ``error: ...`` with exit status 2."""


def is_dropped_attribute(name: str) -> bool:
    """True for attributes that must never reach a state (see ``DROPPED_ATTRIBUTES``)."""
    bare = name.removeprefix("case:")
    return bare.lower() in DROPPED_ATTRIBUTES or DROPPED_ATTRIBUTE_PATTERN.match(bare) is not None


def slugify(text: str) -> str:
    """A lowercase id made of ``[a-z0-9_]`` (a valid control id): runs of other characters become one ``_``."""
    slug = _SLUG_BAD.sub("_", text.strip().lower()).strip("_")
    return slug[:_MAX_ID] or "x"


def unique_slugs(items: Iterable[tuple[str, K]]) -> dict[K, str]:
    """Map each key to a unique slug of its text.

    Deterministic: keys are visited in sorted (slug, text, key) order and the second, third ... key whose slug is
    taken gets ``_2``, ``_3`` ...; the same set of keys always gives the same mapping, whatever the input order.
    """
    entries = sorted({(slugify(text), text, key) for text, key in items}, key=lambda e: (e[0], e[1], repr(e[2])))
    taken: set[str] = set()
    mapping: dict[K, str] = {}
    for base, _text, key in entries:
        if key in mapping:
            continue
        slug, n = base, 1
        while slug in taken:
            n += 1
            slug = f"{base}_{n}"
        taken.add(slug)
        mapping[key] = slug
    return mapping


def process_id_from_path(path: Path) -> str:
    """The default process id of an import: the file name without its log suffix and split prefix, slugged.

    ``train_bpi_challenge_2013_incidents.xes.gz`` -> ``bpi_challenge_2013_incidents``, so every split of one log
    gets the same process id.
    """
    name = path.name.lower()
    for suffix in _LOG_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for prefix in _SPLIT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    slug = _SLUG_BAD.sub("_", name).strip("_")
    return slug[:_MAX_ID] or "process"


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp (``T`` or space, optional fraction, ``Z`` or offset).

    A timestamp without a zone is taken as UTC, so that times of one case can always be subtracted. Raises
    ValueError with the offending text.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"unparsable timestamp {value!r} (expected ISO 8601)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def seconds(value: float) -> str:
    """A duration for a panel field: seconds with millisecond precision."""
    return f"{value:.3f}"


def open_binary(path: Path) -> IO[bytes]:
    """Open a log for reading bytes, decompressing it when it starts with the gzip magic bytes (whatever its
    name says)."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def read_text(path: Path, encoding: str = "utf-8", option: str | None = None) -> str:
    """The whole text of a (possibly gzipped) file in ``encoding`` (UTF-8 by default; a BOM is dropped). Corrupt
    gzip data or bytes that are not in the encoding are a LogFormatError; ``option`` names the command-line option
    that sets the encoding, for the error to point at."""
    with path.open("rb") as raw:
        data = raw.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise LogFormatError(f"{path.name}: corrupt gzip data ({exc})") from None
    utf8 = codecs.lookup(encoding).name == "utf-8"
    try:
        return data.decode("utf-8-sig" if utf8 else encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        name = "UTF-8" if utf8 else encoding
        hint = f"; name its encoding with {option} (e.g. cp1252, a spreadsheet's export)" if option and utf8 else ""
        raise LogFormatError(f"{path.name}: line {line}: not {name} text ({exc.reason}){hint}") from None


def text_lines(text: str) -> io.StringIO:
    """A file-like view of text for the csv module (which wants universal newlines left alone)."""
    return io.StringIO(text, newline="")


@dataclass(frozen=True)
class LogImport:
    """A checked import, ready to write: the input has been read and validated in full, ``traces`` builds the
    traces lazily (so a large log is never held as Trace objects all at once)."""

    process_id: str
    screen: ScreenSchema
    cases: int
    events: int
    traces: Iterator[Trace]


def check_process_id(process_id: str) -> str:
    """A process id must be a valid screen id; say so plainly instead of failing deep inside the schema."""
    if _ID_PATTERN.fullmatch(process_id) is None:
        raise ValueError(f"process id {process_id!r} may only contain letters, digits and _ . : -")
    return process_id
