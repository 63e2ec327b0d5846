"""Helpers shared by the prepare scripts: fetch the text, write uint16 token files and meta.json."""

import json
import os
import urllib.request

import numpy as np

# GPT-2's 50257 tokens padded up to a multiple of 64 for faster matmuls; ids >= 50257 never occur.
GPT2_PADDED_VOCAB = 50304
SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")


def read_or_download(path: str, url: str = SHAKESPEARE_URL) -> str:
    """The text at `path`, downloading it from `url` first when the file is missing."""
    if not os.path.exists(path):
        print(f"downloading {url} -> {path}")
        try:
            urllib.request.urlretrieve(url, path + ".tmp")
        except OSError as e:
            raise SystemExit(f"error: could not download {url} ({e}).\n"
                             f"Download it by other means and put it at {path}, "
                             f"then run this script again.")
        os.replace(path + ".tmp", path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text:
        raise SystemExit(f"error: {path} is empty: put the text to train on there")
    return text


def write_tokens(ids, path: str) -> None:
    ids = np.asarray(ids)
    assert ids.max(initial=0) < 2**16, "token ids must fit in uint16"
    ids.astype(np.uint16).tofile(path)


def write_meta(out_dir: str, **meta) -> None:
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f)
