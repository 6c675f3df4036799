"""Documents in, fixed-size token samples out (the samples contract of docs/design.md).

Sources: a plain-text file (one document, read verbatim), a folder (its files in sorted order), a
.jsonl file (one document per line, field "text" or FILE.jsonl:FIELD), `stdlib` (the Python standard
library's own source files, present on every machine: the held-out evaluation split), `stdlib:train`
(the rest, used to train the zoo), `book` (the one shipped text, Pride and Prejudice: a single document of
~170K tokens, for lengths past stdlib's longest file) and `hf:NAME[:CONFIG][:SPLIT][:FIELD]` (a datasets
streaming read).
"""

from __future__ import annotations

import gzip
import os
import sysconfig
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import InputError, one_line
from harness.data.jsonl import strict_lines

# Folders of the standard library left out of the corpus: tests and vendored/GUI code are not the
# prose-like source we want, and site-packages is not the standard library at all.
_STDLIB_SKIP = {"site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3", "turtledemo",
                "tkinter", "ensurepip", "dist-packages"}
BOOK = Path(__file__).parent / "texts" / "pride_and_prejudice.txt.gz"  # texts/README.md: source, licence
BOOK_NAME = "Pride and Prejudice (Jane Austen, 1813; public domain)"
# Held-out rule: a file belongs to the evaluation split when crc32 of its relative path is 0 mod 10.
_EVAL_MODULUS = 10


@dataclass(frozen=True)
class Sample:
    """Tokens [offset, offset + len(tokens)) of document `doc_id` (no BOS; the engine adds it)."""

    index: int
    doc_id: str
    offset: int
    tokens: list[int]


def is_eval_file(relative_path: str) -> bool:
    """Deterministic held-out rule for the stdlib corpus (same split on every machine)."""
    return zlib.crc32(relative_path.encode()) % _EVAL_MODULUS == 0


def stdlib_files(split: str = "eval") -> list[Path]:
    """The standard library's .py files of one split ("eval", "train" or "all"), in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
        for name in filenames:
            if name.endswith(".py"):
                found.append(Path(dirpath, name))
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    if split == "all":
        return found
    want_eval = split == "eval"
    return [p for p in found if is_eval_file(p.relative_to(root).as_posix()) == want_eval]


def _read_verbatim(path: Path) -> str:
    """A text file as it is (a .gz file decompressed); binary content is bad input, not a corpus."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InputError(f"corpus file {path} is not gzip data ({one_line(exc, 80)}): pass "
                             "gzip-compressed text, or drop the .gz suffix") from None
    text = raw.decode("utf-8", errors="replace")
    if b"\x00" in raw[:1 << 16] or text.count("\ufffd") > 0.01 * len(text) + 8:
        raise InputError(f"corpus file {path} is binary, not UTF-8 text: pass text files (plain or .gz), a "
                         ".jsonl file, a folder of them, stdlib, book or hf:NAME")
    return text


def _iter_jsonl(path: Path, field: str) -> Iterator[tuple[str, str]]:
    """Each row's text; a row that is no object, or a text that is no string (null would become "None"), is
    bad input naming its line."""
    for line_no, row in strict_lines(path):
        if not isinstance(row, dict):
            raise InputError(f"{path}:{line_no} is not a JSON object: "
                             f"each line needs {{\"{field}\": \"...\"}}")
        if field not in row:
            raise InputError(f"{path}:{line_no} has no field {field!r}: "
                             f"name the text field as --corpus {path}:FIELD")
        if not isinstance(row[field], str):
            raise InputError(f"{path}:{line_no}: field {field!r} is {type(row[field]).__name__}, not text: "
                             f"name the text field as --corpus {path}:FIELD")
        yield f"{path.name}:{line_no}", row[field]


