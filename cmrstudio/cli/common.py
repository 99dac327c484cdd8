"""What the command modules share: options, argument checks and small helpers.

Nothing heavy is imported here (no torch, no engine, no evaluation): ``cmrstudio --help`` imports this module.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from cmrstudio.errors import CmrError

LabelsOpt = typer.Option(None, "--labels", help="Mask label convention: canonical, mnms or acdc (guessed from file names when omitted).")
FrameOpt = typer.Option(None, "--frame", help="Frame (time point) of a 4D cine, from 0.")
SpacingOpt = typer.Option(None, "--spacing", help="Voxel size 'z,y,x' in mm, used only when the file stores none.")

EvalDataOpt = typer.Option(..., "--data", help="Folder or file with real images and expert masks; repeatable.")
EvalCaseOpt = typer.Option([], "--case", help="Only cases whose id starts with this; repeatable (default: the held-out patients the model's card names).")
GeneratorOpt = typer.Option(None, "--model", help="Generator: spade (default), diffusion, flow, or a name or card path.")
EvalStepsOpt = typer.Option(None, "--steps", help="Sampling steps of a diffusion or flow model (the card's default when omitted).")
EvalGuidanceOpt = typer.Option(None, "--guidance", help="Guidance scale of a diffusion or flow model.")


def check_name(name: str) -> None:
    """A model name becomes a file name: refuse anything else."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or ".." in name:
        raise CmrError(f"--name {name!r} must be letters, digits, '.', '_' or '-' (it becomes a file name).")


def parse_spacing(text: str | None):
    """``--spacing 'z,y,x'`` in mm as a tuple of three floats (None when not given)."""
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CmrError(f"--spacing {text!r} must be three numbers in mm, like 8,1.25,1.25 (slice, row, column).") from None
    if len(vals) != 3:
        raise CmrError(f"--spacing {text!r} must be three numbers in mm, like 8,1.25,1.25 (slice, row, column).")
    return vals


def command_line() -> str:
    """The command being run, as it reproduces a measured figure (recorded in model cards; without --write-card)."""
    import shlex

    return "cmrstudio " + shlex.join(a for a in sys.argv[1:] if a != "--write-card")


LayoutPriorOpt = typer.Option(None, "--layout-prior", help="Fully synthetic renders take their tissue classes from this layout model (a name "
                              "or card: a layout bank from `cmrstudio train layout-bank`, or a fine prior) instead of the one the model's card names.")


def check_layout_choice(layout_prior: Optional[str], write_card: bool) -> None:
    """--layout-prior measures the model with another body layout than its card's: such figures do not go into the card."""
    if layout_prior and write_card:
        raise CmrError("--write-card records what the model does as shipped, with its card's own tissue-class prior; drop --layout-prior "
                       f"{layout_prior} or --write-card.")


def _eval_inputs(data: list[str], case: list[str], seeds: int, steps: Optional[int], guidance: Optional[float], model: Optional[str] = None,
                 layout_prior: Optional[str] = None, write_card: bool = False):
    """The held-out cases an evaluation runs on (--case, else those the generator's card names, as `evaluate all`
    does: a figure over the model's own training patients would flatter it), and the HQ sampling options given."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.run import held_out, matching, select_cases
    from cmrstudio.models.registry import get_model
    from cmrstudio.train.common import check_counts

    check_counts(seeds=seeds)
    check_layout_choice(layout_prior, write_card)
    everything = cases_from(data)  # refuses data that holds no case
    if case:
        cases = select_cases(everything, case, data)
    else:
        info = get_model(model, kind=generator_kinds())
        held = held_out([], info)
        cases = matching(everything, held)  # every case when the card names none
        if not cases:  # other data than the model's (a phantom, another centre): all of it
            cases = everything
            typer.echo(f"Note: none of the patients {info.name}'s card holds out ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}) "
                       f"is in {', '.join(map(str, data))}; scoring all {len(cases)} cases there (a figure over its own "
                       "training patients would flatter it).", err=True)
    return cases, {k: v for k, v in (("steps", steps), ("guidance", guidance), ("layout_prior", layout_prior)) if v is not None}


def _held_out(case: list[str], info) -> list[str]:
    """The held-out patients given with --case, else those the model's card names."""
    from cmrstudio.evaluate.run import held_out

    return held_out(case, info)

