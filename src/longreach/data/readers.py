"""Corpus readers: JSON lines, parquet, folders of text files and single text files -> `Document`s.

Bad input never disappears silently: with on_error="raise" (default) it is an `InputError` naming the file,
line (the row number for parquet) and field; with on_error="skip" the record is skipped, counted per reason
in `counter` (which `longreach data prepare` writes into the manifest) and the first few are logged.

Sources (the domains that up-sampling keeps in proportion): a file given directly is its own source (its
stem). Inside a folder, the source is the first-level collection: a subfolder (everything below it), or a
JSON lines / parquet file lying directly in the folder (its stem); text files lying directly in the folder
share the folder's name. `source_field` (JSON lines / parquet) takes the source from each record instead.

Documents of a text folder: one per file (join="file", the default), or one per folder (join="folder"): the
text files lying directly in one folder, in path order (by characters: "ch10" before "ch2"; name files so that
this is their reading order), joined by a blank line into a single document named
after the folder. That is the repository-level concatenation ProLong uses for code, applied to manuals and
books split into files: it gives a corpus whose files are short documents that are long as a whole (a manual's
chapters, a play's editions side by side) the long-range dependencies a 128K window needs. Records of JSON
lines and parquet files stay one document each.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longreach.errors import InputError

TEXT_SUFFIXES = (".txt", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
ON_ERROR = ("raise", "skip")
JOIN = ("file", "folder")
# A record with "special_tokens": true (chat data rendered by a chat template, `longreach data self-chat`) has
# its special-token strings encoded as the tokenizer's special tokens; every other text reads them as text.
SPECIAL_FIELD = "special_tokens"
_LOGGED_PER_REASON = 5  # skipped records logged per reason; all of them are counted

log = logging.getLogger("longreach.data")


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # domain name, used for per-source up-sampling
    doc_id: str  # "path:line" for records, the file path for text files
    special: bool = False  # the record says "special_tokens": true: "<|im_start|>" etc. are special tokens


class _Problems:
    """Raise or count one kind of bad input, depending on on_error."""

    def __init__(self, on_error: str, counter: Counter | None):
        if on_error not in ON_ERROR:
            raise InputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}", field="on_error")
        self.skip = on_error == "skip"
        self.counter = counter if counter is not None else Counter()

    def __call__(self, reason: str, message: str, path: Path, line: int | None = None,
                 field: str | None = None) -> None:
        error = InputError(message, path=str(path), line=line, field=field)
        if not self.skip:
            raise error
        self.counter[reason] += 1
        if self.counter[reason] <= _LOGGED_PER_REASON:
            log.warning("skipped (%s): %s", reason, error)


def iter_documents(path: str | Path, text_field: str = "text", on_error: str = "raise",
                   counter: Counter | None = None, source_field: str | None = None,
                   join: str = "file") -> Iterator[Document]:
    """Stream the documents of a file or folder (recursive, sorted by path for determinism).

    `text_field` / `source_field` may be dotted ("meta.redpajama_set_name") to reach nested values.
    In a folder, files with other suffixes (and hidden files) are not corpus files and are passed over.
    `join="folder"` makes the text files of each folder one document (see the module docstring).
    """
    problems = _Problems(on_error, counter)
    if join not in JOIN:
        raise InputError(f"must be one of {JOIN}, got {join!r}", field="join_files")
    path = Path(path)
    if path.is_dir():
        top = path.resolve().name
        files = sorted(_walk_files(path), key=lambda p: p.relative_to(path).parts)
        folders: dict[Path, list[Path]] = {}  # join="folder": each folder's text files, in path order
        for file in files:
            rel = file.relative_to(path)
            if any(part.startswith(".") for part in rel.parts):
                continue
            suffix = file.suffix.lower()
            if suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES:
                continue
            if len(rel.parts) > 1:
                source = rel.parts[0]
            else:
                source = top if suffix in TEXT_SUFFIXES else file.stem
            if join == "folder" and suffix in TEXT_SUFFIXES:
                folders.setdefault(file.parent, []).append(file)
                continue
            yield from _iter_file(file, source, text_field, source_field, problems)
        for folder, members in folders.items():
            rel = folder.relative_to(path)
            doc = _join_text_files(folder, members, rel.parts[0] if rel.parts else top, problems)
            if doc is not None:
                yield doc
    elif path.is_file():
        yield from _iter_file(path, path.stem, text_field, source_field, problems)
    else:
        raise InputError("no such file or folder", path=str(path))


def _join_text_files(folder: Path, files: list[Path], source: str, problems: _Problems) -> Document | None:
    """The text files of one folder as one document (blank lines between them); bad files as in one-per-file."""
    docs = (_read_text_file(f, source, problems) for f in files)
    texts = [doc.text.strip("\r\n") for doc in docs if doc is not None]
    if not texts:
        return None
    return Document(text="\n\n".join(texts) + "\n", source=source, doc_id=str(folder))


def _walk_files(root: Path) -> Iterator[Path]:
    """Files below `root`, following symlinked folders (a corpus assembled from links) but never a cycle."""
    seen: set[tuple[int, int]] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in names:
            file = Path(folder) / name
            if file.is_file():
                yield file


def _iter_file(path: Path, source: str, text_field: str, source_field: str | None,
               problems: _Problems) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(path, source, text_field, source_field, problems)
    elif suffix in PARQUET_SUFFIXES:
        yield from _iter_parquet(path, source, text_field, source_field, problems)
    else:
        doc = _read_text_file(path, source, problems)
        if doc is not None:
            yield doc


def _read_text_file(path: Path, source: str, problems: _Problems) -> Document | None:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        problems("invalid_utf8", f"not valid UTF-8 (byte {raw[e.start]:#04x} at column {column})", path, line)
        return None
    if not text.strip():
        problems("empty", "empty document", path)
        return None
    return Document(text=text, source=source, doc_id=str(path))


def _iter_jsonl(path: Path, source: str, text_field: str, source_field: str | None,
                problems: _Problems) -> Iterator[Document]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems("invalid_utf8", f"not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})",
                         path, n)
                continue
            if not line.strip():  # a blank line holds no record (e.g. a trailing newline)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                problems("invalid_json", f"invalid JSON: {e.msg} (column {e.colno})", path, n)
                continue
            # "\ud800"-style escapes decode to lone surrogates, which no tokenizer can encode.
            check_surrogates = b"\\ud" in raw or b"\\uD" in raw
            doc = _record_document(record, path, n, source, text_field, source_field, problems,
                                   check_surrogates)
            if doc is not None:
                yield doc


def _iter_parquet(path: Path, source: str, text_field: str, source_field: str | None,
                  problems: _Problems) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"not a readable parquet file: {e}", path=str(path)) from None
    names = pf.schema_arrow.names
    columns = []
    for field in [text_field] + ([source_field] if source_field else []):
        column = field if field in names else field.split(".")[0]
        if column not in names:  # a wrong column name is a setting to fix, not a bad record to skip
            raise InputError(f"no such column; the file has {names}", path=str(path), field=field)
        if column not in columns:
            columns.append(column)
    if SPECIAL_FIELD in names and SPECIAL_FIELD not in columns:
        columns.append(SPECIAL_FIELD)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            values = {name: batch.column(name).to_pylist() for name in columns}
            for i in range(batch.num_rows):
                row += 1
                record = {name: values[name][i] for name in columns}
                doc = _record_document(record, path, row, source, text_field, source_field, problems, False)
                if doc is not None:
                    yield doc
    except pa.ArrowException as e:
        raise InputError(f"cannot read parquet data after row {row}: {e}", path=str(path)) from None


def _lookup(record: dict, field: str) -> Any:
    """record[field], or the nested value for a dotted field; KeyError when absent."""
    if field in record:
        return record[field]
    value: Any = record
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(field)
        value = value[key]
    return value


def _record_document(record: Any, path: Path, line: int, source: str, text_field: str,
                     source_field: str | None, problems: _Problems, check_surrogates: bool) -> Document | None:
    if not isinstance(record, dict):
        problems("not_an_object", f"expected a JSON object, got {type(record).__name__}", path, line)
        return None
    strings = {}
    for field in [text_field] + ([source_field] if source_field else []):
        try:
            value = _lookup(record, field)
        except KeyError:
            value = None
        if value is None:
            problems("missing_field", "missing", path, line, field)
            return None
        if not isinstance(value, str):
            problems("not_a_string", f"expected a string, got {type(value).__name__}", path, line, field)
            return None
        if check_surrogates:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems("invalid_utf8", "contains an unpaired surrogate escape (not valid UTF-8)", path, line,
                         field)
                return None
        strings[field] = value
    text = strings[text_field]
    if not text.strip():
        problems("empty", "empty document", path, line, text_field)
        return None
    if source_field:
        source = strings[source_field]
    special = record.get(SPECIAL_FIELD)
    special = False if special is None else special
    if not isinstance(special, bool):
        problems("not_a_bool", f"expected true or false, got {special!r}", path, line, SPECIAL_FIELD)
        return None
    return Document(text=text, source=source, doc_id=f"{path}:{line}", special=special)


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file; bad lines raise InputError."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not valid JSON ({e.msg})", path=str(path), line=n) from None
            if not isinstance(rec, dict):
                raise InputError("expected a JSON object", path=str(path), line=n)
            yield n, rec
