"""Render chat templates (Jinja) in a sandbox, the way transformers does.

Chat templates come from checkpoints, so they are untrusted code: they run in
jinja2's ``ImmutableSandboxedEnvironment`` (no access to underscore
attributes, no mutation of the data passed in), and everything they can see is
rebuilt from plain JSON-like values first. The environment matches
transformers' (``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols``
extension, a ``tojson`` filter that does not escape HTML, and the
``raise_exception`` and ``strftime_now`` globals), so templates written for
transformers render the same text here.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import logging
import re
import types
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

from bestiary.errors import ProcessingError

logger = logging.getLogger(__name__)

__all__ = ["get_json_schema", "render_chat_template", "split_conversations", "compile_chat_template"]

# Appended to the message to continue, found again in the rendered text, and cut off there.
# The trailing space tells whether the template kept the message's trailing whitespace.
_CONTINUE_MARK = "BESTIARYCONTINUEHERE "
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


# --------------------------------------------------------------------------------------------------
# the sandboxed environment
# --------------------------------------------------------------------------------------------------
class _TemplateRaised(jinja2.TemplateError):
    """Raised by ``raise_exception(...)`` inside a template."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Unlike jinja's own filter, this one does not escape <, >, & and ' (prompts are not HTML).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _make_dict(*args: Any, **kwargs: Any) -> dict:
    # Templates may build dicts with dict(...); handing them the dict type itself would expose its class methods.
    return dict(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore-prefixed names (they could shadow internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same calling trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the underscore name {name!r}")


class _GenerationBlock(jinja2.ext.Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` (used to mark assistant text) and render its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Callable[[], str]) -> str:
        return caller()


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_make_dict, namespace=_Namespace
    )
    return env


@functools.lru_cache(maxsize=64)
def compile_chat_template(template: str) -> jinja2.Template:
    """Return the compiled template (cached); raise :class:`ProcessingError` naming the syntax error."""
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ProcessingError(
            f"The chat template is not valid Jinja: {exc.message} (template line {exc.lineno}). "
            "Fix the template or pass another one with chat_template=..."
        ) from exc


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------
def split_conversations(conversation: Any) -> tuple[list[list[Any]], bool]:
    """Return (list of conversations, whether a batch was given) for one conversation or a batch of them."""
    if isinstance(conversation, (list, tuple)) and not conversation:
        raise ProcessingError("Cannot apply a chat template to an empty conversation; give at least one message.")
    if not isinstance(conversation, (list, tuple)):
        messages = getattr(conversation, "messages", None)
        if messages is None:
            raise ProcessingError(
                f"A conversation must be a list of message dicts, got {type(conversation).__name__}."
            )
        conversation = messages
    first = conversation[0]
    batched = isinstance(first, (list, tuple)) or hasattr(first, "messages")
    chats = [list(getattr(chat, "messages", chat)) for chat in conversation] if batched else [list(conversation)]
    return chats, batched


def _normalise_messages(chat: Sequence[Any]) -> list[dict[str, Any]]:
    messages = []
    for message in _plain(list(chat)):
        if not isinstance(message, dict):
            raise ProcessingError(f"Chat messages must be dicts with 'role' and 'content', got {message!r}.")
        # Keys set to None (as OpenAI-style APIs return them) are dropped: templates test for presence.
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in _REASONING_KEYS if key in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        messages.append(message)
    return messages


def render_chat_template(
    template: str,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    tools: Sequence[Mapping[str, Any] | Callable[..., Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    **variables: Any,
) -> list[str]:
    """Render each conversation with ``template``; return one string per conversation.

    ``continue_final_message`` (True, or the name of the message field to
    continue, "content" by default) cuts the text right after the final
    message so that a model continues it. ``variables`` (special tokens,
    ``date_string``, ...) are visible to the template.
    """
    if continue_final_message and add_generation_prompt:
        raise ProcessingError(
            "continue_final_message and add_generation_prompt cannot both be set: the first continues the last "
            "message, the second starts a new assistant message."
        )
    compiled = compile_chat_template(template)
    tool_schemas = _plain([_tool_schema(tool) for tool in tools]) if tools is not None else None
    if documents is not None and not all(isinstance(doc, Mapping) for doc in documents):
        raise ProcessingError("documents must be a list of dicts (for example with 'title' and 'text' keys).")
    context = {
        "tools": tool_schemas,
        "documents": _plain(list(documents)) if documents is not None else None,
        "add_generation_prompt": add_generation_prompt,
        **_plain(variables),
    }
    rendered = []
    for chat in conversations:
        chat = _normalise_messages(chat)
        continued = _mark_final_message(chat, template, continue_final_message) if continue_final_message else None
        text = _render(compiled, messages=chat, **context)
        if continued is not None:
            text = _cut_after_final_message(text, continued)
        rendered.append(text)
    return rendered


def _render(compiled: jinja2.Template, **context: Any) -> str:
    try:
        return compiled.render(**context)
    except _TemplateRaised as exc:
        raise ProcessingError(f"The chat template refused this input: {exc.message}") from exc
    except jinja2.exceptions.SecurityError as exc:
        raise ProcessingError(f"The chat template tried something the sandbox forbids: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise ProcessingError(f"Rendering the chat template failed: {exc}") from exc
    except Exception as exc:  # a template can raise TypeError, KeyError, ... on unexpected messages
        raise ProcessingError(f"Rendering the chat template failed: {type(exc).__name__}: {exc}") from exc


def _mark_final_message(chat: list[dict[str, Any]], template: str, field: bool | str) -> str:
    """Append the continuation mark to the final message; return the text that must survive rendering."""
    field = field if isinstance(field, str) else "content"
    final = chat[-1]
    if final.get(field) is None:
        raise ProcessingError(f"continue_final_message is set but the final message has no {field!r} to continue.")
    fields = [key for key in _REASONING_KEYS if final.get(key) == final[field]] if field in _REASONING_KEYS else [field]
    if not any(key in template for key in fields):
        raise ProcessingError(f"continue_final_message names {field!r}, which the chat template never reads.")
    value = final[field]
    if isinstance(value, (list, tuple)):
        for block in reversed(value):
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                original = block["text"]
                block["text"] = original + _CONTINUE_MARK
                return original
        raise ProcessingError("continue_final_message is set but the final message has no text block to continue.")
    for key in fields:
        final[key] = final[key] + _CONTINUE_MARK
    return value


def _cut_after_final_message(text: str, final_text: str) -> str:
    mark = _CONTINUE_MARK.strip()
    if final_text.strip() not in text or mark not in text:
        raise ProcessingError(
            "continue_final_message is set but the final message does not appear in the rendered chat (the "
            f"template changes or drops it), so it cannot be continued. Final message: {final_text.strip()!r}"
        )
    where = text.rindex(mark)
    if text[where:where + len(_CONTINUE_MARK)] == _CONTINUE_MARK:
        return text[:where]  # the template kept the message's spacing
    return text[:where].rstrip()  # the template trimmed the message, so trim what precedes the mark too


def _plain(value: Any) -> Any:
    """Rebuild ``value`` from plain JSON-like types; other objects become an inert ``"<TypeName>"`` string.

    Templates run in a sandbox, but objects with methods (images, arrays,
    tensors) could still be called from them; they only need to see data.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    for base in (bool, str, int, float):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    return f"<{type(value).__name__}>"


# --------------------------------------------------------------------------------------------------
# tools given as python functions
# --------------------------------------------------------------------------------------------------
def _tool_schema(tool: Any) -> dict[str, Any]:
    if isinstance(tool, Mapping):
        return dict(tool)
    if inspect.isfunction(tool) or inspect.ismethod(tool):
        return get_json_schema(tool)
    raise ProcessingError(
        f"A tool must be a JSON-schema dict or a python function with type hints and a docstring, got {tool!r}."
    )


_JSON_TYPES: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"}, bool: {"type": "boolean"},
    type(None): {"type": "null"}, list: {"type": "array"}, tuple: {"type": "array"}, dict: {"type": "object"},
    Any: {},
}
_SCALAR_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


def _enum_schema(values: list[Any], where: str) -> dict[str, Any]:
    if not values or any(type(v) not in _SCALAR_NAMES for v in values):
        raise ProcessingError(f"{where}: choices must be a non-empty list of int, float, str, bool or None values.")
    names = list(dict.fromkeys(_SCALAR_NAMES[type(v)] for v in values))
    return {"type": names[0] if len(names) == 1 else names, "enum": values}


def _hint_schema(hint: Any, where: str) -> dict[str, Any]:
    """Return the JSON schema of a type hint (basic types, Optional/Union, Literal, list, tuple, dict, Enum)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is None:
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return _enum_schema([member.value for member in hint], where)
        if hint in _JSON_TYPES:
            return dict(_JSON_TYPES[hint])
        raise ProcessingError(
            f"{where}: cannot describe the type {hint!r} in JSON schema; use int, float, str, bool, list, dict, "
            "Literal, Enum or unions of those, or write the tool's JSON schema by hand."
        )
    if origin is Union or origin is types.UnionType:
        options = [_hint_schema(arg, where) for arg in args if arg is not type(None)]
        if len(options) == 1:
            schema = options[0]
        elif all(set(option) == {"type"} and isinstance(option["type"], str) for option in options):
            names = sorted({option["type"] for option in options})
            schema = {"type": names[0] if len(names) == 1 else names}
        else:
            schema = {"anyOf": options}
        if type(None) in args:
            schema["nullable"] = True
        return schema
    if origin is Literal:
        return _enum_schema(list(args), where)
    if origin is list:
        return {"type": "array", "items": _hint_schema(args[0], where)} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1 or Ellipsis in args:
            raise ProcessingError(f"{where}: use list[...] for variable-length sequences instead of {hint!r}.")
        return {"type": "array", "prefixItems": [_hint_schema(arg, where) for arg in args]}
    if origin is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _hint_schema(args[1], where)
        return schema
    raise ProcessingError(f"{where}: cannot describe the type {hint!r} in JSON schema.")


_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_SECTION_HEADER = re.compile(r"^\s*(Returns|Return|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_LINE = re.compile(r"^(\s*)(\w+)\s*(?:\([^()]*\))?\s*:\s*(.*)$")
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """Split a Google-style docstring into (description, {argument: description}, returns description)."""
    lines = doc.splitlines()
    description: list[str] = []
    args: dict[str, str] = {}
    returns: list[str] = []
    section, current, indent = "description", None, None
    for line in lines:
        if _ARGS_HEADER.match(line):
            section, current, indent = "args", None, None
            continue
        if _SECTION_HEADER.match(line):
            section = "returns" if line.strip().lower().startswith("return") else "other"
            continue
        if section == "description":
            description.append(line)
        elif section == "returns":
            returns.append(line.strip())
        elif section == "args" and line.strip():
            match = _ARG_LINE.match(line)
            line_indent = len(line) - len(line.lstrip())
            if match and (indent is None or line_indent <= indent):
                indent, current = line_indent, match.group(2)
                args[current] = match.group(3).strip()
            elif current is not None:
                args[current] = f"{args[current]} {line.strip()}".strip()
    returns_text = " ".join(part for part in returns if part) or None
    return "\n".join(description).strip(), args, returns_text


def get_json_schema(func: Callable[..., Any]) -> dict[str, Any]:
    """Return the JSON schema of a tool function, from its type hints and Google-style docstring.

    Every parameter needs a type hint and an ``Args:`` entry; an entry ending
    in ``(choices: ["a", "b"])`` becomes an ``enum``. The result has the shape
    ``{"type": "function", "function": {"name", "description", "parameters"}}``
    that chat templates expect.
    """
    name = getattr(func, "__name__", "tool")
    doc = inspect.getdoc(func)
    if not doc:
        raise ProcessingError(f"Tool {name} needs a docstring describing it and its arguments (Google style).")
    description, arg_docs, returns_doc = _parse_docstring(doc.strip())
    hints = get_type_hints(func)
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    if params and params[0].name in ("self", "cls") and params[0].annotation is inspect.Parameter.empty:
        params = params[1:]
    properties: dict[str, Any] = {}
    required = []
    for param in params:
        if param.name not in hints:
            raise ProcessingError(f"Argument {param.name!r} of tool {name} has no type hint.")
        schema = _hint_schema(hints[param.name], f"argument {param.name!r} of tool {name}")
        if param.name not in arg_docs:
            raise ProcessingError(f"The docstring of tool {name} does not describe the argument {param.name!r}.")
        text = arg_docs[param.name]
        choices = _CHOICES.search(text)
        if choices:
            schema["enum"] = json.loads(choices.group(1))
            text = text[: choices.start()].strip()
        schema["description"] = text
        properties[param.name] = schema
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    function: dict[str, Any] = {"name": name, "description": description, "parameters": parameters}
    if "return" in hints:
        try:
            function["return"] = _hint_schema(hints["return"], f"return type of tool {name}")
        except ProcessingError:
            pass
        else:
            if returns_doc is not None:
                function["return"]["description"] = returns_doc
    return {"type": "function", "function": function}
