"""`mdist demo`: the whole promise on the bundled tiny model, over a local swarm, in one command.

seed (127.0.0.1) -> fetch by magnet -> verify against checksums/tiny-mistral.json -> convert
safely -> prove the weights survived (tensor digest) -> generate text. Each step runs the same
code as the real command.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from mdist.errors import VerificationError

RELEASE = "tiny-mistral"
RELEASE_FILES = ("consolidated.00.pth", "params.json", "tokenizer.model")
DEFAULT_PROMPT = "ROMEO:"


def bundled_release() -> Path:
    return Path(str(resources.files("mdist.data") / RELEASE))


@dataclass
class Step:
    title: str
    proves: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class DemoUI:
    """What the demo shows; the CLI passes a rich implementation, tests a silent one."""

    def step(self, step: Step) -> None: ...
    def text(self, delta: str) -> None: ...
    def note(self, line: str) -> None: ...


def run_demo(workdir: Path | None = None, *, keep: bool = False, prompt: str = DEFAULT_PROMPT,
             max_tokens: int = 80, ui: DemoUI | None = None, reporter=None) -> dict[str, Any]:
    from mdist.convert import convert
    from mdist.fetch import FetchOptions, FetchRequest, run_fetch
    from mdist.runner.session import run_prompt
    from mdist.sources.bt_session import Endpoint
    from mdist.sources.torrent_fetch import SilentReporter
    from mdist.sources.torrent_seed import Seeder
    from mdist.verify.digest import root_digest, tensor_digests
    from mdist.verify.manifest import find_manifest
    from mdist.verify.pipeline import verify_command

    ui = ui or DemoUI()
    reporter = reporter or SilentReporter()
    created = workdir is None
    work = Path(tempfile.mkdtemp(prefix="mdist-demo-")) if created else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []

    def timed(title: str, proves: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        started = time.perf_counter()
        details = action()
        step = Step(title, proves, round(time.perf_counter() - started, 3), details)
        steps.append(step)
        ui.step(step)
        return details

    try:
        seed_dir = work / "seeder" / RELEASE
        if seed_dir.exists():
            shutil.rmtree(seed_dir)
        seed_dir.mkdir(parents=True)
        for name in RELEASE_FILES:
            shutil.copyfile(bundled_release() / name, seed_dir / name)
        with Seeder(seed_dir, listen=Endpoint("127.0.0.1", 0), no_dht=True) as seeder:
            info = timed("seed", "a real libtorrent session on 127.0.0.1 shares the bundled release",
                         lambda: _seed_details(seeder.start()))
            ui.note(f"magnet: {info['magnet']}")
            fetched = work / "fetched"
            if fetched.exists():
                shutil.rmtree(fetched)
            result = timed(
                "fetch", "metadata and data came from the swarm; every piece passed its SHA-1/SHA-256 check, "
                         "data flushed to disk before hashing",
                lambda: run_fetch(FetchRequest(info["magnet"], FetchOptions(out=fetched, no_dht=True, timeout=60)),
                                  reporter))
        if result.get("manifest") != RELEASE:
            raise VerificationError("the fetched torrent was not recognised as the tiny-mistral release")
        outcome = timed("verify", f"sha256 of every file equals checksums/{RELEASE}.json",
                        lambda: _verify_details(verify_command(fetched, RELEASE)))
        if not outcome["ok"]:
            raise VerificationError("the fetched folder does not verify")

        def do_convert() -> dict[str, Any]:
            converted = convert(fetched, fetched, force=True)
            before = root_digest(tensor_digests(fetched / "consolidated.00.pth"))
            after = root_digest(tensor_digests(fetched / "consolidated.safetensors"))
            expected = find_manifest(RELEASE).tensor_digest
            if not (before == after == expected):
                raise VerificationError("tensor digests differ after conversion")
            return {"tensors": converted.tensors, "bytes": converted.bytes, "tensor_digest": after}

        timed("convert", "the pickle was read by mdist's allow-list interpreter (no code ran, no torch); "
                         "the tensor digest before and after conversion equals the manifest's", do_convert)
        generation = timed("run", "the numpy Mistral runner generates text from the converted weights",
                           lambda: run_prompt(fetched, prompt, max_tokens=max_tokens, on_text=ui.text))
        return {
            "ok": True, "workdir": str(work), "kept": keep or not created, "magnet": info["magnet"],
            "prompt": prompt, "text": generation["text"], "token_ids": generation["token_ids"],
            "steps": [s.__dict__ for s in steps],
        }
    finally:
        if created and not keep:
            shutil.rmtree(work, ignore_errors=True)


def _seed_details(info) -> dict[str, Any]:
    return {"magnet": info.magnet, "port": info.port, "btih": info.hashes.v1, "btmh_v2": info.hashes.v2}


def _verify_details(outcome: dict[str, Any]) -> dict[str, Any]:
    files = outcome["report"]["files"]
    return {"ok": outcome["ok"], "files": {row["path"]: row["status"] for row in files}}
