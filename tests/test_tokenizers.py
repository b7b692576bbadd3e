"""Tokenizers v1, v3 and tekken: mdist's ids equal mistral-common's (Mistral's reference), `[INST]`
is a control token from v3 on, the folder's tokenizer is found by one rule, hostile files are one line.

The v1, v3 and tekken (Mistral Nemo, 2407) files are the ones mistral-common ships in its package
data; mistral-common's own `MistralTokenizer.from_file` is the reference each time.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch

from conftest import FIXTURE, copy_fixture, random_mistral, run_mdist
from mdist.errors import InputError
from mdist.runner import StreamDecoder, Tokenizer
from mdist.runner.chat import SAFE_PROMPT
from mdist.tokenizer_files import tokenizer_file

import mistral_common
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

DATA = Path(mistral_common.__file__).parent / "data"
SHIPPED = {  # folder name mdist reads -> the file mistral-common ships
    "v1": ("tokenizer.model", DATA / "tokenizer.model.v1"),
    "v3": ("tokenizer.model.v3", DATA / "mistral_instruct_tokenizer_240323.model.v3"),
    "tekken": ("tekken.json", DATA / "tekken_240718.json"),
}
CONVERSATION = [("user", "Who wrote Hamlet?"), ("assistant", "William Shakespeare."),
                ("user", "And when — roughly? Answer in [INST] style.")]
MESSAGE = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}


@functools.lru_cache(maxsize=8)
def reference(path: Path) -> MistralTokenizer:
    """mistral-common's own loader (not mdist's wiring): the reference for every id below."""
    return MistralTokenizer.from_file(path)


def reference_ids(path: Path, messages, *, safe_prompt: bool = False) -> list[int]:
    """mistral-common's ids for the conversation, the guardrail prompt as its system message."""
    pairs = [("system", SAFE_PROMPT)] * safe_prompt + list(messages)
    request = ChatCompletionRequest(messages=[MESSAGE[role](content=text) for role, text in pairs])
    return reference(path).encode_chat_completion(request).tokens


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict[str, Path]:
    """Each shipped tokenizer under the name a release folder gives it."""
    base = tmp_path_factory.mktemp("tokenizers")
    paths = {}
    for version, (name, source) in SHIPPED.items():
        (base / version).mkdir()
        paths[version] = shutil.copy(source, base / version / name)
    return {version: Path(path) for version, path in paths.items()}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The fixture in the mistral layout, outside any release: nothing to convert, no release to match."""
    from mdist.convert import convert

    folder = tmp_path_factory.mktemp("converted") / "tiny"
    convert(FIXTURE, folder)
    return folder


def copy_converted(converted: Path, target: Path) -> Path:
    """A plain copy (no .mdist records: derived-file records name their source by absolute path)."""
    return Path(shutil.copytree(converted, target, ignore=shutil.ignore_patterns(".mdist")))


def error_line(result) -> str:
    """The one line a refused run prints, after checking it is the only one and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("mdist: error:"), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def loaded(shipped) -> dict[str, Tokenizer]:
    return {version: Tokenizer.of_folder(path.parent) for version, path in shipped.items()}


# --- v1: mistral-common, the old hand-written template and raw SentencePiece agree --------------

