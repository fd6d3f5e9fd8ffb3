"""sentinel-keeper's drop-in for Ollama's unit: render.py (its text, from the policy),
unitfile.py (other files that set the same variables, read as systemd reads them) and
apply.py (`sentinel-keeper apply-override`: compare, write atomically, tell systemd)."""
