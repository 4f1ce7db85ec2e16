"""One component per attention head, from each layout's own tensors (slt_probe/inputs/heads.py).

Validated by perturbation: a head's output in its layer is what that head adds to the residual stream, z_h W_O,h
(z_h its slice of the output projection's input). Perturbing the coordinates of head h's mask must change head h's
output and no other head's (the heads of h's group, with grouped-query attention, share its k/v); perturbing every
other coordinate of the layer must leave head h's output exactly as it was.
"""

import math

import pytest
import torch
import transformers
from torch import nn
from torch.nn import functional as F

from slt_probe.demo.model import attn_only
from slt_probe.engine.sampler import count_params
from slt_probe.errors import InputError
from slt_probe.inputs import tlens
from slt_probe.inputs.heads import attention_layers, components, head_masks, resolve


class NanoAttention(nn.Module):  # nanoGPT's CausalSelfAttention, as model.py writes it
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=True)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=True)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class NanoGPT(nn.Module):
    def __init__(self, vocab=32, n_embd=16, n_head=4, n_layer=2):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.h = nn.ModuleList([NanoAttention(n_embd, n_head) for _ in range(n_layer)])
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        for block in self.h:
            x = x + block(x)
        return self.lm_head(x)


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=4, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0))


def _neox():
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32, vocab_size=32,
        max_position_embeddings=16, attention_bias=True))


def _llama(kv=2):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=4, num_key_value_heads=kv, intermediate_size=32,
        vocab_size=32, max_position_embeddings=16, head_dim=4, attention_bias=True))


def _transformer_lens():
    """What `--model config.json` builds from a HookedTransformerConfig: HookedTransformer (3.x) or TransformerLens 4's
    native transformer behind its TransformerBridge, per the version installed (the test extras: 4.x)."""
    config = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, d_vocab=32, n_ctx=16, d_mlp=32, act_fn="gelu")
    return tlens.build(config, "tl.json")[0]


# layout -> (model factory, output projection's name under the attention module, its weight is [in, out])
LAYOUTS = {
    "attn_only": (lambda: attn_only(vocab_size=32, n_ctx=16, d_model=16, n_heads=4, attn_bias=True), "out", False),
    "nanoGPT": (NanoGPT, "c_proj", False),
    "GPT-2": (_gpt2, "c_proj", True),
    "GPT-NeoX": (_neox, "dense", False),
    "Llama GQA": (_llama, "o_proj", False),
    "TransformerLens": (_transformer_lens, None, None),
}


def head_outputs(model, layer: int, tokens) -> torch.Tensor:
    """[heads, B, T, d_model]: what each head of `layer` adds to the residual stream, z_h W_O,h."""
    att = attention_layers(model)[layer]
    module = model.get_submodule(att.prefix)
    seen = {}
    if "W_O" in module._parameters:  # TransformerLens 3: z [B, T, heads, d_head] at hook_z, W_O [heads, d_head, d]
        hook = module.hook_z.register_forward_hook(lambda m, i, o: seen.update(z=o))
        out = lambda z: torch.einsum("bthe,hed->hbtd", z, module.W_O)  # noqa: E731
    else:
        name = next(n for n in ("out", "c_proj", "dense", "o_proj", "o") if hasattr(module, n))
        proj = getattr(module, name)
        proj = getattr(proj, "_original_component", proj)  # the Linear a TransformerLens 4 bridge wraps
        hook = proj.register_forward_pre_hook(lambda m, i: seen.update(z=i[0]))
        # W_O,h: a Linear's columns of head h, a Conv1D's rows
        W = proj.weight if type(proj).__name__ == "Conv1D" else proj.weight.T  # [heads × d_head, d]
        out = lambda z: torch.einsum("bthe,hed->hbtd", z.unflatten(-1, (att.n_heads, -1)),  # noqa: E731
                                     W.unflatten(0, (att.n_heads, -1)))
    try:
        with torch.no_grad():
            model(tokens)
            return out(seen["z"])
    finally:
        hook.remove()


