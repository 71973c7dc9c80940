"""Muon vs AdamW on a character-level language model: :mod:`.char_lm` (``char-lm``)."""