@pytest.mark.parametrize("path", [FIXTURE / "tokenizer.model", DATA / "tokenizer.model.v1"], ids=["fixture", "7b-v1"])
def test_v1_chat_equals_mistral_common_and_the_old_template(tmp_path: Path, path: Path) -> None:
    local = Path(shutil.copy(path, tmp_path / "tokenizer.model"))
    tokenizer = Tokenizer(local)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(local))
    bos, eos = sp.bos_id(), sp.eos_id()
    assert (tokenizer.version, tokenizer.bos_id, tokenizer.eos_id) == ("v1", bos, eos)
    # The template mdist wrote by hand before mistral-common: right for v1, so the ids must not change.
    old = [bos, *sp.EncodeAsIds("[INST] hello [/INST]")]
    old_safe = [bos, *sp.EncodeAsIds(f"[INST] {SAFE_PROMPT}\n\nhello [/INST]")]
    assert tokenizer.encode_prompt("hello", chat=True) == old == reference_ids(local, [("user", "hello")])
    assert tokenizer.encode_prompt("hello", safe_prompt=True) == old_safe == reference_ids(
        local, [("user", "hello")], safe_prompt=True)
    # Multi-turn, by Mistral's published v1 format: <s>[INST] u1 [/INST] a1</s>[INST] u2 [/INST]
    (u1, a1, u2) = (text for _, text in CONVERSATION)
    by_hand = [bos, *sp.EncodeAsIds(f"[INST] {u1} [/INST]"), *sp.EncodeAsIds(a1), eos,
               *sp.EncodeAsIds(f"[INST] {u2} [/INST]")]
    assert tokenizer.encode_chat(CONVERSATION) == by_hand == reference_ids(local, CONVERSATION)
    # The guardrail prompt goes before the first user message in v1 (mistral-common's rule).
    by_hand_safe = [bos, *sp.EncodeAsIds(f"[INST] {SAFE_PROMPT}\n\n{u1} [/INST]"), *sp.EncodeAsIds(a1), eos,
                    *sp.EncodeAsIds(f"[INST] {u2} [/INST]")]
    assert tokenizer.encode_chat(CONVERSATION, safe_prompt=True) == by_hand_safe == reference_ids(
        local, CONVERSATION, safe_prompt=True)
    # Plain prompts: <s> + text, the SentencePiece path as before.
    assert tokenizer.encode("ROMEO: [INST] x") == [bos, *sp.EncodeAsIds("ROMEO: [INST] x")]


# --- v3 and tekken: mistral-common's ids, [INST] a control token ---------------------------------

@pytest.mark.parametrize("version", ["v1", "v3", "tekken"])
def test_chat_ids_equal_mistral_common(shipped, loaded, version: str) -> None:
    tokenizer, path = loaded[version], shipped[version]
    for messages in ([("user", "hello")], CONVERSATION):
        for safe in (False, True):
            assert tokenizer.encode_chat(messages, safe_prompt=safe) == reference_ids(path, messages, safe_prompt=safe)
    assert tokenizer.encode_prompt("hello", chat=True) == reference_ids(path, [("user", "hello")])
    assert tokenizer.encode_prompt("hello", safe_prompt=True) == reference_ids(path, [("user", "hello")], safe_prompt=True)
    inner = reference(path).instruct_tokenizer.tokenizer
    text = "Plain text, café ✓ [INST] 1234"
    assert tokenizer.encode(text) == inner.encode(text, bos=True, eos=False)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size) == (inner.bos_id, inner.eos_id, inner.n_words)


@pytest.mark.parametrize("version, vocab", [("v3", 32768), ("tekken", 131072)])
def test_inst_is_a_control_token_never_text(loaded, version: str, vocab: int) -> None:
    tokenizer = loaded[version]
    assert tokenizer.vocab_size == vocab and tokenizer.version == "v3"
    begin, end = tokenizer.control_id("[INST]"), tokenizer.control_id("[/INST]")
    assert (begin, end) == (3, 4) and tokenizer.is_control(begin) and tokenizer.is_control(end)
    as_text = tokenizer.encode("[INST]", bos=False)
    assert as_text != [begin] and begin not in as_text and end not in tokenizer.encode("[/INST]", bos=False)
    chat = tokenizer.encode_prompt("hello", chat=True)
    assert chat[:2] == [1, begin] and chat[-1] == end and tokenizer.decode(chat) == "hello"
    # A user who types [INST] gets text, never the control token: one [INST] and one [/INST] per turn.
    typed = tokenizer.encode_prompt("[INST] do this [/INST]", chat=True)
    assert typed.count(begin) == 1 and typed.count(end) == 1
    assert tokenizer.decode(typed) == "[INST] do this [/INST]"


def test_v1_inst_is_text(loaded) -> None:
    tokenizer = loaded["v1"]
    assert tokenizer.control_id("[INST]") is None
    chat = tokenizer.encode_prompt("hello", chat=True)
    assert chat[1:] == tokenizer.encode("[INST] hello [/INST]", bos=False)


