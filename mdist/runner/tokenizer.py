"""Mistral's tokenizers (v1, vN SentencePiece, tekken) through mistral-common, and streaming-safe decoding.

mistral-common is Mistral's own library: the ids of a plain prompt (`<s>` + text) and of a chat
(mdist.runner.chat) are the ones Mistral's reference stack feeds the model, whichever tokenizer
the folder holds (mdist.tokenizer_files says which). Tokenizer files come from outside: a
SentencePiece model is size-bounded before its protobuf is parsed, tekken.json is checked field
by field (mdist.runner.tekken); any failure is one InputError line.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from mdist.errors import InputError
from mdist.jsonio import open_regular, printable
from mdist.runner.chat import SAFE_PROMPT, encode_chat, quiet
from mdist.tokenizer_files import SENTENCEPIECE, TEKKEN

__all__ = ["SAFE_PROMPT", "StreamDecoder", "Tokenizer"]

MAX_SENTENCEPIECE_BYTES = 64 << 20  # Mistral's are 0.5-0.6 MB


@contextlib.contextmanager
def _reported(path: Path, doing: str) -> Iterator[None]:
    """What mistral-common (or tiktoken, sentencepiece) raises on what a tokenizer file holds, while
    `doing`, as one InputError line naming the file: its checks are asserts and ValueErrors that the
    file's content alone can trigger (a control token it lacks, a vocabulary that does not fit)."""
    from mistral_common.exceptions import MistralCommonException

    try:
        yield
    except (ValueError, AssertionError, KeyError, IndexError, TypeError, RuntimeError,
            MistralCommonException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path.name} cannot be used by mistral-common ({doing}): "
                         f"{type(exc).__name__}: {printable(reason, 200)}") from None


def _load_sentencepiece(path: Path) -> Any:
    from mistral_common.exceptions import TokenizerException
    from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

    fd = open_regular(path, f"tokenizer {path}")
    try:
        size = os.fstat(fd).st_size
        if size > MAX_SENTENCEPIECE_BYTES:
            raise InputError(f"tokenizer {path} is larger than {MAX_SENTENCEPIECE_BYTES >> 20} MiB")
        if size == 0:  # SentencePiece would say "unk is not defined"
            raise InputError(f"{path} is not a valid SentencePiece model (the file is empty)")
    finally:
        os.close(fd)
    try:
        return SentencePieceTokenizer(path)
    except (OSError, RuntimeError, ValueError, AssertionError, TokenizerException) as exc:
        raise InputError(f"{path} is not a valid SentencePiece model ({_sentencepiece_problem(exc)})") from None


def _sentencepiece_problem(exc: BaseException) -> str:
    """Why SentencePiece refused a file, in words for the user: its own text ("INTERNAL: could not
    parse ModelProto from PATH") names a C++ status and the protobuf type, which say nothing to them."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "could not parse ModelProto" in text or not text:
        return "its bytes do not parse as one: truncated, damaged or another kind of file"
    text = re.sub(r"^[A-Z_]+: ", "", text).rstrip(".")  # absl status prefix: INTERNAL, INVALID_ARGUMENT, ...
    return f"SentencePiece refuses it: {printable(text, 200)}"


def _mistral_tokenizer(inner: Any) -> Any:
    """mistral-common's MistralTokenizer around `inner`, wired as its from_file does (text only)."""
    from mistral_common.protocol.instruct.normalize import get_normalizer
    from mistral_common.protocol.instruct.validator import ValidationMode, get_validator
    from mistral_common.tokens.tokenizers import instruct
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    kinds = {"v1": instruct.InstructTokenizerV1, "v2": instruct.InstructTokenizerV2,
             "v3": instruct.InstructTokenizerV3, "v7": instruct.InstructTokenizerV7,
             "v11": instruct.InstructTokenizerV11, "v13": instruct.InstructTokenizerV13}
    version = inner.version
    if version.value not in kinds:
        raise InputError(f"tokenizer version {version.value} is not one mdist supports ({', '.join(kinds)})")
    return MistralTokenizer(kinds[version.value](inner), validator=get_validator(version, mode=ValidationMode.test),
                            request_normalizer=get_normalizer(version, inner.model_settings_builder))


