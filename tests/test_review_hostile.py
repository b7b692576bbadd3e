"""Inputs found by a hostile review: each class of defect, with the input that showed it.

- GGUF metadata of the wrong type where mdist reads one value (an array for the architecture, the
  tokenizer kind, add_space_prefix or a token id; a string for a boolean): it was an internal error
  (numpy's 'truth value of an array is ambiguous'), or a silent misreading ("false" read as true).
- Weights whose products overflow (finite bf16 values near 3e38, or infinities): numpy printed
  RuntimeWarnings with source lines on stderr before the one error line.
- run's sampling options: NaN passes click's FloatRange, a negative seed its int type, and a
  temperature so small that the scaled scores overflow: each was an internal error.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE, run_mdist
from mdist.convert.gguf_reader import read_gguf
from mdist.errors import InputError

_STRING, _ARRAY, _U32, _I32, _BOOL = 8, 9, 4, 5, 7
_SCALAR_FORMATS = {_U32: "<I", _I32: "<i", _BOOL: "<B", 6: "<f"}


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(value) -> bytes:
    """GGUF bytes (type, value) of a Python value: str, bool, int, float, list of str, int32 array."""
    if isinstance(value, str):
        return struct.pack("<I", _STRING) + _str(value)
    if isinstance(value, bool):
        return struct.pack("<IB", _BOOL, value)
    if isinstance(value, int):
        return struct.pack("<II", _U32, value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    if isinstance(value, list):
        return struct.pack("<IIQ", _ARRAY, _STRING, len(value)) + b"".join(_str(v) for v in value)
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return struct.pack("<IIQ", _ARRAY, 6, array.size) + array.astype("<f4").tobytes()
    return struct.pack("<IIQ", _ARRAY, _I32, array.size) + array.astype("<i4").tobytes()


def _rewrite(source: Path, target: Path, changes: dict, fill: dict[str, int] | None = None) -> Path:
    """`source` GGUF written again with metadata `changes` and tensors filled with raw 16-bit patterns."""
    gguf = read_gguf(source)
    metadata = {**gguf.metadata, **changes}
    head = b"GGUF" + struct.pack("<IQQ", 3, len(gguf.tensors), len(metadata))
    head += b"".join(_str(key) + _value(value) for key, value in metadata.items())
    data = b""
    for tensor in gguf.tensors.values():
        raw = np.array(gguf.mapped[tensor.offset : tensor.offset + tensor.nbytes])
        if fill and tensor.name in fill:
            raw.view(np.uint16)[:] = fill[tensor.name]
        head += _str(tensor.name) + struct.pack("<I", len(tensor.dims)) + struct.pack(
            f"<{len(tensor.dims)}Q", *tensor.dims) + struct.pack("<IQ", tensor.type_id, len(data))
        data += raw.tobytes() + b"\0" * (-tensor.nbytes % 32)
    head += b"\0" * (-len(head) % 32)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(head + data)
    return target


@pytest.fixture(scope="module")
def bf16_gguf(tmp_path_factory) -> Path:
    from mdist.convert import convert

    return convert(FIXTURE, tmp_path_factory.mktemp("gguf") / "out", layout="gguf").files[0]


def _one_line(result, code: int) -> str:
    """The error line (after any `mdist: ` notes, such as a tokenizer written beside a lone GGUF)."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("mdist: ") for line in lines), result.stderr
    assert lines[-1].startswith("mdist: error:") and "internal error" not in lines[-1], result.stderr
    return lines[-1]


_PAIR = np.array([1, 2])
WRONG_TYPES = {
    "general.architecture": (_PAIR, "general.architecture must be one string, not an array"),
    "tokenizer.ggml.model": (_PAIR, "tokenizer.ggml.model must be one string, not an array"),
    "tokenizer.ggml.add_space_prefix": ("false", "tokenizer.ggml.add_space_prefix must be one boolean, not 'false'"),
    "tokenizer.ggml.bos_token_id": (True, "tokenizer.ggml.bos_token_id must be one integer, not True"),
    "tokenizer.ggml.eos_token_id": (_PAIR, "tokenizer.ggml.eos_token_id must be one integer, not an array"),
}


