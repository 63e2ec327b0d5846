# The CPU recipe on Python's standard library (python data/python_stdlib/prepare.py), a corpus that
# does not repeat: 6,000 steps of 32x64 characters read 12M, less than half of its 28.5M training
# characters. Give it after config/train_shakespeare_char_cpu.py (same model, batch and schedule);
# add config/train_shakespeare_char_cpu_mot.py or _moe.py for MoT or MoE, and an --out_dir (those
# overlays set their own).
out_dir = "out-python-stdlib-cpu"
dataset = "python_stdlib"
max_iters = 6000
lr_decay_iters = 6000
