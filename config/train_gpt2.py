# GPT-2 (124M) on OpenWebText, nanoGPT's recipe: ~0.5M tokens per step (12 * 1024 * 40), 600K steps.
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
out_dir = "out-owt"
dataset = "openwebtext"
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8
n_layer = 12
n_head = 12
n_embd = 768
max_iters = 600000
lr_decay_iters = 600000
eval_interval = 1000
eval_iters = 200
log_interval = 10
weight_decay = 1e-1
compile = True