def _perturb(model, masks: dict, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].add_(scale * torch.randn(params[name].shape, generator=g) * m)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_heads_mask_holds_exactly_its_coordinates(layout):
    factory, _, _ = LAYOUTS[layout]
    torch.manual_seed(0)
    model = factory().eval()
    tokens = torch.randint(0, 32, (2, 8))
    layers = attention_layers(model)
    assert len(layers) == 2 and all(a.n_heads == 4 for a in layers)
    grouped = layout == "Llama GQA"  # 4 heads, 2 key/value groups: heads 0, 1 share k/v, as do 2, 3
    for layer in range(2):
        base = head_outputs(model, layer, tokens)
        name_of = {id(p): n for n, p in model.named_parameters()}  # a bridge reaches a tensor by two paths
        attention = {name_of[id(p)]: torch.ones_like(p, dtype=torch.bool)
                     for p in model.get_submodule(layers[layer].prefix).parameters()}
        for h in range(4):
            mask = head_masks(model, layers[layer], h)
            # the head's coordinates: only its output moves (and its group's, through the shared k/v)
            moved = factory_copy(model, mask)
            out = head_outputs(moved, layer, tokens)
            changed = [not torch.allclose(out[k], base[k], atol=1e-6) for k in range(4)]
            expected = [k // 2 == h // 2 if grouped else k == h for k in range(4)]
            assert changed == expected, (layout, layer, h, changed)
            # every other coordinate of the layer: the head's output stays exactly
            rest = {n: m & ~mask.get(n, torch.zeros_like(m)) for n, m in attention.items()}
            out = head_outputs(factory_copy(model, rest), layer, tokens)
            assert torch.equal(out[h], base[h]), (layout, layer, h)
            assert not torch.allclose(out, base)  # the rest did move something
        if not grouped:  # the heads split the layer's attention, less the output bias which belongs to none
            total = sum(count_params(model, c.params) for c in components(model, "heads") if c.layer == layer)
            module = model.get_submodule(layers[layer].prefix)
            proj = next((getattr(module, n) for n in ("out", "c_proj", "dense", "o_proj", "o") if hasattr(module, n)), None)
            bias = module.b_O if "b_O" in module._parameters else getattr(proj, "_original_component", proj).bias
            assert total == sum(m.numel() for m in attention.values()) - (0 if bias is None else bias.numel())


def factory_copy(model, masks):
    import copy
    moved = copy.deepcopy(model)
    _perturb(moved, masks)
    return moved


def test_grouped_query_heads_share_their_groups_keys_and_values():
    torch.manual_seed(0)
    model = _llama(kv=2)
    att = attention_layers(model)[0]
    m0, m1, m2 = (head_masks(model, att, h) for h in range(3))
    k = f"{att.prefix}.k_proj.weight"
    assert torch.equal(m0[k], m1[k]) and not (m0[k] & m2[k]).any()  # group 0 = heads 0, 1
    q = f"{att.prefix}.q_proj.weight"
    assert not (m0[q] & m1[q]).any()
    d_head = 4  # q rows, o columns, k and v rows of its group, their biases: 4 × 16 + 16 × 4 + 2 × 4 × 16 + 3 × 4
    assert count_params(model, components(model, "heads")[0].params) == 4 * 16 + 16 * 4 + 2 * d_head * 16 + 3 * d_head


def test_components_name_heads_and_layers_and_refuse_a_model_without_attention():
    torch.manual_seed(0)
    model = attn_only(vocab_size=32, n_ctx=16, d_model=16, n_heads=4)
    heads = components(model, "heads")
    assert [c.name for c in heads] == [f"L{layer}H{h}" for layer in range(2) for h in range(4)]
    assert str(heads[5].params) == "head 1 of layer 1 (blocks.1)"
    assert count_params(model, heads[0].params) == 4 * 3 * 16 + 16 * 4  # 3 × d_head rows of qkv, d_head columns of out
    layers = components(model, "layers")
    assert [(c.name, c.params) for c in layers] == [("L0", r"^blocks\.0\."), ("L1", r"^blocks\.1\.")]
    assert count_params(model, layers[1].params) == sum(p.numel() for p in model.blocks[1].parameters())
    with pytest.raises(InputError, match=r"^--refine heads: Sequential: no attention module of a known layout"):
        resolve(nn.Sequential(nn.Linear(3, 3)), ["heads"])
    with pytest.raises(InputError, match="L0 are given twice"):
        resolve(model, ["layers", ("L0", "embed")])
    assert math.isclose(len(resolve(model, ["heads", ("emb", "^embed")])), 9)
    assert resolve(model, [heads[5], ("emb", "^embed")])[0] is heads[5]  # a Component as it is (one named head)
    # the anchor's pre-LN blocks: a head stays its qkv rows and out columns, its layer takes the block's LayerNorm too
    anchor = attn_only(vocab_size=32, n_ctx=16, d_model=16, n_heads=4, block_ln=True, positions="shortformer")
    assert count_params(anchor, components(anchor, "heads")[0].params) == count_params(model, heads[0].params)
    assert count_params(anchor, components(anchor, "layers")[1].params) == \
        sum(p.numel() for p in model.blocks[1].parameters()) + 2 * 16
