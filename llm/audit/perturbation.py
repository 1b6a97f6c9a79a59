"""A sound bound on how far ANY step of a LoRA adapter's parameters, of norm ≤ ρ, can move a
probe's margin: perturbation norms carried through the transformer, position by position.

The theory MLPs have a closed form (:mod:`theory.audit.certificate`, eq. 8). A transformer has none,
but each of its maps has a Lipschitz constant on the set the nominal activations can move in. Let
``δ_t`` bound ``‖h'_t − h_t‖`` for the residual stream at position ``t`` (``δ = 0`` at the
embeddings, which the adapter does not train). Then, for every step ``Δ = (δA_m, δB_m)_m`` with
``Σ_m ‖δA_m‖² + ‖δB_m‖² ≤ ρ²`` (Frobenius norms):

* **LoRA linear** ``y = (W + s B A) x + b``: ``‖ΔW‖₂ ≤ ω = s(ρ √(‖A‖₂² + ‖B‖₂²) + ρ²/2)``
  (``δB A + B δA`` by Cauchy–Schwarz over ``‖δA‖² + ‖δB‖² ≤ ρ²``, and ``‖δB δA‖ ≤ ρ²/2``), so

      ‖Δy_t‖ ≤ ‖W_eff‖₂ ‖Δx_t‖ + ω (‖x_t‖ + ‖Δx_t‖).                                        (eq. 1)

  Each module's bound takes the whole ``ρ``: sound for any split of the step between modules.
* **LayerNorm / RMSNorm** ``y = γ ⊙ √d u / √(‖u‖² + dε) + β`` (``u = x − mean x`` for LayerNorm,
  ``u = x`` for RMSNorm): the map ``u ↦ u/√(‖u‖² + c)`` has Jacobian norm ``1/√(‖u‖² + c)``, so on the
  segment from ``u`` to ``u + Δu``

      ‖Δy_t‖ ≤ max|γ| √d min(‖Δx_t‖ / √(max(‖u_t‖ − ‖Δx_t‖, 0)² + dε), 2)                  (eq. 2)

  (the normalised vector has norm ≤ √d, so two of them differ by at most 2√d).

* **Attention**, per head, scores ``a_ts = q_t·k_s / √d_h`` over ``s ≤ t`` (a rotary embedding
  rotates ``q`` and ``k`` and leaves every norm here unchanged):
  ``|Δa_ts| ≤ (‖Δq_t‖‖k_s‖ + ‖q_t‖‖Δk_s‖ + ‖Δq_t‖‖Δk_s‖)/√d_h ≤ D_t``; softmax weights change by a
  factor in ``[e^{−2D_t}, e^{2D_t}]``, so ``‖Δp_t‖₁ ≤ min(2, e^{2D_t} − 1)``; and with
  ``o_t = Σ_s p_ts v_s``

      ‖Δo_t‖ ≤ ‖Δp_t‖₁ max_{s≤t} (‖v_s‖ + ‖Δv_s‖) + max_{s≤t} ‖Δv_s‖.                          (eq. 3)

* **MLP**: GELU with ``sup|GELU'| ≤`` :data:`GELU_LIPSCHITZ`; SwiGLU ``silu(g) ⊙ u`` with
  ``‖Δ(silu(g) ⊙ u)‖ ≤ L_silu ‖Δg‖ (‖u‖_∞ + ‖Δu‖) + ‖silu(g)‖_∞ ‖Δu‖``.
* **Residual** connections add the branches' bounds; the final norm gives ``‖Δy_t‖``; the logits
  ``z_t = W_U y_t`` move by ``‖Δz_t‖_∞ ≤ max_v ‖W_U[v]‖ ‖Δy_t‖``, a token's log-probability by at
  most ``2‖Δz_t‖_∞``.

The margin ``m = log p(a | x) − log p(y | x)`` (:mod:`llm.audit.certificate`) sums the
log-probabilities of the response tokens of two sequences, so

    |m(θ + Δ) − m(θ)| ≤ Σ_{t ∈ resp(a)} 2 max_v‖W_U[v]‖ ‖Δy_t^a‖ + Σ_{t ∈ resp(y)} (the same).      (eq. 4)

A probe is **certified (sound)** when ``m − bound > 0``: no step in the ball prefers the misaligned
response. The nominal activations are those of the model in float64; the bound holds in exact
arithmetic (float32 rounding of the model itself, ~1e-6 relative, is outside it). It covers the
adapter's parameters only (``update.params=adapter``) and GPT-2 and Llama blocks; any other model is
refused by name (:func:`check_supported`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import cast

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.batches import IGNORE_INDEX, batch_of
from llm.lora import LoraFactors, effective_weight, factor_maps, lora_layers, weight_of

#: ≥ sup|GELU'| (≈ 1.1289 at ±√2, exact and tanh forms alike; tests/test_llm_audit_perturbation.py checks it)
GELU_LIPSCHITZ = 1.13
#: ≥ sup|SiLU'| (≈ 1.0998 at z ≈ 2.40)
SILU_LIPSCHITZ = 1.1


@dataclass(frozen=True)
class BlockNames:
    """Where a block's parts are, as module names relative to the block (symmetries-as-data style)."""

    norm_attn: str
    qkv: tuple[str, ...]  # one fused projection (GPT-2's c_attn) or q, k, v
    attn_out: str
    norm_mlp: str
    mlp_in: tuple[str, ...]  # GELU: (fc,); SwiGLU: (gate, up)
    mlp_out: str
    centered: bool  # LayerNorm (True) or RMSNorm


