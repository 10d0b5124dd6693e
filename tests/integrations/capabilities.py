"""What ChatSleepModel declares to langchain-tests, shared by the unit and integration suites."""

from __future__ import annotations

from sleepagent.langchain import ChatSleepModel


class ChatSleepModelCapabilities:
    @property
    def chat_model_class(self) -> type[ChatSleepModel]:
        return ChatSleepModel

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
