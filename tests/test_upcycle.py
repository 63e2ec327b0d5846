"""Upcycling a dense GPT into MoT or MoE (convert.upcycle, train.py --upcycle): what the new layers
compute at step 0, and upcycled runs that train, resume exactly and sample."""

import json

import pytest
import torch

import convert
import sample
import train
from mot import GPT, GPTConfig, MixtureOfExperts, MixtureOfTokens

C = 16
DENSE = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=C)


def trained_like_dense(**overrides) -> GPT:
    """A dense GPT in float64 whose biases are not zero, as after training."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**DENSE, **overrides})).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(std=0.1)
    return model


def block_input(seed=1, B=8):
    return torch.randn(B, 8, C, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_of_copies_is_the_dense_ffn_times_its_gates(bias, top_k):
    """MoE experts upcycled as copies: each token gets the dense FFN's output times the sum of
    its top-k gates (top-1: its gate), exactly up to rounding; the rest of the model is the
    source's, tensor for tensor."""
    dense = trained_like_dense(bias=bias)
    moe = convert.upcycle(dense, "moe", n_experts=4, moe_top_k=top_k, n_dense_layers=1)
    x = block_input()
    layer, ffn = moe.transformer.h[1].ffn, dense.transformer.h[1].ffn
    assert isinstance(layer, MixtureOfExperts) and layer.w1.shape == (4, C, 4 * C)
    gates = torch.softmax(x @ layer.router, -1).topk(top_k, -1).values.sum(-1, keepdim=True)
    torch.testing.assert_close(layer(x), gates * ffn(x), rtol=1e-12, atol=1e-12)
    source = dense.state_dict()
    for name, tensor in moe.state_dict().items():
        if ".h.1.ffn." not in name:
            assert torch.equal(tensor, source[name]), name


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_experts, group_size, expert_size", [(4, 4, 4 * C), (8, 4, 2 * C),
                                                                (16, 4, C)])
def test_mot_of_copies_or_slices_at_a_zero_controller_is_the_dense_ffn_of_the_group_mean(
        bias, n_experts, group_size, expert_size):
    """MoT upcycled with experts that are copies (H = 4C) or k = 4C/H slices of the dense FFN,
    FLOP-matched (E·H/G = 4C): with the controller at zero, every token of a group gets the dense
    FFN of its group's mean token. With groups of one, any controller gives the dense FFN times
    E/k."""
    dense = trained_like_dense(bias=bias)
    mot = convert.upcycle(dense, "mot", n_experts=n_experts, group_size=group_size,
                        expert_size=expert_size)
    layer, ffn = mot.transformer.h[0].ffn, dense.transformer.h[0].ffn
    x = block_input()
    with torch.no_grad():
        layer.controller.zero_()
    means = x.view(-1, group_size, 8, C).mean(1, keepdim=True).expand(-1, group_size, -1, -1)
    torch.testing.assert_close(layer(x), ffn(means.reshape(x.shape)), rtol=1e-12, atol=1e-12)
    k = 4 * C // expert_size
    single = convert.upcycle(dense, "mot", n_experts=n_experts, group_size=1,
                             expert_size=expert_size)
    torch.testing.assert_close(single.transformer.h[0].ffn(x), n_experts / k * ffn(x),
                               rtol=1e-12, atol=1e-12)


def test_upcycled_mot_at_its_controller_init_is_near_the_dense_ffn():
    """At the controller's init (1/sqrt(C)) the upcycled MoT is not the dense FFN, but its
    output stays within the figure of it in docs/gpt2_and_upcycling.md: relative distance
    below 1."""
    dense = trained_like_dense()
    layer = convert.upcycle(dense, "mot", n_experts=16, group_size=4).transformer.h[0].ffn
    x = block_input()
    ffn = dense.transformer.h[0].ffn
    distance = (layer(x) - ffn(x)).norm() / ffn(x).norm()
    assert 0.05 < distance < 1


@pytest.mark.parametrize("source, ffn, settings, message", [
    (dict(ffn="mot", n_experts=4, group_size=2), "moe", {}, "grows a dense model"),
    ({}, "dense", {}, "use one of"),
    ({}, "moe", dict(n_embd=32), "keeps the source's n_embd"),
    ({}, "moe", dict(expert_size=C), "must be 4·n_embd=64 \\(copies\\)$"),
    ({}, "mot", dict(n_experts=6, group_size=2, expert_size=C), "n_experts=6 a multiple of k"),
    ({}, "mot", dict(colour=1), "unexpected keyword"),
])
def test_upcycle_refuses(source, ffn, settings, message):
    with pytest.raises(ValueError, match=message):
        convert.upcycle(GPT(GPTConfig(**{**DENSE, **source})), ffn, **settings)


@pytest.mark.parametrize("upcycle, flags", [("mot", ["--n_experts=8", "--expert_size=32"]),
                                            ("moe", ["--moe_top_k=1"])])
def test_upcycled_runs_train_resume_exactly_and_sample(tmp_path, run_train, capsys, upcycle,
                                                       flags):
    """--init_from=<dense run> --upcycle=...: the model settings come from the dense run, the
    new layers from the flags; the loss at step 0 is the dense run's last (MoE: near it), the run
    learns, a resumed run is exact, and sample.py reads it."""
    dense = run_train(tmp_path / "dense", "--max_iters=8", "--learning_rate=1e-2",
                      "--dropout=0.0")
    args = [f"--init_from={tmp_path / 'dense'}", f"--upcycle={upcycle}", "--dropout=0.0",
            "--n_dense_layers=1", *flags]
    full = run_train(tmp_path / "full", *args, "--max_iters=6")
    run_train(tmp_path / "split", *args, "--max_iters=4")
    train.main([f"--out_dir={tmp_path / 'split'}", "--init_from=resume", "--max_iters=6"])
    resumed = [json.loads(line) for line in open(tmp_path / "split" / "log.jsonl")]
    losses = [[(r["iter"], r["train_loss"], r["val_loss"]) for r in log] for log in (full, resumed)]
    assert losses[0] == losses[1] and full[-1]["val_loss"] < full[0]["val_loss"]
    assert abs(full[0]["val_loss"] - dense[-1]["val_loss"]) < 0.5
    checkpoint = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    assert (checkpoint["model_args"]["ffn"], checkpoint["model_args"]["n_embd"]) == (upcycle, 16)
    capsys.readouterr()
    sample.main([f"--out_dir={tmp_path / 'full'}", "--start=Speak", "--num_samples=2",
                 "--max_new_tokens=4", "--device=cpu"])
    assert capsys.readouterr().out.count("Speak") == 2


def test_upcycle_gpt2_into_mot(gpt2_dir, bpe_data_root, tmp_path):
    """GPT-2 (biases, GELU) upcycled into MoT trains; its experts carry GPT-2's FFN biases."""
    _, path = gpt2_dir
    from conftest import TINY
    train.main(TINY + [f"--data_root={bpe_data_root}", "--dataset=shakespeare",
                       f"--out_dir={tmp_path / 'out'}", f"--init_from={path}", "--upcycle=mot",
                       "--max_iters=2", "--dropout=0.0"])
    log = [json.loads(line) for line in open(tmp_path / "out" / "log.jsonl")]
    model, _ = convert.from_checkpoint(str(tmp_path / "out" / "ckpt.pt"))
    assert isinstance(model.transformer.h[0].ffn, MixtureOfTokens)
    assert model.config.expert_bias and model.config.activation == "gelu" and len(log) == 2
