"""How many tokens an answer may take, and whether a prompt fits the model's context at all.

The budget follows the template and the vocabulary instead of a fixed number: in `generate`
mode the model writes the whole answer, so it gets the template's answer skeleton filled with
the vocabulary's longest class name (in real tokens: 4-7 for LLaVA's Llama-2 vocabulary), plus
room for the background words; with the foreground forced, only that room. An answer still
open when the budget runs out is cut (teacher.model marks it), never a silently shortened word.
"""

from __future__ import annotations

from teacher.prompting.prompts import PromptTemplate, forced_answer_text

BACKGROUND_ROOM = 24  # tokens for a few background words and the closing quote/brace
DESCRIPTION_BUDGET = 96  # Prompt 3 (free description): no skeleton to measure


class PromptTooLongError(ValueError):
    """The prompt plus image tokens plus the answer budget exceed the model's positions."""


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def longest_name(tokenizer, names: list[str]) -> str:
    """The class name with the most tokens (the first of equals; "" for no names)."""
    return max(names, key=lambda name: token_count(tokenizer, name), default="")


def answer_budget(tokenizer, template: PromptTemplate, vocabulary: list[str], forced: bool) -> int:
    if template.forced_answer is None:
        return DESCRIPTION_BUDGET
    if forced:
        return BACKGROUND_ROOM
    name = longest_name(tokenizer, vocabulary)
    skeleton = forced_answer_text(template, name, [name])
    return token_count(tokenizer, " " + skeleton) + BACKGROUND_ROOM


def check_context(
    prompt_tokens: int, num_image_tokens: int, budget: int, max_positions: int, what: str
) -> None:
    """Raise PromptTooLongError, with the numbers and the ways out, when it cannot fit."""
    total = prompt_tokens + num_image_tokens - 1 + budget
    if total > max_positions:
        raise PromptTooLongError(
            f"{what}: {prompt_tokens} prompt tokens + {num_image_tokens - 1} more for the image "
            f"+ an answer budget of {budget} = {total} positions, but the model has "
            f"{max_positions} (text_config.max_position_embeddings). Prompt 1 lists every class "
            "name: use a shorter class vocabulary, prompt2, or a smaller max_new_tokens."
        )
