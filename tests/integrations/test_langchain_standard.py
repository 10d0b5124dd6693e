"""langchain-tests' standard unit tests for ChatSleepModel."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from .capabilities import ChatSleepModelCapabilities


class TestChatSleepModelUnit(ChatSleepModelCapabilities, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict:
        return {"model": "docqa-small", "loops": 2}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {"SLEEPAGENT_MODEL": "my-checkpoint"}, {}, {"model": "my-checkpoint"}
