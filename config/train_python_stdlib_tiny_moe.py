# Top-1 token-choice MoE, expert FLOPs matched to the dense FFN's, on top of
# train_python_stdlib_tiny.py (give both files, this one second): 8 experts of width 4*64, dropless,
# Switch load-balancing loss 0.01.
out_dir = "out-python-stdlib-tiny-moe"
ffn = "moe"
n_experts = 8
moe_top_k = 1
# the study's best of {1e-3, 2e-3, 4e-3} for MoE (RESULTS.md, stage regime_lr)
learning_rate = 2e-3
min_lr = 2e-4