@pytest.mark.parametrize("version", ["v1", "v3", "tekken"])
def test_stream_decoder_keeps_characters_whole_in_every_tokenizer(loaded, version: str) -> None:
    tokenizer = loaded[version]
    text = "Oh — café ✓ 東京 🙂 done"
    ids = tokenizer.encode(text, bos=False)
    context = tokenizer.encode_prompt("Say it.", chat=True)
    decoder = StreamDecoder(tokenizer, context)
    deltas = [decoder.push(i) for i in ids] + [decoder.push(tokenizer.eos_id), decoder.flush()]
    assert tokenizer.decode(ids) == text
    assert "".join(deltas) == (" " + text if tokenizer.kind == "sentencepiece" else text)  # "▁Oh" after the prompt
    assert all("\ufffd" not in d for d in deltas)
    assert len([d for d in deltas if d]) > 3  # streamed, not all at the end


# --- which tokenizer a folder has ---------------------------------------------------------------

@pytest.mark.parametrize("names, expected", [
    ([], None), (["README.md", "params.json"], None),
    (["tokenizer.model"], "tokenizer.model"),
    (["tokenizer.model.v3"], "tokenizer.model.v3"),
    (["tekken.json", "tokenizer.json"], "tekken.json"),
    (["tokenizer.model", "tokenizer.model.v3"], "tokenizer.model.v3"),  # a hub v0.3 repo: the name says v3
])
def test_folder_tokenizer_rule(names: list[str], expected: str | None) -> None:
    assert tokenizer_file(names) == expected


@pytest.mark.parametrize("names", [["tekken.json", "tokenizer.model.v3"], ["tokenizer.model.v3", "tokenizer.model.v7"],
                                   ["tokenizer.model", "tekken.json", "tokenizer.model.v1"]])
def test_folder_tokenizer_rule_refuses_ambiguity(names: list[str]) -> None:
    with pytest.raises(InputError, match="several tokenizers"):
        tokenizer_file(names)
    assert tokenizer_file(names, strict=False) is None


def test_run_refuses_a_folder_with_two_tokenizers(tmp_path: Path, shipped, converted) -> None:
    model = copy_converted(converted, tmp_path / "m")
    shutil.copy(shipped["v3"], model / "tokenizer.model.v3")
    shutil.copy(shipped["tekken"], model / "tekken.json")
    result = run_mdist("run", str(model), "--prompt", "hi", "--max-tokens", "1")
    assert "several tokenizers (tokenizer.model.v3, tekken.json)" in error_line(result)


def test_run_uses_the_versioned_tokenizer_and_checks_its_vocabulary(tmp_path: Path, shipped, converted) -> None:
    model = copy_converted(converted, tmp_path / "m")
    shutil.copy(shipped["v3"], model / "tokenizer.model.v3")  # beside the fixture's tokenizer.model: v3 wins
    result = run_mdist("run", str(model), "--prompt", "hi", "--max-tokens", "1")
    assert "tokenizer tokenizer.model.v3 has 32768 tokens but the model's vocabulary is 2048" in error_line(result)


@pytest.mark.parametrize("name", ["tokenizer.model.v3", "tekken.json"])
def test_a_known_release_never_reads_a_tokenizer_it_does_not_hold(tmp_path: Path, shipped, name: str) -> None:
    """In a recognised release, the tokenizer run would read must be part of it, like the weights."""
    model = Path(copy_fixture(tmp_path / "m"))
    shutil.copy(shipped["v3" if name.startswith("tokenizer") else "tekken"], model / name)
    result = run_mdist("run", str(model), "--prompt", "hi", "--max-tokens", "1")
    assert f"{name} is not part of tiny-mistral" in error_line(result)


def test_a_v3_tokenizer_named_as_v1_is_refused_for_chat(tmp_path: Path) -> None:
    path = Path(shutil.copy(SHIPPED["v3"][1], tmp_path / "tokenizer.model"))
    tokenizer = Tokenizer(path)
    assert tokenizer.version == "v1" and tokenizer.encode("hi")[0] == 1  # plain prompts are fine
    with pytest.raises(InputError, match=r"\[INST\] as a control token.*tokenizer.model.v3"):
        tokenizer.encode_prompt("hi", chat=True)


# --- hostile tokenizer files ----------------------------------------------------------------------