@pytest.mark.parametrize("key", sorted(WRONG_TYPES))
@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_gguf_metadata_of_the_wrong_type_is_one_line_naming_the_key(bf16_gguf: Path, tmp_path: Path, key: str,
                                                                    with_tokenizer: bool) -> None:
    """A GGUF alone (its tokenizer rebuilt from its vocabulary) and one beside its tokenizer.model
    (which is then the vocabulary: the tokenizer kind and space prefix are not read)."""
    import shutil

    value, message = WRONG_TYPES[key]
    path = _rewrite(bf16_gguf, tmp_path / "m" / "m.gguf", {key: value})
    if with_tokenizer:
        shutil.copy(FIXTURE / "tokenizer.model", path.parent)
    result = run_mdist("run", str(path.parent), "--prompt", "hi", "--max-tokens", "2")
    if with_tokenizer and key in ("tokenizer.ggml.model", "tokenizer.ggml.add_space_prefix"):
        assert result.returncode == 0, result.stderr
        return
    line = _one_line(result, 2)
    assert line == f"mdist: error: m.gguf: {message}"
    if key == "general.architecture":
        assert _one_line(run_mdist("digest", str(path)), 2) == line


def test_gguf_typed_metadata_reads_defaults_and_ints_as_numbers(bf16_gguf: Path) -> None:
    gguf = read_gguf(bf16_gguf)
    assert gguf.scalar("general.architecture", str) == "llama"
    assert gguf.scalar("llama.block_count", float) == 6  # an integer is a number
    assert gguf.scalar("no.such.key", bool, True) is True
    with pytest.raises(InputError, match="llama.block_count must be one boolean, not 6"):
        gguf.scalar("llama.block_count", bool)


def test_an_f64_config_value_beyond_float32_is_one_line(bf16_gguf: Path) -> None:
    """llama.rope.freq_base stored as F64 1e300: narrowing it to float32 printed numpy's overflow
    warning (two lines of source) before the error."""
    from mdist.runner.gguf_weights import config_of

    gguf = read_gguf(bf16_gguf)
    gguf.metadata["llama.rope.freq_base"] = 1e300
    with _no_warnings(), pytest.raises(InputError, match="rope_theta must be a number in .*got 1e[+]300"):
        config_of(gguf)


