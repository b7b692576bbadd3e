"""Is this GGUF the release's weights? Tensor digests of a GGUF, and the release re-encoded to compare.

A GGUF tensor's canonical form is that of mdist.verify.digest: its Mistral name (GGUF's names and
stacked experts undone), its type (F32, F16, BF16 as in safetensors; Q8_0 and others by ggml's
name), its C-order shape (GGUF lists dimensions innermost first: reversed) and its stored bytes in
Mistral's interleaved rotary order (which is GGUF's own). llama.cpp's converter widens norms and
1-D tensors to F32; in a GGUF whose file type is BF16 (or F16), an F32 tensor whose every value is
exactly a bf16 (f16) is digested as that narrower type, which undoes the widening losslessly. So a
BF16 GGUF made from a bf16 release (Mistral 7B) has the release's root digest exactly, and that
root can be checked against the published manifest without the release at hand. An F32 GGUF made
from a bf16 release keeps F32 digests (another dtype, another root): `mdist digest RELEASE FILE`
compares it by widening the release exactly.

A GGUF of another type than the release's is compared by re-encoding the release: each release
tensor is encoded into the GGUF tensor's type by the `gguf` package's reference encoder (exact
widening for F32; round-to-nearest-even for F16; the reference Q8_0 quantiser, bit-exact with
ggml's), and the bytes must be equal, never close. Checkable this way: F32, F16, BF16, Q8_0. Not
checkable: k-quants and i-quants (llama-quantize's choices per tensor and importance matrices are
not reproducible from the weights alone), and any tensor type the release cannot be encoded to.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from mdist.convert import gguf_layout as gl
from mdist.convert.gguf_reader import GGUFFile, read_gguf
from mdist.errors import InputError
from mdist.verify.digest import TensorDigest, compare, root_digest

CHECKABLE = ("F32", "F16", "BF16", "Q8_0")
_NARROW = {32: "BF16", 1: "F16"}  # general.file_type MOSTLY_BF16 / MOSTLY_F16: F32 tensors the converter widened
_CHUNK = 16 << 20


def _sha_rows(raw: np.ndarray) -> str:
    hasher = hashlib.sha256()
    rows = raw.reshape(-1, raw.shape[-1]) if raw.ndim > 1 else raw.reshape(1, -1)
    step = max(1, _CHUNK // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        hasher.update(np.ascontiguousarray(rows[start : start + step]).data)
    return hasher.hexdigest()


def _checked_arch(gguf: GGUFFile) -> None:
    arch = gguf.scalar("general.architecture", str)
    if arch != gl.ARCH:
        shown = str(arch)[:40]
        raise InputError(f"{gguf.path.name}: architecture {shown!r}; mdist reads llama-architecture GGUFs "
                         f"(Mistral, Mixtral)")


def gguf_digests(path: Path) -> list[TensorDigest]:
    """Digests of a GGUF's tensors in canonical form (a stacked expert tensor: one per expert)."""
    gguf = read_gguf(Path(path))
    _checked_arch(gguf)
    experts = gguf.metadata.get("llama.expert_count", 0)
    experts = experts if type(experts) is int and 0 < experts <= 256 else 0  # True is no expert count
    file_type = gguf.metadata.get("general.file_type")
    narrow = _NARROW.get(file_type) if type(file_type) is int else None  # an array there is unhashable
    result = []
    for tensor in gguf.tensors.values():
        try:
            names = gl.mistral_names(tensor.name, experts)
        except InputError:
            names = [tensor.name]  # not a Mistral tensor: digested under its own name
        raw = gguf.raw(tensor)
        if tensor.name.endswith("_exps.weight"):  # stacked experts, one or more (as the runner reads them)
            if not names:
                raise InputError(f"{gguf.path.name}: {tensor.name} stacks experts, but llama.expert_count is "
                                 f"missing or not an integer in 1..256")
            if len(tensor.shape) != 3 or tensor.shape[0] != len(names):
                raise InputError(f"{gguf.path.name}: {tensor.name} does not stack {len(names)} experts")
            result += [TensorDigest(name, tensor.type_name, tensor.shape[1:], _sha_rows(raw[j]))
                       for j, name in enumerate(names)]
        elif tensor.type_name == "F32" and narrow is not None:
            dtype, sha = _narrowed(raw.view(np.float32), narrow)
            result.append(TensorDigest(names[0], dtype, tensor.shape, sha))
        else:
            result.append(TensorDigest(names[0], tensor.type_name, tensor.shape, _sha_rows(raw)))
    seen: set[str] = set()
    for digest in result:  # `blk.0.attn_q.weight` and a tensor named `layers.0.attention.wq.weight`
        if digest.name in seen:
            raise InputError(f"{gguf.path.name}: two tensors are the Mistral tensor {digest.name[:100]}")
        seen.add(digest.name)
    return result


