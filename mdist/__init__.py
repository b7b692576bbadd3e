"""mdist: fetch, verify, convert and smoke-test open-weight language models you can trust."""

__version__ = "0.1.0"
