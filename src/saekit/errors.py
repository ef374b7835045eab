"""Errors a user can act on.

Every error saekit raises for bad input is a `SaekitError`: its message names the
problem and the fix, and it is raised before any long work starts. The CLI prints
the message alone (no traceback) for these and a traceback for anything else,
because anything else is a bug in saekit.
"""


class SaekitError(Exception):
    """Base class: bad input or state that the user can fix."""


class ConfigError(SaekitError, ValueError):
    """A configuration that is invalid or contradicts itself."""


class ModelLoadError(SaekitError):
    """A model name, folder or GGUF file that cannot be loaded."""


class HookPointError(SaekitError, ValueError):
    """A hook-point name that does not exist in the model."""


class DataError(SaekitError):
    """A dataset that is missing, empty or unreadable."""


class CheckpointError(SaekitError):
    """A checkpoint that is missing, corrupt, or belongs to a different run."""


class FormatError(SaekitError):
    """A saved dictionary that cannot be read (missing key, wrong shape, unknown format)."""


class TrainingDivergedError(SaekitError):
    """Training produced NaN or Inf; the last good checkpoint is kept."""


class DimensionError(SaekitError, ValueError):
    """Activations whose width does not match the dictionary (another hook point or model)."""


class OutputError(SaekitError):
    """An output that cannot be written (read-only folder, a file where a folder should be, a full disk)."""


class FolderBusyError(SaekitError):
    """Another saekit process is writing into the same folder."""


class HubError(SaekitError):
    """The Hugging Face Hub could not give or take a dictionary (not found, no access, offline)."""


class EndpointError(SaekitError):
    """A chat endpoint that refused, failed or answered nonsense after every retry."""


class PromptTooLongError(SaekitError):
    """A prompt that does not fit the model's context with room for its answer."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was kept and how to continue.

    A KeyboardInterrupt (not a SaekitError) so that code catching Ctrl-C keeps working;
    the CLI prints its message.
    """