def _narrowed(values: np.ndarray, narrow: str) -> tuple[str, str]:
    """(dtype, sha256) of an F32 tensor: in `narrow` (BF16 or F16) when every value is exactly
    that type's widening, else as F32. One pass, both hashes."""
    wide, thin = hashlib.sha256(), hashlib.sha256()
    exact = True
    rows = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values.reshape(1, -1)
    step = max(1, _CHUNK // max(1, rows.shape[1] * 4))
    for start in range(0, rows.shape[0], step):
        chunk = np.ascontiguousarray(rows[start : start + step])
        wide.update(chunk.data)
        if exact:
            bits = chunk.view(np.uint32)
            if narrow == "BF16":
                exact = not np.any(bits & 0xFFFF)
                small = (bits >> 16).astype(np.uint16)
            else:
                small = chunk.astype(np.float16)
                exact = np.array_equal(small.astype(np.float32).view(np.uint32), bits)
            thin.update(small.data)
    return (narrow, thin.hexdigest()) if exact else ("F32", wide.hexdigest())


def release_digests_as(src: Path, types: dict[str, str], note: Callable[[str], None] | None = None,
                       on_start: Callable[[int], None] | None = None,
                       on_bytes: Callable[[int], None] | None = None) -> list[TensorDigest]:
    """The release's tensors (a .pth or a folder, as `digest` chooses), each encoded into the type
    `types` names for it (its own type when absent), digested in canonical form. The longest work
    of `digest` (minutes for a 7B Q8_0): `on_start(total bytes read)` and `on_bytes(n)` show it."""
    from mdist.convert.tensor_sources import open_model

    result = []
    with open_model(Path(src), note) as source:
        if on_start:
            on_start(sum(_stored_bytes(tensor.dtype, tensor.shape) for tensor in source.tensors))
        for tensor in source.tensors:
            target = types.get(tensor.name, tensor.dtype)
            if target not in CHECKABLE:
                raise InputError(f"tensor {tensor.name} is {target} in the GGUF: not reproducible from the "
                                 f"release (checkable: {', '.join(CHECKABLE)})")
            hasher = hashlib.sha256()
            for rows in tensor.rows(gl.CHUNK_BYTES):
                hasher.update(gl.encode(rows, tensor.dtype, target).data)
                if on_bytes:
                    on_bytes(rows.nbytes)
            result.append(TensorDigest(tensor.name, target, tensor.shape, hasher.hexdigest()))
    return result


_ITEM_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}


def _stored_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    """A release tensor's bytes (for progress only: an unknown type counts as 2 bytes a value)."""
    return int(np.prod(shape, dtype=np.int64)) * _ITEM_BYTES.get(dtype, 2)


@dataclass
class Comparison:
    """What `digest A B` compared, and what matched: tensor by tensor, as stored or with the release
    re-encoded into the GGUF's types (then its own root is another one, `re_encoded_root`)."""

    differing: list[str]
    encoded_as: list[str] = field(default_factory=list)  # types the release was re-encoded into
    not_checkable: list[str] = field(default_factory=list)  # GGUF tensors of a type mdist cannot reproduce
    tensors: int = 0  # tensors compared (both sides' names together)
    re_encoded: dict[str, int] = field(default_factory=dict)  # GGUF type -> release tensors re-encoded into it
    re_encoded_root: str | None = None  # root digest of the release so re-encoded
    release: Path | None = None  # the side that was re-encoded

    @property
    def same(self) -> bool:
        return not self.differing and not self.not_checkable

    def to_json(self) -> dict:
        matched = 0 if self.not_checkable else self.tensors - len(self.differing)
        return {"tensors": self.tensors, "matched": matched, "as_stored": self.tensors - sum(self.re_encoded.values()),
                "re_encoded": dict(self.re_encoded), "re_encoded_root": self.re_encoded_root,
                "not_checkable": list(self.not_checkable)}


def _plain(a: list[TensorDigest], b: list[TensorDigest]) -> Comparison:
    """Two sides compared as stored: same names, types, shapes and bytes, or not."""
    return Comparison(compare(a, b), tensors=len({t.name for t in a} | {t.name for t in b}))


