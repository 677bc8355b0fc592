"""run.dir templates: the fields a run.dir may name, checked as config (no file system here).

The folders a template makes are `ae_dist.run.templates`'s.
"""

from __future__ import annotations

import string

TEMPLATE_FIELDS = ("wandb_run_id", "date", "time")


def template_fields(template: str) -> list[str]:
    """The fields a run.dir names (none: not a template); ValueError for a field that is not one of TEMPLATE_FIELDS."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"a stray brace ({err})") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(f"unknown field {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}")
        names.append(name)
    return names


def template_problems(template: str) -> list[tuple[str, str, str]]:
    """Config validation of run.dir: its template fields, as (what, where, fix) problems."""
    try:
        template_fields(template)
    except ValueError as err:
        return [(f"run.dir template has {err}", "run.dir",
                 "use {wandb_run_id}, {date} or {time}")]
    return []