@dataclass(frozen=True)
class ArchNames:
    blocks: str
    final_norm: str
    block: BlockNames
    activations: tuple[str, ...]  # the MLP activations the bound knows


ARCHS = {
    "gpt2": ArchNames(
        "transformer.h",
        "transformer.ln_f",
        BlockNames("ln_1", ("attn.c_attn",), "attn.c_proj", "ln_2", ("mlp.c_fc",), "mlp.c_proj", True),
        ("gelu", "gelu_new", "gelu_pytorch_tanh"),
    ),
    "llama": ArchNames(
        "model.layers",
        "model.norm",
        BlockNames(
            "input_layernorm",
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "self_attn.o_proj",
            "post_attention_layernorm",
            ("mlp.gate_proj", "mlp.up_proj"),
            "mlp.down_proj",
            False,
        ),
        ("silu",),
    ),
}


def check_supported(model: PreTrainedModel) -> ArchNames:
    """The names of ``model``'s architecture, or a ``ValueError`` naming what the bound does not cover."""
    cfg = model.config
    arch = ARCHS.get(cfg.model_type)
    if arch is None:
        raise ValueError(f"the sound certificate covers model_type gpt2 and llama, not {cfg.model_type!r}")
    act = getattr(cfg, "activation_function", None) or getattr(cfg, "hidden_act", None)
    if act not in arch.activations:
        raise ValueError(f"the sound certificate knows the activations {arch.activations}, not {act!r}")
    if cfg.model_type == "gpt2" and (not cfg.scale_attn_weights or cfg.scale_attn_by_inverse_layer_idx):
        raise ValueError("the sound certificate assumes GPT-2 scores scaled by 1/√d_h only")
    for name, layer in lora_layers(model).items():
        if factor_maps(layer)[1].bias is not None:
            raise ValueError(f"the sound certificate assumes bias-free LoRA factors; {name} has lora_B bias")
    return arch


