"""A LangChain tool-calling loop over ChatSleepModel.

    python examples/langchain_agent.py [--model PATH]

The loop is LangChain's usual one: bind tools, invoke, run each requested tool, append a
ToolMessage, invoke again until the reply has no tool call. The session id makes the model read
only the new messages each round. Without --model a small random model is used; it will rarely
call a tool, so the loop usually ends after one round (the mechanics are what is shown).
"""

from __future__ import annotations

import argparse

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from sleepagent import SleepModel
from sleepagent.langchain import ChatSleepModel
from sleepagent.testing import tiny_model


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def main(model_path: str | None, max_rounds: int = 4) -> list:
    model = SleepModel.from_pretrained(model_path) if model_path else tiny_model(seed=1, window=256, tie_embeddings=False)
    llm = ChatSleepModel.from_model(model, max_tokens=32, loops=4).bind_tools([multiply])
    config = {"configurable": {"session_id": "langchain-example"}}
    messages = [SystemMessage("Use tools when useful."), HumanMessage("What is 6 times 7?")]
    for _ in range(max_rounds):
        reply = llm.invoke(messages, config=config)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            result = multiply.invoke(call["args"]) if call["name"] == "multiply" else f"unknown tool {call['name']}"
            messages.append(ToolMessage(str(result), tool_call_id=call["id"]))
    for m in messages:
        print(f"{m.type:>6}: {m.content!r}")
    return messages


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    main(parser.parse_args().model)
