# nanoGPT's GPU recipe: a 6-layer, 384-wide character-level GPT on TinyShakespeare (~5 minutes
# on an A100).
# Dense: python train.py config/train_shakespeare_char.py
# MoT:   python train.py config/train_shakespeare_char.py config/train_shakespeare_char_mot.py
# MoE:   python train.py config/train_shakespeare_char.py config/train_shakespeare_char_moe.py
out_dir = "out-shakespeare-char"
eval_interval = 250
eval_iters = 200
log_interval = 10
dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
compile = True
