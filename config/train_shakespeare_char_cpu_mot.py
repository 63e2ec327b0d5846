# FLOP-matched Mixture of Tokens on top of train_shakespeare_char_cpu.py (give both files, this one
# second): 128 experts of width 4*128*32/128 = 128, one group of 32 per batch of 32. At this small
# scale the merge weights need a low temperature: with τ = 1 MoT trailed dense (RESULTS.md).
out_dir = "out-shakespeare-char-cpu-mot"
ffn = "mot"
n_experts = 128
group_size = 32
temperature = 0.1
