# Finetune GPT-2 XL (dense) on TinyShakespeare with the GPT-2 BPE, as nanoGPT's config of the same
# name (pip install transformers; python data/shakespeare/prepare.py first):
#   python train.py config/finetune_shakespeare.py
# Memory: 1.56B parameters with their gradients and AdamW's two moments in float32, plus the
# activations of one 1024-token sequence under bfloat16 autocast, fit an A100 40GB (estimates:
# python bench.py --memory; docs/gpus.md). On a smaller GPU use --init_from=gpt2 (124M).
out_dir = "out-shakespeare"
eval_interval = 5
eval_iters = 40
init_from = "gpt2-xl"  # the model settings (block 1024, biases, GELU, vocab 50257) come from it
dataset = "shakespeare"
always_save_checkpoint = False  # save only when the val loss improves
# 32 sequences of 1024 tokens per step; one epoch of shakespeare's 301,966 tokens is ~9 steps
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
learning_rate = 3e-5  # constant: finetuning
decay_lr = False
