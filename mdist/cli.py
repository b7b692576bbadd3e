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

from mdist import __version__, ui
from mdist.errors import MdistError
from mdist.inputs import folder_argument, model_argument


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:  # noqa: ARG001 (click's signature)
    """--debug given after the command: the same switch as before it (the group's ctx.obj is shared)."""
    if value:
        ctx.ensure_object(dict)["debug"] = True


class _Command(click.Command):
    """A command that also takes the group's own options after its name: `mdist run X --debug` as
    `mdist --debug run X`. Parsed by click as the command's options, so a value that happens to read
    `--debug` (`--prompt --debug`) stays a value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False, callback=_set_debug,
                                        help="Show tracebacks for errors (also accepted before the command)."))


class _Group(click.Group):
    """Maps every error to one stderr line and its exit code (usage errors included)."""

    command_class = _Command

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:  # usage errors: one line, with where to find help
            where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "mdist"
            hint = f" (see `{where} --help`)" if isinstance(exc, click.UsageError) else ""
            click.echo(f"mdist: error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("mdist: interrupted", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MdistError as exc:
            self._fail(ctx, str(exc), exc.exit_code)
        except OSError as exc:  # a file mdist could not read or write: unreadable input
            where = f": {exc.filename}" if exc.filename else ""
            self._fail(ctx, f"{exc.strerror or exc}{where}", 2)
        except KeyboardInterrupt as exc:
            click.echo("mdist: interrupted", err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors and --help: handled in main()
        except (RecursionError, MemoryError) as exc:  # an input beyond what a check foresaw: still one line
            self._fail(ctx, f"input too large or too deeply nested ({type(exc).__name__})", 2)
        except Exception as exc:  # a defect in mdist: one line for the user, the traceback with --debug
            self._fail(ctx, f"internal error ({type(exc).__name__}: {exc}); please report it "
                            f"(`mdist --debug ...` shows where)", 2)
        except BaseException as exc:  # pyo3's PanicException (a Rust extension panicked) is no Exception
            if type(exc).__name__ != "PanicException":
                raise
            self._fail(ctx, f"internal error (a Rust extension panicked: {str(exc)[:200]}); please report it "
                            f"(`mdist --debug ...` shows where)", 2)

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int) -> None:
        if ctx.obj and ctx.obj.get("debug"):
            traceback.print_exc()
        click.echo(f"mdist: error: {ui.printable(message)}", err=True)
        sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdist")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Fetch, verify, convert and smoke-test open-weight language models you can trust."""
    ctx.obj = {"debug": debug}


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


