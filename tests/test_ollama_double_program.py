"""The Ollama double as a program (`python -m tests.support.ollama_double`), the way the
README's "Trying it without Ollama or a GPU" starts it: a models file, a port, real HTTP on
127.0.0.1, and a clear message for a models file it cannot use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import free_port
from tests.support.ollama_double import ModelsFileError, parse_models

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def start(models: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.ollama_double", "--models", str(models)]
        + ["--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_double_runs_as_a_program_with_a_models_file(tmp_path: Path) -> None:
    models = tmp_path / "models.json"
    models.write_text(
        json.dumps(
            [
                {"name": "llama3.2:1b", "size": "1.3GB"},
                {"name": "nomic-embed-text", "size": 274302450, "capabilities": ["embedding"]},
            ]
        )
    )
    port = free_port()
    double = start(models, port)
    try:
        assert double.stdout is not None
        first = double.stdout.readline()
        assert first.startswith(f"Listening on 127.0.0.1:{port} (version "), first
        assert "models: llama3.2:1b, nomic-embed-text:latest" in first
        tags = httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=5).json()
        assert {m["name"]: m["size"] for m in tags["models"]} == {
            "llama3.2:1b": 1_300_000_000,
            "nomic-embed-text:latest": 274302450,
        }
        loaded = httpx.post(
            f"http://127.0.0.1:{port}/api/generate", json={"model": "llama3.2:1b"}, timeout=30
        ).json()
        assert loaded["done_reason"] == "load"
        assert [
            m["name"] for m in httpx.get(f"http://127.0.0.1:{port}/api/ps").json()["models"]
        ] == ["llama3.2:1b"]
    finally:
        double.send_signal(signal.SIGTERM)
        assert double.wait(timeout=10) == 0


def test_a_model_without_a_size_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    models = tmp_path / "models.json"
    models.write_text('[\n  {"name": "llama3.2:1b"}\n]\n')
    double = start(models, free_port())
    _, err = double.communicate(timeout=30)
    assert double.returncode == 2
    assert "Traceback" not in err
    assert err == (
        f"ollama double: {models}: models[0]: 'size' is required: its file size: bytes, or a "
        'size such as "1.3GB" (what `ollama list` shows)\n'
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": {}}, 'expected a list of models, or {"models": [...]}, got object'),
        ([{"size": 1}], "models[0]: 'name' is required"),
        ([{"name": "a", "size": "big"}], "models[0]: size must be bytes or a size such as"),
        ([{"name": "a", "size": 0}], "models[0]: size must be more than 0 bytes, got 0"),
        ([{"name": "a", "size": 1, "sise": 2}], "models[0]: unknown field 'sise'"),
        ([{"name": "a", "size": 1, "block_count": "16"}], "'block_count' must be number"),
        ([{"name": "a", "size": 1}, {"name": "a", "size": 2}], "a:latest is listed twice"),
    ],
)
def test_a_models_file_it_cannot_use_is_named_with_the_entry_and_field(
    data: object, message: str
) -> None:
    with pytest.raises(ModelsFileError) as raised:
        parse_models(data, "m.json")
    assert str(raised.value).startswith("m.json: "), raised.value
    assert message in str(raised.value)


def test_bad_json_says_where(tmp_path: Path) -> None:
    models = tmp_path / "models.json"
    models.write_text('[{"name": "a", "size": 1,}]')
    double = start(models, free_port())
    _, err = double.communicate(timeout=30)
    assert double.returncode == 2
    assert err.startswith(f"ollama double: {models}:1:26: "), err


def test_the_readme_documents_the_models_file_and_the_path_without_ollama() -> None:
    start_at = README.index("\n## Trying it without Ollama or a GPU\n")
    part = README[start_at : README.index("\n## ", start_at + 1)]
    assert "python -m tests.support.ollama_double --models models.json" in part
    for field in ("`name`", "`size`", "`capabilities`", "`context_length`", "`block_count`"):
        assert field in part, field
    assert "sentinel-keeper --policy try.yaml" in part
