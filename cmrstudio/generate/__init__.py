"""``cmrstudio generate``: a synthetic dataset from a recipe, locally or on a Ray cluster.

:mod:`.recipe` (the recipe file and its checks), :mod:`.plan` (the recipe expanded into per-case specs and
shards; the anatomy of a spec), :mod:`.augment` (label-map augmentation), :mod:`.run` (local and Ray
execution, resume, assembly through :mod:`cmrstudio.export`), :mod:`.bench` (throughput).
"""

from cmrstudio.generate.recipe import Recipe, load_recipe, parse_recipe

__all__ = ["Recipe", "load_recipe", "parse_recipe", "generate", "load_plan"]


def generate(*a, **kw):
    from cmrstudio.generate.run import generate as _generate

    return _generate(*a, **kw)


def load_plan(recipe_path):
    from cmrstudio.generate.run import load_plan as _load_plan

    return _load_plan(recipe_path)