# -- convert ---------------------------------------------------------------------------------
@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Output folder (default: SRC's own folder; the files are recorded as derived in .mdist/).")
@click.option("--layout", type=click.Choice(["mistral", "hf", "gguf"]), default="mistral", show_default=True,
              help="mistral: consolidated.safetensors; hf: transformers shards + config.json; gguf: one .gguf "
                   "file for llama.cpp.")
@click.option("--type", "gguf_type", type=click.Choice(["bf16", "f16", "f32", "q8_0"], case_sensitive=False), default="bf16",
              show_default=True, help="--layout gguf: the stored type of the weights (norms stay f32).")
@click.option("--shard-size", default="5GB", show_default=True, help="Maximum shard size for --layout hf.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (missing: what `mdist run` would still "
                                                      "need beside the output, such as a tokenizer).")
def convert(src: Path, out: Path | None, layout: str, gguf_type: str, shard_size: str, force: bool,
            as_json: bool) -> None:
    """Convert a release's weights to safetensors, an HF layout or GGUF, without torch and without running pickle code.

    SRC is a release folder or its .pth; raw pieces (consolidated.00.pth-split0, ...) are read in
    place, never joined on disk. Mistral-layout safetensors (Mixtral 8x22B) convert to --layout hf;
    --layout gguf reads any layout mdist reads (a .pth, Mistral-layout safetensors, an HF folder).

    \b
    Examples:
      mdist convert ./mistral-7B-v0.1 --layout hf --out ./mistral-7b-hf
      mdist convert ./mistral-7B-v0.1 --layout gguf --type q8_0 --out ./m7b-gguf
      mdist convert ./mixtral-8x7b-32kseqlen --out ./mixtral   # the hub mirror's -splitN pieces
    """
    import time

    from mdist.convert import convert as run_convert

    given = click.get_current_context().get_parameter_source
    if layout != "gguf" and given("gguf_type") == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--type applies to --layout gguf only")
    if layout != "hf" and given("shard_size") == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--shard-size applies to --layout hf only")
    model_argument(src)
    started = time.monotonic()
    with ui.byte_progress("converting", quiet=as_json) as progress:
        task = progress.add_task("converting", total=None)
        result = run_convert(
            src, out, layout=layout, force=force, shard_bytes=parse_size(shard_size), gguf_type=gguf_type,
            on_start=lambda total: progress.update(task, total=total),
            on_bytes=lambda n: progress.advance(task, n),
        )
    elapsed = time.monotonic() - started
    summary = {
        "out": str(result.out), "layout": result.layout, "tensors": result.tensors,
        "bytes": result.bytes, "files": [str(p) for p in result.files], "seconds": round(elapsed, 3),
        "missing": result.missing, "warnings": result.warnings,
    }
    for line in result.warnings:
        click.echo(f"mdist: warning: {ui.printable(line)}", err=True)
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
@click.option("--chat", is_flag=True, help="Send the prompt as one user message in Mistral's instruct template "
              "<s>[INST] ... [/INST], encoded by mistral-common for the folder's tokenizer ([INST] is a control "
              "token from v3 on).")
@click.option("--safe-prompt", is_flag=True, help="Add Mistral's guardrail system prompt (implies --chat).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text, token ids, timings; weights_bytes: "
              "the weights as the file stores them, e.g. a Q8_0 GGUF's blocks, whether or not widened to float32 "
              "in memory, which weights_cached_f32 says).")
def run(model: Path, prompt: str, max_tokens: int, temperature: float, top_p: float, seed: int | None,
        chat: bool, safe_prompt: bool, as_json: bool) -> None:
    """Generate text with the built-in numpy Mistral runner (no torch).

    MODEL is a folder with consolidated.safetensors, an HF layout (config.json + the shards its index names),
    a raw consolidated.00.pth (converted safely once, then reused), or a .gguf file (F32, F16, BF16, Q8_0)
    or a folder holding one.

    \b
    Example:
      mdist run ./mistral-7B-v0.1 --prompt "The capital of France is" --max-tokens 20
    """
    from mdist.runner.session import run_prompt

    model_argument(model)
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
        f"prefill {result['prefill_tok_s']:.1f} tok/s, decode {result['decode_tok_s']:.1f} tok/s"
        + (f" ({result['seconds_per_token']:.2f} s/token)" if result["seconds_per_token"] else ""),
        err=True,
    )
    if result["disk_bound"]:
        click.echo(f"weights ({result['weights_bytes'] / 1e9:.1f} GB) exceed RAM ({result['ram_bytes'] / 1e9:.1f} GB): "
                   f"every token reads them from disk, so decoding is disk-bound", err=True)


