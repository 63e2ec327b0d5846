# Top-1 token-choice MoE, expert FLOPs matched to the dense FFN's, on top of
# train_shakespeare_char.py (give both files, this one second).
# 8 experts of width 4*384, dropless (capacity_factor None), Switch load-balancing loss 0.01.
out_dir = "out-shakespeare-char-moe"
ffn = "moe"
n_experts = 8
moe_top_k = 1
