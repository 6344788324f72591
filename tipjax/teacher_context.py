"""Teacher-only context (privileged information): the prompt the teacher sees before the shared response.

The student samples a response to its own prompt; the teacher scores that same response after a prompt of
its own: an optional system message, and the user message with a prefix and suffix around it, its problem
text replaced by a template over the row's fields (e.g. the reference solution). The teacher prompt goes
through the same tokenizer and chat template (tokenization.check_tokenizers makes them one), is left padded to its
own bucket (data.teacher_max_prompt_length), and the step appends the sampled response tokens to it: the
teacher's response-predicting positions are then the student's, whatever the two prompt lengths.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Mapping


class ContextError(ValueError):
    """A teacher-only context setting or a data row cannot make a teacher prompt; the message names which."""


@dataclasses.dataclass(frozen=True)
class TeacherContext:
    system_prompt: str = ""
    template: str = ""
    prefix: str = ""
    suffix: str = ""
    max_prompt_length: int = 2048    # the teacher prompt's bucket: longer prompts are an error, not cut


def from_spec(spec) -> TeacherContext | None:
    """The DataSpec's teacher-only context, or None when no teacher-only field is set (the teacher then sees
    the student's prompt, and the step is the one without this feature)."""
    ctx = TeacherContext(system_prompt=spec.teacher_system_prompt, template=spec.teacher_template,
                         prefix=spec.teacher_prefix, suffix=spec.teacher_suffix,
                         max_prompt_length=spec.teacher_max_prompt_length or spec.max_prompt_length)
    return ctx if (ctx.system_prompt or ctx.template or ctx.prefix or ctx.suffix) else None


def template_fields(template: str) -> tuple[str, ...]:
    """The row fields a template reads, in order; ContextError for bad syntax or fields that are not names."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ContextError(f"data.teacher_template={template!r}: {err} (write a literal brace as {{{{ or }}}})")
    fields = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ContextError(f"data.teacher_template={template!r}: {{{name}}} is not a field name; use "
                               f"{{field}} with a top-level field of the prompt rows")
        fields.append(name)
    return tuple(fields)


def missing_fields(row: Mapping[str, Any], template: str) -> list[str]:
    return [f for f in template_fields(template) if f not in row or row[f] is None]


def teacher_messages(row: Mapping[str, Any], messages: list[dict[str, str]], ctx: TeacherContext,
                     options) -> list[dict[str, str]]:
    """The teacher's chat messages for a row whose student messages are `messages` (data.prompt_messages).

    options: the data.PromptOptions the student's messages were built with. A template replaces the problem
    text, and the instruction is appended to it as for the student, so both are asked for the same format.
    """
    messages = [dict(m) for m in messages]
    user = max(i for i, m in enumerate(messages) if m["role"] == "user") if any(
        m["role"] == "user" for m in messages) else len(messages) - 1
    if ctx.template:
        missing = missing_fields(row, ctx.template)
        if missing:
            raise ContextError(f"no field {missing[0]!r} for data.teacher_template")
        body = ctx.template.format_map(row)
        plain = any(isinstance(row.get(f), str) and row[f].strip() for f in options.prompt_fields)
        if plain and options.instruction:
            body = f"{body}{options.instruction_separator}{options.instruction}"
        messages[user]["content"] = body
    messages[user]["content"] = f"{ctx.prefix}{messages[user]['content']}{ctx.suffix}"
    if ctx.system_prompt:
        if messages[0]["role"] == "system":  # a row's own system message stays, after the teacher's
            messages[0]["content"] = f"{ctx.system_prompt}\n\n{messages[0]['content']}"
        else:
            messages.insert(0, {"role": "system", "content": ctx.system_prompt})
    return messages


def check_rows(path, ctx: TeacherContext) -> None:
    """Every row of the prompt file has the template's fields: checked before any model loads."""
    from tipjax import data

    if not ctx.template:
        return
    for number, row in data.read_rows(path):
        missing = missing_fields(row, ctx.template)
        if missing:
            raise data.PromptFileError(f"{path}:{number}: no field {missing[0]!r} for data.teacher_template")
