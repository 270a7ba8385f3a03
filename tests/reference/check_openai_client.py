"""The official `openai` Python client against `tiqu serve`, unchanged: models, a completion
whose json_schema response format is enforced (its values copied from the message), the same
streamed, `parse` with a pydantic model, and the client's own exceptions for a refused schema
and a wrong key. Run by scripts/crosscheck-python when `openai` is installed.

usage: check_openai_client.py BASE_URL API_KEY
"""

import json
import sys

import openai
from openai import OpenAI
from pydantic import BaseModel

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key=key)
text = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山"
messages = [{"role": "system", "content": "extract the name and email"}, {"role": "user", "content": text}]
schema = {
    "type": "object",
    "properties": {"name": {"type": ["string", "null"]}, "email": {"type": ["string", "null"]}},
    "required": ["name", "email"],
    "additionalProperties": False,
}
fmt = {"type": "json_schema", "json_schema": {"name": "contact", "strict": True, "schema": schema}}
copy = {"constrain": "copy"}


def copied(obj):
    assert list(obj) == ["name", "email"], obj
    for k, v in obj.items():
        assert v is None or v in text, (k, v)


models = [m.id for m in client.models.list()]
assert len(models) == 1, models

whole = client.chat.completions.create(model=models[0], messages=messages, response_format=fmt, extra_body=copy)
assert whole.choices[0].finish_reason == "stop", whole
content = whole.choices[0].message.content
copied(json.loads(content))

stream = client.chat.completions.create(
    model=models[0], messages=messages, response_format=fmt, extra_body=copy, stream=True, stream_options={"include_usage": True}
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    usage = chunk.usage or usage
assert "".join(pieces) == content, (pieces, content)
assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens, usage


class Contact(BaseModel):
    name: str | None
    email: str | None


parsed = client.chat.completions.parse(model=models[0], messages=messages, response_format=Contact, extra_body=copy)
copied(parsed.choices[0].message.parsed.model_dump())

try:
    bad = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {"age": {"type": "integer"}}}}}
    client.chat.completions.create(model=models[0], messages=messages, response_format=bad)
    raise AssertionError("an integer property was accepted")
except openai.BadRequestError as e:
    assert "properties.age" in str(e), e

try:
    OpenAI(base_url=base + "/v1", api_key="not-" + key).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass

print(f"openai {openai.__version__}: models, json_schema (whole, streamed, parse), 400 and 401 as the client expects")
