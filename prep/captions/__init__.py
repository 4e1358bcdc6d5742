"""Check and edit captions: fast loading, stats, lint, bulk edits with an undo journal."""
