# A character-level GPT on TinyShakespeare that trains in minutes on a laptop CPU (2 cores).
# Dense: python train.py config/train_shakespeare_char_cpu.py
# MoT:   python train.py config/train_shakespeare_char_cpu.py config/train_shakespeare_char_cpu_mot.py
# MoE:   python train.py config/train_shakespeare_char_cpu.py config/train_shakespeare_char_cpu_moe.py
out_dir = "out-shakespeare-char-cpu"
dataset = "shakespeare_char"
device = "cpu"
dtype = "float32"
compile = False
eval_interval = 100
eval_iters = 20
log_interval = 50
batch_size = 32
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
