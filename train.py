"""
Train a GPT whose FFN is dense, Mixture of Tokens or MoE, the nanoGPT way:

    python train.py                                              # the defaults below
    python train.py config/train_shakespeare_char_cpu.py config/train_shakespeare_char_cpu_mot.py
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py config/train_gpt2_mot.py

Settings: TrainConfig's defaults, then each config file given (Python assignments), then
--key=value, in order (configurator.py); --help lists them. Read on top to bottom: the settings,
the data, the schedules, the model, then main: the device (and DDP), data, model, optimizer and
the training loop. Every eval appends a line to out_dir/log.jsonl and saves out_dir/ckpt.pt;
--init_from=resume continues exactly. The run bookkeeping (one run per out_dir, checkpoints and
exact resume, the log, Ctrl-C and SIGTERM, divergence, timing) is in bookkeeping.py.
"""

import configurator  # imports no torch: Ctrl-C is one line from here on, the imports included

if __name__ == "__main__":  # imported (tests, the study), the importer's handlers stay
    configurator.interrupts_in_one_line()

import importlib.util
import math
import os
import sys
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import bookkeeping
import checkpoints
import convert
import dataset
from configurator import fail
from devices import (autocast, bf16_is_native, default_device, device_problem, native_dtype,
                     unusable_gpu)
from mot import FFNS, GPT, GPTConfig, MixtureOfTokens


