"""Transformers GDN hybrids through sleepagent.model.hf, on tiny random checkpoints saved to disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.testing import assert_close

transformers = pytest.importorskip("transformers")
from sleepagent.storage import SnapshotStore  # noqa: E402
from sleepagent.tools import tool  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from sleepagent import Agent, MemoryPolicy, SleepPolicy  # noqa: E402
from sleepagent.engine import Engine  # noqa: E402
from sleepagent.errors import CheckpointError  # noqa: E402
from sleepagent.model import SleepModel  # noqa: E402
from sleepagent.model.hf import HFHybridLM  # noqa: E402
from sleepagent.model.hf_tiny import save_tiny_hybrid  # noqa: E402
from sleepagent.testing import FunctionModel, tool_call  # noqa: E402

TYPES = ["qwen3_5", "qwen3_next", "olmo_hybrid"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {t: save_tiny_hybrid(root / t, t, seed=1) for t in TYPES}
    return out


def load(path, **kw) -> SleepModel:
    return SleepModel.from_pretrained(path, **{"window": 32, "loops": 3, **kw})


def ids_of(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def fill(cache: DynamicCache, lm: HFHybridLM, fast) -> DynamicCache:
    """Seed a cache's GDN layers with ``fast`` (written here, independently of the adapter)."""
    for j, li in enumerate(lm.config.linear_layers):
        layer = cache.layers[li]
        layer.lazy_initialization(conv_states=fast.conv[j], recurrent_states=fast.S[j],
                                  conv_kernel_size=fast.conv[j].shape[-1])
        layer.conv_states[0].copy_(fast.conv[j])
        layer.recurrent_states[0].copy_(fast.S[j])
        layer.has_previous_state[0] = True
    return cache


