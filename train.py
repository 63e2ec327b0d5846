"""
Train a GPT whose FFN is dense, Mixture of Tokens or MoE, the nanoGPT way:

    python train.py                                              # the defaults below
    python train.py config/train_shakespeare_char_cpu.py config/train_shakespeare_char_cpu_mot.py
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py config/train_gpt2_mot.py

Settings: DEFAULTS, then each config file given (Python assignments), then --key=value, in order;
--help lists them. Read on top to bottom: the settings, the data, the schedules, the model, then
main: the device (and DDP), data, model, optimizer and the training loop. Every eval appends a
line to out_dir/log.jsonl and saves out_dir/ckpt.pt; --init_from=resume continues exactly. The run
bookkeeping (settings checked before anything is written, one run per out_dir, checkpoints and
exact resume, the log, Ctrl-C and SIGTERM, divergence) is in bookkeeping.py.
"""

import math
import os
import sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import bookkeeping
import convert
import dataset
from configurator import fail
from mot import GPT, GPTConfig, MixtureOfTokens

DEFAULTS = dict(
    # I/O: every eval_interval steps, an evaluation of eval_iters batches, a log.jsonl line and a
    # checkpoint (always, or only when val loss improves)
    out_dir="out", eval_interval=250, log_interval=10, eval_iters=200, eval_only=False,
    always_save_checkpoint=True,
    # "scratch" | "resume" | the out_dir of a run (its weights and data, with a new optimizer
    # and schedule: finetuned as they are, or converted by transition or upcycle) | "gpt2",
    # "gpt2-medium", "gpt2-large", "gpt2-xl" or a directory saved by transformers: GPT-2's weights
    init_from="scratch",
    transition=None,  # with init_from=<a MoT run>: "discrete" | "token_choice" (convert.to_sparse)
    upcycle=None,  # with init_from=<a dense run> or GPT-2: "mot" | "moe" | ... (convert.upcycle)
    overwrite=False,  # a new run into an out_dir that holds a run deletes it (without: an error)
    # data: data_root/dataset/{train,val}.bin and meta.json, written by data/<dataset>/prepare.py
    data_root=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"),
    dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=64,
    # model: every field of mot.GPTConfig but vocab_size (from meta.json), at its default
    block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0, bias=False, activation="relu",
    expert_bias=False, ffn="dense", n_dense_layers=0, n_experts=32, group_size=32,
    expert_size=None, temperature=1.0, learnable_temperature=False, mot_routing="continuous",
    controller_init_std=None, moe_top_k=1, moe_routing="token_choice", capacity_factor=None,
    aux_loss_coef=0.01,
    # AdamW and the learning rate: linear warmup, then cosine decay to min_lr at lr_decay_iters
    learning_rate=6e-4, max_iters=5000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0,
    decay_lr=True, warmup_iters=100, lr_decay_iters=5000, min_lr=6e-5,
    # MoT's τ from `temperature` at iter 0 to temperature_final at lr_decay_iters, geometrically
    temperature_final=None,
    # system: dtype "auto" is the device's native one (devices.native_dtype): bfloat16 on GPUs
    # that compute in it, float16 (with a GradScaler) on older ones, float32 on a CPU
    device="cuda" if torch.cuda.is_available() else "cpu", dtype="auto", compile=False,
    seed=1337,
    # Weights & Biases (pip install wandb): each log.jsonl line is also logged there
    wandb_log=False, wandb_project="mot", wandb_run_name="mot",
)


# ----------------------------------------------------------------------------- data


class TrainBatches:
    """A process's training batches, each drawn a step ahead of its use, so that on a GPU its copy
    overlaps the compute. `state` is the data stream as it was before the batch drawn ahead: a
    run resumed from it draws that batch again, as an uninterrupted run uses it."""

    def __init__(self, data: np.ndarray, c: dict, generator: torch.Generator, device: str):
        self.data, self.c, self.generator, self.device = data, c, generator, device
        self.state = generator.get_state()

    def next(self):
        self.state = self.generator.get_state()
        return dataset.get_batch(self.data, self.c["batch_size"], self.c["block_size"],
                                 self.generator, self.device)


def eval_batches(data: np.ndarray, c: dict):
    """The eval_iters batches of every evaluation: the same windows each time, apart from
    training's."""
    generator = torch.Generator().manual_seed(c["seed"] + 1)
    for _ in range(c["eval_iters"]):
        yield dataset.get_batch(data, c["batch_size"], c["block_size"], generator, c["device"])


