"""The running interpreter's standard library (its .py files, tests included, site-packages not),
one token per character -> train.bin, val.bin (uint16) and meta.json. Nothing to download:
every Python user has this corpus (31.5 MB on Python 3.11), enough for tens of thousands of
CPU-recipe steps that never see a character twice, unlike TinyShakespeare's 1M.

- Order: files sorted by their path relative to the library root (POSIX separators), each
  preceded by a header line "# ==== <path> ====" so that file boundaries are visible.
- Split: every 10th file of that order (the 10th, 20th, ...) goes to val, the rest to train.
  Whole files, so no val text is seen in training (the split never cuts a file); a sample across
  the whole sorted tree, so val holds modules and tests of every package (the last 10% of the
  text would be xml, zipfile and zoneinfo only).
- Text: each file's bytes decoded as UTF-8, every invalid byte sequence replaced by U+FFFD (a
  handful of test files are deliberately Latin-1 or KOI8-R), line endings kept as they are.
- Characters, not GPT-2 BPE: with 50k tokens the embedding and lm_head would dominate a 128-wide
  CPU model. The vocabulary is the sorted distinct characters (a few hundred).
meta.json also records the Python version, the number of files and of characters: the corpus
differs between Python versions.
"""

import os
import sys
import sysconfig

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare_common import (check_characters, command_line, fail, staged,  # noqa: E402
                            write_meta, write_tokens)

SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__"}  # installed packages, bytecode


def source_files(source_dir: str) -> list:
    """The .py files under source_dir as sorted relative POSIX paths."""
    paths = []
    for root, dirs, files in os.walk(source_dir):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files:
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(root, name), source_dir)
                paths.append(path.replace(os.sep, "/"))
    return sorted(paths)


def prepare(out_dir: str, source_dir: str) -> None:
    paths = source_files(source_dir)
    if not paths:
        fail(f"no .py files under {source_dir}: is it a Python standard library?")
    texts = {"train": [], "val": []}
    for i, path in enumerate(paths):
        try:
            with open(os.path.join(source_dir, path), "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
        except OSError as e:
            fail(f"cannot read {e.filename} ({e.strerror}): make it readable")
        texts["val" if i % 10 == 9 else "train"].append(f"# ==== {path} ====\n{text}")
    # characters as code points (the corpus is ~30M characters: numpy, not Python lists)
    codes = {split: np.frombuffer("".join(parts).encode("utf-32-le"), dtype=np.uint32)
             for split, parts in texts.items()}
    present = np.zeros(sys.maxunicode + 1, dtype=bool)
    for c in codes.values():
        present[c] = True
    vocab = np.flatnonzero(present)  # the distinct code points, sorted
    check_characters(len(vocab), source_dir)
    token_of = np.zeros(sys.maxunicode + 1, dtype=np.uint16)
    token_of[vocab] = np.arange(len(vocab))
    chars = [chr(c) for c in vocab]
    n_train, n_val = len(codes["train"]), len(codes["val"])
    with staged(out_dir) as folder:
        for split, c in codes.items():
            write_tokens(token_of[c], os.path.join(folder, f"{split}.bin"))
        write_meta(folder, tokenizer="char", vocab_size=len(chars), chars=chars,
                   python_version=sys.version, files=len(paths), characters=n_train + n_val)
    print(f"Python {sys.version.split()[0]} standard library: {len(paths):,} files, "
          f"{n_train + n_val:,} characters, vocab {len(chars)}: train {n_train:,} tokens "
          f"({len(texts['train']):,} files), val {n_val:,} tokens ({len(texts['val']):,} files)")


if __name__ == "__main__":
    command_line(__doc__)
    prepare(os.path.dirname(os.path.abspath(__file__)), sysconfig.get_paths()["stdlib"])
