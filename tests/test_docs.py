"""The README's promises: its test command is what CI runs, and its examples name real options."""

from __future__ import annotations

import re
import shlex

from conftest import REPO, run_mdist

README = (REPO / "README.md").read_text()


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def test_readme_test_command_is_what_ci_runs() -> None:
    blocks = sh_blocks()
    demo, tests = blocks[0].strip(), blocks[1].strip()
    assert demo.endswith("mdist demo") and "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_every_documented_option_exists() -> None:
    for block in sh_blocks()[2:]:
        for line in block.strip().splitlines():
            words = shlex.split(line.split("#")[0])
            while words and "=" in words[0]:
                words.pop(0)
            assert words[0] == "mdist", line
            command = words[1]
            help_text = run_mdist(command, "--help").stdout
            for word in words[2:]:
                if word.startswith("--"):
                    assert word in help_text, (command, word)
