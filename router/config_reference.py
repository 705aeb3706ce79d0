"""config/reference.yaml and config/schema.json, generated from the config models.

The models are the one source: every key, its default and its explanation come from the
pydantic fields and the comments written next to them in the settings modules, so the
reference cannot drift (tests/test_config_reference.py regenerates both and compares).
Regenerate with `phala-router config-schema --reference > config/reference.yaml` and
`phala-router config-schema > config/schema.json`.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from functools import cache
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from router.config import RouterConfig

HEADER = """\
# Every key of the router config with its default, generated from the config models
# (phala-router config-schema --reference > config/reference.yaml; a test keeps it in step).
# Keys marked "required" have no default. Sections shown commented out are off by default;
# uncomment them to use them. Durations: 250ms, 5s, 1m30s, 500us, 1d or plain seconds.
# Secrets are never written here: `*_env` keys name the environment variable holding them.
# Overrides: PHALA_ROUTER_SECTION__KEY=value (e.g. PHALA_ROUTER_PROXY__CONNECT_TIMEOUT=2s).
"""


@cache
def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the comment above its line (and any trailing one), read from the source."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments.get(line, ""))
            line -= 1
        trailing = comments.get(node.lineno)
        found[node.target.id] = " ".join(part for part in [*above, trailing or ""] if part)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Config models inside an annotation: X, X | None, tuple[X, ...], Annotated[A | B, ...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(annotation))
    return origin in (tuple, list)


def _is_duration(info: Any) -> bool:
    return "parse_duration" in repr(info.metadata) + repr(info.annotation)


def _duration(seconds: float) -> str:
    """5.0 -> 5s, 300.0 -> 5m, 0.25 -> 250ms: how a person writes it in YAML."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds else "0s"


def _literal(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    return args[0] if typing.get_origin(annotation) is typing.Literal and len(args) == 1 else None


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _line(indent: int, text: str, comment: str, prefix: str = "") -> str:
    pad = "  " * indent
    head = f"{prefix}{pad}{text}"
    return f"{head}   # {comment}" if comment else head


def _model_lines(model: type[BaseModel], indent: int, prefix: str = "") -> list[str]:
    """The keys of `model` at `indent`; `prefix` is "# " inside a section shown commented."""
    comments = field_comments(model)
    out: list[str] = []
    # Sections repeated from the top level (an app's discovery, health, ...) are not
    # listed twice: one line points at the top-level section.
    repeated = getattr(model, "SECTIONS_AS_TOP_LEVEL", ())
    for name, info in model.model_fields.items():
        comment = comments.get(name, "")
        if name in repeated:
            note = f"the keys of the top-level {name} section, merged over it"
            out.append(_line(indent, f"{name}: {{}}", note, "# "))
            continue
        default = info.get_default(call_default_factory=True)
        models = _models_in(info.annotation)
        if isinstance(default, BaseModel):
            out.append(_line(indent, f"{name}:", comment, prefix))
            out += _model_lines(type(default), indent + 1, prefix)
            continue
        if default is PydanticUndefined:
            comment = f"required. {comment}".strip(". ") if comment else "required"
            if (fixed := _literal(info.annotation)) is not None:
                out.append(_line(indent, f"{name}: {fixed}", comment, "# "))
                continue
            if not models:
                out.append(_line(indent, f"{name}:", comment, "# "))
                continue
            out.append(_line(indent, f"{name}:", comment, "# "))
            comment = ""
        elif not (models and prefix and default in (None, ())):
            dumped = default
            if isinstance(default, tuple | frozenset):
                dumped = json.loads(json.dumps(list(default), default=str))
            elif isinstance(default, float | int) and _is_duration(info):
                dumped = _duration(float(default))
            out.append(_line(indent, f"{name}: {_scalar(dumped)}", comment, prefix))
            comment = ""
        for sub in models:  # an optional section or a list of items: its keys, commented
            label = f"{name}:" if not _is_sequence(info.annotation) else f"{name}:   # list items"
            if default is not PydanticUndefined or len(models) > 1:
                out.append(_line(indent, label, comment, "# "))
            out += _model_lines(sub, indent + 1, "# ")
    return out


def reference_yaml() -> str:
    return HEADER + "\n".join(_model_lines(RouterConfig, 0)) + "\n"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of RouterConfig, with each property's comment as its description."""
    schema = RouterConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "phala-router config"
    models: dict[str, type[BaseModel]] = {RouterConfig.__name__: RouterConfig}
    pending: list[type[BaseModel]] = [RouterConfig]
    while pending:
        model = pending.pop()
        for info in model.model_fields.values():
            for sub in _models_in(info.annotation):
                if sub.__name__ not in models:
                    models[sub.__name__] = sub
                    pending.append(sub)
    for name, model in models.items():
        node = schema if name == RouterConfig.__name__ else schema.get("$defs", {}).get(name)
        if node is None:
            continue
        for key, text in field_comments(model).items():
            prop = node.get("properties", {}).get(key)
            if prop is not None and text:  # the comment is more specific than a type's help
                prop["description"] = text
    return schema
