"""A SentencePiece `tokenizer.model` rebuilt from a GGUF's own vocabulary, for a GGUF that comes alone.

Most GGUFs are downloaded without the tokenizer.model they were made with. A GGUF whose tokenizer
kind is `llama` carries every piece with its score and type (llama.cpp took the types from
SentencePiece, with the same numbers) and the bos/eos/unknown ids: that is a SentencePiece BPE
model, apart from settings llama.cpp fixes for this kind, used here as it uses them: identity
normalisation, a space before the text unless `tokenizer.ggml.add_space_prefix` is false,
whitespace kept as it is, bytes for unknown characters when BYTE pieces exist, digits merged as the
vocabulary allows. `mdist run` writes it beside the GGUF, recorded as derived from it, and then
reads it like any tokenizer.model (checked against the GGUF as always).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mdist.atomic import write_bytes_atomic
from mdist.convert.gguf_reader import GGUFFile, read_gguf
from mdist.derived import record_derived
from mdist.errors import InputError
from mdist.runner.chat import quiet
from mdist.tokenizer_files import SENTENCEPIECE

_SENTENCEPIECE_TYPES = range(1, 7)  # NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE: GGUF's numbers too
_BYTE = 6


def sentencepiece_model(gguf: GGUFFile) -> bytes:
    """The serialised SentencePiece ModelProto of the GGUF's vocabulary; InputError naming what is
    missing or malformed (the bytes are also loaded once, so SentencePiece's own checks apply)."""
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as spm_pb

    meta, name = gguf.metadata, gguf.path.name
    kind = gguf.scalar("tokenizer.ggml.model", str)
    if kind != "llama":
        raise InputError(f"{name} holds a {kind!r} tokenizer, not SentencePiece's ('llama'); put the model's "
                         f"tokenizer.model beside it")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        tokens = []
    scores, types = (gguf.numbers(f"tokenizer.ggml.{key}", len(tokens)) for key in ("scores", "token_type"))
    if not tokens or scores is None or types is None:
        raise InputError(f"{name}: its vocabulary (tokens, scores, token types of one length) is missing or malformed")
    if not np.isfinite(scores.astype(np.float64)).all() or not np.isin(types, _SENTENCEPIECE_TYPES).all():
        raise InputError(f"{name}: token scores must be finite and token types 1-6")
    ids = {}
    for key, field in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id")):
        value = gguf.scalar(f"tokenizer.ggml.{field}", int)
        if value is None or not 0 <= value < len(tokens):
            raise InputError(f"{name}: tokenizer.ggml.{field} is missing or not a token id")
        ids[key] = int(value)
    add_prefix = gguf.scalar("tokenizer.ggml.add_space_prefix", bool, True)
    model = spm_pb.ModelProto()
    for piece, score, kind_number in zip(tokens, scores.tolist(), types.tolist()):
        entry = model.pieces.add()
        entry.piece, entry.score, entry.type = piece, float(score), int(kind_number)
    trainer = model.trainer_spec
    trainer.model_type = spm_pb.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = bool((types == _BYTE).any())
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = ids["unk"], ids["bos"], ids["eos"], -1
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(add_prefix)
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    data = model.SerializeToString()
    try:
        with quiet():
            SentencePieceProcessor(model_proto=data)
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"{name}: its vocabulary is not a SentencePiece model ({str(exc)[:200]})") from None
    return data


def write_tokenizer_beside(gguf_path: Path) -> Path:
    """Write `tokenizer.model` from the GGUF's vocabulary beside it, recorded as derived from it
    (the caller has checked that the folder may be written)."""
    folder = gguf_path.parent
    target = folder / SENTENCEPIECE
    write_bytes_atomic(target, sentencepiece_model(read_gguf(gguf_path)), overwrite=False)
    record_derived(folder, [target], [gguf_path])
    return target
