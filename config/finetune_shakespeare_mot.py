# GPT-2 upcycled into MoT and finetuned on TinyShakespeare, on top of finetune_shakespeare.py:
#   python train.py config/finetune_shakespeare.py config/finetune_shakespeare_mot.py
# GPT-2 small (124M) with its last 6 FFNs grown into MoT layers of E=32 experts, G=8: each expert a
# quarter of the dense FFN's 3072 hidden units (H = 4C·G/E = 768: expert FLOPs matched), so that
# every 4 experts sum to the dense FFN (convert.upcycle; docs/gpt2_and_upcycling.md says what the
# layer computes at step 0).
# The dense baseline at equal batches: python train.py config/finetune_shakespeare.py
# --init_from=gpt2 --batch_size=8 --gradient_accumulation_steps=4 --out_dir=out-shakespeare-gpt2
# Memory: 323M parameters (6 of GPT-2's dense FFNs, 4.7M each, grown into 37.8M of experts each),
# with their gradients and AdamW in float32, and the activations of 8 sequences of 1024 tokens
# (MoT keeps a merged token per expert and position, E·T·C per group and layer): it fits a 24 GB
# GPU (estimates: python bench.py --memory; docs/gpus.md, "Which GPU for which recipe"). Untuned:
# the learning rate is the dense finetune's.
out_dir = "out-shakespeare-mot"
init_from = "gpt2"
upcycle = "mot"
n_dense_layers = 6  # the paper's recipe: the first half of the blocks dense
n_experts = 32
group_size = 8
batch_size = 8  # one group of 8 sequences per micro-step
gradient_accumulation_steps = 4  # 32 sequences per step, as finetune_shakespeare.py
