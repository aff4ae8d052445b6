"""Command-line flags generated from a pydantic params model, so the CLI and the Prefect form
always offer the same fields with the same defaults."""

from __future__ import annotations

import argparse
import json
import typing
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from pipeline.errors import BadParametersError

Params = TypeVar("Params", bound=BaseModel)


def add_model_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field (booleans get --x / --no-x; lists, tuples and dicts take JSON); unset
    flags keep the model's default."""
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        elif _is_json_field(field.annotation):
            parser.add_argument(
                flag, type=json.loads, default=None, help=f"{field.description} (JSON)"
            )
        else:
            parser.add_argument(flag, default=None, help=field.description)


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


def parse_model(model: type[Params], args: argparse.Namespace) -> Params:
    """The params model from the flags given; a value that does not validate is a user error
    naming the flag."""
    given = {k: v for k, v in vars(args).items() if k in model.model_fields and v is not None}
    try:
        return model.model_validate(given)
    except ValidationError as error:
        raise bad_parameters(error) from None


def bad_parameters(error: ValidationError) -> BadParametersError:
    """A pydantic validation error as one line, each field named as its command-line flag."""
    problems = []
    for item in error.errors():
        flag = "--" + str(item["loc"][0]).replace("_", "-") if item["loc"] else "parameters"
        where = "".join(f"[{part}]" for part in item["loc"][1:])
        problems.append(f"{flag}{where}: {item['msg']} (got {item.get('input')!r})")
    return BadParametersError("; ".join(problems))
