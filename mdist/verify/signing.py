"""Signatures in the OpenSSF model-signing format, through the `model_signing` library."""

from __future__ import annotations

from pathlib import Path

from mdist.errors import InputError, VerificationError
from mdist.verify.folder import STATE_DIR


def default_signature_path(model_dir: Path) -> Path:
    return Path(str(Path(model_dir).resolve()) + ".sig")


def _hashing_config(model_dir: Path, signature: Path):
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[model_dir / STATE_DIR, signature], ignore_git_paths=True)


def sign(model_dir: Path, private_key: Path, signature: Path | None = None) -> Path:
    from model_signing import signing

    model_dir = Path(model_dir)
    signature = Path(signature) if signature else default_signature_path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir} is not a folder")
    try:
        config = signing.Config().use_elliptic_key_signer(private_key=private_key)
        config.set_hashing_config(_hashing_config(model_dir, signature)).sign(model_dir, signature)
    except (ValueError, OSError, TypeError) as exc:
        raise InputError(f"signing failed: {exc}") from None
    return signature


def verify_signature(model_dir: Path, signature: Path, public_key: Path) -> None:
    """Raise VerificationError unless the signature covers exactly the folder's current files."""
    from model_signing import verifying

    model_dir = Path(model_dir)
    for path, what in ((signature, "signature"), (public_key, "public key")):
        if not Path(path).is_file():
            raise InputError(f"{what} {path} does not exist")
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=public_key)
        config.set_hashing_config(_hashing_config(model_dir, Path(signature))).verify(model_dir, signature)
    except ValueError as exc:
        reason = _explain(model_dir, Path(signature)) or str(exc).splitlines()[0][:200]
        raise VerificationError(f"signature verification failed: {reason}") from None


def _explain(model_dir: Path, signature: Path) -> str | None:
    """Which files differ from what the signature lists, in words (the library's error is a repr).

    Read only to explain a failure the library already reported; never to decide validity.
    """
    import base64
    import json

    from mdist.jsonio import parse_json, read_small_file
    from mdist.model_folder import list_files
    from mdist.paths import in_state_folder
    from mdist.verify.hashing import hash_files

    try:
        bundle = parse_json(read_small_file(signature, 16 << 20), str(signature))
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]
                  if r.get("algorithm") == "sha256"}
    except Exception:  # not the expected bundle: the library's own message stands
        return None
    present, _ = list_files(model_dir)
    present = {p: n for p, n in present.items() if not in_state_folder(p) and p != signature.name}
    digests = hash_files({model_dir / p: ("sha256",) for p in present if p in signed})
    problems = []
    for path in sorted(set(signed) | set(present)):
        if path not in present:
            problems.append(f"{path}: signed but missing")
        elif path not in signed:
            problems.append(f"{path}: not covered by the signature")
        elif digests[model_dir / path]["sha256"] != signed[path]:
            problems.append(f"{path}: sha256 expected {signed[path]} got {digests[model_dir / path]['sha256']}")
    return "; ".join(problems[:5]) if problems else None