def _stream_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# -- verify, manifest, digest, sign ----------------------------------------------------------
@main.command()
@click.argument("target", metavar="DIRECTORY|hf://OWNER/REPO[@REV]")
@click.option("--manifest", "manifest_name", help="Release name from checksums/ or a manifest file (default: recognise).")
@click.option("--signature", type=click.Path(path_type=Path), help="Also verify this model-signing signature.")
@click.option("--public-key", type=click.Path(path_type=Path), help="PEM public key for --signature.")
@click.option("--tensors", is_flag=True, help="Also check the per-tensor root digest when the manifest has one.")
@click.option("--strict", is_flag=True, help="Unexpected and not-checkable files fail the check too (exit 1).")
@click.option("--endpoint", help="hf:// only: the hub or mirror whose published hashes to check against "
                                 "(default: $HF_ENDPOINT or huggingface.co).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(target: str, manifest_name: str | None, signature: Path | None, public_key: Path | None,
           tensors: bool, strict: bool, endpoint: str | None, as_json: bool) -> None:
    """Check every file of DIRECTORY against a trusted manifest in checksums/.

    Exit 0 only if everything that can be checked matched; 1 on any mismatch, missing file,
    refused file (weights that are not part of the release, links) or bad signature, and with
    --strict on any unexpected or not-checkable file; 2 on bad input. Files mdist derived here
    (conversions) are listed as derived. hf://OWNER/REPO[@REV] checks the Hugging Face cache's
    copy against its blob names, checksums/ and what the hub publishes, downloading nothing.

    \b
    Examples:
      mdist verify ./mistral-7B-v0.1
      mdist verify ./model --signature model.sig --public-key key.pub
      mdist verify hf://mistralai/Mistral-7B-v0.1
    """
    from mdist.verify.pipeline import verify_command

    _term_as_interrupt()
    if bool(signature) != bool(public_key):
        raise click.UsageError("--signature and --public-key go together")
    if target.startswith("hf://"):
        from mdist.sources.resolve import parse_hub
        from mdist.verify.hub_cache import verify_cached

        if manifest_name or signature or tensors:
            raise click.UsageError("--manifest, --signature and --tensors take a DIRECTORY, not hf://")
        repo, revision = parse_hub(target)
        outcome = verify_cached(repo, revision, endpoint, strict=strict, quiet=as_json, progress=ui.byte_progress)
    else:
        if endpoint:
            raise click.UsageError("--endpoint applies to hf:// targets only")
        folder_argument(Path(target))
        outcome = verify_command(Path(target), manifest_name, signature=signature, public_key=public_key,
                                 tensors=tensors, strict=strict, quiet=as_json, progress=ui.byte_progress)
    if as_json:
        emit_json(outcome)
    else:
        ui.print_verify_report(outcome)
    sys.exit(0 if outcome["ok"] else 1)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Release name (lowercase, digits, . _ -).")
@click.option("--title", help="Human-readable title.")
@click.option("--out", type=click.Path(path_type=Path), help="Write here instead of stdout.")
def manifest(directory: Path, name: str, title: str | None, out: Path | None) -> None:
    """Write a manifest for a folder (for publishers): sizes, sha256 and the tensor root digest.

    \b
    Example:
      mdist manifest ./my-model --name my-model-v1 --out checksums/my-model-v1.json
    """
    from mdist.verify.pipeline import build_manifest

    folder_argument(directory)
    data = build_manifest(directory, name, title)
    text = json.dumps(data, indent=2) + "\n"
    if out:
        from mdist.atomic import write_bytes_atomic

        write_bytes_atomic(out, text.encode())
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--per-tensor", is_flag=True, help="List every tensor's digest.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (roots, verdict, per-tensor digests with --per-tensor).")
def digest(paths: tuple[Path, ...], per_tensor: bool, as_json: bool) -> None:
    """Root digest over every tensor's (name, dtype, shape, bytes), independent of the file format.

    A .pth, its consolidated.safetensors and its HF-layout conversion give the same digest.
    With two PATHS, compare them and name the first tensors that differ (exit 1 if any).
    A GGUF is compared with a release by re-encoding the release into the GGUF's types
    (F32, F16, BF16, Q8_0) with the gguf package's reference encoder: equal bytes, or different;
    the root of the release so re-encoded is printed too (the GGUF's must equal it).

    \b
    Examples:
      mdist digest ./mistral-7B-v0.1/consolidated.00.pth ./mistral-7b-hf
      mdist digest ./mistral-7B-v0.1 ./downloads/mistral-7b-v0.1.Q8_0.gguf
    """
    from mdist.verify.digest import root_digest, tensor_digests
    from mdist.verify.gguf_digest import comparison_lines, digest_pair

    if len(paths) > 2:
        raise click.UsageError("give one path, or two to compare")
    for path in paths:
        model_argument(path)
    note = ui.once(lambda line: click.echo(f"mdist: {ui.printable(line)}", err=True))
    with ui.byte_progress("digest", quiet=as_json) as progress:
        results = []
        for path in paths:  # no byte count from mdist.verify.digest: a bar that shows it is working, and on what
            task = progress.add_task(ui.escape(f"digest {path}"), total=None)
            results.append(tensor_digests(path, note=note))
            progress.remove_task(task)
        encoding = progress.add_task("re-encoding the release into the GGUF's types", total=None, visible=False)
        comparison = digest_pair(list(paths), results, note,
                                 on_start=lambda total: progress.update(encoding, total=total, visible=True),
                                 on_bytes=lambda n: progress.advance(encoding, n)) if len(results) == 2 else None
    roots = [root_digest(r) for r in results]
    differing = (comparison.differing or comparison.not_checkable) if comparison else []
    if as_json:
        emit_json({"paths": [
            {"path": str(p), "root": root, "tensors": len(r),
             **({"per_tensor": [t.__dict__ for t in r]} if per_tensor else {})}
            for p, root, r in zip(paths, roots, results)
        ], "same": not differing, "differing": differing,
            **({"encoded_as": comparison.encoded_as} if comparison and comparison.encoded_as else {}),
            **({"compared": comparison.to_json(), "verdict": comparison_lines(comparison)[-1]} if comparison else {})})
    else:
        for path, root, result in zip(paths, roots, results):
            click.echo(f"{root}  {path}  ({len(result)} tensors)")
            if per_tensor:
                for tensor in sorted(result, key=lambda t: t.name):
                    click.echo(f"  {tensor.line()}")
        if comparison is not None:
            for line in comparison_lines(comparison):
                click.echo(line)
    sys.exit(1 if differing else 0)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--private-key", required=True, type=click.Path(path_type=Path), help="PEM elliptic-curve private key.")