@dataclass
class TrainConfig(GPTConfig):
    """train.py's settings: the model's are GPTConfig's fields (a field added there is a setting
    here), with train.py's own below. Every setting is checked here, when the config is made."""
    FIXED: ClassVar = ("vocab_size",)  # not a setting: the dataset's meta.json gives it
    # I/O: every eval_interval steps, an evaluation of eval_iters batches, a log.jsonl line and a
    # checkpoint (always, or only when val loss improves)
    out_dir: str = "out"
    eval_interval: int = 250
    log_interval: int = 10
    eval_iters: int = 200
    eval_only: bool = False
    always_save_checkpoint: bool = True
    # "scratch" | "resume" | the out_dir of a run (its weights and data, with a new optimizer
    # and schedule: finetuned as they are, or converted by transition or upcycle) | "gpt2",
    # "gpt2-medium", "gpt2-large", "gpt2-xl" or a directory saved by transformers: GPT-2's weights
    init_from: str = "scratch"
    transition: Optional[str] = None  # with init_from=<a MoT run>: "discrete" | "token_choice"
    upcycle: Optional[str] = None  # with init_from=<a dense run> or GPT-2: "mot" | "moe" | ...
    overwrite: bool = False  # a new run into an out_dir that holds a run deletes it
    # data: data_root/dataset/{train,val}.bin and meta.json, written by data/<dataset>/prepare.py
    data_root: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    dataset: str = "shakespeare_char"
    gradient_accumulation_steps: int = 1
    batch_size: int = 64
    # AdamW and the learning rate: linear warmup, then cosine decay to min_lr at lr_decay_iters
    learning_rate: float = 6e-4
    max_iters: int = 5000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0: no clipping
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int = 5000
    min_lr: float = 6e-5
    # MoT's τ from `temperature` at iter 0 to temperature_final at lr_decay_iters, geometrically
    temperature_final: Optional[float] = None
    # system: dtype "auto" is the device's native one (devices.native_dtype): bfloat16 on GPUs
    # that compute in it, float16 (with a GradScaler) on older ones, float32 on a CPU
    device: str = default_device()
    dtype: str = "auto"
    compile: bool = False
    seed: int = 1337
    # Weights & Biases (pip install wandb): each log.jsonl line is also logged there
    wandb_log: bool = False
    wandb_project: str = "mot"
    wandb_run_name: str = "mot"

    def __post_init__(self):
        super().__post_init__()
        # ~ as a shell expands it; data_root absolute, as saved: a resume from elsewhere finds it
        self.out_dir = os.path.expanduser(self.out_dir)
        self.data_root = os.path.abspath(os.path.expanduser(self.data_root))
        world_size = int(os.environ.get("WORLD_SIZE", 1))  # the processes torchrun starts

        def require(ok, key, why):
            if not ok:
                raise ValueError(f"{key}={getattr(self, key)!r}: {why}")
        problem = device_problem(self.device)
        require(problem is None, "device", problem)
        for key in ("batch_size", "eval_interval", "log_interval"):
            require(getattr(self, key) >= 1, key, "must be >= 1")
        require(self.gradient_accumulation_steps >= 1
                and self.gradient_accumulation_steps % world_size == 0,
                "gradient_accumulation_steps",
                f"must be a positive multiple of the number of processes ({world_size}): each "
                f"process runs gradient_accumulation_steps/{world_size} micro-steps")
        require(self.eval_iters >= 1, "eval_iters",
                "must be >= 1: an evaluation averages that many batches")
        for key in ("max_iters", "learning_rate", "min_lr", "warmup_iters", "weight_decay"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(not self.decay_lr or self.min_lr <= self.learning_rate, "min_lr",
                f"must be <= learning_rate={self.learning_rate}: the decay would raise the rate")
        require(not self.decay_lr or self.lr_decay_iters > self.warmup_iters, "lr_decay_iters",
                f"must be > warmup_iters={self.warmup_iters} (the cosine decay runs from "
                f"warmup_iters to lr_decay_iters), or set decay_lr=False")
        require(self.temperature_final is None or self.temperature_final > 0, "temperature_final",
                "must be > 0 (τ is annealed geometrically), or None for no annealing")
        require(self.temperature_final is None or self.lr_decay_iters >= 1, "lr_decay_iters",
                "must be >= 1: temperature_final is reached at lr_decay_iters")
        for key in ("beta1", "beta2"):
            require(0 <= getattr(self, key) < 1, key, "must be in [0, 1)")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0: no clipping)")
        require(0 <= self.seed < 2 ** 63 - world_size, "seed",
                "must be in [0, 2**63 - processes): each process seeds with seed + rank")
        require(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype",
                "must be one of auto, float32, bfloat16, float16")
        device = torch.device(self.device)
        require(not (self.compile and device.type == "cuda" and self.dtype == "bfloat16"
                     and not bf16_is_native(device)), "dtype",
                "bfloat16 is emulated on this GPU (compute capability before 8.0), and "
                "torch.compile fails on it: use --dtype=float16 (its native dtype, with a "
                "GradScaler) or --compile=False")
        require(self.transition in (None, "discrete", "token_choice"), "transition",
                "must be 'discrete' or 'token_choice'")
        require(self.transition is None or self.init_from != "scratch", "transition",
                "converts a MoT run: give that run's out_dir as --init_from=DIR")
        upcyclable = [key for key, ffn in FFNS.items() if ffn.upcyclable]
        require(self.upcycle is None or self.upcycle in upcyclable, "upcycle",
                f"must be one of {', '.join(map(repr, upcyclable))}")
        require(self.upcycle is None or self.init_from != "scratch", "upcycle",
                "grows a dense model: give its out_dir, or gpt2, as --init_from")
        require(self.upcycle is None or self.transition is None, "upcycle",
                "and transition both convert the source: give one")
        require(not self.wandb_log or importlib.util.find_spec("wandb") is not None, "wandb_log",
                "needs the wandb package: pip install wandb")

    def native_dtype(self) -> str:
        """The dtype the run computes in: dtype, or for "auto" the device's native one."""
        return native_dtype(self.device) if self.dtype == "auto" else self.dtype


# ----------------------------------------------------------------------------- schedules


