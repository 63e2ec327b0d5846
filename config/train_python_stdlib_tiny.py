# See MoT beat dense (README): a tiny character-level GPT on Python's standard library
# (python data/python_stdlib/prepare.py), where a model sees many tokens per parameter.
# Dense: python train.py config/train_python_stdlib_tiny.py
# MoT:   python train.py config/train_python_stdlib_tiny.py config/train_python_stdlib_tiny_mot.py
# MoE:   python train.py config/train_python_stdlib_tiny.py config/train_python_stdlib_tiny_moe.py
# Each run is one of the study's (experiments/study.py, stage regime_lr, seed 0) setting for
# setting: the same command gives the same losses on the same machine.
out_dir = "out-python-stdlib-tiny"
dataset = "python_stdlib"
device = "cpu"
dtype = "float32"
compile = False
eval_interval = 400
eval_iters = 20
log_interval = 50
# the CPU recipe's batch and context (train_shakespeare_char_cpu.py)
batch_size = 32
block_size = 64
# 2 layers, 64 wide: 0.13M parameters. 10,000 steps of 32x64 characters read 20M tokens, about
# 150 per parameter (the CPU recipe reads 4M tokens for 0.8M parameters, about 5), and less than
# the corpus' 28.5M training characters: no character is seen twice.
n_layer = 2
n_head = 2
n_embd = 64
dropout = 0.0  # nothing repeats, nothing to regularise
max_iters = 10000
lr_decay_iters = 10000
# the study's best of {1e-3, 2e-3, 4e-3} for dense (RESULTS.md, stage regime_lr)
learning_rate = 2e-3
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 100
seed = 0  # the study's seed-0 runs