def compare_with_release(release: Path, release_digests: list[TensorDigest], gguf: list[TensorDigest],
                         note: Callable[[str], None] | None = None, on_start: Callable[[int], None] | None = None,
                         on_bytes: Callable[[int], None] | None = None) -> Comparison:
    """Compare a GGUF's digests with the release's: directly where the types agree, else against the
    release re-encoded into the GGUF's types (read once more, in chunks)."""
    own = {t.name: t.dtype for t in release_digests}
    types = {t.name: t.dtype for t in gguf}
    unknown = sorted(n for n, t in types.items() if t not in CHECKABLE)
    if unknown:
        return Comparison(differing=[], not_checkable=unknown, tensors=len(set(own) | set(types)))
    if all(own.get(name) == kind for name, kind in types.items()):
        return _plain(release_digests, gguf)
    expected = release_digests_as(release, {n: t for n, t in types.items() if n in own}, note, on_start, on_bytes)
    counts: dict[str, int] = {}
    for name, kind in types.items():
        if own.get(name) not in (None, kind):
            counts[kind] = counts.get(kind, 0) + 1
    return replace(_plain(expected, gguf), encoded_as=sorted(counts), re_encoded=dict(sorted(counts.items())),
                   re_encoded_root=root_digest(expected), release=Path(release))


_HOW = {"Q8_0": "quantised to Q8_0 by the gguf package's reference quantiser", "F32": "widened exactly to F32",
        "F16": "rounded to F16 (nearest even)", "BF16": "rounded to BF16 (nearest even)"}


def _how_encoded(comparison: Comparison) -> str:
    ranked = sorted(comparison.re_encoded.items(), key=lambda item: -item[1])
    return ", ".join(f"{count} {_HOW.get(kind, 'encoded as ' + kind)}" for kind, count in ranked)


def describe(comparison: Comparison) -> str:
    """One line for the user: what was compared with what, and what matched."""
    if comparison.not_checkable:
        first = comparison.not_checkable[0]
        return (f"NOT CHECKABLE: {len(comparison.not_checkable)} tensors are of a type the release cannot be "
                f"re-encoded into bit for bit (first: {first}); only {', '.join(CHECKABLE)} GGUFs are checkable")
    total = comparison.tensors
    how = f" ({_how_encoded(comparison)})" if comparison.re_encoded else ""
    if comparison.differing:
        first = ", ".join(comparison.differing[:5])
        if how:
            return (f"DIFFERENT: {len(comparison.differing)} of the GGUF's {total} tensors differ from the release "
                    f"re-encoded into its types{how}; first: {first}")
        return f"DIFFERENT: {len(comparison.differing)} of {total} tensors differ, first: {first}"
    if how:
        return (f"same weights: the GGUF's {total} tensors equal the release re-encoded into its types byte for "
                f"byte{how}; its root is the re-encoded release's, not the release's own")
    return f"same weights: all {total} tensors equal (names, types, shapes, bytes), so the roots are equal"


def comparison_lines(comparison: Comparison) -> list[str]:
    """`digest A B`'s lines after the two roots: the re-encoded release's root (when there is one,
    the root the GGUF's must equal), then the verdict."""
    lines = []
    if comparison.re_encoded_root is not None:
        lines.append(f"{comparison.re_encoded_root}  {comparison.release}, re-encoded into the GGUF's types")
    return [*lines, describe(comparison)]


def digest_pair(paths: list[Path], results: list[list[TensorDigest]],
                note: Callable[[str], None] | None = None, on_start: Callable[[int], None] | None = None,
                on_bytes: Callable[[int], None] | None = None) -> Comparison:
    """`mdist digest A B` where one of them is a GGUF (both GGUFs: compared as stored); `on_start`
    and `on_bytes` follow the release's re-encoding, when there is one."""
    is_gguf = [Path(p).suffix == ".gguf" or _holds_only_gguf(Path(p)) for p in paths]
    if all(is_gguf) or not any(is_gguf):
        return _plain(*results)
    g = is_gguf.index(True)
    return compare_with_release(Path(paths[1 - g]), results[1 - g], results[g], note, on_start, on_bytes)


def _holds_only_gguf(path: Path) -> bool:
    if not path.is_dir():
        return False
    from mdist.model_folder import GGUF, inspect_folder

    layouts = inspect_folder(path).layouts
    return bool(layouts) and all(layout.kind == GGUF for layout in layouts)


def check_folder_ggufs(directory: Path, release: list[TensorDigest], note: Callable[[str], None]) -> bool:
    """`verify --tensors`: every .gguf in the folder must hold the release's weights (`release`: the
    digests of the release's own files, already checked against the manifest)."""
    from mdist.model_folder import GGUF, inspect_folder

    contents = inspect_folder(directory)
    names = [layout.weights[0] for layout in contents.layouts if layout.kind == GGUF]
    if not names or all(layout.kind == GGUF for layout in contents.layouts):
        return True  # no GGUF, or no release weights beside it to compare with
    ok = True
    for name in names:
        comparison = compare_with_release(directory, release, gguf_digests(directory / name), note)
        note(f"{name}: {describe(comparison)}")
        ok = ok and comparison.same
    return ok