def get_lr(it: int, c: TrainConfig) -> float:
    if not c.decay_lr:
        return c.learning_rate
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if it > c.lr_decay_iters:
        return c.min_lr
    ratio = (it - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
    coefficient = 0.5 * (1.0 + math.cos(math.pi * ratio))  # from 1 down to 0
    return c.min_lr + coefficient * (c.learning_rate - c.min_lr)


def get_temperature(it: int, c: TrainConfig) -> float:
    progress = min(it, c.lr_decay_iters) / c.lr_decay_iters
    return c.temperature * (c.temperature_final / c.temperature) ** progress


# ----------------------------------------------------------------------------- model


def build_model(config: TrainConfig, source, meta: dict) -> GPT:
    """The model the run trains: new from scratch; or `source` (checkpoints.load_start's)
    resumed or finetuned as it is, converted (transition) or grown (upcycle)."""
    try:
        if config.init_from == "scratch":
            return GPT(GPTConfig(**{k: getattr(config, k) for k in checkpoints.MODEL_FIELDS},
                                 vocab_size=meta["vocab_size"]))
        if config.init_from != "resume" and config.transition:  # transition tuning
            return convert.to_sparse(source, config.transition)
        if config.init_from != "resume" and config.upcycle:  # the dense FFNs grown into experts
            return convert.upcycle(source, config.upcycle, **{
                k: getattr(config, k) for k in checkpoints.NEW_LAYER_FIELDS})
    except ValueError as e:
        fail(f"{config.init_from}: {e}" if config.init_from != "scratch" else str(e))
    return source


def optimizer_step(model, optimizer, scaler, grad_clip: float) -> None:
    """The update of the accumulated gradients, clipped to norm grad_clip (0: not clipped)."""
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    # set_to_none frees the gradients between steps; reusing them was no faster on a MoT step
    # (RESULTS.md, the training step)
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(model, splits: dict, config: TrainConfig, autocast, iter_num: int) -> dict:
    """Mean LM loss (aux losses excluded) over eval_iters batches, the same batches every time;
    the layers' aux loss (MoE's load balancing) measured as the train loss is, on the train
    batches (None for a model without one); MoT's merge-weight entropy (normalised to [0, 1]) per
    layer on the val batches. Prints the losses; draws no random numbers."""
    model.eval()
    mot_layers = model.ffns(MixtureOfTokens)
    result, aux_losses = {}, torch.zeros(config.eval_iters)
    for split in ("train", "val"):
        losses = torch.zeros(config.eval_iters)
        entropies = torch.zeros(config.eval_iters, len(mot_layers))
        for k, (X, Y) in enumerate(dataset.eval_batches(splits[split], config)):
            with autocast:
                _, loss = model(X, Y)
            losses[k] = loss.item()
            if split == "train":
                aux_losses[k] = model.aux_loss.item()
            entropies[k] = torch.tensor([m.merge_entropy() for m in mot_layers])
        result[f"{split}_loss"] = losses.mean().item()
    has_aux_loss = any(block.ffn.aux_loss is not None for block in model.transformer.h)
    result["aux_loss"] = aux_losses.mean().item() if has_aux_loss else None
    if mot_layers:
        result["merge_entropy"] = entropies.mean(0).tolist()
    model.train()
    print(f"step {iter_num}: train loss {result['train_loss']:.4f}, "
          f"val loss {result['val_loss']:.4f}")
    return result


# ----------------------------------------------------------------------------- main


@bookkeeping.guard
def main(argv: list) -> None:
    # the settings, the run it starts from, and every check: nothing is written before them
    config, given = configurator.configure(TrainConfig, argv, __doc__)
    if "device" not in given and unusable_gpu():  # no CPU run unasked beside a GPU
        fail(unusable_gpu())
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ddp, master = world_size > 1, rank == 0
    out = bookkeeping.OutDir(config, hold=master and not config.eval_only)
    config, source, checkpoint, changes = checkpoints.load_start(config, given, out, world_size)

    # the device: under torchrun one process per GPU (or CPU), their gradients averaged by DDP
    device_type = torch.device(config.device).type
    device = f"cuda:{os.environ['LOCAL_RANK']}" if ddp and device_type == "cuda" else config.device
    if ddp:  # NCCL between GPUs, gloo between CPUs
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(torch.device(device).index or 0)  # "cuda" below means this one
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = config.native_dtype()
    context = autocast(device, dtype)
    torch.manual_seed(config.seed + rank)
    data_rng = torch.Generator().manual_seed(config.seed + rank)  # training batches only

    # data and model
    splits, meta = dataset.load(config.data_root, config.dataset, config.block_size)
    checkpoints.check_data(config, checkpoint, meta)
    raw_model = build_model(config, source, meta)  # model: its compiled or DDP wrapper
    config = bookkeeping.check_model(config, raw_model)  # the model's config, saved with it
    raw_model.train().to(device)
    mot_layers = raw_model.ffns(MixtureOfTokens)

    # optimizer: AdamW, a GradScaler for float16 (its steps that overflow are skipped)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
    optimizer = raw_model.configure_optimizers(config.weight_decay, config.learning_rate,
                                               (config.beta1, config.beta2), device_type)
    batches = dataset.TrainBatches(splits["train"], config, data_rng, device)
    # the model to train (compiled if asked, in DDP under torchrun) and the one to evaluate:
    # rank 0 evaluates alone, so never through DDP, whose forward waits for the other processes
    model = eval_model = torch.compile(raw_model) if config.compile else raw_model
    if ddp:
        model = DDP(model, device_ids=[torch.device(device).index]
                    if device_type == "cuda" else None)
    # a resumed run's optimizer and random streams restored, the run's first write; its clock
    run = bookkeeping.Run(config, out, raw_model, optimizer, scaler, meta, batches, changes,
                          checkpoint, device)
    iter_num = run.iter_num
    source = checkpoint = None  # free memory
    if config.eval_only and master:  # evaluate the model as it is and write nothing
        evaluate(eval_model, splits, config, context, iter_num)

    # the loop: evaluate, log and save every eval_interval and at the end (not again what the
    # resumed checkpoint holds), then one optimizer step; after it, a stop signal saves and stops
    accumulation_steps = config.gradient_accumulation_steps // world_size  # per process
    X, Y = batches.next()
    while not config.eval_only:
        lr = get_lr(iter_num, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if config.temperature_final is not None:  # MoT's τ annealed
            for layer in mot_layers:
                layer.log_temperature.fill_(math.log(get_temperature(iter_num, config)))
        evaluate_now = ((iter_num % config.eval_interval == 0 or iter_num == config.max_iters)
                        and iter_num != run.resumed_at)
        if evaluate_now:  # every process takes part (evaluation draws no random numbers)
            run.pause_clock()
        if evaluate_now and master:
            losses = evaluate(eval_model, splits, config, context, iter_num)
            run.record_evaluation(iter_num, losses, lr)  # the log line, then the checkpoint
        if iter_num >= config.max_iters:
            break
        if evaluate_now:
            run.restart_clock()  # the evaluation's seconds are not training's

        for micro_step in range(accumulation_steps):
            if ddp:  # synchronise gradients only on the last micro-step
                model.require_backward_grad_sync = micro_step == accumulation_steps - 1
            with context:
                lm_loss = model(X, Y)[1]  # not the logits: they would stay through backward
                loss = (lm_loss + raw_model.aux_loss) / accumulation_steps
            X, Y = batches.next()  # drawn and copied while the GPU runs the forward
            scaler.scale(loss).backward()
        optimizer_step(model, optimizer, scaler, config.grad_clip)
        run.step_done(iter_num, lm_loss)  # timed; at log steps printed, divergence stopped
        iter_num += 1
        if run.stop_requested(iter_num):  # Ctrl-C or SIGTERM: every process takes part
            run.save_and_stop(iter_num)  # the checkpoint resumes exactly
            break
    del model, eval_model  # under DDP the wrapper holds the process group, which finish frees
    run.finish(iter_num)


if __name__ == "__main__":
    main(sys.argv[1:])