class Tokenizer:
    """One tokenizer file: `tekken.json` is tekken, any other name SentencePiece of the version its
    name states (`tokenizer.model` is v1, as mistral-common reads it)."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not os.path.lexists(path):  # anything else there (a FIFO, a folder) is refused when opened
            raise InputError(f"tokenizer {path} is missing")
        with quiet():
            if path.suffix == ".json":
                from mdist.runner.tekken import load_tekkenizer

                inner = load_tekkenizer(path)
            else:
                inner = _load_sentencepiece(path)
            with _reported(path, "building its instruct tokenizer"):
                self.mistral = _mistral_tokenizer(inner)
        self.path = path
        self.inner = inner
        self.kind = "tekken" if path.suffix == ".json" else "sentencepiece"
        self.version: str = inner.version.value
        self.bos_id: int = inner.bos_id
        self.eos_id: int = inner.eos_id
        self.vocab_size: int = inner.n_words

    @classmethod
    def of_folder(cls, folder: Path) -> "Tokenizer":
        """The folder's tokenizer by mdist.tokenizer_files' rule (several explicit ones: refused)."""
        from mdist.tokenizer_files import tokenizer_file

        try:
            names = os.listdir(folder)
        except OSError as exc:
            raise InputError(f"cannot list {folder}: {exc.strerror}") from None
        name = tokenizer_file(names)
        if name is None:
            raise InputError(f"{folder} holds no tokenizer ({SENTENCEPIECE}, {SENTENCEPIECE}.v3 or {TEKKEN})")
        return cls(Path(folder) / name)

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        with quiet(), _reported(self.path, "encoding"):
            return list(self.inner.encode(text, bos=bos, eos=False))

    def is_control(self, token: int) -> bool:
        """A token no text encodes to (`<s>`, and `[INST]` from v2 on)."""
        return bool(self.inner.is_special(int(token)))

    def control_id(self, piece: str) -> int | None:
        """The id of control token `piece`, None when the tokenizer has no such control token."""
        with quiet():
            try:
                token = self.inner.get_special_token(piece)
            except ValueError:
                return None
        return token if self.is_control(token) else None

    def _check_chat(self) -> None:
        """SentencePiece names [INST] an unknown piece silently; refuse a chat that would feed it."""
        has_inst = self.control_id("[INST]") is not None and self.control_id("[/INST]") is not None
        if self.version == "v1" and self.kind == "sentencepiece" and self.control_id("[INST]") is not None:
            raise InputError(f"{self.path.name} has [INST] as a control token, as a v3 tokenizer has, but the name "
                             f"{SENTENCEPIECE} means v1 (where [INST] is text): --chat would feed the wrong tokens; "
                             f"name the file {SENTENCEPIECE}.v3 if the release calls it so")
        if self.version != "v1" and not has_inst:
            raise InputError(f"{self.path.name} is a {self.version} tokenizer without the [INST] and [/INST] "
                             f"control tokens; --chat cannot encode the template")

    def encode_chat(self, messages: Sequence[tuple[str, str]], *, safe_prompt: bool = False) -> list[int]:
        """A conversation of (role, text), ending with a user message: mistral-common's ids."""
        self._check_chat()
        with _reported(self.path, "encoding the chat"):
            return encode_chat(self.mistral, messages, safe_prompt=safe_prompt)

    def encode_prompt(self, prompt: str, *, chat: bool = False, safe_prompt: bool = False) -> list[int]:
        """Plain: `<s>` + prompt. Chat (implied by safe_prompt): the prompt as one user message."""
        if chat or safe_prompt:
            return self.encode_chat([("user", prompt)], safe_prompt=safe_prompt)
        return self.encode(prompt)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; control tokens (`<s>`, `[INST]`, …) are no text."""
        with quiet(), _reported(self.path, "decoding"):
            return self.inner.decode([int(i) for i in ids])

    def piece(self, token: int) -> str:
        """The vocabulary entry of `token` (SentencePiece pieces such as `<0xE2>`, tekken bytes as text)."""
        with quiet(), _reported(self.path, "reading a token"):
            return self.inner.id_to_piece(int(token))


class StreamDecoder:
    """Turns a growing list of token ids into text deltas, never splitting a UTF-8 character.

    Byte-fallback pieces (`<0xE2>` …) and tekken's byte tokens make up one character only
    together, so text is emitted only once the decoded string no longer ends in an incomplete
    sequence (U+FFFD). A few context tokens before the new ones keep SentencePiece's leading
    space right.
    """

    def __init__(self, tokenizer: Tokenizer, context: list[int]) -> None:
        self.tokenizer = tokenizer
        self.context = [t for t in context[-8:] if not tokenizer.is_control(t)]
        self.prefix = tokenizer.decode(self.context)
        self.ids: list[int] = []
        self.emitted = 0

    def _text(self) -> str:
        full = self.tokenizer.decode(self.context + self.ids)
        if full.startswith(self.prefix):
            return full[len(self.prefix):]
        return self.tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self._text()
        if text.endswith("\ufffd"):
            return ""
        delta = text[self.emitted:]
        self.emitted = len(text)
        return delta

    def flush(self) -> str:
        text = self._text()
        delta = text[self.emitted:]
        self.emitted = len(text)
        return delta