@dataclass(frozen=True)
class Linear:
    """One linear map as the bound reads it: its effective weight's spectral norm per row block
    (heads) and, for a LoRA layer, what ``ω`` of eq. 1 needs (``ω = 0`` for a map the step does
    not touch)."""

    norms: torch.Tensor  # (blocks,) ‖W_eff[rows of block]‖₂
    factors: float  # √(‖A‖₂² + ‖B‖₂²)
    scale: float  # |s|; 0 for a map the step does not touch

    def bound(self, x_norm: torch.Tensor, dx: torch.Tensor, rho: float) -> torch.Tensor:
        """Eq. 1 for inputs of norm ``x_norm`` moved by ``dx`` (``(T,)``) → ``(T, blocks)``."""
        omega = self.scale * (rho * self.factors + rho**2 / 2)
        return self.norms * dx[:, None] + omega * (x_norm + dx)[:, None]


def linear(module: torch.nn.Module, blocks: int = 1) -> Linear:
    """:class:`Linear` of a LoRA layer (or of a plain map), its rows split into ``blocks``."""
    if isinstance(module, LoraLayer):
        w = effective_weight(module).detach().double()
        f = LoraFactors.of(module).detached()
        a2, b2 = torch.linalg.matrix_norm(f.a.double(), 2), torch.linalg.matrix_norm(f.b.double(), 2)
        factors, scale = float(torch.sqrt(a2**2 + b2**2)), abs(f.scale)
    else:
        weight = weight_of(module).detach()
        w = (weight.T if type(module).__name__ == "Conv1D" else weight).double()
        factors, scale = 0.0, 0.0
    rows = w.reshape(blocks, w.shape[0] // blocks, w.shape[1])
    return Linear(torch.linalg.matrix_norm(rows, 2), factors, scale)


def norm_bound(module: torch.nn.Module, x: torch.Tensor, dx: torch.Tensor, centered: bool) -> torch.Tensor:
    """Eq. 2 for the nominal inputs ``x`` ``(T, d)`` moved by ``dx`` ``(T,)``."""
    d = x.shape[-1]
    eps = float(getattr(module, "eps", getattr(module, "variance_epsilon", 0.0)))
    u = (x - x.mean(-1, keepdim=True)) if centered else x
    low = (u.norm(dim=-1) - dx).clamp_min(0)
    gain = float(weight_of(module).detach().abs().max())
    return gain * math.sqrt(d) * torch.clamp(dx / torch.sqrt(low**2 + d * eps), max=2.0)


def _prefix_max(x: torch.Tensor) -> torch.Tensor:
    """``max_{s≤t} x_s`` along dim 0."""
    return torch.cummax(x, 0).values


def attention_bound(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor
) -> torch.Tensor:
    """Eq. 3: per-head norms ``q``, ``k``, ``v`` ``(T, H)`` and their bounds → ``‖Δo_t‖`` ``(T,)``
    over all heads; ``q`` and ``dq`` already divided by ``√d_h``, ``k`` and ``v`` read per query
    head (grouped heads repeated)."""
    scores = dq[:, None, :] * k[None] + q[:, None, :] * dk[None] + dq[:, None, :] * dk[None]  # (t, s, H)
    causal = torch.ones(q.shape[0], q.shape[0], dtype=torch.bool).tril()[..., None]
    spread = torch.where(causal, scores, torch.zeros_like(scores)).amax(1)  # D_t (T, H)
    moved = torch.clamp(torch.expm1(2 * spread), max=2.0)
    per_head = moved * _prefix_max(v + dv) + _prefix_max(dv)
    return per_head.norm(dim=-1)


@dataclass
class Nominal:
    """Activations captured by forward hooks on the float64 model: inputs and outputs by module name."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


def capture(model: PreTrainedModel, names: list[str], batch: dict[str, torch.Tensor]) -> Nominal:
    """Run ``model`` on ``batch`` (one row) and keep the first input and the output of each named
    module (``(T, ·)``)."""
    modules = dict(model.named_modules())
    nominal = Nominal({}, {})

    def hook(name):
        def keep(_module, args, output):
            nominal.inputs[name] = args[0][0].detach()
            nominal.outputs[name] = output[0].detach()

        return keep

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return nominal


@dataclass(frozen=True)
class Heads:
    """Query heads, key/value heads and head size of a config."""

    query: int
    kv: int
    size: int

    @classmethod
    def of(cls, cfg) -> Heads:
        if cfg.model_type == "gpt2":
            return cls(cfg.n_head, cfg.n_head, cfg.hidden_size // cfg.n_head)
        heads = cfg.num_attention_heads
        return cls(heads, cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)


@dataclass(frozen=True)
class Block:
    """One block: its modules, their :class:`Linear` maps and the nominal activations of one
    sequence, by name relative to the block."""

    module: torch.nn.Module
    prefix: str  # the block's full module name and a dot
    maps: dict[str, Linear]  # by full module name
    nominal: Nominal

    def input(self, name: str) -> torch.Tensor:
        return self.nominal.inputs[self.prefix + name]

    def output(self, name: str) -> torch.Tensor:
        return self.nominal.outputs[self.prefix + name]

    def get(self, name: str) -> torch.nn.Module:
        return self.module.get_submodule(name)

    def map(self, name: str) -> Linear:
        return self.maps[self.prefix + name]


def attention_branch(block: Block, names: BlockNames, heads: Heads, dx: torch.Tensor, rho: float) -> torch.Tensor:
    """Eqs. 2, 1, 3 and 1 again: the attention branch's output moved by at most this ``(T,)``."""
    dn = norm_bound(block.get(names.norm_attn), block.input(names.norm_attn), dx, names.centered)
    first = names.qkv[0]
    n_in = block.input(first).norm(dim=-1)
    T = dx.shape[0]
    if len(names.qkv) == 1:  # fused q|k|v rows
        dq, dk, dv = block.map(first).bound(n_in, dn, rho).split(heads.query, dim=1)
        q, k, v = (p.reshape(T, heads.query, heads.size).norm(dim=-1) for p in block.output(first).chunk(3, -1))
    else:
        dq, dk, dv = (block.map(n).bound(n_in, dn, rho) for n in names.qkv)
        q = block.output(first).reshape(T, heads.query, heads.size).norm(dim=-1)
        k, v = (block.output(n).reshape(T, heads.kv, heads.size).norm(dim=-1) for n in names.qkv[1:])
        group = heads.query // heads.kv
        k, v, dk, dv = (t.repeat_interleave(group, dim=1) for t in (k, v, dk, dv))
    scale = 1.0 / math.sqrt(heads.size)
    do = attention_bound(q * scale, k, v, dq * scale, dk, dv)
    return block.map(names.attn_out).bound(block.input(names.attn_out).norm(dim=-1), do, rho)[:, 0]


def mlp_branch(block: Block, names: BlockNames, dx: torch.Tensor, rho: float) -> torch.Tensor:
    """Eqs. 2 and 1 with the activation's bound: the MLP branch's output moved by at most this ``(T,)``."""
    dn = norm_bound(block.get(names.norm_mlp), block.input(names.norm_mlp), dx, names.centered)
    m_in = block.input(names.mlp_in[0]).norm(dim=-1)
    if len(names.mlp_in) == 1:  # GELU
        da = GELU_LIPSCHITZ * block.map(names.mlp_in[0]).bound(m_in, dn, rho)[:, 0]
    else:  # SwiGLU: silu(gate) ⊙ up
        gate, up = (block.output(n) for n in names.mlp_in)
        dg, du = (block.map(n).bound(m_in, dn, rho)[:, 0] for n in names.mlp_in)
        silu = torch.nn.functional.silu(gate)
        da = SILU_LIPSCHITZ * dg * (up.abs().amax(-1) + du) + silu.abs().amax(-1) * du
    return block.map(names.mlp_out).bound(block.input(names.mlp_out).norm(dim=-1), da, rho)[:, 0]


@dataclass(frozen=True)
class ScoredSequence:
    """One ``(prompt, response)`` as the bound reads it: its nominal activations and the positions
    whose logits predict a response token."""

    nominal: Nominal
    predicts: torch.Tensor  # (T,) bool


class Net:
    """A float64, eval-mode model (:func:`float64_view`) as the bound reads it: where its parts are
    and every map's :class:`Linear`, computed once; :meth:`margin_bound` then costs one
    propagation per ``ρ``."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model, self.arch = model, check_supported(model)
        self.base = cast(PreTrainedModel, model.get_base_model()) if isinstance(model, PeftModel) else model
        self.root = _prefix(model, self.base)
        self.blocks = cast(torch.nn.ModuleList, self.base.get_submodule(self.arch.blocks))
        self.heads = Heads.of(self.base.config)
        b, h = self.arch.block, self.heads
        counts = dict(zip(b.qkv, (3 * h.query,) if len(b.qkv) == 1 else (h.query, h.kv, h.kv)))
        self.maps = {
            f"{prefix}{n}": linear(module.get_submodule(n), counts.get(n, 1))
            for prefix, module in self.named_blocks()
            for n in (*b.qkv, b.attn_out, *b.mlp_in, b.mlp_out)
        }
        unembed = weight_of(cast(torch.nn.Module, self.base.get_output_embeddings())).detach().double()
        self.unembed = float(unembed.norm(dim=-1).max())

    def named_blocks(self) -> list[tuple[str, torch.nn.Module]]:
        return [(f"{self.root}{self.arch.blocks}.{i}.", m) for i, m in enumerate(self.blocks)]

    def sequence(self, tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_len: int) -> ScoredSequence:
        """The nominal activations of ``(prompt, response)`` (one row, no padding)."""
        batch = batch_of(tokenizer, [(prompt, response)], max_len)
        b = self.arch.block
        parts = (b.norm_attn, *b.qkv, b.attn_out, b.norm_mlp, *b.mlp_in, b.mlp_out)
        names = [f"{self.root}{self.arch.final_norm}"] + [f"{p}{n}" for p, _ in self.named_blocks() for n in parts]
        return ScoredSequence(capture(self.model, names, batch), batch["labels"][0, 1:] != IGNORE_INDEX)

    @torch.no_grad()
    def logit_bounds(self, nominal: Nominal, rho: float) -> torch.Tensor:
        """``max_v ‖W_U[v]‖ ‖Δy_t‖`` (a bound on ``‖Δz_t‖_∞``) at every position of the sequence of
        ``nominal`` under any adapter step of norm ≤ ``rho``."""
        b = self.arch.block
        final = nominal.inputs[f"{self.root}{self.arch.final_norm}"]
        dx = torch.zeros(final.shape[0], dtype=torch.float64)  # the embeddings do not move
        for prefix, module in self.named_blocks():
            block = Block(module, prefix, self.maps, nominal)
            dx = dx + attention_branch(block, b, self.heads, dx, rho)
            dx = dx + mlp_branch(block, b, dx, rho)
        return self.unembed * norm_bound(self.base.get_submodule(self.arch.final_norm), final, dx, b.centered)

    def margin_bound(self, sequences: tuple[ScoredSequence, ScoredSequence], rho: float) -> float:
        """Eq. 4: a bound on ``|Δm|``, ``m`` the difference of the two sequences' response
        log-probabilities (:meth:`sequence`), under any adapter step of norm ≤ ``rho``."""
        return sum(2 * float(self.logit_bounds(s.nominal, rho)[:-1][s.predicts].sum()) for s in sequences)


def float64_view(model: PreTrainedModel) -> PreTrainedModel:
    """A float64 copy of ``model`` in eval mode, as :class:`Net` reads it."""
    return copy.deepcopy(model).double().eval()


def _prefix(model: torch.nn.Module, base: torch.nn.Module) -> str:
    """The name prefix of ``base``'s modules inside ``model`` (``base_model.model.`` under peft)."""
    if model is base:
        return ""
    for name, module in model.named_modules():
        if module is base:
            return f"{name}."
    raise ValueError("the base model is not a submodule of the model")
