"""The policy: its schema (:mod:`.schema`, pure, re-exported here), the file's loading
(:mod:`.loading`, with :mod:`.yamlsource`) and who else can change it (:mod:`.risks`)."""

from sentinel_keeper.policy.schema import (
    DEFAULT_POLICY_PATH,
    EXTRA_KEEP_ALIVE,
    PINNED_KEEP_ALIVE,
    LoadOptions,
    ModelPolicy,
    OllamaSection,
    Policy,
    VramSection,
    json_schema,
)

__all__ = [
    "DEFAULT_POLICY_PATH",
    "EXTRA_KEEP_ALIVE",
    "PINNED_KEEP_ALIVE",
    "LoadOptions",
    "ModelPolicy",
    "OllamaSection",
    "Policy",
    "VramSection",
    "json_schema",
]
