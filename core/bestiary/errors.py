"""The exception hierarchy of bestiary.

Every error names what was asked, what exists, and what would fix it.
"""

from __future__ import annotations


class BestiaryError(Exception):
    """Base class of every error raised by bestiary."""


class ConfigError(BestiaryError, ValueError):
    """A configuration file or value is missing or invalid."""


class RegistryError(BestiaryError, LookupError):
    """Something was asked of the plugin registry that it cannot serve."""


class NotRegisteredError(RegistryError, KeyError):
    """No installed plugin registers the requested architecture, task or class."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class AmbiguousProviderError(RegistryError):
    """Two distributions register the same name and none was chosen."""


class ReferenceImportError(RegistryError, ImportError):
    """A registered ``"module:Class"`` reference failed to import."""


class InvalidReferenceError(RegistryError, ValueError):
    """A ``"module:Class"`` reference is malformed."""


class CheckpointError(BestiaryError, OSError):
    """A checkpoint file is missing, truncated, corrupt or does not fit the model."""


class WeightShapeError(CheckpointError):
    """Checkpoint tensors have shapes the model does not expect."""


class HubError(BestiaryError, OSError):
    """A file could not be resolved from a local folder or the hub."""


class ProcessingError(BestiaryError, ValueError):
    """Inputs given to a tokenizer or processor are invalid."""


class GenerationError(BestiaryError, ValueError):
    """Generation settings or inputs are invalid."""
