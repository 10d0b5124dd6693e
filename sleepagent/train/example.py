"""Example: one training or test sequence of a task, and how a batch of them is padded.

Every task (the synthetic ones in :mod:`sleepagent.train.tasks`, docqa in
:mod:`sleepagent.train.docqa`) yields these, so this module sits below all of them and imports
none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Example", "collate"]


@dataclass
class Example:
    """Token ids, the loss mask on the answer tokens (``loss_mask[t]``: token t is predicted from
    position t - 1, the target convention of the training forward), the positions of each answer
    (exact match per answer), a difficulty and task-specific ``meta``."""

    ids: list[int]
    loss_mask: list[bool]
    answers: list[list[int]]  # positions of each answer's tokens (exact match per answer)
    difficulty: int
    meta: dict = field(default_factory=dict)


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch to one length (padding is never a target): ids [B, T], loss mask [B, T]."""
    T = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), T, dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = torch.tensor(e.loss_mask)
    return ids, mask
