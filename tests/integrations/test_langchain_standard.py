"""langchain-tests' standard unit tests for ChatSleepModel."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from sleepagent.langchain import ChatSleepModel


class TestChatSleepModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSleepModel]:
        return ChatSleepModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": "docqa-small", "loops": 2}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {"SLEEPAGENT_MODEL": "my-checkpoint"}, {}, {"model": "my-checkpoint"}