class _no_warnings:
    """Fails when numpy (or anything) warns inside the block."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        assert not self.caught, [str(w.message) for w in self.caught]
        return False


_BF16_MAX, _BF16_INF = 0x7F7F, 0x7F80


@pytest.mark.parametrize("tensor, pattern, code", [
    ("output.weight", _BF16_MAX, 2),        # overflow in the output head: scores not finite
    ("blk.0.attn_q.weight", _BF16_MAX, 2),  # overflow in attention, then NaN through the rotary
    ("token_embd.weight", _BF16_INF, 2),    # infinity in the embedding: NaN from the first norm
    ("token_embd.weight", _BF16_MAX, 0),    # the norm's square overflows: computed as torch does, quietly
])
def test_weights_that_overflow_give_one_line_and_no_numpy_warnings(bf16_gguf: Path, tmp_path: Path, tensor: str,
                                                                   pattern: int, code: int) -> None:
    import shutil

    path = _rewrite(bf16_gguf, tmp_path / "m" / "m.gguf", {}, fill={tensor: pattern})
    shutil.copy(FIXTURE / "tokenizer.model", path.parent)
    for extra in ((), ("--temperature", "0.7", "--top-p", "0.9", "--seed", "1")):
        result = run_mdist("run", str(path.parent), "--prompt", "hi", "--max-tokens", "3", *extra)
        assert "Warning" not in result.stderr, result.stderr
        if code:
            assert "output scores are not finite" in _one_line(result, code)
        else:
            assert result.returncode == 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_weights_that_overflow_on_the_fly_are_quiet_in_the_pools_threads() -> None:
    """Past the float32 budget the rows are widened and multiplied in worker threads, where numpy's
    error state of the caller does not reach."""
    import warnings

    from mdist.runner.weights import WeightStore

    big = np.full((3 * 4096, 64), 0x7F7F, dtype=np.uint16)  # bf16 3.4e38, 1.5 MiB > SMALL_BYTES
    store = WeightStore({"w": big}, f32_budget_bytes=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = store.matmul(np.full((20, 64), 1e10, dtype=np.float32), "w")
    assert not caught, [str(w.message) for w in caught]
    assert not np.isfinite(out).any()


@pytest.mark.parametrize("option, value, message", [
    ("--temperature", "nan", "--temperature must be a finite number >= 0, got nan"),
    ("--top-p", "nan", "--top-p must be a number in (0, 1], got nan"),
    ("--seed", "-1", "--seed must be a non-negative integer, got -1"),
])
def test_sampling_options_that_pass_clicks_types_are_one_line(fixture_copy: Path, option: str, value: str,
                                                              message: str) -> None:
    result = run_mdist("run", str(fixture_copy), "--prompt", "hi", "--max-tokens", "2", "--temperature", "0.5", option, value)
    assert _one_line(result, 2) == f"mdist: error: {message}"


def test_a_tiny_temperature_samples_the_best_token() -> None:
    """--temperature 1e-320: the scores divided by it were infinities, their difference NaN."""
    from mdist.runner.sampling import Sampler

    logits = np.array([1.0, 5.0, -3.0, 5.0 - 1e-6], dtype=np.float32)
    with _no_warnings():
        assert {Sampler(1e-320, seed=seed)(logits) for seed in range(5)} == {1}
        assert Sampler(1e-320, top_p=0.5, seed=0)(logits) == 1


# -- concurrent mdist processes deriving into one folder -----------------------------------------------
def _runs_at_once(folder: Path, count: int, env: dict[str, str]) -> list[tuple[int, str]]:
    import subprocess
    import sys

    processes = [subprocess.Popen([sys.executable, "-m", "mdist", "run", str(folder), "--prompt", "hi",
                                   "--max-tokens", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=env) for _ in range(count)]
    return [(p.wait(timeout=300), p.stderr.read()) for p in processes]


@pytest.mark.parametrize("read_only", [False, True])
def test_runs_started_together_convert_once_and_all_run(fixture_copy: Path, tmp_path: Path, read_only: bool) -> None:
    """Each `run` of a raw folder converted it; the later rename replaced the file the earlier
    record described: a run failed ('did not produce a loadable model' in a read-only folder's
    cache, or the .pth read as safetensors: 'invalid safetensors header'), and the folder was left
    stale. Now one converts while the others wait, then use its conversion."""
    import os
    import shutil

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    for round_ in range(3):
        folder = tmp_path / f"m{round_}"
        shutil.copytree(fixture_copy, folder)
        if read_only:
            folder.chmod(0o555)
        try:
            results = _runs_at_once(folder, 4, env)
        finally:
            folder.chmod(0o755)
        assert all(code == 0 for code, _ in results), [err for _, err in results]
        assert sum("converting" in err for _, err in results) == 1, [err for _, err in results]
        verdict = run_mdist("verify", str(folder)).stdout.strip().splitlines()[-1]
        assert "stale" not in verdict, verdict


def test_runs_of_a_lone_gguf_started_together_write_its_tokenizer_once(bf16_gguf: Path, tmp_path: Path) -> None:
    import os
    import shutil

    for round_ in range(3):
        folder = tmp_path / f"g{round_}"
        folder.mkdir()
        shutil.copy(bf16_gguf, folder)
        results = _runs_at_once(folder, 3, dict(os.environ))
        assert all(code == 0 for code, _ in results), [err for _, err in results]
        assert sum("wrote tokenizer.model" in err for _, err in results) == 1, [err for _, err in results]


def test_the_derivation_lock_is_reentrant_and_kept_outside_the_model_folder(tmp_path: Path, monkeypatch) -> None:
    import fcntl
    import os

    from mdist.locks import _lock_file, derivation_lock

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    folder = tmp_path / "m"
    folder.mkdir()
    with derivation_lock(folder), derivation_lock(folder / "." ):
        fd = os.open(_lock_file(folder), os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, as another process would find it
        os.close(fd)
    assert list(folder.iterdir()) == []
    fd = os.open(_lock_file(folder), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    os.close(fd)


# -- what an interrupted conversion leaves ------------------------------------------------------------
@pytest.mark.parametrize("layout, output", [("mistral", "consolidated.safetensors"),
                                            ("hf", "model-00001-of-00001.safetensors"),
                                            ("gguf", "tiny-mistral-BF16.gguf")])
def test_a_conversion_reclaims_what_an_interrupted_one_left(fixture_copy: Path, tmp_path: Path, layout: str,
                                                            output: str) -> None:
    """A conversion killed mid-write (SIGKILL, power lost) leaves mdist.atomic's temporary file, as
    large as the output (14 GB for Mistral 7B): it was never removed, each attempt added one, and
    the next conversion's free-space check counted them against it. Only regular files named as
    mdist.atomic names the outputs' temporaries go; a link or another file of that form stays."""
    out = tmp_path / "out"
    out.mkdir()
    leftovers = [out / f".{output}.k2x_9q0a.partial", out / ".tokenizer.model.abcdefgh.partial"]
    for path in leftovers:
        path.write_bytes(b"\0" * 5000)
    kept = [out / ".notes.txt.abcdefgh.partial", out / f".{output}.partial", out / f".{output}.toolong99.partial"]
    for path in kept:
        path.write_bytes(b"x")
    link = out / f".{output}.zzzzzzzz.partial"
    link.symlink_to(fixture_copy / "params.json")
    result = run_mdist("convert", str(fixture_copy), "--layout", layout, "--out", str(out))
    assert result.returncode == 0, result.stderr
    removed = [p for p in leftovers if not p.exists()]
    assert removed == leftovers, sorted(os.listdir(out))
    assert f"removed {len(leftovers) * 5000 / 1e6:.1f} MB that an interrupted conversion left" in result.stderr
    assert all(p.exists() for p in kept) and link.is_symlink() and (fixture_copy / "params.json").is_file()


