"""
Sample from a model trained by train.py:

    python sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=3
    python sample.py --out_dir=out-shakespeare-char-cpu --start=FILE:prompt.txt --temperature=0
    python sample.py --init_from=gpt2-xl --start="What is the answer?"   # pip install transformers

--temperature=0 decodes greedily: each new token is the most likely one (top_k plays no part).

The samples are generated together as one batch. For MoT this matters: the model mixes examples
in groups of group_size, at each position, exactly as in training, so the samples of one group
influence each other. When num_samples is not a multiple of group_size, the last group is filled
with companions: windows of the training text the checkpoint was trained on, fed to the model
token by token and not printed, so that every group is like a training batch. Without that data
(or with --no-companions) the group is filled with zero rows, a group unlike any in training.
"""

import configurator  # imports no torch: Ctrl-C is one line from here on, generating included

if __name__ == "__main__":  # imported (tests, visualize.py), the importer's handlers stay
    configurator.interrupts_in_one_line()

import argparse
import os
from typing import Callable, Optional, Tuple

import numpy as np
import tiktoken
import torch

import convert
import dataset
from configurator import fail
from convert import GPT2_NAMES
from devices import autocast, default_device, device_problem, native_dtype, unusable_gpu
from mot import GPT


def load_tokenizer(meta: dict, source: str) -> Tuple[Callable[[str], list],
                                                   Callable[[list], str]]:
    """encode and decode for the tokenizer named in a dataset's meta.json, as `source` (a
    checkpoint) holds it; a meta.json that cannot decode every id of its vocab_size fails."""
    tokenizer = meta.get("tokenizer") if isinstance(meta, dict) else None
    if tokenizer == "gpt2":
        try:
            enc = tiktoken.get_encoding("gpt2")
        except OSError as e:  # tiktoken downloads GPT-2's files on first use
            fail(f"cannot get tiktoken's GPT-2 BPE ({type(e).__name__}): connect to the network "
                 f"once, or set TIKTOKEN_CACHE_DIR to a folder holding its files")
        return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"}),
                # ids of the padded vocabulary beyond GPT-2's decode to nothing
                lambda ids: enc.decode([i for i in ids if i < enc.n_vocab]))
    chars = meta.get("chars") if tokenizer == "char" else None
    retrain = "prepare its dataset again (data/<dataset>/prepare.py) and train on it"
    if tokenizer != "char":
        fail(f"{source}: its meta.json has tokenizer {tokenizer!r}, not 'char' or 'gpt2': "
             f"{retrain}")
    if not (isinstance(chars, list) and all(isinstance(ch, str) and len(ch) == 1
                                            for ch in chars)):
        fail(f"{source}: its meta.json (tokenizer 'char') has no list of chars to decode with: "
             f"{retrain}")
    if len(chars) != meta.get("vocab_size"):
        fail(f"{source}: its meta.json has vocab_size={meta.get('vocab_size')} but {len(chars)} "
             f"chars, one per token id: {retrain}")
    stoi = {ch: i for i, ch in enumerate(chars)}

    def encode(s: str) -> list:
        unknown = sorted(set(s) - stoi.keys())
        if unknown:
            fail(f"the prompt has characters outside the model's vocabulary: {unknown!r}; "
                 f"remove them")
        return [stoi[ch] for ch in s]

    return encode, lambda ids: "".join(chars[i] for i in ids)


