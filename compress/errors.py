"""Errors a user can act on, and the exit codes the CLI maps them to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # bad input: recipe, file, data, flags
EXIT_FIDELITY = 3  # the run finished, the report is written, a fidelity threshold failed
EXIT_INTERNAL = 1  # an unexpected error (a bug): traceback with --debug


class CompressError(Exception):
    """A problem with the user's input, reported as one line and a non-zero exit."""

    exit_code = EXIT_USAGE


class RecipeError(CompressError):
    """The recipe is invalid: the message names the file, the pass index and the field."""


class DataError(CompressError):
    """A data folder is missing, empty or unusable."""


class ModelLoadError(CompressError):
    """A checkpoint is missing, unreadable or refused (untrusted pickle)."""


class PassError(CompressError):
    """A pass cannot be applied to this model (checked before the model is touched)."""


class FidelityFailed(CompressError):
    """The exported model does not agree with the original well enough."""

    exit_code = EXIT_FIDELITY
