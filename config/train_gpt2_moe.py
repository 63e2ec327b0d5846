# Top-1 token-choice MoE on top of train_gpt2.py (give both files, this one second): the first
# half of the blocks dense, the rest 8 experts of width 4*768 (expert FLOPs matched to the dense
# FFN's), dropless: with a capacity factor the tokens of one sequence compete with the others for
# room, so decoding would differ.
out_dir = "out-owt-moe"
ffn = "moe"
n_dense_layers = 6
n_experts = 8
moe_top_k = 1
capacity_factor = None
