"""Command-line flags generated from a pydantic params model, so the CLI and the Prefect form
always offer the same fields with the same defaults."""

from __future__ import annotations

import argparse
import json
import typing
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pipeline.errors import BadParametersError
from pipeline.sections import SectionedParams

Params = TypeVar("Params", bound=BaseModel)


def add_model_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field, sections' fields by their flat names (booleans get --x / --no-x;
    lists, tuples, dicts and unflattened models take JSON); unset flags keep the defaults."""
    for name, info in _flag_fields(model).items():
        flag = "--" + name.replace("_", "-")
        # argparse %-formats help strings: a literal '%' in a description ("100 %") must be '%%'.
        text = (info.description or "").replace("%", "%%") or None
        if info.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        elif _is_json_field(info.annotation):
            parser.add_argument(flag, type=json.loads, default=None, help=f"{text} (JSON)")
        else:
            parser.add_argument(flag, default=None, help=text)


def _flag_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Flag name -> the field it sets (the first, for a name several sections share)."""
    if issubclass(model, SectionedParams):
        return {flat: targets[0].info for flat, targets in model.flat_fields().items()}
    return dict(model.model_fields)


def _is_json_field(annotation: object) -> bool:
    """Lists, tuples, dicts and nested models (optional or not) come from the command line as
    JSON."""
    candidates = [annotation, *typing.get_args(annotation)]
    return any(
        typing.get_origin(a) in (list, tuple, dict)
        or a in (list, tuple, dict)
        or (isinstance(a, type) and issubclass(a, BaseModel))
        for a in candidates
    )


def add_preset_argument(parser: argparse.ArgumentParser) -> None:
    """`--preset NAME`: start from experiments/presets/NAME.yaml (flat names); flags override."""
    parser.add_argument(
        "--preset",
        default=None,
        help="a named set of parameters (experiments/presets/<name>.yaml or a .yaml path); "
        "flags given beside it override its values",
    )


def parse_model(model: type[Params], args: argparse.Namespace) -> Params:
    """The params model from the preset (if any) and the flags given; a value that does not
    validate is a user error naming the flag."""
    names = _flag_fields(model)
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if getattr(args, "preset", None):
        from experiments.presets import load_preset

        try:
            given = {**load_preset(args.preset), **given}
        except ValueError as error:
            raise BadParametersError(str(error)) from None
    try:
        return model.model_validate(given)
    except ValidationError as error:
        raise bad_parameters(error, model) from None


def bad_parameters(
    error: ValidationError, model: type[BaseModel] | None = None
) -> BadParametersError:
    """A pydantic validation error as one line, each field named as its command-line flag."""
    flat_of = {}
    if model is not None and issubclass(model, SectionedParams):
        flat_of = {
            (t.section, t.name): flat for flat, ts in model.flat_fields().items() for t in ts
        }
    problems = []
    for item in error.errors():
        loc = item["loc"]
        if len(loc) >= 2 and (loc[0], loc[1]) in flat_of:
            loc = (flat_of[(loc[0], loc[1])], *loc[2:])
        flag = "--" + str(loc[0]).replace("_", "-") if loc else "parameters"
        where = "".join(f"[{part}]" for part in loc[1:])
        problems.append(f"{flag}{where}: {item['msg']} (got {item.get('input')!r})")
    return BadParametersError("; ".join(problems))
