"""The official `openai` Python client against a running hone server, unchanged.

Usage: python3 tests/openai_client.py BASE_URL   (e.g. http://127.0.0.1:8080/v1)
Exits non-zero with a message on the first failed check.
"""
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="unused")
messages = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]

models = [m.id for m in client.models.list().data]
assert models, "no models listed"
model = models[0]

plain = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
assert plain.choices[0].message.content, plain
assert plain.usage.completion_tokens > 0, plain.usage

chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=16, stream=True)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed, "empty stream"

tpo = client.chat.completions.create(
    model="tpo/" + model,
    messages=messages,
    max_tokens=16,
    extra_body={"hone": {"n": 2, "rounds": 1, "budget": {"compute": 1500}}},  # within the default --max-budget
)
assert tpo.choices[0].message.content, tpo

tpo_stream = client.chat.completions.create(
    model="best_of_n/" + model,
    messages=messages,
    max_tokens=16,
    stream=True,
    extra_body={"hone": {"n": 2}},
)
assert "".join(c.choices[0].delta.content or "" for c in tpo_stream if c.choices), "empty stream"

print("openai client: plain, stream, tpo and best_of_n stream all answered")
