"""The Ollama environment variables sentinel-keeper may set, validated as Ollama parses them:
variables.py (the registry of what Ollama reads, and the checks), goparse.py (Go's parsers
as Ollama applies them) and unitsyntax.py (writing and reading systemd Environment= lines).
The names below are the package's interface."""

from sentinel_keeper.ollama_env.goparse import (
    ollama_duration_ns,
    parse_go_bool,
    parse_go_duration,
    parse_go_int64,
    parse_go_uint64,
)
from sentinel_keeper.ollama_env.unitsyntax import (
    MAX_VALUE_LENGTH,
    environment_line,
    parse_environment_value,
    quote_assignment,
    split_words,
    unsafe_text_problem,
)
from sentinel_keeper.ollama_env.variables import (
    KEEP_ALIVE,
    KNOWN_VARIABLES,
    OLLAMA_SOURCE,
    OllamaVariable,
    environment_problem,
    format_keep_alive,
    keep_alive_problem,
    name_problem,
    value_problem,
)

__all__ = [
    "KEEP_ALIVE",
    "KNOWN_VARIABLES",
    "MAX_VALUE_LENGTH",
    "OLLAMA_SOURCE",
    "OllamaVariable",
    "environment_line",
    "environment_problem",
    "format_keep_alive",
    "keep_alive_problem",
    "name_problem",
    "ollama_duration_ns",
    "parse_environment_value",
    "parse_go_bool",
    "parse_go_duration",
    "parse_go_int64",
    "parse_go_uint64",
    "quote_assignment",
    "split_words",
    "unsafe_text_problem",
    "value_problem",
]
