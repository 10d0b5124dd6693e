"""SleepHybridConfig: the shape of a sleep-enabled hybrid LM, validated where it enters.

A bad value fails here, at construction, with a :class:`~sleepagent.errors.ConfigError` that names
the field, instead of as a shape error deep inside torch on the first forward pass.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

__all__ = ["LEGACY_LOOPS_KEY", "LayerType", "SleepHybridConfig"]

LayerType = Literal["gdn", "attn"]
# the name N had in config JSON before it was ``loops``: read, and kept in the fingerprinted form
LEGACY_LOOPS_KEY = "sleep_loops"


class SleepHybridConfig(BaseModel):
    """Architecture and wake/sleep settings of a :class:`~sleepagent.model.SleepHybridLM`.

    The block stack is ``n_layers`` pre-norm residual blocks; block i's token mixer is
    ``layer_types[i]``: ``"gdn"`` (Gated DeltaNet, fast weights ``[HV, K, V]`` per sequence) or
    ``"attn"`` (causal softmax attention over the current window only). Each block ends in a
    SwiGLU MLP.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(gt=0)
    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    layer_types: tuple[LayerType, ...] | None = Field(
        default=None, description='per-layer mixer, "gdn" or "attn"; default alternates gdn/attn'
    )
    # attention
    n_heads: int = Field(default=4, gt=0, description="attention query heads")
    n_kv_heads: int | None = Field(default=None, gt=0, description="attention KV heads (GQA)")
    rope_theta: float = Field(default=10_000.0, gt=0)
    # gated deltanet
    gdn_heads: int = Field(default=4, gt=0, description="GDN query/key heads H")
    gdn_v_heads: int | None = Field(default=None, gt=0, description="GDN value heads HV (multiple of H)")
    gdn_head_k_dim: int | None = Field(default=None, gt=0, description="K; default d_model // gdn_heads")
    gdn_head_v_dim: int | None = Field(default=None, gt=0, description="V; default K")
    conv_size: int = Field(default=4, ge=1, description="short causal depthwise conv width")
    chunk_size: int = Field(default=64, gt=0, description="chunk length of the torch GDN kernel")
    # MLP / norms / embeddings
    d_ff: int | None = Field(default=None, gt=0, description="SwiGLU hidden size; default ≈ 8/3·d_model")
    norm_eps: float = Field(default=1e-6, gt=0)
    tie_embeddings: bool = True
    init_std: float = Field(default=0.02, gt=0)
    # wake / sleep
    window: int = Field(gt=0, description="W: max tokens in the attention KV window")
    evict: Literal["hard", "sliding"] = "hard"
    keep: int = Field(default=0, ge=0, description="tokens kept in the window after a sliding eviction")
    loops: int = Field(default=1, ge=1, description="N: default consolidation passes")
    loop_layers: tuple[int, int] | None = Field(
        default=None, description="(start, stop) span of blocks looped during sleep; default all"
    )

    def __init__(self, **data: Any) -> None:
        # Re-raise pydantic's error as our typed one so callers can catch ConfigError, while the
        # message still lists every offending field by name.
        try:
            super().__init__(**data)
        except ValidationError as e:
            errors = e.errors()
            field = ".".join(str(p) for p in errors[0]["loc"]) if errors and errors[0]["loc"] else None
            lines = []
            for err in errors:
                loc = ".".join(str(p) for p in err["loc"]) or "config"
                lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
            raise ConfigError("invalid SleepHybridConfig: " + "; ".join(lines), field=field) from None

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        # Checkpoints written before N was called ``loops`` everywhere (the shipped ones, and
        # runs still training) store it as "sleep_loops"; they load unchanged.
        if isinstance(data, dict) and LEGACY_LOOPS_KEY in data:
            data = dict(data)
            old = data.pop(LEGACY_LOOPS_KEY)
            if data.setdefault("loops", old) != old:
                raise ValueError(f"loops={data['loops']} and {LEGACY_LOOPS_KEY}={old} disagree (one name for N)")
        return data

    @model_validator(mode="after")
    def _check(self) -> SleepHybridConfig:
        if self.layer_types is None:
            object.__setattr__(
                self, "layer_types", tuple("gdn" if i % 2 == 0 else "attn" for i in range(self.n_layers))
            )
        assert self.layer_types is not None
        if len(self.layer_types) != self.n_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but n_layers is {self.n_layers}"
            )
        if "attn" in self.layer_types and self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_kv_heads={kv} does not divide n_heads={self.n_heads}")
        if self.gdn_head_k_dim is None and self.d_model % self.gdn_heads:
            raise ValueError(
                f"gdn_heads={self.gdn_heads} does not divide d_model={self.d_model} (or set gdn_head_k_dim)"
            )
        hv = self.gdn_v_heads or self.gdn_heads
        if hv % self.gdn_heads:
            raise ValueError(f"gdn_v_heads={hv} must be a multiple of gdn_heads={self.gdn_heads}")
        if self.evict == "sliding":
            if self.keep >= self.window:
                raise ValueError(f"keep={self.keep} must be smaller than window={self.window}")
        elif self.keep:
            raise ValueError(f"keep={self.keep} only applies to evict='sliding' (evict is 'hard')")
        if self.loop_layers is not None:
            start, stop = self.loop_layers
            if not 0 <= start < stop <= self.n_layers:
                raise ValueError(
                    f"loop_layers={self.loop_layers} must satisfy 0 <= start < stop <= n_layers={self.n_layers}"
                )
        return self

    # --- derived sizes (one place, so layers and states agree) ---------------------------------

    @property
    def attn_kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def attn_head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def head_k_dim(self) -> int:
        return self.gdn_head_k_dim or self.d_model // self.gdn_heads

    @property
    def head_v_dim(self) -> int:
        return self.gdn_head_v_dim or self.head_k_dim

    @property
    def v_heads(self) -> int:
        return self.gdn_v_heads or self.gdn_heads

    @property
    def mlp_hidden(self) -> int:
        # 8/3·d keeps SwiGLU's parameter count equal to a 4·d GELU MLP; round up to a multiple of 8.
        return self.d_ff or (int(8 * self.d_model / 3) + 7) // 8 * 8

    @property
    def conv_dim(self) -> int:
        """Channels of the GDN short conv (q, k and v concatenated)."""
        return 2 * self.gdn_heads * self.head_k_dim + self.v_heads * self.head_v_dim

    @property
    def span(self) -> tuple[int, int]:
        """The looped block span, ``(0, n_layers)`` when the whole stack loops."""
        return self.loop_layers or (0, self.n_layers)

    @property
    def gdn_layers(self) -> list[int]:
        assert self.layer_types is not None
        return [i for i, t in enumerate(self.layer_types) if t == "gdn"]

    @property
    def attn_layers(self) -> list[int]:
        assert self.layer_types is not None
        return [i for i, t in enumerate(self.layer_types) if t == "attn"]

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): what ``config.json`` holds."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def fingerprint_json(self) -> str:
        """The canonical JSON hashed into the model fingerprint: :meth:`to_json` with N under
        its first key, ``"sleep_loops"``, so that renaming the field changed no fingerprint (the
        shipped checkpoints' and every stored snapshot's stay valid)."""
        data = self.model_dump(mode="json")
        data[LEGACY_LOOPS_KEY] = data.pop("loops")
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SleepHybridConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object")
        return cls(**data)