def test_a_killed_conversion_is_reclaimed_by_the_next(fixture_copy: Path, tmp_path: Path) -> None:
    """The real thing: `convert` killed while writing, then run again."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    for delay in (0.2, 0.4, 0.8, 1.6, 3.2):  # until the kill lands while the temporary file exists
        process = subprocess.Popen([sys.executable, "-c", _SLOW_CONVERT, str(fixture_copy), str(out)],
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline() == "writing\n"
        time.sleep(delay / 10)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        if any(name.endswith(".partial") for name in os.listdir(out)):
            break
    assert any(name.endswith(".partial") for name in os.listdir(out)), os.listdir(out)
    result = run_mdist("convert", str(fixture_copy), "--out", str(out), "--force")
    assert result.returncode == 0 and "interrupted conversion" in result.stderr, result.stderr
    assert not [name for name in os.listdir(out) if name.endswith(".partial")]


_SLOW_CONVERT = """
import sys, time
from pathlib import Path
from mdist.convert import convert
started = []
def on_bytes(n):
    if not started:
        started.append(1)
        print("writing", flush=True)
    time.sleep(0.05)
convert(Path(sys.argv[1]), Path(sys.argv[2]), on_bytes=on_bytes)
"""


# -- the derivation lock under attack: other paths to one folder, a stopped holder, planted lock files ----
_HOLD = """
import sys, time
from pathlib import Path
from mdist.locks import derivation_lock
with derivation_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(folder: Path, seconds: float, env: dict[str, str]):
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                               text=True, env=env)
    assert process.stdout.readline() == "held\n"
    return process


def _bind(source: Path, target: Path) -> bool:
    import subprocess

    target.mkdir()
    return subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True).returncode == 0


def test_one_folder_reached_by_a_bind_mount_is_one_lock(fixture_copy: Path, tmp_path: Path) -> None:
    """The lock was keyed by the folder's real path: through a bind mount (or another spelling on a
    case-insensitive file system) a second convert wrote into the folder while the first held it."""
    import subprocess
    import time

    bound = tmp_path / "bound"
    if not _bind(fixture_copy, bound):
        pytest.skip("needs mount --bind (root)")
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    try:
        holder = _holder(fixture_copy, 4, env)
        started = time.monotonic()
        result = run_mdist("convert", str(bound), env=env, timeout=120)
        holder.wait(timeout=60)
    finally:
        subprocess.run(["umount", str(bound)], check=True)
    assert result.returncode == 0, result.stderr
    assert "waiting for mdist process" in result.stderr and time.monotonic() - started > 2, result.stderr


def test_a_stopped_holder_is_said_not_waited_for_forever(fixture_copy: Path, tmp_path: Path) -> None:
    """A holder stopped by Ctrl-Z or SIGSTOP: the other process waited without end, saying only
    'waiting for another mdist process'. Now one line names it and how to resume it, exit 2."""
    import signal

    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    holder = _holder(fixture_copy, 60, env)
    try:
        os.kill(holder.pid, signal.SIGSTOP)
        result = run_mdist("convert", str(fixture_copy), env=env, timeout=60)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert result.returncode == 2, result.stderr
    waiting, error = result.stderr.splitlines()
    assert waiting.startswith(f"mdist: waiting for mdist process {holder.pid}, which is writing into")
    assert error.startswith(f"mdist: error: mdist process {holder.pid}, which is writing into")
    assert f"is stopped (Ctrl-Z or SIGSTOP): resume it (`fg`, or `kill -CONT {holder.pid}`)" in error
    assert not (fixture_copy / "consolidated.safetensors").exists()


