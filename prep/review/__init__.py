"""The terminal caption editor (Textual): `loraprep captions edit`."""
