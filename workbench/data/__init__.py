"""Data: the embedded shapes set, image-caption sources, codecs, text encoders, prepare, loader.

Names are re-exported lazily, so ``import workbench.data`` stays light (no ``datasets``/torch)::

    from workbench.data import open_source, shapes_dataset

The ``prepare`` function is ``workbench.prepare`` (``workbench.data.prepare`` is its module).
"""

from importlib import import_module

_EXPORTS = {
    "shapes": ("shapes_dataset", "shapes_arrays", "make_scenes", "render_scene", "eval_prompts",
               "parse_caption", "Scene", "ShapeObject", "EvalPrompt"),
    "sources": ("open_source", "preprocess", "Source", "SourceRecord", "SKIP_REASONS", "register_source"),
    "codecs": ("open_codec", "PixelCodec", "VAECodec"),
    "text": ("open_text_encoder", "TextEncoder"),
    "loader": ("PreparedLoader", "Batch", "distributed_defaults"),
    "prepared_format": ("load_prepared", "PreparedInfo", "PrepareReport", "open_prepared_codec",
                        "open_prepared_text_encoder"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
