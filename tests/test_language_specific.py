"""Language-specific components: routing, the θ/φ split, φ-only checkpoints and the per-language optimiser."""
import importlib
import math
import re

import pytest
import torch

from negint_ds.config import AdapterConfig, ModelConfig
from negint_ds.model import BottleneckAdapter, PerLanguage, build_model, count_parameters
from negint_ds.params import load_phi, phi_language, save_phi, split_parameters
from negint_ds.phi_optim import LanguageOptimizer

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


def appendix_b_adapter(z, w_down, b_down, w_up, b_up):
    """The paper's Appendix B adapter written out independently: o = z + W_up g(W_down z + b_down) + b_up, g = GELU
    (exact erf form), with plain matmuls rather than the package's reference."""
    h = z @ w_down.T + b_down
    g = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    return z + g @ w_up.T + b_up


def rel_err(a, ref):
    return float((a.detach().double() - ref.detach()).norm() / ref.detach().norm().clamp_min(1e-30))


def test_adapter_module_computes_the_appendix_b_formula_in_float64(monkeypatch):
    monkeypatch.delenv("NEGINT_DS_KERNELS", raising=False)
    torch.manual_seed(1)
    a = BottleneckAdapter(16, 4, "gelu", 0.0).double()
    with torch.no_grad():  # make sure the biases are visibly non-zero
        a.down.bias.normal_(0.0, 0.5)
        a.up.bias.normal_(0.0, 0.5)
    z = torch.randn(3, 5, 16, dtype=torch.float64)
    out = a(z)
    expected = appendix_b_adapter(z, a.down.weight, a.down.bias, a.up.weight, a.up.bias)
    assert out.shape == z.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, z), "the adapter branch must contribute"


def test_adapter_module_runs_the_fused_triton_kernel_forward_and_backward(monkeypatch):
    """NEGINT_DS_KERNELS=triton, fp32: the module goes through the fused kernel (spied) and matches a float64
    evaluation of the Appendix B formula to fp32 accuracy (1e-5 relative, as in tests/test_kernels.py)."""
    adapter_triton = importlib.import_module("negint_ds.kernels.adapter_triton")
    dispatch = importlib.import_module("negint_ds.kernels.dispatch")
    calls = []

    def spy(name):
        real = getattr(adapter_triton, name)

        def wrapped(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return wrapped

    # the custom op looks the launchers up on this module at call time, so patching them is what it sees
    for name in ("adapter_forward", "adapter_backward"):
        monkeypatch.setattr(adapter_triton, name, spy(name))
    monkeypatch.setattr(dispatch, "_MODE", "triton")
    torch.manual_seed(2)
    a = BottleneckAdapter(24, 6, "gelu", 0.0)
    with torch.no_grad():
        a.down.bias.normal_(0.0, 0.5)
        a.up.bias.normal_(0.0, 0.5)
    z = torch.randn(2, 7, 24, requires_grad=True)
    out = a(z)
    assert calls == ["adapter_forward"], "the module must run the fused forward kernel"
    assert out.dtype == torch.float32 and out.shape == z.shape
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    leaves = [z, a.down.weight, a.down.bias, a.up.weight, a.up.bias]
    grads = torch.autograd.grad(out, leaves, dy)
    assert calls == ["adapter_forward", "adapter_backward"], "and the fused backward"

    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = appendix_b_adapter(*ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy.double())
    errors = dict(zip(["y", "dz", "dW_down", "db_down", "dW_up", "db_up"],
                      [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)]))
    assert max(errors.values()) <= 1e-5, errors
    for g, leaf in zip(grads, leaves):
        assert g.shape == leaf.shape and g.dtype == torch.float32


def test_adapter_default_bottleneck_is_a_quarter_of_the_width():
    m = model(adapters=AdapterConfig(kind="language"))
    assert m.encoder.layers[0].adapter_attn.per_lang[0].down.weight.shape == (4, 16), "b = d/4 by default"
    assert m.encoder.layers[0].adapter_attn.per_lang[0].up.weight.shape == (16, 4)


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


