"""The one exception hierarchy of sentinel-keeper.

Every error raised on purpose derives from :class:`SentinelError` and carries a message a
user understands. Only the CLI module turns these into printed errors and exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass


class SentinelError(Exception):
    """Base class of every error sentinel-keeper raises on purpose."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a policy file, located compiler style."""

    path: str
    line: int  # 0: the file as a whole
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        # line 0: about the file as a whole (missing, unreadable, a directory): no position
        where = f"{self.path}:{self.line}:{self.column}" if self.line else self.path
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class PolicyError(SentinelError):
    """The policy file cannot be used. Holds every problem found, not only the first."""

    def __init__(self, path: str, diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]) -> None:
        self.path = path
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class OllamaError(SentinelError):
    """Base class of problems talking to the Ollama server."""


class OllamaUnreachable(OllamaError):
    """No HTTP answer at all: connection refused, DNS failure, reset, or a timeout."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"ollama at {url} is unreachable: {reason}")


class OllamaTimeout(OllamaUnreachable):
    """Ollama accepted the connection but did not answer within the time allowed."""


class OllamaProtocolError(OllamaError):
    """Ollama answered, but not with what its API promises (bad JSON, wrong shape)."""


class OllamaAPIError(OllamaError):
    """Ollama answered with an HTTP error and its own error text."""

    def __init__(self, status: int, message: str, *, model: str | None = None) -> None:
        self.status = status
        self.message = message
        self.model = model
        prefix = f"{model}: " if model else ""
        super().__init__(f"{prefix}ollama said {status}: {message}")


class ModelNotFound(OllamaAPIError):
    """The model is not installed in Ollama (404)."""


class UnsupportedByModel(OllamaAPIError):
    """The model does not support the endpoint used (400, e.g. embedding-only on generate)."""


class OllamaBusy(OllamaAPIError):
    """Ollama's request queue is full (503)."""


class LoadFailed(OllamaAPIError):
    """Ollama could not load the model (500: out of memory, runner crash...)."""


class AtomicFileError(SentinelError):
    """A file could not be replaced or removed whole (atomicfile.py). Keeps the OSError; the
    caller turns it into its own error, saying what the file was for."""

    def __init__(self, what: str, cause: OSError) -> None:
        self.cause = cause
        super().__init__(f"{what}: {cause.strerror or cause}")


class StateError(SentinelError):
    """The state directory could not be read or written."""


class OverrideError(SentinelError):
    """The OLLAMA_KEEP_ALIVE drop-in could not be written or removed."""


class SystemdError(SentinelError):
    """A systemctl call failed."""


class MetricsError(SentinelError):
    """The metrics endpoint cannot listen, or `status` cannot read it."""


class GatewayError(SentinelError):
    """The gateway cannot listen on its address."""
