"""SleepModel: a SleepHybridLM with its tokenizer and fingerprint, loaded from a local directory.

A checkpoint directory holds ``config.json`` (the SleepHybridConfig), ``model.safetensors``,
``tokenizer.json`` and, when it was trained on a chat task, ``prompt.json`` (its
:class:`~sleepagent.tokenizer.PromptConventions`). Names of shipped checkpoints resolve to
``sleepagent/checkpoints/<name>``;
nothing is ever downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError
from ..tokenizer import ByteTokenizer, PromptConventions
from .config import SleepHybridConfig
from .hf import HFSleepConfig, load_hf_lm
from .hf_tokenizer import HFChatTokenizer
from .hybrid import SleepHybridLM
from .network import HybridNetwork

__all__ = ["CHECKPOINTS_DIR", "SleepModel", "shipped_checkpoints"]

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoints that ship inside the package."""
    if not CHECKPOINTS_DIR.is_dir():
        return []
    return sorted(p.name for p in CHECKPOINTS_DIR.iterdir() if (p / "config.json").is_file())


class SleepModel:
    """What the runtime runs: ``model`` (SleepHybridLM), ``tokenizer`` and ``fingerprint``.

    The fingerprint is computed once at load; a snapshot restores only into a model with the same
    fingerprint. Call :meth:`refresh_fingerprint` after changing the weights in place.
    """

    def __init__(
        self,
        model: HybridNetwork,
        tokenizer: ByteTokenizer | HFChatTokenizer | None = None,
        name: str = "model",
        train_config: dict | None = None,
        prompt: PromptConventions | None = None,
    ) -> None:
        self.model: HybridNetwork = model
        self.tokenizer = tokenizer or ByteTokenizer()
        self.name = name
        # the system prompt and tool-list format the checkpoint was trained with (its prompt.json)
        self.prompt = prompt or PromptConventions()
        # how the checkpoint was trained (its train.json "config"; {} if unknown): the demo asks
        # questions in the trained distribution and sleeps at the trained pause threshold
        self.train_config = dict(train_config or {})
        if model.config.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(
                f"vocab_size={model.config.vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size} tokens",
                field="vocab_size",
            )
        self.fingerprint = model.fingerprint()

    @property
    def config(self) -> SleepHybridConfig | HFSleepConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def new_state(self):
        """An empty single-sequence state for this model."""
        return self.model.new_state(1)

    def state_from_bytes(self, data: bytes):
        """A state from snapshot bytes (raises FingerprintMismatch for another model's state)."""
        return self.model.load_state(data, self.fingerprint)

    def refresh_fingerprint(self) -> str:
        self.fingerprint = self.model.fingerprint()
        return self.fingerprint

    def __repr__(self) -> str:
        return f"SleepModel(name={self.name!r}, fingerprint={self.fingerprint[:12]}…, window={self.config.window})"

    @classmethod
    def from_config(
        cls, config: SleepHybridConfig | dict, seed: int = 0, device=None, name: str = "random"
    ) -> SleepModel:
        """A randomly initialised model (tests, benchmarks, smoke runs); same seed, same weights."""
        if isinstance(config, dict):
            config = SleepHybridConfig(**config)
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = SleepHybridLM(config)
        finally:
            torch.random.set_rng_state(gen_state)
        return cls(model.to(device).eval(), name=name)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device=None, **hf_options) -> SleepModel:
        """Load a local checkpoint directory or a shipped checkpoint by name.

        A directory holding a transformers checkpoint of a Gated-DeltaNet hybrid (qwen3_5,
        qwen3_next, olmo_hybrid) loads through :mod:`sleepagent.model.hf`; ``hf_options``
        (``window``, ``loops``, ``loop_layers``, ``dtype``) set its sleep.
        """
        path = resolve_checkpoint(name_or_path)
        try:
            raw = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {path / 'config.json'}: {e}") from None
        if isinstance(raw, dict) and "model_type" in raw and "d_model" not in raw:
            lm, tok = load_hf_lm(path, device=device, **hf_options)
            return cls(lm, tok, name=path.name, prompt=read_prompt(path))
        if hf_options:
            raise ConfigError(
                f"{sorted(hf_options)} apply to transformers checkpoints only; {path} is a sleepagent checkpoint"
            )
        config = SleepHybridConfig(**raw)
        tok_file = path / "tokenizer.json"
        tok_spec = json.loads(tok_file.read_text()) if tok_file.exists() else {"type": "byte"}
        if tok_spec.get("type") == "task":
            raise CheckpointError(
                f"{path} is a {tok_spec.get('task')!r} task model (its own token ids, no chat tokenizer); "
                "load it with sleepagent.train.load_checkpoint or `sleepagent eval`"
            )
        try:
            tokenizer = ByteTokenizer.from_dict(tok_spec)
        except ValueError as e:
            raise CheckpointError(f"{tok_file}: {e}") from None
        model = SleepHybridLM(config)
        try:
            weights = load_file(str(path / "model.safetensors"))
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"cannot read {path / 'model.safetensors'}: {e}") from None
        if config.tie_embeddings:
            # None when the file holds neither: load_state_dict then rejects it
            weights.setdefault("lm_head.weight", cast(torch.Tensor, weights.get("tok_emb.weight")))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path / 'model.safetensors'} does not match its config: missing {missing}, unexpected {unexpected}"
            )
        train_file = path / "train.json"
        try:
            train_config = json.loads(train_file.read_text()).get("config", {}) if train_file.exists() else {}
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"cannot read {train_file}: {e}") from None
        return cls(model.to(device).eval(), tokenizer, name=path.name, train_config=train_config,
                   prompt=read_prompt(path))

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config.json, model.safetensors and tokenizer.json into ``path``."""
        config = self.config
        if not isinstance(config, SleepHybridConfig):  # it had no to_json (an AttributeError) before
            raise CheckpointError("save_pretrained writes sleepagent checkpoints; a transformers hybrid is saved "
                                  "in its own format (`sleepagent train --base`)")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(json.loads(config.to_json()), indent=2) + "\n")
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if config.tie_embeddings:
            weights.pop("lm_head.weight", None)
        save_file(weights, str(path / "model.safetensors"), metadata={"fingerprint": self.fingerprint})
        (path / "tokenizer.json").write_text(json.dumps(self.tokenizer.to_dict(), indent=2) + "\n")
        if self.prompt != PromptConventions():
            write_prompt(path, self.prompt)
        return path


def read_prompt(path: Path) -> PromptConventions:
    """A checkpoint's ``prompt.json`` (defaults when it has none)."""
    file = path / "prompt.json"
    if not file.exists():
        return PromptConventions()
    try:
        return PromptConventions(**json.loads(file.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValidationError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from None


def write_prompt(path: Path, prompt: PromptConventions) -> None:
    (Path(path) / "prompt.json").write_text(prompt.model_dump_json(indent=2) + "\n")


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    shipped = CHECKPOINTS_DIR / str(name_or_path)
    if shipped.is_dir():
        return shipped
    names = ", ".join(shipped_checkpoints()) or "none"
    raise CheckpointError(
        f"no checkpoint directory {str(name_or_path)!r} and no shipped checkpoint by that name "
        f"(shipped: {names}); sleepagent never downloads weights"
    )