@click.option("--signature", type=click.Path(path_type=Path), help="Where to write it (default: DIRECTORY.sig).")
def sign(directory: Path, private_key: Path, signature: Path | None) -> None:
    """Sign a model folder in the OpenSSF model-signing format (verifiable with `model_signing`).

    \b
    Example:
      mdist sign ./my-model --private-key key.pem --signature my-model.sig
    """
    from mdist.verify.signing import sign as run_sign

    folder_argument(directory)
    click.echo(f"wrote signature {run_sign(directory, private_key, signature)}")


# -- fetch and seed --------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs; exits 143 instead of 130."""


def _term_as_interrupt() -> None:
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


@main.command()
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), help="Download folder (default: named after the torrent/repo).")
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT", help="Connect to this peer (repeatable).")
@click.option("--tracker", "trackers", multiple=True, metavar="URL", help="Extra tracker (repeatable).")
@click.option("--web-seed", "web_seeds", multiple=True, metavar="URL", help="Extra BEP 19 web seed (repeatable).")
@click.option("--listen", metavar="IP:PORT", help="Listen address (default: all interfaces, any port).")
@click.option("--no-dht", is_flag=True, help="No DHT, UPnP or NAT-PMP, and no local discovery unless --lsd or --fleet "
                                            "(tests, private networks).")
@click.option("--seed", "keep_seeding", is_flag=True, help="Keep seeding after completion until Ctrl-C.")
@click.option("--fleet", is_flag=True, help="One host of a fleet fed by `mdist seed --fleet` (implies --seed; "
                                          "see docs/fleet.md).")
@click.option("--lsd/--no-lsd", default=None, help="Local service discovery (default: on with --fleet, else as DHT).")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(1),
              help="Give up after this many seconds without progress.")
@click.option("--swarm-grace", default=30.0, show_default=True, type=click.FloatRange(1),
              help="For a release with a hub repository: fall back to the hub when no peer at all was found "
                   "within this many seconds (a peer that stops delivering is given --timeout).")
@click.option("--source", "prefer", type=click.Choice(["auto", "torrent", "archive", "hub"]), default="auto",
              show_default=True, help="For a release name: force the swarm, the archive or the hub.")
@click.option("--md5", metavar="HEX", help="Archive URLs only: the archive's published md5 (a release name or a "
                                           "known URL brings its own; a different one is an error).")
@click.option("--keep-archive", is_flag=True, help="Archive sources only: keep the verified .tar in OUT "
                                                   "(default: deleted once extracted); an OUT/NAME.tar that is not "
                                                   "this archive (md5) is refused, never replaced.")
