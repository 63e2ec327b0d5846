# FLOP-matched Mixture of Tokens on top of train_shakespeare_char.py (give both files, this one second).
# 128 experts, groups of 32 (the batch of 64 makes 2 groups): expert_size = 4*384*32/128 = 384.
out_dir = "out-shakespeare-char-mot"
ffn = "mot"
n_experts = 128
group_size = 32