def test_language_optimizer_clips_the_gradient_and_state_round_trips():
    """φ's gradient is clipped to max_grad_norm (coef = max / (norm + 1e-6)) before AdamW; the saved state continues
    exactly. Adam's first step is ~ lr·sign(g) whatever the gradient's scale, so eps is chosen well above the
    clipped gradient's entries: then the clipped step is a small fraction of the unclipped one."""
    lr, max_norm, eps, betas, wd = 0.1, 1e-3, 1e-3, (0.9, 0.999), 0.01
    m = model(adapters=AdapterConfig(kind="language"))
    split = split_parameters(m, N)
    init = [p.detach().clone() for p in split.phi[0].values()]
    opt = LanguageOptimizer(split, betas=betas, eps=eps, weight_decay=wd, max_grad_norm=max_norm)
    gen = torch.Generator().manual_seed(3)
    g = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in init]
    g2 = [0.5 * t + torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in g]

    def global_norm(grads):
        return float(torch.stack([t.pow(2).sum() for t in grads]).sum().sqrt())

    def clip(grads):  # the documented rule, written out here
        n = global_norm(grads)
        return [t * (max_norm / (n + 1e-6)) for t in grads] if n > max_norm else grads

    def adamw(*grad_steps):  # torch AdamW from the initial φ, one step per gradient list
        ps = [t.clone().requires_grad_(True) for t in init]
        o = torch.optim.AdamW(ps, lr=lr, betas=betas, eps=eps, weight_decay=wd)
        for grads in grad_steps:
            for p, t in zip(ps, grads):
                p.grad = t.clone()
            o.step()
        return [p.detach() for p in ps]

    norm = global_norm(g)
    assert norm > 100 * max_norm
    clipped_ref, unclipped_ref = adamw(clip(g)), adamw(g)
    stats = opt.step(0, g, lr=lr)
    assert not stats["skipped"] and stats["grad_norm"] == pytest.approx(norm, rel=1e-12), "reports the pre-clip norm"
    stepped = [p.detach().clone() for p in split.phi[0].values()]
    for p, r in zip(stepped, clipped_ref):
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-14)
    gap = max(float((p - u).abs().max()) for p, u in zip(stepped, unclipped_ref))
    assert gap > lr / 2, f"clipped and unclipped steps must differ visibly, max |Δ| = {gap:.3g}"
    assert opt.steps == [1, 0, 0]

    # round trip: a fresh model + optimiser restored from the state dict continues exactly
    sd = opt.state_dict()
    m2 = model(adapters=AdapterConfig(kind="language"))
    opt2 = LanguageOptimizer(split_parameters(m2, N), betas=betas, eps=eps, weight_decay=wd, max_grad_norm=max_norm)
    opt2.load_state_dict(sd)
    for a, b in zip(split_parameters(m2, N).phi[0].values(), split.phi[0].values()):
        assert torch.equal(a, b)
    assert opt2.steps == opt.steps
    opt.step(0, g2, lr=lr)
    opt2.step(0, g2, lr=lr)
    for a, b in zip(split_parameters(m2, N).phi[0].values(), split.phi[0].values()):
        assert torch.equal(a, b), "restored optimiser state must continue exactly"
    # ... and what both continued is AdamW over the two clipped gradients
    for p, r in zip(split.phi[0].values(), adamw(clip(g), clip(g2))):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-14)


def linear_per_language(n_langs=2, describe=None):
    """PerLanguage over nn.Linear(4, 4) whose copies are clearly different (weights and bias differ per language)."""
    torch.manual_seed(4)
    pl = PerLanguage(lambda: torch.nn.Linear(4, 4), n_langs, describe).double()
    with torch.no_grad():
        for i, lin in enumerate(pl.per_lang):
            lin.weight.normal_(0.0, 1.0 + i)
            lin.bias.fill_(10.0 * (i + 1))
    return pl


