"""Model names as Ollama normalises them."""

from __future__ import annotations

from sentinel_keeper.values.text import escape_unprintable

DEFAULT_TAG = "latest"


def normalize_model_name(name: str) -> str:
    """Return ``name`` in the ``name:tag`` form that /api/ps and /api/tags use.

    ``llama3.2`` and ``registry.ollama.ai/library/llama3.2`` become ``llama3.2:latest``;
    ``hf.co/org/repo:Q4_K_M`` and ``host:5000/ns/model`` keep their own tag (or gain
    ``:latest``): a colon only starts the tag when it comes after the last slash.

    Names come from Ollama's answers too: control characters, line separators and the like
    (which no real model name has) are escaped here, so that no name can break a log line
    or reach a terminal raw.
    """
    name = escape_unprintable(name.strip())
    for prefix in ("registry.ollama.ai/", "library/"):
        # Ollama shows its own registry's models by the shortest name (DisplayShortest).
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
    last_part = name.rsplit("/", 1)[-1]
    if ":" in last_part:
        return name
    return f"{name}:{DEFAULT_TAG}"


DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


def model_key(name: str) -> str:
    """``name`` in the form in which Ollama compares names: two names with the same key are
    the same model to Ollama (types/model/name.go: ParseName fills in the registry
    ``registry.ollama.ai``, the namespace ``library`` and the tag ``latest``; EqualFold
    compares the parts case-insensitively, and the model's files are found by the lowercased
    path; surrounding whitespace is trimmed first). ``LLAMA3.2:1B`` and
    ``registry.ollama.ai/library/llama3.2:1b`` are ``llama3.2:1b``."""
    s = name.strip()
    tag = DEFAULT_TAG
    if s.rfind(":") > s.rfind("/"):
        s, _, tag = s.rpartition(":")
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    front, slash, model = s.rpartition("/")
    if slash:
        registry, slash, namespace = front.rpartition("/")
        if slash:
            host = registry.split("://", 1)[-1]
    return f"{host}/{namespace}/{model}:{tag}".lower()
