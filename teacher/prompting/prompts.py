"""The paper's prompts (supplementary Sec. 8) as data, and the chat text built from them.

Templates live in `prompts.json` so they are recorded verbatim with every map (Teacher.spec()).
Placeholders are replaced by name, never with str.format: Prompt 1's own answer format contains
literal braces (`{'foreground':{}, 'background':{}}`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

PROMPTS_FILE = Path(__file__).with_name("prompts.json")
CHAT_FORM = "USER: <image>\n{prompt} ASSISTANT:"  # LLaVA-1.5's conversation template


class PromptTemplate(BaseModel):
    task: Literal["classification", "dense"]
    question: str
    forced_answer: str | None  # None: the prompt has no slot to force (Prompt 3)
    answer_format: Literal["dict", "phrase", "description", "dense"]
    source: str


def load_prompts(path: Path = PROMPTS_FILE) -> dict[str, PromptTemplate]:
    raw = json.loads(path.read_text())
    return {name: PromptTemplate.model_validate(body) for name, body in raw.items()}


PROMPTS: dict[str, PromptTemplate] = load_prompts()


def join_names(names: list[str]) -> str:
    """'dog', 'dog and car', 'dog, car and cat' (how the dense prompt lists its targets)."""
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def question_text(
    template: PromptTemplate, vocabulary: list[str], objects: list[str], background_hint: str
) -> str:
    return (
        template.question.replace("{vocabulary}", ", ".join(vocabulary))
        .replace("{tgt_obj}", join_names(objects))
        .replace("{background}", background_hint)
    )


def forced_answer_text(template: PromptTemplate, foreground: str, objects: list[str]) -> str:
    if template.forced_answer is None:
        raise ValueError(f"prompt {template.source!r} has no foreground slot to force")
    return (
        template.forced_answer.replace("{fg}", foreground)
        .replace("{tgt_obj}", join_names(objects))
        .replace("{be}", "is" if len(objects) <= 1 else "are")
    )


def chat_text(question: str, forced_answer: str) -> str:
    """The full text fed to the model; `forced_answer` ('' in generate mode) opens the answer."""
    head = CHAT_FORM.replace("{prompt}", question)
    return f"{head} {forced_answer}" if forced_answer else head
