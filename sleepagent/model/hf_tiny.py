"""Tiny random transformers GDN hybrids, saved as real checkpoint directories.

For tests, examples and benchmarks that exercise :mod:`sleepagent.model.hf` without downloading
anything: a byte-level tokenizer (256 byte tokens + ChatML specials) with a Qwen3-style chat
template (tools listed in the system turn, JSON ``<tool_call>`` blocks, tool results wrapped in
``<tool_response>``), and a randomly initialised model of the requested type, a few hundred
thousand parameters, three GDN layers and one attention layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

__all__ = ["TINY_CHAT_TEMPLATE", "save_tiny_hybrid"]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
            "<tool_response>", "</tool_response>"]

TINY_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\nCall a tool as <tool_call>{\"name\": <name>, \"arguments\": <json object>}"
    "</tool_call><|im_end|>\\n' }}"
    "{%- elif messages and messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_LAYERS = ["linear_attention", "linear_attention", "linear_attention", "full_attention"]
_COMMON = dict(
    vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, linear_num_value_heads=4, linear_num_key_heads=2,
    linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4, layer_types=_LAYERS,
)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def _config(model_type: str, tok, layer_types: list[str] | None, sizes: dict | None = None):
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.pad_token_id)
    common = {**_COMMON, **(sizes or {}), "layer_types": list(layer_types or _LAYERS),
              "num_hidden_layers": len(layer_types or _LAYERS)}
    if model_type in ("qwen3_5", "qwen3_5_text"):
        from transformers.models.qwen3_5 import Qwen3_5Config, Qwen3_5TextConfig

        text = Qwen3_5TextConfig(**common, **ids)
        return text if model_type == "qwen3_5_text" else Qwen3_5Config(text_config=text.to_dict(), **ids)
    if model_type == "qwen3_next":
        from transformers.models.qwen3_next import Qwen3NextConfig

        return Qwen3NextConfig(**common, **ids, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                               shared_expert_intermediate_size=32, decoder_sparse_step=1)
    if model_type == "olmo_hybrid":
        from transformers.models.olmo_hybrid import OlmoHybridConfig

        return OlmoHybridConfig(**common, **ids)
    raise ValueError(f"no tiny config for model_type {model_type!r}")


def save_tiny_hybrid(
    path: str | Path, model_type: str = "qwen3_5_text", seed: int = 0, layer_types: list[str] | None = None,
    sizes: dict | None = None, gate_init: str = "mamba",
) -> Path:
    """Write a tiny random ``model_type`` checkpoint (config, weights, tokenizer) into ``path``.

    ``layer_types``: "linear_attention" / "full_attention" per layer (default: 3 GDN + 1 attention).
    ``sizes``: config fields that replace the tiny defaults (``hidden_size``, head counts, ...).
    ``gate_init``: "mamba" (default) gives the GDN layers the native model's decay init (time
    steps dt log-uniform in [1e-3, 0.1], so memory lasts tens to thousands of tokens);
    "transformers" keeps the library's (``dt_bias = 1``: with decay rates up to 16, most heads
    forget within a token or two, which a pretrained checkpoint has long since unlearned but a
    random model meant to carry facts across windows must first unlearn, slowly).
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tok = _tokenizer()
    config = _config(model_type, tok, layer_types, sizes)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        if gate_init == "mamba":
            _mamba_gates(model)
        elif gate_init != "transformers":
            raise ValueError(f"gate_init must be 'mamba' or 'transformers', got {gate_init!r}")
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@torch.no_grad()
def _mamba_gates(model: torch.nn.Module) -> None:
    """Every GDN layer's decay as the native model's ``reset_gates``: A in [1, 16] and
    softplus(dt_bias) = dt log-uniform in [1e-3, 0.1]."""
    import math

    for module in model.modules():
        if hasattr(module, "A_log") and hasattr(module, "dt_bias"):
            # the GDN layer's parameters (torch types an attribute read by name as Tensor | Module)
            A_log, dt_bias = cast(torch.Tensor, module.A_log), cast(torch.Tensor, module.dt_bias)
            n = A_log.numel()
            A_log.copy_(torch.empty(n).uniform_(1, 16).log())
            dt = torch.exp(torch.empty(n).uniform_(math.log(1e-3), math.log(0.1))).clamp(min=1e-4)
            dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
