"""``sleepagent serve --compile-decode``: the one-session decode step compiled at startup (so no
request waits for the compiler), replies the same as the eager server's; refused, with the reason,
for a model that has no compiled step."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")

from sleepagent import SleepModel
from sleepagent.errors import ConfigError
from sleepagent.serve import ServeConfig, create_app, serve_in_background

REQUEST = {"model": "docqa-small", "max_tokens": 24, "temperature": 0,
           "messages": [{"role": "user", "content": "Document: the mill in Arden opens at 7. When does it open?"}]}


def test_a_transformers_model_is_refused_with_the_reason(tmp_path):
    from sleepagent.model.hf_tiny import save_tiny_hybrid

    path = save_tiny_hybrid(tmp_path / "qwen3_5", "qwen3_5", seed=1)
    with pytest.raises(ConfigError, match="needs a sleepagent checkpoint"):
        create_app(ServeConfig(model=str(path), no_auth=True, compile_decode=True))


def test_the_cli_flag_reaches_the_config():
    from typer.testing import CliRunner

    from sleepagent.cli import app

    assert "--compile-decode" in CliRunner(env={"COLUMNS": "300"}).invoke(app, ["serve", "--help"]).output
    assert ServeConfig().compile_decode is False  # opt-in: a first start compiles for tens of seconds


@pytest.mark.slow
def test_a_compiled_server_answers_as_the_eager_one():
    import torch._dynamo

    torch._dynamo.reset()
    answers = []
    for compiled in (False, True):
        sm = SleepModel.from_pretrained("docqa-small")  # its own copy: the flag is the model's
        with serve_in_background(ServeConfig(model=sm, no_auth=True, compile_decode=compiled)) as url:
            assert sm.model.compile_decode is compiled and ("_compiled" in sm.model.__dict__) is compiled
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            r = httpx.post(f"{url}/chat/completions", json=REQUEST, timeout=120)
            assert r.status_code == 200, r.text
            answers.append(r.json()["choices"][0]["message"]["content"])
            # compiled at startup: the request added no graph
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert answers[0] == answers[1] and answers[0]
