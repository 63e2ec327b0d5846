# FLOP-matched Mixture of Tokens on top of train_shakespeare_char_cpu.py (give both files, this one
# second): 128 experts of width 4*128*32/128 = 128, one group of 32 per batch of 32.
# The CPU study (experiments/study.py, RESULTS.md), seed 0, 2,000 steps, val loss: with the
# default controller init 1/sqrt(128), τ = 1 1.6855, τ = 0.3 1.6483, τ = 0.1 2.0619 (the merge
# weights one-hot from the start); with GPT-2's init 0.02 the best was τ = 0.1, 1.6482.
out_dir = "out-shakespeare-char-cpu-mot"
ffn = "mot"
n_experts = 128
group_size = 32
temperature = 0.3
# At this recipe's ~5 training tokens per parameter MoT trails dense (3 seeds: 1.6461 ± 0.0144
# against 1.6349 ± 0.0072); train_python_stdlib_tiny_mot.py shows where it wins (README).
