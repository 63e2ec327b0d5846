"""GPT-2's weights: the GELU setting, convert.from_pretrained against transformers, GPT-2
finetuning in train.py and sampling in sample.py, all on a tiny GPT-2 made and saved here."""

import json
import sys

import pytest
import torch

import convert
import mot
import sample
import train
from mot import GPT, GPTConfig

from conftest import TINY


def test_gelu_is_transformers_gelu_new_and_relu_stays_in_place():
    """activation="gelu" is GPT-2's tanh GELU (transformers' gelu_new, not the exact erf form);
    relu is the in-place ReLU of every earlier result."""
    from transformers.activations import NewGELUActivation
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(mot.gelu(x), NewGELUActivation()(x), rtol=0, atol=1e-12)
    assert (mot.gelu(x) - torch.nn.functional.gelu(x)).abs().max() > 1e-5  # erf: another function
    y = x.clone()
    assert mot.relu(y) is y and torch.equal(y, x.clamp_min(0))


@pytest.mark.parametrize("ffn", ["dense", "mot", "moe"])
def test_every_ffn_uses_the_activation(ffn):
    """The same weights give other outputs with activation="gelu", in every FFN."""
    outs = []
    for activation in ("relu", "gelu"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16,
                              ffn=ffn, n_experts=4, group_size=2, activation=activation))
        layer = model.transformer.h[0].ffn
        outs.append(layer(torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))))
    assert not torch.allclose(*outs, atol=1e-4)


def test_from_pretrained_equals_transformers(gpt2_dir):
    """A GPT-2 saved by transformers loads with its settings (GELU, biases, vocab 50257) and gives
    transformers' logits to 1e-5; greedy decoding with the KV cache gives transformers' tokens."""
    hf, path = gpt2_dir
    model = convert.from_pretrained(path)
    cfg = model.config
    assert (cfg.activation, cfg.bias, cfg.vocab_size, cfg.block_size, cfg.ffn) == \
        ("gelu", True, 50257, 16, "dense") and not model.training
    idx = torch.randint(0, 50257, (3, 16), generator=torch.Generator().manual_seed(0))
    logits, _ = model(idx, idx)
    torch.testing.assert_close(logits, hf(idx).logits, rtol=0, atol=1e-5)
    prompt = idx[:, :4]
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                           do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(model.generate(prompt, 12, temperature=0, kv_cache=True), expected)


def test_gpt2_size_maps_onto_the_gpt_shape_for_shape():
    """GPT-2 124M (transformers' default GPT2Config), built on the meta device (no weights, no
    download): every tensor maps onto a GPT tensor of the same shape, and none is left over."""
    from transformers import GPT2Config, GPT2LMHeadModel
    with torch.device("meta"):
        hf = GPT2LMHeadModel(GPT2Config())
        model = GPT(convert.gpt2_config(hf.config))
    assert (model.config.n_layer, model.config.n_embd, model.config.block_size) == (12, 768, 1024)
    state = convert.gpt2_state_dict(hf.state_dict())
    assert {k: v.shape for k, v in state.items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert model.get_num_params() == 123_653_376  # nanoGPT's "123.65M" for gpt2


def test_from_pretrained_refuses_what_it_cannot_run(tmp_path):
    from conftest import make_gpt2_dir
    make_gpt2_dir(tmp_path / "relu", activation_function="relu")
    with pytest.raises(ValueError, match="activation_function='relu'"):
        convert.from_pretrained(str(tmp_path / "relu"))


def test_from_pretrained_without_transformers_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="^convert.from_pretrained needs .*: pip install "
                                          "transformers$"):
        convert.from_pretrained("gpt2")


def test_finetune_gpt2_trains_resumes_and_samples(gpt2_dir, bpe_data_root, tmp_path, capsys):
    """--init_from=<GPT-2> finetunes the dense GPT-2 on GPT-2 BPE data: its settings come from
    GPT-2, the loss falls, a resumed run is exact, sample.py reads the run."""
    hf, path = gpt2_dir
    args = TINY + [f"--data_root={bpe_data_root}", "--dataset=shakespeare", "--dropout=0.0",
                   "--learning_rate=1e-2"]
    train.main(args + [f"--out_dir={tmp_path / 'full'}", f"--init_from={path}", "--max_iters=6"])
    train.main(args + [f"--out_dir={tmp_path / 'split'}", f"--init_from={path}", "--max_iters=4"])
    train.main([f"--out_dir={tmp_path / 'split'}", "--init_from=resume", "--max_iters=6"])
    full, split = ([(r["iter"], r["train_loss"], r["val_loss"], r["lr"]) for r in map(
        json.loads, open(tmp_path / d / "log.jsonl"))] for d in ("full", "split"))
    assert full == split and full[-1][2] < full[0][2]
    checkpoint = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    assert checkpoint["model_args"]["activation"] == "gelu" and \
        checkpoint["model_args"]["vocab_size"] == 50257
    capsys.readouterr()
    sample.main([f"--out_dir={tmp_path / 'full'}", "--start=Speak", "--num_samples=2",
                 "--max_new_tokens=3", "--device=cpu"])
    assert capsys.readouterr().out.count("Speak") == 2


def test_finetune_gpt2_refuses_other_settings_and_char_data(gpt2_dir, data_root, bpe_data_root,
                                                              tmp_path):
    _, path = gpt2_dir
    with pytest.raises(SystemExit, match="^error: n_embd=32 contradicts"):
        train.main(TINY + [f"--data_root={bpe_data_root}", "--dataset=shakespeare",
                           f"--out_dir={tmp_path / 'a'}", f"--init_from={path}", "--n_embd=32"])
    with pytest.raises(SystemExit, match="^error: .* is GPT-2, which reads the GPT-2 BPE"):
        train.main(TINY + [f"--data_root={data_root}", f"--out_dir={tmp_path / 'b'}",
                           "--dropout=0.0", f"--init_from={path}"])


def test_sample_from_gpt2(gpt2_dir, gpt2_bpe, capsys):
    """sample.py --init_from=<GPT-2> samples from GPT-2's weights with the GPT-2 BPE."""
    _, path = gpt2_dir
    sample.main([f"--init_from={path}", "--start=Speak", "--num_samples=2", "--max_new_tokens=4",
                 "--device=cpu", "--temperature=0"])
    samples = capsys.readouterr().out.split("---------------\n")[:-1]
    assert len(samples) == 2 and samples[0] == samples[1] and samples[0].startswith("Speak")
