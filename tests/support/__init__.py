"""What the tests (and the benchmarks) share: the Ollama double (ollama_double.py), the
stand-in NVML library (fake_nvml/), the daemon as systemd runs it with its notification socket
(daemon.py), builders of policies and observations (planning.py), model sets and raw HTTP
helpers (ollama_fixtures.py). Fixtures that use them are in tests/conftest.py."""
