"""The `mdist` command line: thin wrappers over the importable modules.

Heavy modules (numpy, libtorrent, huggingface_hub) are imported inside commands so that
`mdist --help` stays fast. Errors are one line on stderr; exit codes: 0 ok, 1 verification
failure, 2 usage error or unreadable input.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from mdist import __version__
from mdist.errors import MdistError


class _Group(click.Group):
    """Maps mdist's typed errors to one stderr line and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MdistError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"mdist: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("mdist: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdist")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Fetch, verify, convert and smoke-test open-weight language models you can trust."""
    ctx.obj = {"debug": debug}


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def byte_progress(description: str, *, quiet: bool = False):
    """A rich progress bar on stderr for long byte-counting work (hidden when quiet)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = _stderr_console()
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )


# -- convert ---------------------------------------------------------------------------------
@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default: next to SRC).")
@click.option("--layout", type=click.Choice(["mistral", "hf"]), default="mistral", show_default=True,
              help="mistral: consolidated.safetensors; hf: transformers shards + config.json.")
@click.option("--shard-size", default="5GB", show_default=True, help="Maximum shard size for --layout hf.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def convert(src: Path, out: Path | None, layout: str, shard_size: str, force: bool, as_json: bool) -> None:
    """Convert a raw consolidated.00.pth to safetensors, without torch and without running pickle code.

    \b
    Example:
      mdist convert ./mistral-7B-v0.1 --layout hf --out ./mistral-7b-hf
    """
    import time

    from mdist.convert import convert as run_convert

    started = time.monotonic()
    with byte_progress("converting", quiet=as_json) as progress:
        task = progress.add_task("converting", total=None)
        result = run_convert(
            src, out, layout=layout, force=force, shard_bytes=parse_size(shard_size),
            on_start=lambda total: progress.update(task, total=total),
            on_bytes=lambda n: progress.advance(task, n),
        )
    elapsed = time.monotonic() - started
    summary = {
        "out": str(result.out), "layout": result.layout, "tensors": result.tensors,
        "bytes": result.bytes, "files": [str(p) for p in result.files], "seconds": round(elapsed, 3),
    }
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"converted {result.tensors} tensors ({result.bytes / 1e6:.1f} MB) to {result.layout} layout "
                   f"in {result.out} in {elapsed:.1f}s")
        for path in result.files:
            click.echo(f"  {path}")


def parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    stripped = text.strip().upper()
    number = stripped.rstrip("KMGIB")
    try:
        value = int(float(number) * units[stripped[len(number):]])
    except (ValueError, KeyError):
        raise click.BadParameter(f"cannot read size {text!r} (try 5GB or 500MB)") from None
    if value <= 0:
        raise click.BadParameter("size must be positive")
    return value


# -- run -------------------------------------------------------------------------------------
@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="Text to continue (or the user message with --chat).")
@click.option("--max-tokens", default=128, show_default=True, type=click.IntRange(0, 32768))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0, 10),
              help="0 is greedy and fully deterministic.")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Nucleus sampling threshold.")
@click.option("--seed", type=int, help="Makes sampling with --temperature > 0 reproducible.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in Mistral's instruct template <s>[INST] ... [/INST].")
@click.option("--safe-prompt", is_flag=True, help="Prepend Mistral's guard-rail system prompt (implies --chat).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text, token ids, timings).")
def run(model: Path, prompt: str, max_tokens: int, temperature: float, top_p: float, seed: int | None,
        chat: bool, safe_prompt: bool, as_json: bool) -> None:
    """Generate text with the built-in numpy Mistral runner (no torch).

    MODEL is a folder with consolidated.safetensors, an HF layout (config.json + model*.safetensors)
    or a raw consolidated.00.pth (converted safely once, then reused).

    \b
    Example:
      mdist run ./mistral-7B-v0.1 --prompt "The capital of France is" --max-tokens 20
    """
    from mdist.runner.session import run_prompt

    result = run_prompt(
        model, prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
        chat=chat, safe_prompt=safe_prompt, on_text=None if as_json else _stream_stdout,
    )
    if as_json:
        emit_json(result)
        return
    click.echo("")
    click.echo(
        f"prompt tokens {result['prompt_tokens']}, generated {result['generated_tokens']} "
        f"(stopped by {result['stopped_by']}); load {result['load_seconds']:.2f}s, "
        f"prefill {result['prefill_tok_s']:.1f} tok/s, decode {result['decode_tok_s']:.1f} tok/s",
        err=True,
    )


def _stream_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
