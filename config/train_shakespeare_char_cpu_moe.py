# Top-1 token-choice MoE, expert FLOPs matched to the dense FFN's, on top of
# train_shakespeare_char_cpu.py (give both files, this one second): 8 experts of width 4*128,
# dropless, Switch load-balancing loss 0.01.
out_dir = "out-shakespeare-char-cpu-moe"
ffn = "moe"
n_experts = 8
moe_top_k = 1