@click.option("--endpoint", help="Hub or mirror URL for hf:// sources (default: $HF_ENDPOINT or huggingface.co).")
@click.option("--to-hf-cache", is_flag=True, help="hf:// only: store in the standard Hugging Face cache layout.")
@click.option("--include", multiple=True, help="hf:// only: glob of files to fetch (repeatable).")
@click.option("--exclude", multiple=True, help="hf:// only: glob of files to skip (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def fetch(source: str, out: Path | None, peers: tuple[str, ...], trackers: tuple[str, ...],
          web_seeds: tuple[str, ...], listen: str | None, no_dht: bool, keep_seeding: bool, timeout: float,
          swarm_grace: float, prefer: str, md5: str | None, keep_archive: bool, endpoint: str | None,
          to_hf_cache: bool, include: tuple[str, ...],
          exclude: tuple[str, ...], as_json: bool, fleet: bool, lsd: bool | None) -> None:
    """Fetch a model and verify every file before calling it done.

    SOURCE is a magnet link, a .torrent file, hf://OWNER/REPO[@REVISION], an http(s) URL of a
    .tar archive, or a release name from checksums/ (see `mdist releases`).

    \b
    Examples:
      mdist fetch mistral-7b-v0.1
      mdist fetch 'magnet:?xt=urn:btih:208b101a0f51514ecf285885a8b0f6fb1a1e4d7d&dn=mistral-7B-v0.1'
      mdist fetch hf://mistralai/Mistral-7B-v0.1 --include '*.safetensors' --out ./m7b
      mdist fetch https://models.mistralcdn.com/mistral-7b-v0-3/mistral-7B-v0.3.tar --out ./m7b-v03
    """
    from mdist.fetch import ArchiveOptions, FetchOptions, FetchRequest, HubOptions, run_fetch

    _term_as_interrupt()
    request = FetchRequest(
        source=source, prefer=prefer,
        swarm=FetchOptions(out=out, peers=list(peers), trackers=list(trackers), web_seeds=list(web_seeds),
                           listen=listen, no_dht=no_dht, seed=keep_seeding, timeout=timeout, fleet=fleet, lsd=lsd),
        swarm_grace=swarm_grace,
        hub=HubOptions(out=out, endpoint=endpoint, to_hf_cache=to_hf_cache, include=list(include),
                       exclude=list(exclude), quiet=as_json),
        archive=ArchiveOptions(out=out, md5=md5, keep_archive=keep_archive, timeout=timeout, quiet=as_json),
    )
    with ui.TransferReporter(quiet=as_json) as reporter:
        result = run_fetch(request, reporter)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"fetched {result['name']} into {result['out']} via {result['via']}: "
                   f"{result['total_bytes'] / 1e6:.1f} MB, {len(result['files'])} files")
        click.echo(f"verified: {result['verification']}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--listen", metavar="IP:PORT", help="Listen address; when explicit, the magnet carries it as x.pe "
              "(with --fleet and no address, or 0.0.0.0 / ::, each of this machine's reachable addresses).")
@click.option("--tracker", "trackers", multiple=True, metavar="URL", help="Tracker to announce to (repeatable).")
@click.option("--web-seed", "web_seeds", multiple=True, metavar="URL", help="Web seed to list in the torrent.")
@click.option("--torrent-out", type=click.Path(path_type=Path), help="Also write the .torrent file here.")
@click.option("--new-torrent", is_flag=True,
              help="Share a new torrent of the folder even if it holds the one it was fetched with.")
@click.option("--fetch-metadata", is_flag=True,
              help="A known release copied from elsewhere: learn its torrent's info dict from peers by the "
                   "published info-hash, check the files against it (never downloading them) and rejoin its swarm.")
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT", help="Ask this peer for --fetch-metadata.")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(1),
              help="--fetch-metadata gives up after this many seconds without progress.")
@click.option("--torrent-version", type=click.Choice(["hybrid", "v1", "v2"]),
              help="For a new torrent: hybrid (default), v1 or v2.")
@click.option("--no-dht", is_flag=True, help="No DHT, UPnP or NAT-PMP, and no local discovery unless --lsd or --fleet.")
@click.option("--manifest", "manifest_name", help="Verify against this release (default: recognise it).")
@click.option("--force", is_flag=True, help="Seed even if `mdist verify` rejects the folder.")
@click.option("--upload-limit", default="0", help="Upload rate limit per second, e.g. 2MB (0: none).")
@click.option("--fleet", is_flag=True, help="The origin of a fleet: every host runs the command printed "
                                          "(`mdist fetch MAGNET --fleet`); see docs/fleet.md.")
