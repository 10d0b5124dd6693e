"""The study presets behind ``sleepagent study NAME``: one module per task family.

Each module lists its presets in ``PRESETS``; their notes (how a preset was chosen, what it found)
are markdown files under ``docs/studies/notes/``, read when a page is written
(:meth:`~sleepagent.train.study.Study.page_notes`), so the prose is edited as prose and this
package holds only settings.
"""

from __future__ import annotations

from ..study import Study
from . import depo, finetune, gsm_inf, rule110

__all__ = ["STUDIES"]

STUDIES: dict[str, Study] = {s.name: s for module in (depo, rule110, gsm_inf, finetune) for s in module.PRESETS}
