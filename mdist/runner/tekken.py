"""Read `tekken.json` (Mistral's tiktoken-based tokenizer) as hostile input, then hand it to mistral-common.

mistral-common's own `Tekkenizer.from_file` uses json.load without bounds and checks the shape
with `assert` (gone under `python -O`), so a malformed file would be a traceback. Here the file is
read once (bounded, a regular file), parsed strictly (mdist.jsonio), every field mistral-common
uses is type- and range-checked, and the Tekkenizer is built from that parsed document.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

from mdist.errors import InputError
from mdist.jsonio import parse_json, printable, read_small_file

MAX_TEKKEN_BYTES = 64 << 20  # Nemo's tekken.json is 14.8 MB, Pixtral's 19.3 MB
MAX_VOCAB = 1 << 20
MAX_PATTERN_CHARS = 4096
TEXT_VERSIONS = ("v3", "v7", "v11", "v13")  # the versions whose text-only request mdist builds
REQUIRED_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]")
# The special tokens mistral-common's InstructTokenizer of each version looks up when it is built
# (InstructTokenizerV2.__init__ and the V7, V11 additions; V13 adds only optional [THINK] tokens):
# without one of them, it raises "Unknown control token" deep inside mistral-common.
_V3_SPECIALS = REQUIRED_SPECIALS + ("[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
                                    "[TOOL_CALLS]", "[PREFIX]", "[SUFFIX]")
_V7_SPECIALS = _V3_SPECIALS + ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")
_V11_SPECIALS = _V7_SPECIALS + ("[ARGS]", "[CALL_ID]")
VERSION_SPECIALS = {"v3": _V3_SPECIALS, "v7": _V7_SPECIALS, "v11": _V11_SPECIALS, "v13": _V11_SPECIALS}


def _int(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InputError(f"{what} must be an integer from {low} to {high}")
    return value


def _checked_vocab(vocab: Any, inner_size: int, what: str) -> list[dict[str, Any]]:
    """The first inner_size entries (mistral-common cuts the rest): rank = position, strict base64,
    the 256 single bytes first, no two tokens with the same bytes."""
    if not isinstance(vocab, list) or len(vocab) < inner_size:
        raise InputError(f"{what}: vocab must be a list of at least {inner_size} tokens")
    seen: set[bytes] = set()
    for i, entry in enumerate(vocab[:inner_size]):
        if not isinstance(entry, dict) or entry.keys() != {"rank", "token_bytes", "token_str"}:
            raise InputError(f"{what}: vocab[{i}] must have exactly rank, token_bytes and token_str")
        if type(entry["rank"]) is not int or entry["rank"] != i:
            raise InputError(f"{what}: vocab[{i}] has rank {printable(repr(entry['rank']))}, expected {i}")
        if not isinstance(entry["token_bytes"], str) or not (entry["token_str"] is None
                                                           or isinstance(entry["token_str"], str)):
            raise InputError(f"{what}: vocab[{i}] token_bytes must be a string, token_str a string or null")
        try:
            token = base64.b64decode(entry["token_bytes"], validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{what}: vocab[{i}] token_bytes is not base64") from None
        if (i < 256 and token != bytes([i])) or not token or token in seen:
            raise InputError(f"{what}: vocab[{i}] token_bytes is empty, repeated or out of place")
        seen.add(token)
    return vocab[:inner_size]


def _checked_specials(specials: Any, count: int, what: str, version: str) -> list[dict[str, Any]]:
    if not isinstance(specials, list) or len(specials) > count:
        raise InputError(f"{what}: special_tokens must be a list of at most {count} tokens")
    names: set[str] = set()
    for i, entry in enumerate(specials):
        if (not isinstance(entry, dict) or entry.keys() != {"rank", "token_str", "is_control"}
                or type(entry["rank"]) is not int or entry["rank"] != i or not isinstance(entry["token_str"], str)
                or type(entry["is_control"]) is not bool or entry["token_str"] in names):
            raise InputError(f"{what}: special_tokens[{i}] must be rank {i}, a new token_str and is_control")
        names.add(entry["token_str"])
    missing = [name for name in VERSION_SPECIALS[version] if name not in names]
    if missing:
        raise InputError(f"{what}: special token {missing[0]} is missing (a {version} tokenizer needs "
                         f"{', '.join(VERSION_SPECIALS[version])})")
    return specials


def load_tekkenizer(path: Path) -> Any:
    """A mistral-common Tekkenizer from a tekken.json that passed every check above."""
    from mistral_common.tokens.tokenizers.base import TokenizerVersion
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    what = path.name
    document = parse_json(read_small_file(path, MAX_TEKKEN_BYTES, what), what, max_bytes=MAX_TEKKEN_BYTES)
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise InputError(f"{what} is not a tekken tokenizer: no config object")
    version = config.get("version")
    if version not in TEXT_VERSIONS:
        raise InputError(f"{what}: tokenizer version {printable(repr(version))} is not one mdist supports "
                         f"({', '.join(TEXT_VERSIONS)})")
    pattern = config.get("pattern")
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_CHARS:
        raise InputError(f"{what}: config.pattern must be a string of at most {MAX_PATTERN_CHARS} characters")
    vocab_size = _int(config.get("default_vocab_size"), f"{what}: config.default_vocab_size", 256, MAX_VOCAB)
    n_special = _int(config.get("default_num_special_tokens"), f"{what}: config.default_num_special_tokens",
                     len(VERSION_SPECIALS[version]), vocab_size - 256)
    vocab = _checked_vocab(document.get("vocab"), vocab_size - n_special, what)
    specials = document.get("special_tokens")
    if specials is None:  # files up to v7 rely on mistral-common's built-in list
        if TokenizerVersion(version) > TokenizerVersion.v7:
            raise InputError(f"{what}: a {version} tokenizer must list its special_tokens")
        specials = [{"rank": t["rank"], "token_str": getattr(t["token_str"], "value", t["token_str"]),
                     "is_control": t["is_control"]} for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS]
    specials = _checked_specials(specials, n_special, what, version)
    try:
        tekkenizer = Tekkenizer(vocab=vocab, special_tokens=specials, pattern=pattern, vocab_size=vocab_size,
                                num_special_tokens=n_special, version=TokenizerVersion(version), name="tekken",
                                _path=path)
    except (ValueError, AssertionError, KeyError, TypeError) as exc:  # e.g. a regex tiktoken cannot compile
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} is not a usable tekken tokenizer: {printable(reason, 200)}") from None
    tekkenizer._model = _PanicAsError(tekkenizer._model)
    return tekkenizer


def is_rust_panic(exc: BaseException) -> bool:
    """pyo3's PanicException: a Rust panic inside an extension (tiktoken), raised as a BaseException
    that no `except Exception` catches."""
    return type(exc).__name__ == "PanicException"


class _PanicAsError:
    """tiktoken's Encoding, whose encode's Rust panics are a ValueError (which mdist.runner.tokenizer
    turns into one line naming the file) with nothing of them on stderr. tiktoken panics on a piece
    of text its pattern matched empty (a tekken.json pattern such as `x*` or a lone lookaround;
    Mistral's patterns consume at least a character per piece); Rust's panic hook writes its
    message and backtrace on stderr before the exception reaches Python, so fd 2 is pointed at
    /dev/null for the call (encode is short and runs before any output)."""

    def __init__(self, encoding: Any) -> None:
        self._encoding = encoding

    def encode(self, text: str, *args: Any, **kwargs: Any) -> Any:
        saved = os.dup(2)
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
            try:
                return self._encoding.encode(text, *args, **kwargs)
            except BaseException as exc:
                if not is_rust_panic(exc):
                    raise
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
                raise ValueError(f"tiktoken failed on this file's pattern (Rust panic: {reason[:100]}); "
                                 f"a pattern must not match an empty piece of text") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoding, name)
