"""The inference verbs: ``evaluate``, ``predict``, ``export``, ``bench`` and the Gradio ``demo``."""
