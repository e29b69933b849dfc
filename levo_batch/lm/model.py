"""The LeVo 2 language model in MLX: two LLaMA stacks over a shared conditioning prefix.

Parameter names are the official checkpoint keys minus `audiolm.`, so weights load by name. The layout
follows upstream's `LmModel` (v2): codebook 0 runs through `transformer`; codebooks 1.. are embedded
together, fused with the *final-normed* output of the first stack by a small MLP, and run through
`transformer2`. Upstream passes no attention mask, so the prefix is causal like everything else and its
padding positions are ordinary tokens.

Two entry points share the blocks: `prefill` (a whole sequence from position 0, returning the keys and
values for a cache; `__call__` is upstream's teacher-forced forward on top of it) and `step` (one token
per row with per-row positions, reading and writing preallocated caches).

For generation, `LeVoLM.fuse_projections` merges each block's q/k/v and gate/up projections into one
matmul each after loading (names stay upstream's until then). Decoding one token per row is bound by
kernel launches at small batches, and two fewer matmuls per block saved ~30% of the stack's time on an H100.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from levo_batch.lm.cache import Cache, StepContext
from levo_batch.lm.conditioners import ConditionProvider
from levo_batch.lm.config import LMConfig

RMS_EPS = 1e-5


@partial(mx.compile, shapeless=True)
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """One fused kernel instead of three per MLP, also in prefill (decoding steps are compiled whole)."""
    return nn.silu(gate) * up


def concat_outputs(parts: list[nn.Module]) -> nn.Module:
    """One linear layer computing `parts` side by side, parameters stacked along the output axis.

    Works unchanged for `nn.QuantizedLinear` (packed weight, scales, biases): quantisation groups run along the
    input axis, so stacking output rows keeps every group intact and the result is exact.
    """
    fused = copy.copy(parts[0])
    for name in parts[0]:
        fused[name] = mx.concatenate([p[name] for p in parts], axis=0)
    return fused


def add_projection(residual: mx.array, layer: nn.Module, x: mx.array) -> mx.array:
    """`residual + layer(x)`. For float weights the add rides in the GEMM (`addmm`): one kernel instead of two
    per residual branch, which counts when decoding is bound by kernel launches."""
    if not isinstance(layer, nn.Linear) or "bias" in layer:
        return residual + layer(x)
    lead = x.shape[:-1]
    out = mx.addmm(residual.reshape(-1, residual.shape[-1]), x.reshape(-1, x.shape[-1]), layer.weight.T)
    return out.reshape(*lead, -1)


class Attention(nn.Module):
    """Multi-head attention without biases; RoPE in the non-interleaved (`rotate_half`) form."""

    def __init__(self, dim: int, num_heads: int, rope_theta: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def fuse(self) -> None:
        if "qkv_proj" not in self:
            self.qkv_proj = concat_outputs([self.q_proj, self.k_proj, self.v_proj])
            del self["q_proj"], self["k_proj"], self["v_proj"]

    def _qkv(self, x: mx.array, offset) -> tuple[mx.array, mx.array, mx.array]:
        """Heads-major q, k, v; one RoPE kernel rotates q and k together (they share positions)."""
        n, s, _ = x.shape
        h = self.num_heads
        if "qkv_proj" in self:
            qkv = self.qkv_proj(x)
        else:
            qkv = mx.concatenate([self.q_proj(x), self.k_proj(x), self.v_proj(x)], axis=-1)
        if s == 1:
            # Decoding: a plain reshape already is heads-major and keeps natural strides; a transpose would leave
            # the size-1 axis its old stride, which MLX CUDA's matmul reads as non-contiguous and copies.
            qkv = qkv.reshape(n, 3 * h, 1, self.head_dim)
        else:
            qkv = qkv.reshape(n, s, 3 * h, self.head_dim).transpose(0, 2, 1, 3)
        qk = mx.fast.rope(qkv[:, : 2 * h], self.head_dim, traditional=False, base=self.rope_theta, scale=1.0,
                          offset=offset)
        return qk[:, :h], qk[:, h:], qkv[:, 2 * h :]

    def _out(self, residual: mx.array, o: mx.array) -> mx.array:
        n, _, s, _ = o.shape
        o = o.reshape(n, 1, -1) if s == 1 else o.transpose(0, 2, 1, 3).reshape(n, s, -1)
        return add_projection(residual, self.o_proj, o)

    def prefill(self, residual: mx.array, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """`residual` plus attention over `x` from position 0, and the keys and values."""
        q, k, v = self._qkv(x, 0)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask="causal")
        return self._out(residual, o), k, v

    def step(self, residual: mx.array, x: mx.array, cache: Cache, ctx: StepContext) -> mx.array:
        q, k, v = self._qkv(x, ctx.positions)
        return self._out(residual, cache.attend(q, k, v, ctx, self.scale))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def fuse(self) -> None:
        if "gate_up_proj" not in self:
            self.gate_up_proj = concat_outputs([self.gate_proj, self.up_proj])
            del self["gate_proj"], self["up_proj"]

    def __call__(self, residual: mx.array, x: mx.array) -> mx.array:
        """`residual` plus the MLP of `x`."""
        if "gate_up_proj" in self:
            gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return add_projection(residual, self.down_proj, swiglu(gate, up))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig, rope_theta: float):
        super().__init__()
        self.self_attn = Attention(cfg.dim, cfg.num_heads, rope_theta)
        self.mlp = MLP(cfg.dim, cfg.intermediate_size)
        self.input_layernorm = nn.RMSNorm(cfg.dim, eps=RMS_EPS)
        self.post_attention_layernorm = nn.RMSNorm(cfg.dim, eps=RMS_EPS)

    def prefill(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        h, k, v = self.self_attn.prefill(x, self.input_layernorm(x))
        return self.mlp(h, self.post_attention_layernorm(h)), k, v

    def step(self, x: mx.array, cache: Cache, ctx: StepContext) -> mx.array:
        h = self.self_attn.step(x, self.input_layernorm(x), cache, ctx)
        return self.mlp(h, self.post_attention_layernorm(h))


class LlamaBody(nn.Module):
    """Upstream's `LlamaModel` fed with embeddings (its own `embed_tokens` is never used)."""

    def __init__(self, cfg: LMConfig, num_layers: int, rope_theta: float):
        super().__init__()
        self.layers = [Block(cfg, rope_theta) for _ in range(num_layers)]
        self.norm = nn.RMSNorm(cfg.dim, eps=RMS_EPS)

    def prefill(self, x: mx.array) -> tuple[mx.array, list[tuple[mx.array, mx.array]]]:
        kv = []
        for layer in self.layers:
            x, k, v = layer.prefill(x)
            kv.append((k, v))
        return self.norm(x), kv

    def step(self, x: mx.array, caches: list[Cache], ctx: StepContext) -> mx.array:
        for layer, cache in zip(self.layers, caches):
            x = layer.step(x, cache, ctx)
        return self.norm(x)


