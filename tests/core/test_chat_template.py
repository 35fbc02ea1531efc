"""Chat templates: rendered text and tokens compared with transformers' apply_chat_template."""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Literal, Optional

import pytest
import torch

from bestiary.errors import ProcessingError
from bestiary.processing import Tokenizer
from bestiary.processing.chat_template import get_json_schema, render_chat_template
from tests.core import chat_templates as templates
from tests.core import tokenizer_builders as builders

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils import get_json_schema as reference_json_schema  # noqa: E402

CHAT = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? <tricky> & 'quotes'"},
]
NO_SYSTEM = CHAT[1:]
PREFILL = NO_SYSTEM + [{"role": "assistant", "content": "The capital of Italy is "}]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city, e.g. Paris <FR>"}},
            "required": ["city"],
        },
    },
}
TOOL_CALL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "name": "get_weather", "content": "22 degrees and sunny"},
]


class Unit(Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


def convert_temperature(value: float, unit: Unit, precision: Optional[int] = None, tags: list[str] | None = None):
    """
    Convert a temperature reading.

    Args:
        value: The temperature to convert,
            possibly negative.
        unit: The unit to convert to.
        precision: Number of decimals to keep.
        tags: Labels (choices: ["a", "b"])

    Returns:
        The converted value.
    """


def search(query: str, mode: Literal["fast", "deep"] = "fast", limits: dict[str, int] | None = None) -> list[str]:
    """Search the web.

    Args:
        query: What to look for.
        mode: How hard to look.
        limits: Per-site result limits.

    Returns:
        The titles found.
    """


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat")
    return {
        "qwen": builders.build_byte_level_bpe(root / "qwen", chat_template=templates.QWEN2_CHATML_WITH_TOOLS),
        "llama3": builders.build_byte_level_bpe(root / "llama3", chat_template=templates.LLAMA31),
        "mistral": builders.build_sentencepiece_like(root / "mistral", chat_template=templates.MISTRAL_V01),
        "zephyr": builders.build_sentencepiece_like(root / "zephyr", chat_template=templates.ZEPHYR),
        "rag": builders.build_byte_level_bpe(root / "rag", chat_template=templates.RAG_WITH_DOCUMENTS),
    }


def load_both(folder: Path):
    return Tokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(str(folder))


def render_both(folder: Path, conversation, **kwargs) -> tuple[str, str]:
    ours, reference = load_both(folder)
    return (
        ours.apply_chat_template(conversation, tokenize=False, **kwargs),
        reference.apply_chat_template(conversation, tokenize=False, **kwargs),
    )


CASES = [
    ("qwen", CHAT, {}),
    ("qwen", NO_SYSTEM, {"add_generation_prompt": True}),
    ("qwen", CHAT, {"tools": [WEATHER_TOOL]}),
    ("qwen", TOOL_CALL_CHAT, {"tools": [WEATHER_TOOL], "add_generation_prompt": True}),
    ("llama3", CHAT, {"date_string": "01 Jan 2025"}),
    ("llama3", NO_SYSTEM, {"add_generation_prompt": True, "date_string": "01 Jan 2025"}),
    ("llama3", TOOL_CALL_CHAT, {"tools": [WEATHER_TOOL], "date_string": "01 Jan 2025"}),
    ("llama3", NO_SYSTEM, {"tools": [WEATHER_TOOL], "tools_in_user_message": False, "date_string": "01 Jan 2025"}),
    ("mistral", NO_SYSTEM, {}),
    ("mistral", NO_SYSTEM[:1], {"add_generation_prompt": True}),
    ("zephyr", CHAT, {}),
    ("zephyr", CHAT, {"add_generation_prompt": True}),
    ("rag", NO_SYSTEM, {"documents": [
        {"title": "France", "text": "Paris is the capital."},
        {"title": "Skipped", "text": "ignored", "skip": True},
        {"title": "Italy", "text": "Rome is the capital & largest city."},
        {"title": "Spain", "text": "Never shown: the loop breaks after two."},
    ], "add_generation_prompt": True}),
]


@pytest.mark.parametrize(("kind", "conversation", "kwargs"), CASES)
def test_rendered_text_matches_transformers(folders, kind, conversation, kwargs):
    ours, expected = render_both(folders[kind], conversation, **kwargs)
    assert ours == expected


@pytest.mark.parametrize("kind", ["qwen", "llama3", "zephyr"])
def test_continue_final_message_matches_transformers(folders, kind):
    ours, expected = render_both(folders[kind], PREFILL, continue_final_message=True, date_string="01 Jan 2025")
    assert ours == expected
    assert ours.rstrip().endswith("The capital of Italy is")


def test_strftime_now_gives_todays_date(folders):
    ours, expected = render_both(folders["llama3"], NO_SYSTEM)
    assert ours == expected
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}" in ours


