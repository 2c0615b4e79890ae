from minbert.bert.checkpoint import DEFAULT_MODEL, resolve_model_dir  # TEMP until wt-bert lands

__all__ = ["DEFAULT_MODEL", "resolve_model_dir"]
