"""Language-specific components: routing, the θ/φ split, φ-only checkpoints and the per-language optimiser."""
import pytest
import torch

from negint_ds.config import AdapterConfig, ModelConfig
from negint_ds.model import BottleneckAdapter, PerLanguage, build_model, count_parameters
from negint_ds.params import load_phi, phi_language, save_phi, split_parameters
from negint_ds.phi_optim import LanguageOptimizer

from negint_ds.kernels import bottleneck_adapter_reference

N = 3


def model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, dim=16, heads=2, ffn_dim=32, dropout=0.0, attention_dropout=0.0, max_positions=8, **kw)
    return build_model(cfg, 30, N).double().eval()


@pytest.mark.parametrize("kw", [dict(language_specific=["ln", "ffn", "attn"]),
                                dict(adapters=AdapterConfig(kind="language", placement=["attn", "ffn"])),
                                dict(language_specific=["ffn"], adapters=AdapterConfig(kind="shared"))])
def test_mixed_batch_routing_equals_per_language_runs(kw):
    m = model(**kw)
    x = torch.randint(5, 30, (5, 8))
    lang_ids = torch.tensor([2, 0, 2, 1, 0])
    mixed = m.encoder(x, lang_ids)
    for i in range(N):
        rows = (lang_ids == i).nonzero().squeeze(1)
        alone = m.encoder(x[rows], lang_ids[rows], lang=i)
        torch.testing.assert_close(mixed[rows], alone, rtol=1e-12, atol=1e-12)


def test_languages_really_differ_and_shared_adapters_are_theta():
    m = model(adapters=AdapterConfig(kind="language"))
    x = torch.randint(5, 30, (2, 8))
    for layer in m.encoder.layers:  # make the adapters non-trivial per language
        for i, a in enumerate(layer.adapter_ffn.per_lang):
            torch.nn.init.normal_(a.up.weight, std=0.5 * (i + 1))
    h0, h1 = m.encoder(x, torch.tensor([0, 0]), lang=0), m.encoder(x, torch.tensor([0, 0]), lang=1)
    assert not torch.allclose(h0, h1)
    shared = split_parameters(model(adapters=AdapterConfig(kind="shared")), N)
    assert not shared.has_phi and any("adapter_attn.down" in n for n in shared.theta)


def test_adapter_matches_the_kernel_reference_and_default_bottleneck():
    torch.manual_seed(1)
    a = BottleneckAdapter(16, 4, "gelu", 0.0).double()
    z = torch.randn(3, 5, 16, dtype=torch.float64)
    ref = bottleneck_adapter_reference(z, a.down.weight, a.down.bias, a.up.weight, a.up.bias, "gelu")
    torch.testing.assert_close(a(z), ref)
    m = model(adapters=AdapterConfig(kind="language"))
    assert m.encoder.layers[0].adapter_attn.per_lang[0].down.weight.shape == (4, 16), "b = d/4 by default"


def test_split_counts_and_names():
    m = model(language_specific=["ffn"], adapters=AdapterConfig(kind="language", placement=["ffn"]))
    split = split_parameters(m, N)
    assert all(phi_language(n) == i for i in range(N) for n in split.phi[i])
    assert all(phi_language(n) is None for n in split.theta)
    sizes = [sum(p.numel() for p in phi.values()) for phi in split.phi]
    per_layer = (16 * 32 + 32 + 32 * 16 + 16) + (16 * 4 + 4 + 4 * 16 + 16)
    assert sizes == [2 * per_layer] * N
    assert count_parameters(m) == sum(p.numel() for p in split.theta.values()) + sum(sizes)


