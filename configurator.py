"""
Settings the nanoGPT way, for train.py, sample.py, bench.py and the experiments: a dataclass's
defaults, then config files of Python assignments, then --key=value, in the order given, each
value converted by the field's annotation; the dataclass's __post_init__ checks them. Every
mistake a user can make is one line, "error: ...", naming the fix (fail).
"""


def fail(message: str):
    raise SystemExit(f"error: {message}")
