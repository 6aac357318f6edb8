"""Recipes: one YAML file chaining steps (their kinds: ``workbench.recipe.kinds``), validated
whole before anything runs, each step cached by its fingerprint."""

from workbench.recipe.schema import Recipe, Step, load_recipe

__all__ = ["Recipe", "Step", "load_recipe"]
