"""sentinel-keeper: keeps the right Ollama models warm in GPU memory."""

__version__ = "0.1.0"
