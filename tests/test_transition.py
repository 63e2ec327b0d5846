"""Transition tuning: convert.to_sparse, temperature schedules, and runs started from
a MoT."""

import pytest
import torch

import convert
import sample
import train
from mot import GPT, GPTConfig, MixtureOfExperts

CONFIG = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16, ffn="mot", n_experts=8,
              group_size=4, n_dense_layers=1)


def trained_like_mot(**overrides) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**CONFIG, **overrides}))
    with torch.no_grad():  # larger controller weights than at init, so that routing is not uniform
        for layer in model.ffns(torch.nn.Module):
            if hasattr(layer, "controller"):
                layer.controller.normal_(std=1.0)
    return model


@pytest.mark.parametrize("routing", ["discrete", "token_choice"])
def test_to_sparse_copies_weights(routing):
    """Every tensor of the converted model equals its source exactly, in its own storage; the
    token-choice router is the controller over τ, the logits MoT's softmax saw."""
    model = trained_like_mot(learnable_temperature=True, temperature=0.3)
    sparse = convert.to_sparse(model, routing)
    source = model.state_dict()
    storages = {tensor.data_ptr() for tensor in source.values()}
    for name, tensor in sparse.state_dict().items():
        if name.endswith(".ffn.router"):
            controller = source[name.replace(".router", ".controller")]
            torch.testing.assert_close(tensor, controller / 0.3, rtol=1e-6, atol=0)
        else:
            assert torch.equal(tensor, source[name])
        assert tensor.data_ptr() not in storages
    assert isinstance(sparse.transformer.h[1].ffn, MixtureOfExperts) == (routing == "token_choice")
    if routing == "token_choice":  # k = E/G: the same expert FLOPs per token as the MoT
        assert sparse.config.moe_top_k == CONFIG["n_experts"] // CONFIG["group_size"]


def test_token_choice_sequence_ignores_the_rest_of_the_batch():
    """After to_sparse("token_choice") a sequence's logits do not change when the others change;
    before, they do."""
    model = trained_like_mot()
    idx = torch.randint(0, 11, (8, 8), generator=torch.Generator().manual_seed(1))
    other = idx.clone()
    other[1:] = torch.randint(0, 11, (7, 8), generator=torch.Generator().manual_seed(2))
    for m, independent in ((model, False), (convert.to_sparse(model, "token_choice"), True)):
        a, _ = m(idx, idx)
        b, _ = m(other, other)
        assert torch.equal(a[0], b[0]) == independent


def test_discrete_conversion_equals_the_small_temperature_limit():
    """to_sparse("discrete") computes what the MoT computes as τ → 0 (on inputs without ties)."""
    idx = torch.randint(0, 11, (8, 8), generator=torch.Generator().manual_seed(3))
    idx[:, 0] = torch.arange(8)  # distinct prefixes: no two tokens of a group are equal, so no ties
    discrete, _ = convert.to_sparse(trained_like_mot(), "discrete")(idx, idx)
    errors = [(trained_like_mot(temperature=t)(idx, idx)[0] - discrete).abs().max().item()
              for t in (1.0, 1e-2, 1e-4)]
    assert errors[0] > 1e-2 and errors[2] < 1e-5 and errors[0] > errors[1] > errors[2]


def test_to_sparse_rejects_what_it_cannot_convert():
    with pytest.raises(ValueError, match="ffn='dense'"):
        convert.to_sparse(GPT(GPTConfig(**{**CONFIG, "ffn": "dense"})), "discrete")
    with pytest.raises(ValueError, match="routing='soft'"):
        convert.to_sparse(trained_like_mot(), "soft")


def test_annealing_schedule_hits_both_ends():
    """τ goes from temperature at step 0 to temperature_final at lr_decay_iters, monotonically,
    then stays."""
    c = train.TrainConfig(temperature=1.0, temperature_final=0.1, lr_decay_iters=100,
                          warmup_iters=0)
    taus = [train.get_temperature(it, c) for it in range(0, 151)]
    assert (taus[0] == pytest.approx(1.0) and taus[100] == pytest.approx(0.1)
            and taus[150] == pytest.approx(0.1))
    assert all(a > b for a, b in zip(taus[:100], taus[1:101]))


def test_annealed_and_learned_temperatures_are_logged(tmp_path, run_train):
    """An annealed run logs τ₀ at step 0 and τ₁ at lr_decay_iters; a learned τ moves and
    stays positive."""
    annealed = run_train(tmp_path / "anneal", "--ffn=mot", "--max_iters=20", "--eval_interval=20",
                         "--temperature=2.0", "--temperature_final=0.5")
    assert annealed[0]["temperature"] == pytest.approx([2.0, 2.0])
    assert annealed[-1]["temperature"] == pytest.approx([0.5, 0.5])
    learned = run_train(tmp_path / "learn", "--ffn=mot", "--max_iters=4",
                        "--learnable_temperature=True", "--learning_rate=0.1")
    assert (all(t > 0 for t in learned[-1]["temperature"])
            and learned[-1]["temperature"] != [1.0, 1.0])
    with pytest.raises(SystemExit, match="temperature_final"):
        run_train(tmp_path / "both", "--ffn=mot", "--learnable_temperature=True",
                  "--temperature_final=0.5")


def test_transition_run_and_independent_sampling(tmp_path, run_train, capsys):
    """A token-choice run starts from a MoT checkpoint at step 0, and its greedy sample of one
    sequence is the same alone as in a batch of three."""
    run_train(tmp_path / "mot", "--ffn=mot", "--max_iters=4")
    log = run_train(tmp_path / "tc", f"--init_from={tmp_path / 'mot'}",
                    "--transition=token_choice", "--max_iters=4")
    assert [r["iter"] for r in log] == [0, 2, 4]
    assert torch.load(tmp_path / "tc" / "ckpt.pt", weights_only=True)["model_args"]["ffn"] == "moe"

    def greedy(n):
        capsys.readouterr()
        sample.main([f"--out_dir={tmp_path / 'tc'}", "--start=Speak", f"--num_samples={n}",
                     "--top_k=1", "--max_new_tokens=8", "--device=cpu"])
        return capsys.readouterr().out.split("---------------\n")[:-1]

    alone, batch = greedy(1), greedy(3)
    assert batch == alone * 3
    # without --transition the MoT run is finetuned as it is, with a fresh optimizer
    finetuned = run_train(tmp_path / "x", f"--init_from={tmp_path / 'mot'}", "--max_iters=2")
    assert [r["iter"] for r in finetuned] == [0, 2] and "merge_entropy" in finetuned[0]
    run_train(tmp_path / "dense", "--max_iters=2")
    with pytest.raises(SystemExit, match="converts MoT layers"):
        run_train(tmp_path / "y", f"--init_from={tmp_path / 'dense'}", "--transition=discrete")
