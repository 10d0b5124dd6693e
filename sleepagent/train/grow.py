"""Grow a trained hybrid into a larger one that starts out computing (nearly) the same function.

Fast-weight capacity is what a long document needs (a GDN head stores its facts in one K x V
matrix), and it is the cheapest thing to add: the model's per-token cost barely moves. Training a
larger model from scratch would throw away what the small one learned (reading through a paging
tool, the question format, the lookup circuit), so :func:`grow` copies every trained weight into
the larger shapes and sets the new ones so that the grown model's output is unchanged at first:

- **new GDN heads** (``gdn_heads`` and/or ``gdn_v_heads`` larger): fully initialised, except that
  their columns of the output projection are zero, so they add nothing until training grows
  those columns (the gradient of a zero column is the head's output, which is not zero, so the
  heads learn from the first step). Their decay gates copy the slowest-forgetting trained head:
  new capacity is meant to keep facts across windows. Exact.
- **wider value dims** (``gdn_head_v_dim``): the new value rows are zero, so the new state columns
  stay zero and the per-head RMSNorm over the wider output is rescaled by ``sqrt(V / V')``; the
  new output-projection columns are small and random, which gives those columns a gradient.
  Exact up to the norm's epsilon.
- **wider key dims** (``gdn_head_k_dim``): exactly-zero new key and query dims would be a saddle
  (their gradient is zero while the state's new rows are zero), so their input-projection rows
  start small (``key_scale`` times the usual init) instead. Approximate: the keys' L2 norm moves
  by about ``key_scale**2``.
- **new GDN blocks** (``insert_gdn``): a block whose mixer output projection and MLP down
  projection are zero is the identity on the residual stream. Exact.

The grown model is a new :class:`~sleepagent.model.SleepHybridLM`; the source is not modified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch

from ..errors import ConfigError
from ..model import SleepHybridConfig, SleepHybridLM
from ..model.hybrid import Block
from ..model.layers import GatedDeltaNet

__all__ = ["grow", "grown_config"]


def grown_config(
    cfg: SleepHybridConfig,
    *,
    gdn_heads: int | None = None,
    gdn_v_heads: int | None = None,
    gdn_head_k_dim: int | None = None,
    gdn_head_v_dim: int | None = None,
    insert_gdn: Sequence[int] = (),
) -> SleepHybridConfig:
    """``cfg`` with larger GDN layers and new GDN blocks inserted at the positions ``insert_gdn``
    (indices into the new stack, in increasing order)."""
    H, HV, K, V = cfg.gdn_heads, cfg.v_heads, cfg.head_k_dim, cfg.head_v_dim
    H2 = gdn_heads or H
    HV2 = gdn_v_heads or (HV * H2 // H)
    K2, V2 = gdn_head_k_dim or K, gdn_head_v_dim or V
    if H2 < H or HV2 < HV or K2 < K or V2 < V:
        raise ConfigError(f"grow only grows: heads {H}->{H2}, value heads {HV}->{HV2}, K {K}->{K2}, V {V}->{V2}")
    if HV2 % H2 or (HV2 // H2) % (HV // H):
        raise ConfigError(f"value heads per key head must stay a multiple of {HV // H}: {HV2} value heads over "
                          f"{H2} key heads")
    types = list(cfg.layer_types or ())
    for pos in sorted(insert_gdn):
        if not 0 <= pos <= len(types):
            raise ConfigError(f"insert_gdn position {pos} lies outside the {len(types) + 1} places of the stack")
        types.insert(pos, "gdn")
    if cfg.loop_layers is not None and insert_gdn:
        raise ConfigError("insert_gdn with loop_layers is not supported (the looped span would move)")
    data = cfg.model_dump()
    data.update(gdn_heads=H2, gdn_v_heads=HV2, gdn_head_k_dim=K2, gdn_head_v_dim=V2,
                n_layers=len(types), layer_types=tuple(types))
    return SleepHybridConfig(**data)


@torch.no_grad()
def grow(
    model: SleepHybridLM,
    *,
    gdn_heads: int | None = None,
    gdn_v_heads: int | None = None,
    gdn_head_k_dim: int | None = None,
    gdn_head_v_dim: int | None = None,
    insert_gdn: Sequence[int] = (),
    key_scale: float = 0.05,
    seed: int = 0,
) -> SleepHybridLM:
    """A larger copy of ``model`` (see the module docstring for what each argument adds)."""
    cfg = model.config
    new_cfg = grown_config(cfg, gdn_heads=gdn_heads, gdn_v_heads=gdn_v_heads, gdn_head_k_dim=gdn_head_k_dim,
                           gdn_head_v_dim=gdn_head_v_dim, insert_gdn=insert_gdn)
    torch.manual_seed(seed)
    big = SleepHybridLM(new_cfg).to(device=model.device, dtype=model.dtype)
    big.tok_emb.weight.copy_(model.tok_emb.weight)
    big.lm_head.weight.copy_(model.lm_head.weight)
    big.norm.weight.copy_(model.norm.weight)
    inserted = set(insert_gdn)
    # every layer of a SleepHybridLM is a Block, and a "gdn" block's mixer a GatedDeltaNet (an
    # nn.ModuleList yields its items as Module, and Block.mixer is declared as one)
    old = iter(cast("list[Block]", list(model.layers)))
    for i, block in enumerate(cast("list[Block]", list(big.layers))):
        if i in inserted:  # a new block: the identity on the residual stream until it learns
            mixer = cast(GatedDeltaNet, block.mixer)
            mixer.out.weight.zero_()
            block.mlp.down.weight.zero_()
            _slow_gates(mixer, None)
            continue
        src = next(old)
        block.norm1.weight.copy_(src.norm1.weight)
        block.norm2.weight.copy_(src.norm2.weight)
        block.mlp.load_state_dict(src.mlp.state_dict())
        if src.kind == "gdn":
            _grow_gdn(cast(GatedDeltaNet, src.mixer), cast(GatedDeltaNet, block.mixer), key_scale)
        else:
            block.mixer.load_state_dict(src.mixer.state_dict())
    return big


def _grow_gdn(src: GatedDeltaNet, dst: GatedDeltaNet, key_scale: float) -> None:
    H, HV, K, V = src.H, src.HV, src.K, src.V
    H2, HV2, K2, V2 = dst.H, dst.HV, dst.K, dst.V
    # value head j reads key head j // (HV / H): with more value heads per key head, the old ones
    # spread out so that each keeps reading the key head it read before
    r, r2 = HV // H, HV2 // H2
    slots = [(j // r) * r2 + j % r for j in range(HV)]
    new_v = [j for j in range(HV2) if j not in slots]
    d = src.in_proj.weight.shape[1]
    W = src.in_proj.weight
    q, k, v, a, b, gate = W.split([H * K, H * K, HV * V, HV, HV, HV * V])
    conv = src.conv_weight
    cq, ck, cv = conv.split([H * K, H * K, HV * V])

    W2 = dst.in_proj.weight  # fresh init: new heads keep theirs
    q2, k2, v2, a2, b2, gate2 = W2.split([H2 * K2, H2 * K2, HV2 * V2, HV2, HV2, HV2 * V2])
    conv2 = dst.conv_weight
    cq2, ck2, cv2 = conv2.split([H2 * K2, H2 * K2, HV2 * V2])

    for old, new, cold, cnew in ((q, q2, cq, cq2), (k, k2, ck, ck2)):
        old, new = old.view(H, K, d), new.view(H2, K2, d)
        cold, cnew = cold.view(H, K, -1), cnew.view(H2, K2, -1)
        new[:H, K:] *= key_scale  # wider keys: small, not zero (a zero key dim is a saddle)
        new[:H, :K] = old
        cnew[:H, :K] = cold
    v2v, cv2v = v2.view(HV2, V2, d), cv2.view(HV2, V2, -1)
    g2v = gate2.view(HV2, V2, d)
    for j, s in enumerate(slots):
        v2v[s, :V] = v.view(HV, V, d)[j]
        v2v[s, V:] = 0.0  # wider values: the state's new columns stay zero
        cv2v[s, :V] = cv.view(HV, V, -1)[j]
        g2v[s, :V] = gate.view(HV, V, d)[j]
        a2[s], b2[s] = a[j], b[j]
        dst.A_log[s], dst.dt_bias[s] = src.A_log[j], src.dt_bias[j]
    _slow_gates(dst, src, new_v)
    # the per-head RMSNorm over V2 dims, V of them as before and the rest zero: rescale
    dst.o_norm.weight[:V] = src.o_norm.weight * math.sqrt(V / V2)
    dst.o_norm.weight[V:] = math.sqrt(V / V2)
    out, out2 = src.out.weight.view(-1, HV, V), dst.out.weight.view(-1, HV2, V2)
    std = out2.std().item()
    out2.zero_()
    for j, s in enumerate(slots):
        out2[:, s, :V] = out[:, j]
        out2[:, s, V:] = torch.randn_like(out2[:, s, V:]) * std * key_scale
    # new value heads: their own output columns stay zero (the head is trained, not yet heard)


def _slow_gates(dst: GatedDeltaNet, src: GatedDeltaNet | None, heads: Sequence[int] | None = None) -> None:
    """Give ``heads`` of ``dst`` (default all) the decay gates of ``src``'s slowest-forgetting
    head, or a slow decay (about 0.97 of a write kept over 256 tokens) with no source."""
    heads = range(dst.HV) if heads is None else heads
    if src is None:
        A_log, dt_bias = torch.tensor(0.0), torch.tensor(math.log(math.expm1(1e-4)))
    else:
        decay = src.A_log.exp() * torch.nn.functional.softplus(src.dt_bias)
        j = int(decay.argmin())
        A_log, dt_bias = src.A_log[j], src.dt_bias[j]
    for s in heads:
        dst.A_log[s], dst.dt_bias[s] = A_log, dt_bias
