"""ollama_env: Ollama's variables and parsers, and systemd's quoting of Environment=."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sentinel_keeper import ollama_env
from sentinel_keeper.ollama_env import (
    KNOWN_VARIABLES,
    environment_line,
    environment_problem,
    format_keep_alive,
    keep_alive_problem,
    ollama_duration_ns,
    parse_environment_value,
    parse_go_duration,
    quote_assignment,
    split_words,
)

S = 1_000_000_000

# OLLAMA_* names read by envconfig/config.go at v0.33.0-rc2 (AsMap plus the Var definitions).
OLLAMA_CONFIG_GO_NAMES = {
    "OLLAMA_AUTH",
    "OLLAMA_CONTEXT_LENGTH",
    "OLLAMA_DEBUG",
    "OLLAMA_DEBUG_LOG_REQUESTS",
    "OLLAMA_EDITOR",
    "OLLAMA_FLASH_ATTENTION",
    "OLLAMA_GO_TEMPLATE",
    "OLLAMA_GPU_OVERHEAD",
    "OLLAMA_HOST",
    "OLLAMA_IGPU_ENABLE",
    "OLLAMA_KEEP_ALIVE",
    "OLLAMA_KV_CACHE_TYPE",
    "OLLAMA_LLM_LIBRARY",
    "OLLAMA_LOAD_TIMEOUT",
    "OLLAMA_MAX_LOADED_MODELS",
    "OLLAMA_MAX_QUEUE",
    "OLLAMA_MAX_TRANSFER_STREAMS",
    "OLLAMA_MODELS",
    "OLLAMA_NO_CLOUD",
    "OLLAMA_NOHISTORY",
    "OLLAMA_NOPRUNE",
    "OLLAMA_NUM_PARALLEL",
    "OLLAMA_ORIGINS",
    "OLLAMA_REMOTES",
    "OLLAMA_SCHED_SPREAD",
    "OLLAMA_VULKAN",
}


def test_known_variables_are_exactly_those_of_ollama_envconfig() -> None:
    assert set(KNOWN_VARIABLES) == OLLAMA_CONFIG_GO_NAMES


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("-1", -S),  # integer seconds
        ("3600", 3600 * S),
        ("+5", 5 * S),
        ("24h", 86400 * S),
        ("1h30m", 5400 * S),
        ("-1m", -60 * S),
        ("1.5s", 1500 * 1_000_000),
        (".5m", 30 * S),
        ("5.m", 300 * S),
        ("300ms", 300 * 1_000_000),
        ("1us", 1000),
        ("1\u00b5s", 1000),
        ("1\u03bcs", 1000),
        ("2562047h47m16.854775807s", (1 << 63) - 1),
        ("-2562047h47m16.854775808s", -(1 << 63)),
        ("9223372036", 9223372036 * S),
    ],
)
def test_ollama_duration_accepts_what_ollama_parses(text: str, ns: int) -> None:
    assert ollama_duration_ns(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "1d",  # Go has no days
        "1w",
        "5 m",
        "5M",
        "1e3",
        "-",
        ".",
        ".s",
        "1h30",  # a number without unit after the first component
        "0x10",
        "1_000",
        "2562047h47m16.854775808s",  # one nanosecond too many
        "9223372037",  # seconds that overflow time.Duration when multiplied
        "forever",
        "\u0665",  # an Arabic-Indic digit: not an ASCII digit
    ],
)
def test_ollama_duration_refuses_what_ollama_would_silently_replace(text: str) -> None:
    assert ollama_duration_ns(text) is None


def test_go_duration_refuses_a_bare_integer_but_ollama_reads_it_as_seconds() -> None:
    with pytest.raises(ValueError):
        parse_go_duration("300")
    assert ollama_duration_ns("300") == 300 * S


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-1, "-1"),
        (-0.5, "-1"),
        (0, "0"),
        (300, "5m"),
        (86400, "24h"),
        (5400, "1h30m"),
        (90, "1m30s"),
        (0.25, "0.25s"),
        (300.5, "5m0.5s"),
        (1e-9, "0.000000001s"),
    ],
)
def test_format_keep_alive(seconds: float, text: str) -> None:
    assert format_keep_alive(seconds) == text


@given(st.floats(min_value=0, max_value=9e9, allow_nan=False))
def test_format_keep_alive_parses_back_as_ollama_reads_it(seconds: float) -> None:
    assert ollama_duration_ns(format_keep_alive(seconds)) == round(seconds * S)


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 1e10, True])
def test_keep_alive_problem(seconds: float) -> None:
    assert keep_alive_problem(seconds) is not None
    with pytest.raises(ValueError):
        format_keep_alive(seconds)


VALID = [
    ("OLLAMA_NUM_PARALLEL", "2"),
    ("OLLAMA_MAX_LOADED_MODELS", "0"),
    ("OLLAMA_GPU_OVERHEAD", "18446744073709551615"),
    ("OLLAMA_FLASH_ATTENTION", "true"),
    ("OLLAMA_FLASH_ATTENTION", "1"),
    ("OLLAMA_SCHED_SPREAD", "F"),
    ("OLLAMA_DEBUG", "2"),
    ("OLLAMA_DEBUG", "false"),
    ("OLLAMA_LOAD_TIMEOUT", "10m"),
    ("OLLAMA_LOAD_TIMEOUT", "600"),
    ("OLLAMA_HOST", "0.0.0.0"),
    ("OLLAMA_HOST", "0.0.0.0:11434"),
    ("OLLAMA_HOST", "http://127.0.0.1:8080"),
    ("OLLAMA_HOST", "https://[::1]:443"),
    ("OLLAMA_HOST", "::1"),
    ("OLLAMA_HOST", ":11434"),
    ("OLLAMA_ORIGINS", "*"),
    ("OLLAMA_ORIGINS", "http://a.example,https://b.example:*,chrome-extension://*"),
    ("OLLAMA_MODELS", "/srv/ollama models"),
    ("OLLAMA_KV_CACHE_TYPE", "q8_0"),
    ("OLLAMA_KV_CACHE_TYPE", "Q4_0"),
    ("OLLAMA_LLM_LIBRARY", "cuda_v12"),
    ("OLLAMA_REMOTES", "ollama.com,mirror.local:8443"),
    ("OLLAMA_EDITOR", "/usr/bin/vim -n"),
    ("OLLAMA_NOPRUNE", ""),  # empty: Ollama's default
]


@pytest.mark.parametrize(("name", "value"), VALID)
def test_values_ollama_parses_are_accepted(name: str, value: str) -> None:
    assert environment_problem(name, value) is None


INVALID = [
    ("OLLAMA_NUM_PARALLEL", "-1", "non-negative whole number"),
    ("OLLAMA_NUM_PARALLEL", "+1", "non-negative whole number"),
    ("OLLAMA_NUM_PARALLEL", "two", "non-negative whole number"),
    ("OLLAMA_GPU_OVERHEAD", "18446744073709551616", "non-negative whole number"),
    ("OLLAMA_GPU_OVERHEAD", "1GiB", "non-negative whole number"),
    ("OLLAMA_FLASH_ATTENTION", "yes", "silently read it as true"),
    ("OLLAMA_FLASH_ATTENTION", "on", "silently read it as true"),
    ("OLLAMA_DEBUG", "verbose", "silently use INFO"),
    ("OLLAMA_LOAD_TIMEOUT", "1d", "it would silently use 5m"),
    ("OLLAMA_HOST", "0.0.0.0:port", "port"),
    ("OLLAMA_HOST", "0.0.0.0:70000", "port"),
    ("OLLAMA_HOST", "tcp://0.0.0.0", "scheme"),
    ("OLLAMA_HOST", "bad host", "host"),
    ("OLLAMA_ORIGINS", "example.com", "neither '*' nor"),
    ("OLLAMA_ORIGINS", "http://a, http://b", "spaced"),
    ("OLLAMA_ORIGINS", "http://a,,http://b", "empty"),
    ("OLLAMA_MODELS", "models", "absolute path"),
    ("OLLAMA_MODELS", "~/models", "absolute path"),
    ("OLLAMA_KV_CACHE_TYPE", "q5_1", "f16, q8_0, q4_0"),
    ("OLLAMA_LLM_LIBRARY", "cuda v12", "library name"),
    ("OLLAMA_NUM_PARALLEL", " 2", "whitespace"),
]


@pytest.mark.parametrize(("name", "value", "words"), INVALID)
def test_values_ollama_would_misread_are_refused(name: str, value: str, words: str) -> None:
    problem = environment_problem(name, value)
    assert problem is not None
    assert words in problem


# The injection table of the issue: nothing that could end the quoting or add a directive.
INJECTIONS = [
    ("OLLAMA_MODELS", "/srv/m\nExecStartPre=/bin/sh -c id", "newline"),
    ("OLLAMA_MODELS", "/srv/m\r[Service]", "newline"),
    ("OLLAMA_MODELS", '/srv/m" "LD_PRELOAD=/tmp/evil.so', "quote"),
    ("OLLAMA_MODELS", "/srv/m' 'X=1", "quote"),
    ("OLLAMA_MODELS", "/srv/m\\", "backslash"),
    ("OLLAMA_MODELS", "/srv/m\\nExecStart=/bin/sh", "backslash"),
    ("OLLAMA_MODELS", "%h/models", "'%'"),
    ("OLLAMA_MODELS", "/srv/\x00m", "control character U+0000"),
    ("OLLAMA_MODELS", "/srv/\tm", "control character U+0009"),
    ("OLLAMA_MODELS", "/srv/\x1bm", "control character U+001B"),
    ("OLLAMA_MODELS", "/srv/\u2028m", "control character U+2028"),
    ("OLLAMA_MODELS", "/srv/\udcffm", "UTF-8"),
    ("OLLAMA_ORIGINS", 'http://a"\nExecStart=/bin/sh', "newline"),
    ("LD_PRELOAD", "/tmp/evil.so", "not an Ollama variable"),
    ("PATH", "/tmp", "not an Ollama variable"),
    ("HTTPS_PROXY", "http://proxy:3128", "not an Ollama variable"),
    ("CUDA_VISIBLE_DEVICES", "0", "not an Ollama variable"),
    ("OLLAMA_NUM_PARALEL", "1", "did you mean OLLAMA_NUM_PARALLEL?"),
    ("OLLAMA_X\nExecStart", "1", "not a variable Ollama reads"),
    ("OLLAMA_KEEP_ALIVE", "5m", "ollama.keep_alive"),
]


@pytest.mark.parametrize(("name", "value", "words"), INJECTIONS)
def test_injection_attempts_are_refused(name: str, value: str, words: str) -> None:
    problem = environment_problem(name, value)
    assert problem is not None
    assert words in problem


def test_value_longer_than_the_limit_is_refused() -> None:
    problem = environment_problem("OLLAMA_EDITOR", "x" * (ollama_env.MAX_VALUE_LENGTH + 1))
    assert problem is not None
    assert "longer" in problem


def test_quoting_escapes_percent_backslash_and_quote() -> None:
    assert environment_line("OLLAMA_KEEP_ALIVE", "-1") == 'Environment="OLLAMA_KEEP_ALIVE=-1"'
    assert quote_assignment("A", 'x%h\\"y') == '"A=x%%h\\\\\\"y"'


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\u2029b"])
def test_quoting_refuses_line_breaks_and_controls(value: str) -> None:
    with pytest.raises(ValueError):
        quote_assignment("OLLAMA_MODELS", value)


def test_quoting_refuses_bad_names() -> None:
    with pytest.raises(ValueError):
        quote_assignment("A B", "x")


_PRINTABLE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
    max_size=40,
)


@given(_PRINTABLE)
def test_quoted_assignment_reads_back_as_systemd_reads_it(value: str) -> None:
    assert parse_environment_value(quote_assignment("OLLAMA_MODELS", value)) == [
        ("OLLAMA_MODELS", value)
    ]


@pytest.mark.parametrize(
    ("rvalue", "pairs"),
    [
        ("OLLAMA_KEEP_ALIVE=5m", [("OLLAMA_KEEP_ALIVE", "5m")]),
        ('"OLLAMA_KEEP_ALIVE=-1" A=b', [("OLLAMA_KEEP_ALIVE", "-1"), ("A", "b")]),
        ('FOO="a b"', [("FOO", "a b")]),
        ("'FOO=a b'  BAR=c\\x41", [("FOO", "a b"), ("BAR", "cA")]),
        ('"P=%%h"', [("P", "%h")]),
        ("A=a\\sb", [("A", "a b")]),
        ("noequals A=1 1BAD=2", [("A", "1")]),
        ("", []),
    ],
)
def test_parse_environment_value(rvalue: str, pairs: list[tuple[str, str]]) -> None:
    assert parse_environment_value(rvalue) == pairs


@pytest.mark.parametrize("rvalue", ['"A=1', "A=\\q", "A=1\\", "A=\\x4"])
def test_parse_environment_value_refuses_what_systemd_refuses(rvalue: str) -> None:
    assert parse_environment_value(rvalue) is None
    assert split_words(rvalue) is None
