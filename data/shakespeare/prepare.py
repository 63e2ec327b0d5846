"""TinyShakespeare with the GPT-2 BPE (tiktoken) -> train.bin, val.bin (uint16) and meta.json.
Uses input.txt beside this script, downloading it when missing."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare_common import (GPT2_PADDED_VOCAB, command_line, gpt2_encoding,  # noqa: E402
                            read_or_download, staged, write_meta, write_tokens)


def prepare(out_dir: str) -> None:
    text = read_or_download(os.path.join(out_dir, "input.txt"))
    n = int(0.9 * len(text))
    enc = gpt2_encoding()
    train_ids, val_ids = enc.encode_ordinary(text[:n]), enc.encode_ordinary(text[n:])
    with staged(out_dir) as folder:
        write_tokens(train_ids, os.path.join(folder, "train.bin"))
        write_tokens(val_ids, os.path.join(folder, "val.bin"))
        write_meta(folder, tokenizer="gpt2", vocab_size=GPT2_PADDED_VOCAB)
    print(f"train {len(train_ids):,} tokens, val {len(val_ids):,} tokens")


if __name__ == "__main__":
    command_line(__doc__)
    prepare(os.path.dirname(os.path.abspath(__file__)))