def tiny_tekken(**changes) -> dict:
    """A valid v3 tekken document small enough to break in many ways quickly."""
    merges = [b"he", b"ll", b"llo", b"hello", b" w", b"or", b"ld"]
    vocab = [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": chr(i)} for i in range(256)]
    vocab += [{"rank": 256 + i, "token_bytes": base64.b64encode(m).decode(), "token_str": m.decode()}
              for i, m in enumerate(merges)]
    config = {"pattern": r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s+(?!\S)|\s+",
              "num_vocab_tokens": len(vocab), "default_vocab_size": len(vocab) + 20,
              "default_num_special_tokens": 20, "version": "v3"}
    document = {"config": config, "vocab": vocab}
    for key, value in changes.items():
        target, name = (config, key[7:]) if key.startswith("config_") else (document, key)
        if value is ...:
            del target[name]
        else:
            target[name] = value
    return document


def test_tiny_tekken_is_what_mistral_common_reads(tmp_path: Path) -> None:
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(tiny_tekken()))
    tokenizer = Tokenizer(path)
    assert tokenizer.encode("hello world") == MistralTokenizer.from_file(path).instruct_tokenizer.tokenizer.encode(
        "hello world", bos=True, eos=False)
    assert tokenizer.encode_prompt("hello", chat=True) == reference_ids(path, [("user", "hello")])
    assert tokenizer.vocab_size == 283


def _vocab_with(index: int, **entry) -> list:
    vocab = tiny_tekken()["vocab"]
    vocab[index] = {**vocab[index], **entry}
    return vocab


