"""
Train a GPT whose FFN is dense, Mixture of Tokens or MoE. nanoGPT's conventions:

    python train.py                                              # defaults below
    python train.py config/train_shakespeare_char_cpu.py config/train_shakespeare_char_cpu_mot.py
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py config/train_gpt2_mot.py

Settings: the defaults in DEFAULTS, then each config/*.py file given (plain assignments), then
--key=value overrides, in order. Every eval appends a JSON line to out_dir/log.jsonl and saves
out_dir/ckpt.pt; --init_from=resume continues from it exactly (same batches, same dropout).
"""

import ast
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import numpy as np
import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from mot import GPT, GPTConfig, MixtureOfExperts, MixtureOfTokens

CUDA = torch.cuda.is_available()
DEFAULTS = dict(
    # I/O
    out_dir="out", eval_interval=250, log_interval=10, eval_iters=200, eval_only=False,
    always_save_checkpoint=True,
    # "scratch" | "resume" | the out_dir of a MoT run, converted by --transition
    init_from="scratch",
    # with init_from=<dir>: "discrete" | "token_choice" (GPT.to_sparse), with a fresh optimizer
    transition=None,
    # data: data_root/dataset/{train,val}.bin and meta.json
    data_root=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"),
    dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=64,
    # model: every GPTConfig field (block_size, n_layer, ..., ffn, n_experts, group_size, ...) but
    # vocab_size, which comes from the dataset's meta.json
    **{f.name: f.default for f in fields(GPTConfig) if f.name != "vocab_size"},
    # AdamW and the learning-rate schedule (cosine with linear warmup)
    learning_rate=6e-4, max_iters=5000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0,
    decay_lr=True, warmup_iters=100, lr_decay_iters=5000, min_lr=6e-5,
    # MoT temperature annealing: τ goes geometrically from `temperature` at iter 0 to
    # `temperature_final` at lr_decay_iters (None: no annealing)
    temperature_final=None,
    # system
    device="cuda" if CUDA else "cpu",
    dtype=("bfloat16" if CUDA and torch.cuda.is_bf16_supported() else "float16" if CUDA
           else "float32"),
    compile=False, seed=1337,
)


def fail(message: str):
    raise SystemExit(f"error: {message}")


def parse_value(key: str, text: str, default):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string such as --device=cpu
    return check_type(key, value, default)


def check_type(key: str, value, default):
    if default is None or value is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        fail(f"--{key}={value!r} has type {type(value).__name__}, "
             f"expected {type(default).__name__}")
    return value


def configure(argv: list) -> dict:
    """DEFAULTS, updated by config files and --key=value arguments, in the order given."""
    config = dict(DEFAULTS)
    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.exists(arg):
                fail(f"config file {arg} not found")
            settings = {}
            exec(open(arg).read(), {}, settings)
            updates = {k: v for k, v in settings.items() if not k.startswith("_")}
        else:
            key, sep, text = arg[2:].partition("=")
            if not sep:
                fail(f"{arg}: write --{key}=VALUE")
            updates = {key: text}
        for key, value in updates.items():
            if key not in config:
                fail(f"unknown setting {key!r} (from {arg}); see DEFAULTS in train.py for the "
                     f"valid keys")
            default = DEFAULTS[key]
            config[key] = (parse_value(key, value, default) if arg.startswith("--")
                           else check_type(key, value, default))
    return config


def load_checkpoint(path: str, device: str):
    """GPT.from_checkpoint, with its error as one line."""
    try:
        return GPT.from_checkpoint(path, device)
    except ValueError as e:
        fail(str(e))


def save_checkpoint(checkpoint: dict, path: str) -> None:
    """Write atomically: an interrupted save leaves the previous checkpoint intact."""
    torch.save(checkpoint, path + ".tmp")
    os.replace(path + ".tmp", path)


def rng_state(data_rng: torch.Generator) -> dict:
    """The random streams training draws from: dropout (torch, cuda) and the batches (data)."""
    return dict(torch=torch.get_rng_state(), data=data_rng.get_state(),
                cuda=torch.cuda.get_rng_state_all() if CUDA else [])


