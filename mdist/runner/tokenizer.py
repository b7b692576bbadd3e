"""SentencePiece tokenizer with Mistral's conventions and streaming-safe decoding."""

from __future__ import annotations

from pathlib import Path

from mdist.errors import InputError

SAFE_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote fairness and positivity."
)


class Tokenizer:
    def __init__(self, path: Path) -> None:
        import sentencepiece

        if not Path(path).is_file():
            raise InputError(f"tokenizer {path} is missing")
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{path} is not a SentencePiece model: {exc}") from None
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.vocab_size = self.sp.GetPieceSize()

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        ids = list(self.sp.EncodeAsIds(text))
        return [self.bos_id, *ids] if bos else ids

    def encode_prompt(self, prompt: str, *, chat: bool = False, safe_prompt: bool = False) -> list[int]:
        """Plain: `<s>` + prompt. Chat: Mistral's instruct template `<s>[INST] … [/INST]`."""
        if safe_prompt:
            prompt = f"{SAFE_PROMPT}\n\n{prompt}"
            chat = True
        if chat:
            prompt = f"[INST] {prompt} [/INST]"
        return self.encode(prompt)

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds(list(ids))


class StreamDecoder:
    """Turns a growing list of token ids into text deltas, never splitting a UTF-8 character.

    Byte-fallback pieces (`<0xE2>` …) make up one character only together, so text is emitted
    only once the decoded string no longer ends in an incomplete sequence (U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer, context: list[int]) -> None:
        self.tokenizer = tokenizer
        self.context = [t for t in context[-8:] if t != tokenizer.bos_id]
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
