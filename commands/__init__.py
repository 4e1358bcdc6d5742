"""loraprep's command modules, one per command group; cli.py assembles them (see its docstring)."""
