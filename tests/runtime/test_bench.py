"""The runtime benchmarks run end to end on tiny configs and report what they promise."""

from __future__ import annotations

from sleepagent.bench import bench_agent, bench_engine
from sleepagent.model import SleepHybridConfig

SMALL = SleepHybridConfig(vocab_size=268, d_model=64, n_layers=4, n_heads=4, gdn_heads=4, window=384)


def test_bench_agent_schedules():
    result = bench_agent(latency=0.1, loops=3, pages=3, page_chars=200, config=SMALL)
    s = result["schedules"]
    assert set(s) == {"pause", "full", "none"}
    for r in s.values():
        assert {"total_s", "sleep_s", "hidden_s", "exposed_s", "wake_ms_per_token"} <= set(r)
    # pauses hide (some of) the sleep, "full" exposes all of it; how much is the benchmark's figure
    assert s["pause"]["hidden_s"] > 0 and s["pause"]["sleep_s"] > 0
    assert s["full"]["exposed_s"] == s["full"]["sleep_s"] > 0
    assert s["full"]["forced_sleeps"] >= 1 and s["pause"]["forced_sleeps"] == 0


def test_bench_engine_batches():
    result = bench_engine(sessions=4, tokens=8, config=SMALL)
    assert result["serial_tok_s"] > 0 and result["batched_tok_s"] > 0


def test_bench_constrained_is_a_subcommand():
    import json

    from typer.testing import CliRunner

    from sleepagent.cli import app

    out = CliRunner().invoke(app, ["bench", "constrained", "--tokens", "16", "--repeats", "1", "--json"])
    assert out.exit_code == 0, out.output
    r = json.loads(out.stdout)
    assert r["model"] == "docqa-small" and r["tokens"] == 16
    assert r["plain_ms_per_token"] > 0 and r["constrained_ms_per_token"] > 0 and r["mask_ms_per_token"] >= 0