@click.option("--lsd/--no-lsd", default=None, help="Local service discovery (default: on with --fleet, else as DHT).")
def seed(directory: Path, listen: str | None, trackers: tuple[str, ...], web_seeds: tuple[str, ...],
         torrent_out: Path | None, new_torrent: bool, fetch_metadata: bool, peers: tuple[str, ...], timeout: float,
         torrent_version: str | None, no_dht: bool, manifest_name: str | None, force: bool, upload_limit: str,
         fleet: bool, lsd: bool | None) -> None:
    """Share a verified model folder; print its magnet link first, then seed until Ctrl-C.

    A folder fetched by torrent is shared with that same torrent (.mdist/release.torrent): the
    same info-hash, so you join the published swarm; files mdist derived later are not part of it.
    Otherwise a new torrent is made (derived files and .mdist/ left out).

    \b
    Examples:
      mdist seed ./mistral-7B-v0.1 --listen 0.0.0.0:6881 --torrent-out mistral.torrent
      mdist seed ./copied-from-disk --fetch-metadata --peer 10.0.0.5:6881
    """
    from mdist.seeding import SeedOptions, run_seed

    folder_argument(directory)
    _term_as_interrupt()
    options = SeedOptions(listen=listen, trackers=list(trackers), web_seeds=list(web_seeds), peers=list(peers),
                          torrent_out=torrent_out, version=torrent_version, no_dht=no_dht,
                          manifest_name=manifest_name, force=force, new_torrent=new_torrent,
                          fetch_metadata=fetch_metadata, timeout=timeout, fleet=fleet, lsd=lsd,
                          upload_limit=0 if upload_limit.strip() == "0" else parse_size(upload_limit))
    run_seed(directory, options, echo=lambda line: (click.echo(line), sys.stdout.flush()),
             note=lambda line: click.echo(line, err=True))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the releases as one JSON object.")
def releases(as_json: bool) -> None:
    """List the known releases in checksums/."""
    from mdist.verify.manifest import load_registry

    registry = load_registry()
    if as_json:
        emit_json([{"name": m.name, "title": m.title, "sources": m.sources, "via": _via(m),
                    "archive": m.archive, "files": len(m.files)} for m in registry])
        return
    for m in registry:
        click.echo(f"{m.name:28} {m.title}  [{', '.join(_via(m)) or 'no source'}]")


def _via(manifest: Any) -> list[str]:
    """Where a release can be fetched from, in the order `mdist fetch NAME` tries them."""
    has = {"magnet": any(k in manifest.sources for k in ("magnet", "btih", "btmh")),
           "archive": manifest.archive is not None,
           "hub": any(k in manifest.sources for k in ("hub", "hub_alternative"))}
    return [k for k, present in has.items() if present]


# -- demo ------------------------------------------------------------------------------------
@main.command()
@click.option("--workdir", type=click.Path(path_type=Path), help="Work here (kept); default: a temporary folder.")
@click.option("--keep", is_flag=True, help="Keep the temporary work folder.")
@click.option("--prompt", default="ROMEO:", show_default=True)
@click.option("--max-tokens", default=80, show_default=True, type=click.IntRange(1, 2048))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the panels.")
def demo(workdir: Path | None, keep: bool, prompt: str, max_tokens: int, as_json: bool) -> None:
    """The whole pipeline on the bundled tiny model: seed -> fetch by magnet -> verify -> convert -> run.

    Everything happens on 127.0.0.1 with DHT and other discovery off; no internet is needed.
    """
    from mdist.demo import DemoUI, run_demo

    result = run_demo(workdir, keep=keep, prompt=prompt, max_tokens=max_tokens,
                      ui=DemoUI() if as_json else ui.RichDemoUI())
    if as_json:
        emit_json(result)
    else:
        total = sum(s["seconds"] for s in result["steps"])
        click.echo("")
        click.echo(f"demo complete in {total:.1f}s" + (f"; files kept in {result['workdir']}" if result["kept"] else ""))
