"""Fixtures for the prep tests: the tiny WD14-signature tagger and tiny BLIP, built once per session."""

from tagmodels import tiny_blip, wd14_model  # noqa: F401  (re-exported as fixtures)
