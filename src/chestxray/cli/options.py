"""Every command's options, declared once: those of a config section generated from its fields (default, help, allowed
values and bounds from config.py), the rest here, shared by the commands that take them."""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import fields
from typing import Optional

import typer

from ..config import SECTION_TITLES, SECTIONS, CalibrationConfig, ServeConfig, check_option, field_type, flag_name

# sections whose fields become options: a run's config, and the service's limits
OPTION_SECTIONS = {**SECTIONS, "serve": ServeConfig}
OPTION_TITLES = {**SECTION_TITLES, "serve": "Service"}


def field_option(section: type, name: str, default=..., panel: str | None = None, default_note: str | None = None,
                 bounds: bool = False):
    """A typer.Option for one config field: its flag, help and allowed values as declared in config.py, and its
    default shown in the help (`default_note` instead where given). `default`: the option's value when not given
    (the field's own unless said; None where the command tells 'not given' apart). `bounds`: the field's numeric
    bounds checked by the parser too (otherwise Config.validate checks them, with its own message)."""
    f = next(f for f in fields(section) if f.name == name)
    kind, meta = field_type(section, name), f.metadata
    help_text = meta["help"]
    if meta.get("choices"):
        help_text += f" One of: {', '.join(meta['choices'])}."
    shown = default_note or ("" if f.default in (None, "") else str(f.default).lower() if kind is bool else str(f.default))
    if shown and "[default:" not in help_text:
        help_text += f"  [default: {shown}]"
    decls = [f"{flag_name(name)}/--no-{name.replace('_', '-')}"] if kind is bool else [flag_name(name)]
    limits = {"min": meta.get("ge"), "max": meta.get("le")} if bounds and kind in (int, float) else {}
    return typer.Option(f.default if default is ... else default, *decls, help=help_text, show_default=False,
                        rich_help_panel=panel, **{k: v for k, v in limits.items() if v is not None})


def config_options(*sections: str):
    """Give a Typer command one --option per field of the named config sections (all of a run's by default), each under
    its section's heading in --help; the command receives those that were given as `overrides`."""
    names = sections or tuple(SECTIONS)

    def decorate(command):
        hints = typing.get_type_hints(command)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values() if p.name != "overrides"]
        generated = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                       annotation=Optional[field_type(OPTION_SECTIONS[s], f.name)],
                                       default=field_option(OPTION_SECTIONS[s], f.name, None, OPTION_TITLES[s]))
                     for s in names for f in fields(OPTION_SECTIONS[s])]

        @functools.wraps(command)
        def wrapper(**kwargs):
            mine = {p.name: kwargs.pop(p.name) for p in own}
            return command(**mine, overrides={k: v for k, v in kwargs.items() if v is not None})

        wrapper.__signature__ = inspect.Signature(own + generated)
        wrapper.__annotations__ = {}
        return wrapper

    return decorate


def checked(section: type, **given) -> dict:
    """The options given (None: not given), each checked against its declaration."""
    for name, value in given.items():
        if value is not None:
            check_option(section, name, value)
    return given


RUN_ARG = typer.Argument(..., metavar="RUN", help="Run directory (or its checkpoints/best.ckpt).")
MODEL_ARG = typer.Argument(..., metavar="MODEL", help="Run directory, its checkpoints/best.ckpt, or a .onnx file from `chestxray export`.")
PATHS_ARG = typer.Argument(..., metavar="PATHS", help="Image files or folders.")
DATA_OPT = typer.Option(..., help="ImageFolder root or CSV manifest.")
SPLIT_OPT = typer.Option(None, help="Split to use.  [default: test; all images where the data has no train/val/test splits]")
SKIP_BAD_OPT = typer.Option(False, "--skip-bad", help="Skip unreadable images (reported) instead of stopping.")
BOOTSTRAP_OPT = field_option(CalibrationConfig, "bootstrap", bounds=True)
ENGINE_OPT = typer.Option("torch", "--engine", help="Run a run directory's model on torch, or on onnxruntime (onnx: through "
                          "checkpoints/best.onnx, exported and verified against PyTorch on first use; faster on a CPU, "
                          "P(infected) within 1e-4 of PyTorch's). An .onnx MODEL always runs on onnxruntime.")
DEVICE_OPT = typer.Option("cpu", "--device", help="Where PyTorch runs the network: cpu, cuda, cuda:N, or auto (the first GPU "
                          "where there is one). The contract is fp32 (TF32 off) on either; onnxruntime runs on the CPU.")
NO_LUNGS_OPT = typer.Option(False, "--no-lungs", help="Skip the lung check (lungs_found: a plausible pair of lung fields, found by the segmenter).")
LUNG_MODEL_OPT = typer.Option(None, "--lung-model", help="A segmenter file from `chestxray lungs train`.  [default: the packaged one]")
# adapt: the threshold rule, declared as training's, defaulting to the run's own
RULE_OPTS = {name: field_option(CalibrationConfig, name, None, default_note="the run's own")
             for name in ("operating_point", "target_sensitivity", "target_confidence")}