def set_rng_state(state: dict, data_rng: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    data_rng.set_state(state["data"].cpu())
    if CUDA and state["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def load_data(data_root: str, dataset: str, block_size: int):
    """The train and val token arrays (memory-mapped) and meta.json written by
    data/<dataset>/prepare.py."""
    data_dir = os.path.join(data_root, dataset)
    prepare = f"python data/{dataset}/prepare.py"
    splits = {}
    for split in ("train", "val"):
        path = os.path.join(data_dir, f"{split}.bin")
        if not os.path.exists(path):
            fail(f"{path} not found: run `{prepare}` first")
        splits[split] = np.memmap(path, dtype=np.uint16, mode="r")
        if len(splits[split]) <= block_size:
            fail(f"{path} holds {len(splits[split])} tokens, fewer than "
                 f"block_size+1={block_size + 1}")
    meta_path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(meta_path):
        fail(f"{meta_path} not found: run `{prepare}` first")
    with open(meta_path) as f:
        return splits, json.load(f)


def batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator,
          device: str):
    """batch_size random windows of data: inputs x and next-token targets y, each
    (batch_size, block_size)."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    if "cuda" in device:
        return (x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True))
    return x.to(device), y.to(device)


def eval_batches(data: np.ndarray, c: dict):
    """The eval_iters batches of every evaluation: the same windows each time, apart from
    training's."""
    generator = torch.Generator().manual_seed(c["seed"] + 1)
    for _ in range(c["eval_iters"]):
        yield batch(data, c["batch_size"], c["block_size"], generator, c["device"])


def get_lr(it: int, c: dict) -> float:
    if not c["decay_lr"]:
        return c["learning_rate"]
    if it < c["warmup_iters"]:
        return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
    if it > c["lr_decay_iters"]:
        return c["min_lr"]
    ratio = (it - c["warmup_iters"]) / (c["lr_decay_iters"] - c["warmup_iters"])
    coefficient = 0.5 * (1.0 + math.cos(math.pi * ratio))  # from 1 down to 0
    return c["min_lr"] + coefficient * (c["learning_rate"] - c["min_lr"])


def get_temperature(it: int, c: dict) -> float:
    progress = min(it, c["lr_decay_iters"]) / c["lr_decay_iters"]
    return c["temperature"] * (c["temperature_final"] / c["temperature"]) ** progress


def setup_distributed(c: dict):
    """(rank, world_size) of this process; under torchrun also joins the process group and splits
    the gradient-accumulation steps between the processes."""
    if int(os.environ.get("RANK", -1)) == -1:  # not launched by torchrun
        return 0, 1
    init_process_group(backend="nccl")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    c["device"] = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    torch.cuda.set_device(c["device"])
    if c["gradient_accumulation_steps"] % world_size:
        fail(f"gradient_accumulation_steps={c['gradient_accumulation_steps']} must be a multiple "
             f"of the number of processes ({world_size})")
    c["gradient_accumulation_steps"] //= world_size
    return rank, world_size


def build_model(c: dict, meta: dict, ckpt_path: str):
    """The GPT to train, and the checkpoint it resumes from (None for a new run)."""
    if c["init_from"] == "resume":  # the architecture comes from the checkpoint
        model, checkpoint = load_checkpoint(ckpt_path, c["device"])
        return model.train(), checkpoint
    if c["init_from"] == "scratch":
        model_args = {f.name: c[f.name] for f in fields(GPTConfig) if f.name != "vocab_size"}
        try:
            return GPT(GPTConfig(**model_args, vocab_size=meta["vocab_size"])), None
        except ValueError as e:
            fail(str(e))
    # transition tuning: a new run from a MoT checkpoint converted to run without mixing
    source = os.path.join(c["init_from"], "ckpt.pt")
    if c["transition"] is None:
        fail(f"--init_from={c['init_from']!r} starts from that run's checkpoint: add "
             f"--transition=discrete or --transition=token_choice (or use 'scratch' or 'resume')")
    try:
        return load_checkpoint(source, c["device"])[0].to_sparse(c["transition"]).train(), None
    except ValueError as e:
        fail(f"{source}: {e}")


def main(argv: list) -> None:
    c = configure(argv)
    rank, world_size = setup_distributed(c)
    ddp, master = world_size > 1, rank == 0
    device_type = "cuda" if "cuda" in c["device"] else "cpu"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if c["dtype"] not in dtypes:
        fail(f"--dtype={c['dtype']!r}: choose float32, bfloat16 or float16")
    ptdtype = dtypes[c["dtype"]]
    autocast = (nullcontext() if ptdtype == torch.float32
                else torch.amp.autocast(device_type, dtype=ptdtype))
    torch.manual_seed(c["seed"] + rank)
    data_rng = torch.Generator().manual_seed(c["seed"] + rank)  # training batches only
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # data, model, optimizer
    splits, meta = load_data(c["data_root"], c["dataset"], c["block_size"])
    os.makedirs(c["out_dir"], exist_ok=True)
    ckpt_path = os.path.join(c["out_dir"], "ckpt.pt")
    log_path = os.path.join(c["out_dir"], "log.jsonl")
    model, checkpoint = build_model(c, meta, ckpt_path)
    config = model.config
    mot_layers = model.ffns(MixtureOfTokens)
    moe_layers = model.ffns(MixtureOfExperts)
    for layer in mot_layers:
        if c["batch_size"] % layer.group_size:
            fail(f"batch_size={c['batch_size']} (the micro-batch of one step) must be a multiple "
                 f"of group_size={layer.group_size}: MoT mixes groups of group_size examples; "
                 f"change either")
    if c["temperature_final"] is not None and (not mot_layers or config.learnable_temperature):
        fail("temperature_final anneals a fixed MoT temperature: use it with a MoT model and "
             "learnable_temperature=False")
    model.to(c["device"])
    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == torch.float16))
    optimizer = model.configure_optimizers(c["weight_decay"], c["learning_rate"],
                                           (c["beta1"], c["beta2"]), device_type)
    iter_num, best_val_loss, elapsed_s = 0, float("inf"), 0.0
    if checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"], data_rng)
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
        elapsed_s = checkpoint["elapsed_s"]
    elif master:
        open(log_path, "w").close()  # a new run starts a new log
    checkpoint = None  # free memory
    raw_model = model
    if c["compile"]:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[torch.device(c["device"]).index])
    if master:
        print(f"{config.ffn} GPT: {raw_model.get_num_params() / 1e6:.2f}M parameters, "
              f"{raw_model.get_num_active_params() / 1e6:.2f}M active per token, "
              f"{raw_model.flops_per_token() / 1e6:.1f} MFLOPs per token (fwd+bwd)")

    @torch.no_grad()
    def evaluate() -> dict:
        """Mean LM loss (MoE aux loss excluded) over eval_iters batches, the same batches every
        time; also MoT's merge-weight entropy (normalised to [0, 1]) per layer on the val
        batches."""
        model.eval()
        result = {}
        for split in ("train", "val"):
            losses = torch.zeros(c["eval_iters"])
            entropies = torch.zeros(c["eval_iters"], len(mot_layers))
            for k, (X, Y) in enumerate(eval_batches(splits[split], c)):
                with autocast:
                    _, loss = model(X, Y)
                losses[k] = loss.item()
                entropies[k] = torch.tensor([m.merge_entropy() for m in mot_layers])
            result[f"{split}_loss"] = losses.mean().item()
        if mot_layers:
            result["merge_entropy"] = entropies.mean(0).tolist()
        model.train()
        return result

    def save() -> None:
        save_checkpoint(dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
                             scaler=scaler.state_dict(), model_args=asdict(config),
                             iter_num=iter_num, best_val_loss=best_val_loss, elapsed_s=elapsed_s,
                             config=c, meta=meta, rng=rng_state(data_rng)), ckpt_path)

    # the training loop: evaluate, log and checkpoint every eval_interval and at the end (not
    # again at the iteration a resumed run starts from), then one optimizer step
    tokens_per_iter = (c["gradient_accumulation_steps"] * world_size * c["batch_size"]
                       * c["block_size"])
    resumed_at = iter_num if c["init_from"] == "resume" else None
    tokens_since_eval, time_since_eval, running_mfu = 0, 0.0, -1.0
    while True:
        lr = get_lr(iter_num, c)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if c["temperature_final"] is not None:
            for layer in mot_layers:
                layer.log_temperature.fill_(math.log(get_temperature(iter_num, c)))
        evaluation_due = iter_num % c["eval_interval"] == 0 or iter_num == c["max_iters"]
        if evaluation_due and master and (iter_num != resumed_at or c["eval_only"]):
            losses = evaluate()
            print(f"step {iter_num}: train loss {losses['train_loss']:.4f}, "
                  f"val loss {losses['val_loss']:.4f}")
            record = dict(iter=iter_num, **losses, lr=lr, elapsed_s=elapsed_s,
                          tokens_per_s=tokens_since_eval / time_since_eval if time_since_eval
                          else None,
                          aux_loss=raw_model.aux_loss.item() if moe_layers else None,
                          temperature=[m.temperature.item() for m in mot_layers] or None)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            tokens_since_eval, time_since_eval = 0, 0.0
            improved = losses["val_loss"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val_loss"])
            if (improved or c["always_save_checkpoint"]) and not c["eval_only"] and iter_num > 0:
                save()
        if c["eval_only"] or iter_num >= c["max_iters"]:
            break

        t0 = time.time()
        for micro_step in range(c["gradient_accumulation_steps"]):
            if ddp:  # synchronise gradients only on the last micro-step
                last = micro_step == c["gradient_accumulation_steps"] - 1
                model.require_backward_grad_sync = last
            X, Y = batch(splits["train"], c["batch_size"], c["block_size"], data_rng, c["device"])
            with autocast:
                _, lm_loss = model(X, Y)
                loss = (lm_loss + raw_model.aux_loss) / c["gradient_accumulation_steps"]
            scaler.scale(loss).backward()
        if c["grad_clip"] != 0.0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        lm_loss_value = lm_loss.item()  # of the last micro-step; .item() waits for the GPU
        dt = time.time() - t0
        elapsed_s += dt
        tokens_since_eval += tokens_per_iter
        time_since_eval += dt
        if iter_num % c["log_interval"] == 0 and master:
            mfu = raw_model.estimate_mfu(c["batch_size"] * c["gradient_accumulation_steps"], dt)
            running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
            print(f"iter {iter_num}: loss {lm_loss_value:.4f}, time {dt * 1000:.1f}ms, "
                  f"{tokens_per_iter / dt:,.0f} tokens/s, mfu {running_mfu * 100:.2f}%")
        iter_num += 1
    if ddp:
        destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
