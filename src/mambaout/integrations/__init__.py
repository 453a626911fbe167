"""Plug-ins for other frameworks' registries, imported only by those frameworks' configs."""