def test_rejects_unsupported_model_types(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    with pytest.raises(CheckpointError, match="qwen3_5, qwen3_5_text, qwen3_next, olmo_hybrid"):
        SleepModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("model_type", TYPES)
def test_wake_and_n1_sleep_equal_the_models_own_cached_generation(checkpoints, model_type):
    sm = load(checkpoints[model_type])
    lm = sm.model
    ids = ids_of(20)
    with torch.no_grad():
        cache = DynamicCache(config=lm.text_config)
        ref = lm.hf(input_ids=ids[:, :17], cache=cache, use_cache=True).logits
        ref_steps = [
            lm.hf(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True).logits[:, -1] for t in range(17, 20)
        ]
    state = lm.new_state()
    assert_close(lm.prefill(ids[:, :17], state), ref)
    for t, want in zip(range(17, 20), ref_steps, strict=True):
        assert_close(lm.step(ids[:, t], state), want)
    committed = lm.consolidate(state, loops=1).fast
    for j, li in enumerate(lm.config.linear_layers):
        assert torch.equal(committed.S[j], cache.layers[li].recurrent_states[0])
        assert torch.equal(committed.conv[j], cache.layers[li].conv_states[0])


def test_after_an_n1_sleep_gdn_layers_continue_exactly(checkpoints):
    """N = 1 carries the plain model's GDN state across the window: the GDN layers below the
    first attention layer (their inputs never see the dropped KV) match one long cached pass."""
    lm = load(checkpoints["qwen3_5"]).model
    ids = ids_of(40, seed=3)
    with torch.no_grad():
        cache = DynamicCache(config=lm.text_config)
        lm.hf(input_ids=ids, cache=cache, use_cache=True)
    state = lm.new_state()
    lm.prefill(ids[:, :25], state)
    state = lm.consolidate(state, loops=1)
    assert state.window_len == 0 and state.cache.get_seq_length() == 0
    lm.prefill(ids[:, 25:], state)
    first_attn = min(lm.config.attn_layers)
    for j, li in enumerate(lm.config.linear_layers):
        if li < first_attn:
            assert_close(state.working.S[j], cache.layers[li].recurrent_states[0], rtol=1e-4, atol=1e-5)
            assert_close(state.working.conv[j], cache.layers[li].conv_states[0])


def test_n_passes_are_algorithm_1(checkpoints):
    """h = embed(window); N times h, F = stack(h, F) from the committed F; the KV is dropped."""
    sm = load(checkpoints["qwen3_5"])
    lm = sm.model
    state = lm.new_state()
    lm.prefill(ids_of(24, seed=4), state)
    got = lm.consolidate(state, loops=3)
    # reference: the model's own forward on inputs_embeds, final norm removed to read h
    norm, lm.decoder.norm = lm.decoder.norm, torch.nn.Identity()
    try:
        with torch.no_grad():
            h, fast = lm.decoder.embed_tokens(torch.tensor([state.window_ids])), state.fast
            for _ in range(3):
                cache = fill(DynamicCache(config=lm.text_config), lm, fast)
                h = lm.decoder(inputs_embeds=h, cache=cache, use_cache=True).last_hidden_state
                fast = type(state.fast)(
                    S=tuple(cache.layers[li].recurrent_states[0].clone() for li in lm.config.linear_layers),
                    conv=tuple(cache.layers[li].conv_states[0].clone() for li in lm.config.linear_layers),
                )
    finally:
        lm.decoder.norm = norm
    for a, b in zip((*got.fast.S, *got.fast.conv), (*fast.S, *fast.conv), strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert got.window_len == 0 and got.cache.get_seq_length() == 0 and got.sleeps == 1
    assert not got.fast.equal(lm.consolidate(state, loops=1).fast)


def test_loop_layers_loop_only_the_span(checkpoints):
    lm = load(checkpoints["qwen3_5"], loop_layers=(1, 3)).model
    state = lm.new_state()
    lm.prefill(ids_of(24, seed=5), state)
    n1, n3 = lm.consolidate(state, loops=1).fast, lm.consolidate(state, loops=3).fast
    # layer 0 runs once, before the span; layers 1 and 2 loop
    assert_close(n3.S[0], n1.S[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(n3.S[1], n1.S[1]) and not torch.allclose(n3.S[2], n1.S[2])


async def test_engine_keeps_the_kv_within_the_window_over_a_long_input(checkpoints):
    sm = load(checkpoints["olmo_hybrid"], window=32)
    engine = Engine(sm)
    try:
        s = engine.session(policy=SleepPolicy(loops=2))
        longest, sizes = 0, set()
        for chunk in ids_of(300, seed=6)[0].split(20):
            await engine.prefill(s, chunk.tolist())
            longest = max(longest, s.state.cache.get_seq_length())
            sizes.add(s.state.fast.nbytes)
        await engine.wait_idle(s)
        assert longest <= 32
        assert s.state.tokens_seen == 300 and s.state.sleeps >= 8
        assert len(sizes) == 1  # the fast weights never grow
    finally:
        engine.close()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def scripted(base: SleepModel) -> FunctionModel:
    def respond(messages, info):
        if messages[-1].role == "tool":
            return f"The sum is {messages[-1].content}."
        return tool_call("add", a=2, b=3)

    return FunctionModel(respond, base=base)


async def test_an_agent_runs_tools_on_a_transformers_hybrid(checkpoints):
    sm = load(checkpoints["qwen3_5"], window=256)
    agent = Agent(scripted(sm), tools=[add], sleep=SleepPolicy(loops=2, min_fill=0.0), max_tokens=64)
    try:
        result = await agent.run("What is 2 + 3?")
    finally:
        agent.close()
    assert result.output == "The sum is 5."
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert result.sleep.sleeps >= 1 and result.sleep.tokens_consolidated > 0


async def test_snapshots_round_trip_through_the_store(checkpoints, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    path, persistent = checkpoints["qwen3_next"], MemoryPolicy(retention="persistent")

    def agent(store):
        return Agent(load(path, window=128), store=store, memory=persistent,
                     sleep=SleepPolicy(loops=2, min_fill=0.0), max_tokens=8, max_steps=1, system_prompt="Hi.")

    with SnapshotStore(url) as store:
        a = agent(store)
        async with a.session("conv", tenant="t") as s:
            await s.run("hello there")
            await a.engine.wait_idle(s.engine_session)
            saved = s.engine_session.state
        a.close()
        assert store.list_snapshots("conv", tenant="t")
        b = agent(store)  # a fresh model object and engine
        async with b.session("conv", tenant="t") as s:
            restored = s.engine_session.state
            for x, y in zip((*saved.fast.S, *saved.fast.conv), (*restored.fast.S, *restored.fast.conv), strict=True):
                assert torch.equal(x, y)
            assert restored.window_ids == saved.window_ids and restored.tokens_seen == saved.tokens_seen
            await s.run("and again")
        b.close()


FAKE_FLA = '''
def _crash(*args, **kwargs):
    raise RuntimeError("0 active drivers ([]). There should only be one.")
chunk_gated_delta_rule = fused_recurrent_gated_delta_rule = _crash
'''

CPU_SCRIPT = textwrap.dedent("""
    import sys, torch
    from transformers import DynamicCache
    from sleepagent.model import SleepModel
    import fla
    print("fla:", fla.__file__)
    sm = SleepModel.from_pretrained(sys.argv[1], window=32, loops=2)
    plain = type(sm.model.hf).from_pretrained(sys.argv[1])  # the user's other model: untouched
    try:
        plain(input_ids=torch.tensor([[1, 2, 3]]), cache=DynamicCache(config=plain.config), use_cache=True)
        print("plain: ran")
    except RuntimeError as e:
        print("plain:", e)
    state = sm.model.new_state()
    sm.model.prefill(torch.tensor([[1, 2, 3, 4, 5]]), state)
    sm.model.step(torch.tensor([6]), state)
    print("adapter: ok", sm.model.consolidate(state).sleeps)
""")


def test_runs_on_cpu_when_fla_is_importable(checkpoints, tmp_path):
    """transformers binds fla's Triton kernels when fla imports (up to 5.x, whenever it imports; later
    releases also check the inputs' device); on CPU they crash. Ours do not: with an fla that
    crashes when called importable, the adapter runs on CPU."""
    (tmp_path / "fla").mkdir()
    (tmp_path / "fla" / "__init__.py").write_text(FAKE_FLA)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CPU_SCRIPT, str(checkpoints["qwen3_5"])], env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"fla: {tmp_path / 'fla' / '__init__.py'}" in out.stdout  # the crashing fla is the one importable
    # a transformers that binds it crashes ("plain: 0 active drivers"); one that checks the device runs
    assert "plain: 0 active drivers" in out.stdout or "plain: ran" in out.stdout
    assert "adapter: ok 1" in out.stdout


async def test_the_agent_reads_exactly_what_the_chat_template_renders(checkpoints):
    sm = load(checkpoints["qwen3_5"], window=2048)
    agent = Agent(scripted(sm), tools=[add], sleep=SleepPolicy(loops=2, when="full"), max_tokens=64,
                  system_prompt="You add numbers.")
    try:
        async with agent.session() as s:
            await s.run("What is 2 + 3?")
            await agent.engine.flush(s.engine_session)
            read = sm.tokenizer.decode(s.engine_session.state.window_ids)
    finally:
        agent.close()
    expected = sm.tokenizer.tok.apply_chat_template(
        [{"role": "system", "content": "You add numbers."},
         {"role": "user", "content": "What is 2 + 3?"},
         {"role": "assistant", "content": tool_call("add", a=2, b=3)},
         {"role": "tool", "content": "5"},
         {"role": "assistant", "content": "The sum is 5."}],
        tools=agent.tools.specs(), tokenize=False)
    assert read == expected
