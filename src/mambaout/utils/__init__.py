"""Small things every part uses, written once: the autocast policy (``amp``), the progress bar (``progress``),
the optional-dependency guard (``optional``) and the table printer (``tables``)."""