def test_ctrl_c_while_waiting_is_one_line_and_the_holder_keeps_its_lock(fixture_copy: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    holder = _holder(fixture_copy, 60, env)
    try:
        waiter = subprocess.Popen([sys.executable, "-m", "mdist", "convert", str(fixture_copy)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert waiter.stderr.readline().startswith(f"mdist: waiting for mdist process {holder.pid}")
        waiter.send_signal(signal.SIGINT)
        assert waiter.wait(timeout=60) == 130
        assert waiter.stderr.read() == "mdist: interrupted\n"
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait(timeout=60)


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_a_planted_lock_file_is_one_line_never_a_hang(fixture_copy: Path, tmp_path: Path, kind: str) -> None:
    from mdist.locks import _lock_file

    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", env["XDG_STATE_HOME"])
        lock = _lock_file(fixture_copy)
    lock.parent.mkdir(parents=True)
    {"fifo": os.mkfifo, "folder": os.mkdir, "symlink": lambda p: os.symlink(tmp_path / "elsewhere", p)}[kind](lock)
    result = run_mdist("convert", str(fixture_copy), env=env, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("mdist: error: ") and "remove it" in result.stderr
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("value", ["", "relative-cache"])
def test_an_empty_or_relative_cache_home_is_ignored(fixture_copy: Path, tmp_path: Path, value: str) -> None:
    """XDG_CACHE_HOME='' put a read-only release's conversion in ./mdist/converted/ of wherever the
    command started (a relative value likewise): the XDG specification says to ignore both."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    home = tmp_path / "home"
    fixture_copy.chmod(0o555)
    try:
        result = run_mdist("run", str(fixture_copy), "--prompt", "hi", "--max-tokens", "1", cwd=cwd,
                           env={"XDG_CACHE_HOME": value, "HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "s")})
    finally:
        fixture_copy.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert list(cwd.iterdir()) == []
    assert (home / ".cache" / "mdist" / "converted").is_dir()


def test_the_leftovers_reclaimed_are_only_mdists_own(tmp_path: Path) -> None:
    """A hard link named like a leftover is someone's file under another name too (removing the name
    frees nothing, and the note said it did); a target whose name holds a newline (the GGUF is named
    after its folder) still has its leftover reclaimed."""
    from mdist.locks import reclaim_leftovers

    elsewhere = tmp_path / "keep.bin"
    elsewhere.write_bytes(b"k" * 100)
    linked = tmp_path / ".out.safetensors.abcdefgh.partial"
    os.link(elsewhere, linked)
    odd = tmp_path / ".a\nb-BF16.gguf.k2x_9q0a.partial"
    odd.write_bytes(b"\0" * 10)
    assert reclaim_leftovers([tmp_path / "out.safetensors", tmp_path / "a\nb-BF16.gguf"]) == 10
    assert linked.exists() and not odd.exists()


# -- archive URLs and redirects: the user's URL and every Location by one rule ---------------------------
_LOCATIONS = {
    "/bad-ipv6.tar": ("http://[::1/x", "redirects to http://[::1/x: not a usable URL (Invalid IPv6 URL); refused"),
    "/credentials.tar": ("http://user:s3cret@127.0.0.1:{port}/x.tar", "a URL with a user name or password is refused"),
    "/file.tar": ("file:///etc/passwd", "redirects to file:///etc/passwd: only http:// and https:// redirects"),
    "/data.tar": ("data:,hello", "redirects to data:,hello: only http:// and https:// redirects are followed"),
    "/loop.tar": ("/loop.tar", "redirects in a loop or more than 10 times; refused"),
    "/port.tar": ("http://127.0.0.1:99999/x.tar", "not a usable URL (Port out of range 0-65535)"),
}


@pytest.mark.parametrize("path", sorted(_LOCATIONS))
def test_every_redirect_is_held_to_the_rule_of_the_users_url(tmp_path: Path, path: str) -> None:
    """A Location urllib cannot parse was an internal error (ValueError: Invalid IPv6 URL); one with
    a password was followed (the password sent to the resolver as part of a host name, then 'cannot
    reach 127.0.0.1: Name or service not known' after five retries); file://, data:, an empty
    Location, a loop or too many hops were all 'answered HTTP 302'. Now each is one line naming it."""
    from http.server import BaseHTTPRequestHandler

    from hubmirror import serving
    from test_archive import TINY_MD5

    asked: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            asked.append(self.path)
            self.send_response(302)
            self.send_header("Location", _LOCATIONS[path][0].format(port=self.server.server_address[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    with serving(Redirect) as url:
        result = run_mdist("fetch", url + path, "--out", str(tmp_path / "out"), "--md5", TINY_MD5, "--timeout", "5",
                           env={"XDG_STATE_HOME": str(tmp_path / "state")}, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("mdist: error: http://127.0.0.1:") and _LOCATIONS[path][1] in result.stderr
    assert len(asked) <= 11


@pytest.mark.parametrize("url, problem", [("http://[::1/x.tar", "not a usable URL (Invalid IPv6 URL)"),
                                          ("http://127.0.0.1:99999/x.tar", "Port out of range"),
                                          ("http://127.0.0.1:abc/x.tar", "Port could not be cast"),
                                          ("http://127.0.0.1:0/x.tar", "not a usable URL (port 0)")])
def test_a_users_url_that_does_not_parse_is_one_line_before_any_request(tmp_path: Path, url: str,
                                                                        problem: str) -> None:
    """'http://[::1/x.tar' was an internal error; a port that is no number was retried five times
    ('cannot reach 127.0.0.1: nonnumeric port')."""
    result = run_mdist("fetch", url, "--out", str(tmp_path / "out"), "--md5", "0" * 32, "--timeout", "2",
                       env={"XDG_STATE_HOME": str(tmp_path / "state")}, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert problem in result.stderr and "internal error" not in result.stderr


# -- archive names one file system would fold, and --keep-archive's target appearing during the fetch ------
@pytest.mark.parametrize("first, second", [("x.safetensors.", "x.safetensors"), ("d /a", "d/b"), ("a\u200b", "a"),
                                           ("d\u00ad/a", "d/b")])
def test_names_windows_fat_or_hfs_fold_into_one_are_refused(first: str, second: str) -> None:
    """`a.` and `a` (trailing dots and spaces are dropped by Windows, and by Linux's vfat), `a` with
    a zero-width space or soft hyphen (ignored by HFS+): one name there, accepted as two."""
    from mdist.errors import UnsafeContentError
    from mdist.sources.archive import check_spellings

    with pytest.raises(UnsafeContentError, match="spell .* differently"):
        check_spellings([first, second], "x.tar")
    check_spellings(["a.b", "ab", "x"], "x.tar")  # different names everywhere


@pytest.mark.parametrize("path", [".mdist./complete.json", ".git /config", ".mdist\u200b/extracted.json"])
def test_a_state_folder_spelt_with_a_trailing_dot_or_space_is_refused(path: str) -> None:
    from mdist.errors import UnsafeContentError
    from mdist.sources.archive import check_spellings

    with pytest.raises(UnsafeContentError, match="tool-state folder"):
        check_spellings([path, "params.json"], "x.tar")


def test_keep_archive_never_replaces_a_file_that_appeared_during_the_fetch(tmp_path: Path) -> None:
    """--keep-archive checked OUT/NAME.tar before the download, then os.replace'd the archive over
    whatever was there once it was done (a download takes hours): a file saved there meanwhile was
    lost without a word. Now it is left, and said."""
    import subprocess
    import sys
    import time

    from test_archive import TINY, TINY_MD5, Served, serve

    out = tmp_path / "out"
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    with serve(Served({"/tiny.tar": TINY}, rate=len(TINY) / 4)) as served:
        process = subprocess.Popen([sys.executable, "-m", "mdist", "fetch", served.url + "/tiny.tar", "--out", str(out),
                                    "--md5", TINY_MD5, "--keep-archive"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 60
        while served.sent == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        (out / "tiny.tar").write_bytes(b"the user's own file")
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert (out / "tiny.tar").read_bytes() == b"the user's own file"
    assert "appeared during the fetch and is not this archive: it is left as it is" in stderr
    assert not list((out / ".mdist").rglob("*.incomplete"))