def _iter_hf(spec: str) -> Iterator[tuple[str, str]]:
    """hf:NAME[:CONFIG][:SPLIT][:FIELD], streamed: only the documents needed are read."""
    parts = spec.split(":")[1:]
    if not parts or not parts[0]:
        raise InputError("--corpus hf: needs a dataset name: use --corpus hf:NAME[:CONFIG][:SPLIT][:FIELD]")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "test"
    field = parts[3] if len(parts) > 3 and parts[3] else "text"
    import datasets

    from harness.data.hub import use_cache_if_hub_unreachable

    if not Path(name).exists():
        use_cache_if_hub_unreachable()
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        for i, row in enumerate(stream):
            if field not in row:
                raise InputError(f"dataset {name!r} has no field {field!r}: "
                                 f"use --corpus hf:{name}:{config or ''}:{split}:FIELD")
            yield f"{name}:{split}:{i}", str(row[field])
    except InputError:
        raise
    except Exception as exc:  # network, missing dataset, bad split: all one message
        raise InputError(f"cannot stream dataset {name!r} ({one_line(exc, 160)}): "
                         "check the name/split and the network, or pass a local --corpus") from None


def iter_documents(source: str) -> Iterator[tuple[str, str]]:
    """(doc_id, text) in corpus order for any supported source."""
    if source in ("stdlib", "stdlib:eval", "stdlib:train", "stdlib:all"):
        split = source.split(":")[1] if ":" in source else "eval"
        root = Path(sysconfig.get_paths()["stdlib"])
        for path in stdlib_files(split):
            yield path.relative_to(root).as_posix(), _read_verbatim(path)
        return
    if source.startswith("hf:"):
        yield from _iter_hf(source)
        return
    if source == "book":
        yield BOOK_NAME, _read_verbatim(BOOK)
        return
    path, field = Path(source), "text"
    if not path.exists() and ".jsonl:" in source:
        head, field = source.rsplit(":", 1)
        path = Path(head)
    if not path.exists():
        raise InputError(f"corpus {source!r} does not exist: "
                         "pass a text file, a folder, a .jsonl file, stdlib, book or hf:NAME")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise InputError(f"corpus folder {source!r} has no files: "
                             "put text files in it or pick another --corpus")
        for file in files:
            yield file.relative_to(path).as_posix(), _read_verbatim(file)
    elif path.suffix == ".jsonl":
        yield from _iter_jsonl(path, field)
    else:
        yield path.name, _read_verbatim(path)


def token_documents(source: str, encode: Callable[[str], list[int]],
                    skip_empty: bool = True) -> Iterator[tuple[str, list[int]]]:
    """(doc_id, tokens) of every document (non-empty ones by default), in corpus order: the one corpus ->
    tokens path of every task and the zoo trainer."""
    for doc_id, text in iter_documents(source):
        tokens = encode(text)
        if len(tokens) or not skip_empty:
            yield doc_id, tokens


def token_stream(source: str, encode: Callable[[str], list[int]], separator: Sequence[int],
                 need: int | None = None) -> list[int]:
    """Documents' tokens joined, each followed by `separator`, until at least `need` tokens (all without)."""
    stream: list[int] = []
    for _, tokens in token_documents(source, encode):
        stream += [*tokens, *separator]
        if need is not None and len(stream) >= need:
            break
    return stream


def bos_ids(tokenizer, asked: bool = True) -> list[int]:
    """The one BOS decision (docs/design.md, ppl@L): [BOS] when asked and the tokenizer has one, else []."""
    return [tokenizer.bos_token_id] if asked and tokenizer.bos_token_id is not None else []


def make_samples(tokenizer, source: str, max_length: int, count: int, bos: bool) -> list[Sample]:
    """Up to `count` samples of max_length - b tokens each (b = 1 with BOS), walking documents in order.

    Returns fewer when the corpus runs out (the caller warns and records the count); raises when no
    document reaches the longest length at all.
    """
    size = max_length - len(bos_ids(tokenizer, bos))
    samples: list[Sample] = []
    longest = 0
    for doc_id, tokens in token_documents(
            source, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]):
        longest = max(longest, len(tokens))
        for start in range(0, len(tokens) - size + 1, size):
            samples.append(Sample(len(samples), doc_id, start, tokens[start:start + size]))
            if len(samples) == count:
                return samples
    if not samples:
        raise InputError(
            f"no document in corpus {source!r} reaches {max_length} tokens (longest: {longest}): "
            "lower the largest --lengths value or use a corpus with longer documents")
    return samples
