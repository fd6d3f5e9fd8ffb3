"""The command line, `sentinel-keeper`: the only package that prints user errors or chooses
an exit code.

- main.py: the commands (check, once, status, run, gateway, apply-override, ...);
- bench.py: `sentinel-keeper bench`, how fast the first token comes, cold and warm.
"""
