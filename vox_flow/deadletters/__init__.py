"""Dead letters: the store workers write to (store.py) and replay (replay.py)."""