def test_per_language_module_routes_each_row_to_its_own_language():
    pl = linear_per_language(3)
    x = torch.randn(6, 4, dtype=torch.float64)
    with torch.no_grad():
        outs = [lin(x) for lin in pl.per_lang]  # every row through every language's module
        for i in range(3):
            for j in range(i):
                # every row differs between any two languages' modules
                assert (outs[i] - outs[j]).norm(dim=1).min() > 1.0, "the per-language modules must be distinguishable"
        lang_ids = torch.tensor([2, 0, 1, 1, 0, 2])
        mixed = pl(x, lang_ids, None)
        for row, lang in enumerate(lang_ids.tolist()):
            torch.testing.assert_close(mixed[row], pl.per_lang[lang](x[row:row + 1])[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(mixed[row], outs[lang][row], rtol=1e-12, atol=1e-12)
        for lang in range(3):  # lang=<int> runs that language's module on every row
            torch.testing.assert_close(pl(x, lang_ids, lang), outs[lang], rtol=0, atol=0)


def assert_names_id(msg, bad, describe):
    """The message names the offending id (outside the description of the languages, which holds digits too)
    and the model's languages."""
    assert describe in msg, msg
    assert re.search(rf"(?<![\w-]){re.escape(bad)}(?!\w)", msg.replace(describe, "")), msg


@pytest.mark.parametrize("lang_ids, bad", [([0, 5, 1], "5"), ([-1, 0, 1], "-1"), ([1, 2, 0], "2"), ([5], "5")])
def test_per_language_module_refuses_out_of_range_row_ids(lang_ids, bad):
    pl = linear_per_language(2, describe="two test languages")
    x = torch.randn(len(lang_ids), 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="out of range") as err:
        pl(x, torch.tensor(lang_ids), None)
    assert_names_id(str(err.value), bad, "two test languages")


@pytest.mark.parametrize("lang", [2, 5, -1])
def test_per_language_module_refuses_an_out_of_range_lang(lang):
    pl = linear_per_language(2, describe="two test languages")
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="out of range") as err:
        pl(x, torch.tensor([0, 1, 0]), lang)
    assert_names_id(str(err.value), str(lang), "two test languages")


def named_model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=1, dim=16, heads=2, ffn_dim=32, dropout=0.0, attention_dropout=0.0, max_positions=8, **kw)
    return build_model(cfg, 30, 2, 0, ["sw", "en"]).double().eval()


# with language embeddings the encoder checks the ids first; without them the per-language modules do
@pytest.mark.parametrize("lang_embeddings", [True, False], ids=["lang_emb", "no_lang_emb"])
@pytest.mark.parametrize("lang_ids, lang, bad", [([0, 5, 1], None, "5"), ([-1, 1, 0], None, "-1"),
                                                 ([0, 2, 1], None, "2"), ([0, 1, 0], 2, "2"),
                                                 ([0, 1, 0], 5, "5"), ([0, 1, 0], -1, "-1")])
def test_model_refuses_out_of_range_language_ids_naming_its_languages(lang_embeddings, lang_ids, lang, bad):
    m = named_model(lang_embeddings=lang_embeddings, language_specific=["ffn"],
                    adapters=AdapterConfig(kind="language"))
    assert m.dims.lang_names == ("sw", "en")
    x = torch.randint(5, 30, (3, 8))
    with pytest.raises(ValueError, match="out of range") as err:
        m.encoder(x, torch.tensor(lang_ids), lang=lang)
    msg = str(err.value)
    assert "sw" in msg and "en" in msg, msg
    assert_names_id(msg, bad, m.dims.describe_langs())


@pytest.mark.parametrize("lang_embeddings", [True, False], ids=["lang_emb", "no_lang_emb"])
def test_model_in_range_mixed_batch_still_routes_by_row(lang_embeddings):
    m = named_model(lang_embeddings=lang_embeddings, language_specific=["ffn"],
                    adapters=AdapterConfig(kind="language"))
    x = torch.randint(5, 30, (4, 8))
    lang_ids = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        mixed = m.encoder(x, lang_ids)
        assert torch.isfinite(mixed).all()
        for i in range(2):
            rows = (lang_ids == i).nonzero().squeeze(1)
            torch.testing.assert_close(mixed[rows], m.encoder(x[rows], lang_ids[rows], lang=i), rtol=1e-12, atol=1e-12)
        # the two languages' φ give different hidden states for the same row
        assert not torch.allclose(m.encoder(x[:1], lang_ids[:1], lang=0), m.encoder(x[:1], lang_ids[:1], lang=1))
