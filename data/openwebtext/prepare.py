"""OpenWebText with the GPT-2 BPE -> train.bin (~9B tokens, ~17GB), val.bin and meta.json.
Needs the optional `datasets` package (pip install datasets) and ~60GB of disk for its cache."""

import argparse
import os
import sys
from multiprocessing import Pool
from typing import Iterable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare_common import GPT2_PADDED_VOCAB, fail, gpt2_encoding, staged, write_meta  # noqa: E402

ENCODING = gpt2_encoding()


def encode_document(text: str) -> np.ndarray:
    """GPT-2 token ids of one document, followed by the end-of-text token that separates
    documents."""
    ids = ENCODING.encode_ordinary(text)
    ids.append(ENCODING.eot_token)
    return np.array(ids, dtype=np.uint16)


def tokenize_and_write(texts: Iterable[str], path: str, num_proc: int,
                       shard_tokens: int = 1 << 24) -> int:
    """Tokenise `texts` in `num_proc` processes, keeping their order, and write them to `path` as
    uint16, one shard of about `shard_tokens` tokens at a time so that memory stays bounded.
    Returns the number of tokens written."""
    total, shard, shard_len = 0, [], 0
    with Pool(num_proc) as pool, open(path, "wb") as f:
        for ids in pool.imap(encode_document, texts, chunksize=256):
            shard.append(ids)
            shard_len += len(ids)
            if shard_len >= shard_tokens:
                f.write(np.concatenate(shard).tobytes())
                total, shard, shard_len = total + shard_len, [], 0
        if shard:
            f.write(np.concatenate(shard).tobytes())
            total += shard_len
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args(argv)
    if args.num_proc < 1:
        fail(f"--num_proc={args.num_proc}: use 1 or more processes")
    try:
        from datasets import load_dataset
    except ImportError:
        fail("this script needs the `datasets` package: pip install datasets")
    out_dir = os.path.dirname(os.path.abspath(__file__))
    try:
        dataset = load_dataset("openwebtext", num_proc=args.num_proc)
    except OSError as e:  # no network, no disk space for its cache
        fail(f"could not load openwebtext ({str(e).strip().splitlines()[0]}): check the network "
             f"and the disk space of the datasets cache, then run this script again")
    # OpenWebText has only a train split: hold out 0.05% of the documents for validation.
    split = dataset["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    with staged(out_dir) as folder:  # train.bin, val.bin and meta.json together, or none
        for name, part in (("train", split["train"]), ("val", split["test"])):
            n = tokenize_and_write((doc["text"] for doc in part),
                                   os.path.join(folder, f"{name}.bin"), args.num_proc)
            print(f"{name}: {len(part):,} documents, {n:,} tokens")
        write_meta(folder, tokenizer="gpt2", vocab_size=GPT2_PADDED_VOCAB)


if __name__ == "__main__":
    main()
