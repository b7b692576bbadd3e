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
        raise VerificationError(f"signature verification failed: {exc}") from None