def test_phi_save_load_and_swap(tmp_path):
    m = model(adapters=AdapterConfig(kind="language"))
    langs = ["en", "sw", "fr"]
    split = split_parameters(m, N)
    with torch.no_grad():
        for i, phi in enumerate(split.phi):
            for p in phi.values():
                p.fill_(float(i + 1))
    path = str(tmp_path / "phi.safetensors")
    save_phi(m, path, langs, ["en", "sw"])
    m2 = model(adapters=AdapterConfig(kind="language"))
    assert load_phi(m2, path, langs) == ["en", "sw"]
    s2 = split_parameters(m2, N)
    assert all(bool((p == 1.0).all()) for p in s2.phi[0].values())
    assert all(bool((p == 2.0).all()) for p in s2.phi[1].values())
    assert not any(bool((p == 3.0).all()) for p in s2.phi[2].values()), "fr was not saved, must not be loaded"
    load_phi(m2, path, langs, {"fr": "en"})  # zero-shot: put English adapters into the French slot
    assert all(bool((p == 1.0).all()) for p in s2.phi[2].values())
    with pytest.raises(ValueError, match="'fr' not in"):
        load_phi(m2, path, langs, {"sw": "fr"})
    assert load_phi(m2, path, langs, {}) == [], "an explicit empty mapping loads nothing"
    m3 = model(adapters=AdapterConfig(kind="language"), language_specific=["ln"])
    with pytest.raises(ValueError, match="lacks .* φ tensors"):
        load_phi(m3, path, langs, {"en": "en"})


def test_language_optimizer_steps_only_the_active_language():
    m = model(adapters=AdapterConfig(kind="language"))
    split = split_parameters(m, N)
    opt = LanguageOptimizer(split, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01, max_grad_norm=None)
    before = [[p.detach().clone() for p in phi.values()] for phi in split.phi]
    grads = [torch.randn_like(p) for p in split.phi[1].values()]
    # reference: torch AdamW on copies
    ref = [p.detach().clone().requires_grad_(True) for p in split.phi[1].values()]
    ropt = torch.optim.AdamW(ref, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    for _ in range(3):
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        ropt.step()
        assert not opt.step(1, grads, lr=0.01)["skipped"]
    for i in (0, 2):
        assert all(torch.equal(a, b) for a, b in zip(split.phi[i].values(), before[i]))
    for p, r in zip(split.phi[1].values(), ref):
        torch.testing.assert_close(p, r.detach(), rtol=1e-12, atol=1e-14)
    assert opt.steps == [0, 3, 0]
    bad = [g.clone() for g in grads]
    bad[0][0] = float("inf")
    snap = [p.detach().clone() for p in split.phi[1].values()]
    assert opt.step(1, bad, lr=0.01)["skipped"] and all(torch.equal(a, b) for a, b in zip(split.phi[1].values(), snap))


def test_language_optimizer_state_round_trip_and_clipping():
    m = model(adapters=AdapterConfig(kind="language"))
    split = split_parameters(m, N)
    opt = LanguageOptimizer(split, max_grad_norm=1e-3)
    g = [torch.ones_like(p) for p in split.phi[0].values()]
    assert opt.step(0, g, lr=0.1)["grad_norm"] > 1e-3
    sd = opt.state_dict()
    m2 = model(adapters=AdapterConfig(kind="language"))
    opt2 = LanguageOptimizer(split_parameters(m2, N), max_grad_norm=1e-3)
    opt2.load_state_dict(sd)
    for a, b in zip(split_parameters(m2, N).phi[0].values(), split.phi[0].values()):
        assert torch.equal(a, b)
    opt.step(0, g, lr=0.1)
    opt2.step(0, g, lr=0.1)
    for a, b in zip(split_parameters(m2, N).phi[0].values(), split.phi[0].values()):
        assert torch.equal(a, b), "restored optimiser state must continue exactly"


def test_per_language_module_rejects_nothing_silently():
    pl = PerLanguage(lambda: torch.nn.Identity(), 2)
    x = torch.randn(3, 4)
    out = pl(x, torch.tensor([0, 1, 0]), None)
    torch.testing.assert_close(out, x)
