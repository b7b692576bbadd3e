"""The user's base folders ($XDG_STATE_HOME, $XDG_CACHE_HOME), as the XDG specification reads them.

An empty or relative value is ignored (the specification says so): a relative one would put mdist's
state or cache in whatever folder a command happens to start in (`XDG_CACHE_HOME= mdist run` wrote a
read-only release's conversion into ./mdist/converted/), and two processes started in different
folders would not see each other's lock.
"""

from __future__ import annotations

import os
from pathlib import Path

_DEFAULTS = {"XDG_STATE_HOME": (".local", "state"), "XDG_CACHE_HOME": (".cache",)}


def user_dir(variable: str) -> Path:
    """$variable when it is an absolute path, else its default under the home folder."""
    value = os.environ.get(variable, "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home().joinpath(*_DEFAULTS[variable])