def test_python_functions_become_the_same_tool_schemas_as_transformers(folders):
    for function in (convert_temperature, search):
        assert get_json_schema(function) == reference_json_schema(function)
    ours, expected = render_both(folders["qwen"], NO_SYSTEM, tools=[convert_temperature, search])
    assert ours == expected
    with pytest.raises(ProcessingError, match="docstring"):
        get_json_schema(lambda x: x)


@pytest.mark.parametrize("kind", ["qwen", "llama3", "mistral"])
def test_tokenized_chat_matches_transformers(folders, kind):
    ours, reference = load_both(folders[kind])
    for tokenizer in (ours, reference):
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"date_string": "01 Jan 2025", "add_generation_prompt": True}
    assert ours.apply_chat_template(NO_SYSTEM, **kwargs) == reference.apply_chat_template(
        NO_SYSTEM, return_dict=False, **kwargs
    )
    batch = [NO_SYSTEM, NO_SYSTEM[:1]]
    got = ours.apply_chat_template(batch, return_dict=True, return_tensors="pt", padding=True, **kwargs)
    expected = reference.apply_chat_template(batch, return_dict=True, return_tensors="pt", padding=True, **kwargs)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    truncated = dict(max_length=12, truncation=True, return_dict=True, **kwargs)
    assert dict(ours.apply_chat_template(NO_SYSTEM, **truncated)) == dict(
        reference.apply_chat_template(NO_SYSTEM, **truncated)
    )


@pytest.mark.parametrize("kind", ["llama3", "mistral"])
def test_no_double_bos_when_the_template_writes_it(folders, kind):
    ours, reference = load_both(folders[kind])
    assert ours.encode("hi")[0] == ours.bos_token_id  # the tokenizer adds BOS to plain text...
    ids = ours.apply_chat_template(NO_SYSTEM, date_string="01 Jan 2025")
    assert ids[0] == ours.bos_token_id and ids[1] != ours.bos_token_id  # ...but not to a rendered chat
    assert ids == reference.apply_chat_template(NO_SYSTEM, date_string="01 Jan 2025", return_dict=False)
    forced = ours.apply_chat_template(
        NO_SYSTEM, date_string="01 Jan 2025", tokenizer_kwargs={"add_special_tokens": True}
    )
    assert forced == ids


def test_raise_exception_surfaces_the_template_message(folders):
    tokenizer = Tokenizer.from_pretrained(folders["mistral"])
    with pytest.raises(ProcessingError, match="Conversation roles must alternate"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ProcessingError, match="Only user and assistant roles"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{{ messages.__class__.__mro__ }}", "sandbox forbids.*__class__"),
        ("{{ ''.__class__.__base__.__subclasses__() }}", "sandbox forbids.*__class__"),
        ("{{ messages[0].__init__.__globals__ }}", "sandbox forbids.*__init__"),
        ("{% set ns = namespace(_hidden=1) %}{{ ns._hidden }}", "sandbox forbids.*_hidden"),
        ("{{ messages.append({'role': 'x'}) }}", "sandbox forbids.*append"),
        ("{{ messages[0].update({'role': 'x'}) }}", "sandbox forbids.*update"),
        ("{{ dict.__subclasses__() }}", "chat template failed.*__subclasses__"),
    ],
)
def test_the_sandbox_blocks_internals_and_mutation(folders, template, problem):
    tokenizer = Tokenizer.from_pretrained(folders["qwen"])
    with pytest.raises(ProcessingError, match=problem):
        tokenizer.apply_chat_template(NO_SYSTEM, chat_template=template, tokenize=False)


