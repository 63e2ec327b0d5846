"""TinyShakespeare, one token per character -> train.bin, val.bin (uint16) and meta.json.
Uses input.txt beside this script, downloading it when missing."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare_common import (check_characters, command_line, read_or_download,  # noqa: E402
                            staged, write_meta, write_tokens)


def prepare(out_dir: str) -> None:
    source = os.path.join(out_dir, "input.txt")
    text = read_or_download(source)
    chars = sorted(set(text))
    check_characters(len(chars), source)
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = [stoi[ch] for ch in text]
    n = int(0.9 * len(ids))
    with staged(out_dir) as folder:
        write_tokens(ids[:n], os.path.join(folder, "train.bin"))
        write_tokens(ids[n:], os.path.join(folder, "val.bin"))
        write_meta(folder, tokenizer="char", vocab_size=len(chars), chars=chars)
    print(f"{len(text):,} characters, vocab {len(chars)}: train {n:,} tokens, "
          f"val {len(ids) - n:,} tokens")


if __name__ == "__main__":
    command_line(__doc__)
    prepare(os.path.dirname(os.path.abspath(__file__)))