def companions(model: GPT, config: Optional[dict], source: str, num_samples: int, length: int,
               generator: torch.Generator) -> Optional[torch.Tensor]:
    """Windows (K, length) of the training text of the run whose settings are `config` (from
    the checkpoint `source`) that make num_samples whole MoT groups; None when they are not
    needed (dense, MoE, whole groups) or the data is missing."""
    group_size = max(block.ffn.group_size for block in model.transformer.h)
    count = -num_samples % group_size
    if count == 0:
        return None
    if config is None:
        fail(f"{source} lacks config (its run's settings, which name the training text that "
             f"fills the MoT group of {group_size}): sample with --no-companions")
    path = os.path.join(config["data_root"], config["dataset"], "train.bin")
    if not os.path.isfile(path) or os.path.getsize(path) // 2 <= length:
        print(f"note: no training text at {path} to fill the MoT group of {group_size}: padding "
              f"with {count} zero rows instead, which changes the samples")
        return None
    damaged = "prepare that dataset again, or use --no-companions"
    if os.path.getsize(path) % 2:
        fail(f"{path} has {os.path.getsize(path)} bytes, not whole uint16 tokens: {damaged}")
    data = np.memmap(path, dtype=np.uint16, mode="r")
    windows = dataset.get_batch(data, count, length, generator)[0]  # the inputs; no targets here
    if int(windows.max()) >= model.config.vocab_size:
        fail(f"{path} holds token id {int(windows.max())}, but the model's vocab_size is "
             f"{model.config.vocab_size}: not the data it trained on; {damaged}")
    return windows


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init_from", default="resume",
                        help=f"resume: the run in --out_dir; {', '.join(GPT2_NAMES)} "
                             f"or a directory saved by transformers: GPT-2's weights")
    parser.add_argument("--out_dir", default="out", help="directory holding ckpt.pt")
    parser.add_argument("--start", default="\n",
                        help="prompt text, or FILE:path to read it from a file")
    parser.add_argument("--num_samples", type=int, default=10)
    parser.add_argument("--max_new_tokens", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="< 1 sharper, > 1 more random, 0 greedy (always the most likely)")
    parser.add_argument("--top_k", type=int, default=200,
                        help="keep only the top_k most likely tokens (>= 1)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda where torch can "
                                          "use a GPU, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: the device's native dtype (bfloat16 on GPUs that compute "
                             "in it, float16 on older ones, float32 on a CPU)")
    parser.add_argument("--companions", action=argparse.BooleanOptionalAction, default=True,
                        help="MoT: fill a partial group with training text (else zero rows)")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args(argv)
    rules = [("num_samples", args.num_samples >= 1, "must be >= 1"),
             ("max_new_tokens", args.max_new_tokens >= 0, "must be >= 0"),
             ("temperature", args.temperature >= 0, "use 0 for greedy decoding or > 0"),
             ("top_k", args.top_k >= 1, "keep at least 1 token"),
             ("seed", 0 <= args.seed < 2 ** 63, "must be in [0, 2**63), as train.py's")]
    for name, holds, rule in rules:
        if not holds:
            fail(f"--{name}={getattr(args, name)}: {rule}")
    if args.device is None:  # a GPU that this torch cannot use stops it: no CPU run unasked
        problem = unusable_gpu()
        if problem:
            fail(problem)
        args.device = default_device()
    problem = device_problem(args.device)
    if problem:
        fail(f"--device={args.device}: {problem}")
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    if args.init_from == "resume" and os.path.isfile(os.path.join(args.out_dir, "config.json")):
        fail(f"--out_dir={args.out_dir} holds a GPT-2 saved by transformers, not a run of "
             f"train.py: sample it with --init_from={args.out_dir}")
    if args.init_from != "resume" and os.path.isfile(os.path.join(args.init_from, "ckpt.pt")):
        fail(f"--init_from={args.init_from} is a run of train.py: sample it with "
             f"--out_dir={args.init_from}")
    if args.init_from not in ("resume",) + GPT2_NAMES and not os.path.isfile(
            os.path.join(args.init_from, "config.json")):
        fail(f"--init_from={args.init_from}: use resume (the run in --out_dir), "
             f"{', '.join(GPT2_NAMES)} or a directory saved by transformers (with config.json)")
    start = args.start
    if start.startswith("FILE:"):
        try:
            with open(start[5:], encoding="utf-8") as f:
                start = f.read()
        except UnicodeDecodeError:
            fail(f"--start={args.start}: the file is not UTF-8 text; save it as UTF-8")
        except OSError as e:
            fail(f"--start={args.start}: cannot read the file ({e.strerror})")
    dtype = args.dtype or native_dtype(args.device)

    try:
        if args.init_from == "resume":
            model, checkpoint = convert.from_checkpoint(ckpt_path, args.device)
            # kept: the tokenizer and the run's settings; the optimizer's state, still on the
            # disk, is let go with the rest
            meta, config = checkpoint["meta"], checkpoint.get("config")
            del checkpoint
        else:  # GPT-2: dense, so no MoT group to fill with training text
            model = convert.from_pretrained(args.init_from).to(args.device)
            meta, config = dict(tokenizer="gpt2"), None
    except (ImportError, OSError, ValueError) as e:
        fail(str(e).strip().splitlines()[0])
    encode, decode = load_tokenizer(meta, ckpt_path)

    ids = encode(start)
    if not ids:
        fail("--start is empty: give at least one token of prompt")
    x = torch.tensor(ids, dtype=torch.long, device=args.device).repeat(args.num_samples, 1)
    generator = torch.Generator().manual_seed(args.seed)
    fill = (companions(model, config, ckpt_path, args.num_samples,
                       len(ids) + args.max_new_tokens, generator) if args.companions else None)
    torch.manual_seed(args.seed)  # the samples' stream, whatever loading the model drew
    with autocast(args.device, dtype):
        y = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           companions=fill)
    for row in y.tolist():
        print(decode(row))
        print("---------------")


if __name__ == "__main__":
    main()
