"""The tools users reach for after training (`loraprep lora resize | merge | meta`, and the base-model
side: extract, bake). `deltas.py` is the one reader every tool shares."""
