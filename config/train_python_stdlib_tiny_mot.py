# Mixture of Tokens, expert FLOPs matched to the dense FFN's, on top of train_python_stdlib_tiny.py
# (give both files, this one second): 64 experts of width 4*64*16/64 = 64, groups of 16 (a batch of
# 32 makes 2 groups), every block MoT. 1.12M parameters, 8.6x dense's, for the same expert FLOPs per
# token; the mixing (controller, merge, emit) comes on top: 1.01 MFLOPs per token in all against
# dense's 0.86 (GPT.flops_per_token).
out_dir = "out-python-stdlib-tiny-mot"
ffn = "mot"
n_experts = 64
group_size = 16
controller_init_std = 0.125  # 1/sqrt(64), the default, written out as the study runs it
temperature = 0.3  # the CPU study's best τ with this init (train_shakespeare_char_cpu_mot.py)
# the study's best of {1e-3, 2e-3, 4e-3} for MoT (RESULTS.md, stage regime_lr)
learning_rate = 4e-3
# The study's knobs (RESULTS.md, stage regime_knobs): n_experts = 128 (E/G = 8, the same
# parameters in experts of width 32) ended lower over 3 seeds, for more FLOPs per token; the
# recipe keeps E = 64, the model the regime study compares.
min_lr = 4e-4
