# Mixture of Tokens, expert FLOPs matched to the dense FFN's (the mixing comes on top), on top of
# train_shakespeare_char.py (give both files, this one second).
# 128 experts, groups of 32 (the batch of 64 makes 2 groups): expert_size = 4*384*32/128 = 384.
# Extrapolated from the CPU study (4 layers, 128 wide, 2,000 steps; RESULTS.md), not measured at
# this size:
# - the default controller init 1/sqrt(384) with τ = 0.3, the study's best with that init (stage
#   screening; τ = 1 was worse, τ = 0.1 far worse: merge weights one-hot from the start);
# - every block MoT: dense first-half blocks (n_dense_layers = 3 here) hurt in the study;
# - the base config's dropout 0.2 stays: the study's dropout 0.1 hurt on a 2,000-step run that
#   barely overfits, but this 5,000-step run of a 6-layer model overfits TinyShakespeare.
out_dir = "out-shakespeare-char-mot"
ffn = "mot"
n_experts = 128
group_size = 32
temperature = 0.3
# Expect MoT to trail dense here: 5,000 steps of 64x256 characters are ~8 tokens per dense
# parameter (and ~80 passes over TinyShakespeare); in the CPU study MoT lost at few tokens per
# parameter and won at many (README, Results).
