"""Turn pydantic's validation errors into located diagnostics with rule ids.

pydantic reports where (`loc`) and what (`type`); this module adds which platform rule the field
belongs to (so `workload_type: GPU_HUGE` is reported as E9, not as a generic type error) and a
"did you mean" hint for unknown keys.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from ._diagnostics import Diagnostic, Path
from ._rule_ids import RuleId

__all__ = ["diagnostics_from_validation_error"]

# Last path segment -> rule id, for errors pydantic finds on its own.
_FIELD_RULES: dict[str, RuleId] = {
    "provider": RuleId.X1,
    "workload_type": RuleId.E9,
    "renewal_period": RuleId.R1,
    "key": RuleId.R2,
    "behavior": RuleId.R9,
    "traffic_percentage": RuleId.T1,
    "calls": RuleId.R4,
    "tokens": RuleId.R4,
    "bedrock_provider": RuleId.X5,
    "environment_vars": RuleId.E15,
    "min_provisioned_throughput": RuleId.E13,
    "max_provisioned_throughput": RuleId.E13,
    "openai_api_type": RuleId.X4,
}

_ENUM_ERRORS = {"enum", "literal_error"}


def diagnostics_from_validation_error(
    error: ValidationError, root: type[BaseModel]
) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for item in error.errors(include_url=False, include_input=True):
        loc: Path = tuple(item["loc"])
        out.append(_diagnostic(item, loc, root))
    return out


def _diagnostic(item: dict[str, Any], loc: Path, root: type[BaseModel]) -> Diagnostic:
    kind = item["type"]
    field = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if kind == "extra_forbidden":
        known = _fields_at(root, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        msg = f"unknown field `{loc[-1]}`"
        msg += f"; did you mean `{hint[0]}`?" if hint else ""
        if known and not hint:
            msg += f" (allowed here: {', '.join(sorted(known))})"
        return Diagnostic(RuleId.S2, msg, loc)
    rule = _rule_for(loc, field, kind)
    if kind == "missing":
        return Diagnostic(rule, f"`{field}` is required", loc)
    message = item["msg"]
    if rule == RuleId.N1 and kind == "string_pattern_mismatch":
        message = "an endpoint name may only contain letters, digits, `-` and `_`"
    if kind in _ENUM_ERRORS or kind == "string_pattern_mismatch":
        given = item.get("input")
        if isinstance(given, (str, int, float, bool)) and len(str(given)) <= 80:
            message = f"{message}; got {given!r}"
    return Diagnostic(rule, message[0].lower() + message[1:], loc)


def _rule_for(loc: Path, field: str, kind: str) -> RuleId:
    if loc == ("name",):
        return RuleId.N1
    if field == "task":
        return RuleId.X1 if kind == "missing" else RuleId.X8
    if field == "name" and "external_model" in loc and loc[-1] == "name":
        return RuleId.X1
    if field == "key" and "api_key_auth" in loc:
        return RuleId.X7
    if field == "key" and "tags" in loc:
        return RuleId.N4
    if "environment_vars" in loc:
        return RuleId.E15
    return _FIELD_RULES.get(field, RuleId.S1)


def _fields_at(root: type[BaseModel], loc: Path) -> list[str]:
    """Field names of the model found by following `loc` from `root` (empty if none)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return []
        model = _model_in(info.annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
