"""Drives `fairyc serve` with the official openai package: a greedy chat
completion, the same streamed, the model list, and an invalid request,
which must surface as the package's BadRequestError. Prints a JSON report
as its last line. Usage: serve_openai.py http://127.0.0.1:PORT"""

import json
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
model = client.models.list().data[0].id
messages = [{"role": "user", "content": "the cat"}]

chat = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12)
text = chat.choices[0].message.content
assert chat.choices[0].message.role == "assistant"
assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

pieces, usage = [], None
for chunk in client.chat.completions.create(
    model=model,
    messages=messages,
    temperature=0,
    max_tokens=12,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens

try:
    client.chat.completions.create(model=model, messages=messages, temperature=-1)
    raise SystemExit("temperature -1 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "temperature" in str(e), e

print(json.dumps({"model": model, "chat": text, "streamed": "".join(pieces), "usage": chat.usage.model_dump()}))