class Transformer(nn.Module):
    """Keeps upstream's nesting (`transformer.model.*`, `transformer.lm_head`) so keys map one to one."""

    def __init__(self, cfg: LMConfig, num_layers: int, rope_theta: float, head: bool):
        super().__init__()
        self.model = LlamaBody(cfg, num_layers, rope_theta)
        if head:
            self.lm_head = nn.Linear(cfg.dim, cfg.code_size + 1, bias=False)


class LeVoLM(nn.Module):
    """Conditioning tables plus the two-stack audio LM; logits have `code_size + 1` entries (EOS included)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        rows = cfg.code_size + 2
        self.condition_provider = ConditionProvider(cfg)
        self.emb = [nn.Embedding(rows, cfg.dim)]
        # Upstream allocates one table per codebook but never reads the first; an empty module keeps the
        # indices (and so the checkpoint names `layer2_emb.1`, `.2`) without a dead parameter.
        self.layer2_emb = [nn.Module()] + [nn.Embedding(rows, cfg.dim) for _ in range(1, cfg.code_depth)]
        self.transformer = Transformer(cfg, cfg.num_layers, cfg.rope_theta, head=True)
        self.mlp = [nn.Linear(2 * cfg.dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim)]
        self.transformer2 = Transformer(cfg, cfg.num_layers_sub, cfg.rope_theta_sub, head=False)
        self.linears = [nn.Linear(cfg.dim, cfg.code_size + 1, bias=False) for _ in range(1, cfg.code_depth)]

    def fuse_projections(self) -> "LeVoLM":
        """Merge every block's q/k/v and gate/up projections (see the module docstring); idempotent.

        Call it after loading, on models built for generation: the fused parameters no longer carry upstream's
        names, so save or convert the model before fusing. Evaluates block by block, so at most one block's
        weights exist twice at a time, and hands the replaced buffers back to the device at the end (MLX would
        keep them cached: two thirds of the model in device memory that large batches need for their caches).
        """
        for body in (self.transformer.model, self.transformer2.model):
            for layer in body.layers:
                layer.self_attn.fuse()
                layer.mlp.fuse()
                mx.eval(layer.parameters())
        mx.clear_cache()
        return self

    def embed_codes(self, codes: mx.array) -> tuple[mx.array, mx.array]:
        """Pattern columns `[N, code_depth, S]` -> the two streams' inputs `[N, S, D]`."""
        x1 = self.emb[0](codes[:, 0])
        x2 = self.layer2_emb[1](codes[:, 1])
        for q in range(2, self.cfg.code_depth):
            x2 = x2 + self.layer2_emb[q](codes[:, q])
        return x1, x2

    def _fuse(self, x2: mx.array, h1: mx.array) -> mx.array:
        lin1, act, lin2 = self.mlp
        return lin2(act(lin1(mx.concatenate([x2, h1], axis=-1))))

    def heads(self, h1: mx.array, h2: mx.array) -> mx.array:
        """Final hidden states `[N, S, D]` -> logits `[N, code_depth, S, code_size + 1]`."""
        out = [self.transformer.lm_head(h1)] + [lin(h2) for lin in self.linears]
        return mx.stack(out, axis=1)

    def prefill(self, stream1: mx.array, stream2: mx.array):
        """Run whole sequences from position 0.

        Returns `(h1, h2, kv1, kv2)`: the final-normed hidden states of both stacks and each layer's
        `(keys, values)` `[N, heads, S, head_dim]`, ready for `KVCache.insert`.
        """
        h1, kv1 = self.transformer.model.prefill(stream1)
        h2, kv2 = self.transformer2.model.prefill(self._fuse(stream2, h1))
        return h1, h2, kv1, kv2

    def __call__(self, prefix1: mx.array, prefix2: mx.array, codes: mx.array) -> mx.array:
        """Teacher-forced logits `[N, code_depth, S, V]` of pattern columns `codes` `[N, code_depth, S]`."""
        x1, x2 = self.embed_codes(codes)
        s = codes.shape[-1]
        h1, h2, _, _ = self.prefill(
            mx.concatenate([prefix1, x1.astype(prefix1.dtype)], axis=1),
            mx.concatenate([prefix2, x2.astype(prefix2.dtype)], axis=1),
        )
        return self.heads(h1[:, -s:], h2[:, -s:])

    def step(self, columns: mx.array, caches1: list[Cache], caches2: list[Cache], ctx: StepContext) -> mx.array:
        """One pattern column per row `[R, code_depth]` -> next-column logits `[R, code_depth, V]`."""
        x1, x2 = self.embed_codes(columns[:, :, None])
        h1 = self.transformer.model.step(x1, caches1, ctx)
        h2 = self.transformer2.model.step(self._fuse(x2, h1), caches2, ctx)
        return self.heads(h1, h2)[:, :, 0]