# ----------------------------------------------------------------------------- schedules


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


# ----------------------------------------------------------------------------- model


def build_model(settings: dict, source, meta: dict) -> GPT:
    """The model the run trains: new from scratch; or `source` (bookkeeping.load_start's)
    resumed or finetuned as it is, converted (transition) or grown (upcycle). The settings then
    hold the model's config, which the checkpoints save."""
    if settings["init_from"] == "scratch":
        try:
            model = GPT(GPTConfig(**{k: settings[k] for k in bookkeeping.MODEL_FIELDS},
                                  vocab_size=meta["vocab_size"]))
        except ValueError as e:
            fail(str(e))
    elif settings["init_from"] != "resume" and (settings["transition"] or settings["upcycle"]):
        try:  # transition tuning: the MoT converted to run unmixed; or the dense FFNs grown
            model = (convert.to_sparse(source, settings["transition"]) if settings["transition"]
                     else convert.upcycle(source, settings["upcycle"],
                                          **{k: settings[k] for k in bookkeeping.NEW_LAYER_FIELDS}))
        except ValueError as e:
            fail(f"{settings['init_from']}: {e}")
    else:
        model = source
    settings.update({k: v for k, v in vars(model.config).items() if k in settings})
    return model


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
def evaluate(model, splits: dict, settings: dict, autocast, iter_num: int) -> dict:
    """Mean LM loss (aux losses excluded) over eval_iters batches, the same batches every time;
    the layers' aux loss (MoE's load balancing) measured as the train loss is, on the train
    batches (None for a model without one); MoT's merge-weight entropy (normalised to [0, 1]) per
    layer on the val batches. Prints the losses; draws no random numbers."""
    model.eval()
    mot_layers = model.ffns(MixtureOfTokens)
    result, aux_losses = {}, torch.zeros(settings["eval_iters"])
    for split in ("train", "val"):
        losses = torch.zeros(settings["eval_iters"])
        entropies = torch.zeros(settings["eval_iters"], len(mot_layers))
        for k, (X, Y) in enumerate(eval_batches(splits[split], settings)):
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
    settings, given = bookkeeping.configure(argv, DEFAULTS, __doc__)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ddp, master = world_size > 1, rank == 0
    out = bookkeeping.OutDir(settings["out_dir"], hold=master and not settings["eval_only"])
    source, checkpoint, changes = bookkeeping.load_start(settings, given, out, world_size,
                                                         DEFAULTS["device"])
    bookkeeping.validate(settings, world_size, out)

    # the device: under torchrun one process per GPU (or CPU), their gradients averaged by DDP
    device_type = torch.device(settings["device"]).type
    device = (f"cuda:{os.environ['LOCAL_RANK']}" if ddp and device_type == "cuda"
              else settings["device"])
    if ddp:  # NCCL between GPUs, gloo between CPUs
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(torch.device(device).index or 0)  # "cuda" below means this one
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ptdtype = bookkeeping.DTYPES[settings["dtype"]]
    autocast = (nullcontext() if ptdtype == torch.float32
                else torch.amp.autocast(device_type, dtype=ptdtype))
    torch.manual_seed(settings["seed"] + rank)
    data_rng = torch.Generator().manual_seed(settings["seed"] + rank)  # training batches only

    # data and model
    splits, meta = dataset.load(settings["data_root"], settings["dataset"],
                                settings["block_size"])
    bookkeeping.check_data(settings, checkpoint, meta)
    raw_model = build_model(settings, source, meta)  # model: its compiled or DDP wrapper
    bookkeeping.check_model(settings, raw_model)
    raw_model.train().to(device)
    mot_layers = raw_model.ffns(MixtureOfTokens)

    # optimizer: AdamW, a GradScaler for float16 (its steps that overflow are skipped)
    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == torch.float16))
    optimizer = raw_model.configure_optimizers(settings["weight_decay"],
                                               settings["learning_rate"],
                                               (settings["beta1"], settings["beta2"]), device_type)
    iter_num, best_val_loss, elapsed_s, resumed_at = (
        bookkeeping.resume(checkpoint, rank, optimizer, scaler, data_rng, device)
        if settings["init_from"] == "resume" else (0, float("inf"), 0.0, None))
    checkpoints = bookkeeping.Checkpoints(out.ckpt_path, raw_model, optimizer, scaler, settings,
                                          meta, iter_num if resumed_at is not None else None)
    source = checkpoint = None  # free memory
    accumulation_steps = settings["gradient_accumulation_steps"] // world_size  # per process
    log, received = bookkeeping.start_writing(settings, master, out, resumed_at, changes,
                                              raw_model, accumulation_steps, device)
    if master:
        bookkeeping.print_summary(raw_model, changes, iter_num)
    # the model to train (compiled if asked, in DDP under torchrun) and the one to evaluate:
    # rank 0 evaluates alone, so never through DDP, whose forward waits for the other processes
    model = eval_model = torch.compile(raw_model) if settings["compile"] else raw_model
    if ddp:
        model = DDP(model, device_ids=[torch.device(device).index]
                    if device_type == "cuda" else None)
    if settings["eval_only"] and master:  # evaluate the model as it is and write nothing
        evaluate(eval_model, splits, settings, autocast, iter_num)

    # the loop: evaluate, log and save every eval_interval and at the end (not again what the
    # resumed checkpoint holds), then one optimizer step; after it, a stop signal saves and stops.
    # elapsed_s counts the steps' seconds, without evaluations and this process's first step.
    stop, first_iter = 0, iter_num
    batches = TrainBatches(splits["train"], settings, data_rng, device)
    X, Y = batches.next()
    clock = bookkeeping.Clock(device_type)
    while not settings["eval_only"]:
        lr = get_lr(iter_num, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if settings["temperature_final"] is not None:  # MoT's τ annealed
            for layer in mot_layers:
                layer.log_temperature.fill_(math.log(get_temperature(iter_num, settings)))
        evaluate_now = ((iter_num % settings["eval_interval"] == 0
                         or iter_num == settings["max_iters"]) and iter_num != resumed_at)
        if evaluate_now:  # every process takes part (evaluation draws no random numbers)
            elapsed_s += log.count(*clock.read())
            rng_states = bookkeeping.gather_rng_states(batches, world_size)
        if evaluate_now and master:
            losses = evaluate(eval_model, splits, settings, autocast, iter_num)
            log.write(iter_num, losses, lr, elapsed_s)
            checkpoints.check_losses(losses, iter_num)
            improved = losses["val_loss"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val_loss"])
            if (improved or settings["always_save_checkpoint"]) and iter_num > 0:
                checkpoints.save(iter_num, best_val_loss, elapsed_s, rng_states)
        if iter_num >= settings["max_iters"]:
            break
        if evaluate_now:
            clock.read()  # the evaluation's seconds are not training's

        for micro_step in range(accumulation_steps):
            if ddp:  # synchronise gradients only on the last micro-step
                model.require_backward_grad_sync = micro_step == accumulation_steps - 1
            with autocast:
                lm_loss = model(X, Y)[1]  # not the logits: they would stay through backward
                loss = (lm_loss + raw_model.aux_loss) / accumulation_steps
            X, Y = batches.next()  # drawn and copied while the GPU runs the forward
            scaler.scale(loss).backward()
        optimizer_step(model, optimizer, scaler, settings["grad_clip"])
        clock.tick()
        log_now = iter_num % settings["log_interval"] == 0
        if iter_num == first_iter:  # compilation, first allocations: timed apart
            log.warm_up(*clock.read())
        elif log_now:  # on a GPU the clock waits for the steps, as the loss read below would
            elapsed_s += log.count(*clock.read())
        if log_now and master:  # the last micro-step's loss
            if not math.isfinite(log.print_step(iter_num, lm_loss)):
                checkpoints.diverged("the train loss", iter_num)
        iter_num += 1
        stop = bookkeeping.stop_signal(received, ddp, device,
                                       iter_num % settings["log_interval"] == 0)
        if stop:  # every process takes part; the checkpoint resumes exactly
            elapsed_s += log.count(*clock.read())
            rng_states = bookkeeping.gather_rng_states(batches, world_size)
            if master:
                checkpoints.save(iter_num, best_val_loss, elapsed_s, rng_states, evaluated=False)
            break
    del model, eval_model  # under DDP the wrapper holds the process group, which finish frees
    bookkeeping.finish(log, ddp, stop, master, out.ckpt_path, iter_num)


if __name__ == "__main__":
    main(sys.argv[1:])
