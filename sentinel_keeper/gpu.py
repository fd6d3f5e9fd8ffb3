"""``python -m sentinel_keeper.gpu [INDEX|UUID ...]``: the command's name, kept; the code is
:mod:`sentinel_keeper.observe.gpu`. Importing this module runs nothing."""

from __future__ import annotations

if __name__ == "__main__":
    from sentinel_keeper.observe.gpu import main

    raise SystemExit(main())
