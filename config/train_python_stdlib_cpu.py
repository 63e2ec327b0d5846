# The CPU recipe (config/train_shakespeare_char_cpu.py: same model, batch and schedule) on Python's
# standard library (python data/python_stdlib/prepare.py), a corpus that does not repeat: 6,000
# steps of 32x64 characters read 12M, less than half of its 28.5M training characters. Add
# config/train_shakespeare_char_cpu_mot.py or _moe.py for MoT or MoE, and an --out_dir (those
# overlays set their own).
out_dir = "out-python-stdlib-cpu"
dataset = "python_stdlib"
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
max_iters = 6000
lr_decay_iters = 6000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