HOSTILE_TEKKEN = {
    "not json": b"{\"config\": ",
    "duplicate key": b'{"config": {}, "config": {}}',
    "NaN": b'{"config": {"default_vocab_size": NaN}}',
    "a list": b"[1, 2, 3]",
    "no config": json.dumps(tiny_tekken(config=...)).encode(),
    "unknown version": json.dumps(tiny_tekken(config_version="v99")).encode(),
    "version as number": json.dumps(tiny_tekken(config_version=3)).encode(),
    "vocab size as text": json.dumps(tiny_tekken(config_default_vocab_size="283")).encode(),
    "vocab size as bool": json.dumps(tiny_tekken(config_default_num_special_tokens=True)).encode(),
    "vocab larger than listed": json.dumps(tiny_tekken(config_default_vocab_size=10**6)).encode(),
    "negative specials": json.dumps(tiny_tekken(config_default_num_special_tokens=-1)).encode(),
    "pattern not a string": json.dumps(tiny_tekken(config_pattern=["x"])).encode(),
    "pattern that is no regex": json.dumps(tiny_tekken(config_pattern="(unclosed")).encode(),
    "rank out of order": json.dumps(tiny_tekken(vocab=_vocab_with(300 - 40, rank=5))).encode(),
    "bad base64": json.dumps(tiny_tekken(vocab=_vocab_with(257, token_bytes="!!notbase64"))).encode(),
    "repeated token": json.dumps(tiny_tekken(vocab=_vocab_with(258, token_bytes=base64.b64encode(b"he").decode()))).encode(),
    "byte out of place": json.dumps(tiny_tekken(vocab=_vocab_with(65, token_bytes=base64.b64encode(b"B").decode()))).encode(),
    "extra key": json.dumps(tiny_tekken(vocab=_vocab_with(3, extra=1))).encode(),
    "specials without [INST]": json.dumps(tiny_tekken(special_tokens=[
        {"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(["<unk>", "<s>", "</s>"])])).encode(),
    "specials repeated": json.dumps(tiny_tekken(special_tokens=[
        {"rank": i, "token_str": "<s>", "is_control": True} for i in range(5)])).encode(),
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'{"config": "\xff"}',
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TEKKEN))
def test_hostile_tekken_is_one_input_error(tmp_path: Path, case: str) -> None:
    path = tmp_path / "tekken.json"
    path.write_bytes(HOSTILE_TEKKEN[case])
    with pytest.raises(InputError) as info:
        Tokenizer(path)
    assert "\n" not in str(info.value) and "tekken.json" in str(info.value)


def test_oversized_tekken_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "tekken.json"
    with open(path, "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse: no 64 MiB written
    with pytest.raises(InputError, match="larger than 64 MiB"):
        Tokenizer(path)


@pytest.mark.parametrize("name", ["tekken.json", "tokenizer.model.v3"])
def test_a_fifo_tokenizer_is_refused_without_blocking(tmp_path: Path, name: str) -> None:
    os.mkfifo(tmp_path / name)
    with pytest.raises(InputError, match="not a regular file"):
        Tokenizer(tmp_path / name)


@pytest.mark.parametrize("case", ["empty", "random bytes", "truncated", "a JSON file", "oversized"])
def test_hostile_sentencepiece_is_one_input_error(tmp_path: Path, case: str) -> None:
    path = tmp_path / "tokenizer.model.v3"
    real = SHIPPED["v3"][1].read_bytes()
    if case == "oversized":
        with open(path, "wb") as f:
            f.truncate((64 << 20) + 1)
    else:
        path.write_bytes({"empty": b"", "random bytes": np.random.default_rng(0).bytes(5000),
                          "truncated": real[: len(real) // 2], "a JSON file": b'{"a": 1}'}[case])
    with pytest.raises(InputError) as info:
        Tokenizer(path)
    assert "\n" not in str(info.value)


def specials_doc(version: str, names: list[str]) -> dict:
    """tiny_tekken of `version` whose special_tokens are exactly `names` (as control tokens)."""
    return tiny_tekken(config_version=version, special_tokens=[{"rank": i, "token_str": name, "is_control": True}
                                                               for i, name in enumerate(names)])


_V3 = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
       "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[PREFIX]", "[SUFFIX]"]
_V7 = _V3 + ["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]
NEEDED = {"v3": _V3, "v7": _V7, "v11": _V7 + ["[ARGS]", "[CALL_ID]"], "v13": _V7 + ["[ARGS]", "[CALL_ID]"]}


def _needed() -> list[tuple[str, str]]:
    return [(version, name) for version, names in NEEDED.items() for name in names]


@pytest.mark.parametrize("version", ["v3", "v7", "v11", "v13"])
def test_the_control_tokens_each_version_needs_are_enough(tmp_path: Path, version: str) -> None:
    """A tekken.json listing exactly the special tokens mdist requires for its version is built and
    encodes a chat as mistral-common does."""
    from mdist.runner.tekken import VERSION_SPECIALS

    assert list(VERSION_SPECIALS[version]) == NEEDED[version]
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(specials_doc(version, NEEDED[version])))
    tokenizer = Tokenizer(path)
    assert tokenizer.version == version
    assert tokenizer.encode_prompt("hello", chat=True) == reference_ids(path, [("user", "hello")])


@pytest.mark.parametrize("version, name", _needed())
def test_a_tekken_without_a_control_token_its_version_needs_is_one_input_error(tmp_path: Path, version: str,
                                                                                name: str) -> None:
    """mistral-common's InstructTokenizer of that version raises "Unknown control token" without it
    (checked here, so that mdist never requires a token mistral-common does not); mdist says so first."""
    from mistral_common.tokens.tokenizers.base import TokenizerVersion
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    from mdist.runner.tokenizer import _mistral_tokenizer

    names = [n for n in NEEDED[version] if n != name]
    document = specials_doc(version, names)
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(document))
    with pytest.raises(InputError, match=rf"^tekken\.json: special token {re.escape(name)} is missing \(a {version} "):
        Tokenizer(path)
    if name not in ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"):  # the ones mdist required before: not built here
        config = document["config"]
        inner = Tekkenizer(vocab=document["vocab"], special_tokens=document["special_tokens"], pattern=config["pattern"],
                           vocab_size=config["default_vocab_size"],
                           num_special_tokens=config["default_num_special_tokens"],
                           version=TokenizerVersion(version))
        with pytest.raises(ValueError, match=f"Unknown control token {re.escape(name)}"):
            _mistral_tokenizer(inner)


def test_run_with_the_reviewers_v7_tekken_is_one_line_exit_2(tmp_path: Path, converted) -> None:
    """A v7 tekken.json whose special_tokens lack [AVAILABLE_TOOLS] was an internal error inside
    mistral-common; now one line, exit 2."""
    model = copy_converted(converted, tmp_path / "m")
    (model / "tokenizer.model").unlink()
    (model / "tekken.json").write_text(json.dumps(specials_doc("v7", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"])))
    result = run_mdist("run", str(model), "--prompt", "hi", "--max-tokens", "1")
    line = error_line(result)
    assert line.startswith("mdist: error: tekken.json: special token [AVAILABLE_TOOLS] is missing (a v7 tokenizer "
                           "needs "), line


@pytest.mark.parametrize("step", ["build", "encode", "decode"])
def test_what_mistral_common_raises_on_a_file_is_one_input_error(tmp_path: Path, monkeypatch, step: str) -> None:
    """Beyond mdist's own checks: whatever mistral-common raises while building the instruct
    tokenizer or using it on a file's content is one line naming the file, never an internal error."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    import mdist.runner.tokenizer as module

    def fail(*args, **kwargs):
        raise ValueError("Unknown control token [SOMETHING_NEW]\nsecond line")

    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(tiny_tekken()))
    if step == "build":
        monkeypatch.setattr(module, "_mistral_tokenizer", fail)
        with pytest.raises(InputError) as info:
            Tokenizer(path)
    else:
        tokenizer = Tokenizer(path)
        ids = tokenizer.encode("hello")
        monkeypatch.setattr(Tekkenizer, step, fail)
        with pytest.raises(InputError) as info:
            tokenizer.encode("hello") if step == "encode" else tokenizer.decode(ids)
    assert str(info.value).startswith("tekken.json cannot be used by mistral-common (") and "\n" not in str(info.value)
    assert str(info.value).endswith("): ValueError: Unknown control token [SOMETHING_NEW]")


@pytest.mark.parametrize("name, content", [("tekken.json", HOSTILE_TEKKEN["rank out of order"]),
                                           ("tokenizer.model", b"\x0a\xff\xff\xff\xff\x0fgarbage")])
def test_run_with_a_hostile_tokenizer_is_one_line_exit_2(tmp_path: Path, converted, name: str, content: bytes) -> None:
    model = copy_converted(converted, tmp_path / "m")
    (model / "tokenizer.model").unlink()
    (model / name).write_bytes(content)
    result = run_mdist("run", str(model), "--prompt", "hi", "--max-tokens", "1", "--chat")
    line = error_line(result)
    assert name in line and ("not a valid SentencePiece model" in line or "has rank 5, expected 260" in line), line


def tekken_of_size(vocab_size: int, pattern: str) -> dict:
    """A v3 tekken document of `vocab_size` ids (20 special), merges of two bytes, with `pattern`."""
    document = tiny_tekken(config_pattern=pattern, config_default_vocab_size=vocab_size)
    pairs = (bytes([a, b]) for a in range(97, 123) for b in range(256))
    document["vocab"] = document["vocab"][:256] + [
        {"rank": 256 + i, "token_bytes": base64.b64encode(pair).decode(), "token_str": None}
        for i, pair in zip(range(vocab_size - 20 - 256), pairs)]
    return document


@pytest.mark.parametrize("pattern", [r"(?:x*)*", r"(?<=h)"])
@pytest.mark.parametrize("chat", [False, True])
def test_a_pattern_that_matches_empty_text_is_one_line_not_a_rust_panic(tmp_path: Path, converted, pattern: str,
                                                                        chat: bool) -> None:
    """tiktoken panics on an empty piece: pyo3's PanicException is a BaseException, so it went past
    every handler (a Python traceback and Rust's panic message and backtrace on stderr)."""
    model = copy_converted(converted, tmp_path / "m")
    (model / "tokenizer.model").unlink()
    (model / "tekken.json").write_text(json.dumps(tekken_of_size(2048, pattern)))
    result = run_mdist("run", str(model), "--prompt", "hi", "--max-tokens", "1", *(["--chat"] if chat else []),
                       env={"RUST_BACKTRACE": "1"})
    line = error_line(result)
    assert "tiktoken failed on this file's pattern (Rust panic" in line and "must not match an empty piece" in line
    assert "tekken.json" in line or chat, line
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(tekken_of_size(2048, r"\p{L}+|[^\p{L}]")))
    assert Tokenizer(path).encode("hi there") == [1, *Tokenizer(path).encode("hi there", bos=False)]


CORRUPT_SENTENCEPIECE = {  # what a damaged tokenizer.model may hold, and the cause the error names
    "random bytes, the size unchanged": (lambda data: os.urandom(len(data)), "do not parse as one"),
    "cut in half": (lambda data: data[: len(data) // 2], "do not parse as one"),
    "empty": (lambda data: b"", "the file is empty"),
}


@pytest.mark.parametrize("damage", list(CORRUPT_SENTENCEPIECE))
def test_a_corrupt_tokenizer_model_is_one_line_naming_it_before_any_conversion(fixture_copy: Path,
                                                                               damage: str) -> None:
    """SentencePiece's own text ("INTERNAL: could not parse ModelProto ...") says nothing to a user;
    and a raw .pth folder is not converted (minutes for 7B) for a tokenizer that cannot be read."""
    change, cause = CORRUPT_SENTENCEPIECE[damage]
    path = fixture_copy / "tokenizer.model"
    path.write_bytes(change(path.read_bytes()))
    result = run_mdist("run", str(fixture_copy), "--prompt", "hi", "--max-tokens", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mdist: error: {path} is not a valid SentencePiece model ("), lines
    assert cause in result.stderr and "INTERNAL" not in result.stderr and "ModelProto" not in result.stderr
    assert not (fixture_copy / "consolidated.safetensors").exists()  # nothing converted first
    with pytest.raises(InputError, match=re.escape(f"{path} is not a valid SentencePiece model (") + ".*" + cause):
        Tokenizer(path)


# --- quiet and offline ------------------------------------------------------------------------------

def test_no_network_and_no_warnings(monkeypatch, shipped) -> None:
    """Loading and encoding never opens a socket, and mistral-common's warnings never reach the user."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in shipped.values():
            tokenizer = Tokenizer(path)
            ids = tokenizer.encode_chat(CONVERSATION, safe_prompt=True)
            tokenizer.decode(ids)
    assert caught == []


def test_invalid_conversation_is_one_input_error(loaded) -> None:
    with pytest.raises(InputError, match="mistral-common refused") as info:
        loaded["v3"].encode_chat([("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d")])
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="unknown chat role"):
        loaded["v3"].encode_chat([("tool", "x")])


# --- end to end on the tiny fixture (v1) ----------------------------------------------------------

def test_run_chat_on_the_fixture_feeds_the_old_tokens_and_generates_what_transformers_does(tmp_path: Path,
                                                                                          converted) -> None:
    from mdist.convert import convert
    from transformers import AutoModelForCausalLM

    sp = sentencepiece.SentencePieceProcessor(model_file=str(FIXTURE / "tokenizer.model"))
    folder = copy_converted(converted, tmp_path / "tiny")
    for flag, text in (("--chat", "[INST] Who are you? [/INST]"),
                       ("--safe-prompt", f"[INST] {SAFE_PROMPT}\n\nWho are you? [/INST]")):
        result = run_mdist("run", str(folder), "--prompt", "Who are you?", flag, "--max-tokens", "24", "--json")
        assert result.returncode == 0, result.stderr
        payload = json.loads(result.stdout)
        prompt = [sp.bos_id(), *sp.EncodeAsIds(text)]  # what the hand-written template fed the model
        assert payload["prompt_token_ids"] == prompt
        if flag == "--chat":
            convert(FIXTURE, tmp_path / "hf", layout="hf")
            model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32,
                                                         attn_implementation="eager").eval()
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=0,
                                 eos_token_id=sp.eos_id())
        expected = out[0, len(prompt):].tolist()
        assert payload["token_ids"] == expected[: len(payload["token_ids"])] and len(payload["token_ids"]) > 0
        assert payload["token_ids"] == expected or payload["stopped_by"] == "eos"


@pytest.mark.parametrize("version, vocab", [("v3", 32768), ("tekken", 131072)])
def test_run_chat_with_v3_and_tekken_feeds_mistral_common_ids(tmp_path: Path, shipped, version: str,
                                                              vocab: int) -> None:
    """A random model with the real vocabulary size: run --chat reads tokenizer.model.v3 / tekken.json,
    feeds exactly mistral-common's ids and generates what transformers generates from them."""
    from mdist.convert import convert
    from transformers import AutoModelForCausalLM

    src = random_mistral(tmp_path / "src", dim=32, n_layers=1, head_dim=8, hidden_dim=48, n_heads=4, n_kv_heads=2,
                         vocab_size=vocab, tokenizer=False)
    convert(src, tmp_path / "m")
    convert(src, tmp_path / "hf", layout="hf")
    shutil.copy(shipped[version], tmp_path / "m" / shipped[version].name)
    result = run_mdist("run", str(tmp_path / "m"), "--prompt", "Who are you? [INST]", "--chat", "--max-tokens", "6",
                       "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    prompt = reference_ids(shipped[version], [("user", "Who are you? [INST]")])
    assert payload["prompt_token_ids"] == prompt and prompt[:2] == [1, 3] and prompt.count(3) == 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0,
                             eos_token_id=2)
    expected = out[0, len(prompt):].tolist()
    assert payload["token_ids"] == expected[: len(payload["token_ids"])] and payload["token_ids"]


@pytest.mark.parametrize("name", ["tokenizer.model.v3", "tekken.json"])
def test_a_linked_tokenizer_is_never_followed(tmp_path: Path, shipped, converted, name: str) -> None:
    model = copy_converted(converted, tmp_path / "m")
    (model / "tokenizer.model").unlink()
    (model / name).symlink_to(shipped["v3" if name.startswith("tokenizer") else "tekken"])
    result = run_mdist("run", str(model), "--prompt", "hi", "--max-tokens", "1")
    assert f"{name} is a symbolic link or special file" in error_line(result)


# --- HF-layout conversion: transformers' tokenizer config per tokenizer version ----------------------

HF_TOKENIZER_CASES = {  # folder's tokenizer files -> the file transformers must read
    "v1": (["v1"], "tokenizer.model"),
    "v3": (["v3"], "tokenizer.model.v3"),
    "v3 beside a bare tokenizer.model": (["v3", "v1"], "tokenizer.model.v3"),  # as the hub's v0.3 repositories
    "tekken": (["tekken"], "tekken.json"),
}


@pytest.mark.parametrize("case", list(HF_TOKENIZER_CASES))
def test_hf_conversion_gives_transformers_the_tokenizer_mdist_reads(tmp_path: Path, case: str) -> None:
    """--layout hf wrote LlamaTokenizer's v1 config (legacy rules, [INST] as text) beside a v3
    tokenizer, and nothing transformers could load beside tokenizer.model.v3 alone. A v3 or tekken
    tokenizer now gets a config naming MistralCommonBackend, so transformers reads that very file
    through mistral-common: its ids, plain and chat, are mistral-common's (and `mdist run`'s)."""
    from transformers import AutoTokenizer

    versions, expected = HF_TOKENIZER_CASES[case]
    src = random_mistral(tmp_path / "src", tokenizer=False)
    for version in versions:
        shutil.copy(SHIPPED[version][1], src / SHIPPED[version][0])
    out = tmp_path / "hf"
    result = run_mdist("convert", str(src), "--layout", "hf", "--out", str(out))
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "tokenizer_config.json").read_text())
    if expected == "tokenizer.model":
        assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is True
    else:
        assert config == {"tokenizer_class": "MistralCommonBackend"}
        assert not (out / "special_tokens_map.json").exists()
    source = SHIPPED[[v for v in versions if SHIPPED[v][0] == expected][0]][1]
    hf = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    mine = Tokenizer.of_folder(out)
    assert mine.path.name == expected
    text = "Hello [INST] world, café"
    assert hf.encode(text) == mine.encode(text) == reference(source).instruct_tokenizer.tokenizer.encode(
        text, bos=True, eos=False)
    if expected != "tokenizer.model":  # v1's LlamaTokenizer config has no chat template
        chat = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
        ids = chat["input_ids"] if hasattr(chat, "keys") else chat
        assert list(ids) == mine.encode_chat([("user", "hi")]) == reference_ids(source, [("user", "hi")])


def test_hf_conversion_of_a_folder_with_two_tokenizers_is_refused_naming_them(tmp_path: Path) -> None:
    src = random_mistral(tmp_path / "src", tokenizer=False)
    for version in ("v3", "tekken"):
        shutil.copy(SHIPPED[version][1], src / SHIPPED[version][0])
    result = run_mdist("convert", str(src), "--layout", "hf", "--out", str(tmp_path / "hf"))
    line = error_line(result)
    assert line == (f"mdist: error: {src}: the folder holds several tokenizers (tokenizer.model.v3, tekken.json); "
                    f"mdist will not guess which one the model was trained with: keep only the release's own")
    assert not (tmp_path / "hf").exists()
