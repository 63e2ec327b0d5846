"""Helpers shared by the prepare scripts: fetch the text, write uint16 token files and meta.json."""

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from contextlib import contextmanager

import numpy as np
import tiktoken

# The scripts run as `python data/<dataset>/prepare.py`, with data/ on sys.path: the repository's
# root too, for configurator's fail, the one that every script's errors go through.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import fail  # noqa: E402

# GPT-2's 50257 tokens padded up to a multiple of 64 for faster matmuls; ids >= 50257 never occur.
GPT2_PADDED_VOCAB = 50304
SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")


def read_or_download(path: str, url: str = SHAKESPEARE_URL) -> str:
    """The text at `path`, downloading it from `url` first when the file is missing."""
    if not os.path.lexists(path):
        print(f"downloading {url} -> {path}")
        try:
            with urllib.request.urlopen(url) as response:
                data = response.read()
        except OSError as e:
            fail(f"could not download {url} ({e}): download it by other means and put it at "
                 f"{path}, then run this script again")
        with staged(os.path.dirname(path)) as folder:
            with open(os.path.join(folder, os.path.basename(path)), "wb") as f:
                f.write(data)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        fail(f"{path} is not UTF-8 text: save it as UTF-8 (or delete it to download "
             f"TinyShakespeare again)")
    except IsADirectoryError:
        fail(f"{path} is a directory: put the text to train on there as a file")
    except OSError as e:
        fail(f"cannot read {path} ({e.strerror}): put the text to train on there")
    if not text:
        fail(f"{path} is empty: put the text to train on there")
    return text


def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 BPE, which it downloads on first use."""
    try:
        return tiktoken.get_encoding("gpt2")
    except OSError as e:
        fail(f"cannot get tiktoken's GPT-2 BPE ({type(e).__name__}): connect to the network "
             f"once, or set TIKTOKEN_CACHE_DIR to a folder holding its files")


@contextmanager
def staged(out_dir: str):
    """A new folder inside out_dir to write files in; when the block ends, they replace their
    namesakes in out_dir together. A prepare that fails or is interrupted leaves out_dir's files
    as they were, never a half-written train.bin, val.bin or meta.json that looks whole; an
    unwritable out_dir or a full disk is one line."""
    try:
        folder = tempfile.mkdtemp(prefix=".prepare-", dir=out_dir or ".")
    except OSError as e:
        fail(f"cannot write in {os.path.abspath(out_dir)} ({e.strerror}): make it writable")
    try:
        yield folder
        names = sorted(os.listdir(folder))
        for name in names:
            if os.path.isdir(os.path.join(out_dir, name)):
                fail(f"{os.path.join(out_dir, name)} is a directory: move it away, then run this "
                     f"script again")
        for name in names:
            os.replace(os.path.join(folder, name), os.path.join(out_dir, name))
    except OSError as e:
        fail(f"cannot write {e.filename or out_dir} ({e.strerror}): free some disk space or make "
             f"{os.path.abspath(out_dir)} writable, then run this script again")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def command_line(description: str) -> None:
    """A prepare script's command line: --help prints what it does; it takes no arguments (an
    argument given is one line, before anything is written)."""
    parser = argparse.ArgumentParser(description=description)
    parser.error = lambda message: fail(f"{message}: this script takes no arguments (see --help)")
    parser.parse_args()


def check_characters(n_chars: int, source: str) -> None:
    """One line naming the text, when it has more distinct characters than uint16 ids can hold."""
    if n_chars > 2**16:
        fail(f"{n_chars:,} distinct characters in {source}: more than uint16 token ids can hold "
             f"(65,536); use a text with fewer")


def write_tokens(ids, path: str) -> None:
    """ids as uint16 at path (check_characters keeps them in range); none is one line naming the
    file."""
    ids = np.asarray(ids)
    if ids.size == 0:
        fail(f"{os.path.basename(path)} would hold no tokens: the text is too short to split "
             f"into train and val; give it more text")
    ids.astype(np.uint16).tofile(path)


def write_meta(out_dir: str, **meta) -> None:
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f)
