"""Which tokenizer file a model folder holds: one rule, for `run` and for the folder's trust checks.

Mistral ships three kinds (mistral-common reads each; its version comes from the name):
  tokenizer.model      SentencePiece, v1: `[INST]` is text (Mistral 7B v0.1/v0.2, Mixtral 8x7B)
  tokenizer.model.vN   SentencePiece, vN: `[INST]`/`[/INST]` are control tokens from v2 on
                       (tokenizer.model.v3: Mistral 7B v0.3, Mixtral 8x22B, Codestral 22B, Mathstral)
  tekken.json          tiktoken-based, version inside (Mistral Nemo, 128k vocabulary)
Hub repositories of v0.3 models hold `tokenizer.model` too (for transformers) beside
`tokenizer.model.v3`: like mistral-common's own choice, the name that states its version wins over
the bare one. Any other pair (tekken beside SentencePiece, two versions) is ambiguous: refused.
"""

from __future__ import annotations

from typing import Iterable

from mdist.errors import InputError

SENTENCEPIECE = "tokenizer.model"
TEKKEN = "tekken.json"
VERSIONED = tuple(f"tokenizer.model.{v}" for v in ("v1", "v2", "v3", "v7"))
TOKENIZER_NAMES = (SENTENCEPIECE, *VERSIONED, TEKKEN)


def tokenizer_file(names: Iterable[str], *, strict: bool = True) -> str | None:
    """The folder's tokenizer among `names` (top-level file names), None when it has none.
    Ambiguous folders raise InputError, or give None when not `strict` (the caller that loads
    the tokenizer asks strictly and refuses them)."""
    present = sorted(set(names) & set(TOKENIZER_NAMES), key=TOKENIZER_NAMES.index)
    explicit = [name for name in present if name != SENTENCEPIECE]
    if len(explicit) > 1:
        if not strict:
            return None
        raise InputError(f"the folder holds several tokenizers ({', '.join(explicit)}); mdist will not guess "
                         f"which one the model was trained with: keep only the release's own")
    return explicit[0] if explicit else (SENTENCEPIECE if present else None)
