"""
Settings the nanoGPT way, for train.py, sample.py, bench.py and the experiments: a dataclass's
defaults, then config files of Python assignments, then --key=value, in the order given, each
value converted by the field's annotation; the dataclass's __post_init__ checks them. Every
mistake a user can make is one line, "error: ...", naming the fix (fail), and so is Ctrl-C
where nothing was written (interrupts_in_one_line).
"""

import ast
import dataclasses
import json
import math
import os
import signal
import traceback
import types
import typing

FLOAT_WORDS = ("inf", "+inf", "-inf", "infinity", "nan")  # what float() takes beyond literals


def fail(message: str):
    """The one line of a mistake a user made; under torchrun, printed by rank 0 alone (each
    process finds the same mistake)."""
    raise SystemExit(f"error: {message}" if os.environ.get("RANK", "0") == "0" else 1)


def interrupts_in_one_line() -> dict:
    """SIGINT (Ctrl-C) and SIGTERM end the process with fail's one line from now on, not with a
    KeyboardInterrupt's traceback (or silently), where nothing was written yet: a script's start
    (train.py and sample.py call it before they import torch, which takes seconds), sample.py's
    generation. The handlers it replaced, {signum: handler}. This module imports no torch."""
    def interrupted(signum, frame):
        fail(f"interrupted by {signal.Signals(signum).name}: nothing was written")
    return {signum: signal.signal(signum, interrupted)
            for signum in (signal.SIGINT, signal.SIGTERM)}


def parse_value(text: str):
    """A --key=value's value: a Python literal, or else the text (--device=cpu)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def read_config_file(path: str) -> dict:
    """The assignments of a config file (Python; imports and _private names are its own), or one
    line naming what is wrong with it."""
    if not os.path.isfile(path):
        fail(f"config file {path} " + ("is a directory: give a .py file of assignments"
                                       if os.path.isdir(path) else "not found"))
    kind = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}.get(
        os.path.splitext(path)[1].lower())
    if kind:
        fail(f"config file {path} is {kind}: train.py reads Python assignments such as "
             f"n_layer = 4, as the files in config/")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except UnicodeDecodeError:
        fail(f"config file {path} is not UTF-8 text: save it as UTF-8")
    except OSError as e:
        fail(f"cannot read config file {path} ({e.strerror})")
    namespace = {}
    try:
        exec(compile(source, path, "exec"), {}, namespace)
    except SyntaxError as e:
        fail(f"config file {path}, line {e.lineno}: {e.msg}")
    except (Exception, SystemExit) as e:  # the line of the file that raised, not of its callees
        lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
                 if frame.filename == path]
        fail(f"config file {path}, line {lines[-1]}: {type(e).__name__}: {e}: a config file "
             f"assigns settings, it does not stop the run")
    settings = {key: value for key, value in namespace.items()
                if not key.startswith("_") and not isinstance(value, types.ModuleType)}
    if not settings:
        try:
            json.loads(source)
            found = "JSON"
        except ValueError:
            found = "no assignment"
        fail(f"config file {path} assigns no setting (found {found}): write Python assignments "
             f"such as n_layer = 4, as the files in config/")
    return settings


def typed(key: str, value, hint):
    """value as the setting's annotated type (int, float, bool, str, or Optional of one), or one
    line: bool is never a number, an int where a float is expected becomes one, a float is
    finite (inf and nan are read as numbers, to be refused), an int fits in 64 bits (torch's)."""
    args = typing.get_args(hint)  # Optional[X] is Union[X, None]
    kind, optional = (args[0], True) if type(None) in args else (hint, False)
    if value is None:
        if optional:
            return None
        fail(f"--{key}=None: expected {kind.__name__}")
    if kind is float and type(value) is int:
        value = float(value)
    if kind is float and isinstance(value, str) and value.strip().lower() in FLOAT_WORDS:
        value = float(value)
    if type(value) is not kind:
        fail(f"--{key}={value!r} has type {type(value).__name__}, expected {kind.__name__}")
    if kind is float and not math.isfinite(value):
        fail(f"--{key}={value!r}: must be a finite number")
    if kind is int and not -2 ** 63 <= value < 2 ** 63:
        fail(f"--{key}={value}: beyond a 64-bit integer, which torch takes")
    return value


def settings_of(cls) -> dict:
    """The settings of a config dataclass and their defaults, in the order of its fields."""
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.name not in getattr(cls, "FIXED", ())}


def configure(cls, argv: list, usage: str = ""):
    """cls (a config dataclass) from its defaults, updated by config files and --key=value
    arguments in the order given, each value typed by its field's annotation and checked by
    cls's __post_init__; and the set of keys the files and arguments set. -h or --help: the
    settings and their defaults, listed."""
    defaults = settings_of(cls)
    if "-h" in argv or "--help" in argv:
        print(usage.strip() + "\n\nsettings (--key=value) and their defaults:")
        for key, value in defaults.items():
            print(f"  --{key}={value!r}" if isinstance(value, str) else f"  --{key}={value}")
        raise SystemExit(0)
    hints = typing.get_type_hints(cls)
    values, given = dict(defaults), set()
    for arg in argv:
        if not arg.startswith("--"):
            updates = read_config_file(arg)
        else:
            key, sep, text = arg[2:].partition("=")
            if not sep:
                fail(f"{arg}: write --{key}=VALUE")
            updates = {key: parse_value(text)}
        for key, value in updates.items():
            if key not in values:
                fail(f"unknown setting {key!r} (from {arg}); --help lists the settings")
            values[key] = typed(key, value, hints[key])
            given.add(key)
    return make(cls, **values), given


def make(cls, **values):
    """cls(**values), its checks' ValueError as one line."""
    try:
        return cls(**values)
    except ValueError as e:
        fail(str(e))
