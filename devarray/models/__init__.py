from .attention_only import (
    AttentionOnlyConfig,
    AttentionOnlyTransformer,
    from_transformer_lens,
    to_hooked_transformer,
    to_transformer_lens,
)

__all__ = [
    "AttentionOnlyConfig",
    "AttentionOnlyTransformer",
    "from_transformer_lens",
    "to_hooked_transformer",
    "to_transformer_lens",
]
