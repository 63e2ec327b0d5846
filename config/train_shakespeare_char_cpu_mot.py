# Mixture of Tokens, expert FLOPs matched to the dense FFN's (the mixing comes on top), on top of
# train_shakespeare_char_cpu.py (give both files, this one second): 128 experts of width
# 4*128*32/128 = 128, one group of 32 per batch of 32.
# τ: the CPU study's best with the default controller init 1/sqrt(128) (experiments/study.py;
# RESULTS.md, stage screening): τ = 1 is worse, τ = 0.1 far worse (the merge weights one-hot from
# the start); with GPT-2's init 0.02 the best was τ = 0.1, tied with this one.
out_dir = "out-shakespeare-char-cpu-mot"
ffn = "mot"
n_experts = 128
group_size = 32
temperature = 0.3
# At this recipe's ~5 training tokens per parameter MoT trails dense, within the seeds' spread
# (RESULTS.md, stage final); train_python_stdlib_tiny_mot.py shows where it wins (README, "See MoT
# beat dense").