def test_template_problems_are_named(folders):
    tokenizer = Tokenizer.from_pretrained(folders["qwen"])
    with pytest.raises(ProcessingError, match=r"not valid Jinja.*line 2"):
        tokenizer.apply_chat_template(NO_SYSTEM, chat_template="hello\n{% for m in messages %}", tokenize=False)
    with pytest.raises(ProcessingError, match="cannot both be set"):
        tokenizer.apply_chat_template(NO_SYSTEM, add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(ProcessingError, match="empty conversation"):
        tokenizer.apply_chat_template([])
    tokenizer.chat_template = None
    with pytest.raises(ProcessingError, match="no chat template"):
        tokenizer.apply_chat_template(NO_SYSTEM)


def test_tojson_does_not_escape_html_and_supports_indent():
    text = render_chat_template(
        "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}", [[{"role": "user", "content": "<a&b>"}]]
    )[0]
    assert text == json.dumps({"role": "user", "content": "<a&b>"}) + "|" + json.dumps(
        {"role": "user", "content": "<a&b>"}, indent=2
    )


def test_named_templates_choose_default_or_tool_use_and_round_trip(folders, tmp_path):
    tokenizer = Tokenizer.from_pretrained(folders["qwen"])
    tokenizer.chat_template = {"default": templates.ZEPHYR, "tool_use": templates.QWEN2_CHATML_WITH_TOOLS}
    assert tokenizer.get_chat_template() == templates.ZEPHYR
    assert tokenizer.get_chat_template(tools=[WEATHER_TOOL]) == templates.QWEN2_CHATML_WITH_TOOLS
    assert tokenizer.get_chat_template("tool_use") == templates.QWEN2_CHATML_WITH_TOOLS
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == templates.ZEPHYR
    assert (tmp_path / "additional_chat_templates" / "tool_use.jinja").is_file()
    reference = AutoTokenizer.from_pretrained(str(tmp_path))
    reloaded = Tokenizer.from_pretrained(tmp_path)
    for tools in (None, [WEATHER_TOOL]):
        expected = reference.apply_chat_template(CHAT, tools=tools, tokenize=False)
        assert tokenizer.apply_chat_template(CHAT, tools=tools, tokenize=False) == expected
        assert reloaded.apply_chat_template(CHAT, tools=tools, tokenize=False) == expected


def test_templates_are_read_from_tokenizer_config_and_chat_template_json(tmp_path):
    listed = builders.build_byte_level_bpe(tmp_path / "listed")
    config = json.loads((listed / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "default", "template": templates.ZEPHYR},
        {"name": "tool_use", "template": templates.QWEN2_CHATML_WITH_TOOLS},
    ]
    (listed / "tokenizer_config.json").write_text(json.dumps(config))
    ours, reference = load_both(listed)
    assert ours.apply_chat_template(CHAT, tokenize=False) == reference.apply_chat_template(CHAT, tokenize=False)
    legacy = builders.build_byte_level_bpe(tmp_path / "legacy")
    (legacy / "chat_template.json").write_text(json.dumps({"chat_template": templates.ZEPHYR}))
    assert Tokenizer.from_pretrained(legacy).chat_template == templates.ZEPHYR


def test_messages_are_plain_data_and_none_keys_are_dropped(folders):
    class Opaque:
        def save(self, path):  # a method a template must never reach
            raise AssertionError("called from a template")

    template = "{% for m in messages %}{{ m.content }}|{{ m.image }}|{{ 'name' in m }};{% endfor %}"
    text = render_chat_template(
        template, [[{"role": "user", "content": "hi", "image": Opaque(), "name": None}]]
    )[0]
    assert text == "hi|<Opaque>|False;"
